//! The topology a backend reports (`GetTopology` reply and `LayoutChanged` notifications): the
//! functions it knows, the ECAM windows it decodes and the address ranges it claims.
//!
//! Encoding: a [`TopologyHeader`] followed by `num_functions` [`FunctionRecord`]s, `num_ecam`
//! [`EcamWindow`]s and `num_ranges` [`AddressRange`]s, all little-endian, no gaps.

use vhost::vhost_user::message::VhostUserMsgValidator;
use vm_memory::ByteValued;

use crate::error::{Error, Result};
use crate::frame::read_obj;
use crate::messages::{decode_name, NAME_LEN};

/// Most [`FunctionRecord`]s an encoded topology may hold (a whole segment: 256 buses x 256 devfns).
pub const MAX_TOPOLOGY_FUNCTIONS: u32 = 65536;
/// Most [`EcamWindow`]s an encoded topology may hold.
pub const MAX_TOPOLOGY_ECAM: u32 = 256;
/// Most [`AddressRange`]s an encoded topology may hold.
pub const MAX_TOPOLOGY_RANGES: u32 = 65536;

/// Fixed part of an encoded topology.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct TopologyHeader {
    /// Layout generation: incremented on every guest-visible routing change.
    pub generation: u64,
    /// Number of [`FunctionRecord`]s that follow.
    pub num_functions: u32,
    /// Number of [`EcamWindow`]s that follow the functions.
    pub num_ecam: u32,
    /// Number of [`AddressRange`]s that follow the ECAM windows.
    pub num_ranges: u32,
    /// Reserved, must be 0.
    pub reserved: u32,
}
// SAFETY: integers, no padding (8+4+4+4+4).
unsafe impl ByteValued for TopologyHeader {}
impl VhostUserMsgValidator for TopologyHeader {
    fn is_valid(&self) -> bool {
        self.reserved == 0
    }
}

crate::wire_enum! {
    /// What a function is.
    pub enum FunctionKind: u8 {
        /// The host bridge (Q35 MCH).
        HostBridge = 1,
        /// A PCIe root port (type 1 header).
        RootPort = 2,
        /// An endpoint behind a port, served by another emulator.
        Endpoint = 3,
    }
}

/// [`FunctionRecord::flags`] bits.
pub mod function_flags {
    /// The function is reachable at `bus`/`devfn` now (behind a port: the port's secondary bus
    /// is programmed). When clear, `bus` is meaningless.
    pub const PRESENT: u8 = 1 << 0;
    /// pcierc emulates this function itself.
    pub const EMULATED: u8 = 1 << 1;
    /// Header type bit 7 (multi-function device).
    pub const MULTIFUNCTION: u8 = 1 << 2;
    /// All defined bits.
    pub const ALL: u8 = PRESENT | EMULATED | MULTIFUNCTION;
}

/// No parent (functions on the root bus).
pub const NO_PARENT: u16 = 0xffff;

/// One function of the hierarchy.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FunctionRecord {
    /// PCI segment group.
    pub segment: u16,
    /// Current bus number (valid when `PRESENT`).
    pub bus: u8,
    /// Device/function.
    pub devfn: u8,
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Class code (base class << 16 | subclass << 8 | prog-if).
    pub class_code: u32,
    /// A [`FunctionKind`] value.
    pub kind: u8,
    /// [`function_flags`] bits.
    pub flags: u8,
    /// Index of the port this function sits behind, or [`NO_PARENT`].
    pub parent: u16,
    /// For ports: secondary bus number (0 when not programmed).
    pub secondary_bus: u8,
    /// For ports: subordinate bus number.
    pub subordinate_bus: u8,
    /// Host bridge records only: the proximity domain of the root bus plus one (a `pxb-pcie`
    /// expander's `numa_node` + 1), 0 for none. Sent only to peers that negotiated
    /// [`crate::ProtocolFeatures::PROXIMITY`]; 0 (reserved) for the others.
    pub proximity: u16,
    /// Reserved, must be 0.
    pub reserved: [u8; 4],
    /// The function's id (e.g. `rp1`), NUL-padded.
    pub id: [u8; NAME_LEN],
    /// The emulator that serves it (`pcierc` for the backend's own functions), NUL-padded.
    pub owner: [u8; NAME_LEN],
}
// SAFETY: integers and byte arrays laid out without padding (24 bytes of scalars, then 2x32).
unsafe impl ByteValued for FunctionRecord {}
impl VhostUserMsgValidator for FunctionRecord {
    fn is_valid(&self) -> bool {
        FunctionKind::try_from(self.kind).is_ok()
            && self.flags & !function_flags::ALL == 0
            && self.reserved == [0; 4]
            && (self.proximity == 0 || self.kind == FunctionKind::HostBridge as u8)
            && self.class_code >> 24 == 0
            && decode_name(&self.id).is_some()
            && decode_name(&self.owner).is_some_and(|o| !o.is_empty())
    }
}

/// An ECAM (MMCONFIG) window the backend decodes (PCI Firmware 3.3 §4.1.2, MCFG entry layout).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct EcamWindow {
    /// Guest-physical base of the window (bus `start_bus` is at `base`).
    pub base: u64,
    /// Size in bytes: `(end_bus - start_bus + 1) << 20`.
    pub size: u64,
    /// PCI segment group.
    pub segment: u16,
    /// First bus decoded.
    pub start_bus: u8,
    /// Last bus decoded.
    pub end_bus: u8,
    /// Reserved, must be 0.
    pub reserved: u32,
}
// SAFETY: integers, no padding (8+8+2+1+1+4).
unsafe impl ByteValued for EcamWindow {}
impl VhostUserMsgValidator for EcamWindow {
    fn is_valid(&self) -> bool {
        self.reserved == 0
            && self.start_bus <= self.end_bus
            && self.size == (u64::from(self.end_bus - self.start_bus) + 1) << 20
            && self.base.checked_add(self.size).is_some()
    }
}

crate::wire_enum! {
    /// Address space of an [`AddressRange`].
    pub enum AddressSpace: u8 {
        /// x86 port I/O.
        Pio = 1,
        /// Memory.
        Mmio = 2,
    }
}

crate::wire_enum! {
    /// What an [`AddressRange`] is.
    pub enum RangeKind: u8 {
        /// CONFIG_ADDRESS (0xCF8, dword accesses only): the backend claims it.
        ConfigAddress = 1,
        /// CONFIG_DATA (0xCFC-0xCFF): the backend claims it.
        ConfigData = 2,
        /// A BAR of a function pcierc emulates (e.g. a root port's MSI-X BAR): the backend claims it.
        Bar = 3,
        /// A port's I/O window (informational: routes to whoever owns the functions behind it).
        IoWindow = 4,
        /// A port's non-prefetchable memory window (informational).
        MemWindow = 5,
        /// A port's prefetchable memory window (informational).
        PrefMemWindow = 6,
    }
}

/// A port-I/O or memory range the backend claims or reports.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressRange {
    /// First address.
    pub base: u64,
    /// Length in bytes (non-zero).
    pub size: u64,
    /// An [`AddressSpace`] value.
    pub space: u8,
    /// A [`RangeKind`] value.
    pub kind: u8,
    /// Segment of the function it belongs to (BARs and windows).
    pub segment: u16,
    /// Bus of that function.
    pub bus: u8,
    /// Devfn of that function.
    pub devfn: u8,
    /// BAR index for `Bar` ranges, else 0.
    pub bar: u8,
    /// Reserved, must be 0.
    pub reserved: u8,
}
// SAFETY: integers, no padding (8+8+1+1+2+1+1+1+1).
unsafe impl ByteValued for AddressRange {}
impl VhostUserMsgValidator for AddressRange {
    fn is_valid(&self) -> bool {
        AddressSpace::try_from(self.space).is_ok()
            && RangeKind::try_from(self.kind).is_ok()
            && self.reserved == 0
            && (self.bar == 0 || (self.kind == RangeKind::Bar as u8 && self.bar < 6))
            && self.size != 0
            && self.base.checked_add(self.size - 1).is_some()
    }
}

/// A decoded topology.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    /// Layout generation.
    pub generation: u64,
    /// The functions, host bridge first.
    pub functions: Vec<FunctionRecord>,
    /// ECAM windows currently decoded (empty when PCIEXBAR is disabled).
    pub ecam: Vec<EcamWindow>,
    /// Claimed and reported address ranges.
    pub ranges: Vec<AddressRange>,
}

impl Topology {
    /// Does a record carry a proximity domain ([`FunctionRecord::proximity`])?
    pub fn has_proximity(&self) -> bool {
        self.functions.iter().any(|f| f.proximity != 0)
    }

    /// The topology as a peer that did not negotiate [`crate::ProtocolFeatures::PROXIMITY`]
    /// gets it: every `proximity` 0.
    pub fn without_proximity(&self) -> Topology {
        let mut t = self.clone();
        for f in &mut t.functions {
            f.proximity = 0;
        }
        t
    }

    /// Encode: a [`TopologyHeader`] followed by the records, in that order, without gaps.
    pub fn encode(&self) -> Vec<u8> {
        let header = TopologyHeader {
            generation: self.generation,
            num_functions: self.functions.len() as u32,
            num_ecam: self.ecam.len() as u32,
            num_ranges: self.ranges.len() as u32,
            reserved: 0,
        };
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(header.as_slice());
        self.functions
            .iter()
            .for_each(|f| out.extend_from_slice(f.as_slice()));
        self.ecam
            .iter()
            .for_each(|e| out.extend_from_slice(e.as_slice()));
        self.ranges
            .iter()
            .for_each(|r| out.extend_from_slice(r.as_slice()));
        out
    }

    /// Size of [`Topology::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        std::mem::size_of::<TopologyHeader>()
            + self.functions.len() * std::mem::size_of::<FunctionRecord>()
            + self.ecam.len() * std::mem::size_of::<EcamWindow>()
            + self.ranges.len() * std::mem::size_of::<AddressRange>()
    }

    /// Decode and validate an encoded topology: the header, the counts against their limits and
    /// against the exact size of `bytes`, and every record (see [`Topology::validate`]).
    pub fn decode(bytes: &[u8]) -> Result<Topology> {
        let hsize = std::mem::size_of::<TopologyHeader>();
        let header: TopologyHeader = read_obj(
            bytes
                .get(..hsize)
                .ok_or(Error::InvalidTopology("shorter than its header"))?,
        )
        .ok_or(Error::InvalidTopology("shorter than its header"))?;
        if !header.is_valid() {
            return Err(Error::InvalidTopology("reserved header field is not 0"));
        }
        if header.num_functions > MAX_TOPOLOGY_FUNCTIONS
            || header.num_ecam > MAX_TOPOLOGY_ECAM
            || header.num_ranges > MAX_TOPOLOGY_RANGES
        {
            return Err(Error::InvalidTopology("record count over its limit"));
        }
        // The counts are bounded, so this cannot overflow; the size check bounds the allocations
        // by what the peer really sent.
        let (nf, ne, nr) = (
            header.num_functions as usize,
            header.num_ecam as usize,
            header.num_ranges as usize,
        );
        let fsize = std::mem::size_of::<FunctionRecord>();
        let (esize, rsize) = (
            std::mem::size_of::<EcamWindow>(),
            std::mem::size_of::<AddressRange>(),
        );
        if bytes.len() != hsize + nf * fsize + ne * esize + nr * rsize {
            return Err(Error::InvalidTopology(
                "size does not match the record counts",
            ));
        }
        let rest = &bytes[hsize..];
        let (fbytes, rest) = rest.split_at(nf * fsize);
        let (ebytes, rbytes) = rest.split_at(ne * esize);
        let topo = Topology {
            generation: header.generation,
            functions: records(fbytes, "invalid function record")?,
            ecam: records(ebytes, "invalid ECAM window")?,
            ranges: records(rbytes, "invalid address range")?,
        };
        topo.validate()?;
        Ok(topo)
    }

    /// Check what [`Topology::decode`] checks beyond sizes: every record's `is_valid()`, and every
    /// `parent` is [`NO_PARENT`] or the index of a root port in `functions`.
    pub fn validate(&self) -> Result<()> {
        if !self.functions.iter().all(|f| f.is_valid()) {
            return Err(Error::InvalidTopology("invalid function record"));
        }
        if !self.ecam.iter().all(|e| e.is_valid()) {
            return Err(Error::InvalidTopology("invalid ECAM window"));
        }
        if !self.ranges.iter().all(|r| r.is_valid()) {
            return Err(Error::InvalidTopology("invalid address range"));
        }
        let is_port = |i: u16| {
            self.functions
                .get(usize::from(i))
                .is_some_and(|p| p.kind == FunctionKind::RootPort as u8)
        };
        if !self
            .functions
            .iter()
            .all(|f| f.parent == NO_PARENT || is_port(f.parent))
        {
            return Err(Error::InvalidTopology("parent is not the index of a port"));
        }
        Ok(())
    }
}

/// Split `bytes` (a whole number of records, checked by the caller) into records.
fn records<T: VhostUserMsgValidator + Default>(bytes: &[u8], what: &'static str) -> Result<Vec<T>> {
    bytes
        .chunks_exact(std::mem::size_of::<T>())
        .map(|c| {
            read_obj::<T>(c)
                .filter(|r| r.is_valid())
                .ok_or(Error::InvalidTopology(what))
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    /// `proximity` sits where bytes 18-19 of the reserved field were, and only host bridge
    /// records may carry one.
    #[test]
    fn only_host_bridges_carry_a_proximity_domain() {
        let mut t = sample();
        let i = t
            .functions
            .iter()
            .position(|f| f.kind == FunctionKind::RootPort as u8)
            .unwrap();
        t.functions[0].proximity = 2;
        assert!(t.validate().is_ok());
        let bytes = t.encode();
        assert_eq!(u16::from_le_bytes([bytes[24 + 18], bytes[24 + 19]]), 2);
        assert!(t.has_proximity() && !t.without_proximity().has_proximity());
        t.functions[i].proximity = 1;
        assert!(t.validate().is_err(), "a port has no proximity domain");
    }

    #[test]
    fn record_sizes() {
        assert_eq!(std::mem::size_of::<TopologyHeader>(), 24);
        assert_eq!(std::mem::size_of::<FunctionRecord>(), 88);
        assert_eq!(std::mem::size_of::<EcamWindow>(), 24);
        assert_eq!(std::mem::size_of::<AddressRange>(), 24);
    }

    pub(crate) fn sample() -> Topology {
        let name = |s| crate::messages::encode_name(s).unwrap();
        let port = FunctionRecord {
            devfn: 0x10,
            vendor_id: 0x1b36,
            device_id: 0x000c,
            class_code: 0x060400,
            kind: FunctionKind::RootPort as u8,
            flags: function_flags::PRESENT | function_flags::EMULATED,
            parent: NO_PARENT,
            secondary_bus: 1,
            subordinate_bus: 1,
            id: name("rp1"),
            owner: name("pcierc"),
            ..Default::default()
        };
        let ep = FunctionRecord {
            bus: 1,
            kind: FunctionKind::Endpoint as u8,
            flags: function_flags::PRESENT,
            parent: 1,
            id: name("disk0"),
            owner: name("qemu"),
            ..Default::default()
        };
        let mch = FunctionRecord {
            kind: FunctionKind::HostBridge as u8,
            parent: NO_PARENT,
            id: name("mch"),
            owner: name("pcierc"),
            ..Default::default()
        };
        Topology {
            generation: 3,
            functions: vec![mch, port, ep],
            ecam: vec![EcamWindow {
                base: 0xb000_0000,
                size: 256 << 20,
                segment: 0,
                start_bus: 0,
                end_bus: 255,
                reserved: 0,
            }],
            ranges: vec![AddressRange {
                base: 0xcf8,
                size: 4,
                space: AddressSpace::Pio as u8,
                kind: RangeKind::ConfigAddress as u8,
                ..Default::default()
            }],
        }
    }

    #[test]
    fn round_trip() {
        let t = sample();
        let bytes = t.encode();
        assert_eq!(bytes.len(), t.encoded_len());
        assert_eq!(bytes.len(), 24 + 3 * 88 + 24 + 24);
        assert_eq!(Topology::decode(&bytes).unwrap(), t);
        assert_eq!(
            Topology::decode(&Topology::default().encode()).unwrap(),
            Topology::default()
        );
    }

    fn set_header(bytes: &mut [u8], f: impl FnOnce(&mut TopologyHeader)) {
        let mut h: TopologyHeader = read_obj(&bytes[..24]).unwrap();
        f(&mut h);
        bytes[..24].copy_from_slice(h.as_slice());
    }

    #[test]
    fn rejects_lies() {
        let good = sample().encode();
        let rejects = |b: &[u8]| matches!(Topology::decode(b), Err(Error::InvalidTopology(_)));
        assert!(rejects(&good[..10]));
        assert!(rejects(&good[..good.len() - 1]));
        assert!(rejects(&[&good[..], &[0u8; 24]].concat()));
        for lie in [
            |h: &mut TopologyHeader| h.num_functions = u32::MAX,
            |h: &mut TopologyHeader| h.num_functions += 1,
            |h: &mut TopologyHeader| h.num_ecam = MAX_TOPOLOGY_ECAM + 1,
            |h: &mut TopologyHeader| h.num_ranges = 0,
            |h: &mut TopologyHeader| h.reserved = 1,
        ] {
            let mut b = good.clone();
            set_header(&mut b, lie);
            assert!(rejects(&b));
        }
        // Counts swapped between ECAM windows and ranges: same size, but the records are invalid.
        let mut b = good.clone();
        set_header(&mut b, |h| (h.num_ecam, h.num_ranges) = (0, 2));
        assert!(rejects(&b));
    }

    #[test]
    fn rejects_bad_records() {
        let mut t = sample();
        t.functions[2].parent = 2; // an endpoint is not a port
        assert!(Topology::decode(&t.encode()).is_err());
        t.functions[2].parent = 7; // out of range
        assert!(Topology::decode(&t.encode()).is_err());
        let mut t = sample();
        t.functions[0].kind = 9;
        assert!(Topology::decode(&t.encode()).is_err());
        let mut t = sample();
        t.ecam[0].size = 1 << 20;
        assert!(Topology::decode(&t.encode()).is_err());
        let mut t = sample();
        t.ranges[0].bar = 2; // only BAR ranges name a BAR
        assert!(Topology::decode(&t.encode()).is_err());
    }
}
