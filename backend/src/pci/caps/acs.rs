//! Access Control Services extended capability (PCIe Base 6.0 §7.7.11), QEMU's
//! `pcie_acs_init()` / `pcie_acs_reset()` for a downstream port.

use crate::pci::config_space::{CapabilityError, ConfigSpace};

use super::EXT_CAP_ID_ACS;

// PCIe Base 6.0 §7.7.11.2 ACS Capability Register.
/// ACS Capability.
pub const CAP: u16 = 0x04;
// PCIe Base 6.0 §7.7.11.3 ACS Control Register.
/// ACS Control.
pub const CTRL: u16 = 0x06;
/// Size of the capability (no Egress Control Vector).
pub const SIZEOF: u16 = 8;
/// Capability version QEMU reports.
pub const VERSION: u8 = 1;

// PCIe Base 6.0 §7.7.11.2 bits: Source Validation, Translation Blocking, P2P Request Redirect,
// P2P Completion Redirect, Upstream Forwarding, Direct Translated P2P.
const SV: u16 = 1 << 0;
const TB: u16 = 1 << 1;
const RR: u16 = 1 << 2;
const CR: u16 = 1 << 3;
const UF: u16 = 1 << 4;
const DT: u16 = 1 << 6;

/// What a downstream port implements and lets software enable.
pub const DOWNSTREAM_PORT_BITS: u16 = SV | TB | RR | CR | UF | DT;

/// Add ACS at `offset` for a downstream port: the control bits matching the capability bits
/// are writable.
pub fn init(cs: &mut ConfigSpace, offset: u16) -> Result<u16, CapabilityError> {
    let at = cs.add_ext_capability(EXT_CAP_ID_ACS, VERSION, offset, SIZEOF)?;
    cs.set_word(at + CAP, DOWNSTREAM_PORT_BITS);
    cs.set_wmask(at + CTRL, 2, DOWNSTREAM_PORT_BITS.into());
    Ok(at)
}

/// Reset: ACS Control cleared.
pub fn reset(cs: &mut ConfigSpace, offset: u16) {
    cs.set_word(offset + CTRL, 0);
}
