//! The host bridge at 00.0 of a hierarchy's root bus: the Q35 MCH in segment 0, and in an
//! extra segment (beyond QEMU) a plain host bridge like cloud-hypervisor's `PciRoot`
//! (`pci/src/bus.rs`): a type 0 function with no registers of its own, whose segment decodes a
//! fixed ECAM window the VMM describes in MCFG rather than one PCIEXBAR programs.

use pcierc_protocol::ChipsetMemory;
use serde::{Deserialize, Serialize};

use super::mch::Mch;
use crate::pci::config_space::{ConfigSpace, SpaceImage, PCI_CONFIG_SPACE_SIZE};
use crate::pci::header::{self, valid_access, Identity};
use crate::pci::{Effects, PciFunction, Width};
use crate::topology::StateError;
use crate::Error;

// cloud-hypervisor's PciRoot (pci/src/bus.rs): VENDOR_ID_INTEL 8086,
// DEVICE_ID_INTEL_VIRT_PCIE_HOST 0d57, class 06/00/00 (PCI Code and ID Assignment 1.16 §1.7:
// host bridge), header type 0, revision 0. EDK2's CloudHv platform (CH_VIRT_HOST_DEVICE_ID) and
// Linux know it; it claims no resources, so guests bind nothing to it.
/// The identity of an extra segment's host bridge.
pub const SEGMENT_HOST_IDENTITY: Identity = Identity {
    vendor_id: 0x8086,
    device_id: 0x0d57,
    revision: 0,
    class_code: 0x060000,
};

/// An extra segment's host bridge: identity registers, Command and Status as any type 0
/// function (PCI Local Bus 3.0 §6.2), nothing device-specific.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentHostBridge {
    space: ConfigSpace,
    /// The fixed ECAM window: (base, size, last bus).
    ecam: (u64, u64, u8),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SegmentHostState {
    space: SpaceImage,
}

impl SegmentHostBridge {
    /// The bridge of a segment whose ECAM window is `ecam` (base, size, last bus).
    pub fn new(ecam: (u64, u64, u8)) -> Self {
        let mut space = ConfigSpace::new(PCI_CONFIG_SPACE_SIZE);
        header::init_type0(&mut space, SEGMENT_HOST_IDENTITY, false);
        let mut b = SegmentHostBridge { space, ecam };
        b.reset();
        b
    }
}

impl PciFunction for SegmentHostBridge {
    fn config_read(&self, offset: u16, width: Width) -> u32 {
        self.space.read(offset, width)
    }

    fn config_image(&self) -> Vec<u8> {
        self.space.image_4k()
    }

    fn config_write(&mut self, offset: u16, width: Width, value: u32) -> Effects {
        if valid_access(offset, width) {
            self.space.write(offset, width, value);
        }
        // Nothing it decodes depends on its registers.
        Effects::empty()
    }

    fn reset(&mut self) {
        header::device_reset(&mut self.space, &[]);
    }

    fn save(&self) -> serde_json::Value {
        serde_json::to_value(SegmentHostState {
            space: self.space.image(),
        })
        .unwrap_or_default()
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<(), Error> {
        let id = "host-bridge";
        let s = SegmentHostState::deserialize(state).map_err(|source| StateError::Function {
            id: id.into(),
            source,
        })?;
        self.space.load_image(&s.space).map_err(|source| {
            StateError::Registers {
                id: id.into(),
                source,
            }
            .into()
        })
    }
}

/// The host bridge of a hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostBridge {
    /// Segment 0: the Q35 MCH, ECAM through PCIEXBAR.
    Mch(Mch),
    /// An extra segment's: a fixed ECAM window.
    Segment(SegmentHostBridge),
}

impl HostBridge {
    /// The ECAM window it decodes now: (base, size, last bus), `None` when PCIEXBAR is
    /// disabled.
    pub fn ecam(&self) -> Option<(u64, u64, u8)> {
        match self {
            HostBridge::Mch(m) => m.ecam(),
            HostBridge::Segment(s) => Some(s.ecam),
        }
    }

    /// PAM/SMRAM routing: the MCH's; an extra segment's bridge routes no chipset memory
    /// (reported as the MCH's power-on routing is not: all zero).
    pub fn chipset_memory(&self) -> ChipsetMemory {
        match self {
            HostBridge::Mch(m) => m.chipset_memory(),
            HostBridge::Segment(_) => ChipsetMemory::default(),
        }
    }

    /// The Q35 MCH, when it is one.
    pub fn as_mch(&self) -> Option<&Mch> {
        match self {
            HostBridge::Mch(m) => Some(m),
            HostBridge::Segment(_) => None,
        }
    }

    fn inner(&self) -> &dyn PciFunction {
        match self {
            HostBridge::Mch(m) => m,
            HostBridge::Segment(s) => s,
        }
    }

    fn inner_mut(&mut self) -> &mut dyn PciFunction {
        match self {
            HostBridge::Mch(m) => m,
            HostBridge::Segment(s) => s,
        }
    }
}

impl PciFunction for HostBridge {
    fn config_read(&self, offset: u16, width: Width) -> u32 {
        self.inner().config_read(offset, width)
    }

    fn config_image(&self) -> Vec<u8> {
        self.inner().config_image()
    }

    fn config_write(&mut self, offset: u16, width: Width, value: u32) -> Effects {
        self.inner_mut().config_write(offset, width, value)
    }

    fn reset(&mut self) {
        self.inner_mut().reset()
    }

    fn save(&self) -> serde_json::Value {
        self.inner().save()
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<(), Error> {
        self.inner_mut().restore(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_host_bridge_is_cloud_hypervisors_and_decodes_its_window() {
        let mut b = HostBridge::Segment(SegmentHostBridge::new((0x1_0000_0000, 256 << 20, 255)));
        assert_eq!(b.config_read(0, 4), 0x0d57_8086);
        assert_eq!(b.config_read(8, 4) >> 8, 0x060000);
        assert_eq!(b.config_read(0xe, 1), 0, "type 0, single function");
        assert_eq!(b.ecam(), Some((0x1_0000_0000, 256 << 20, 255)));
        assert_eq!(b.config_write(4, 2, 0x6), Effects::empty());
        assert_eq!(b.config_read(4, 2), 0x6);
        let saved = b.save();
        b.reset();
        assert_eq!(b.config_read(4, 2), 0);
        b.restore(&saved).unwrap();
        assert_eq!(b.config_read(4, 2), 0x6);
        assert!(b.as_mch().is_none());
    }
}
