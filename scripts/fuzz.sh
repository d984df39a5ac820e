#!/usr/bin/env bash
# Runs polity-fuzz targets under AFL++ (the afl crate, stable Rust), one after the
# other, each for EXECS executions (default 10^6), then prints one table row per
# target from AFL's fuzzer_stats. Needs `cargo install cargo-afl` once (it builds
# AFL++ with gcc and make).
#
#   scripts/fuzz.sh                  # every target, 10^6 executions each
#   EXECS=100000 scripts/fuzz.sh raft config
#   MINIMIZE=1 scripts/fuzz.sh statement   # then fold the queue into the corpus
#
# afl-fuzz is called directly, without the `-c0` (CMPLOG) that `cargo afl fuzz` adds:
# on stable Rust the binaries carry no CMPLOG instrumentation and that stage took
# three quarters of the run time (CMPLOG=1 uses `cargo afl fuzz` anyway).
# Findings land in $OUT/<target>/default/{crashes,hangs}. MINIMIZE=1 runs afl-cmin on
# the queue and adds the smallest of the kept inputs to fuzz/corpus/<target>/ until
# the directory holds BUDGET bytes (default 200000), so the committed corpora stay
# small; `cargo test -p polity-fuzz` replays them.
set -euo pipefail
cd "$(dirname "$0")/.."
EXECS=${EXECS:-1000000}
OUT=${OUT:-target/fuzz-out}
BUDGET=${BUDGET:-200000}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
RUSTC_VERSION=$(rustc -V | awk '{print $2}')
AFL_BIN=${AFL_BIN:-$(ls -d "$HOME"/.local/share/afl.rs/rustc-"$RUSTC_VERSION"-*/afl.rs-*/afl/bin | tail -1)}
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(frame statement certificate node_info peer_envelope raft registry export config)
fi
cargo afl build --release -p polity-fuzz --features afl --bins
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
for target in "${TARGETS[@]}"; do
    rm -rf "${OUT:?}/$target"
    mkdir -p "$OUT/$target"
    binary="$TARGET_DIR/release/fuzz_$target"
    if [ "${CMPLOG:-0}" = 1 ]; then
        cargo afl fuzz -i "fuzz/corpus/$target" -o "$OUT/$target" -E "$EXECS" "$binary" \
            >"$OUT/$target.log" 2>&1
    else
        "$AFL_BIN/afl-fuzz" -i "fuzz/corpus/$target" -o "$OUT/$target" -E "$EXECS" -- "$binary" \
            >"$OUT/$target.log" 2>&1
    fi
    if [ "${MINIMIZE:-0}" = 1 ]; then
        rm -rf "$OUT/min-$target"
        PATH="$AFL_BIN:$PATH" afl-cmin.bash -i "$OUT/$target/default/queue" \
            -o "$OUT/min-$target" -- "$binary" >"$OUT/min-$target.log" 2>&1
        python3 - "$OUT/min-$target" "fuzz/corpus/$target" "$BUDGET" <<'PY'
import hashlib, os, sys
src, dst, budget = sys.argv[1], sys.argv[2], int(sys.argv[3])
total = sum(os.path.getsize(os.path.join(dst, f)) for f in os.listdir(dst))
for size, name in sorted((os.path.getsize(os.path.join(src, f)), f) for f in os.listdir(src)):
    if total + size > budget:
        break
    data = open(os.path.join(src, name), "rb").read()
    kept = os.path.join(dst, "cmin-" + hashlib.sha256(data).hexdigest()[:16])
    if not os.path.exists(kept):
        open(kept, "wb").write(data)
        total += size
PY
    fi
done
echo "| target | executions | exec/s | run time (s) | corpus | edges found | crashes | hangs |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for target in "${TARGETS[@]}"; do
    stats="$OUT/$target/default/fuzzer_stats"
    get() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
    echo "| $target | $(get execs_done) | $(get execs_per_sec) | $(get run_time) \
| $(get corpus_count) | $(get edges_found)/$(get total_edges) | $(get saved_crashes) \
| $(get saved_hangs) |"
done
