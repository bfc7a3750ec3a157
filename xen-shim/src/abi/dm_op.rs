//! `xen/include/public/hvm/dm_op.h`: the device-model operations an ioreq server uses.
//!
//! A dm_op is one 32-byte [`xen_dm_op`] (`op`, `pad`, then a 24-byte union of per-op
//! structs) passed as `buf[0]` of `IOCTL_PRIVCMD_DM_OP`. Xen requires `pad == 0` and every
//! sub-struct `pad == 0`, and copies OUT fields back into the same buffer. The constructors
//! on [`xen_dm_op`] (`encode.rs`) build the buffer exactly like libxendevicemodel does
//! (zeroed, then the IN fields); the recorded trace test proves it byte for byte.

use super::evtchn_port_t;

/// `ioservid_t`: an ioreq server id (0..=7 per domain in Xen 4.17).
pub type ioservid_t = u16;

/// `XEN_DMOP_create_ioreq_server`.
pub const XEN_DMOP_create_ioreq_server: u32 = 1;
/// `XEN_DMOP_get_ioreq_server_info`.
pub const XEN_DMOP_get_ioreq_server_info: u32 = 2;
/// `XEN_DMOP_map_io_range_to_ioreq_server`.
pub const XEN_DMOP_map_io_range_to_ioreq_server: u32 = 3;
/// `XEN_DMOP_unmap_io_range_from_ioreq_server`.
pub const XEN_DMOP_unmap_io_range_from_ioreq_server: u32 = 4;
/// `XEN_DMOP_set_ioreq_server_state`.
pub const XEN_DMOP_set_ioreq_server_state: u32 = 5;
/// `XEN_DMOP_destroy_ioreq_server`.
pub const XEN_DMOP_destroy_ioreq_server: u32 = 6;
/// `XEN_DMOP_set_pci_intx_level`.
pub const XEN_DMOP_set_pci_intx_level: u32 = 8;
/// `XEN_DMOP_inject_msi`.
pub const XEN_DMOP_inject_msi: u32 = 14;
/// `XEN_DMOP_nr_vcpus`.
pub const XEN_DMOP_nr_vcpus: u32 = 20;

/// `XEN_DMOP_no_gfns`: `get_ioreq_server_info` flag, "do not place the pages at guest gfns".
pub const XEN_DMOP_no_gfns: u16 = 1;

/// `XEN_DMOP_IO_RANGE_PORT`: an I/O port range.
pub const XEN_DMOP_IO_RANGE_PORT: u32 = 0;
/// `XEN_DMOP_IO_RANGE_MEMORY`: a guest-physical MMIO range (byte granular).
pub const XEN_DMOP_IO_RANGE_MEMORY: u32 = 1;
/// `XEN_DMOP_IO_RANGE_PCI`: PCI functions, as [`XEN_DMOP_PCI_SBDF`] values.
pub const XEN_DMOP_IO_RANGE_PCI: u32 = 2;

/// `XEN_DMOP_PCI_SBDF(s,b,d,f)`: `(s & 0xffff) << 16 | (b & 0xff) << 8 | (d & 0x1f) << 3 |
/// (f & 7)`, the same value Xen puts in the upper half of a PCI_CONFIG ioreq's `addr`.
pub const fn XEN_DMOP_PCI_SBDF(s: u32, b: u32, d: u32, f: u32) -> u32 {
    ((s & 0xffff) << 16) | ((b & 0xff) << 8) | ((d & 0x1f) << 3) | (f & 0x07)
}

mod encode;
pub use encode::{IoRange, PciSbdf};

/// `struct xen_dm_op_create_ioreq_server`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct xen_dm_op_create_ioreq_server_t {
    /// IN: one of `HVM_IOREQSRV_BUFIOREQ_*`.
    pub handle_bufioreq: u8,
    /// Must be zero.
    pub pad: [u8; 3],
    /// OUT: the new server's id.
    pub id: ioservid_t,
}

/// `struct xen_dm_op_get_ioreq_server_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct xen_dm_op_get_ioreq_server_info_t {
    /// IN: server id.
    pub id: ioservid_t,
    /// IN: `XEN_DMOP_no_gfns` or 0.
    pub flags: u16,
    /// OUT: the buffered ring's port (valid unless bufioreq is OFF).
    pub bufioreq_port: evtchn_port_t,
    /// OUT: legacy ioreq page gfn (only without `XEN_DMOP_no_gfns`).
    pub ioreq_gfn: u64,
    /// OUT: legacy buffered page gfn (only without `XEN_DMOP_no_gfns`).
    pub bufioreq_gfn: u64,
}

/// `struct xen_dm_op_ioreq_server_range` (map and unmap).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct xen_dm_op_ioreq_server_range_t {
    /// IN: server id.
    pub id: ioservid_t,
    /// Must be zero.
    pub pad: u16,
    /// IN: `type`, one of `XEN_DMOP_IO_RANGE_*`.
    pub type_: u32,
    /// IN: first port/byte/SBDF.
    pub start: u64,
    /// IN: last port/byte/SBDF (inclusive).
    pub end: u64,
}

/// `struct xen_dm_op_set_ioreq_server_state`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct xen_dm_op_set_ioreq_server_state_t {
    /// IN: server id.
    pub id: ioservid_t,
    /// IN: 1 to enable, 0 to disable.
    pub enabled: u8,
    /// Must be zero.
    pub pad: u8,
}

/// `struct xen_dm_op_destroy_ioreq_server`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct xen_dm_op_destroy_ioreq_server_t {
    /// IN: server id.
    pub id: ioservid_t,
    /// Must be zero.
    pub pad: u16,
}

/// `struct xen_dm_op_set_pci_intx_level`. Xen 4.17 accepts only `domain == 0 && bus == 0 &&
/// device <= 31 && intx <= 3 && level <= 1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct xen_dm_op_set_pci_intx_level_t {
    /// IN: PCI segment.
    pub domain: u16,
    /// IN: bus.
    pub bus: u8,
    /// IN: device (0..=31).
    pub device: u8,
    /// IN: pin, 0..=3 for INTA..INTD.
    pub intx: u8,
    /// IN: 1 asserted, 0 deasserted.
    pub level: u8,
}

/// `struct xen_dm_op_inject_msi`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct xen_dm_op_inject_msi_t {
    /// IN: MSI data.
    pub data: u32,
    /// Must be zero.
    pub pad: u32,
    /// IN: MSI address (0xfeexxxxx).
    pub addr: u64,
}

/// `struct xen_dm_op_nr_vcpus`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct xen_dm_op_nr_vcpus_t {
    /// OUT: the domain's max vCPUs (ioreq slots are indexed by vcpu_id below it).
    pub vcpus: u32,
}

/// The anonymous union `u` of `struct xen_dm_op`, as its 24 raw bytes (8-aligned, like the C
/// union). Per-op views go through [`xen_dm_op`]'s constructors and `*_out` readers.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct xen_dm_op_u {
    /// The union's bytes; member structs start at byte 0.
    pub bytes: [u8; 24],
}

/// `struct xen_dm_op`: the buffer of every dm_op (32 bytes, no padding).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct xen_dm_op {
    /// One of the `XEN_DMOP_*` op numbers.
    pub op: u32,
    /// Must be zero.
    pub pad: u32,
    /// The per-op struct.
    pub u: xen_dm_op_u,
}

const _: () = assert!(core::mem::size_of::<xen_dm_op>() == 32);
