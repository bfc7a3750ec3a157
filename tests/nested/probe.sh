# Functions of the probe guest (tests/nested/l2-init); each prints facts, one per line.

# Seconds since the kernel started.
up() { cut -d' ' -f1 /proc/uptime; }

# What Linux made of the PCIe hierarchy: how it reaches configuration space, what _OSC gave it,
# every function with its driver, the port services and the hot-plug slots.
facts() {
    dmesg | grep -E 'MMCONFIG|ECAM|PCI: Using configuration type|PCI: Using host bridge|_OSC|PCIe port services' |
        while read -r line; do echo "dmesg $line"; done
    for d in /sys/bus/pci/devices/*; do
        [ -e "$d" ] || continue
        drv=-
        [ -e "$d/driver" ] && drv=$(basename "$(readlink "$d/driver")")
        echo "pci ${d##*/} $(cat "$d/vendor"):$(cat "$d/device") class $(cat "$d/class") driver $drv"
    done
    for s in /sys/bus/pci_express/devices/*; do
        [ -e "$s" ] || continue
        drv=-
        [ -e "$s/driver" ] && drv=$(basename "$(readlink "$s/driver")")
        echo "service ${s##*/} driver $drv"
    done
    for s in /sys/bus/pci/slots/*; do
        [ -e "$s" ] || continue
        echo "slot ${s##*/} address $(cat "$s/address" 2>/dev/null)"
    done
}

# A function's configuration space as sysfs gives it (4 KiB when Linux reaches the extended
# space), 32 bytes a line: "cfg BDF OFFSET xx xx ...", lines of zeros left out but the first,
# then "cfgsize BDF SIZE" (hex): a fifth of the serial output of a full dump.
cfg() {
    od -An -v -tx1 -w32 "/sys/bus/pci/devices/$1/config" |
        awk -v bdf="$1" '{
            line = substr($0, 2)
            if (NR == 1 || line !~ /^(00 )*00$/) printf "cfg %s %03x %s\n", bdf, (NR - 1) * 32, line
            n = NR
        } END { printf "cfgsize %s %x\n", bdf, n * 32 }'
}

# cfg of every function.
cfg_all() {
    for d in /sys/bus/pci/devices/*; do cfg "${d##*/}"; done
}

# Resources of a function: "res BDF START END FLAGS" per line of sysfs "resource".
res() {
    n=0
    while read -r start end flags; do
        echo "res $1 $n $start $end $flags"
        n=$((n + 1))
    done <"/sys/bus/pci/devices/$1/resource"
}

# Wait (up to $1 seconds) until the shell condition $2 holds; says how long it took.
waitfor() {
    t0=$(up)
    end=$(awk -v a="$t0" -v b="$1" 'BEGIN { print a + b }')
    while ! eval "$2"; do
        if awk -v a="$(up)" -v b="$end" 'BEGIN { exit !(a > b) }'; then
            echo "waitfor: timed out after $1 s: $2"
            return 1
        fi
        sleep 0.1
    done
    echo "waited $(awk -v a="$t0" -v b="$(up)" 'BEGIN { printf "%.2f", b - a }') s for $2"
}

# The Power Indicator Control of the hot-plug slot of the port $1 (PCIe Base 6.0 §7.5.3.10 Slot
# Control, bits 9:8): "on", "blink", "off" or "reserved"; "none" without a PCI Express capability.
# pciehp turns it on once a card it powered is enumerated and then takes button presses again.
pwr_ind() {
    byte() { od -An -v -tu1 -j "$1" -N1 "/sys/bus/pci/devices/$dev/config" | tr -d ' '; }
    dev=$1
    p=$(byte 52)
    n=0
    while [ "${p:-0}" -ne 0 ] && [ "$(byte "$p")" -ne 16 ] && [ $n -lt 48 ]; do
        p=$(byte $((p + 1)))
        n=$((n + 1))
    done
    if [ "${p:-0}" -eq 0 ] || [ $n -ge 48 ]; then
        echo none
        return
    fi
    case $(($(byte $((p + 0x19))) & 3)) in
    1) echo on ;;
    2) echo blink ;;
    3) echo off ;;
    *) echo reserved ;;
    esac
}

# Interrupt counts of the lines whose name matches $1 (summed over CPUs).
irqs() {
    grep -E "$1" /proc/interrupts | awk '{ n = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) n += $i; print "irq " $1 " " n " " $NF }'
}
