//! Capabilities any function may have. A capability is added with
//! [`ConfigSpace::add_capability`](crate::ConfigSpace::add_capability) or
//! [`ConfigSpace::add_ext_capability`](crate::ConfigSpace::add_ext_capability), which link it into
//! its chain; its registers are then declared like any others. MSI-X, whose table and PBA live
//! outside configuration space, has its own model in [`msix`]; MSI's delivery rules are in
//! [`msi`].

pub mod msi;
pub mod msix;

// PCI Code and ID Assignment 1.11 §2 Capability IDs.
/// PCI Power Management capability (PCI Bus Power Management Interface 1.2 §3.2).
pub const CAP_ID_PM: u8 = 0x01;
/// MSI capability (PCIe Base 6.0 §7.7.1).
pub const CAP_ID_MSI: u8 = 0x05;
/// Vendor Specific capability.
pub const CAP_ID_VENDOR: u8 = 0x09;
/// Subsystem ID and Subsystem Vendor ID capability of a bridge.
pub const CAP_ID_SSVID: u8 = 0x0d;
/// PCI Express capability (PCIe Base 6.0 §7.5.3).
pub const CAP_ID_EXP: u8 = 0x10;
/// MSI-X capability (PCIe Base 6.0 §7.7.2).
pub const CAP_ID_MSIX: u8 = 0x11;

// PCI Code and ID Assignment 1.11 §3 Extended Capability IDs.
/// Advanced Error Reporting (PCIe Base 6.0 §7.8.4).
pub const EXT_CAP_ID_AER: u16 = 0x0001;
/// Device Serial Number (PCIe Base 6.0 §7.9.3).
pub const EXT_CAP_ID_DSN: u16 = 0x0003;
/// Access Control Services.
pub const EXT_CAP_ID_ACS: u16 = 0x000d;
