#!/usr/bin/env bash
# Builds everything bulkhead needs: Debian packages, the guest kernel (cached
# outside the repo), the static guest agent and the bulkhead binary.
# Prints the kernel path as the last line of stdout.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
scripts/deps.sh
kernel=$(guest-kernel-config/build.sh | tail -n 1)
echo "[build] cargo build --release" >&2
cargo build --release --quiet -p bulkhead >&2
echo "[build] static guest agent" >&2
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --quiet \
    -p bulkhead-agent --target x86_64-unknown-linux-gnu >&2
# Install the guest kernel and agent where `bulkhead run` looks for them.
home=${BULKHEAD_ROOT:-/var/lib/bulkhead}
mkdir -p "$home"
ln -sfn "$kernel" "$home/vmlinux"
install -m 0755 target/x86_64-unknown-linux-gnu/release/bulkhead-agent "$home/bulkhead-agent"
echo "$kernel"
