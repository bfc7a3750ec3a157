//! The guest-physical memory map: where the VMM puts RAM, its boot structures and ACPI tables,
//! and where the platform's holes are. Q35-like, so that pcierc's default ECAM address (QEMU's
//! 0xb000_0000) falls in the hole below 4 GiB.

use vm_memory::GuestAddress;

/// The boot GDT (four entries: null, 64-bit code, data, TSS).
pub const GDT: GuestAddress = GuestAddress(0x500);
/// The boot IDT (one null entry: the guest installs its own before enabling interrupts).
pub const IDT: GuestAddress = GuestAddress(0x520);
/// Linux's `boot_params` ("zero page"); `rsi` points here at entry.
pub const ZERO_PAGE: GuestAddress = GuestAddress(0x7000);
/// Initial stack pointer (grows down below the page tables).
pub const BOOT_STACK: u64 = 0x8ff0;
/// PML4 of the boot page tables.
pub const PML4: GuestAddress = GuestAddress(0x9000);
/// The one page-directory-pointer table (entries 0-3: the low 4 GiB).
pub const PDPT: GuestAddress = GuestAddress(0xa000);
/// Four page directories of 2 MiB pages, one per GiB (0xb000-0xefff).
pub const PD: GuestAddress = GuestAddress(0xb000);
/// Number of GiB identity-mapped by the boot page tables.
pub const IDENTITY_MAPPED_GIB: u64 = 4;
/// The kernel command line.
pub const CMDLINE: GuestAddress = GuestAddress(0x20000);
/// Largest command line accepted (Linux's COMMAND_LINE_SIZE on x86).
pub const CMDLINE_MAX: usize = 2048;
/// End of conventional low memory given to the guest as RAM (start of the EBDA).
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables: RSDP first (in the legacy BIOS area that guests scan), the others after it.
pub const ACPI_START: GuestAddress = GuestAddress(0xe0000);
/// End of the ACPI area (exclusive).
pub const ACPI_END: u64 = 0x100000;
/// First address above the legacy area: kernels are loaded from here up.
pub const HIMEM_START: GuestAddress = GuestAddress(0x100000);
/// Start of the hole below 4 GiB (ECAM, BARs, IOAPIC, LAPIC): RAM above this moves to 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xb000_0000;
/// Where the VMM, as firmware, puts ECAM (PCIEXBAR, 256 buses): QEMU's q35 address.
pub const ECAM_BASE: u64 = 0xb000_0000;
/// The 32-bit MMIO window handed to PCI devices (after pcierc's 256 MiB ECAM window).
pub const MMIO32_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO window (IOAPIC and LAPIC live above it).
pub const MMIO32_END: u64 = 0xfec0_0000;
/// The IOAPIC (in-kernel).
pub const IOAPIC: u64 = 0xfec0_0000;
/// The local APICs (in-kernel).
pub const LAPIC: u64 = 0xfee0_0000;
/// Where RAM continues above the hole.
pub const HIGH_RAM_START: u64 = 1 << 32;
/// Where the TSS KVM needs for real-mode emulation on Intel goes (3 pages, in the hole).
pub const KVM_TSS: usize = 0xfffb_d000;

// The boot structures do not overlap (checked at compile time).
const _: () = {
    let pd_end = PD.0 + IDENTITY_MAPPED_GIB * 0x1000;
    assert!(PML4.0 > BOOT_STACK && PDPT.0 > PML4.0 && PD.0 > PDPT.0);
    assert!(pd_end <= CMDLINE.0 && CMDLINE.0 + CMDLINE_MAX as u64 <= EBDA_START);
    assert!(ZERO_PAGE.0 + 0x1000 <= BOOT_STACK && GDT.0 + 32 <= IDT.0);
    assert!(EBDA_START <= ACPI_START.0 && ACPI_END <= HIMEM_START.0);
};

/// The RAM regions for `mem` bytes: below the hole, and the rest from 4 GiB.
pub fn ram_regions(mem: u64) -> Vec<(GuestAddress, u64)> {
    let low = mem.min(MMIO_HOLE_START);
    let mut regions = vec![(GuestAddress(0), low)];
    if mem > low {
        regions.push((GuestAddress(HIGH_RAM_START), mem - low));
    }
    regions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_skips_the_hole() {
        assert_eq!(ram_regions(64 << 20), vec![(GuestAddress(0), 64 << 20)]);
        assert_eq!(
            ram_regions(4 << 30),
            vec![
                (GuestAddress(0), MMIO_HOLE_START),
                (GuestAddress(HIGH_RAM_START), (4 << 30) - MMIO_HOLE_START)
            ]
        );
    }
}
