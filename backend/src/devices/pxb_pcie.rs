//! QEMU's `pxb-pcie` (1b36:000b), the PCI Express expander bridge: a conventional type 0
//! function on `pcie.0` (class 06/00/00, host bridge) that opens one more root bus of segment 0,
//! numbered `bus_nr`, on which root ports sit. The function itself has no registers beyond the
//! predefined header: QEMU 7.2's `pxb_dev_realize_common()` (hw/pci-bridge/pci_expander_bridge.c)
//! registers it with `PCI_DEVICE_ID_REDHAT_PXB_PCIE`, sets Status 66 MHz Capable and Fast
//! Back-to-Back Capable and the host bridge class; it has no BAR, no capability and 256 bytes
//! of configuration space (a conventional function: reads past 0xff are all ones). Which bus
//! it opens is the hierarchy's business (`topology::hierarchy`).

use serde::{Deserialize, Serialize};

use crate::pci::config_space::{ConfigSpace, SpaceImage, PCI_CONFIG_SPACE_SIZE};
use crate::pci::header::{self, valid_access, Identity, STATUS, STATUS_66MHZ, STATUS_FAST_BACK};
use crate::pci::{Effects, PciFunction, Width};
use crate::topology::state::function_state;
use crate::topology::StateError;
use crate::Error;

/// QEMU's `NUMA_NODE_UNASSIGNED` (`MAX_NODES`): the `numa_node` default, no proximity domain.
pub const NUMA_NODE_UNASSIGNED: u16 = 128;

/// The identity QEMU 7.2 gives `pxb-pcie`: Red Hat 1b36, `PCI_DEVICE_ID_REDHAT_PXB_PCIE` 000b,
/// revision 0, class 06/00/00 (PCI Code and ID Assignment 1.16 §1.7: host bridge).
pub const PXB_PCIE_IDENTITY: Identity = Identity {
    vendor_id: 0x1b36,
    device_id: 0x000b,
    revision: 0,
    class_code: 0x060000,
};

/// A `pxb-pcie`'s properties, with the meaning and defaults of QEMU 7.2's properties of the same
/// names (`qemu-system-x86_64 -device pxb-pcie,help`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PxbPcieConfig {
    /// Device id (`id=`); QEMU names the expander's root bus after it (`bus=<id>` places
    /// root ports there).
    pub id: String,
    /// `bus_nr=`: the number of the root bus the expander opens (QEMU's default 0 is refused:
    /// bus 0 is `pcie.0`, docs/qemu-compat.md).
    pub bus_nr: u8,
    /// `numa_node=`: the proximity domain of the expander's bus (the VMM's `_PXM`);
    /// [`NUMA_NODE_UNASSIGNED`] (the default) for none.
    pub numa_node: u16,
    /// `bypass_iommu=` (default off): the bus bypasses the vIOMMU (QEMU leaves it out of the
    /// DMAR/IORT scopes); stored and reported, no register effect.
    pub bypass_iommu: bool,
    /// Multi-function bit in Header Type (`multifunction=`).
    pub multifunction: bool,
    /// `acpi-index=` (default 0): checked as QEMU checks it and stored.
    pub acpi_index: u32,
    /// `rombar=` (default 1): accepted and stored; without a ROM file there is no ROM BAR.
    pub rombar: u32,
    /// `romsize=`: accepted and stored; without a ROM file there is no ROM.
    pub romsize: Option<u32>,
    /// `x-pcie-extcap-init=` (default on): a conventional function has no extended
    /// capabilities; stored.
    pub extcap_init: bool,
    /// `x-pcie-lnksta-dllla=` (default on): the function is in no slot; stored.
    pub lnksta_dllla: bool,
}

impl Default for PxbPcieConfig {
    /// QEMU 7.2's defaults.
    fn default() -> Self {
        PxbPcieConfig {
            id: String::new(),
            bus_nr: 0,
            numa_node: NUMA_NODE_UNASSIGNED,
            bypass_iommu: false,
            multifunction: false,
            acpi_index: 0,
            rombar: 1,
            romsize: None,
            extcap_init: true,
            lnksta_dllla: true,
        }
    }
}

impl PxbPcieConfig {
    /// The proximity domain, if one is assigned.
    pub fn numa_node(&self) -> Option<u16> {
        (self.numa_node != NUMA_NODE_UNASSIGNED).then_some(self.numa_node)
    }
}

/// A `pxb-pcie` function in a given state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PxbPcie {
    config: PxbPcieConfig,
    space: ConfigSpace,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PxbState {
    config: PxbPcieConfig,
    space: SpaceImage,
}

impl PxbPcie {
    /// The function at power-on, as QEMU 7.2 realizes it (the same under QEMU 10.0's machine
    /// types: no compat property touches it).
    pub fn new(config: PxbPcieConfig) -> Self {
        let mut space = ConfigSpace::new(PCI_CONFIG_SPACE_SIZE);
        header::init_type0(&mut space, PXB_PCIE_IDENTITY, config.multifunction);
        // pxb_dev_realize_common(): pci_word_test_and_set_mask(PCI_STATUS, 66MHZ | FAST_BACK).
        space.set_bits(STATUS, 2, u64::from(STATUS_66MHZ | STATUS_FAST_BACK));
        let mut f = PxbPcie { config, space };
        f.reset();
        f
    }

    /// Its properties.
    pub fn config(&self) -> &PxbPcieConfig {
        &self.config
    }

    /// The number of the root bus it opens.
    pub fn bus_nr(&self) -> u8 {
        self.config.bus_nr
    }
}

impl PciFunction for PxbPcie {
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
        // QEMU's expander bus decodes whatever reaches it whatever the Command register says
        // (its root bus shares pcie.0's address spaces): nothing depends on these registers.
        Effects::empty()
    }

    fn reset(&mut self) {
        // pci_do_device_reset(): Command, Status' writable and W1C bits, Interrupt Line, Cache
        // Line Size; 66 MHz and Fast Back-to-Back are read-only and stay.
        header::device_reset(&mut self.space, &[]);
    }

    fn save(&self) -> serde_json::Value {
        serde_json::to_value(PxbState {
            config: self.config.clone(),
            space: self.space.image(),
        })
        .unwrap_or_default()
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<(), Error> {
        let id = self.config.id.clone();
        let s: PxbState = function_state(&id, state, &self.config, |s: &PxbState| &s.config)?;
        self.space.load_image(&s.space).map_err(|source| {
            StateError::Registers {
                id: id.clone(),
                source,
            }
            .into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pxb() -> PxbPcie {
        PxbPcie::new(PxbPcieConfig {
            id: "pxb1".into(),
            bus_nr: 0x80,
            ..Default::default()
        })
    }

    /// What QEMU 7.2 shows at 00:05.0 for `-device pxb-pcie,id=pxb1,bus_nr=0x80,addr=5` before
    /// and after all ones are written to every dword of the header.
    #[test]
    fn the_header_is_qemus() {
        let mut f = pxb();
        let dwords = |f: &PxbPcie| {
            (0..0x40)
                .step_by(4)
                .map(|o| f.config_read(o, 4))
                .collect::<Vec<_>>()
        };
        let mut want = vec![0u32; 16];
        want[0] = 0x000b_1b36;
        want[1] = 0x00a0_0000;
        want[2] = 0x0600_0000;
        want[11] = 0x1100_1af4;
        assert_eq!(dwords(&f), want);
        for off in (0..0x40).step_by(4) {
            f.config_write(off, 4, 0xffff_ffff);
        }
        want[1] = 0x00a0_0507;
        want[3] = 0xff;
        want[15] = 0xff;
        assert_eq!(dwords(&f), want);
        assert_eq!(
            f.config_read(0x100, 4),
            0xffff_ffff,
            "256 bytes: conventional"
        );
        f.reset();
        assert_eq!(f.config_read(4, 4), 0x00a0_0000);
    }

    #[test]
    fn state_round_trips_and_names_other_properties() {
        let mut f = pxb();
        f.config_write(4, 2, 0x6);
        let saved = f.save();
        let mut g = pxb();
        g.restore(&saved).unwrap();
        assert_eq!(g, f);
        let mut other = PxbPcie::new(PxbPcieConfig {
            id: "pxb1".into(),
            bus_nr: 0x40,
            ..Default::default()
        });
        assert!(other.restore(&saved).is_err());
    }
}
