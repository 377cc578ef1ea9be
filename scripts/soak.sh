#!/usr/bin/env bash
# Soak: N sequential warm runs (`bulkhead run --network none busybox true`,
# restoring one template) in a store root of their own, and what the host
# holds before, every STEP runs, and after: open file handles (system-wide,
# /proc/sys/fs/file-nr), available memory, the store root's disk use and
# entries left in its run directory. A leak shows as a column that grows.
# Needs root and a built bulkhead (BULKHEAD_BIN or target/release/bulkhead).
#
#   scripts/soak.sh [N] [STEP]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${BULKHEAD_BIN:-$here/target/release/bulkhead}
runs=${1:-1000}
step=${2:-100}
[ -x "$bin" ] || { echo "no bulkhead binary at $bin: cargo build --release or set BULKHEAD_BIN" >&2; exit 1; }
root=$(mktemp -d /tmp/bulkhead-soak.XXXXXX)
trap 'rm -rf "$root"' EXIT
# The kernel and agent scripts/build.sh installed, unless given.
export BULKHEAD_KERNEL=${BULKHEAD_KERNEL:-/var/lib/bulkhead/vmlinux}
export BULKHEAD_AGENT=${BULKHEAD_AGENT:-/var/lib/bulkhead/bulkhead-agent}
export BULKHEAD_ROOT=$root

sample() {
    local fds mem disk left
    fds=$(cut -f1 /proc/sys/fs/file-nr)
    mem=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
    disk=$(du -sk "$root" | cut -f1)
    left=$(find "$root/run" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    printf '| %s | %s | %s | %s | %s |\n' "$1" "$fds" "$((mem / 1024))" "$disk" "$left"
}

# The template is made before the first sample.
"$bin" run --network none busybox true
echo "| runs | host fds | MemAvailable MiB | store KiB | run dirs left |"
echo "|---|---|---|---|---|"
sample 0
start=$(date +%s)
for i in $(seq 1 "$runs"); do
    "$bin" run --network none busybox true || { echo "run $i failed" >&2; exit 1; }
    if (( i % step == 0 || i == runs )); then sample "$i"; fi
done
echo "$runs runs in $(( $(date +%s) - start )) s" >&2
