#!/usr/bin/env bash
# Builds bulkhead's guest kernel: an uncompressed ELF vmlinux from Debian's
# linux-source-6.1, tinyconfig + bulkhead.config + patches/*.patch.
# The result is cached outside the repo, keyed by the hash of everything that
# built it; a second run with nothing changed prints the cached path at once.
# Progress goes to stderr; the last line of stdout is the vmlinux path.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${BULKHEAD_CACHE:-/var/cache/bulkhead}
log() { echo "[kernel] $*" >&2; }

need_pkgs=()
dpkg -s linux-source-6.1 >/dev/null 2>&1 || need_pkgs+=(linux-source-6.1)
for tool in flex:flex bison:bison bc:bc make:make gcc:gcc perl:perl xz:xz-utils; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || need_pkgs+=("${tool#*:}")
done
dpkg -s libelf-dev >/dev/null 2>&1 || need_pkgs+=(libelf-dev)
dpkg -s libssl-dev >/dev/null 2>&1 || need_pkgs+=(libssl-dev)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    log "installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${need_pkgs[@]}" >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null && apt-get install -y -q "${need_pkgs[@]}" >/dev/null; }
fi

src_tar=$(ls /usr/src/linux-source-6.1.tar.* 2>/dev/null | head -n1)
[ -n "$src_tar" ] || { echo "linux-source-6.1 is installed but /usr/src/linux-source-6.1.tar.* is missing" >&2; exit 1; }
src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1)

key=$( { echo "$src_version"; cat "$here/build.sh" "$here/bulkhead.config" \
          "$here/pvm-cmdline.txt" "$here/pvm-clearcpuid.features" "$here"/patches/*.patch; } |
       sha256sum | cut -c1-16)
out_dir=$cache/kernel/$key
if [ -f "$out_dir/vmlinux" ]; then
    log "cached: linux-source-6.1 $src_version, key $key"
    echo "$out_dir/vmlinux"
    exit 0
fi

work=$cache/kernel/build-$key
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
log "unpacking linux-source-6.1 $src_version"
tar -C "$work" -xf "$src_tar"
tree=$work/linux-source-6.1
for p in "$here"/patches/*.patch; do
    log "applying $(basename "$p")"
    patch -s -d "$tree" -p1 < "$p"
done

# The feature bits PVM hosts must hide are numbered per kernel version:
# check that pvm-cmdline.txt names exactly the bits of this source.
want=$(while read -r f; do
    [ -n "$f" ] || continue
    line=$(grep -E "^#define X86_FEATURE_${f}[[:space:]]" "$tree/arch/x86/include/asm/cpufeatures.h") ||
        { echo "X86_FEATURE_$f not in cpufeatures.h" >&2; exit 1; }
    expr=$(echo "$line" | sed -E 's/.*\(\s*([0-9]+)\s*\*\s*32\s*\+\s*([0-9]+)\s*\).*/\1*32+\2/')
    echo $((expr))
done < "$here/pvm-clearcpuid.features" | sort -n | paste -sd, -)
have=$(grep -o 'clearcpuid=[0-9,]*' "$here/pvm-cmdline.txt" | cut -d= -f2 | tr , '\n' | sort -n | paste -sd, -)
if [ "$want" != "$have" ]; then
    echo "pvm-cmdline.txt has clearcpuid=$have but this kernel numbers the features $want" >&2
    exit 1
fi

jobs=$(nproc)
log "configuring (tinyconfig + bulkhead.config)"
make -s -C "$tree" ARCH=x86_64 tinyconfig >/dev/null
(cd "$tree" && ./scripts/kconfig/merge_config.sh -m .config "$here/bulkhead.config" >/dev/null)
make -s -C "$tree" ARCH=x86_64 olddefconfig >/dev/null

# Kconfig silently drops options whose dependencies are missing: fail loudly.
bad=0
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=*)
            grep -qxF "$line" "$tree/.config" || { log "config: wanted $line, got: $(grep -E "^(# )?${line%%=*}[= ]" "$tree/.config" || echo unset)"; bad=1; } ;;
        "# CONFIG_"*" is not set")
            opt=${line#\# }; opt=${opt%% *}
            if grep -q "^$opt=" "$tree/.config"; then log "config: wanted $opt off, got: $(grep "^$opt=" "$tree/.config")"; bad=1; fi ;;
    esac
done < "$here/bulkhead.config"
[ $bad -eq 0 ] || { echo "kernel config does not hold bulkhead.config (see above)" >&2; exit 1; }

log "building vmlinux with $jobs jobs (a few minutes; full log in $work/build.log)"
start=$(date +%s)
if ! make -C "$tree" ARCH=x86_64 -j"$jobs" vmlinux >"$work/build.log" 2>&1 & then :; fi
pid=$!
while kill -0 "$pid" 2>/dev/null; do
    sleep 15
    kill -0 "$pid" 2>/dev/null && log "$(grep -c '^  [A-Z]' "$work/build.log" || true) build steps, $(( $(date +%s) - start ))s"
done
if ! wait "$pid"; then
    tail -n 30 "$work/build.log" >&2
    echo "kernel build failed" >&2
    exit 1
fi

mkdir -p "$out_dir"
cp "$tree/.config" "$out_dir/config"
cp "$tree/vmlinux" "$out_dir/vmlinux.tmp"
mv "$out_dir/vmlinux.tmp" "$out_dir/vmlinux"
log "built in $(( $(date +%s) - start ))s: $out_dir/vmlinux"
echo "$out_dir/vmlinux"
