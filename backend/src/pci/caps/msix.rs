//! MSI-X capability, table and Pending Bit Array (PCI Local Bus 3.0 §6.8.2) in an exclusive
//! memory BAR, as QEMU 7.2's `hw/pci/msix.c` (`msix_init_exclusive_bar()`, `msix_write_config()`,
//! the table and PBA MMIO ops, `msix_notify()`, `msix_reset()`).
//!
//! BAR accesses follow QEMU's memory core: an access is split at region boundaries and into
//! naturally aligned pieces of at most 8 bytes; table and PBA pieces smaller than 4 bytes are
//! invalid (read 0, write dropped), 8-byte pieces become two dword accesses, and the holes
//! between the regions read 0. Message delivery itself is not modelled yet: a message QEMU would
//! send leaves no trace here, a masked one sets its pending bit exactly as in QEMU.

use serde::{Deserialize, Serialize};

use crate::pci::config_space::{CapabilityError, ConfigSpace};
use crate::pci::header::{overlaps, register_memory_bar32};

use super::CAP_ID_MSIX;

// PCI Local Bus 3.0 §6.8.2.3 Message Control.
/// Message Control (offset in the capability).
pub const FLAGS: u16 = 0x02;
// PCI Local Bus 3.0 §6.8.2.4 Table Offset/Table BIR.
/// Table Offset / BIR.
pub const TABLE: u16 = 0x04;
// PCI Local Bus 3.0 §6.8.2.5 PBA Offset/PBA BIR.
/// PBA Offset / BIR.
pub const PBA: u16 = 0x08;
/// Size of the capability.
pub const CAP_LENGTH: u8 = 12;
/// The byte of Message Control holding MSI-X Enable (bit 7) and Function Mask (bit 6).
pub const CONTROL_BYTE: u16 = FLAGS + 1;
const ENABLE: u8 = 0x80;
const MASKALL: u8 = 0x40;
// PCI Local Bus 3.0 §6.8.2.6-§6.8.2.9 table entry: address, upper address, data, vector control.
/// Size of one table entry.
pub const ENTRY_SIZE: u32 = 16;
const ENTRY_VECTOR_CTRL: usize = 12;
const ENTRY_CTRL_MASKBIT: u8 = 1;

/// One function's MSI-X state outside configuration space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Msix {
    cap: u16,
    entries: u16,
    table_offset: u32,
    pba_offset: u32,
    bar_size: u32,
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
    /// A message is sent.
    Sent(u16),
}

impl Msix {
    /// QEMU's `msix_init_exclusive_bar()`: the capability in the first free gap, `entries`
    /// vectors in a BAR of its own (4 KiB for up to 128 vectors: table at 0, PBA at 2 KiB),
    /// every vector masked, and the BAR registered as 32-bit memory.
    pub fn init_exclusive_bar(
        cs: &mut ConfigSpace,
        entries: u16,
        bar: u8,
    ) -> Result<Msix, CapabilityError> {
        let entries = entries.clamp(1, 2048);
        let pba_size = u32::from(entries).div_ceil(64) * 8;
        let pba_offset = (u32::from(entries) * ENTRY_SIZE).max(2048);
        let bar_size = (pba_offset + pba_size).max(4096).next_power_of_two();
        let cap = u16::from(cs.add_capability(CAP_ID_MSIX, None, CAP_LENGTH)?);
        cs.set_word(cap + FLAGS, entries - 1);
        cs.set_dword(cap + TABLE, u32::from(bar));
        cs.set_dword(cap + PBA, pba_offset | u32::from(bar));
        cs.or_wmask(cap + CONTROL_BYTE, 1, (ENABLE | MASKALL).into());
        register_memory_bar32(cs, bar, bar_size);
        let mut m = Msix {
            cap,
            entries,
            table_offset: 0,
            pba_offset,
            bar_size,
            table: vec![0; usize::from(entries) * ENTRY_SIZE as usize],
            pba: vec![0; pba_size as usize],
            function_masked: true,
        };
        m.mask_all(cs);
        Ok(m)
    }

    /// Offset of the capability.
    pub fn cap(&self) -> u16 {
        self.cap
    }

    /// Size of the BAR holding table and PBA.
    pub fn bar_size(&self) -> u32 {
        self.bar_size
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

    /// The message `vector` sends now (PCIe Base 6.0 §7.7.2.4: its table entry's address and
    /// data) and whether it cannot fire (masked, or MSI-X disabled); `None` past the table.
    pub fn route(&self, vector: u16) -> Option<(u64, u32, bool)> {
        if vector >= self.entries {
            return None;
        }
        let entry = u64::from(vector) * u64::from(ENTRY_SIZE);
        let address = self.bar_read(entry, 8);
        let data = self.bar_read(entry + 8, 4) as u32;
        Some((address, data, self.is_masked(vector)))
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
    /// whole (QEMU keeps every bit of Vector Control), the PBA is read-only.
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
                let at = (off + dword) as usize;
                let vector = (at / ENTRY_SIZE as usize) as u16;
                let was = self.is_masked(vector);
                let data = (value >> (shift + 8 * dword)) as u32;
                if let Some(slot) = self.table.get_mut(at..at + 4) {
                    slot.copy_from_slice(&data.to_le_bytes());
                }
                fired.push(self.handle_mask_update(cs, vector, was));
            }
        }
        fired
    }

    /// The dynamic state for saving.
    pub fn state(&self) -> MsixState {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect();
        MsixState {
            table: hex(&self.table),
            pba: hex(&self.pba),
            function_masked: self.function_masked,
        }
    }

    /// Load state made by [`Msix::state`] of the same layout; nothing changes on error.
    pub fn load_state(&mut self, s: &MsixState) -> Result<(), String> {
        let unhex = |h: &str, n: usize| -> Option<Vec<u8>> {
            if h.len() != 2 * n || !h.is_ascii() {
                return None;
            }
            (0..n)
                .map(|i| {
                    h.get(2 * i..2 * i + 2)
                        .and_then(|x| u8::from_str_radix(x, 16).ok())
                })
                .collect()
        };
        let table = unhex(&s.table, self.table.len()).ok_or("bad MSI-X table")?;
        let pba = unhex(&s.pba, self.pba.len()).ok_or("bad MSI-X PBA")?;
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
    use crate::pci::config_space::PCIE_CONFIG_SPACE_SIZE;
    use crate::pci::header::init_masks;

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
}
