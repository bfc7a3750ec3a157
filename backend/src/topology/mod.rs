//! The hierarchy: how it is described ([`spec`]), how accesses are routed ([`hierarchy`]), how it
//! is reported to frontends ([`report`]) and saved ([`state`]); the `pcie-root-port` properties
//! ([`root_port`]), the `pcie-pci-bridge` ones ([`pcie_pci_bridge`]) and the `pxb-pcie` ones
//! ([`pxb_pcie`]), with the ones all three share ([`pci_device`]); what goes wrong
//! ([`error`]); extra PCI segments ([`segment`]) and the hierarchies of all of them
//! ([`segments`]).

pub mod addr;
pub mod error;
pub mod hierarchy;
pub mod pci_device;
pub mod pcie_pci_bridge;
pub mod pxb_pcie;
pub mod report;
pub mod root_port;
pub mod segment;
pub mod segments;
pub mod spec;
pub mod state;

pub use addr::DevFn;
pub use error::{StateError, TopologyError};
pub use hierarchy::{FunctionChange, Hierarchy, Routed, SavedModels, Slot};
pub use segments::Segments;
pub use spec::{EndpointSpec, ExpanderSpec, PortSpec, SegmentSpec, TopologySpec};
