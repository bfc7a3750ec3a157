//! The hierarchy: how it is described ([`spec`]), how accesses are routed ([`hierarchy`]), how it
//! is reported to frontends ([`report`]) and saved ([`state`]); the `pcie-root-port` properties
//! ([`root_port`]); what goes wrong ([`error`]).

pub mod addr;
pub mod error;
pub mod hierarchy;
pub mod report;
pub mod root_port;
pub mod spec;
pub mod state;

pub use addr::DevFn;
pub use error::{StateError, TopologyError};
pub use hierarchy::{FunctionChange, Hierarchy, Routed, SavedModels, Slot};
pub use spec::{EndpointSpec, PortSpec, TopologySpec};
