//! Capability builders and their write hooks, one module per capability. Each declares its
//! registers as offsets relative to the capability, with the spec section that defines them,
//! and the masks and reset values QEMU 7.2 gives them.

pub mod acs;
pub mod aer;
pub mod express;
pub mod msix;
pub mod resource_reserve;
pub mod slot;
pub mod ssvid;

// PCI Code and ID Assignment 1.11 §2 Capability IDs.
/// Vendor Specific capability.
pub const CAP_ID_VENDOR: u8 = 0x09;
/// Subsystem ID and Subsystem Vendor ID capability of a bridge.
pub const CAP_ID_SSVID: u8 = 0x0d;
/// PCI Express capability.
pub const CAP_ID_EXP: u8 = 0x10;
/// MSI-X capability.
pub const CAP_ID_MSIX: u8 = 0x11;

// PCI Code and ID Assignment 1.11 §3 Extended Capability IDs.
/// Advanced Error Reporting.
pub const EXT_CAP_ID_AER: u16 = 0x0001;
/// Access Control Services.
pub const EXT_CAP_ID_ACS: u16 = 0x000d;
