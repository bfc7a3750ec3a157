//! Small frontends of pcierc. [`firmware`] is a firmware-style PCI enumerator that drives the
//! hierarchy only through the raw guest accesses a VMM forwards (CF8/CFC port I/O and ECAM MMIO),
//! so it exercises pcierc exactly as a guest's firmware does.
#![deny(missing_docs)]

pub mod firmware;
pub mod socket_bus;
