#!/bin/sh
# Build the initramfs (gzip-compressed newc cpio) that tests/tests/vmm_linux.rs boots Debian's
# Linux with, on the example VMM and on QEMU: busybox-static plus tests/vmm-linux/init, which
# prints what Linux found on the PCIe hierarchy and powers off.
#
#   tests/vmm-linux/make-initramfs.sh OUTPUT.cpio.gz [BUSYBOX]
#
# BUSYBOX is a statically linked busybox (default: Debian's busybox-static, /bin/busybox). Only
# busybox itself is needed to build the archive (its cpio and gzip applets); no root rights.
set -eu

out=${1:?usage: make-initramfs.sh OUTPUT.cpio.gz [BUSYBOX]}
busybox=${2:-/bin/busybox}
here=$(cd "$(dirname "$0")" && pwd)

if ! "$busybox" --list 2>/dev/null | grep -qx cpio; then
    echo "make-initramfs.sh: $busybox is not a busybox with cpio (install busybox-static)" >&2
    exit 1
fi
if command -v file >/dev/null 2>&1 && ! file -L "$busybox" | grep -q 'statically linked'; then
    echo "make-initramfs.sh: $busybox is not statically linked (install busybox-static)" >&2
    exit 1
fi

root=$(mktemp -d "${TMPDIR:-/tmp}/vmm-linux-initramfs.XXXXXX")
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/dev" "$root/proc" "$root/sys" "$root/tmp"
cp "$busybox" "$root/bin/busybox"
cp "$here/init" "$root/init"
chmod 0755 "$root/bin/busybox" "$root/init"
ln -s busybox "$root/bin/sh"

tmp="$out.tmp.$$"
(cd "$root" && find . | sort | "$busybox" cpio -o -H newc -R 0:0 2>/dev/null | "$busybox" gzip -9) >"$tmp"
mv "$tmp" "$out"
echo "make-initramfs.sh: wrote $out ($(wc -c <"$out") bytes)" >&2
