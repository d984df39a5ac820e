#!/usr/bin/env bash
# A federation across NATs, in network namespaces.
#
#   "internet" 198.51.100.0/24 (a bridge in its own namespace)
#     ├── relay      198.51.100.1   bootstrap node, --relay-server and
#     │                             --external-address (not a member)
#     ├── public     198.51.100.2   a node with a public address and no flag: AutoNAT
#     │                             v2 confirms it (not a member)
#     ├── router 1   198.51.100.11  MASQUERADE ── site 1 10.1.0.0/24: 3 nodes, region site-1
#     └── router 2   198.51.100.12  MASQUERADE ── site 2 10.2.0.0/24: 3 nodes, region site-2
#
# The six site nodes are the genesis members (`polity genesis init|add-member`,
# each key made in its data dir); each knows only the relay's address. Every
# router masquerades its site behind its one public address and lets in only
# replies (conntrack): no port forwarding. The script waits until every site node
# has a relay reservation, knows all five other members, and is connected to all of
# them over direct connections (hole punched through both NATs: DCUtR over the
# relayed connection), and prints the counters it read. Then it decides a global
# bft task entered in site 1 whose certificate has members from both sites,
# verifies it offline against the genesis, and checks that the task's messages
# took direct paths. Last line on success: "OK: ...".
#
# NAT_MODE=route (default: masquerade) makes the routers plain routers (no NAT),
# for a direct baseline; NAT_MODE=symmetric makes them symmetric NATs
# (MASQUERADE --random-fully: a new public port per connection), where hole
# punching cannot work and the members must stay on the relay. TASKS=N decides N
# tasks and prints their p50.
#
# Needs root, iproute2 and iptables. Traffic stays inside the namespaces this
# script creates; everything is removed on exit, also on failure or Ctrl-C.
# Usage: scripts/nat-cluster.sh [path/to/polity]   (default: target/release/polity,
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
command -v iptables >/dev/null || { echo "needs iptables" >&2; exit 2; }

P=pnat$$                  # unique names, so parallel runs do not collide
NET=198.51.100
SITES=2
PER_SITE=3
NAT_MODE=${NAT_MODE:-masquerade}
TASKS=${TASKS:-1}
TIMEOUT_S=${NAT_TIMEOUT_S:-90}
WORK=$(mktemp -d)
NAMESPACES=()
PIDS=()

cleanup() {
  set +e
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  sleep 0.5
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null; done
  for ns in "${NAMESPACES[@]}"; do ip netns del "$ns" 2>/dev/null; done
  if [ -n "${KEEP_WORK:-}" ]; then echo "logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT INT TERM

netns() { ip netns add "$1"; NAMESPACES+=("$1"); ip -n "$1" link set lo up; }

# Plugs namespace $1 into the bridge in namespace $2 (bridge br0) as interface $3.
plug() {
  local ns=$1 bridge_ns=$2 name=$3 host=${P}$RANDOM$RANDOM
  ip link add "${host:0:15}" type veth peer name "$name" netns "$ns"
  ip link set "${host:0:15}" netns "$bridge_ns"
  ip -n "$bridge_ns" link set "${host:0:15}" master br0 up
  ip -n "$ns" link set "$name" up
}

bridge() { netns "$1"; ip -n "$1" link add br0 type bridge; ip -n "$1" link set br0 up; }

# The internet, the relay on it, and each site behind its router.
bridge "${P}net"
netns "${P}relay"
plug "${P}relay" "${P}net" eth0
ip -n "${P}relay" addr add "$NET.1/24" dev eth0
netns "${P}public"
plug "${P}public" "${P}net" eth0
ip -n "${P}public" addr add "$NET.2/24" dev eth0
for s in $(seq 1 $SITES); do
  router=${P}r$s
  netns "$router"
  plug "$router" "${P}net" wan
  ip -n "$router" addr add "$NET.$((10 + s))/24" dev wan
  bridge "${P}s${s}lan"
  plug "$router" "${P}s${s}lan" lan
  ip -n "$router" addr add "10.$s.0.1/24" dev lan
  ip netns exec "$router" sysctl -qw net.ipv4.ip_forward=1
  if [ "$NAT_MODE" != route ]; then
    random=""
    [ "$NAT_MODE" = symmetric ] && random=--random-fully
    # A home router: the site leaves under the router's address; only replies
    # (conntrack) come back in. Linux keeps a connection's source port when it is
    # free, so a node that dials from its listen port (libp2p reuses it) gets the
    # same public port toward every peer: endpoint-independent mapping, what hole
    # punching needs.
    ip netns exec "$router" iptables -t nat -A POSTROUTING -o wan -j MASQUERADE $random
    ip netns exec "$router" iptables -A FORWARD -i wan -o lan -m conntrack \
      --ctstate ESTABLISHED,RELATED -j ACCEPT
    ip netns exec "$router" iptables -A FORWARD -i wan -o lan -j DROP
    # Unsolicited packets to the router itself are dropped, not answered: a
    # hole-punch SYN that arrives before the site's own SYN has left must not
    # come back as a reset (or an ICMP "port unreachable" for QUIC), which would
    # kill the mapping the other side is punching.
    ip netns exec "$router" iptables -A INPUT -i wan -m conntrack \
      --ctstate ESTABLISHED,RELATED -j ACCEPT
    ip netns exec "$router" iptables -A INPUT -i wan -j DROP
  fi
  for i in $(seq 1 $PER_SITE); do
    ns=${P}s${s}n$i
    netns "$ns"
    plug "$ns" "${P}s${s}lan" eth0
    ip -n "$ns" addr add "10.$s.0.$((10 + i))/24" dev eth0
    ip -n "$ns" route add default via "10.$s.0.1"
  done
done
if [ "$NAT_MODE" = route ]; then
  # The baseline: every site routed, no NAT.
  for s in $(seq 1 $SITES); do
    ip -n "${P}relay" route add "10.$s.0.0/24" via "$NET.$((10 + s))"
    ip -n "${P}public" route add "10.$s.0.0/24" via "$NET.$((10 + s))"
    for t in $(seq 1 $SITES); do
      [ "$s" = "$t" ] || ip -n "${P}r$s" route add "10.$t.0.0/24" via "$NET.$((10 + t))"
    done
  done
fi

# The genesis: the six site nodes, one region per site.
first=1
for s in $(seq 1 $SITES); do
  for i in $(seq 1 $PER_SITE); do
    if [ $first = 1 ]; then
      "$POLITY" genesis init --out "$WORK/genesis.pb" --federation nat \
        --authority-dir "$WORK/authority" --member-dir "$WORK/s${s}n$i" \
        --region "site-$s" --continent earth --capability sha256 >/dev/null
      first=0
    else
      "$POLITY" genesis add-member "$WORK/genesis.pb" --authority-dir "$WORK/authority" \
        --member-dir "$WORK/s${s}n$i" --region "site-$s" --continent earth \
        --capability sha256 >/dev/null
    fi
  done
done

start() { # name, namespace, ip, port, region, extra args...
  local name=$1 ns=$2 address=$3 port=$4 region=$5; shift 5
  mkdir -p "$WORK/$name"
  ip netns exec "$ns" "$POLITY" node --data-dir "$WORK/$name" \
    --listen "/ip4/$address/tcp/$port" --listen "/ip4/$address/udp/$port/quic-v1" \
    --grpc-addr 127.0.0.1:7001 --http-addr 127.0.0.1:7002 \
    --region "$region" --continent earth --no-mdns --genesis "$WORK/genesis.pb" \
    --capability sha256=builtin:sha256 "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
}

# A relay serves only once it knows an address of its own is reachable; AutoNAT
# needs outbound connections, and a bootstrap node mostly gets inbound ones, so
# the operator says it.
start relay "${P}relay" "$NET.1" 7100 public --relay-server \
  --external-address "/ip4/$NET.1/tcp/7100" --external-address "/ip4/$NET.1/udp/7100/quic-v1"
RELAY_ID=$("$POLITY" id --data-dir "$WORK/relay")
RELAY="/ip4/$NET.1/tcp/7100/p2p/$RELAY_ID"
# Both transports, so each node learns its public address over TCP and over QUIC
# and hole punching can use either.
RELAY_QUIC="/ip4/$NET.1/udp/7100/quic-v1/p2p/$RELAY_ID"
START_S=$SECONDS
start public "${P}public" "$NET.2" 7100 public --bootstrap "$RELAY" --bootstrap "$RELAY_QUIC"
for s in $(seq 1 $SITES); do
  for i in $(seq 1 $PER_SITE); do
    # Distinct ports inside a site: behind one public address, two nodes dialing
    # the same peer from the same port would collide in the router's mapping.
    start "s${s}n$i" "${P}s${s}n$i" "10.$s.0.$((10 + i))" $((7100 + i)) "site-$s" \
      --bootstrap "$RELAY" --bootstrap "$RELAY_QUIC"
  done
done

SITE_NODES=()
for s in $(seq 1 $SITES); do for i in $(seq 1 $PER_SITE); do SITE_NODES+=("s${s}n$i"); done; done
MEMBERS=$((SITES * PER_SITE))

in_ns() { local name=$1; shift; ip netns exec "${P}$name" "$@"; }
metric() { # name, metric -> value (0 when absent)
  in_ns "$1" curl -s 127.0.0.1:7002/metrics 2>/dev/null \
    | awk -v m="$2" '$1 == m || $1 == m"_total" { print $2; found=1 } END { if (!found) print 0 }' \
    | head -1
}
sum_float() { local total=0 v; for n in "${SITE_NODES[@]}"; do v=$(metric "$n" "$1"); total=$(python3 -c "print($total + float('$v'))"); done; echo "$total"; }
sum_metric() { python3 -c "print(int($(sum_float "$1")))"; }
# Peers of node $1 that are members (region site-*), connected, with info.
members_connected() {
  in_ns "$1" "$POLITY" peers --addr http://127.0.0.1:7001 --json 2>/dev/null \
    | python3 -c '
import json, sys
peers = json.load(sys.stdin)
print(sum(1 for p in peers if p.get("region", "").startswith("site-") and p.get("connected")))' \
    2>/dev/null || echo 0
}

wait_for() { # description, command...
  local what=$1; shift
  local deadline=$((SECONDS + TIMEOUT_S))
  until "$@"; do
    if [ $SECONDS -ge $deadline ]; then
      echo "FAILED: $what within ${TIMEOUT_S}s" >&2
      for f in "$WORK"/*.log; do echo "--- $f"; tail -15 "$f"; done >&2
      exit 1
    fi
    sleep 0.5
  done
}

reserved() {
  [ "$NAT_MODE" = route ] && return 0
  for n in "${SITE_NODES[@]}"; do
    python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1])).get("relayed") else 1)' \
      "$WORK/$n/endpoints.json" 2>/dev/null || return 1
  done
}
wait_for "every site node holds a relay reservation" reserved
echo "relay reservations: every site node after $((SECONDS - START_S)) s"
confirmed() { # name -> the addresses endpoints.json lists as reachable
  python3 -c 'import json,sys; print(" ".join(json.load(open(sys.argv[1])).get("reachable", [])))' \
    "$WORK/$1/endpoints.json" 2>/dev/null
}
public_confirmed() { [ -n "$(confirmed public)" ]; }
wait_for "AutoNAT confirms the public node's address" public_confirmed
echo "confirmed reachable: relay (--external-address): $(confirmed relay)"
echo "confirmed reachable: public node (AutoNAT v2): $(confirmed public)"
if [ "$NAT_MODE" != route ]; then
  for n in "${SITE_NODES[@]}"; do
    [ -z "$(confirmed "$n")" ] || {
      echo "FAILED: $n behind NAT claims a reachable address: $(confirmed "$n")" >&2; exit 1; }
  done
  echo "confirmed reachable: none of the site nodes behind NAT (right)"
fi

all_direct() {
  for n in "${SITE_NODES[@]}"; do
    [ "$(members_connected "$n")" -ge $((MEMBERS - 1)) ] || return 1
  done
  [ "$NAT_MODE" = symmetric ] || [ "$(sum_metric polity_p2p_relayed_connections)" -eq 0 ]
}
if [ "$NAT_MODE" = symmetric ]; then
  wait_for "every member connected to the five others" all_direct
  sleep 5 # the hole punches' attempts
else
  wait_for "every member connected directly to the five others" all_direct
fi
CONVERGED_S=$((SECONDS - START_S))

punched=$(sum_metric polity_p2p_hole_punches_succeeded)
failed=$(sum_metric polity_p2p_hole_punches_failed)
punch_sum=$(sum_float polity_p2p_hole_punch_seconds_sum)
punch_count=$(sum_metric polity_p2p_hole_punch_seconds_count)
echo "members connected ($NAT_MODE) after ${CONVERGED_S} s; hole punches: $punched succeeded, $failed failed"
if [ "$punch_count" -gt 0 ]; then
  echo "relayed -> direct: mean $(python3 -c "print(round($punch_sum * 1000 / $punch_count))") ms over $punch_count hole punches"
fi
if [ "$NAT_MODE" = symmetric ]; then
  echo "relayed connections open: $(sum_metric polity_p2p_relayed_connections)"
fi
upgrades() { cat "$WORK"/s*.log | grep "direct connection next to a relayed one" | grep -c "$1" || true; }
echo "direct connections that replaced relayed ones: $(upgrades /tcp/) over TCP, $(upgrades /quic-v1) over QUIC"
if [ "$NAT_MODE" = masquerade ]; then
  [ "$punched" -ge $((PER_SITE * PER_SITE)) ] || {
    echo "FAILED: expected at least $((PER_SITE * PER_SITE)) hole punches, saw $punched" >&2; exit 1; }
fi
for n in s1n1 s2n1; do
  echo "$n sees:"; in_ns "$n" "$POLITY" peers --addr http://127.0.0.1:7001
done
echo "relay:"; in_ns relay "$POLITY" info --addr http://127.0.0.1:7001 | grep address
echo "s1n1:"; in_ns s1n1 "$POLITY" info --addr http://127.0.0.1:7001 | grep address

# Global tasks entered in site 1: members from both sites, verified offline.
relayed_before=$(sum_metric polity_p2p_messages_relayed)
direct_before=$(sum_metric polity_p2p_messages_direct)
: >"$WORK/latencies.txt"
for t in $(seq 1 "$TASKS"); do
  started=$(date +%s%N)
  in_ns s1n1 "$POLITY" submit --addr http://127.0.0.1:7001 --capability sha256 \
    --payload "nat-$t" --scope global --replication 3 --adversarial-risk 0.9 \
    --certificate-out "$WORK/cert.pb" --json >"$WORK/submit.json"
  echo $(( ($(date +%s%N) - started) / 1000000 )) >>"$WORK/latencies.txt"
  python3 - "$WORK/submit.json" <<'PY'
import json, sys
record = json.load(open(sys.argv[1]))
text = json.dumps(record)
assert "DECIDED" in text, text[:2000]
for site in ("site-1", "site-2"):
    assert f'"{site}"' in text, f"no member of {site} in the record: {text[:2000]}"
PY
  "$POLITY" verify "$WORK/cert.pb" --federation "$WORK/genesis.pb" >"$WORK/verify.txt"
done
relayed=$(( $(sum_metric polity_p2p_messages_relayed) - relayed_before ))
direct=$(( $(sum_metric polity_p2p_messages_direct) - direct_before ))
p50=$(sort -n "$WORK/latencies.txt" | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
echo "global tasks: $TASKS decided and verified, p50 ${p50} ms; their messages: $direct direct, $relayed relayed"
cat "$WORK/verify.txt"
case $NAT_MODE in
  masquerade)
    [ "$relayed" -eq 0 ] || { echo "FAILED: $relayed task messages went through the relay" >&2; exit 1; }
    echo "OK: $MEMBERS members at $SITES sites behind NAT ($NAT_MODE) federated through a relay, hole-punched to direct connections, and decided a global task" ;;
  symmetric)
    echo "OK: $MEMBERS members at $SITES sites behind symmetric NATs stayed on the relay ($relayed task messages relayed) and decided a global task" ;;
  route)
    echo "OK: $MEMBERS members at $SITES routed sites (no NAT) connected directly and decided a global task" ;;
esac
