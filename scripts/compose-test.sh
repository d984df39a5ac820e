#!/usr/bin/env bash
# The compose cluster, tested from nothing (.ci/run runs it):
#
#  1. Docker: docker.io and docker-compose installed when missing, dockerd started
#     when not running; a Docker that cannot start fails the test (never a skip).
#  2. The release binaries, then the images (scripts/docker-image.sh).
#  3. A fresh federation and `up` (scripts/compose-up.sh): every container healthy,
#     then discovery: every node knows the 8 others as compatible peers.
#  4. A global task submitted from the host through node-0's published port; its
#     chain verified offline against the genesis (polity verify --federation).
#  5. Prometheus scrapes all 9 nodes. Three tasks entered at node-4 (its ledger).
#  6. `docker-compose kill node-4`: a global task is still decided (verified
#     offline), and Prometheus sees node-4 down (PolityNodeDown pending).
#  7. `docker-compose start node-4`: its ledger is intact (the same certificate
#     bytes, verifying), it rediscovers everyone, and a global task with all three
#     regions is decided again.
#  8. The Kubernetes pod's container settings (deploy/k8s) under Docker: read-only
#     root filesystem, uid 10001, no capabilities, no privilege escalation, the key
#     from a group-readable secret-like file, /tmp a tmpfs: the node gets ready and
#     joins the cluster's network.
#  9. `docker-compose down -v`, whatever happened.
#
# It prints what BENCHMARKS.md reports: image sizes, time from `up` to a decided
# global task, per-container RSS. Uses its own project (polity-test) and federation
# dir, but the same host ports as scripts/compose-up.sh: stop that cluster first.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/docker-lib.sh
source scripts/docker-lib.sh

started=$SECONDS
step() { printf '\n=== %s (%s, +%ds)\n' "$1" "$(date +%H:%M:%S)" $((SECONDS - started)); }
fail() { docker_log "FAILED: $*"; exit 1; }

step "docker"
ensure_docker
docker-compose version --short >/dev/null || fail "docker-compose does not run"

step "release binaries and images"
cargo build --release --locked -p polity-node -p polity-testnet --bins
bin=$(cd "${CARGO_TARGET_DIR:-target}/release" && pwd)
polity="$bin/polity"
scripts/docker-image.sh --binaries "$bin"

export COMPOSE_PROJECT_NAME=polity-test
POLITY_GENERATED=$(mktemp -d /tmp/polity-compose-test.XXXXXX)
export POLITY_GENERATED
work="$POLITY_GENERATED/test"
mkdir -p "$work"
compose() { docker-compose -f deploy/compose/docker-compose.yml "$@"; }
token="$POLITY_GENERATED/token"
genesis="$POLITY_GENERATED/genesis.pb"
grpc() { echo "http://127.0.0.1:$((17000 + $1))"; }

cleanup() {
  local status=$?
  if [ $status -ne 0 ]; then
    echo "--- compose ps and the last log lines of each container (test failed)" >&2
    compose ps >&2 || true
    compose logs --tail=15 --no-color >&2 || true
  fi
  docker rm -f -v polity-test-pod >/dev/null 2>&1 || true
  compose down -v --remove-orphans >/dev/null 2>&1 || true
  # The keys belong to the image's user: remove them as root, from a container.
  docker run --rm --user 0 --entrypoint /bin/rm -v "$POLITY_GENERATED:/gen" \
    "${POLITY_IMAGE:-polity:latest}" -rf /gen/keys >/dev/null 2>&1 || true
  rm -rf "$POLITY_GENERATED"
  exit $status
}
trap cleanup EXIT

# JSON field of a file: json FILE EXPRESSION (python, over `d`).
json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"; }

# Waits until every live node knows the others as compatible peers.
wait_discovery() {
  local want=$1 nodes=("${@:2}") deadline=$((SECONDS + 90)) i known
  while :; do
    local converged=1
    for i in "${nodes[@]}"; do
      known=$("$polity" peers --addr "$(grpc "$i")" --token-file "$token" --capability sha256 \
                --compatible --json 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' \
              || echo 0)
      [ "$known" -ge "$want" ] || converged=0
    done
    [ $converged = 1 ] && return 0
    [ $SECONDS -lt $deadline ] || fail "discovery: node $i knows $known compatible peers, wants $want"
    sleep 1
  done
}

# submit NAME NODE ARGS...: a task entered at NODE; record in $work/NAME.json,
# root certificate bytes in $work/NAME.pb; prints its state and groups.
submit() {
  local name=$1 node=$2
  shift 2
  "$polity" submit --addr "$(grpc "$node")" --token-file "$token" --capability sha256 \
    --certificate-out "$work/$name.pb" --json "$@" > "$work/$name.json" \
    || fail "submitting $name at node-$node"
  printf '%-16s %-9s %s\n' "$name" "$(json "$work/$name.json" 'd["state"]')" \
    "$(json "$work/$name.json" '" ".join("%s:%d agreed" % (g["group"], len(g["agreed"])) for g in d["groups"])')"
}

# verify NAME: the chain of $work/NAME.pb offline, against the genesis.
verify() {
  "$polity" verify "$work/$1.pb" --federation "$genesis" > "$work/$1.verify" \
    || { cat "$work/$1.verify" >&2; fail "$1: its chain does not verify offline"; }
  tail -n 1 "$work/$1.verify"
}

state_is() { # state_is NAME STATE...
  local state
  state=$(json "$work/$1.json" 'd["state"]')
  for wanted in "${@:2}"; do [ "$state" = "$wanted" ] && return 0; done
  fail "$1 ended $state, wanted ${*:2}"
}

# prom QUERY: the first value of an instant query, or "none".
prom() {
  python3 - "$1" <<'EOF'
import json, sys, urllib.parse, urllib.request
url = "http://127.0.0.1:19090/api/v1/query?query=" + urllib.parse.quote(sys.argv[1])
try:
    result = json.load(urllib.request.urlopen(url, timeout=5))["data"]["result"]
    print(result[0]["value"][1] if result else "none")
except Exception:
    print("none")
EOF
}

wait_prom() { # wait_prom QUERY VALUE WHAT
  local deadline=$((SECONDS + 60)) value
  until value=$(prom "$1"); [ "$value" = "$2" ]; do
    [ $SECONDS -lt $deadline ] || fail "Prometheus: $3 (query $1 gave $value, wanted $2)"
    sleep 1
  done
}

rss_table() {
  printf '%-26s %12s %14s\n' container "VmRSS MiB" "cgroup MiB"
  local name rss usage
  for name in $(compose ps -q | xargs docker inspect --format '{{.Name}}' | tr -d / | sort); do
    rss=$(docker top "$name" -o pid,rss,comm | awk 'NR > 1 && $3 != "tini" { print $2 }')
    usage=$(docker stats --no-stream --format '{{.MemUsage}}' "$name" | cut -d/ -f1)
    printf '%-26s %12.1f %14s\n' "$name" "$(awk -v k="$rss" 'BEGIN { print k / 1024 }')" "$usage"
  done
}

step "up: fresh federation, 9 nodes and Prometheus healthy"
up_started=$(date +%s%N)
scripts/compose-up.sh --no-build

step "discovery: every node knows the 8 others"
wait_discovery 8 0 1 2 3 4 5 6 7 8
discovered_ms=$((($(date +%s%N) - up_started) / 1000000))

step "a global task from the host through node-0's published port"
submit global-1 0 --payload "compose global 1" --scope global --replication 3
state_is global-1 DECIDED
decided_ms=$((($(date +%s%N) - up_started) / 1000000))
verify global-1

step "Prometheus scrapes every node"
wait_prom 'count(up{job="polity"} == 1)' 9 "not all 9 nodes scraped"
echo "9 of 9 targets up"

step "node-4's ledger: three tasks it entered"
for path in bft raft stake; do
  submit "ledger-$path" 4 --payload "compose ledger $path" --scope global --replication 3 --path "$path"
  state_is "ledger-$path" DECIDED
  verify "ledger-$path"
done
rss_table | tee "$work/rss.txt"

step "docker-compose kill node-4: a global task still decided"
compose kill node-4
[ "$(docker inspect --format '{{.State.Running}}' "$(compose ps -q node-4)")" = false ] \
  || fail "node-4 still running after kill"
# Region-1 keeps 2 of its 3 nodes: groups of 2 there, every region in the chain.
submit down-r2 0 --payload "compose with node-4 down, replication 2" --scope global --replication 2
state_is down-r2 DECIDED DEGRADED
verify down-r2
# Asking 3 members per region: region-1 cannot seat 3 any more.
submit down-r3 0 --payload "compose with node-4 down, replication 3" --scope global --replication 3 --path bft
state_is down-r3 DECIDED DEGRADED
verify down-r3
wait_prom 'up{job="polity",instance="node-4:7002"}' 0 "node-4 not seen down"
wait_prom 'count(ALERTS{alertname="PolityNodeDown",instance="node-4:7002"})' 1 "no PolityNodeDown alert for node-4"
echo "Prometheus: node-4 down, alert PolityNodeDown $(prom 'ALERTS{alertname="PolityNodeDown",instance="node-4:7002"}' >/dev/null && echo raised)"

step "docker-compose start node-4: its ledger is intact"
compose start node-4
deadline=$((SECONDS + 60))
until [ "$(docker inspect --format '{{.State.Health.Status}}' "$(compose ps -q node-4)")" = healthy ]; do
  [ $SECONDS -lt $deadline ] || fail "node-4 not healthy 60 s after its restart"
  sleep 1
done
for path in bft raft stake; do
  id=$(json "$work/ledger-$path.json" 'd["task_id"]')
  "$polity" get "$id" --addr "$(grpc 4)" --token-file "$token" \
    --certificate-out "$work/after-$path.pb" --json > "$work/after-$path.json" \
    || fail "node-4 lost task $id after its restart"
  cmp -s "$work/ledger-$path.pb" "$work/after-$path.pb" \
    || fail "node-4 returns another certificate for task $id after its restart"
  state_is "after-$path" DECIDED
  verify "after-$path"
done
echo "node-4 returns the same 3 certificates, byte for byte"
wait_discovery 8 4
submit global-2 4 --payload "compose global 2" --scope global --replication 3
state_is global-2 DECIDED
[ "$(json "$work/global-2.json" 'len({g["group"] for g in d["groups"] if g["level"] == "region"})')" -ge 3 ] \
  || fail "global-2 does not have all three regions"
verify global-2

step "the Kubernetes pod's container settings, under Docker"
pod="$POLITY_GENERATED/pod"
mkdir -p "$pod/keys"
head -c 32 /dev/urandom > "$pod/keys/polity-region-0-3.key"
# As a Secret mounted with defaultMode 0440 and fsGroup 10001.
chgrp -R 10001 "$pod/keys" && chmod 0440 "$pod/keys/polity-region-0-3.key"
network=$(docker inspect --format '{{range $name, $_ := .NetworkSettings.Networks}}{{$name}}{{end}}' "$(compose ps -q node-0)")
docker run -d --name polity-test-pod --network "$network" --read-only --tmpfs /tmp \
  --user 10001:10001 --cap-drop ALL --security-opt no-new-privileges \
  -e POD_NAME=polity-region-0-3 -e POLITY_IDENTITY_KEY=/run/polity/keys/polity-region-0-3.key \
  -v "$pod/keys:/run/polity/keys:ro" -v "$genesis:/etc/polity/genesis/genesis.pb:ro" \
  -v "$token:/run/polity/token/token:ro" "${POLITY_IMAGE:-polity:latest}" \
  polity node --config=/etc/polity/node.toml --region=region-0 --continent=continent-0 \
  --genesis=/etc/polity/genesis/genesis.pb --api-token-file=/run/polity/token/token \
  --bootstrap=/dns4/node-0/tcp/7100 >/dev/null
deadline=$((SECONDS + 60))
until [ "$(docker inspect --format '{{.State.Health.Status}}' polity-test-pod)" = healthy ] \
      && docker exec polity-test-pod busybox wget -q -O /dev/null http://127.0.0.1:7002/ready; do
  [ $SECONDS -lt $deadline ] || { docker logs polity-test-pod 2>&1 | tail -n 5 >&2; fail "the pod-like container is not ready"; }
  sleep 1
done
[ "$(docker exec polity-test-pod stat -c %a /var/lib/polity/identity.key)" = 600 ] \
  || fail "the pod-like container's key was not installed with mode 0600"
until [ "$(docker exec polity-test-pod busybox wget -q -O - http://127.0.0.1:7002/metrics \
          | awk '/^polity_p2p_connected_peers / { print $2 }')" -ge 1 ] 2>/dev/null; do
  [ $SECONDS -lt $deadline ] || fail "the pod-like container connected to no peer"
  sleep 1
done
echo "read-only root, uid 10001, no capabilities: ready, key installed 0600, connected to the cluster"
docker rm -f -v polity-test-pod >/dev/null

step "results"
printf 'images        '; docker image inspect --format '{{.Size}}' "${POLITY_IMAGE:-polity:latest}" \
  | awk '{ printf "polity %.1f MB", $1 / 1e6 }'
docker image inspect --format '{{.Size}}' "${POLITY_PROMETHEUS_IMAGE:-polity-prometheus:latest}" \
  | awk '{ printf ", prometheus %.1f MB\n", $1 / 1e6 }'
printf 'up -> discovered      %6.1f s\n' "$(awk -v ms=$discovered_ms 'BEGIN { print ms / 1000 }')"
printf 'up -> decided global  %6.1f s\n' "$(awk -v ms=$decided_ms 'BEGIN { print ms / 1000 }')"
echo "per-container memory (after 5 tasks, before the kill):"
cat "$work/rss.txt"
printf 'compose test passed in %d s\n' $((SECONDS - started))
