//! What the shim asks of Xen, as a trait, so the same setup and service loop run against the
//! real devices ([`linux::LinuxXen`]: `/dev/xen/privcmd` and `/dev/xen/evtchn`) and against the
//! simulated hypervisor of the tests ([`crate::sim`]).
//!
//! The trait is the Linux device interface, not libxendevicemodel's: one call per ioctl, the
//! dm_op buffer passed through as bytes (so a simulator decodes exactly what Xen would), the
//! event-channel device's read/unmask/notify. FLOW.md §0-§2 describes each call.

pub mod linux;
pub mod sys;

use core::ptr::NonNull;
use std::io;
use std::os::fd::RawFd;

use thiserror::Error;

use crate::abi::dm_op::{ioservid_t, xen_dm_op};
use crate::abi::evtchn_port_t;
use crate::abi::ioreq::shared_iopage_t;
use crate::DomId;

/// A failed call into the hypervisor or its devices.
#[derive(Debug, Error)]
pub enum XenError {
    /// A device node the shim needs cannot be opened.
    #[error("{path}: {source}. {hint}")]
    Missing {
        /// The device path.
        path: &'static str,
        /// Why `open(2)` failed.
        #[source]
        source: io::Error,
        /// What to check on the host.
        hint: &'static str,
    },
    /// An ioctl, mmap, read or write on a device failed (for a dm_op, errno is `-xen_rc`).
    #[error("{what}: {source}")]
    Call {
        /// The call, e.g. `dm_op map_io_range_to_ioreq_server`.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The hypervisor answered something the shim cannot work with.
    #[error("{0}")]
    Unusable(String),
}

impl XenError {
    /// The errno of a failed call, if it was one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            XenError::Call { source, .. } | XenError::Missing { source, .. } => {
                source.raw_os_error()
            }
            XenError::Unusable(_) => None,
        }
    }

    /// A failed call with errno `errno`.
    pub fn call(what: impl Into<String>, errno: i32) -> Self {
        XenError::Call {
            what: what.into(),
            source: io::Error::from_raw_os_error(errno),
        }
    }
}

/// The synchronous ioreq page(s) of one server, mapped into this process.
pub trait IoreqPage {
    /// The first byte of the mapping (`shared_iopage_t`; vCPU `v`'s slot is at byte `32 * v`).
    fn as_ptr(&self) -> NonNull<shared_iopage_t>;
    /// Length of the mapping in bytes.
    fn len(&self) -> usize;
    /// Whether the mapping is empty (never, for a successful mapping).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The calls an ioreq server makes, for one target domain (fixed when the handle is opened).
pub trait Hypervisor {
    /// A mapping of ioreq pages; unmapped when dropped.
    type Page: IoreqPage;

    /// The target (guest) domain.
    fn domid(&self) -> DomId;

    /// `IOCTL_PRIVCMD_DM_OP` with `op` as the only buffer; Xen's OUT fields are copied back
    /// into `op`. An error carries `-xen_rc` as errno.
    fn dm_op(&self, op: &mut xen_dm_op) -> Result<(), XenError>;

    /// `mmap(privcmd)` of `frames` pages, then `IOCTL_PRIVCMD_MMAP_RESOURCE` of ioreq server
    /// `id`'s frames from `first_frame` (`XENMEM_resource_ioreq_server_frame_*`) into it.
    fn map_ioreq_pages(
        &self,
        id: ioservid_t,
        first_frame: u32,
        frames: usize,
    ) -> Result<Self::Page, XenError>;

    /// `IOCTL_EVTCHN_BIND_INTERDOMAIN` to the guest's `remote_port`: the new local port.
    fn bind_interdomain(&self, remote_port: evtchn_port_t) -> Result<evtchn_port_t, XenError>;

    /// `IOCTL_EVTCHN_UNBIND`.
    fn unbind(&self, local_port: evtchn_port_t) -> Result<(), XenError>;

    /// `IOCTL_EVTCHN_NOTIFY`: signal the guest side of `local_port`.
    fn notify(&self, local_port: evtchn_port_t) -> Result<(), XenError>;

    /// Non-blocking `read(2)` of the event-channel device: the ports that fired are appended
    /// to `ports`. Each stays masked until [`Hypervisor::unmask`]ed.
    fn pending(&self, ports: &mut Vec<evtchn_port_t>) -> Result<(), XenError>;

    /// `write(2)` of `local_port` to the event-channel device: unmask it.
    fn unmask(&self, local_port: evtchn_port_t) -> Result<(), XenError>;

    /// A descriptor that polls readable while [`Hypervisor::pending`] has ports to return.
    fn event_fd(&self) -> RawFd;
}
