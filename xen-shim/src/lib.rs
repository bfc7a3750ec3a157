//! pcierc's Xen ioreq-server shim (`pcierc-xen-shim`).
//!
//! - [`abi`]: the Xen 4.17 ioreq-server ABI (ioreq pages, dm_ops, privcmd and evtchn ioctls) as
//!   `#[repr(C)]` items, checked against the C headers by `tests/c_abi.rs`.
//! - [`ioreq_service`]: the pure part of the service loop: take a READY ioreq slot, classify it,
//!   hand it to an [`ioreq_service::IoHandler`], write the answer back.
//! - [`pci_config`]: `IOREQ_TYPE_PCI_CONFIG` requests as pcierc protocol accesses.
//!
//! The device I/O (opening /dev/xen/privcmd and /dev/xen/evtchn, the setup sequence, the event
//! loop) follows. Xen structures never leak past this crate: the protocol only speaks of PCIe
//! (segment, bus, devfn, offset, width).
#![deny(missing_docs)]

pub mod abi;
pub mod ioreq_service;
pub mod pci_config;

/// A Xen domain id, as the hypervisor ABI defines it.
pub type DomId = xen_sys::domid_t;
