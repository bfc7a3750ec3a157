//! Building [`xen_dm_op`] buffers the way libxendevicemodel does (zeroed, then the IN
//! fields) and reading the OUT fields Xen copies back; plus the PCIe-side helpers
//! [`PciSbdf`] and [`IoRange`] the constructors take.

use super::*;

/// A PCI function in Xen's SBDF encoding, split into PCIe terms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciSbdf {
    /// PCI segment group.
    pub segment: u16,
    /// Bus number.
    pub bus: u8,
    /// Device (bits 7-3) and function (bits 2-0).
    pub devfn: u8,
}

impl PciSbdf {
    /// Decodes a [`XEN_DMOP_PCI_SBDF`] value.
    pub const fn from_raw(sbdf: u32) -> Self {
        Self {
            segment: (sbdf >> 16) as u16,
            bus: (sbdf >> 8) as u8,
            devfn: sbdf as u8,
        }
    }

    /// The [`XEN_DMOP_PCI_SBDF`] value.
    pub const fn raw(self) -> u32 {
        XEN_DMOP_PCI_SBDF(
            self.segment as u32,
            self.bus as u32,
            (self.devfn >> 3) as u32,
            self.devfn as u32,
        )
    }
}

/// A range an ioreq server claims, with inclusive bounds (`start`/`end` of the C struct).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IoRange {
    /// Ports `first..=last`. See FLOW.md §4 before claiming 0xcf8-0xcff next to QEMU.
    Port {
        /// First port.
        first: u16,
        /// Last port (inclusive).
        last: u16,
    },
    /// Guest-physical bytes `first..=last`; an access must fit entirely inside one range.
    Memory {
        /// First byte.
        first: u64,
        /// Last byte (inclusive).
        last: u64,
    },
    /// One PCI function (sent as the singleton `start = end = sbdf`, like libxendevicemodel's
    /// `map_pcidev_to_ioreq_server`).
    Pci(PciSbdf),
}

impl IoRange {
    /// `(type, start, end)` of `xen_dm_op_ioreq_server_range_t`.
    pub const fn encode(self) -> (u32, u64, u64) {
        match self {
            IoRange::Port { first, last } => (XEN_DMOP_IO_RANGE_PORT, first as u64, last as u64),
            IoRange::Memory { first, last } => (XEN_DMOP_IO_RANGE_MEMORY, first, last),
            IoRange::Pci(f) => (XEN_DMOP_IO_RANGE_PCI, f.raw() as u64, f.raw() as u64),
        }
    }
}

/// A union member of [`xen_dm_op_u`].
///
/// # Safety
/// Implementors are `#[repr(C)]`, made only of integers (so every bit pattern is valid), have
/// no padding bytes (so writing one initialises every byte it covers) and fit in 24 bytes.
pub(crate) unsafe trait DmOpPayload: Copy {}

macro_rules! dm_op_payload {
    ($($t:ty = $fields:expr;)*) => {$(
        const _: () = assert!(core::mem::size_of::<$t>() == $fields);
        const _: () = assert!(core::mem::size_of::<$t>() <= core::mem::size_of::<xen_dm_op_u>());
        // SAFETY: repr(C) integer struct; the assertion above proves its size equals the sum
        // of its field sizes (no padding) and that it fits in the 24-byte union.
        unsafe impl DmOpPayload for $t {}
    )*};
}

dm_op_payload! {
    xen_dm_op_create_ioreq_server_t = 1 + 3 + 2;
    xen_dm_op_get_ioreq_server_info_t = 2 + 2 + 4 + 8 + 8;
    xen_dm_op_ioreq_server_range_t = 2 + 2 + 4 + 8 + 8;
    xen_dm_op_set_ioreq_server_state_t = 2 + 1 + 1;
    xen_dm_op_destroy_ioreq_server_t = 2 + 2;
    xen_dm_op_set_pci_intx_level_t = 2 + 1 + 1 + 1 + 1;
    xen_dm_op_inject_msi_t = 4 + 4 + 8;
    xen_dm_op_nr_vcpus_t = 4;
    crate::abi::proposed::xen_dm_op_x_pcierc_mmcfg_t = 8 + 2 + 1 + 1 + 1 + 3;
}

impl xen_dm_op {
    /// A zeroed dm_op `op` whose union starts with `payload`.
    pub(crate) fn with<T: DmOpPayload>(op: u32, payload: T) -> Self {
        let mut this = Self {
            op,
            ..Self::default()
        };
        // SAFETY: `bytes` is 24 bytes and T fits in 24 (DmOpPayload); write_unaligned needs
        // no alignment; T has no padding, so every written byte is initialised.
        unsafe { core::ptr::write_unaligned(this.u.bytes.as_mut_ptr().cast::<T>(), payload) };
        this
    }

    /// The union's first `size_of::<T>()` bytes as a `T` (whatever op this is).
    pub(crate) fn payload<T: DmOpPayload>(&self) -> T {
        // SAFETY: T fits in the 24 initialised bytes and every bit pattern is a valid T
        // (DmOpPayload); read_unaligned needs no alignment.
        unsafe { core::ptr::read_unaligned(self.u.bytes.as_ptr().cast::<T>()) }
    }

    /// `XEN_DMOP_nr_vcpus`.
    pub fn nr_vcpus() -> Self {
        Self::with(XEN_DMOP_nr_vcpus, xen_dm_op_nr_vcpus_t::default())
    }

    /// `XEN_DMOP_create_ioreq_server` with `HVM_IOREQSRV_BUFIOREQ_*` `handle_bufioreq`.
    pub fn create_ioreq_server(handle_bufioreq: u8) -> Self {
        let p = xen_dm_op_create_ioreq_server_t {
            handle_bufioreq,
            ..Default::default()
        };
        Self::with(XEN_DMOP_create_ioreq_server, p)
    }

    /// `XEN_DMOP_get_ioreq_server_info`, always with `XEN_DMOP_no_gfns` (what
    /// libxendevicemodel sends for NULL gfn pointers): without it Xen places the pages at
    /// guest gfns and a later resource mapping fails with -EPERM (FLOW.md §1.3).
    pub fn get_ioreq_server_info(id: ioservid_t) -> Self {
        let p = xen_dm_op_get_ioreq_server_info_t {
            id,
            flags: XEN_DMOP_no_gfns,
            ..Default::default()
        };
        Self::with(XEN_DMOP_get_ioreq_server_info, p)
    }

    /// `XEN_DMOP_map_io_range_to_ioreq_server`.
    pub fn map_io_range_to_ioreq_server(id: ioservid_t, range: IoRange) -> Self {
        Self::range(XEN_DMOP_map_io_range_to_ioreq_server, id, range)
    }

    /// `XEN_DMOP_unmap_io_range_from_ioreq_server`.
    pub fn unmap_io_range_from_ioreq_server(id: ioservid_t, range: IoRange) -> Self {
        Self::range(XEN_DMOP_unmap_io_range_from_ioreq_server, id, range)
    }

    fn range(op: u32, id: ioservid_t, range: IoRange) -> Self {
        let (type_, start, end) = range.encode();
        Self::with(
            op,
            xen_dm_op_ioreq_server_range_t {
                id,
                pad: 0,
                type_,
                start,
                end,
            },
        )
    }

    /// `XEN_DMOP_set_ioreq_server_state`.
    pub fn set_ioreq_server_state(id: ioservid_t, enabled: bool) -> Self {
        let p = xen_dm_op_set_ioreq_server_state_t {
            id,
            enabled: enabled.into(),
            pad: 0,
        };
        Self::with(XEN_DMOP_set_ioreq_server_state, p)
    }

    /// `XEN_DMOP_destroy_ioreq_server`.
    pub fn destroy_ioreq_server(id: ioservid_t) -> Self {
        Self::with(
            XEN_DMOP_destroy_ioreq_server,
            xen_dm_op_destroy_ioreq_server_t { id, pad: 0 },
        )
    }

    /// `XEN_DMOP_set_pci_intx_level` for pin `intx` (0 = INTA) of `segment:bus:device`.
    pub fn set_pci_intx_level(segment: u16, bus: u8, device: u8, intx: u8, asserted: bool) -> Self {
        let p = xen_dm_op_set_pci_intx_level_t {
            domain: segment,
            bus,
            device,
            intx,
            level: asserted.into(),
        };
        Self::with(XEN_DMOP_set_pci_intx_level, p)
    }

    /// `XEN_DMOP_inject_msi`.
    pub fn inject_msi(addr: u64, data: u32) -> Self {
        Self::with(
            XEN_DMOP_inject_msi,
            xen_dm_op_inject_msi_t { data, pad: 0, addr },
        )
    }

    /// Replaces the union's first bytes with `payload` (Xen copying OUT fields back), keeping
    /// `op`, `pad` and the bytes past `payload`.
    pub(crate) fn set_payload<T: DmOpPayload>(&mut self, payload: T) {
        // SAFETY: as in `with`: T fits in the 24 bytes and has no padding.
        unsafe { core::ptr::write_unaligned(self.u.bytes.as_mut_ptr().cast::<T>(), payload) };
    }

    /// The 32 bytes handed to the hypervisor.
    pub fn as_bytes(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&self.op.to_ne_bytes());
        b[4..8].copy_from_slice(&self.pad.to_ne_bytes());
        b[8..].copy_from_slice(&self.u.bytes);
        b
    }

    /// The dm_op as Xen copied it back (OUT fields filled in).
    pub fn from_bytes(b: &[u8; 32]) -> Self {
        let word = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut u = xen_dm_op_u::default();
        u.bytes.copy_from_slice(&b[8..]);
        Self {
            op: word(0),
            pad: word(4),
            u,
        }
    }

    /// OUT of `nr_vcpus`: the vCPU count, or `None` if this is another op.
    pub fn nr_vcpus_out(&self) -> Option<u32> {
        (self.op == XEN_DMOP_nr_vcpus).then(|| self.payload::<xen_dm_op_nr_vcpus_t>().vcpus)
    }

    /// OUT of `create_ioreq_server`: the new server id, or `None` if this is another op.
    pub fn ioreq_server_id_out(&self) -> Option<ioservid_t> {
        (self.op == XEN_DMOP_create_ioreq_server)
            .then(|| self.payload::<xen_dm_op_create_ioreq_server_t>().id)
    }

    /// OUT of `get_ioreq_server_info`: the buffered ring's port (meaningless with
    /// `HVM_IOREQSRV_BUFIOREQ_OFF`), or `None` if this is another op.
    pub fn bufioreq_port_out(&self) -> Option<evtchn_port_t> {
        (self.op == XEN_DMOP_get_ioreq_server_info).then(|| {
            self.payload::<xen_dm_op_get_ioreq_server_info_t>()
                .bufioreq_port
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sbdf_round_trip_and_masking() {
        let f = PciSbdf {
            segment: 0x1234,
            bus: 0xab,
            devfn: 0xff,
        };
        assert_eq!(f.raw(), 0x1234_abff);
        assert_eq!(PciSbdf::from_raw(0x1234_abff), f);
        assert_eq!(XEN_DMOP_PCI_SBDF(0, 0, 3, 0), 0x18);
        assert_eq!(XEN_DMOP_PCI_SBDF(0x1_0000, 0x100, 0x20, 8), 0);
    }

    #[test]
    fn out_readers_check_the_op() {
        let mut op = xen_dm_op::create_ioreq_server(0);
        op.u.bytes[4..6].copy_from_slice(&3u16.to_ne_bytes());
        assert_eq!(op.ioreq_server_id_out(), Some(3));
        assert_eq!(op.nr_vcpus_out(), None);
        assert_eq!(op.bufioreq_port_out(), None);
    }
}
