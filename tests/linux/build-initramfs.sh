#!/bin/sh
# Build the busybox initramfs the Linux traces are recorded with: busybox-static and
# tests/linux/init, nothing else (no kernel modules: the guest needs none). Needs no root: the
# archive has no device nodes (init mounts devtmpfs).
#
#   tests/linux/build-initramfs.sh OUT.cpio
#
# Debian: apt-get install busybox-static. Set BUSYBOX to use another static busybox.
set -eu
out=${1:?usage: $0 OUT.cpio}
here=$(cd "$(dirname "$0")" && pwd)
busybox=${BUSYBOX:-/bin/busybox}
if ! "$busybox" --list 2>/dev/null | grep -qx cpio; then
    echo "$0: $busybox is not a busybox with cpio (apt-get install busybox-static)" >&2
    exit 1
fi
if ldd "$busybox" >/dev/null 2>&1; then
    echo "$0: $busybox is dynamically linked; the initramfs needs busybox-static" >&2
    exit 1
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/proc" "$root/sys" "$root/dev"
cp "$busybox" "$root/bin/busybox"
cp "$here/init" "$root/init"
chmod 0755 "$root/init" "$root/bin/busybox"
case $out in /*) ;; *) out=$PWD/$out ;; esac
(cd "$root" && find . | LC_ALL=C sort | "$busybox" cpio -o -H newc -R 0:0 >"$out.tmp" 2>/dev/null)
mv "$out.tmp" "$out"
