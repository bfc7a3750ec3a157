//! Capability builders and their write hooks for pcierc's ports, one module per capability.
//! Each declares its registers as offsets relative to the capability, with the spec section that
//! defines them, and the masks and reset values QEMU 7.2 gives them. MSI-X and the capability IDs
//! are the engine's (`pcierc_config_space::caps`), re-exported here.

pub mod acs;
pub mod aer;
pub mod express;
pub mod resource_reserve;
pub mod shpc;
pub mod slot;
pub mod ssvid;

pub use pcierc_config_space::caps::{
    msi, msix, CAP_ID_EXP, CAP_ID_MSI, CAP_ID_MSIX, CAP_ID_PM, CAP_ID_SSVID, CAP_ID_VENDOR,
    EXT_CAP_ID_ACS, EXT_CAP_ID_AER,
};
