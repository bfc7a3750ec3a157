//! MSI capability (PCIe Base 6.0 §7.7.1; PCI Local Bus 3.0 §6.8.1), as QEMU 7.2's
//! `hw/pci/msi.c` (`msi_init()`, `msi_write_config()`, `msi_notify()`, `msi_reset()`).
//!
//! Unlike MSI-X, everything MSI has lives in configuration space: Message Control, the message
//! address and data, and (with per-vector masking) the Mask Bits and Pending Bits. [`Msi`] only
//! knows where the capability is and how it was built; every call takes the function's
//! [`ConfigSpace`]. A vector that fires while masked sets its pending bit and is sent when the
//! guest unmasks it with MSI enabled.

use crate::config_space::{CapabilityError, ConfigSpace};
use crate::header::overlaps;

use super::CAP_ID_MSI;

// PCIe Base 6.0 §7.7.1.2 Message Control Register for MSI.
/// Message Control (offset in the capability).
pub const FLAGS: u16 = 0x02;
/// Message Control: MSI Enable.
pub const FLAGS_ENABLE: u16 = 1 << 0;
/// Message Control: Multiple Message Capable (bits 3:1, log2 of the vectors requested).
pub const FLAGS_QMASK: u16 = 0x7 << 1;
/// Message Control: Multiple Message Enable (bits 6:4, log2 of the vectors allocated).
pub const FLAGS_QSIZE: u16 = 0x7 << 4;
/// Message Control: 64 Bit Address Capable.
pub const FLAGS_64BIT: u16 = 1 << 7;
/// Message Control: Per-Vector Masking Capable.
pub const FLAGS_MASKBIT: u16 = 1 << 8;
// PCIe Base 6.0 §7.7.1.3 Message Address Register for MSI.
/// Message Address (dword aligned: bits 1:0 are read-only zero).
pub const ADDRESS_LO: u16 = 0x04;
/// Message Upper Address (64-bit capable functions only, PCIe Base 6.0 §7.7.1.4).
pub const ADDRESS_HI: u16 = 0x08;
/// Most vectors a function may request (Multiple Message Capable 101b).
pub const MAX_VECTORS: u8 = 32;

/// A function's MSI capability: where it is and how QEMU's `msi_init()` built it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Msi {
    cap: u16,
    vectors: u8,
    is64: bool,
    maskbit: bool,
}

impl Msi {
    /// QEMU's `msi_init()`: add the capability at `offset` for `vectors` vectors (a power of two
    /// up to 32), 64-bit addresses and per-vector masking as asked. Writable: MSI Enable,
    /// Multiple Message Enable, the address (dword aligned), the data and the mask bits of the
    /// requested vectors; the pending bits are read-only.
    pub fn init(
        cs: &mut ConfigSpace,
        offset: u8,
        vectors: u8,
        is64: bool,
        maskbit: bool,
    ) -> Result<Msi, CapabilityError> {
        let size = Self::size(is64, maskbit);
        if !vectors.is_power_of_two() || vectors > MAX_VECTORS {
            return Err(CapabilityError::Overlap {
                id: CAP_ID_MSI.into(),
                offset: offset.into(),
                size: size.into(),
            });
        }
        let at = u16::from(cs.add_capability(CAP_ID_MSI, Some(offset), size)?);
        let msi = Msi {
            cap: at,
            vectors,
            is64,
            maskbit,
        };
        let mut flags = (vectors.trailing_zeros() as u16) << 1;
        if is64 {
            flags |= FLAGS_64BIT;
        }
        if maskbit {
            flags |= FLAGS_MASKBIT;
        }
        cs.set_word(at + FLAGS, flags);
        cs.set_wmask(at + FLAGS, 2, (FLAGS_QSIZE | FLAGS_ENABLE).into());
        cs.set_wmask(at + ADDRESS_LO, 4, 0xffff_fffc);
        if is64 {
            cs.set_wmask(at + ADDRESS_HI, 4, 0xffff_ffff);
        }
        cs.set_wmask(msi.data_off(), 2, 0xffff);
        if maskbit {
            cs.set_wmask(msi.mask_off(), 4, msi.vector_bits().into());
        }
        Ok(msi)
    }

    /// QEMU's `msi_cap_sizeof()`.
    fn size(is64: bool, maskbit: bool) -> u8 {
        match (is64, maskbit) {
            (false, false) => 0x0a,
            (true, false) => 0x0e,
            (false, true) => 0x14,
            (true, true) => 0x18,
        }
    }

    /// Offset of the capability.
    pub fn cap(&self) -> u16 {
        self.cap
    }

    /// Vectors the function requests (Multiple Message Capable).
    pub fn vectors(&self) -> u8 {
        self.vectors
    }

    // PCIe Base 6.0 §7.7.1.5 Message Data Register for MSI.
    fn data_off(&self) -> u16 {
        self.cap + if self.is64 { 0x0c } else { 0x08 }
    }

    // PCIe Base 6.0 §7.7.1.7 Mask Bits Register for MSI.
    fn mask_off(&self) -> u16 {
        self.cap + if self.is64 { 0x10 } else { 0x0c }
    }

    // PCIe Base 6.0 §7.7.1.8 Pending Bits Register for MSI.
    fn pending_off(&self) -> u16 {
        self.cap + if self.is64 { 0x14 } else { 0x10 }
    }

    fn vector_bits(&self) -> u32 {
        u32::MAX >> (32 - u32::from(self.vectors))
    }

    fn flags(&self, cs: &ConfigSpace) -> u16 {
        cs.word(self.cap + FLAGS)
    }

    /// MSI Enable.
    pub fn enabled(&self, cs: &ConfigSpace) -> bool {
        self.flags(cs) & FLAGS_ENABLE != 0
    }

    /// Vectors allocated by software (Multiple Message Enable; QEMU's
    /// `msi_nr_vectors_allocated()`). While MSI is disabled this is what software wrote, even
    /// beyond what the function requested.
    pub fn allocated(&self, cs: &ConfigSpace) -> u8 {
        let log = (self.flags(cs) & FLAGS_QSIZE) >> 4;
        1u8 << log.min(5)
    }

    /// Is `vector` masked by its Mask Bit (never without per-vector masking)?
    pub fn is_masked(&self, cs: &ConfigSpace, vector: u16) -> bool {
        self.maskbit && vector < 32 && cs.dword(self.mask_off()) & 1 << vector != 0
    }

    /// The message `vector` sends (PCIe Base 6.0 §6.1.4.3: with more than one vector allocated,
    /// the vector number replaces the low bits of Message Data) and whether it cannot fire
    /// (masked, or MSI disabled); `None` past the vectors the function requests.
    pub fn route(&self, cs: &ConfigSpace, vector: u16) -> Option<(u64, u32, bool)> {
        if vector >= u16::from(self.vectors) {
            return None;
        }
        let mut address = u64::from(cs.dword(self.cap + ADDRESS_LO));
        if self.is64 {
            address |= u64::from(cs.dword(self.cap + ADDRESS_HI)) << 32;
        }
        let n = u32::from(self.allocated(cs));
        let data = u32::from(cs.word(self.data_off())) & !(n - 1) | u32::from(vector) & (n - 1);
        let blocked = !self.enabled(cs) || self.is_masked(cs, vector);
        Some((address, data, blocked))
    }

    /// QEMU's `msi_notify()`: a masked vector sets its pending bit and returns `false`; an
    /// unmasked one is sent (`true`, see [`Msi::route`]). Callers check [`Msi::enabled`] first,
    /// as QEMU's do; a vector beyond those allocated is dropped (where QEMU asserts).
    pub fn notify(&self, cs: &mut ConfigSpace, vector: u16) -> bool {
        if vector >= u16::from(self.allocated(cs)) {
            return false;
        }
        if self.is_masked(cs, vector) {
            cs.set_bits(self.pending_off(), 4, 1 << vector);
            return false;
        }
        true
    }

    /// QEMU's `msi_write_config()` after a configuration write that touched the capability,
    /// with MSI enabled: INTx is deasserted (returns `true`), Multiple Message Enable is clamped
    /// to Multiple Message Capable, pending bits beyond the allocated vectors are dropped, and
    /// pending vectors that are now unmasked are sent (the vectors returned).
    pub fn write_config(&self, cs: &mut ConfigSpace, offset: u16, width: u8) -> (bool, Vec<u16>) {
        let size = Self::size(self.is64, self.maskbit);
        if !overlaps(offset, width, self.cap, size.into()) || !self.enabled(cs) {
            return (false, Vec::new());
        }
        let flags = self.flags(cs);
        let (log_num, log_max) = ((flags & FLAGS_QSIZE) >> 4, (flags & FLAGS_QMASK) >> 1);
        if log_num > log_max {
            cs.set_word(self.cap + FLAGS, flags & !FLAGS_QSIZE | log_max << 4);
        }
        if !self.maskbit {
            return (true, Vec::new());
        }
        let n = self.allocated(cs);
        let pending = cs.dword(self.pending_off()) & (u32::MAX >> (32 - u32::from(n)));
        cs.set_dword(self.pending_off(), pending);
        let mut sent = Vec::new();
        for v in 0..u16::from(n) {
            if self.is_masked(cs, v) || pending & 1 << v == 0 {
                continue;
            }
            cs.clear_bits(self.pending_off(), 4, 1 << v);
            if self.notify(cs, v) {
                sent.push(v);
            }
        }
        (true, sent)
    }

    /// QEMU's `msi_reset()`: MSI Enable and Multiple Message Enable cleared, the address, data,
    /// mask and pending bits zeroed.
    pub fn reset(&self, cs: &mut ConfigSpace) {
        cs.clear_bits(self.cap + FLAGS, 2, (FLAGS_QSIZE | FLAGS_ENABLE).into());
        cs.set_dword(self.cap + ADDRESS_LO, 0);
        if self.is64 {
            cs.set_dword(self.cap + ADDRESS_HI, 0);
        }
        cs.set_word(self.data_off(), 0);
        if self.maskbit {
            cs.set_dword(self.mask_off(), 0);
            cs.set_dword(self.pending_off(), 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config_space::PCIE_CONFIG_SPACE_SIZE;

    fn ioh3420_like() -> (ConfigSpace, Msi) {
        let mut cs = ConfigSpace::new(PCIE_CONFIG_SPACE_SIZE);
        let msi = Msi::init(&mut cs, 0x60, 2, false, true).unwrap();
        (cs, msi)
    }

    #[test]
    fn layout_and_masks_are_qemus() {
        let (mut cs, _) = ioh3420_like();
        assert_eq!(cs.dword(0x60), 0x0102_0005);
        cs.write(0x60, 4, 0xffff_ffff);
        assert_eq!(cs.dword(0x60), 0x0173_0005, "Enable and MME only");
        cs.write(0x64, 4, 0xffff_ffff);
        cs.write(0x68, 4, 0xffff_ffff);
        cs.write(0x6c, 4, 0xffff_ffff);
        cs.write(0x70, 4, 0xffff_ffff);
        assert_eq!(
            [
                cs.dword(0x64),
                cs.dword(0x68),
                cs.dword(0x6c),
                cs.dword(0x70)
            ],
            [0xffff_fffc, 0xffff, 0x3, 0]
        );
        assert!(Msi::init(&mut cs, 0x80, 3, false, true).is_err());
    }

    #[test]
    fn enabling_clamps_the_allocation_and_reset_clears_it() {
        let (mut cs, msi) = ioh3420_like();
        cs.write(0x62, 2, 0x0050);
        assert_eq!(msi.allocated(&cs), 32, "kept while disabled, as QEMU");
        cs.write(0x62, 2, 0x0051);
        assert_eq!(msi.write_config(&mut cs, 0x62, 2), (true, vec![]));
        assert_eq!(cs.word(0x62), 0x0113);
        assert_eq!(msi.allocated(&cs), 2);
        msi.reset(&mut cs);
        assert_eq!(cs.word(0x62), 0x0102);
    }

    #[test]
    fn masked_vectors_pend_and_fire_when_unmasked() {
        let (mut cs, msi) = ioh3420_like();
        cs.write(0x64, 4, 0xfee0_0000);
        cs.write(0x68, 2, 0x4040);
        cs.write(0x6c, 4, 0x3);
        cs.write(0x62, 2, 0x0011);
        msi.write_config(&mut cs, 0x62, 2);
        assert!(!msi.notify(&mut cs, 1));
        assert!(!msi.notify(&mut cs, 5), "beyond the allocation");
        assert_eq!(cs.dword(0x70), 0x2);
        assert_eq!(msi.route(&cs, 1), Some((0xfee0_0000, 0x4041, true)));
        cs.write(0x6c, 4, 0x1);
        assert_eq!(msi.write_config(&mut cs, 0x6c, 4), (true, vec![1]));
        assert_eq!(cs.dword(0x70), 0);
        assert_eq!(msi.route(&cs, 1), Some((0xfee0_0000, 0x4041, false)));
        assert!(msi.notify(&mut cs, 1));
        assert_eq!(msi.route(&cs, 2), None);
    }
}
