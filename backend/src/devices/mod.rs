//! Function models pcierc emulates.

pub mod mch;
pub mod root_port;

pub use mch::Mch;
pub use root_port::{RootPort, RootPortConfig};
