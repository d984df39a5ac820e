# shellcheck shell=bash
# Shared by scripts/docker-image.sh, compose-up.sh and compose-test.sh (sourced).
# Docker is installed and started when missing, and any failure to get it running
# stops the caller with the reason: these scripts never skip.

docker_log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
docker_die() { docker_log "FAILED: $*"; exit 1; }

# apt-get install PACKAGES, when running as root on a Debian-like host.
docker_apt_install() {
  command -v apt-get >/dev/null 2>&1 \
    || docker_die "need $*; this host has no apt-get, install them by hand"
  [ "$(id -u)" = 0 ] || docker_die "need $*; run as root (or install them) so apt-get can"
  export DEBIAN_FRONTEND=noninteractive
  if [ -z "${DOCKER_LIB_APT_UPDATED:-}" ]; then
    apt-get update -qq || docker_die "apt-get update"
    DOCKER_LIB_APT_UPDATED=1
  fi
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || docker_die "apt-get install $*"
}

# docker.io and docker-compose (Debian's 1.29) installed, dockerd answering.
ensure_docker() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v docker >/dev/null 2>&1 || missing+=(docker.io)
  command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
  # dockerd needs iptables for its bridge networks and published ports.
  command -v iptables >/dev/null 2>&1 || missing+=(iptables)
  if [ ${#missing[@]} -gt 0 ]; then
    docker_log "installing ${missing[*]}"
    # shellcheck disable=SC2046
    docker_apt_install $(printf '%s\n' "${missing[@]}" | sort -u)
  fi
  if docker info >/dev/null 2>&1; then
    return 0
  fi
  [ "$(id -u)" = 0 ] || docker_die "dockerd is not running and only root can start it here"
  local log=${DOCKERD_LOG:-/var/log/polity-dockerd.log}
  docker_log "starting dockerd (log: $log)"
  # setsid: the daemon outlives this script and is not killed with its process group.
  setsid dockerd >"$log" 2>&1 < /dev/null &
  local waited=0
  until docker info >/dev/null 2>&1; do
    if ! kill -0 $! 2>/dev/null; then
      tail -n 30 "$log" >&2
      docker_die "dockerd exited at start (above: the end of $log)"
    fi
    if [ $waited -ge 60 ]; then
      tail -n 30 "$log" >&2
      docker_die "dockerd did not answer within 60 s (above: the end of $log)"
    fi
    sleep 1
    waited=$((waited + 1))
  done
  docker_log "dockerd is up"
}
