//! The Xen 4.17 ABI the shim speaks, as `#[repr(C)]` Rust items.
//!
//! One module per C header, so a reader can open the header next to the module:
//!
//! | module | header (Xen source path; installed by Debian's `libxen-dev` under `/usr/include`) |
//! |---|---|
//! | [`ioreq`] | `xen/include/public/hvm/ioreq.h` (`xen/hvm/ioreq.h`) |
//! | [`dm_op`] | `xen/include/public/hvm/dm_op.h` (`xen/hvm/dm_op.h`) |
//! | [`hvm`] | `xen/include/public/hvm/hvm_op.h`, `hvm_info_table.h` |
//! | [`privcmd`] | `tools/include/xen-sys/Linux/privcmd.h` (`xen/sys/privcmd.h`), `xen/include/public/memory.h` |
//! | [`evtchn`] | `tools/include/xen-sys/Linux/evtchn.h` (`xen/sys/evtchn.h`) |
//! | this module | `xen/include/public/xen.h` |
//! | [`proposed`] | none: the one dm_op pcierc proposes for Xen (MMCONFIG decode), not in 4.17 |
//!
//! Names are the C names: the `_t` typedef where the header defines one, the struct tag
//! otherwise; a field called `type` in C is `type_` here. C bitfields are one integer field with
//! accessor methods. What `xen-sys` already defines ([`domid_t`], [`evtchn_port_t`],
//! [`xen_pfn_t`], the hypercall numbers) is re-exported from it rather than redefined.
//!
//! Every size, offset, bitfield position and constant here is compared with the C headers by
//! `tests/c_abi.rs`; the dm_op encoders are compared with the bytes the real
//! libxendevicemodel sent in the recorded trace (`flow_trace` tests).
#![allow(non_camel_case_types, non_upper_case_globals, non_snake_case)]

pub mod dm_op;
pub mod evtchn;
pub mod hvm;
pub mod ioreq;
pub mod privcmd;
pub mod proposed;

#[cfg(test)]
mod flow_trace;

pub use xen_sys::{
    __HYPERVISOR_dm_op, __HYPERVISOR_event_channel_op, __HYPERVISOR_memory_op, domid_t,
    evtchn_port_t, xen_pfn_t,
};

/// `DOMID_SELF`: "used in certain contexts to refer to oneself" (`xen/include/public/xen.h`;
/// a `xen_mk_uint()` macro there, which is why `xen-sys`'s bindgen output lacks it).
pub const DOMID_SELF: domid_t = 0x7ff0;

/// `DOMID_INVALID`: no domain (`xen/include/public/xen.h`). libxendevicemodel probes privcmd
/// with an empty `IOCTL_PRIVCMD_DM_OP` for this domain.
pub const DOMID_INVALID: domid_t = 0x7ff4;

/// Size of a Xen page on x86 (`XEN_PAGE_SIZE` in the Linux kernel; the public headers write
/// the shift, 12, inline). The ioreq and buffered-ioreq pages are one page each.
pub const XEN_PAGE_SIZE: usize = 4096;

/// Linux `_IOC(_IOC_NONE, ty, nr, size)` on x86 (asm-generic encoding, direction 0 in bits
/// 30-31): the form every privcmd and evtchn ioctl number uses.
pub(crate) const fn ioc_none(ty: u8, nr: u8, size: usize) -> core::ffi::c_ulong {
    ((size as core::ffi::c_ulong) << 16)
        | ((ty as core::ffi::c_ulong) << 8)
        | nr as core::ffi::c_ulong
}
