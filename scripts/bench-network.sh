#!/usr/bin/env bash
# Network figures for bulkhead, side by side with a plain baseline measured
# in the same run: TCP throughput host→container and container→host
# (iperf3 from Debian) and the latency of a small HTTP GET (a new
# connection each), for
#   bulkhead: a container on bulkhead's bridge (virtio-net on a TAP), and
#   veth:     two network namespaces joined by a veth pair.
# Everything runs inside network namespaces this script makes and removes;
# nothing is sent off the machine. Needs root, iperf3, busybox, python3 and
# a built bulkhead (scripts/build.sh).
#
#   scripts/bench-network.sh [SECONDS_PER_IPERF_RUN] [GETS]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${BULKHEAD_BIN:-$here/target/release/bulkhead}
secs=${1:-10}
gets=${2:-200}
ns=bhb-host-$$
va=bhb-a-$$
vb=bhb-b-$$
www=$(mktemp -d)
root=$(mktemp -d)
export BULKHEAD_ROOT=${BULKHEAD_ROOT:-$root}
echo "hello from the benchmark" >"$www/index.html"

in_ns() { ip netns exec "$1" "${@:2}"; }
cleanup() {
    in_ns "$ns" "$bin" rm -f bench-net >/dev/null 2>&1 || true
    for n in "$ns" "$va" "$vb"; do ip netns pids "$n" 2>/dev/null | xargs -r kill 2>/dev/null || true; done
    for n in "$ns" "$va" "$vb"; do ip netns del "$n" 2>/dev/null || true; done
    rm -rf "$www" "$root"
}
trap cleanup EXIT
for n in "$ns" "$va" "$vb"; do ip netns add "$n"; ip -n "$n" link set lo up; done

# iperf3 -c TARGET [-R] in namespace NS: Mbit/s received. A server still
# finishing the previous test says it is busy: try again.
iperf() {
    local out
    for _ in $(seq 20); do
        out=$(in_ns "$1" iperf3 -c "$2" -t "$secs" -J "${@:3}" || true)
        if echo "$out" | python3 -c 'import json,sys; sys.exit(0 if "sum_received" in json.load(sys.stdin).get("end", {}) else 1)' 2>/dev/null; then
            echo "$out" | python3 -c 'import json,sys; print("%.1f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e6))'
            return
        fi
        sleep 3
    done
    echo "iperf3 -c $2 ${*:3} kept failing: $out" >&2
    exit 1
}
# $gets GETs of http://TARGET/ from namespace NS: median and p99 in ms.
latency() {
    in_ns "$1" python3 - "$2" "$gets" <<'PY'
import http.client, statistics, sys, time
host, n = sys.argv[1], int(sys.argv[2])
def get():
    c = http.client.HTTPConnection(host, 80, timeout=30)
    c.request("GET", "/"); c.getresponse().read(); c.close()
for _ in range(60):
    try:
        get(); break
    except OSError:
        time.sleep(1)
t = []
for _ in range(n):
    s = time.perf_counter(); get(); t.append((time.perf_counter() - s) * 1e3)
t.sort()
print("%.2f %.2f" % (statistics.median(t), t[int(len(t) * 0.99) - 1]))
PY
}

echo "[bench-network] bulkhead container (warm start) ..." >&2
in_ns "$ns" "$bin" run -d --name bench-net \
    -v /usr/bin:/hostbin:ro -v /usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu:ro \
    -v /lib64:/lib64:ro -v "$www:/www:ro" \
    busybox sh -c '/hostbin/iperf3 -s -D && exec httpd -f -p 80 -h /www' >/dev/null
cip=$(in_ns "$ns" "$bin" network inspect bridge |
    python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["containers"][0]["address"].split("/")[0])')
# httpd starts once iperf3 is up: latency() waits for it.
bh_lat=$(latency "$ns" "$cip")
bh_up=$(iperf "$ns" "$cip")
bh_down=$(iperf "$ns" "$cip" -R)

echo "[bench-network] veth pair between two namespaces ..." >&2
ip link add "v$$a" netns "$va" type veth peer name "v$$b" netns "$vb"
ip -n "$va" addr add 10.201.0.1/24 dev "v$$a"
ip -n "$vb" addr add 10.201.0.2/24 dev "v$$b"
ip -n "$va" link set "v$$a" up
ip -n "$vb" link set "v$$b" up
in_ns "$vb" iperf3 -s -D
in_ns "$vb" busybox httpd -p 80 -h "$www"
sleep 1
ve_lat=$(latency "$va" 10.201.0.2)
ve_up=$(iperf "$va" 10.201.0.2)
ve_down=$(iperf "$va" 10.201.0.2 -R)

printf '\n%-34s %14s %14s\n' "" "bulkhead" "veth pair"
printf '%-34s %14s %14s\n' "TCP host→container (Mbit/s)" "$bh_up" "$ve_up"
printf '%-34s %14s %14s\n' "TCP container→host (Mbit/s)" "$bh_down" "$ve_down"
printf '%-34s %14s %14s\n' "HTTP GET median (ms)" "${bh_lat% *}" "${ve_lat% *}"
printf '%-34s %14s %14s\n' "HTTP GET p99 (ms)" "${bh_lat#* }" "${ve_lat#* }"
echo "($secs s per iperf3 run, $gets GETs, $(nproc) CPUs, $(date -u +%FT%TZ))"
