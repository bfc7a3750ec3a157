//! Test guests built from `guest/` by `build.rs` (GNU as and ld) and embedded here.

/// `guest/pcie_probe.S`: firmware-style enumeration through CF8/CFC and ECAM, printed on COM1
/// (with the serial numbers of endpoints), a BAR0/MSI-X check of the VMM's test endpoint behind
/// rp1, rp1's slot driven like pciehp with `pcie-probe.hotplug` on the command line, then ACPI
/// power-off. An ELF image linked at 1 MiB, entered in 64-bit mode; empty when
/// binutils were missing at build time.
pub const PCIE_PROBE_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pcie-probe.elf"));

/// `guest/fault_exec_mmio.S`: jumps into the PCI hole; KVM cannot fetch there (emulation failure).
pub const FAULT_EXEC_MMIO_ELF: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/fault-exec-mmio.elf"));

/// `guest/fault_triple.S`: `ud2` with no usable IDT: a triple fault.
pub const FAULT_TRIPLE_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fault-triple.elf"));

/// `guest/hang.S`: `cli; hlt` forever.
pub const HANG_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hang.elf"));

/// `guest/reboot_state.S`: prints the vCPU, local APIC and IOAPIC state a kernel changes, changes
/// it, resets through 0xCF9, and prints it again at the second boot (then powers off).
pub const REBOOT_STATE_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/reboot-state.elf"));

/// Every built-in guest by name (`vmm --guest NAME`).
pub const ALL: &[(&str, &[u8])] = &[
    ("pcie-probe", PCIE_PROBE_ELF),
    ("fault-exec-mmio", FAULT_EXEC_MMIO_ELF),
    ("fault-triple", FAULT_TRIPLE_ELF),
    ("hang", HANG_ELF),
    ("reboot-state", REBOOT_STATE_ELF),
];
