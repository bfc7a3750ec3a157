//! Function models pcierc emulates.

pub mod host_bridge;
pub mod machine;
pub mod mch;
pub mod pcie_pci_bridge;
pub mod pxb_pcie;
pub mod root_port;

/// The port behaviour [`RootPort`] has (bus numbers, windows, slot, AER, PME): bring it into
/// scope with the model.
pub use crate::pci::port::PortFunction;
pub use host_bridge::{HostBridge, SegmentHostBridge};
pub use machine::{MachineType, PortCompat};
pub use mch::Mch;
pub use pcie_pci_bridge::{PciePciBridge, PciePciBridgeConfig};
pub use pxb_pcie::{PxbPcie, PxbPcieConfig};
pub use root_port::{BridgeKind, RootPort, RootPortConfig, RootPortModel};
