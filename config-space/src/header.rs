//! The predefined header common to all functions (PCI Local Bus 3.0 §6.2) and QEMU's generic
//! set-up and reset of it (`do_pci_register_device()`, `pci_init_wmask()`,
//! `pci_init_w1cmask()`, `pci_do_device_reset()` in `hw/pci/pci.c`).

use super::config_space::{ConfigSpace, CONFIG_HEADER_SIZE};

// PCI Local Bus 3.0 §6.2.1 Device Identification.
/// Vendor ID.
pub const VENDOR_ID: u16 = 0x00;
/// Device ID.
pub const DEVICE_ID: u16 = 0x02;
// PCI Local Bus 3.0 §6.2.2 Command register.
/// Command.
pub const COMMAND: u16 = 0x04;
// PCI Local Bus 3.0 §6.2.3 Status register.
/// Status.
pub const STATUS: u16 = 0x06;
// PCI Local Bus 3.0 §6.2.1 Revision ID and Class Code.
/// Revision ID (the class code follows in bytes 0x09-0x0b).
pub const REVISION_ID: u16 = 0x08;
// PCI Local Bus 3.0 §6.2.4 Cache Line Size.
/// Cache Line Size.
pub const CACHE_LINE_SIZE: u16 = 0x0c;
// PCI Local Bus 3.0 §6.2.1 Header Type.
/// Header Type.
pub const HEADER_TYPE: u16 = 0x0e;
// PCI Local Bus 3.0 §6.2.5.1 Base Address Registers.
/// Base Address Register 0.
pub const BAR0: u16 = 0x10;
// PCI Local Bus 3.0 §6.2.4 Subsystem Vendor ID / Subsystem ID (type 0 header).
/// Subsystem Vendor ID.
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
/// Subsystem ID.
pub const SUBSYSTEM_ID: u16 = 0x2e;
// PCI Local Bus 3.0 §6.2.4 Interrupt Line / Interrupt Pin.
/// Interrupt Line.
pub const INTERRUPT_LINE: u16 = 0x3c;
/// Interrupt Pin.
pub const INTERRUPT_PIN: u16 = 0x3d;

// PCI Local Bus 3.0 §6.2.2 Command register bits.
/// I/O Space enable.
pub const COMMAND_IO: u16 = 1 << 0;
/// Memory Space enable.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Bus Master enable.
pub const COMMAND_MASTER: u16 = 1 << 2;
/// SERR# Enable.
pub const COMMAND_SERR: u16 = 1 << 8;
/// Interrupt Disable.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;

// PCI Local Bus 3.0 §6.2.3 Status register bits.
/// Interrupt Status (the function's INTx level).
pub const STATUS_INTERRUPT: u16 = 1 << 3;
/// 66 MHz capable.
pub const STATUS_66MHZ: u16 = 1 << 5;
/// Fast back-to-back capable.
pub const STATUS_FAST_BACK: u16 = 1 << 7;
/// Master Data Parity Error.
pub const STATUS_PARITY: u16 = 1 << 8;
/// Signaled Target Abort.
pub const STATUS_SIG_TARGET_ABORT: u16 = 1 << 11;
/// Received Target Abort.
pub const STATUS_REC_TARGET_ABORT: u16 = 1 << 12;
/// Received Master Abort.
pub const STATUS_REC_MASTER_ABORT: u16 = 1 << 13;
/// Signaled System Error.
pub const STATUS_SIG_SYSTEM_ERROR: u16 = 1 << 14;
/// Detected Parity Error.
pub const STATUS_DETECTED_PARITY: u16 = 1 << 15;

// PCI Local Bus 3.0 §6.2.1 Header Type bit 7.
/// Header Type: multi-function device.
pub const HEADER_TYPE_MULTI_FUNCTION: u8 = 0x80;
/// Header Type 1 (PCI-to-PCI bridge, PCI-to-PCI Bridge 1.2 §3.2).
pub const HEADER_TYPE_BRIDGE: u8 = 0x01;

/// QEMU's default subsystem IDs for a type 0 function without its own (`pci_set_default_subsystem_id`).
pub const QEMU_SUBSYSTEM_VENDOR_ID: u16 = 0x1af4;
/// See [`QEMU_SUBSYSTEM_VENDOR_ID`].
pub const QEMU_SUBSYSTEM_ID: u16 = 0x1100;

/// Who a function says it is.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Revision ID.
    pub revision: u8,
    /// Class code: base class 23:16, sub-class 15:8, programming interface 7:0.
    pub class_code: u32,
}

/// QEMU's `do_pci_register_device()` register part for a type 0 function: identity, header
/// type, default subsystem IDs, and the generic write/W1C masks ([`init_masks`]).
pub fn init_type0(cs: &mut ConfigSpace, id: Identity, multifunction: bool) {
    init_identity(cs, id, multifunction);
    cs.set_word(SUBSYSTEM_VENDOR_ID, QEMU_SUBSYSTEM_VENDOR_ID);
    cs.set_word(SUBSYSTEM_ID, QEMU_SUBSYSTEM_ID);
    init_masks(cs);
}

/// Identity registers and the multi-function bit (`pci_config_set_*`, `pci_init_multifunction`).
pub fn init_identity(cs: &mut ConfigSpace, id: Identity, multifunction: bool) {
    cs.set_word(VENDOR_ID, id.vendor_id);
    cs.set_word(DEVICE_ID, id.device_id);
    cs.set_byte(REVISION_ID, id.revision);
    cs.set_byte(REVISION_ID + 1, id.class_code as u8);
    cs.set_word(REVISION_ID + 2, (id.class_code >> 8) as u16);
    if multifunction {
        cs.set_bits(HEADER_TYPE, 1, HEADER_TYPE_MULTI_FUNCTION.into());
    }
}

/// QEMU's `pci_init_wmask()` and `pci_init_w1cmask()`: Cache Line Size, Interrupt Line and the
/// Command bits QEMU implements are writable, every byte from 0x40 to the end of the space is
/// writable until a capability claims it, and the Status error bits are write-1-to-clear.
pub fn init_masks(cs: &mut ConfigSpace) {
    cs.set_wmask(CACHE_LINE_SIZE, 1, 0xff);
    cs.set_wmask(INTERRUPT_LINE, 1, 0xff);
    cs.set_wmask(
        COMMAND,
        2,
        (COMMAND_IO | COMMAND_MEMORY | COMMAND_MASTER | COMMAND_INTX_DISABLE | COMMAND_SERR).into(),
    );
    cs.fill_wmask(CONFIG_HEADER_SIZE..cs.size());
    cs.set_w1cmask(
        STATUS,
        2,
        (STATUS_PARITY
            | STATUS_SIG_TARGET_ABORT
            | STATUS_REC_TARGET_ABORT
            | STATUS_REC_MASTER_ABORT
            | STATUS_SIG_SYSTEM_ERROR
            | STATUS_DETECTED_PARITY)
            .into(),
    );
}

/// Register a 32-bit memory BAR of `size` bytes (a power of two) as QEMU's `pci_register_bar()`:
/// the address bits above the size are writable, the type bits read as zero.
pub fn register_memory_bar32(cs: &mut ConfigSpace, index: u8, size: u32) {
    let reg = BAR0 + 4 * u16::from(index);
    cs.set_wmask(reg, 4, u64::from(!(size.max(16) - 1)));
    cs.set_dword(reg, 0);
}

// PCI Local Bus 3.0 §6.2.5.1 Base Address Registers: bits 0-3 of a memory BAR.
/// Memory BAR type: 64-bit (bits 2:1 = 10b; the next BAR holds the upper 32 bits).
pub const BAR_MEM_TYPE_64: u32 = 0b100;
/// Memory BAR: prefetchable.
pub const BAR_MEM_PREFETCH: u32 = 0b1000;
/// The read-only low bits of a memory BAR (space indicator, type, prefetchable).
pub const BAR_MEM_FLAGS: u32 = 0xf;

/// Register a 64-bit memory BAR of `size` bytes (a power of two, at least 16) at BAR `index`
/// and `index + 1`, as QEMU's `pci_register_bar()`: the type bits are read-only, the address
/// bits above the size are writable, so a guest that writes all ones reads back the size
/// (PCI Local Bus 3.0 §6.2.5.1, "sizing a BAR").
pub fn register_memory_bar64(cs: &mut ConfigSpace, index: u8, size: u64, prefetchable: bool) {
    let reg = BAR0 + 4 * u16::from(index);
    let mask = !(size.max(16) - 1) & !u64::from(BAR_MEM_FLAGS);
    let flags = BAR_MEM_TYPE_64 | if prefetchable { BAR_MEM_PREFETCH } else { 0 };
    cs.set_wmask(reg, 8, mask);
    cs.set_qword(reg, flags.into());
}

/// The generic part of a device reset, QEMU's `pci_do_device_reset()` without MSI-X: writable
/// Command bits, Status bits, Interrupt Line and Cache Line Size are cleared and BARs return to
/// their type bits (`bars` lists the BAR indices the function implements).
pub fn device_reset(cs: &mut ConfigSpace, bars: &[u8]) {
    let cmd = cs.wmask(COMMAND, 2) | cs.w1cmask(COMMAND, 2);
    cs.clear_bits(COMMAND, 2, cmd);
    let sta = cs.wmask(STATUS, 2) | cs.w1cmask(STATUS, 2);
    cs.clear_bits(STATUS, 2, sta);
    let line = cs.wmask(INTERRUPT_LINE, 1) | cs.w1cmask(INTERRUPT_LINE, 1);
    cs.clear_bits(INTERRUPT_LINE, 1, line);
    cs.set_byte(CACHE_LINE_SIZE, 0);
    for &b in bars {
        cs.set_dword(BAR0 + 4 * u16::from(b), 0);
    }
}

/// Set or clear Status.Interrupt Status, the function's INTx level (QEMU's
/// `pci_update_irq_status()`).
pub fn set_interrupt_status(cs: &mut ConfigSpace, level: bool) {
    if level {
        cs.set_bits(STATUS, 2, STATUS_INTERRUPT.into());
    } else {
        cs.clear_bits(STATUS, 2, STATUS_INTERRUPT.into());
    }
}

/// Where a 32-bit memory BAR of `size` bytes is decoded now, as QEMU's `pci_bar_address()`:
/// `None` unless Memory Space is enabled and the BAR holds a non-zero address whose last byte
/// is below 4 GiB - 1 (QEMU treats a BAR ending at 0xffffffff as unmapped).
pub fn memory_bar32(cs: &ConfigSpace, index: u8, size: u32) -> Option<u64> {
    if cs.word(COMMAND) & COMMAND_MEMORY == 0 || size == 0 {
        return None;
    }
    let base = u64::from(cs.dword(BAR0 + 4 * u16::from(index)) & !(size - 1));
    let last = base + u64::from(size) - 1;
    (base != 0 && last < u64::from(u32::MAX)).then_some(base)
}

/// Where a 64-bit memory BAR (at `index` and `index + 1`) of `size` bytes is decoded now, as
/// QEMU's `pci_bar_address()`: `None` unless Memory Space is enabled and the BAR holds a non-zero
/// address whose range does not reach the end of the 64-bit address space.
pub fn memory_bar64(cs: &ConfigSpace, index: u8, size: u64) -> Option<u64> {
    if cs.word(COMMAND) & COMMAND_MEMORY == 0 || size == 0 {
        return None;
    }
    let base = cs.qword(BAR0 + 4 * u16::from(index)) & !(size - 1) & !u64::from(BAR_MEM_FLAGS);
    (base != 0 && base.checked_add(size).is_some()).then_some(base)
}

/// Does `[offset, offset + len)` overlap `[start, start + n)`? (QEMU's `ranges_overlap()`.)
pub fn overlaps(offset: u16, len: u8, start: u16, n: u16) -> bool {
    let (a0, a1) = (u32::from(offset), u32::from(offset) + u32::from(len));
    let (b0, b1) = (u32::from(start), u32::from(start) + u32::from(n));
    a0 < b1 && b0 < a1
}

/// Is `access` a valid configuration access (width 1, 2 or 4, naturally aligned, inside 4 KiB)?
pub fn valid_access(offset: u16, width: u8) -> bool {
    matches!(width, 1 | 2 | 4)
        && offset.is_multiple_of(u16::from(width))
        && u32::from(offset) + u32::from(width) <= 0x1000
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config_space::PCI_CONFIG_SPACE_SIZE;

    #[test]
    fn type0_defaults_match_qemu() {
        let mut cs = ConfigSpace::new(PCI_CONFIG_SPACE_SIZE);
        let id = Identity {
            vendor_id: 0x8086,
            device_id: 0x29c0,
            revision: 0,
            class_code: 0x060000,
        };
        init_type0(&mut cs, id, false);
        assert_eq!(cs.read(0, 4), 0x29c0_8086);
        assert_eq!(cs.read(8, 4), 0x0600_0000);
        assert_eq!(cs.read(0x2c, 4), 0x1100_1af4);
        cs.write(COMMAND, 2, 0xffff);
        assert_eq!(cs.word(COMMAND), 0x0507);
        cs.write(0x40, 4, 0xffff_ffff);
        assert_eq!(cs.dword(0x40), 0xffff_ffff);
        cs.set_word(STATUS, 0xffff);
        cs.write(STATUS, 2, 0xffff);
        assert_eq!(cs.word(STATUS), 0x06ff);
        device_reset(&mut cs, &[]);
        assert_eq!(cs.word(COMMAND), 0);
        assert_eq!(
            cs.dword(0x40),
            0xffff_ffff,
            "device-specific registers survive a reset"
        );
    }

    #[test]
    fn bar_decode_follows_qemu() {
        let mut cs = ConfigSpace::new(PCI_CONFIG_SPACE_SIZE);
        init_masks(&mut cs);
        register_memory_bar32(&mut cs, 0, 4096);
        cs.write(BAR0, 4, 0xffff_ffff);
        assert_eq!(cs.dword(BAR0), 0xffff_f000);
        assert_eq!(memory_bar32(&cs, 0, 4096), None, "memory decode off");
        cs.write(COMMAND, 2, COMMAND_MEMORY.into());
        assert_eq!(
            memory_bar32(&cs, 0, 4096),
            None,
            "a BAR ending at 4 GiB - 1 is unmapped"
        );
        cs.write(BAR0, 4, 0xfe00_0000);
        assert_eq!(memory_bar32(&cs, 0, 4096), Some(0xfe00_0000));
        cs.write(BAR0, 4, 0);
        assert_eq!(memory_bar32(&cs, 0, 4096), None);
    }

    #[test]
    fn bar64_sizing_and_decode() {
        let mut cs = ConfigSpace::new(PCI_CONFIG_SPACE_SIZE);
        init_masks(&mut cs);
        register_memory_bar64(&mut cs, 0, 0x4000, false);
        assert_eq!(cs.dword(BAR0), 0b100, "64-bit, non-prefetchable");
        cs.write(BAR0, 4, u32::MAX);
        cs.write(BAR0 + 4, 4, u32::MAX);
        assert_eq!(cs.dword(BAR0), 0xffff_c004);
        assert_eq!(cs.dword(BAR0 + 4), u32::MAX);
        cs.write(COMMAND, 2, COMMAND_MEMORY.into());
        assert_eq!(memory_bar64(&cs, 0, 0x4000), None, "reaches 2^64");
        cs.write(BAR0 + 4, 4, 1);
        assert_eq!(memory_bar64(&cs, 0, 0x4000), Some(0x1_ffff_c000));
        cs.write(BAR0, 4, 0);
        cs.write(BAR0 + 4, 4, 0);
        assert_eq!(memory_bar64(&cs, 0, 0x4000), None);
        register_memory_bar64(&mut cs, 2, 1 << 33, true);
        assert_eq!(cs.dword(BAR0 + 8), 0b1100);
        assert_eq!(cs.wmask(BAR0 + 8, 8), 0xffff_fffe_0000_0000);
    }

    #[test]
    fn access_validation_and_overlap() {
        assert!(valid_access(0xffc, 4));
        assert!(!valid_access(0xffe, 4));
        assert!(!valid_access(0x1000, 1));
        assert!(!valid_access(0, 3));
        assert!(overlaps(0x9c, 4, 0x9d, 2));
        assert!(!overlaps(0x98, 4, 0x9c, 1));
        assert!(overlaps(0xffff, 4, 0xffff, 1));
    }
}
