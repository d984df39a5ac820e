#!/usr/bin/env bash
# Brings up the compose cluster (deploy/compose/): 9 nodes in 3 regions on 2
# continents and Prometheus, and waits until every container is healthy.
#
# Usage: scripts/compose-up.sh [--no-build] [--down]
#   (default)   build the images (scripts/docker-image.sh), make the federation if
#               there is none yet, docker-compose up -d, wait for every container
#   --no-build  use the images as they are
#   --down      docker-compose down -v (containers, network and volumes; the
#               federation files stay, so the next `up` is the same federation)
#
# The federation (keys, genesis, API token) is made once, in $POLITY_GENERATED
# (default deploy/compose/generated): a genesis listing 9 fresh node keys, the
# authority key that signed it, and the token every node requires. It also writes
# testnet.json there, so polity-testnet reaches the cluster through its published
# ports: `polity-testnet status --dir deploy/compose/generated`, `bench --dir ...`,
# `chaos reliability --attach ...`. Remove that dir for a new federation.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/docker-lib.sh
source scripts/docker-lib.sh

build=1
action=up
for arg in "$@"; do
  case "$arg" in
    --no-build) build=0 ;;
    --down) action=down ;;
    *) docker_die "unknown argument $arg (see the header of $0)" ;;
  esac
done
compose_dir=deploy/compose
export POLITY_GENERATED=${POLITY_GENERATED:-$PWD/$compose_dir/generated}
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-polity}
image=${POLITY_IMAGE:-polity:latest}
nodes=9
compose() { docker-compose -f "$compose_dir/docker-compose.yml" "$@"; }

ensure_docker
if [ $action = down ]; then
  compose down -v --remove-orphans
  exit 0
fi
if [ $build = 1 ]; then
  scripts/docker-image.sh
fi
docker image inspect "$image" >/dev/null 2>&1 \
  || docker_die "no image $image: run scripts/docker-image.sh (or drop --no-build)"

# node-i: region-(i mod 3), continent-(region mod 2), as polity-testnet places nodes.
region_of() { echo "region-$(($1 % 3))"; }
continent_of() { echo "continent-$(($1 % 3 % 2))"; }

make_federation() {
  mkdir -p "$POLITY_GENERATED"
  docker_log "making the federation in $POLITY_GENERATED"
  local script
  script="set -eu; cd /gen
caps='--capability echo --capability sha256 --capability wordcount --capability sum'
polity genesis init --out genesis.pb --federation compose --authority-dir authority \
  --member-dir keys/node-0 --region $(region_of 0) --continent $(continent_of 0) \$caps >/dev/null"
  for i in $(seq 1 $((nodes - 1))); do
    script="$script
polity genesis add-member genesis.pb --authority-dir authority --member-dir keys/node-$i \
  --region $(region_of "$i") --continent $(continent_of "$i") \$caps >/dev/null"
  done
  # The keys belong to the image's user (10001), which reads them at first start;
  # the genesis, the authority and the token to whoever ran this script (the token
  # also readable by the nodes' group).
  script="$script
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > token
chown -R 10001:10001 keys && chmod 700 keys/* && chmod 600 keys/*/identity.key
chown -R \$HOST_UID:\$HOST_GID genesis.pb authority && chmod 644 genesis.pb
chown \$HOST_UID:10001 token && chmod 640 token"
  docker run --rm --user 0 --entrypoint /bin/sh -e HOST_UID="$(id -u)" -e HOST_GID="$(id -g)" \
    -v "$POLITY_GENERATED:/gen" "$image" -c "$script" \
    || docker_die "making the federation (keys, genesis, token) in $POLITY_GENERATED"
}

# The cluster as polity-testnet records a detached testnet, its nodes marked remote.
write_state() {
  local host=127.0.0.1 file="$POLITY_GENERATED/testnet.json" i
  {
    printf '{\n  "token_file": "%s",\n  "nodes": [\n' "$POLITY_GENERATED/token"
    for i in $(seq 0 $((nodes - 1))); do
      printf '    {"name": "node-%d", "pid": 0, "data_dir": "", "region": "%s", "continent": "%s",' \
        "$i" "$(region_of "$i")" "$(continent_of "$i")"
      printf ' "peer_id": "", "grpc": "http://%s:%d", "http": "http://%s:%d", "p2p": [], "remote": true}%s\n' \
        "$host" $((17000 + i)) "$host" $((17100 + i)) "$([ "$i" -lt $((nodes - 1)) ] && echo ,)"
    done
    printf '  ]\n}\n'
  } > "$file.partial"
  mv "$file.partial" "$file"
}

[ -s "$POLITY_GENERATED/genesis.pb" ] || make_federation
write_state
compose up -d --remove-orphans

# Every container healthy (the image's HEALTHCHECK on /health, Prometheus /-/ready).
started=$SECONDS
while :; do
  unhealthy=0
  for container in $(compose ps -q); do
    status=$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$container")
    [ "$status" = healthy ] || unhealthy=$((unhealthy + 1))
  done
  [ "$(compose ps -q | wc -l)" -eq $((nodes + 1)) ] && [ $unhealthy -eq 0 ] && break
  if [ $((SECONDS - started)) -ge 120 ]; then
    compose ps >&2
    docker_die "containers not healthy after 120 s (docker-compose -f $compose_dir/docker-compose.yml logs)"
  fi
  sleep 1
done
docker_log "$nodes nodes and Prometheus healthy in $((SECONDS - started)) s"
echo "gRPC: 127.0.0.1:17000..$((17000 + nodes - 1))  HTTP: 127.0.0.1:17100..$((17100 + nodes - 1))  Prometheus: http://127.0.0.1:19090"
echo "token: $POLITY_GENERATED/token  genesis: $POLITY_GENERATED/genesis.pb"
echo "polity-testnet status --dir $POLITY_GENERATED"
