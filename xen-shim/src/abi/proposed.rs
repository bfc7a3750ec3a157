//! The Xen extension the seed's approach I implies, **not in any Xen release**: Xen decodes
//! the guest's MMCONFIG (ECAM) window into `IOREQ_TYPE_PCI_CONFIG` requests, so ECAM accesses
//! are routed by PCI SBDF exactly like CF8/CFC accesses (FLOW.md §5: Xen 4.17 does not decode
//! MMCONFIG for HVM guests; ECAM arrives as plain MMIO at whichever server mapped the range).
//!
//! One dm_op tells Xen where the window is; pcierc knows (it emulates PCIEXBAR) and the shim
//! repeats every change. The op number is deliberately far past Xen 4.17's last op (20): Xen's
//! `do_dm_op()` answers any op beyond its table with `-EOPNOTSUPP`, which is how the shim
//! detects a hypervisor without the extension and falls back to decoding ECAM itself.
//! `sim` implements the extension when asked to; `docs/xen.md` has the Xen side.

/// `XEN_DMOP_x_pcierc_mmcfg` (proposed): set or clear the domain's MMCONFIG window.
pub const XEN_DMOP_x_pcierc_mmcfg: u32 = 0x100;

/// Payload of [`XEN_DMOP_x_pcierc_mmcfg`] (proposed; 16 bytes, no implicit padding).
///
/// While `enabled`, an MMIO access inside `[base, base + ((end_bus - start_bus + 1) << 20))`
/// becomes a PCI_CONFIG ioreq for `segment:(start_bus + off >> 20):(off >> 12 & 0xff)`,
/// register `off & 0xfff`, sent to the server that mapped that SBDF (or dropped: reads all
/// ones); 8-byte accesses become two 4-byte requests. One window per domain; the last call wins.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct xen_dm_op_x_pcierc_mmcfg_t {
    /// Guest-physical address of bus `start_bus`, function 0, register 0.
    pub base: u64,
    /// PCI segment group the window decodes.
    pub segment: u16,
    /// First bus.
    pub start_bus: u8,
    /// Last bus (inclusive).
    pub end_bus: u8,
    /// 1: decode the window; 0: stop decoding (the other fields are ignored).
    pub enabled: u8,
    /// Must be zero.
    pub pad: [u8; 3],
}

impl super::dm_op::xen_dm_op {
    /// [`XEN_DMOP_x_pcierc_mmcfg`] (proposed extension): decode `window`, or stop with `None`.
    pub fn x_pcierc_mmcfg(window: Option<(u64, u16, u8, u8)>) -> Self {
        let p = match window {
            Some((base, segment, start_bus, end_bus)) => xen_dm_op_x_pcierc_mmcfg_t {
                base,
                segment,
                start_bus,
                end_bus,
                enabled: 1,
                pad: [0; 3],
            },
            None => xen_dm_op_x_pcierc_mmcfg_t::default(),
        };
        Self::with(XEN_DMOP_x_pcierc_mmcfg, p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::dm_op::xen_dm_op;

    #[test]
    fn encoding() {
        let op = xen_dm_op::x_pcierc_mmcfg(Some((0xb000_0000, 0, 0, 0xff)));
        let b = op.as_bytes();
        assert_eq!(&b[..8], &[0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[8..16], &0xb000_0000u64.to_le_bytes());
        assert_eq!(&b[16..24], &[0, 0, 0, 0xff, 1, 0, 0, 0]);
        let off = xen_dm_op::x_pcierc_mmcfg(None);
        assert_eq!(off.payload::<xen_dm_op_x_pcierc_mmcfg_t>().enabled, 0);
    }
}
