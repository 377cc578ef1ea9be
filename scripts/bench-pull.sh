#!/usr/bin/env bash
# Pull throughput: `bulkhead pull` side by side with `podman pull` of the
# same ~100 MB image (busybox plus one layer of incompressible random
# bytes) from a local registry (Debian's docker-registry, CNCF distribution
# 2.8) with TLS (a CA made here) and htpasswd auth. The registry listens on
# 127.0.0.1 inside a network namespace this script makes; both clients run
# there with a fresh store for every repetition (podman: --root/--runroot
# with the vfs driver). Nothing leaves the machine; everything made is
# removed at exit. Needs root, docker-registry, skopeo, htpasswd, openssl,
# curl, podman (scripts/deps.sh) and a built bulkhead (BULKHEAD_BIN or
# target/release/bulkhead).
#
#   scripts/bench-pull.sh [REPS] [MIB]
set -euo pipefail
shopt -s inherit_errexit  # a failed pull inside $(...) stops the script
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${BULKHEAD_BIN:-$here/target/release/bulkhead}
reps=${1:-3}
mib=${2:-100}
[ -x "$bin" ] || { echo "no bulkhead binary at $bin: cargo build --release or set BULKHEAD_BIN" >&2; exit 1; }
for p in docker-registry skopeo htpasswd openssl curl podman nsenter; do
    command -v "$p" >/dev/null || { echo "$p is missing: run scripts/deps.sh" >&2; exit 1; }
done

ns=bhp-$$
work=$(mktemp -d /tmp/bench-pull.XXXXXX)
reg_pid=
cleanup() {
    [ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null && wait "$reg_pid" 2>/dev/null || true
    ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
in_ns() { nsenter --net="/run/netns/$ns" "$@"; }

# A CA, a server certificate for 127.0.0.1 signed by it, a user.
user=bench pass=bench-password port=5000
mkdir -p "$work/certs" "$work/storage"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=bench-pull CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$work/ca.key" -out "$work/certs/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$work/server.key" -out "$work/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$work/server.ext"
openssl x509 -req -days 1 -set_serial 2 -in "$work/server.csr" -CA "$work/certs/ca.crt" \
    -CAkey "$work/ca.key" -extfile "$work/server.ext" -out "$work/server.crt" 2>/dev/null
htpasswd -Bbn "$user" "$pass" >"$work/htpasswd"
cat >"$work/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/storage
http:
  addr: 127.0.0.1:$port
  tls:
    certificate: $work/server.crt
    key: $work/server.key
auth:
  htpasswd:
    realm: bench
    path: $work/htpasswd
EOF
in_ns docker-registry serve "$work/config.yml" >"$work/registry.log" 2>&1 &
reg_pid=$!
for _ in $(seq 200); do
    code=$(in_ns curl -s -o /dev/null -w '%{http_code}' --cacert "$work/certs/ca.crt" "https://127.0.0.1:$port/v2/" || true)
    [ "$code" = 401 ] && break
    kill -0 "$reg_pid" 2>/dev/null || { cat "$work/registry.log" >&2; exit 1; }
    sleep 0.1
done
[ "$code" = 401 ] || { echo "the registry does not answer" >&2; cat "$work/registry.log" >&2; exit 1; }

# The image: busybox, then $mib MiB of random bytes.
mkdir -p "$work/base/bin" "$work/data/srv"
cp /bin/busybox "$work/base/bin/busybox"
ln -s busybox "$work/base/bin/sh"
head -c "$((mib << 20))" /dev/urandom >"$work/data/srv/random.bin"
tar -C "$work/base" -cf "$work/base.tar" .
tar -C "$work/data" -cf "$work/data.tar" .
rm -rf "$work/base" "$work/data"
ref=127.0.0.1:$port/bench/big:1
echo "[bench-pull] pushing a $mib MiB image to $ref" >&2
in_ns skopeo --insecure-policy copy -q --dest-cert-dir "$work/certs" --dest-creds "$user:$pass" \
    "tarball:$work/base.tar:$work/data.tar" "docker://$ref"
rm -f "$work/base.tar" "$work/data.tar"
bytes=$(in_ns skopeo inspect --raw --cert-dir "$work/certs" --creds "$user:$pass" "docker://$ref" |
    python3 -c 'import json,sys; m=json.load(sys.stdin); print(m["config"]["size"]+sum(l["size"] for l in m["layers"]))')
auth=$(printf '%s' "$user:$pass" | base64 -w0)
printf '{"auths":{"127.0.0.1:%s":{"auth":"%s"}}}\n' "$port" "$auth" >"$work/auth.json"

now() { date +%s.%N; }
# Seconds one pull took, the store made fresh for it and removed after.
time_bulkhead() {
    local root=$work/bulkhead-root t0 t1
    rm -rf "$root"
    t0=$(now)
    in_ns env BULKHEAD_ROOT="$root" "$bin" pull -q --tls-ca "$work/certs/ca.crt" \
        --authfile "$work/auth.json" "$ref" >/dev/null
    t1=$(now)
    rm -rf "$root"
    python3 -c "print('%.2f' % ($t1 - $t0))"
}
time_podman() {
    local store=$work/podman t0 t1
    rm -rf "$store"
    t0=$(now)
    in_ns podman --root "$store/root" --runroot "$store/run" --storage-driver vfs --log-level error \
        --events-backend none pull -q --tls-verify --cert-dir "$work/certs" \
        --creds "$user:$pass" "$ref" >/dev/null
    t1=$(now)
    rm -rf "$store"
    python3 -c "print('%.2f' % ($t1 - $t0))"
}

b=() p=()
for i in $(seq "$reps"); do
    echo "[bench-pull] repetition $i/$reps" >&2
    b+=("$(time_bulkhead)")
    p+=("$(time_podman)")
done

python3 - "$bytes" "${b[*]}" "${p[*]}" <<'PY'
import statistics, sys
size = int(sys.argv[1])
b = [float(x) for x in sys.argv[2].split()]
p = [float(x) for x in sys.argv[3].split()]
mb = size / 1e6
print(f"pull of {mb:.1f} MB (compressed) from a local TLS + auth registry, fresh store each time")
print(f"{'':>8}  {'bulkhead s':>10} {'MB/s':>8}  {'podman s':>10} {'MB/s':>8}")
for i, (x, y) in enumerate(zip(b, p), 1):
    print(f"{'rep ' + str(i):>8}  {x:>10.2f} {mb / x:>8.1f}  {y:>10.2f} {mb / y:>8.1f}")
mx, my = statistics.median(b), statistics.median(p)
print(f"{'median':>8}  {mx:>10.2f} {mb / mx:>8.1f}  {my:>10.2f} {mb / my:>8.1f}")
PY
