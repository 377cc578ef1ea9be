#!/usr/bin/env bash
# Installs the Debian packages bulkhead's build and tests use (idempotent).
set -euo pipefail
# libseccomp-dev and pkg-config: the CLI links libseccomp to compile OCI
# seccomp profiles into the guest's BPF filter (and virtiofsd links it too).
# podman, containerd and docker.io: tests/tests/engines.rs runs bulkhead
# as their OCI runtime (util-linux's script(1) gives `podman run -t` a tty).
# nftables: bulkhead's NAT and published ports (`nft -j -f -`); iproute2 for
# the tests' network namespaces; netavark (with iptables and aardvark-dns)
# is podman's network backend; iperf3 measures network throughput.
# docker-registry, skopeo, apache2-utils (htpasswd), openssl and curl: the
# registry tests (tests/tests/registry.rs) and scripts/bench-pull.sh serve
# pushed images from a local TLS + auth registry.
pkgs=(e2fsprogs busybox-static cpio util-linux gcc libc6-dev runc libseccomp-dev pkg-config
    podman containerd docker.io nftables iproute2 netavark aardvark-dns iptables iperf3
    docker-registry skopeo apache2-utils openssl curl)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    echo "[deps] installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
fi

# virtiofsd serves `run -v /host/dir:/path`. Found where bulkhead looks for
# it ($BULKHEAD_VIRTIOFSD, PATH, ~/.cargo/bin, the distribution paths), or
# built once with cargo (about 3 minutes).
find_virtiofsd() {
    if [ -n "${BULKHEAD_VIRTIOFSD:-}" ]; then
        [ -x "$BULKHEAD_VIRTIOFSD" ] || {
            echo "[deps] \$BULKHEAD_VIRTIOFSD ($BULKHEAD_VIRTIOFSD) is not executable" >&2
            exit 1
        }
        return 0
    fi
    command -v virtiofsd >/dev/null 2>&1 && return 0
    for p in "${HOME:-/root}/.cargo/bin/virtiofsd" /usr/libexec/virtiofsd /usr/lib/qemu/virtiofsd; do
        [ -x "$p" ] && return 0
    done
    return 1
}
if ! find_virtiofsd; then
    echo "[deps] building virtiofsd (cargo install virtiofsd, ~3 min)" >&2
    export DEBIAN_FRONTEND=noninteractive
    for p in libcap-ng-dev; do
        dpkg -s "$p" >/dev/null 2>&1 ||
            apt-get install -y -q "$p" >/dev/null 2>&1 ||
            { apt-get update -q >/dev/null && apt-get install -y -q "$p" >/dev/null; }
    done
    log=$(mktemp)
    cargo install virtiofsd --locked --quiet >"$log" 2>&1 || {
        cat "$log" >&2
        rm -f "$log"
        exit 1
    }
    rm -f "$log"
fi
