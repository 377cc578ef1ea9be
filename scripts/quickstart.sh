#!/usr/bin/env bash
# A fresh machine to a container in a microVM: builds everything (Debian
# packages, the guest kernel, the agent, bulkhead), makes the built-in
# busybox image, and runs a container on it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
scripts/build.sh >/dev/null
echo "[quickstart] bulkhead run busybox echo hello from a microVM" >&2
exec target/release/bulkhead run busybox sh -c 'echo hello from a microVM: $(uname -sr) on $(hostname)'
