//! MSI-X table and Pending Bit Array (PCIe Base 6.0 §7.7.2, §6.1.4.5): the guest writes each
//! vector's message in the table; a vector that fires while masked (per vector, by Function
//! Mask) sets its pending bit and is sent when unmasked.

/// Bytes per table entry: Message Address, Message Upper Address, Message Data, Vector Control.
pub const ENTRY_SIZE: u64 = 16;
/// Vector Control: Mask Bit.
const VECTOR_MASKED: u32 = 1;

/// An interrupt message to deliver (a memory write of `data` to `address`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Message address (0xFEEx_xxxx for an x86 local APIC).
    pub address: u64,
    /// Message data.
    pub data: u32,
}

/// Message Control's two switches (in configuration space, §7.7.2.2).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Control {
    /// MSI-X Enable.
    pub enabled: bool,
    /// Function Mask: every vector masked.
    pub function_masked: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Entry {
    address: u64,
    data: u32,
    control: u32,
}

impl Default for Entry {
    /// After reset every vector is masked (§7.7.2.8).
    fn default() -> Self {
        Entry {
            address: 0,
            data: 0,
            control: VECTOR_MASKED,
        }
    }
}

/// The table and the PBA of one function.
#[derive(Clone, Debug)]
pub struct MsixTable {
    entries: Vec<Entry>,
    pending: Vec<bool>,
}

impl MsixTable {
    /// A table of `vectors` entries, all masked, none pending.
    pub fn new(vectors: u16) -> MsixTable {
        MsixTable {
            entries: vec![Entry::default(); usize::from(vectors)],
            pending: vec![false; usize::from(vectors)],
        }
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no vectors.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Size of the table in bytes.
    pub fn table_size(&self) -> u64 {
        self.entries.len() as u64 * ENTRY_SIZE
    }

    /// Size of the PBA in bytes (whole qwords, §7.7.2.5).
    pub fn pba_size(&self) -> u64 {
        self.entries.len().div_ceil(64) as u64 * 8
    }

    /// A dword of the table at byte `offset` (dword aligned); all ones past the end.
    pub fn table_read32(&self, offset: u64) -> u32 {
        let Some(e) = self.entries.get((offset / ENTRY_SIZE) as usize) else {
            return u32::MAX;
        };
        match offset % ENTRY_SIZE {
            0 => e.address as u32,
            4 => (e.address >> 32) as u32,
            8 => e.data,
            _ => e.control,
        }
    }

    /// A dword write to the table; returns a pending message that the write unmasked.
    pub fn table_write32(&mut self, offset: u64, value: u32, control: Control) -> Option<Message> {
        let i = (offset / ENTRY_SIZE) as usize;
        let e = self.entries.get_mut(i)?;
        match offset % ENTRY_SIZE {
            0 => e.address = e.address & !0xffff_ffff | u64::from(value & !3),
            4 => e.address = e.address & 0xffff_ffff | u64::from(value) << 32,
            8 => e.data = value,
            _ => e.control = value & VECTOR_MASKED,
        }
        self.deliver_pending(i, control)
    }

    /// A dword of the PBA at byte `offset`.
    pub fn pba_read32(&self, offset: u64) -> u32 {
        let first = (offset / 4 * 32) as usize;
        (0..32).fold(0, |acc, bit| {
            let p = self.pending.get(first + bit).copied().unwrap_or(false);
            acc | u32::from(p) << bit
        })
    }

    /// Vector `vector` fires: its message if it can be sent now; otherwise it is left pending
    /// (masked) or dropped (MSI-X disabled, or no such vector).
    pub fn fire(&mut self, vector: u16, control: Control) -> Option<Message> {
        let i = usize::from(vector);
        let e = *self.entries.get(i)?;
        if !control.enabled {
            return None;
        }
        if control.function_masked || e.control & VECTOR_MASKED != 0 {
            self.pending[i] = true;
            return None;
        }
        Some(Message {
            address: e.address,
            data: e.data,
        })
    }

    fn deliver_pending(&mut self, i: usize, control: Control) -> Option<Message> {
        let e = *self.entries.get(i)?;
        let can_send =
            control.enabled && !control.function_masked && e.control & VECTOR_MASKED == 0;
        if !(can_send && self.pending[i]) {
            return None;
        }
        self.pending[i] = false;
        Some(Message {
            address: e.address,
            data: e.data,
        })
    }

    /// The pending messages Message Control now lets out (after MSI-X Enable or Function Mask
    /// changed).
    pub fn control_changed(&mut self, control: Control) -> Vec<Message> {
        (0..self.entries.len())
            .filter_map(|i| self.deliver_pending(i, control))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ON: Control = Control {
        enabled: true,
        function_masked: false,
    };

    #[test]
    fn masked_vectors_stay_pending_until_unmasked() {
        let mut t = MsixTable::new(4);
        assert_eq!(t.table_read32(12), 1, "masked after reset");
        t.table_write32(16, 0xfee0_0000, ON);
        t.table_write32(24, 0x41, ON);
        assert_eq!(t.fire(1, ON), None, "still masked");
        assert_eq!(t.pba_read32(0), 0b10);
        let m = t.table_write32(28, 0, ON);
        assert_eq!(
            m,
            Some(Message {
                address: 0xfee0_0000,
                data: 0x41
            })
        );
        assert_eq!(t.pba_read32(0), 0);
        assert!(t.fire(1, ON).is_some());
        let fm = Control {
            function_masked: true,
            ..ON
        };
        assert_eq!(t.fire(1, fm), None);
        assert_eq!(t.control_changed(ON).len(), 1, "function unmasked");
        assert_eq!(t.fire(1, Control::default()), None, "MSI-X disabled");
        assert_eq!(t.pba_read32(0), 0, "disabled: dropped, not pending");
        assert_eq!(t.fire(9, ON), None, "no such vector");
        assert_eq!((t.table_size(), t.pba_size()), (64, 8));
    }
}
