//! pcierc: a PCIe root complex that runs as its own process.
//!
//! Layout: [`pci`] is the configuration-space engine, [`devices`] the function models (Q35 MCH,
//! PCIe root port), [`topology`] the hierarchy and how it is described, [`service`] the socket
//! side, [`control`] the QMP-compatible control socket, [`cli`] the `pcierc` command line,
//! [`sandbox`] the seccomp filter it runs under once set up.
#![deny(missing_docs)]

pub mod devices;
pub mod error;
pub mod pci;
pub mod sandbox;

pub use error::{Error, Result};
pub mod cli;
pub mod control;
pub mod service;
pub mod topology;
