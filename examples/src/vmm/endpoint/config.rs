//! A 4 KiB PCIe configuration space as data: register values plus per-byte masks of the bits
//! software may write and of the bits it clears by writing 1 (crosvm's `PciConfiguration`
//! idea). Capabilities are linked into the lists for you.

/// Size of a PCIe function's configuration space (PCIe Base 6.0 §7.2.2).
pub const CONFIG_SPACE_SIZE: usize = 4096;
/// Status register (PCI 3.0 §6.2.3).
pub const STATUS: u16 = 0x06;
/// Status: Capabilities List.
pub const STATUS_CAP_LIST: u32 = 1 << 4;
/// Capabilities Pointer (PCI 3.0 §6.7).
pub const CAP_POINTER: u16 = 0x34;
/// The first extended capability (PCIe Base 6.0 §7.6.3).
pub const EXT_CAP_START: u16 = 0x100;

/// One register's declaration: where, how wide, its value after reset, the bits software may
/// write, and the bits a write of 1 clears (RW1C).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Register {
    /// Offset in configuration space.
    pub offset: u16,
    /// 1, 2 or 4 bytes.
    pub width: u8,
    /// Value after reset.
    pub reset: u32,
    /// Read-write bits.
    pub writable: u32,
    /// Write-1-to-clear bits.
    pub w1c: u32,
}

impl Register {
    /// A read-only register.
    pub const fn ro(offset: u16, width: u8, value: u32) -> Register {
        Register {
            offset,
            width,
            reset: value,
            writable: 0,
            w1c: 0,
        }
    }

    /// A register with read-write bits `writable`.
    pub const fn rw(offset: u16, width: u8, reset: u32, writable: u32) -> Register {
        Register {
            offset,
            width,
            reset,
            writable,
            w1c: 0,
        }
    }

    /// A status register whose bits `w1c` are cleared by writing 1.
    pub const fn w1c(offset: u16, width: u8, reset: u32, w1c: u32) -> Register {
        Register {
            offset,
            width,
            reset,
            writable: 0,
            w1c,
        }
    }
}

/// Values and masks of one function's configuration space. Unused bytes read 0 and ignore
/// writes (RsvdP/RsvdZ).
#[derive(Clone)]
pub struct ConfigSpace {
    value: Box<[u8; CONFIG_SPACE_SIZE]>,
    writable: Box<[u8; CONFIG_SPACE_SIZE]>,
    w1c: Box<[u8; CONFIG_SPACE_SIZE]>,
    last_cap: Option<u16>,
    last_ext_cap: Option<u16>,
}

impl Default for ConfigSpace {
    fn default() -> Self {
        ConfigSpace {
            value: Box::new([0; CONFIG_SPACE_SIZE]),
            writable: Box::new([0; CONFIG_SPACE_SIZE]),
            w1c: Box::new([0; CONFIG_SPACE_SIZE]),
            last_cap: None,
            last_ext_cap: None,
        }
    }
}

/// Is (offset, width) a naturally aligned access of 1, 2 or 4 bytes inside the space?
pub fn valid_access(offset: u16, width: u8) -> bool {
    matches!(width, 1 | 2 | 4)
        && offset.is_multiple_of(u16::from(width))
        && usize::from(offset) + usize::from(width) <= CONFIG_SPACE_SIZE
}

impl ConfigSpace {
    /// Declare registers (their reset values and masks).
    pub fn declare(&mut self, registers: &[Register]) {
        for r in registers {
            self.put(r.offset, r.width, r.reset);
            Self::put_in(&mut self.writable, r.offset, r.width, r.writable);
            Self::put_in(&mut self.w1c, r.offset, r.width, r.w1c);
        }
    }

    fn put_in(bytes: &mut [u8; CONFIG_SPACE_SIZE], offset: u16, width: u8, value: u32) {
        let v = value.to_le_bytes();
        for (i, &byte) in v.iter().enumerate().take(usize::from(width)) {
            if let Some(b) = bytes.get_mut(usize::from(offset) + i) {
                *b = byte;
            }
        }
    }

    /// Set a value regardless of the masks (the device's own updates, e.g. a status bit).
    pub fn put(&mut self, offset: u16, width: u8, value: u32) {
        Self::put_in(&mut self.value, offset, width, value);
    }

    /// Link a capability at `offset` with `id` into the list that starts at 0x34 and set
    /// Status.Capabilities List (PCI 3.0 §6.7). Capabilities are linked in the order added.
    pub fn add_capability(&mut self, id: u8, offset: u8) {
        let offset = u16::from(offset);
        self.put(offset, 1, u32::from(id));
        self.put(offset + 1, 1, 0);
        match self.last_cap {
            Some(prev) => self.put(prev + 1, 1, u32::from(offset)),
            None => {
                self.put(CAP_POINTER, 1, u32::from(offset));
                let status = self.read(STATUS, 2) | STATUS_CAP_LIST;
                self.put(STATUS, 2, status);
            }
        }
        self.last_cap = Some(offset);
    }

    /// Link an extended capability (header: id, version, next) at `offset` (≥ 0x100, dword
    /// aligned) into the list that starts at 0x100 (PCIe Base 6.0 §7.6.3).
    pub fn add_ext_capability(&mut self, id: u16, version: u8, offset: u16) {
        debug_assert!(offset >= EXT_CAP_START && offset.is_multiple_of(4));
        self.put(offset, 4, u32::from(id) | u32::from(version & 0xf) << 16);
        if let Some(prev) = self.last_ext_cap {
            let header = self.read(prev, 4) & 0x000f_ffff;
            self.put(prev, 4, header | u32::from(offset) << 20);
        }
        self.last_ext_cap = Some(offset);
    }

    /// Read `width` bytes at `offset` (little-endian); all ones for an invalid access.
    pub fn read(&self, offset: u16, width: u8) -> u32 {
        if !valid_access(offset, width) {
            return u32::MAX;
        }
        let o = usize::from(offset);
        let mut b = [0u8; 4];
        b[..usize::from(width)].copy_from_slice(&self.value[o..o + usize::from(width)]);
        u32::from_le_bytes(b)
    }

    /// A guest write: writable bits take the new value, RW1C bits written as 1 clear, the rest
    /// keep theirs. Invalid accesses are dropped.
    pub fn write(&mut self, offset: u16, width: u8, value: u32) {
        if !valid_access(offset, width) {
            return;
        }
        let v = value.to_le_bytes();
        for (i, &new) in v.iter().enumerate().take(usize::from(width)) {
            let o = usize::from(offset) + i;
            let (w, c) = (self.writable[o], self.w1c[o]);
            self.value[o] = (self.value[o] & !w | new & w) & !(new & c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_decide_what_a_write_changes() {
        let mut cs = ConfigSpace::default();
        cs.declare(&[
            Register::ro(0, 4, 0x0005_1b36),
            Register::rw(4, 2, 0, 0x0006),
            Register::w1c(6, 2, 0x0000, 0xf900),
        ]);
        cs.write(0, 4, 0);
        assert_eq!(cs.read(0, 4), 0x0005_1b36, "read-only");
        cs.write(4, 2, 0xffff);
        assert_eq!(cs.read(4, 2), 0x0006);
        cs.put(6, 2, 0x8010);
        cs.write(6, 2, 0x8000);
        assert_eq!(cs.read(6, 2), 0x0010, "RW1C cleared, RO kept");
        cs.write(4, 1, 0x02);
        assert_eq!(cs.read(4, 4), 0x0010_0002, "byte writes touch one byte");
        assert_eq!(cs.read(2, 4), u32::MAX, "unaligned");
        assert_eq!(cs.read(4094, 4), u32::MAX, "past the end");
    }

    #[test]
    fn capabilities_are_chained() {
        let mut cs = ConfigSpace::default();
        cs.add_capability(0x01, 0x40);
        cs.add_capability(0x10, 0x48);
        cs.add_ext_capability(0x0003, 1, 0x100);
        cs.add_ext_capability(0x0001, 2, 0x140);
        assert_eq!(cs.read(CAP_POINTER, 1), 0x40);
        assert_ne!(cs.read(STATUS, 2) & STATUS_CAP_LIST, 0);
        assert_eq!(cs.read(0x40, 2), 0x4801);
        assert_eq!(cs.read(0x48, 2), 0x0010);
        assert_eq!(cs.read(0x100, 4), 0x1401_0003);
        assert_eq!(cs.read(0x140, 4), 0x0002_0001);
    }
}
