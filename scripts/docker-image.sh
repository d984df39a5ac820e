#!/usr/bin/env bash
# Builds the container images without reaching any image registry:
#
#   polity-base:<suite>       Debian <suite> (the host's) from debootstrap + docker import,
#                             with tini, busybox and ca-certificates; made once
#   polity:latest             deploy/docker/Dockerfile.local: the host-built release
#                             binaries polity and polity-testnet on that base
#   polity-prometheus:latest  the same base with Debian's prometheus and promtool
#
# Usage: scripts/docker-image.sh [--binaries DIR] [--rebuild-base]
#   --binaries DIR   use polity and polity-testnet from DIR instead of building them
#                    (default: cargo build --release into $CARGO_TARGET_DIR or target/)
#   --rebuild-base   debootstrap the base again even when the image exists
# Environment: POLITY_IMAGE (default polity:latest), POLITY_PROMETHEUS_IMAGE
# (polity-prometheus:latest), POLITY_DEBIAN_MIRROR (default: the host's apt mirror).
#
# Machines that reach a registry can instead `docker build -t polity:latest .` (the
# multi-stage Dockerfile at the root): same runtime layout.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/docker-lib.sh
source scripts/docker-lib.sh

binaries=""
rebuild_base=0
while [ $# -gt 0 ]; do
  case "$1" in
    --binaries) binaries=$2; shift 2 ;;
    --rebuild-base) rebuild_base=1; shift ;;
    *) docker_die "unknown argument $1 (see the header of $0)" ;;
  esac
done
image=${POLITY_IMAGE:-polity:latest}
prometheus_image=${POLITY_PROMETHEUS_IMAGE:-polity-prometheus:latest}

ensure_docker

# The suite the host runs: host-built binaries need its glibc (or a newer one).
# shellcheck disable=SC1091
suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ -n "$suite" ] || docker_die "cannot tell the host's Debian suite from /etc/os-release"
base="polity-base:$suite"

# The first non-security mirror apt already uses (deb822 .sources or one-line lists).
apt_mirror() {
  local files=(/etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list)
  local url
  url=$(cat "${files[@]}" 2>/dev/null \
        | sed -n -e 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' \
                 -e 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]*\).*/\2/p' \
        | grep -v -e security -e '^$' | head -n 1)
  [ -n "$url" ] || docker_die "no Debian mirror in /etc/apt/sources.list*; set POLITY_DEBIAN_MIRROR"
  echo "$url"
}

build_base() {
  command -v debootstrap >/dev/null 2>&1 || docker_apt_install debootstrap
  local mirror=${POLITY_DEBIAN_MIRROR:-$(apt_mirror)}
  local rootfs
  rootfs=$(mktemp -d /tmp/polity-rootfs.XXXXXX)
  docker_log "debootstrap $suite from $mirror into $rootfs"
  debootstrap --variant=minbase --include=ca-certificates,tini,busybox \
    "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
    || { tail -n 20 "$rootfs.log" >&2; docker_die "debootstrap (log: $rootfs.log)"; }
  # What a runtime image does not need: package caches, docs, manuals, locales.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
         "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
         "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log "$rootfs"/tmp/*
  tar -C "$rootfs" --numeric-owner -c . \
    | docker import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$base" >/dev/null
  rm -rf "$rootfs" "$rootfs.log"
  docker_log "made $base"
}

if [ $rebuild_base = 1 ] || ! docker image inspect "$base" >/dev/null 2>&1; then
  build_base
else
  docker_log "using $base (--rebuild-base to make it again)"
fi

if [ -z "$binaries" ]; then
  docker_log "cargo build --release (polity, polity-testnet)"
  cargo build --release --locked -p polity-node -p polity-testnet --bins
  binaries=${CARGO_TARGET_DIR:-target}/release
fi
for binary in polity polity-testnet; do
  [ -x "$binaries/$binary" ] || docker_die "$binaries/$binary is missing"
done

context=$(mktemp -d /tmp/polity-image.XXXXXX)
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/bin" "$context/deploy/docker"
cp "$binaries/polity" "$binaries/polity-testnet" "$context/bin/"
strip --strip-debug "$context/bin/polity" "$context/bin/polity-testnet" 2>/dev/null || true
cp deploy/docker/node.toml deploy/docker/entrypoint.sh "$context/deploy/docker/"
docker build --quiet --build-arg "BASE=$base" -t "$image" \
  -f deploy/docker/Dockerfile.local "$context" >/dev/null
docker_log "built $image"

# Prometheus: Debian's package, the host's copy or a downloaded .deb, on the same base.
rm -rf "${context:?}"/*
mkdir -p "$context/bin"
if [ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ]; then
  cp /usr/bin/prometheus /usr/bin/promtool "$context/bin/"
else
  command -v apt-get >/dev/null 2>&1 || docker_die "need Debian's prometheus package"
  [ -n "${DOCKER_LIB_APT_UPDATED:-}" ] || apt-get update -qq
  (cd "$context" && apt-get download prometheus >/dev/null) || docker_die "apt-get download prometheus"
  dpkg-deb -x "$context"/prometheus_*.deb "$context/deb"
  cp "$context/deb/usr/bin/prometheus" "$context/deb/usr/bin/promtool" "$context/bin/"
fi
cp deploy/prometheus/Dockerfile.local "$context/Dockerfile"
docker build --quiet --build-arg "BASE=$base" -t "$prometheus_image" "$context" >/dev/null
docker_log "built $prometheus_image"

for name in "$base" "$image" "$prometheus_image"; do
  size=$(docker image inspect --format '{{.Size}}' "$name")
  awk -v name="$name" -v size="$size" 'BEGIN { printf "%-28s %6.1f MB\n", name, size / 1e6 }'
done
