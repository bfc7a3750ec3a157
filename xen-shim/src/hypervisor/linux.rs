//! [`LinuxXen`]: the real devices of a Linux dom0, `/dev/xen/privcmd` (dm_ops, resource
//! mapping) and `/dev/xen/evtchn` (event channels), through plain ioctls (FLOW.md §0-§2; the
//! numbers and layouts are in [`crate::abi`], checked against the C headers).

use core::ffi::{c_int, c_void};
use core::mem::{size_of, MaybeUninit};
use core::ptr::NonNull;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use super::sys::{Libc, Sys};
use super::{Hypervisor, IoreqPage, XenError};
use crate::abi::dm_op::{ioservid_t, xen_dm_op};
use crate::abi::evtchn::*;
use crate::abi::ioreq::shared_iopage_t;
use crate::abi::privcmd::*;
use crate::abi::{evtchn_port_t, XEN_PAGE_SIZE};
use crate::DomId;

/// The privcmd device.
pub const PRIVCMD_PATH: &str = "/dev/xen/privcmd";
/// The event-channel device.
pub const EVTCHN_PATH: &str = "/dev/xen/evtchn";

const HINT: &str = "pcierc-xen-shim runs in a Xen dom0 (or a driver domain): it needs the \
    xen-privcmd and xen-evtchn kernel drivers (`modprobe xen-privcmd xen-evtchn`), their \
    device nodes under /dev/xen, and root (or access to those nodes)";

/// The two devices, for one target domain.
#[derive(Debug)]
pub struct LinuxXen<S: Sys = Libc> {
    sys: Arc<S>,
    domid: DomId,
    privcmd: OwnedFd,
    evtchn: OwnedFd,
}

impl LinuxXen<Libc> {
    /// Open both devices for guest `domid`; the error names what is missing.
    pub fn open(domid: DomId) -> Result<Self, XenError> {
        Self::with_sys(Libc, domid)
    }
}

/// A value of a `#[repr(C)]` ioctl struct with every byte, padding included, zeroed (so no
/// uninitialised padding goes to the kernel).
fn zeroed<T: Copy>() -> T {
    // SAFETY: only used for the integer/pointer ioctl structs of `abi`, for which all-zero
    // bytes are a valid value (null pointers are never dereferenced before being set).
    unsafe { MaybeUninit::<T>::zeroed().assume_init() }
}

impl<S: Sys> LinuxXen<S> {
    /// As [`LinuxXen::open`], with the system calls of `sys`.
    pub fn with_sys(sys: S, domid: DomId) -> Result<Self, XenError> {
        let open = |path: &'static str, flags: c_int| {
            let c = std::ffi::CString::new(path).map_err(|_| XenError::Unusable(path.into()))?;
            sys.open(&c, flags).map_err(|source| XenError::Missing {
                path,
                source,
                hint: HINT,
            })
        };
        let privcmd = open(PRIVCMD_PATH, libc::O_RDWR | libc::O_CLOEXEC);
        let evtchn = open(
            EVTCHN_PATH,
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
        );
        let (privcmd, evtchn) = match (privcmd, evtchn) {
            (Ok(p), Ok(e)) => (p, e),
            (Err(XenError::Missing { source, .. }), Err(_)) => {
                return Err(XenError::Missing {
                    path: "/dev/xen/privcmd and /dev/xen/evtchn",
                    source,
                    hint: HINT,
                })
            }
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        Ok(LinuxXen {
            sys: Arc::new(sys),
            domid,
            privcmd,
            evtchn,
        })
    }

    /// `IOCTL_PRIVCMD_RESTRICT` and `IOCTL_EVTCHN_RESTRICT_DOMID`: from now on these handles
    /// reach only the target domain (hardening, FLOW.md §1.8).
    pub fn restrict(&self) -> Result<(), XenError> {
        let mut dom: crate::abi::domid_t = self.domid;
        self.ioctl(
            self.privcmd.as_raw_fd(),
            IOCTL_PRIVCMD_RESTRICT,
            &mut dom,
            "IOCTL_PRIVCMD_RESTRICT",
        )?;
        let mut r: ioctl_evtchn_restrict_domid = zeroed();
        r.domid = self.domid;
        self.ioctl(
            self.evtchn.as_raw_fd(),
            IOCTL_EVTCHN_RESTRICT_DOMID,
            &mut r,
            "IOCTL_EVTCHN_RESTRICT_DOMID",
        )
        .map(drop)
    }

    fn ioctl<T>(
        &self,
        fd: RawFd,
        req: core::ffi::c_ulong,
        arg: &mut T,
        what: &str,
    ) -> Result<c_int, XenError> {
        // SAFETY: every caller passes the argument type `req` takes (see the abi module and
        // the checks in tests/c_abi.rs), alive and exclusively borrowed for the call.
        unsafe { self.sys.ioctl(fd, req, (arg as *mut T).cast()) }.map_err(|source| {
            XenError::Call {
                what: what.to_string(),
                source,
            }
        })
    }

    fn evtchn_ioctl<T>(
        &self,
        req: core::ffi::c_ulong,
        arg: &mut T,
        what: &str,
    ) -> Result<c_int, XenError> {
        self.ioctl(self.evtchn.as_raw_fd(), req, arg, what)
    }
}

/// Name of a dm_op, for error messages.
#[allow(non_upper_case_globals)] // the C names
pub(crate) fn dm_op_name(op: u32) -> &'static str {
    use crate::abi::dm_op::*;
    match op {
        XEN_DMOP_create_ioreq_server => "create_ioreq_server",
        XEN_DMOP_get_ioreq_server_info => "get_ioreq_server_info",
        XEN_DMOP_map_io_range_to_ioreq_server => "map_io_range_to_ioreq_server",
        XEN_DMOP_unmap_io_range_from_ioreq_server => "unmap_io_range_from_ioreq_server",
        XEN_DMOP_set_ioreq_server_state => "set_ioreq_server_state",
        XEN_DMOP_destroy_ioreq_server => "destroy_ioreq_server",
        XEN_DMOP_set_pci_intx_level => "set_pci_intx_level",
        XEN_DMOP_inject_msi => "inject_msi",
        XEN_DMOP_nr_vcpus => "nr_vcpus",
        crate::abi::proposed::XEN_DMOP_x_pcierc_mmcfg => "x_pcierc_mmcfg (proposed extension)",
        _ => "unknown op",
    }
}

impl<S: Sys> Hypervisor for LinuxXen<S> {
    type Page = LinuxPage<S>;

    fn domid(&self) -> DomId {
        self.domid
    }

    fn dm_op(&self, op: &mut xen_dm_op) -> Result<(), XenError> {
        let name = dm_op_name(op.op);
        let mut buf: privcmd_dm_op_buf_t = zeroed();
        buf.uptr = (op as *mut xen_dm_op).cast();
        buf.size = size_of::<xen_dm_op>();
        let mut arg: privcmd_dm_op_t = zeroed();
        arg.dom = self.domid;
        arg.num = 1;
        arg.ubufs = &buf;
        self.ioctl(
            self.privcmd.as_raw_fd(),
            IOCTL_PRIVCMD_DM_OP,
            &mut arg,
            &format!("dm_op {name}"),
        )
        .map(drop)
    }

    fn map_ioreq_pages(
        &self,
        id: ioservid_t,
        first_frame: u32,
        frames: usize,
    ) -> Result<LinuxPage<S>, XenError> {
        let len = frames
            .checked_mul(XEN_PAGE_SIZE)
            .filter(|&l| l > 0)
            .ok_or_else(|| XenError::Unusable(format!("cannot map {frames} ioreq frames")))?;
        let fd = self.privcmd.as_raw_fd();
        let addr = self
            .sys
            .mmap_shared(fd, len)
            .map_err(|source| XenError::Call {
                what: format!("mmap of {len} bytes of {PRIVCMD_PATH}"),
                source,
            })?;
        let page = LinuxPage {
            sys: Arc::clone(&self.sys),
            addr,
            len,
        };
        let mut r: privcmd_mmap_resource_t = zeroed();
        r.dom = self.domid;
        r.type_ = XENMEM_resource_ioreq_server;
        r.id = id.into();
        r.idx = first_frame;
        r.num = frames as u64;
        r.addr = addr.as_ptr() as u64;
        self.ioctl(
            fd,
            IOCTL_PRIVCMD_MMAP_RESOURCE,
            &mut r,
            "IOCTL_PRIVCMD_MMAP_RESOURCE (ioreq server pages)",
        )?;
        Ok(page)
    }

    fn bind_interdomain(&self, remote_port: evtchn_port_t) -> Result<evtchn_port_t, XenError> {
        let mut b: ioctl_evtchn_bind_interdomain = zeroed();
        b.remote_domain = self.domid.into();
        b.remote_port = remote_port;
        let local = self.evtchn_ioctl(
            IOCTL_EVTCHN_BIND_INTERDOMAIN,
            &mut b,
            "IOCTL_EVTCHN_BIND_INTERDOMAIN",
        )?;
        evtchn_port_t::try_from(local)
            .map_err(|_| XenError::Unusable(format!("bind returned port {local}")))
    }

    fn unbind(&self, local_port: evtchn_port_t) -> Result<(), XenError> {
        let mut u = ioctl_evtchn_unbind { port: local_port };
        self.evtchn_ioctl(IOCTL_EVTCHN_UNBIND, &mut u, "IOCTL_EVTCHN_UNBIND")
            .map(drop)
    }

    fn notify(&self, local_port: evtchn_port_t) -> Result<(), XenError> {
        let mut n = ioctl_evtchn_notify { port: local_port };
        self.evtchn_ioctl(IOCTL_EVTCHN_NOTIFY, &mut n, "IOCTL_EVTCHN_NOTIFY")
            .map(drop)
    }

    fn pending(&self, ports: &mut Vec<evtchn_port_t>) -> Result<(), XenError> {
        let mut buf = [0u8; 4 * 64];
        loop {
            match self.sys.read(self.evtchn.as_raw_fd(), &mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    ports.extend(
                        buf[..n - n % 4]
                            .chunks_exact(4)
                            .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]])),
                    );
                    if n < buf.len() {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::EFBIG) => {
                    // The kernel's ring overflowed: reset it; the caller rescans every slot.
                    let mut none = 0u32;
                    self.evtchn_ioctl(IOCTL_EVTCHN_RESET, &mut none, "IOCTL_EVTCHN_RESET")?;
                    return Err(XenError::Call {
                        what: format!("read of {EVTCHN_PATH}"),
                        source: e,
                    });
                }
                Err(source) => {
                    return Err(XenError::Call {
                        what: format!("read of {EVTCHN_PATH}"),
                        source,
                    })
                }
            }
        }
    }

    fn unmask(&self, local_port: evtchn_port_t) -> Result<(), XenError> {
        let b = local_port.to_ne_bytes();
        match self.sys.write(self.evtchn.as_raw_fd(), &b) {
            Ok(4) => Ok(()),
            Ok(n) => Err(XenError::Unusable(format!(
                "short write ({n} bytes) unmasking port {local_port}"
            ))),
            Err(source) => Err(XenError::Call {
                what: format!("write (unmask) of {EVTCHN_PATH}"),
                source,
            }),
        }
    }

    fn event_fd(&self) -> RawFd {
        self.evtchn.as_raw_fd()
    }
}

/// Ioreq pages mapped through privcmd; unmapped on drop.
#[derive(Debug)]
pub struct LinuxPage<S: Sys> {
    sys: Arc<S>,
    addr: NonNull<c_void>,
    len: usize,
}

// SAFETY: the mapping is process-wide memory; the pointer is only a handle to it, and the
// ioreq service accesses it with the slot discipline of `ioreq_service::slot`.
unsafe impl<S: Sys> Send for LinuxPage<S> {}

impl<S: Sys> IoreqPage for LinuxPage<S> {
    fn as_ptr(&self) -> NonNull<shared_iopage_t> {
        self.addr.cast()
    }
    fn len(&self) -> usize {
        self.len
    }
}

impl<S: Sys> Drop for LinuxPage<S> {
    fn drop(&mut self) {
        // SAFETY: our own mapping from `mmap_shared`, dropped once; the server that used its
        // slots is gone (it owns this page).
        unsafe { self.sys.munmap(self.addr, self.len) };
    }
}
