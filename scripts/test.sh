#!/usr/bin/env bash
# Runs bulkhead's whole test suite: lint, unit tests, the end-to-end tests
# that boot real microVMs with the real kernel and agent, and a short run of
# every fuzz target.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
start=$(date +%s)
kernel=$(scripts/build.sh | tail -n 1)
echo "[test] cargo fmt --check, clippy" >&2
cargo fmt --all -- --check
cargo clippy --release --quiet --workspace --all-targets -- -D warnings
export BULKHEAD_KERNEL=$kernel
export BULKHEAD_BIN=$root/target/release/bulkhead
export BULKHEAD_AGENT=$root/target/x86_64-unknown-linux-gnu/release/bulkhead-agent
echo "[test] cargo test (kernel $kernel)" >&2
cargo test --release --workspace --no-fail-fast 2>&1
echo "[test] fuzz smoke: every target in fuzz/ for 10 s over its corpus" >&2
scripts/fuzz.sh 10
echo "[test] all done in $(( $(date +%s) - start ))s" >&2
