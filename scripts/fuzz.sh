#!/usr/bin/env bash
# Builds every cargo-fuzz target in fuzz/ once and runs each for SECONDS
# (default 15) over a temporary copy of its committed corpus, so a run never
# changes the repository. Exits non-zero if any target crashes, hangs
# (-timeout=10) or leaks; the crashing input is left in fuzz/artifacts/<target>/.
# Installs cargo-fuzz when `cargo fuzz` is missing. Needs a nightly toolchain.
#
# Usage: scripts/fuzz.sh [SECONDS]
set -euo pipefail
secs=${1:-15}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
start=$(date +%s)

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "[fuzz] installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

echo "[fuzz] building all targets" >&2
cargo +nightly fuzz build
mapfile -t targets < <(cargo +nightly fuzz list)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${targets[@]}"; do
    mkdir -p "$work/$t"
    if [[ -d fuzz/corpus/$t ]]; then
        cp -r "fuzz/corpus/$t/." "$work/$t/"
    fi
    echo "[fuzz] $t for ${secs}s" >&2
    if ! cargo +nightly fuzz run "$t" "$work/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
        failed+=("$t")
    fi
done

echo "[fuzz] ${#targets[@]} targets in $(( $(date +%s) - start ))s" >&2
if (( ${#failed[@]} )); then
    echo "[fuzz] FAILED: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
