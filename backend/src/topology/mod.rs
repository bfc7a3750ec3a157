//! The hierarchy: how it is described ([`spec`]), how accesses are routed ([`hierarchy`]), how it
//! is reported to frontends ([`report`]) and saved ([`state`]).

pub mod addr;
pub mod hierarchy;
pub mod report;
pub mod spec;
pub mod state;

pub use addr::DevFn;
pub use hierarchy::{Hierarchy, Routed, Slot};
pub use spec::{EndpointSpec, PortSpec, TopologySpec};
