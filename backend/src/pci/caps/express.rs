//! PCI Express Capability structure, version 2 (PCIe Base 6.0 §7.5.3), as QEMU 7.2 builds it for
//! a root port: `pcie_cap_init()`, `pcie_cap_fill_slot_lnk()`, `pcie_cap_arifwd_init()`,
//! `pcie_cap_deverr_init()`, `pcie_cap_root_init()` and their resets in `hw/pci/pcie.c`.
//! The slot registers and their write hook live in [`super::slot`].

use serde::{Deserialize, Serialize};

use crate::pci::config_space::{CapabilityError, ConfigSpace};

use super::CAP_ID_EXP;

// PCIe Base 6.0 §7.5.3.2 PCI Express Capabilities Register.
/// PCI Express Capabilities.
pub const FLAGS: u16 = 0x02;
// PCIe Base 6.0 §7.5.3.3 Device Capabilities Register.
/// Device Capabilities.
pub const DEVCAP: u16 = 0x04;
// PCIe Base 6.0 §7.5.3.4 Device Control Register.
/// Device Control.
pub const DEVCTL: u16 = 0x08;
// PCIe Base 6.0 §7.5.3.5 Device Status Register.
/// Device Status.
pub const DEVSTA: u16 = 0x0a;
// PCIe Base 6.0 §7.5.3.6 Link Capabilities Register.
/// Link Capabilities.
pub const LNKCAP: u16 = 0x0c;
// PCIe Base 6.0 §7.5.3.7 Link Control Register.
/// Link Control.
pub const LNKCTL: u16 = 0x10;
// PCIe Base 6.0 §7.5.3.8 Link Status Register.
/// Link Status.
pub const LNKSTA: u16 = 0x12;
// PCIe Base 6.0 §7.5.3.12 Root Control Register.
/// Root Control.
pub const RTCTL: u16 = 0x1c;
// PCIe Base 6.0 §7.5.3.13 Root Capabilities Register.
/// Root Capabilities.
pub const RTCAP: u16 = 0x1e;
// PCIe Base 6.0 §7.5.3.14 Root Status Register.
/// Root Status.
pub const RTSTA: u16 = 0x20;
// PCIe Base 6.0 §7.5.3.15 Device Capabilities 2 Register.
/// Device Capabilities 2.
pub const DEVCAP2: u16 = 0x24;
// PCIe Base 6.0 §7.5.3.16 Device Control 2 Register.
/// Device Control 2.
pub const DEVCTL2: u16 = 0x28;
// PCIe Base 6.0 §7.5.3.18 Link Capabilities 2 Register.
/// Link Capabilities 2.
pub const LNKCAP2: u16 = 0x2c;
// PCIe Base 6.0 §7.5.3.19 Link Control 2 Register.
/// Link Control 2.
pub const LNKCTL2: u16 = 0x30;
/// Size of a version 2 capability (through Slot Status 2).
pub const VER2_SIZEOF: u8 = 0x3c;

// PCIe Base 6.0 §7.5.3.2 fields.
const FLAGS_VER2: u16 = 2;
const FLAGS_TYPE_SHIFT: u16 = 4;
/// Device/Port Type: Root Port of PCI Express Root Complex.
pub const TYPE_ROOT_PORT: u16 = 0x4;
/// Device/Port Type: PCI Express to PCI/PCI-X Bridge.
pub const TYPE_PCI_BRIDGE: u16 = 0x7;
/// Slot Implemented.
pub const FLAGS_SLOT: u16 = 1 << 8;
// PCIe Base 6.0 §7.5.3.3: Role-Based Error Reporting.
/// Device Capabilities Extended Tag Field Supported (PCIe Base 6.0 §7.5.3.3 bit 5).
pub const DEVCAP_EXT_TAG: u32 = 1 << 5;
const DEVCAP_RBER: u32 = 1 << 15;
// PCIe Base 6.0 §7.5.3.4: Correctable/Non-Fatal/Fatal/Unsupported Request Reporting Enable.
const DEVCTL_ERR_REPORTING: u16 = 0x000f;
// PCIe Base 6.0 §7.5.3.5: Correctable/Non-Fatal/Fatal/Unsupported Request Detected (RW1C).
const DEVSTA_ERR_DETECTED: u16 = 0x000f;
// PCIe Base 6.0 §7.5.3.6 fields: Max Link Speed 3:0, Max Link Width 9:4, ASPM Support 11:10,
// DLL Link Active Reporting Capable 20, Link Bandwidth Notification Capability 21, Port Number 31:24.
const LNKCAP_ASPM_L0S: u32 = 1 << 10;
const LNKCAP_DLLLARC: u32 = 1 << 20;
const LNKCAP_LBNC: u32 = 1 << 21;
const LNKCAP_PN_SHIFT: u32 = 24;
// PCIe Base 6.0 §7.5.3.12: System Error on Correctable/Non-Fatal/Fatal Error Enable.
const RTCTL_SERR_ENABLES: u16 = 0x0007;
/// PCIe Base 6.0 §7.5.3.12 Root Control: PME Interrupt Enable.
pub const RTCTL_PMEIE: u16 = 1 << 3;
/// PCIe Base 6.0 §7.5.3.14 Root Status: PME Status (RW1C).
pub const RTSTA_PME_STATUS: u32 = 1 << 16;
/// PCIe Base 6.0 §7.5.3.14 Root Status: PME Pending (RO).
pub const RTSTA_PME_PENDING: u32 = 1 << 17;
// PCIe Base 6.0 §7.5.3.15: ARI Forwarding Supported 5, Extended Fmt Field Supported 20,
// End-End TLP Prefix Supported 21.
const DEVCAP2_ARI: u32 = 1 << 5;
const DEVCAP2_EFF: u32 = 1 << 20;
const DEVCAP2_EETLPP: u32 = 1 << 21;
// PCIe Base 6.0 §7.5.3.16: ARI Forwarding Enable 5, End-End TLP Prefix Blocking 15.
const DEVCTL2_ARI: u16 = 1 << 5;
const DEVCTL2_EETLPPB: u16 = 1 << 15;

/// Link speed encodings (PCIe Base 6.0 §7.5.3.18 Supported Link Speeds Vector bit positions),
/// named in saved state as QEMU's `x-speed` values.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LinkSpeed {
    /// 2.5 GT/s.
    #[serde(rename = "2_5")]
    Gt2_5 = 1,
    /// 5.0 GT/s.
    #[serde(rename = "5")]
    Gt5 = 2,
    /// 8.0 GT/s.
    #[serde(rename = "8")]
    Gt8 = 3,
    /// 16.0 GT/s (QEMU's `pcie-root-port` default `x-speed`).
    #[serde(rename = "16")]
    Gt16 = 4,
}

impl LinkSpeed {
    /// QEMU's `x-speed` value (`PCIELinkSpeed`): `2_5`, `5`, `8`, `16`.
    pub fn from_qemu(s: &str) -> Option<Self> {
        match s {
            "2_5" => Some(LinkSpeed::Gt2_5),
            "5" => Some(LinkSpeed::Gt5),
            "8" => Some(LinkSpeed::Gt8),
            "16" => Some(LinkSpeed::Gt16),
            _ => None,
        }
    }
}

/// What a root port's link looks like: QEMU's `x-speed`, `x-width` and `port` properties.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct LinkConfig {
    /// Port Number in Link Capabilities.
    pub port: u8,
    /// Maximum link speed.
    pub speed: LinkSpeed,
    /// Maximum link width (lanes).
    pub width: u8,
}

impl LinkConfig {
    /// QEMU 7.2 `pcie-root-port` defaults: 16 GT/s, x32.
    pub fn qemu_root_port(port: u8) -> Self {
        LinkConfig {
            port,
            speed: LinkSpeed::Gt16,
            width: 32,
        }
    }
}

/// Downstream Port of a PCI Express Switch (PCIe Base 6.0 §7.5.3.2 Device/Port Type).
pub const TYPE_DOWNSTREAM: u16 = 0x6;
/// Upstream Port of a PCI Express Switch.
pub const TYPE_UPSTREAM: u16 = 0x5;
/// Device Capabilities Function Level Reset Capability (PCIe Base 6.0 §7.5.3.3).
pub const DEVCAP_FLR: u32 = 1 << 28;
/// Device Control Initiate Function Level Reset (PCIe Base 6.0 §7.5.3.4).
pub const DEVCTL_BCR_FLR: u16 = 1 << 15;

/// Add the capability at `offset` for a switch port as QEMU 7.2's `xio3130` ports build it
/// (`pcie_cap_init()` of type `kind`, [`TYPE_UPSTREAM`] or [`TYPE_DOWNSTREAM`],
/// `pcie_cap_flr_init()`, `pcie_cap_deverr_init()`, and for a downstream port
/// `pcie_cap_arifwd_init()`), except the slot ([`super::slot::init`]). `link` gives Link
/// Capabilities' speed and width: QEMU's upstream port has 2.5 GT/s x1, its downstream port the
/// zero speed and width of a `PCIESlot` whose `x-speed`/`x-width` it does not expose. Link Status
/// reads 2.5 GT/s x1 either way (`pcie_cap_v1_fill()`).
pub fn init_switch_port(
    cs: &mut ConfigSpace,
    offset: u8,
    kind: u16,
    port: u8,
    link: Option<(LinkSpeed, u8)>,
) -> Result<u16, CapabilityError> {
    let at = u16::from(cs.add_capability(CAP_ID_EXP, Some(offset), VER2_SIZEOF)?);
    cs.set_word(at + FLAGS, kind << FLAGS_TYPE_SHIFT | FLAGS_VER2);
    let (speed, width) = link.map_or((0, 0), |(s, w)| (s as u32, u32::from(w)));
    cs.set_dword(
        at + LNKCAP,
        u32::from(port) << LNKCAP_PN_SHIFT | LNKCAP_ASPM_L0S | width << 4 | speed,
    );
    cs.set_word(at + LNKSTA, 1 << 4 | LinkSpeed::Gt2_5 as u16);
    cs.set_dword(at + DEVCAP2, DEVCAP2_EFF | DEVCAP2_EETLPP);
    cs.set_wmask(at + DEVCTL2, 2, DEVCTL2_EETLPPB.into());
    // pcie_cap_flr_init()
    cs.set_bits(at + DEVCAP, 4, DEVCAP_FLR.into());
    cs.or_wmask(at + DEVCTL, 2, DEVCTL_BCR_FLR.into());
    // pcie_cap_deverr_init()
    cs.set_bits(at + DEVCAP, 4, DEVCAP_RBER.into());
    cs.or_wmask(at + DEVCTL, 2, DEVCTL_ERR_REPORTING.into());
    cs.or_w1cmask(at + DEVSTA, 2, DEVSTA_ERR_DETECTED.into());
    if kind == TYPE_DOWNSTREAM {
        // pcie_cap_arifwd_init()
        cs.set_bits(at + DEVCAP2, 4, DEVCAP2_ARI.into());
        cs.or_wmask(at + DEVCTL2, 2, DEVCTL2_ARI.into());
    }
    Ok(at)
}

/// Add the capability at `offset` for a root port, with everything QEMU's root port realize
/// sets except the slot registers ([`super::slot::init`]). Returns the offset.
pub fn init_root_port(
    cs: &mut ConfigSpace,
    offset: u8,
    link: LinkConfig,
) -> Result<u16, CapabilityError> {
    let at = u16::from(cs.add_capability(CAP_ID_EXP, Some(offset), VER2_SIZEOF)?);
    cs.set_word(at + FLAGS, TYPE_ROOT_PORT << FLAGS_TYPE_SHIFT | FLAGS_VER2);
    cs.set_dword(at + DEVCAP, DEVCAP_RBER);
    // pcie_cap_v1_fill() then pcie_cap_fill_slot_lnk() with the port's speed and width.
    let speed = link.speed as u32;
    let mut lnkcap = u32::from(link.port) << LNKCAP_PN_SHIFT
        | LNKCAP_ASPM_L0S
        | u32::from(link.width) << 4
        | speed;
    if link.width > 1 || link.speed > LinkSpeed::Gt2_5 {
        lnkcap |= LNKCAP_LBNC;
    }
    if link.speed > LinkSpeed::Gt2_5 {
        // DLLLA itself is set only when a device is plugged (QEMU 7.2 leaves it clear when empty).
        lnkcap |= LNKCAP_DLLLARC;
        cs.set_word(at + LNKCTL2, speed as u16);
    }
    cs.set_dword(at + LNKCAP, lnkcap);
    // What QEMU's pcie_sync_bridge_lnk() shows on every read of an empty slot's Link Status:
    // current speed and width equal to the maximum.
    cs.set_word(at + LNKSTA, (lnkcap & 0x3ff) as u16);
    if link.speed > LinkSpeed::Gt5 {
        // Supported Link Speeds Vector: every speed up to the maximum (bits 1..=speed).
        cs.set_dword(at + LNKCAP2, (1u32 << (speed + 1)) - 2);
    }
    cs.set_dword(at + DEVCAP2, DEVCAP2_EFF | DEVCAP2_EETLPP);
    cs.set_wmask(at + DEVCTL2, 2, DEVCTL2_EETLPPB.into());
    // pcie_cap_arifwd_init()
    cs.set_bits(at + DEVCAP2, 4, DEVCAP2_ARI.into());
    cs.or_wmask(at + DEVCTL2, 2, DEVCTL2_ARI.into());
    // pcie_cap_deverr_init()
    cs.set_bits(at + DEVCAP, 4, DEVCAP_RBER.into());
    cs.or_wmask(at + DEVCTL, 2, DEVCTL_ERR_REPORTING.into());
    cs.or_w1cmask(at + DEVSTA, 2, DEVSTA_ERR_DETECTED.into());
    // pcie_cap_root_init() makes only the System Error enables writable. pcierc also implements
    // PME (deviation, docs/qemu-compat.md): PCIe Base 6.0 §7.5.3.12 Root Control PME Interrupt
    // Enable (RW) and §7.5.3.14 Root Status PME Status (RW1C).
    cs.set_wmask(at + RTCTL, 2, (RTCTL_SERR_ENABLES | RTCTL_PMEIE).into());
    cs.set_w1cmask(at + RTSTA, 4, RTSTA_PME_STATUS.into());
    Ok(at)
}

/// Add the capability at `offset` for a PCI Express to PCI/PCI-X bridge, as QEMU 7.2's
/// `pcie_cap_init(d, 0, PCI_EXP_TYPE_PCI_BRIDGE, 0)` followed by `pcie_cap_arifwd_init()` and
/// `pcie_cap_deverr_init()` (`pcie-pci-bridge`): no slot, no root registers, a 2.5 GT/s x1
/// link (Link Capabilities with L0s, Link Status showing the same speed and width) and port 0.
pub fn init_pci_bridge(cs: &mut ConfigSpace, offset: u8) -> Result<u16, CapabilityError> {
    let at = u16::from(cs.add_capability(CAP_ID_EXP, Some(offset), VER2_SIZEOF)?);
    cs.set_word(at + FLAGS, TYPE_PCI_BRIDGE << FLAGS_TYPE_SHIFT | FLAGS_VER2);
    // pcie_cap_v1_fill(): Role-Based Error Reporting, x1 at 2.5 GT/s, ASPM L0s.
    cs.set_dword(at + DEVCAP, DEVCAP_RBER);
    let lnkcap = LNKCAP_ASPM_L0S | 1 << 4 | LinkSpeed::Gt2_5 as u32;
    cs.set_dword(at + LNKCAP, lnkcap);
    cs.set_word(at + LNKSTA, (lnkcap & 0x3ff) as u16);
    cs.set_dword(at + DEVCAP2, DEVCAP2_EFF | DEVCAP2_EETLPP | DEVCAP2_ARI);
    cs.set_wmask(at + DEVCTL2, 2, (DEVCTL2_EETLPPB | DEVCTL2_ARI).into());
    cs.or_wmask(at + DEVCTL, 2, DEVCTL_ERR_REPORTING.into());
    cs.or_w1cmask(at + DEVSTA, 2, DEVSTA_ERR_DETECTED.into());
    Ok(at)
}

/// The root port resets QEMU applies to this capability, except the slot's:
/// `pcie_cap_root_reset()`, `pcie_cap_deverr_reset()` and `pcie_cap_arifwd_reset()`.
/// End-End TLP Prefix Blocking keeps its value, as in QEMU.
pub fn reset_root_port(cs: &mut ConfigSpace, at: u16) {
    cs.set_word(at + RTCTL, 0);
    cs.set_dword(at + RTSTA, 0);
    cs.clear_bits(at + DEVCTL, 2, DEVCTL_ERR_REPORTING.into());
    cs.clear_bits(at + DEVCTL2, 2, DEVCTL2_ARI.into());
}

/// The MSI/MSI-X vector the function uses for PCI Express events (Interrupt Message Number,
/// PCIe Base 6.0 §7.5.3.2 bits 13:9).
pub fn interrupt_message_number(cs: &ConfigSpace, at: u16) -> u16 {
    cs.word(at + FLAGS) >> 9 & 0x1f
}
