#!/usr/bin/env bash
# Measures reliability for every cell of RELIABILITY.md's table:
# eps in {0.05, 0.15, 0.3} x N in {3, 5, 7} x {1 level (region), 2 levels (continent)}.
#
#   bash scripts/reliability-table.sh [K] [PATH] [OUT_DIR] [SCOPES]
#
# K tasks per cell (default 1000), consensus path (default bft). Each cell starts a
# fresh cluster (N nodes, or 3 regions of N nodes), injects eps on every node, runs
# K tasks and writes its JSON to OUT_DIR/<scope>-n<N>-e<eps>.json; the markdown
# table goes to OUT_DIR/table.md.
set -euo pipefail
cd "$(dirname "$0")/.."
K=${1:-1000}
PATH_KIND=${2:-bft}
OUT=${3:-target/reliability}
SCOPES=${4:-region continent}
mkdir -p "$OUT"
cargo build --release --bins -q
export POLITY_BIN=$PWD/target/release/polity
for scope in $SCOPES; do
  for n in 3 5 7; do
    for eps in 0.05 0.15 0.3; do
      file="$OUT/$scope-n$n-e$eps.json"
      echo "== $scope N=$n eps=$eps K=$K path=$PATH_KIND" >&2
      target/release/polity-testnet chaos reliability --tasks "$K" --epsilon "$eps" \
        --replicas "$n" --scope "$scope" --path "$PATH_KIND" --concurrency 16 \
        --seed 7 --dir "$OUT/cluster" --json > "$file"
    done
  done
done
python3 scripts/reliability-table.py "$OUT" | tee "$OUT/table.md"
