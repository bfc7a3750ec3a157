//! Subsystem ID and Subsystem Vendor ID capability of a bridge (PCI-to-PCI Bridge 1.2 §3.2.5.13
//! and PCI Code and ID Assignment 1.11 §2, ID 0x0d), QEMU's `pci_bridge_ssvid_init()`.

use crate::pci::config_space::{CapabilityError, ConfigSpace};

use super::CAP_ID_SSVID;

// PCI Code and ID Assignment 1.11 §2 (capability 0x0d): Subsystem Vendor ID at +4, Subsystem ID at +6.
/// Subsystem Vendor ID.
pub const VENDOR_ID: u16 = 0x04;
/// Subsystem ID.
pub const DEVICE_ID: u16 = 0x06;
/// Size of the capability.
pub const SIZEOF: u8 = 8;

/// Add the capability at `offset` with the given IDs, all read-only.
pub fn init(cs: &mut ConfigSpace, offset: u8, svid: u16, ssid: u16) -> Result<u8, CapabilityError> {
    let at = cs.add_capability(CAP_ID_SSVID, Some(offset), SIZEOF)?;
    cs.set_word(u16::from(at) + VENDOR_ID, svid);
    cs.set_word(u16::from(at) + DEVICE_ID, ssid);
    Ok(at)
}
