//! MSI-X capability, table and Pending Bit Array (PCIe Base 6.0 §7.7.2; PCI Local Bus 3.0
//! §6.8.2), as QEMU 7.2's `hw/pci/msix.c` (`msix_init()`, `msix_init_exclusive_bar()`,
//! `msix_write_config()`, the table and PBA MMIO ops, `msix_notify()`, `msix_reset()`).
//!
//! The model keeps the table and the PBA; the capability's registers live in the function's
//! [`ConfigSpace`], which every call that needs them takes. Two ways to reach the table:
//! - dword accesses relative to the table and the PBA ([`Msix::table_read32`],
//!   [`Msix::table_write32`], [`Msix::pba_read32`]), for an emulator that decodes its BAR itself
//!   (the table beside registers of its own);
//! - [`Msix::bar_read`] and [`Msix::bar_write`] for a BAR that holds only table and PBA, which
//!   follow QEMU's memory core: an access is split at region boundaries and into naturally
//!   aligned pieces of at most 8 bytes; table and PBA pieces smaller than 4 bytes are invalid
//!   (read 0, write dropped), 8-byte pieces become two dword accesses, and the holes between the
//!   regions read 0.
//!
//! What a vector does when it fires is a [`Delivery`]: dropped (MSI-X disabled), pending
//! (masked: its pending bit is set, and it is sent when unmasked) or sent; the message itself is
//! [`Msix::message`].

use serde::{Deserialize, Serialize};

use crate::config_space::{hex, unhex, CapabilityError, ConfigSpace, StateError};
use crate::header::{overlaps, register_memory_bar32};

use super::CAP_ID_MSIX;

// PCIe Base 6.0 §7.7.2.2 Message Control Register for MSI-X.
/// Message Control (offset in the capability).
pub const FLAGS: u16 = 0x02;
// PCIe Base 6.0 §7.7.2.3 Table Offset/Table BIR Register for MSI-X.
/// Table Offset / BIR.
pub const TABLE: u16 = 0x04;
// PCIe Base 6.0 §7.7.2.4 PBA Offset/PBA BIR Register for MSI-X.
/// PBA Offset / BIR.
pub const PBA: u16 = 0x08;
/// Size of the capability.
pub const CAP_LENGTH: u8 = 12;
/// The byte of Message Control holding MSI-X Enable (bit 7) and Function Mask (bit 6).
pub const CONTROL_BYTE: u16 = FLAGS + 1;
/// Message Control: MSI-X Enable (bit 15 of the register).
pub const CONTROL_ENABLE: u16 = 1 << 15;
/// Message Control: Function Mask (bit 14 of the register).
pub const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
const ENABLE: u8 = 0x80;
const MASKALL: u8 = 0x40;
// PCIe Base 6.0 §7.7.2.5-§7.7.2.8 table entry: Message Address, Message Upper Address, Message
// Data, Vector Control.
/// Size of one table entry.
pub const ENTRY_SIZE: u32 = 16;
const ENTRY_VECTOR_CTRL: usize = 12;
// PCIe Base 6.0 §7.7.2.8 Vector Control for MSI-X Table Entries: bit 0 Mask Bit.
const ENTRY_CTRL_MASKBIT: u8 = 1;
/// Most vectors a function has (Table Size is 11 bits, PCIe Base 6.0 §7.7.2.2).
pub const MAX_VECTORS: u16 = 2048;

/// Which bits of a table entry keep what software writes.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum EntryBits {
    /// Every bit, as QEMU 7.2 stores them (`msix_table_mmio_write()`).
    #[default]
    All,
    /// Only the bits the specification defines: Message Address bits 1:0 (PCIe Base 6.0 §7.7.2.5)
    /// and Vector Control bits 31:1 (§7.7.2.8, RsvdP) read as zero.
    Defined,
}

impl EntryBits {
    /// The write mask of the table dword at byte `offset` of an entry (0, 4, 8 or 12).
    fn mask(self, offset: usize) -> u32 {
        match (self, offset % ENTRY_SIZE as usize) {
            (EntryBits::All, _) => u32::MAX,
            (EntryBits::Defined, 0) => !3,
            (EntryBits::Defined, 12) => u32::from(ENTRY_CTRL_MASKBIT),
            (EntryBits::Defined, _) => u32::MAX,
        }
    }
}

/// Where a function's MSI-X capability, table and PBA are.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct MsixLayout {
    /// Offset of the capability, or `None` for the first free gap from 0x40.
    pub cap: Option<u8>,
    /// Number of vectors (1 to [`MAX_VECTORS`]; clamped into that range).
    pub entries: u16,
    /// BAR (BIR) holding the table.
    pub table_bar: u8,
    /// Offset of the table in its BAR (8-byte aligned: the low 3 bits are the BIR).
    pub table_offset: u32,
    /// BAR (BIR) holding the PBA.
    pub pba_bar: u8,
    /// Offset of the PBA in its BAR (8-byte aligned).
    pub pba_offset: u32,
    /// Which table bits keep what software writes.
    pub entry_bits: EntryBits,
}

/// One function's MSI-X state outside configuration space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Msix {
    cap: u16,
    entries: u16,
    table_offset: u32,
    pba_offset: u32,
    bar_size: u32,
    entry_bits: EntryBits,
    table: Vec<u8>,
    pba: Vec<u8>,
    /// QEMU's `msix_function_masked`, updated on writes to Message Control only.
    function_masked: bool,
}

/// Serialized dynamic part of [`Msix`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MsixState {
    /// Table bytes, hex.
    pub table: String,
    /// Pending bits, hex.
    pub pba: String,
    /// Function masked as last computed.
    pub function_masked: bool,
}

/// What happened to a vector QEMU would notify.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// MSI-X disabled or vector out of range: nothing.
    Dropped,
    /// Masked: the pending bit is set.
    Pending,
    /// A message is sent: the vector's [`Msix::message`].
    Sent(u16),
}

/// An MSI-X message: a dword memory write of `data` to `address` (PCIe Base 6.0 §6.1.4).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Message Address and Message Upper Address (0xfeex_xxxx for an x86 local APIC).
    pub address: u64,
    /// Message Data.
    pub data: u32,
}

impl Msix {
    /// QEMU's `msix_init()`: the capability at `layout.cap` (or in the first free gap) with
    /// Table Size, Table Offset/BIR and PBA Offset/BIR set, MSI-X Enable and Function Mask
    /// writable, and every vector masked. The BARs are the caller's to register.
    pub fn new(cs: &mut ConfigSpace, layout: MsixLayout) -> Result<Msix, CapabilityError> {
        let entries = layout.entries.clamp(1, MAX_VECTORS);
        let table_len = u32::from(entries) * ENTRY_SIZE;
        let pba_len = u32::from(entries).div_ceil(64) * 8;
        let cap = u16::from(cs.add_capability(CAP_ID_MSIX, layout.cap, CAP_LENGTH)?);
        cs.set_word(cap + FLAGS, entries - 1);
        cs.set_dword(
            cap + TABLE,
            layout.table_offset | u32::from(layout.table_bar & 7),
        );
        cs.set_dword(cap + PBA, layout.pba_offset | u32::from(layout.pba_bar & 7));
        cs.or_wmask(cap + CONTROL_BYTE, 1, (ENABLE | MASKALL).into());
        let span = (layout.table_offset.saturating_add(table_len))
            .max(layout.pba_offset.saturating_add(pba_len));
        let mut m = Msix {
            cap,
            entries,
            table_offset: layout.table_offset,
            pba_offset: layout.pba_offset,
            bar_size: span.checked_next_power_of_two().unwrap_or(0),
            entry_bits: layout.entry_bits,
            table: vec![0; table_len as usize],
            pba: vec![0; pba_len as usize],
            function_masked: true,
        };
        m.mask_all(cs);
        Ok(m)
    }

    /// QEMU's `msix_init_exclusive_bar()`: the capability in the first free gap, `entries`
    /// vectors in a BAR of its own (4 KiB for up to 128 vectors: table at 0, PBA at 2 KiB),
    /// every vector masked, and the BAR registered as 32-bit memory.
    pub fn init_exclusive_bar(
        cs: &mut ConfigSpace,
        entries: u16,
        bar: u8,
    ) -> Result<Msix, CapabilityError> {
        let entries = entries.clamp(1, MAX_VECTORS);
        let pba_size = u32::from(entries).div_ceil(64) * 8;
        let pba_offset = (u32::from(entries) * ENTRY_SIZE).max(2048);
        let bar_size = (pba_offset + pba_size).max(4096).next_power_of_two();
        let layout = MsixLayout {
            cap: None,
            entries,
            table_bar: bar,
            table_offset: 0,
            pba_bar: bar,
            pba_offset,
            entry_bits: EntryBits::All,
        };
        let mut m = Msix::new(cs, layout)?;
        m.bar_size = bar_size;
        register_memory_bar32(cs, bar, bar_size);
        Ok(m)
    }

    /// Offset of the capability.
    pub fn cap(&self) -> u16 {
        self.cap
    }

    /// Size of the BAR holding table and PBA: the exclusive BAR of [`Msix::init_exclusive_bar`],
    /// or for a layout of the caller's the smallest power of two that reaches the end of both.
    pub fn bar_size(&self) -> u32 {
        self.bar_size
    }

    /// Offset of the table in its BAR.
    pub fn table_offset(&self) -> u32 {
        self.table_offset
    }

    /// Size of the table in bytes ([`ENTRY_SIZE`] per vector).
    pub fn table_len(&self) -> u32 {
        self.table.len() as u32
    }

    /// Offset of the PBA in its BAR.
    pub fn pba_offset(&self) -> u32 {
        self.pba_offset
    }

    /// Size of the PBA in bytes (whole qwords, PCIe Base 6.0 §7.7.2.9).
    pub fn pba_len(&self) -> u32 {
        self.pba.len() as u32
    }

    /// MSI-X Enable.
    pub fn enabled(&self, cs: &ConfigSpace) -> bool {
        cs.byte(self.cap + CONTROL_BYTE) & ENABLE != 0
    }

    fn update_function_masked(&mut self, cs: &ConfigSpace) {
        self.function_masked = !self.enabled(cs) || cs.byte(self.cap + CONTROL_BYTE) & MASKALL != 0;
    }

    fn vector_masked(&self, vector: u16, fmask: bool) -> bool {
        let ctrl = usize::from(vector) * ENTRY_SIZE as usize + ENTRY_VECTOR_CTRL;
        fmask
            || self
                .table
                .get(ctrl)
                .is_some_and(|c| c & ENTRY_CTRL_MASKBIT != 0)
    }

    /// Number of table entries (vectors).
    pub fn entries(&self) -> u16 {
        self.entries
    }

    /// The message `vector` sends now (PCIe Base 6.0 §7.7.2.5-§7.7.2.7: its table entry's
    /// address and data) and whether it cannot fire (masked, or MSI-X disabled); `None` past the
    /// table.
    pub fn route(&self, vector: u16) -> Option<(u64, u32, bool)> {
        if vector >= self.entries {
            return None;
        }
        let entry = u32::from(vector) * ENTRY_SIZE;
        let address =
            u64::from(self.table_read32(entry)) | u64::from(self.table_read32(entry + 4)) << 32;
        let data = self.table_read32(entry + 8);
        Some((address, data, self.is_masked(vector)))
    }

    /// The table dword at byte `offset` of the table (rounded down to a dword); all ones past
    /// the table.
    pub fn table_read32(&self, offset: u32) -> u32 {
        let at = (offset & !3) as usize;
        self.table
            .get(at..at + 4)
            .map_or(u32::MAX, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Software writes the table dword at byte `offset` of the table (rounded down to a dword):
    /// the entry's bits that keep writes ([`EntryBits`]) take `value`, and a vector this
    /// unmasks with its pending bit set fires (QEMU's `msix_handle_mask_update()`). Writes past
    /// the table are dropped.
    pub fn table_write32(&mut self, cs: &ConfigSpace, offset: u32, value: u32) -> Delivery {
        let at = (offset & !3) as usize;
        let Ok(vector) = u16::try_from(at / ENTRY_SIZE as usize) else {
            return Delivery::Dropped;
        };
        if vector >= self.entries {
            return Delivery::Dropped;
        }
        let was = self.is_masked(vector);
        let mask = self.entry_bits.mask(at);
        if let Some(slot) = self.table.get_mut(at..at + 4) {
            let old = u32::from_le_bytes([slot[0], slot[1], slot[2], slot[3]]);
            slot.copy_from_slice(&(old & !mask | value & mask).to_le_bytes());
        }
        self.handle_mask_update(cs, vector, was)
    }

    /// The PBA dword at byte `offset` of the PBA (rounded down to a dword); all ones past the
    /// PBA. The PBA is read-only (PCIe Base 6.0 §7.7.2.9).
    pub fn pba_read32(&self, offset: u32) -> u32 {
        let at = (offset & !3) as usize;
        self.pba
            .get(at..at + 4)
            .map_or(u32::MAX, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The message `vector` sends now (its table entry's address and data); `None` past the
    /// table.
    pub fn message(&self, vector: u16) -> Option<Message> {
        self.route(vector)
            .map(|(address, data, _)| Message { address, data })
    }

    /// Is `vector` masked (by the function or by its own mask bit)?
    pub fn is_masked(&self, vector: u16) -> bool {
        self.vector_masked(vector, self.function_masked)
    }

    /// Is `vector`'s pending bit set?
    pub fn is_pending(&self, vector: u16) -> bool {
        self.pba
            .get(usize::from(vector / 8))
            .is_some_and(|b| b & 1 << (vector % 8) != 0)
    }

    fn set_pending(&mut self, vector: u16, pending: bool) {
        if let Some(b) = self.pba.get_mut(usize::from(vector / 8)) {
            let bit = 1 << (vector % 8);
            *b = if pending { *b | bit } else { *b & !bit };
        }
    }

    /// QEMU's `msix_notify()`.
    pub fn notify(&mut self, cs: &ConfigSpace, vector: u16) -> Delivery {
        if !self.enabled(cs) || vector >= self.entries {
            return Delivery::Dropped;
        }
        if self.is_masked(vector) {
            self.set_pending(vector, true);
            return Delivery::Pending;
        }
        Delivery::Sent(vector)
    }

    /// QEMU's `msix_handle_mask_update()`: an unmasked vector with its pending bit set fires.
    fn handle_mask_update(&mut self, cs: &ConfigSpace, vector: u16, was_masked: bool) -> Delivery {
        let masked = self.is_masked(vector);
        if masked == was_masked || masked || !self.is_pending(vector) {
            return Delivery::Dropped;
        }
        self.set_pending(vector, false);
        self.notify(cs, vector)
    }

    fn mask_all(&mut self, cs: &ConfigSpace) {
        for v in 0..self.entries {
            let was = self.is_masked(v);
            let ctrl = usize::from(v) * ENTRY_SIZE as usize + ENTRY_VECTOR_CTRL;
            if let Some(c) = self.table.get_mut(ctrl) {
                *c |= ENTRY_CTRL_MASKBIT;
            }
            self.handle_mask_update(cs, v, was);
        }
    }

    /// QEMU's `msix_write_config()` after a configuration write: returns whether INTx must be
    /// deasserted (MSI-X is enabled) and the vectors whose pending messages fire.
    pub fn write_config(
        &mut self,
        cs: &ConfigSpace,
        offset: u16,
        width: u8,
    ) -> (bool, Vec<Delivery>) {
        if !overlaps(offset, width, self.cap + CONTROL_BYTE, 1) {
            return (false, Vec::new());
        }
        let was = self.function_masked;
        self.update_function_masked(cs);
        if !self.enabled(cs) {
            return (false, Vec::new());
        }
        if self.function_masked == was {
            return (true, Vec::new());
        }
        let fired = (0..self.entries)
            .map(|v| {
                let was_v = self.vector_masked(v, was);
                self.handle_mask_update(cs, v, was_v)
            })
            .collect();
        (true, fired)
    }

    /// QEMU's `msix_reset()`: Enable and Function Mask cleared, table zeroed with every vector
    /// masked, no pending bits.
    pub fn reset(&mut self, cs: &mut ConfigSpace) {
        let w = cs.wmask(self.cap + CONTROL_BYTE, 1);
        cs.clear_bits(self.cap + CONTROL_BYTE, 1, w);
        self.table.fill(0);
        self.pba.fill(0);
        self.mask_all(cs);
    }

    /// The pieces QEMU's memory core splits a BAR access into: (offset, length, region), with
    /// region 0 = table, 1 = PBA, 2 = hole.
    fn pieces(&self, offset: u64, width: u8) -> Vec<(u64, u64, u8)> {
        let regions = [
            (u64::from(self.table_offset), self.table.len() as u64),
            (u64::from(self.pba_offset), self.pba.len() as u64),
        ];
        let mut out = Vec::new();
        let (mut at, end) = (offset, offset.saturating_add(u64::from(width.min(8))));
        while at < end {
            let inside = regions.iter().position(|&(b, s)| at >= b && at < b + s);
            let section_end = match inside {
                Some(i) => regions[i].0 + regions[i].1,
                None => regions
                    .iter()
                    .map(|&(b, _)| b)
                    .filter(|&b| b > at)
                    .min()
                    .unwrap_or(u64::MAX),
            };
            let mut len = (end - at).min(section_end - at);
            if let Some(i) = inside {
                // memory_access_size(): bounded by the valid maximum (8) and by the alignment of
                // the offset within the region, then rounded down to a power of two.
                let rel = at - regions[i].0;
                let align = if rel == 0 {
                    8
                } else {
                    rel & rel.wrapping_neg()
                };
                len = len.min(8).min(align);
                len = 1 << (63 - len.leading_zeros());
                out.push((rel, len, i as u8));
            } else {
                out.push((at, len, 2));
            }
            at += len;
        }
        out
    }

    /// A read of `width` bytes at `offset` in the BAR.
    pub fn bar_read(&self, offset: u64, width: u8) -> u64 {
        let mut value = 0u64;
        for (off, len, region) in self.pieces(offset, width) {
            let src = match region {
                0 => &self.table,
                1 => &self.pba,
                _ => continue,
            };
            if len < 4 {
                continue;
            }
            let shift = 8 * (off + offset_of_region(self, region) - offset);
            for i in 0..len {
                let b = src.get((off + i) as usize).copied().unwrap_or(0);
                value |= u64::from(b) << (shift + 8 * i);
            }
        }
        value
    }

    /// A write of `width` bytes of `value` at `offset` in the BAR: table dwords are stored
    /// through [`Msix::table_write32`] (with [`EntryBits::All`], QEMU's, every bit of Vector
    /// Control is kept), the PBA is read-only.
    pub fn bar_write(
        &mut self,
        cs: &ConfigSpace,
        offset: u64,
        width: u8,
        value: u64,
    ) -> Vec<Delivery> {
        let mut fired = Vec::new();
        for (off, len, region) in self.pieces(offset, width) {
            if region != 0 || len < 4 {
                continue;
            }
            let shift = 8 * (off + u64::from(self.table_offset) - offset);
            for dword in (0..len).step_by(4) {
                let data = (value >> (shift + 8 * dword)) as u32;
                fired.push(self.table_write32(cs, (off + dword) as u32, data));
            }
        }
        fired
    }

    /// The dynamic state for saving.
    pub fn state(&self) -> MsixState {
        MsixState {
            table: hex(&self.table),
            pba: hex(&self.pba),
            function_masked: self.function_masked,
        }
    }

    /// Load state made by [`Msix::state`] of the same layout; nothing changes on error.
    pub fn load_state(&mut self, s: &MsixState) -> Result<(), StateError> {
        let table = unhex(&s.table, self.table.len()).ok_or(StateError::MsixTable)?;
        let pba = unhex(&s.pba, self.pba.len()).ok_or(StateError::MsixPba)?;
        self.table = table;
        self.pba = pba;
        self.function_masked = s.function_masked;
        Ok(())
    }
}

fn offset_of_region(m: &Msix, region: u8) -> u64 {
    if region == 0 {
        u64::from(m.table_offset)
    } else {
        u64::from(m.pba_offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config_space::PCIE_CONFIG_SPACE_SIZE;
    use crate::header::init_masks;

    fn setup() -> (ConfigSpace, Msix) {
        let mut cs = ConfigSpace::new(PCIE_CONFIG_SPACE_SIZE);
        init_masks(&mut cs);
        cs.add_capability(0x0d, Some(0x40), 8).unwrap();
        let m = Msix::init_exclusive_bar(&mut cs, 1, 0).unwrap();
        (cs, m)
    }

    #[test]
    fn layout_matches_qemu_pcie_root_port() {
        let (cs, m) = setup();
        assert_eq!(m.cap(), 0x48);
        assert_eq!(cs.dword(0x48), 0x0000_4011);
        assert_eq!(cs.dword(0x4c), 0);
        assert_eq!(cs.dword(0x50), 0x800);
        assert_eq!(cs.wmask(0x10, 4), 0xffff_f000);
        assert_eq!(m.bar_size(), 4096);
        assert_eq!(m.bar_read(0xc, 4), 1, "vector masked at reset");
    }

    #[test]
    fn bar_accesses_split_like_qemu() {
        let (cs, mut m) = setup();
        assert_eq!(m.bar_read(0xc, 1), 0, "sub-dword table reads are invalid");
        assert_eq!(m.bar_read(0xc, 2), 0);
        assert_eq!(m.bar_read(0x8, 8), 0x1_0000_0000);
        m.bar_write(&cs, 0, 8, 0x1122_3344_5566_7788);
        assert_eq!(m.bar_read(0, 4), 0x5566_7788);
        assert_eq!(m.bar_read(4, 4), 0x1122_3344);
        m.bar_write(&cs, 0xc, 1, 0);
        assert_eq!(m.bar_read(0xc, 4), 1, "sub-dword table writes are dropped");
        m.bar_write(&cs, 0xc, 4, 0xffff_ffff);
        assert_eq!(
            m.bar_read(0xc, 4),
            0xffff_ffff,
            "vector control is stored whole"
        );
        assert_eq!(
            m.bar_read(0xc, 8),
            0xffff_ffff,
            "the half past the table is a hole"
        );
        assert_eq!(m.bar_read(0x10, 4), 0);
        m.bar_write(&cs, 0x800, 4, 0xffff_ffff);
        assert_eq!(m.bar_read(0x800, 8), 0, "PBA is read-only");
        assert_eq!(
            m.bar_read(2, 4),
            0,
            "unaligned dwords split into invalid words"
        );
        assert_eq!(m.bar_read(0xffc, 4), 0);
    }

    #[test]
    fn masked_notification_pends_and_fires_on_unmask() {
        let (mut cs, mut m) = setup();
        assert_eq!(m.notify(&cs, 0), Delivery::Dropped, "MSI-X disabled");
        cs.write(0x48, 4, 0xc000_0000);
        assert_eq!(m.write_config(&cs, 0x48, 4), (true, vec![]));
        assert_eq!(m.notify(&cs, 0), Delivery::Pending);
        assert_eq!(m.bar_read(0x800, 4), 1);
        cs.write(0x48, 4, 0x8000_0000);
        assert_eq!(
            m.write_config(&cs, 0x48, 4),
            (true, vec![Delivery::Dropped])
        );
        assert_eq!(m.bar_write(&cs, 0xc, 4, 0), vec![Delivery::Sent(0)]);
        assert_eq!(m.bar_read(0x800, 4), 0);
        assert_eq!(m.notify(&cs, 0), Delivery::Sent(0));
        m.reset(&mut cs);
        assert_eq!(cs.byte(0x4b), 0);
        assert_eq!(m.bar_read(0xc, 4), 1);
    }

    /// The layout of an emulator's own BAR: table and PBA beside other registers.
    fn shared_bar() -> (ConfigSpace, Msix) {
        let mut cs = ConfigSpace::new(PCIE_CONFIG_SPACE_SIZE);
        let layout = MsixLayout {
            cap: Some(0x90),
            entries: 4,
            table_bar: 2,
            table_offset: 0x2000,
            pba_bar: 2,
            pba_offset: 0x3000,
            entry_bits: EntryBits::Defined,
        };
        let m = Msix::new(&mut cs, layout).unwrap();
        (cs, m)
    }

    #[test]
    fn a_layout_of_the_callers_is_described_in_the_capability() {
        let (cs, m) = shared_bar();
        assert_eq!(cs.capabilities(), vec![(CAP_ID_MSIX, 0x90)]);
        assert_eq!(cs.word(0x92), 3, "Table Size is N - 1");
        assert_eq!(cs.dword(0x94), 0x2002);
        assert_eq!(cs.dword(0x98), 0x3002);
        assert_eq!(cs.wmask(0x92, 2), 0xc000);
        assert_eq!(cs.wmask(0x10, 4), 0, "the BARs are the caller's");
        assert_eq!((m.table_len(), m.pba_len()), (64, 8));
        assert_eq!(
            (m.table_offset(), m.pba_offset(), m.bar_size()),
            (0x2000, 0x3000, 0x4000)
        );
        assert_eq!(m.table_read32(12), 1, "masked after reset");
        assert_eq!(m.table_read32(64), u32::MAX, "past the table");
        assert_eq!(m.pba_read32(8), u32::MAX, "past the PBA");
    }

    #[test]
    fn defined_entry_bits_drop_reserved_ones_and_pending_vectors_fire_on_unmask() {
        let (mut cs, mut m) = shared_bar();
        assert_eq!(m.table_write32(&cs, 16, 0xfee0_0003), Delivery::Dropped);
        assert_eq!(
            m.table_read32(16),
            0xfee0_0000,
            "Message Address[1:0] read 0"
        );
        m.table_write32(&cs, 24, 0x41);
        m.table_write32(&cs, 28, 0xffff_fffe);
        assert_eq!(
            m.table_read32(28),
            0,
            "Vector Control[31:1] reads 0, unmasked"
        );
        assert_eq!(m.notify(&cs, 1), Delivery::Dropped, "MSI-X disabled");
        cs.write(0x92, 2, 0xc000);
        assert_eq!(m.write_config(&cs, 0x92, 2), (true, vec![]));
        assert_eq!(m.notify(&cs, 1), Delivery::Pending, "Function Mask");
        assert_eq!(m.pba_read32(0), 0b10);
        cs.write(0x92, 2, 0x8000);
        let (_, fired) = m.write_config(&cs, 0x92, 2);
        assert_eq!(fired[1], Delivery::Sent(1));
        assert_eq!(
            m.message(1),
            Some(Message {
                address: 0xfee0_0000,
                data: 0x41
            })
        );
        assert_eq!(m.pba_read32(0), 0);
        m.table_write32(&cs, 28, 1);
        assert_eq!(m.notify(&cs, 1), Delivery::Pending, "vector masked");
        assert_eq!(m.table_write32(&cs, 28, 0), Delivery::Sent(1));
        assert_eq!(m.notify(&cs, 4), Delivery::Dropped, "no such vector");
        assert_eq!(m.table_write32(&cs, 64, 0), Delivery::Dropped);
        let mut other = shared_bar().1;
        other.load_state(&m.state()).unwrap();
        assert_eq!(other, m);
        let mut bad = m.state();
        bad.pba.pop();
        assert_eq!(other.load_state(&bad), Err(StateError::MsixPba));
    }
}
