//! Function models pcierc emulates.

pub mod machine;
pub mod mch;
pub mod root_port;

/// The port behaviour [`RootPort`] has (bus numbers, windows, slot, AER, PME): bring it into
/// scope with the model.
pub use crate::pci::port::PortFunction;
pub use machine::{MachineType, PortCompat};
pub use mch::Mch;
pub use root_port::{BridgeKind, RootPort, RootPortConfig, RootPortModel};
