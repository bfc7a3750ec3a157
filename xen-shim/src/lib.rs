//! pcierc's Xen ioreq-server shim (`pcierc-xen-shim`).
//!
//! - [`abi`]: the Xen 4.17 ioreq-server ABI (ioreq pages, dm_ops, privcmd and evtchn ioctls) as
//!   `#[repr(C)]` items, checked against the C headers by `tests/c_abi.rs`.
//! - [`hypervisor`]: what the shim asks of Xen as a trait, with the real `/dev/xen` devices
//!   behind it ([`hypervisor::linux::LinuxXen`]).
//! - [`server`]: one ioreq server's lifetime in Xen's order (create, map, info, enable, bind;
//!   service; teardown), for any handler.
//! - [`ioreq_service`]: the pure part of the service loop: take a READY ioreq slot, classify it,
//!   hand it to an [`ioreq_service::IoHandler`], write the answer back.
//! - [`pci_config`], [`ecam`]: PCI_CONFIG requests and ECAM addresses as pcierc config accesses.
//! - [`privileges`]: `--chroot` and `--runas`, root given up once the server is set up.
//! - [`routing`]: pcierc's layout as the ranges each ioreq server must have mapped.
//! - [`shim`]: the shim itself: pcierc's frontend, the translation, re-mapping on layout
//!   changes, interrupts as dm_ops, and the event loop.
//! - [`sim`]: a simulated Xen 4.17 (ioreq pages, event channels as eventfds, server selection)
//!   and a scripted guest, for tests.
//!
//! Xen structures never leak past this crate: the protocol only speaks of PCIe (segment, bus,
//! devfn, offset, width). `docs/xen.md` describes the message sequence and routing rules.
#![deny(missing_docs)]

pub mod abi;
pub mod cli;
pub mod ecam;
pub mod hypervisor;
pub mod ioreq_service;
pub mod pci_config;
pub mod privileges;
pub mod routing;
pub mod server;
pub mod shim;
pub mod sim;

/// A Xen domain id, as the hypervisor ABI defines it.
pub type DomId = xen_sys::domid_t;
