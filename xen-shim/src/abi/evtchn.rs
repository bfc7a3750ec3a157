//! `/dev/xen/evtchn`: `tools/include/xen-sys/Linux/evtchn.h` (installed as
//! `/usr/include/xen/sys/evtchn.h`).
//!
//! Besides the ioctls below, the device is used with `read(2)` (it returns whole
//! [`evtchn_port_t`]s, native endian, of the ports that fired) and `write(2)` of the same
//! array, which **unmasks** those ports: a delivered port stays masked until written back
//! (Linux `drivers/xen/evtchn.c`). There is no unmask ioctl.

use super::{domid_t, evtchn_port_t, ioc_none};
use core::ffi::c_ulong;
use core::mem::size_of;

/// `struct ioctl_evtchn_bind_interdomain`. The ioctl's return value is the new local port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ioctl_evtchn_bind_interdomain {
    /// The guest's domain id (`unsigned int` in C).
    pub remote_domain: u32,
    /// The guest-side port: `vp_eport` of the vCPU's ioreq slot, or `bufioreq_port`.
    pub remote_port: evtchn_port_t,
}

/// `struct ioctl_evtchn_unbind`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ioctl_evtchn_unbind {
    /// Local port to unbind.
    pub port: evtchn_port_t,
}

/// `struct ioctl_evtchn_notify`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ioctl_evtchn_notify {
    /// Local port to signal (the vCPU's bound port after completing its request).
    pub port: evtchn_port_t,
}

/// `struct ioctl_evtchn_restrict_domid`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ioctl_evtchn_restrict_domid {
    /// The only domain this fd may bind to afterwards.
    pub domid: domid_t,
}

/// `IOCTL_EVTCHN_BIND_INTERDOMAIN` = `_IOC(_IOC_NONE, 'E', 1, 8)`.
pub const IOCTL_EVTCHN_BIND_INTERDOMAIN: c_ulong =
    ioc_none(b'E', 1, size_of::<ioctl_evtchn_bind_interdomain>());
/// `IOCTL_EVTCHN_UNBIND` = `_IOC(_IOC_NONE, 'E', 3, 4)`.
pub const IOCTL_EVTCHN_UNBIND: c_ulong = ioc_none(b'E', 3, size_of::<ioctl_evtchn_unbind>());
/// `IOCTL_EVTCHN_NOTIFY` = `_IOC(_IOC_NONE, 'E', 4, 4)`.
pub const IOCTL_EVTCHN_NOTIFY: c_ulong = ioc_none(b'E', 4, size_of::<ioctl_evtchn_notify>());
/// `IOCTL_EVTCHN_RESET` = `_IOC(_IOC_NONE, 'E', 5, 0)`: clears the pending-port buffer after
/// a read overflowed (-EFBIG).
pub const IOCTL_EVTCHN_RESET: c_ulong = ioc_none(b'E', 5, 0);
/// `IOCTL_EVTCHN_RESTRICT_DOMID` = `_IOC(_IOC_NONE, 'E', 6, 2)`.
pub const IOCTL_EVTCHN_RESTRICT_DOMID: c_ulong =
    ioc_none(b'E', 6, size_of::<ioctl_evtchn_restrict_domid>());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_flow_md() {
        assert_eq!(IOCTL_EVTCHN_BIND_INTERDOMAIN, 0x0008_4501);
        assert_eq!(IOCTL_EVTCHN_UNBIND, 0x0004_4503);
        assert_eq!(IOCTL_EVTCHN_NOTIFY, 0x0004_4504);
        assert_eq!(IOCTL_EVTCHN_RESET, 0x0000_4505);
        assert_eq!(IOCTL_EVTCHN_RESTRICT_DOMID, 0x0002_4506);
    }
}
