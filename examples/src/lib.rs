//! Small frontends of pcierc.
//!
//! - [`firmware`]: a firmware-style PCI enumerator that drives the hierarchy only through the raw
//!   guest accesses a VMM forwards (CF8/CFC port I/O and ECAM MMIO), so it exercises pcierc
//!   exactly as a guest's firmware does; [`socket_bus`] runs it over the socket.
//! - [`vmm`] (x86-64): a KVM VMM from rust-vmm crates whose guest's PCIe hierarchy is pcierc's
//!   (`--bin vmm`, docs/vmm.md), and [`guest`]: the freestanding test guests it runs.
#![deny(missing_docs)]

pub mod firmware;
pub mod guest;
pub mod socket_bus;
#[cfg(target_arch = "x86_64")]
pub mod vmm;
