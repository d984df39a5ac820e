#!/usr/bin/env bash
# Three Polity nodes on three "machines": network namespaces joined by veth pairs
# to a bridge (itself in a fourth namespace), with their own 10.213.0.0/24
# addresses. First a genesis lists the three (`polity genesis init|add-member`,
# each node's key made in its data dir); every node starts with --genesis. Node 1
# is the bootstrap peer; nodes 2 and 3 join it with
# --bootstrap /ip4/10.213.0.1/tcp/7100/p2p/<id>. The script waits until every node
# knows the other two over non-loopback addresses, prints what each sees, decides a
# global bft task across the three and verifies its certificate against the
# genesis, and removes everything it made, also on failure or Ctrl-C.
#
# Needs root and iproute2. Traffic stays inside the namespaces this script creates.
# Usage: scripts/netns-cluster.sh [path/to/polity]   (default: target/release/polity,
# then target/debug/polity; or $POLITY_BIN)
set -euo pipefail

POLITY=${1:-${POLITY_BIN:-}}
if [ -z "$POLITY" ]; then
  root=$(cd "$(dirname "$0")/.." && pwd)
  for candidate in "$root/target/release/polity" "$root/target/debug/polity"; do
    if [ -x "$candidate" ]; then POLITY=$candidate; break; fi
  done
fi
[ -x "${POLITY:-}" ] || { echo "no polity binary; build it or pass its path" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "needs root (network namespaces)" >&2; exit 2; }
command -v ip >/dev/null || { echo "needs iproute2 (ip)" >&2; exit 2; }

PREFIX=polity$$            # unique names, so parallel runs do not collide
BRIDGE_NS=${PREFIX}br
NODES=3
SUBNET=10.213.0
WORK=$(mktemp -d)
TIMEOUT_S=${NETNS_TIMEOUT_S:-60}

cleanup() {
  set +e
  for i in $(seq 1 $NODES); do
    if [ -f "$WORK/n$i.pid" ]; then kill "$(cat "$WORK/n$i.pid")" 2>/dev/null; fi
  done
  sleep 0.5
  for i in $(seq 1 $NODES); do
    if [ -f "$WORK/n$i.pid" ]; then kill -9 "$(cat "$WORK/n$i.pid")" 2>/dev/null; fi
    ip netns del "${PREFIX}n$i" 2>/dev/null
  done
  ip netns del "$BRIDGE_NS" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

ip netns add "$BRIDGE_NS"
ip -n "$BRIDGE_NS" link add br0 type bridge
ip -n "$BRIDGE_NS" link set br0 up
for i in $(seq 1 $NODES); do
  ns=${PREFIX}n$i
  ip netns add "$ns"
  ip link add "${PREFIX}v$i" type veth peer name eth0 netns "$ns"
  ip link set "${PREFIX}v$i" netns "$BRIDGE_NS"
  ip -n "$BRIDGE_NS" link set "${PREFIX}v$i" master br0 up
  ip -n "$ns" addr add "$SUBNET.$i/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
done

start_node() { # index, extra args...
  local i=$1; shift
  mkdir -p "$WORK/n$i"
  ip netns exec "${PREFIX}n$i" "$POLITY" node --data-dir "$WORK/n$i" \
    --listen "/ip4/$SUBNET.$i/tcp/7100" --grpc-addr 127.0.0.1:7001 --http-addr 127.0.0.1:7002 \
    --region "region-$i" --continent earth --no-mdns --genesis "$WORK/genesis.pb" \
    --capability sha256=builtin:sha256 "$@" >"$WORK/n$i.log" 2>&1 &
  echo $! >"$WORK/n$i.pid"
}

# The federation's genesis: one member per namespace, signed by an authority key.
"$POLITY" genesis init --out "$WORK/genesis.pb" --federation netns \
  --authority-dir "$WORK/authority" --member-dir "$WORK/n1" \
  --region region-1 --continent earth --capability sha256 >/dev/null
for i in $(seq 2 $NODES); do
  "$POLITY" genesis add-member "$WORK/genesis.pb" --authority-dir "$WORK/authority" \
    --member-dir "$WORK/n$i" --region "region-$i" --continent earth --capability sha256 >/dev/null
done

BOOT_ID=$("$POLITY" id --data-dir "$WORK/n1")
start_node 1
for i in $(seq 2 $NODES); do
  start_node "$i" --bootstrap "/ip4/$SUBNET.1/tcp/7100/p2p/$BOOT_ID"
done

peers_known() { # index -> number of peers with verified info
  ip netns exec "${PREFIX}n$1" "$POLITY" peers --addr http://127.0.0.1:7001 --json 2>/dev/null \
    | python3 -c 'import json,sys; print(sum(1 for p in json.load(sys.stdin) if p["peer_id"] and p["region"]))' \
    2>/dev/null || echo 0
}

deadline=$((SECONDS + TIMEOUT_S))
while :; do
  converged=1
  for i in $(seq 1 $NODES); do
    [ "$(peers_known "$i")" -ge $((NODES - 1)) ] || converged=0
  done
  [ $converged -eq 1 ] && break
  if [ $SECONDS -ge $deadline ]; then
    echo "FAILED: the nodes did not federate within ${TIMEOUT_S}s" >&2
    for i in $(seq 1 $NODES); do echo "--- node $i log"; tail -20 "$WORK/n$i.log"; done >&2
    exit 1
  fi
  sleep 0.5
done

for i in $(seq 1 $NODES); do
  echo "node $i ($SUBNET.$i) sees:"
  ip netns exec "${PREFIX}n$i" "$POLITY" peers --addr http://127.0.0.1:7001
done
# The federation runs over the namespaces' own addresses, not loopback.
ip netns exec "${PREFIX}n2" "$POLITY" peers --addr http://127.0.0.1:7001 --json \
  | python3 -c '
import json, sys
peers = json.load(sys.stdin)
addresses = [a for p in peers for a in p.get("listen_addrs", [])]
assert any("/ip4/10.213.0." in a for a in addresses), addresses
assert not any("/ip4/127." in a for a in addresses), addresses
'
# One decision across the three machines, verified against the genesis offline.
ip netns exec "${PREFIX}n1" "$POLITY" submit --addr http://127.0.0.1:7001 \
  --capability sha256 --payload netns --scope global --adversarial-risk 0.9 \
  --certificate-out "$WORK/cert.pb" >"$WORK/submit.txt"
grep -q DECIDED "$WORK/submit.txt" || { cat "$WORK/submit.txt" >&2; exit 1; }
"$POLITY" verify "$WORK/cert.pb" --federation "$WORK/genesis.pb"
echo "OK: $NODES nodes federated across network namespaces over $SUBNET.0/24"
