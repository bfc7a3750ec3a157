//! `/dev/xen/privcmd`: `tools/include/xen-sys/Linux/privcmd.h` (installed as
//! `/usr/include/xen/sys/privcmd.h`; not linux-libc-dev's `xen/privcmd.h`, which cannot be
//! included from userspace), plus the `XENMEM_resource_*` ids of
//! `xen/include/public/memory.h` that `IOCTL_PRIVCMD_MMAP_RESOURCE` takes.
//!
//! Every dm_op goes through `IOCTL_PRIVCMD_DM_OP` with one [`privcmd_dm_op_buf_t`] pointing at a
//! [`xen_dm_op`]; the ioreq page is mapped by `mmap(privcmd_fd)` followed by
//! `IOCTL_PRIVCMD_MMAP_RESOURCE` on that address (FLOW.md §1.3).

use super::dm_op::{ioservid_t, xen_dm_op};
use super::{domid_t, ioc_none, xen_pfn_t};
use core::ffi::{c_int, c_ulong, c_void};
use core::mem::size_of;

/// `XENMEM_resource_ioreq_server` (`memory.h`): resource type of an ioreq server's pages.
pub const XENMEM_resource_ioreq_server: u32 = 0;
/// `XENMEM_resource_ioreq_server_frame_bufioreq` (`memory.h`): frame 0 is the buffered page.
pub const XENMEM_resource_ioreq_server_frame_bufioreq: u32 = 0;

/// `XENMEM_resource_ioreq_server_frame_ioreq(n)` (`memory.h`): frame `1 + n` is the `n`th
/// synchronous ioreq page (Xen 4.17 serves only `n == 0`).
pub const fn XENMEM_resource_ioreq_server_frame_ioreq(n: u32) -> u32 {
    1 + n
}

/// `privcmd_dm_op_buf_t`: one user buffer of a dm_op.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct privcmd_dm_op_buf_t {
    /// `void *uptr`.
    pub uptr: *mut c_void,
    /// `size_t size`.
    pub size: usize,
}

impl privcmd_dm_op_buf_t {
    /// The buffer `{&op, 32}` libxendevicemodel passes as `buf[0]` of every op. The pointer is
    /// only valid while `op` is neither moved nor dropped.
    pub fn for_op(op: &mut xen_dm_op) -> Self {
        Self {
            uptr: (op as *mut xen_dm_op).cast(),
            size: size_of::<xen_dm_op>(),
        }
    }
}

/// `privcmd_dm_op_t`: the argument of `IOCTL_PRIVCMD_DM_OP`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct privcmd_dm_op_t {
    /// Target domain.
    pub dom: domid_t,
    /// Number of buffers (Linux allows at most 16, each at most 4096 bytes).
    pub num: u16,
    /// `const privcmd_dm_op_buf_t *ubufs`.
    pub ubufs: *const privcmd_dm_op_buf_t,
}

impl privcmd_dm_op_t {
    /// The ioctl argument for `bufs`; `None` if there are more than `u16::MAX` of them. The
    /// pointer is only valid while `bufs` is.
    pub fn new(dom: domid_t, bufs: &[privcmd_dm_op_buf_t]) -> Option<Self> {
        Some(Self {
            dom,
            num: u16::try_from(bufs.len()).ok()?,
            ubufs: bufs.as_ptr(),
        })
    }
}

/// `privcmd_mmap_resource_t`: the argument of `IOCTL_PRIVCMD_MMAP_RESOURCE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct privcmd_mmap_resource_t {
    /// Target domain.
    pub dom: domid_t,
    /// `type`: `XENMEM_resource_*`.
    pub type_: u32,
    /// Resource id: for an ioreq server, its [`ioservid_t`].
    pub id: u32,
    /// First frame (`XENMEM_resource_ioreq_server_frame_*`).
    pub idx: u32,
    /// Number of frames; 0 together with `addr == 0` queries the size (returned in `num`).
    pub num: u64,
    /// Start of a privcmd mapping of `num` pages, or 0 for the size query.
    pub addr: u64,
}

impl privcmd_mmap_resource_t {
    /// Maps `num` frames of ioreq server `id`'s pages from frame `idx` at `addr` (which must
    /// lie in a `mmap(privcmd_fd)` region); `num = addr = 0` is the size query.
    pub fn ioreq_server(dom: domid_t, id: ioservid_t, idx: u32, num: u64, addr: u64) -> Self {
        Self {
            dom,
            type_: XENMEM_resource_ioreq_server,
            id: id.into(),
            idx,
            num,
            addr,
        }
    }
}

/// `privcmd_mmapbatch_v2_t`: the argument of `IOCTL_PRIVCMD_MMAPBATCH_V2` (map guest frames,
/// needed only to serve `data_is_ptr` requests).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct privcmd_mmapbatch_v2_t {
    /// Number of frames.
    pub num: u32,
    /// Target domain.
    pub dom: domid_t,
    /// Start of a privcmd mapping of `num` pages.
    pub addr: u64,
    /// `const xen_pfn_t *arr`: the guest frames.
    pub arr: *const xen_pfn_t,
    /// `int *err`: per-frame error codes (out).
    pub err: *mut c_int,
}

/// `IOCTL_PRIVCMD_MMAPBATCH_V2` = `_IOC(_IOC_NONE, 'P', 4, 32)`.
pub const IOCTL_PRIVCMD_MMAPBATCH_V2: c_ulong =
    ioc_none(b'P', 4, size_of::<privcmd_mmapbatch_v2_t>());
/// `IOCTL_PRIVCMD_DM_OP` = `_IOC(_IOC_NONE, 'P', 5, 16)`.
pub const IOCTL_PRIVCMD_DM_OP: c_ulong = ioc_none(b'P', 5, size_of::<privcmd_dm_op_t>());
/// `IOCTL_PRIVCMD_RESTRICT` = `_IOC(_IOC_NONE, 'P', 6, sizeof(domid_t))`; the argument is a
/// `&domid_t`.
pub const IOCTL_PRIVCMD_RESTRICT: c_ulong = ioc_none(b'P', 6, size_of::<domid_t>());
/// `IOCTL_PRIVCMD_MMAP_RESOURCE` = `_IOC(_IOC_NONE, 'P', 7, 32)`.
pub const IOCTL_PRIVCMD_MMAP_RESOURCE: c_ulong =
    ioc_none(b'P', 7, size_of::<privcmd_mmap_resource_t>());
/// `IOCTL_PRIVCMD_UNIMPLEMENTED` = `_IOC(_IOC_NONE, 'P', 0xff, 0)`: libxenforeignmemory's
/// probe for the errno meaning "not implemented".
pub const IOCTL_PRIVCMD_UNIMPLEMENTED: c_ulong = ioc_none(b'P', 0xff, 0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_flow_md() {
        assert_eq!(IOCTL_PRIVCMD_DM_OP, 0x0010_5005);
        assert_eq!(IOCTL_PRIVCMD_MMAP_RESOURCE, 0x0020_5007);
        assert_eq!(IOCTL_PRIVCMD_MMAPBATCH_V2, 0x0020_5004);
        assert_eq!(IOCTL_PRIVCMD_RESTRICT, 0x0002_5006);
        assert_eq!(IOCTL_PRIVCMD_UNIMPLEMENTED, 0x0000_50ff);
    }

    #[test]
    fn dm_op_arg_points_at_the_buffers() {
        let mut op = xen_dm_op::nr_vcpus();
        let bufs = [privcmd_dm_op_buf_t::for_op(&mut op)];
        let arg = privcmd_dm_op_t::new(5, &bufs).expect("one buffer");
        assert_eq!((arg.dom, arg.num, arg.ubufs), (5, 1, bufs.as_ptr()));
        assert_eq!(bufs[0].size, 32);
        assert_eq!(XENMEM_resource_ioreq_server_frame_ioreq(0), 1);
    }
}
