#!/usr/bin/env bash
# Measures reliability for every cell of RELIABILITY.md's table:
# eps in {0.05, 0.15, 0.3} x N in {3, 5, 7} x {1 level (region), 2 levels (continent)}.
#
#   bash scripts/reliability-table.sh [K] [PATH] [OUT_DIR]
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
mkdir -p "$OUT"
cargo build --release --bins -q
export POLITY_BIN=$PWD/target/release/polity
for scope in region continent; do
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
python3 - "$OUT" <<'PY' | tee "$OUT/table.md"
import json, sys, glob, os
out = sys.argv[1]
rows = []
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    d = json.load(open(path))
    c, m = d["config"], d["measured"]
    majority = next(t for t in d["theory"] if t["name"].startswith("majority"))
    seed = next(t for t in d["theory"] if t["name"].startswith("seed"))
    quorum = next((t for t in d["theory"] if t["name"].startswith("quorum")), majority)
    levels = 1 if c["scope"] == "region" else 2
    rows.append((levels, c["replicas"], c["epsilon"], d, majority, seed, quorum))
rows.sort(key=lambda r: (r[0], r[1], r[2]))
print("| levels | N | eps | K | correct | wrong | undecided | measured P(correct) [95 % CI] | majority theory | in CI | quorum model | seed 1-eps^(N*d) | measured P(wrong) [95 % CI] | theory P(wrong) |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for levels, n, eps, d, maj, seed, quorum in rows:
    k, m = d["counts"], d["measured"]
    r, w = m["reliability"], m["wrong_rate"]
    print(f"| {levels} | {n} | {eps} | {k['tasks']} | {k['correct']} | {k['wrong']} | {k['undecided'] + k['errors'] + k['invalid']} "
          f"| {r['value']:.4f} [{r['low']:.4f}, {r['high']:.4f}] | {maj['correct']:.4f} | {'yes' if maj['correct_inside'] else 'NO'} "
          f"| {quorum['correct']:.4f} | {seed['correct']:.6f} | {w['value']:.4f} [{w['low']:.4f}, {w['high']:.4f}] | {maj['wrong']:.4f} |")
PY
