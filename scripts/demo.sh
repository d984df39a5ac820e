#!/usr/bin/env bash
# The main job: build the binaries and run the local testnet demo.
# Extra arguments go to `polity-testnet demo` (e.g. --exit, --dir DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins
exec ./target/release/polity-testnet demo "$@"
