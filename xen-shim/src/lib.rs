//! pcierc's Xen ioreq-server shim (`pcierc-xen-shim`).
//!
//! This first slice holds the translation of Xen's `IOREQ_TYPE_PCI_CONFIG` requests into pcierc
//! protocol accesses; the ioreq-server ABI, setup sequence and service loop follow (see the
//! repository's issue tracker and `docs/protocol.md`). Xen structures never leak past this crate:
//! the protocol only speaks of PCIe (segment, bus, devfn, offset, width).
#![deny(missing_docs)]

pub mod pci_config;

/// A Xen domain id, as the hypervisor ABI defines it.
pub type DomId = xen_sys::domid_t;
