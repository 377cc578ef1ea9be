#!/usr/bin/env bash
# The cost of confinement on a warm start: PAIRS alternating warm runs of
# `bulkhead run --timings --network none busybox true`, confined (the
# default: jail and seccomp on) and unconfined (`--jail off --seccomp off`),
# in a store root of their own, then the median of each timing line
# ("vm build" holds the jail's fork, namespaces, mounts and privilege drop,
# and the restore) for each side. Needs root and a built bulkhead.
#
#   scripts/bench-jail.sh [PAIRS]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${BULKHEAD_BIN:-$here/target/release/bulkhead}
pairs=${1:-5}
[ -x "$bin" ] || { echo "no bulkhead binary at $bin" >&2; exit 1; }
root=$(mktemp -d /tmp/bulkhead-bench-jail.XXXXXX)
trap 'rm -rf "$root"' EXIT
export BULKHEAD_KERNEL=${BULKHEAD_KERNEL:-/var/lib/bulkhead/vmlinux}
export BULKHEAD_AGENT=${BULKHEAD_AGENT:-/var/lib/bulkhead/bulkhead-agent}
export BULKHEAD_ROOT=$root

run() { # $1: label; the rest: global flags
    local label=$1; shift
    "$bin" "$@" run --timings --network none busybox true 2>&1 >/dev/null |
        sed -n 's/^bulkhead: timing: \([a-z ]*[a-z]\) *\([0-9.]*\) ms$/\1\t\2/p' |
        sed "s/^/$label\t/" >>"$root/times"
}

"$bin" run --network none busybox true >/dev/null # the template
for _ in $(seq 1 "$pairs"); do
    run confined
    run unconfined --jail off --seccomp off
done
python3 - "$root/times" <<'EOF'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
phases = list(dict.fromkeys(p for _, p, _ in rows))
med = lambda side, p: statistics.median(float(ms) for s, q, ms in rows if s == side and q == p)
print("| phase (median ms) | jail + seccomp | --jail off --seccomp off |")
print("|---|---|---|")
for p in phases:
    print(f"| {p} | {med('confined', p):.1f} | {med('unconfined', p):.1f} |")
EOF
