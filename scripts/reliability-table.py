#!/usr/bin/env python3
"""Turns the JSON of `polity-testnet chaos reliability --json` runs in a directory
into RELIABILITY.md's markdown table (see reliability-table.sh)."""
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
print("| levels | N | ε | K | correct | wrong | none | measured P(correct) [95 % CI] | majority theory | in CI | quorum model | in CI | seed 1−ε^(N·d) | measured P(wrong) [95 % CI] | quorum-model P(wrong) | s |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for levels, n, eps, d, maj, seed, quorum in rows:
    k, m = d["counts"], d["measured"]
    r, w = m["reliability"], m["wrong_rate"]
    print(f"| {levels} | {n} | {eps} | {k['tasks']} | {k['correct']} | {k['wrong']} | {k['undecided'] + k['errors'] + k['invalid']} "
          f"| {r['value']:.4f} [{r['low']:.4f}, {r['high']:.4f}] | {maj['correct']:.4f} | {'yes' if maj['correct_inside'] else 'NO'} "
          f"| {quorum['correct']:.4f} | {'yes' if quorum['correct_inside'] else 'NO'} | {seed['correct']:.6f} | {w['value']:.4f} [{w['low']:.4f}, {w['high']:.4f}] | {quorum['wrong']:.4f} | {d['duration_s']:.0f} |")
