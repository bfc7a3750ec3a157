//! QEMU-shaped `query-pci` results built from the hierarchy.
//!
//! The result has the shape of QEMU 7.2's `query-pci` (`qapi/pci.json`: `PciInfo`,
//! `PciDeviceInfo`, `PciBridgeInfo`, ...) and, for the functions pcierc emulates, QEMU's values:
//! every member is decoded from configuration space as `qmp_query_pci_device()`,
//! `qmp_query_pci_bridge()` and `qmp_query_pci_regions()` in QEMU 7.2's `hw/pci/pci.c` decode
//! it. Functions other emulators serve are listed with what pcierc knows of them (see
//! [`from_hierarchy`]). Structs serialize their members in the schema's order.

use serde::Serialize;

use crate::pci::bridge::{
    IO_BASE, IO_BASE_UPPER16, IO_LIMIT, IO_LIMIT_UPPER16, MEMORY_BASE, MEMORY_LIMIT,
    PREF_BASE_UPPER32, PREF_LIMIT_UPPER32, PREF_MEMORY_BASE, PREF_MEMORY_LIMIT, PRIMARY_BUS,
    SECONDARY_BUS, SUBORDINATE_BUS,
};
use crate::pci::header::{
    BAR0, COMMAND, COMMAND_IO, COMMAND_MEMORY, DEVICE_ID, HEADER_TYPE, HEADER_TYPE_BRIDGE,
    HEADER_TYPE_MULTI_FUNCTION, INTERRUPT_LINE, INTERRUPT_PIN, SUBSYSTEM_ID, SUBSYSTEM_VENDOR_ID,
    VENDOR_ID,
};
use crate::pci::PciFunction;
use crate::topology::hierarchy::{Hierarchy, Routed, Slot};
use crate::topology::spec::EndpointSpec;
use crate::topology::Segments;

// PCI Local Bus 3.0 §6.2.1: Sub-Class and Base Class, the word QEMU reports as `class`.
const CLASS_DEVICE: u16 = 0x0a;
// PCI Local Bus 3.0 §6.2.1 Header Type (bits 6:0): layouts QEMU decodes.
const HEADER_TYPE_NORMAL: u8 = 0x00;
const HEADER_TYPE_CARDBUS: u8 = 0x02;
// PCI Local Bus 3.0 §6.2.5.2 Expansion ROM Base Address (type 0); PCI-to-PCI Bridge 1.2
// §3.2.5.16 (type 1).
const ROM_ADDRESS: u16 = 0x30;
const ROM_ADDRESS1: u16 = 0x38;
const ROM_ADDRESS_ENABLE: u32 = 0x1;
const ROM_ADDRESS_MASK: u32 = !0x7ff;
// PC Card Standard, CardBus bridge header: Subsystem Vendor ID / Subsystem ID.
const CB_SUBSYSTEM_VENDOR_ID: u16 = 0x40;
const CB_SUBSYSTEM_ID: u16 = 0x42;
// PCI Local Bus 3.0 §6.2.5.1 Base Address Register bits.
const BAR_SPACE_IO: u32 = 0x1;
const BAR_MEM_TYPE_MASK: u32 = 0x6;
const BAR_MEM_TYPE_64: u32 = 0x4;
const BAR_MEM_PREFETCH: u32 = 0x8;
const BAR_IO_MASK: u32 = !0x3;
const BAR_MEM_MASK: u32 = !0xf;
// PCI-to-PCI Bridge 1.2 §3.2.5.6/§3.2.5.9: address bits and addressing-capability bits.
const IO_RANGE_MASK: u8 = 0xf0;
const IO_RANGE_TYPE_32: u8 = 0x01;
const MEMORY_RANGE_MASK: u16 = 0xfff0;
const PREF_RANGE_MASK: u16 = 0xfff0;
const PREF_RANGE_TYPE_64: u16 = 0x0001;
/// QEMU's index of the expansion ROM in `io_regions` (`PCI_ROM_SLOT`).
const ROM_SLOT: u8 = 6;
/// QEMU's `PCI_BAR_UNMAPPED` ((pcibus_t)-1) as the schema's signed `address` prints it.
pub const BAR_UNMAPPED: i64 = -1;
/// What pcierc reports for identity registers of a function it does not read (see
/// [`from_hierarchy`]): the all-ones value a configuration read returns where no function
/// answers; PCI Local Bus 3.0 §6.2.1 makes Vendor ID 0xFFFF invalid, so no real function has it.
pub const UNKNOWN_ID: u16 = 0xffff;

/// QEMU 7.2's `pci_class_descriptions` (`hw/pci/pci.c`): class word -> description.
const CLASS_DESCRIPTIONS: &[(u16, &str)] = &[
    (0x0001, "VGA controller"),
    (0x0100, "SCSI controller"),
    (0x0101, "IDE controller"),
    (0x0102, "Floppy controller"),
    (0x0103, "IPI controller"),
    (0x0104, "RAID controller"),
    (0x0106, "SATA controller"),
    (0x0107, "SAS controller"),
    (0x0180, "Storage controller"),
    (0x0200, "Ethernet controller"),
    (0x0201, "Token Ring controller"),
    (0x0202, "FDDI controller"),
    (0x0203, "ATM controller"),
    (0x0280, "Network controller"),
    (0x0300, "VGA controller"),
    (0x0301, "XGA controller"),
    (0x0302, "3D controller"),
    (0x0380, "Display controller"),
    (0x0400, "Video controller"),
    (0x0401, "Audio controller"),
    (0x0402, "Phone"),
    (0x0403, "Audio controller"),
    (0x0480, "Multimedia controller"),
    (0x0500, "RAM controller"),
    (0x0501, "Flash controller"),
    (0x0580, "Memory controller"),
    (0x0600, "Host bridge"),
    (0x0601, "ISA bridge"),
    (0x0602, "EISA bridge"),
    (0x0603, "MC bridge"),
    (0x0604, "PCI bridge"),
    (0x0605, "PCMCIA bridge"),
    (0x0606, "NUBUS bridge"),
    (0x0607, "CARDBUS bridge"),
    (0x0608, "RACEWAY bridge"),
    (0x0680, "Bridge"),
    (0x0700, "Serial port"),
    (0x0701, "Parallel port"),
    (0x0800, "Interrupt controller"),
    (0x0801, "DMA controller"),
    (0x0802, "Timer"),
    (0x0803, "RTC"),
    (0x0900, "Keyboard"),
    (0x0901, "Pen"),
    (0x0902, "Mouse"),
    (0x0a00, "Dock station"),
    (0x0b00, "i386 cpu"),
    (0x0c00, "Firewire controller"),
    (0x0c01, "Access bus controller"),
    (0x0c02, "SSA controller"),
    (0x0c03, "USB controller"),
    (0x0c04, "Fibre channel controller"),
    (0x0c05, "SMBus"),
];

/// `PciInfo`: one root bus and the functions on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PciInfo {
    /// Bus number.
    pub bus: u8,
    /// Functions on the bus, by devfn.
    pub devices: Vec<PciDeviceInfo>,
    /// pcierc's extension: the PCI segment of an extra segment's root bus (QEMU has segment 0
    /// only, and `query-pci` no segment member); absent for segment 0.
    #[serde(rename = "x-pcierc-segment", skip_serializing_if = "Option::is_none")]
    pub segment: Option<u16>,
}

/// `PciDeviceInfo`: one function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PciDeviceInfo {
    /// Bus number the function sits on.
    pub bus: u8,
    /// Device number.
    pub slot: u8,
    /// Function number.
    pub function: u8,
    /// Class code.
    pub class_info: PciDeviceClass,
    /// Identification registers.
    pub id: PciDeviceId,
    /// Interrupt Line, present when `irq_pin` is non-zero.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub irq: Option<u8>,
    /// Interrupt Pin (0: none, 1-4: INTA-INTD).
    pub irq_pin: u8,
    /// The function's id (`""` when it has none, as the MCH).
    pub qdev_id: String,
    /// Bridge registers, for type 1 functions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pci_bridge: Option<PciBridgeInfo>,
    /// The BARs and expansion ROM the function implements.
    pub regions: Vec<PciMemoryRegion>,
}

/// `PciDeviceClass`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PciDeviceClass {
    /// QEMU's name for the class, when its table has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desc: Option<&'static str>,
    /// Base class (15:8) and sub-class (7:0).
    pub class: u16,
}

/// `PciDeviceId`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PciDeviceId {
    /// Device ID.
    pub device: u16,
    /// Vendor ID.
    pub vendor: u16,
    /// Subsystem ID (type 0 and CardBus headers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subsystem: Option<u16>,
    /// Subsystem Vendor ID (type 0 and CardBus headers).
    #[serde(rename = "subsystem-vendor", skip_serializing_if = "Option::is_none")]
    pub subsystem_vendor: Option<u16>,
}

/// `PciBridgeInfo`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PciBridgeInfo {
    /// Bus numbers and windows.
    pub bus: PciBusInfo,
    /// Functions on the secondary bus; present when the Secondary Bus Number is non-zero.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<PciDeviceInfo>>,
}

/// `PciBusInfo`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PciBusInfo {
    /// Primary Bus Number.
    pub number: u8,
    /// Secondary Bus Number.
    pub secondary: u8,
    /// Subordinate Bus Number.
    pub subordinate: u8,
    /// I/O window.
    pub io_range: PciMemoryRange,
    /// Non-prefetchable memory window.
    pub memory_range: PciMemoryRange,
    /// Prefetchable memory window.
    pub prefetchable_range: PciMemoryRange,
}

/// `PciMemoryRange`: a bridge window as QEMU's `pci_bridge_get_base()` /
/// `pci_bridge_get_limit()` compute it, printed as the schema's signed `int` (a closed window
/// has `base > limit`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PciMemoryRange {
    /// First address.
    pub base: i64,
    /// Last address.
    pub limit: i64,
}

/// `PciMemoryRegion`: one BAR or the expansion ROM (`bar` 6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PciMemoryRegion {
    /// Region index: BAR 0-5, 6 for the expansion ROM.
    pub bar: u8,
    /// `"io"` or `"memory"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Where the function decodes it now, [`BAR_UNMAPPED`] when it does not.
    pub address: i64,
    /// Size in bytes.
    pub size: i64,
    /// Prefetchable (memory regions only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefetch: Option<bool>,
    /// 64-bit BAR (memory regions only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_type_64: Option<bool>,
}

/// QEMU's `query-pci` result for the hierarchy: `[PciInfo]` for bus 0 of the segment.
pub fn query_pci(h: &Hierarchy) -> serde_json::Value {
    to_json(&from_hierarchy(h))
}

/// `query-pci` of every segment: segment 0's root buses as QEMU lists them (the `pxb-pcie`
/// expanders' root buses, newest first, then `pcie.0`), then each extra segment's root bus as
/// one more `PciInfo` (bus 0, with `x-pcierc-segment`; beyond QEMU, so after QEMU's own).
pub fn query_pci_segments(segments: &Segments) -> serde_json::Value {
    let info: Vec<PciInfo> = segments.iter().flat_map(from_hierarchy).collect();
    to_json(&info)
}

/// Serialize a `query-pci` result (a [`serde_json::Value`], whose objects keep their members
/// sorted by name rather than in the schema's order; serialize the structs for that).
pub fn to_json(info: &[PciInfo]) -> serde_json::Value {
    // Plain structs of integers, strings and options: serialization cannot fail.
    serde_json::to_value(info).unwrap_or_default()
}

/// The `query-pci` result for the hierarchy: one `PciInfo` per `pxb-pcie` expander's root bus
/// (newest first, as QEMU's `pci_host_bridges` list holds them: `bus` = `bus_nr`, the root ports
/// on it), then bus 0 with the functions on it by devfn, and behind
/// each port whose Secondary Bus Number is non-zero the functions on its secondary bus (a
/// switch's ports nested below the root port, as QEMU nests them).
///
/// The MCH and the root ports are decoded from their configuration space exactly as QEMU does.
///
/// Functions other emulators serve (endpoints declared in the topology or hot-added): pcierc
/// does not hold their configuration space and answers a query without asking their owners, so
/// it reports only what it knows: `bus`, `slot`, `function` and `qdev_id` (the endpoint's id).
/// The members the schema requires are filled with "not read" values: `class_info.class`,
/// `id.vendor` and `id.device` are [`UNKNOWN_ID`] (as the protocol's topology record reports
/// them), `irq_pin` is 0 with `irq` absent (QEMU's pairing: no Interrupt Line without a pin) and
/// `regions` is empty. Optional members are left out: `class_info.desc`, `id.subsystem` and
/// `id.subsystem-vendor` (unknown), and `pci_bridge` (pcierc cannot tell whether the function
/// is a switch port). Ask the owner (or QEMU's own `query-pci`) for the real values.
///
/// Like QEMU, a port whose Secondary Bus Number is 0 has no `devices` member, so functions
/// behind it are not listed; a port with a secondary bus lists the functions in its slot (an
/// empty list when the slot is empty). QEMU looks the secondary bus up by number
/// (`pci_find_bus_nr()`), which, when guest-programmed bus ranges overlap, can find another
/// port's bus or none; pcierc always lists the port's own slot.
pub fn from_hierarchy(h: &Hierarchy) -> Vec<PciInfo> {
    let spec = h.spec();
    let devices = (0..=255u8)
        .filter_map(|devfn| match h.route(0, devfn) {
            Routed::Local(Slot::Mch) => Some(emulated(h.mch(), 0, devfn, "")),
            Routed::Local(Slot::Port(i)) => port(h, usize::from(i), 0, devfn, 0),
            Routed::Local(Slot::Bridge(j)) => pci_bridge(h, usize::from(j), 0, devfn),
            Routed::Local(Slot::Expander(x)) => {
                let (f, xs) = (
                    h.expanders().get(usize::from(x))?,
                    spec.expanders.get(usize::from(x))?,
                );
                Some(emulated(f, 0, devfn, &xs.config.id))
            }
            Routed::Remote(e) => spec.endpoints.get(usize::from(e)).map(|e| remote(e, 0)),
            Routed::Local(_) | Routed::Absent => None,
        })
        .collect();
    let segment = h.spec().segment;
    let segment = (segment != 0).then_some(segment);
    // QEMU lists its host bridges newest first (`pci_host_bus_register()` inserts at the
    // head): the expanders' root buses in reverse order of creation, then pcie.0.
    let mut info: Vec<PciInfo> = (0..h.expanders().len())
        .rev()
        .map(|x| {
            let bus = h.expander_bus(x);
            let devices = h
                .expander_ports(x)
                .iter()
                .filter_map(|&i| {
                    let devfn = spec.root_ports.get(i)?.addr.0;
                    port(h, i, bus, devfn, 0)
                })
                .collect::<Vec<_>>();
            // By devfn, as QEMU walks a bus.
            let mut devices = devices;
            devices.sort_by_key(|d| (d.slot, d.function));
            PciInfo {
                bus,
                devices,
                segment,
            }
        })
        .collect();
    info.push(PciInfo {
        bus: 0,
        devices,
        segment,
    });
    info
}

/// Port `i` at (`bus`, `devfn`) with, when its Secondary Bus Number is non-zero, what sits on
/// its secondary bus: the switch ports pcierc emulates (nested in turn, as QEMU's
/// `qmp_query_pci_bridge()` nests `pci_bridge.devices`) and the functions other emulators
/// serve, by devfn. `depth` bounds the recursion by the number of ports (the spec has no
/// cycles; the bound only guards a broken one).
fn port(h: &Hierarchy, i: usize, bus: u8, devfn: u8, depth: usize) -> Option<PciDeviceInfo> {
    let spec = h.spec();
    let (p, ps) = (h.ports().get(i)?, spec.root_ports.get(i)?);
    let mut info = emulated(p, bus, devfn, &ps.config.id);
    if let Some(bridge) = info.pci_bridge.as_mut() {
        let secondary = bridge.bus.secondary;
        if secondary != 0 && depth <= h.ports().len() {
            let below = h
                .children_of(i)
                .filter_map(|(devfn, slot)| match slot {
                    Slot::Port(j) => port(h, usize::from(j), secondary, devfn, depth + 1),
                    Slot::Bridge(j) => pci_bridge(h, usize::from(j), secondary, devfn),
                    Slot::Endpoint(e) => spec
                        .endpoints
                        .get(usize::from(e))
                        .map(|e| remote(e, secondary)),
                    Slot::Mch | Slot::Empty | Slot::Expander(_) => None,
                })
                .collect();
            bridge.devices = Some(below);
        }
    }
    Some(info)
}

/// `pcie-pci-bridge` `j` at (`bus`, `devfn`) with, when its Secondary Bus Number is non-zero,
/// the functions other emulators serve on its secondary bus, by devfn (as [`port`] does).
fn pci_bridge(h: &Hierarchy, j: usize, bus: u8, devfn: u8) -> Option<PciDeviceInfo> {
    let spec = h.spec();
    let (b, bs) = (h.bridges().get(j)?, spec.bridges.get(j)?);
    let mut info = emulated(b, bus, devfn, &bs.config.id);
    if let Some(pb) = info.pci_bridge.as_mut() {
        let secondary = pb.bus.secondary;
        if secondary != 0 {
            let below = h
                .endpoints_below(h.ports().len() + j)
                .into_iter()
                .filter_map(|e| spec.endpoints.get(e))
                .map(|e| remote(e, secondary))
                .collect();
            pb.devices = Some(below);
        }
    }
    Some(info)
}

/// A function served by another emulator: see [`from_hierarchy`].
fn remote(e: &EndpointSpec, bus: u8) -> PciDeviceInfo {
    PciDeviceInfo {
        bus,
        slot: e.addr.device(),
        function: e.addr.function(),
        class_info: PciDeviceClass {
            desc: None,
            class: UNKNOWN_ID,
        },
        id: PciDeviceId {
            device: UNKNOWN_ID,
            vendor: UNKNOWN_ID,
            subsystem: None,
            subsystem_vendor: None,
        },
        irq: None,
        irq_pin: 0,
        qdev_id: e.id.clone(),
        pci_bridge: None,
        regions: Vec::new(),
    }
}

/// Configuration registers of a function pcierc emulates (naturally aligned reads).
struct Regs<'a>(&'a dyn PciFunction);

impl Regs<'_> {
    fn byte(&self, offset: u16) -> u8 {
        self.0.config_read(offset, 1) as u8
    }
    fn word(&self, offset: u16) -> u16 {
        self.0.config_read(offset, 2) as u16
    }
    fn dword(&self, offset: u16) -> u32 {
        self.0.config_read(offset, 4)
    }
}

/// QEMU's `qmp_query_pci_device()` for a function pcierc emulates (`pci_bridge.devices` is
/// filled in by the caller, which knows what is behind it).
fn emulated<F: PciFunction + Clone>(f: &F, bus: u8, devfn: u8, qdev_id: &str) -> PciDeviceInfo {
    let r = Regs(f);
    let class = r.word(CLASS_DEVICE);
    let header_type = r.byte(HEADER_TYPE) & !HEADER_TYPE_MULTI_FUNCTION;
    let pin = r.byte(INTERRUPT_PIN);
    let subsystem = match header_type {
        HEADER_TYPE_NORMAL => Some((SUBSYSTEM_VENDOR_ID, SUBSYSTEM_ID)),
        HEADER_TYPE_CARDBUS => Some((CB_SUBSYSTEM_VENDOR_ID, CB_SUBSYSTEM_ID)),
        _ => None,
    };
    PciDeviceInfo {
        bus,
        slot: devfn >> 3,
        function: devfn & 7,
        class_info: PciDeviceClass {
            // get_class_desc(): the first entry for the class word.
            desc: CLASS_DESCRIPTIONS
                .iter()
                .find(|(c, _)| *c == class)
                .map(|(_, d)| *d),
            class,
        },
        id: PciDeviceId {
            device: r.word(DEVICE_ID),
            vendor: r.word(VENDOR_ID),
            subsystem: subsystem.map(|(_, id)| r.word(id)),
            subsystem_vendor: subsystem.map(|(vendor, _)| r.word(vendor)),
        },
        irq: (pin != 0).then(|| r.byte(INTERRUPT_LINE)),
        irq_pin: pin,
        qdev_id: qdev_id.to_string(),
        pci_bridge: (header_type == HEADER_TYPE_BRIDGE).then(|| bridge_info(&r)),
        regions: regions(f, header_type),
    }
}

/// QEMU's `qmp_query_pci_bridge()` without `devices`.
fn bridge_info(r: &Regs) -> PciBridgeInfo {
    let range = |(base, limit): (u64, u64)| PciMemoryRange {
        // The schema's members are int64: QEMU prints pcibus_t values above 2^63 negative.
        base: base as i64,
        limit: limit as i64,
    };
    PciBridgeInfo {
        bus: PciBusInfo {
            number: r.byte(PRIMARY_BUS),
            secondary: r.byte(SECONDARY_BUS),
            subordinate: r.byte(SUBORDINATE_BUS),
            io_range: range(io_window(r)),
            memory_range: range(memory_window(r)),
            prefetchable_range: range(prefetchable_window(r)),
        },
        devices: None,
    }
}

/// `pci_bridge_get_base/limit(PCI_BASE_ADDRESS_SPACE_IO)`: `pci_config_get_io_base()` for I/O
/// Base and Limit (PCI-to-PCI Bridge 1.2 §3.2.5.6, upper 16 bits §3.2.5.10 when the type
/// bit says 32-bit), the limit's low 12 bits set.
fn io_window(r: &Regs) -> (u64, u64) {
    let part = |reg: u16, upper: u16| {
        let v = r.byte(reg);
        let mut addr = u64::from(v & IO_RANGE_MASK) << 8;
        if v & IO_RANGE_TYPE_32 != 0 {
            addr |= u64::from(r.word(upper)) << 16;
        }
        addr
    };
    (
        part(IO_BASE, IO_BASE_UPPER16),
        part(IO_LIMIT, IO_LIMIT_UPPER16) | 0xfff,
    )
}

/// `pci_bridge_get_base/limit(PCI_BASE_ADDRESS_SPACE_MEMORY)`: `pci_config_get_memory_base()`
/// (PCI-to-PCI Bridge 1.2 §3.2.5.8), the limit's low 20 bits set.
fn memory_window(r: &Regs) -> (u64, u64) {
    let part = |reg: u16| u64::from(r.word(reg) & MEMORY_RANGE_MASK) << 16;
    (part(MEMORY_BASE), part(MEMORY_LIMIT) | 0xf_ffff)
}

/// `pci_bridge_get_base/limit(PCI_BASE_ADDRESS_MEM_PREFETCH)`: `pci_config_get_pref_base()`
/// (PCI-to-PCI Bridge 1.2 §3.2.5.9, upper 32 bits when the type bit says 64-bit), the limit's
/// low 20 bits set.
fn prefetchable_window(r: &Regs) -> (u64, u64) {
    let part = |reg: u16, upper: u16| {
        let v = r.word(reg);
        let mut addr = u64::from(v & PREF_RANGE_MASK) << 16;
        if v & PREF_RANGE_TYPE_64 != 0 {
            addr |= u64::from(r.dword(upper)) << 32;
        }
        addr
    };
    (
        part(PREF_MEMORY_BASE, PREF_BASE_UPPER32),
        part(PREF_MEMORY_LIMIT, PREF_LIMIT_UPPER32) | 0xf_ffff,
    )
}

/// What a BAR is, as QEMU registered it (`PCIIORegion.type`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum BarKind {
    Io,
    Memory { prefetch: bool, mem64: bool },
}

/// QEMU's `qmp_query_pci_regions()`: every implemented BAR (and the expansion ROM, index 6)
/// with the address `pci_bar_address()` decodes now.
///
/// QEMU knows each region's size from `pci_register_bar()`; pcierc finds it as firmware does
/// (PCI Local Bus 3.0 §6.2.5.1): all ones written to the BAR of a copy of the function, the
/// writable bits read back. The function itself is not touched.
fn regions<F: PciFunction + Clone>(f: &F, header_type: u8) -> Vec<PciMemoryRegion> {
    let (bars, rom) = match header_type {
        HEADER_TYPE_NORMAL => (6u8, Some(ROM_ADDRESS)),
        HEADER_TYPE_BRIDGE => (2, Some(ROM_ADDRESS1)),
        _ => (0, None),
    };
    let r = Regs(f);
    let mut probe = f.clone();
    let mut sized = |reg: u16| {
        probe.config_write(reg, 4, u32::MAX);
        probe.config_read(reg, 4)
    };
    let mut out = Vec::new();
    let mut i = 0u8;
    while i < bars {
        let reg = BAR0 + 4 * u16::from(i);
        let value = r.dword(reg);
        let mask = sized(reg);
        let mut next = i + 1;
        let (kind, size) = if value & BAR_SPACE_IO != 0 {
            (BarKind::Io, lowest_bit(u64::from(mask & BAR_IO_MASK)))
        } else {
            let mem64 = value & BAR_MEM_TYPE_MASK == BAR_MEM_TYPE_64 && i + 1 < bars;
            let mut m = u64::from(mask & BAR_MEM_MASK);
            if mem64 {
                next = i + 2;
                m |= u64::from(sized(reg + 4)) << 32;
            }
            let prefetch = value & BAR_MEM_PREFETCH != 0;
            (BarKind::Memory { prefetch, mem64 }, lowest_bit(m))
        };
        if size != 0 {
            out.push(region(&r, i, reg, kind, size));
        }
        i = next;
    }
    if let Some(reg) = rom {
        let size = lowest_bit(u64::from(sized(reg) & ROM_ADDRESS_MASK));
        if size != 0 {
            // pci_add_option_rom() registers the ROM as 32-bit non-prefetchable memory.
            let kind = BarKind::Memory {
                prefetch: false,
                mem64: false,
            };
            out.push(region(&r, ROM_SLOT, reg, kind, size));
        }
    }
    out
}

/// A region's size from the address bits that read back set after all ones were written: the
/// lowest of them (0: the register is not implemented).
fn lowest_bit(mask: u64) -> u64 {
    mask & mask.wrapping_neg()
}

fn region(r: &Regs, index: u8, reg: u16, kind: BarKind, size: u64) -> PciMemoryRegion {
    let (name, prefetch, mem64) = match kind {
        BarKind::Io => ("io", None, None),
        BarKind::Memory { prefetch, mem64 } => ("memory", Some(prefetch), Some(mem64)),
    };
    PciMemoryRegion {
        bar: index,
        kind: name,
        address: bar_address(r, index, reg, kind, size).map_or(BAR_UNMAPPED, |a| a as i64),
        size: size as i64,
        prefetch,
        mem_type_64: mem64,
    }
}

/// QEMU 7.2's `pci_bar_address()` on Q35 (`pci_allow_0_address` off): where the region is
/// decoded, `None` (`PCI_BAR_UNMAPPED`) when Command disables its space (PCI Local Bus 3.0
/// §6.2.2), the ROM is not enabled (§6.2.5.2), the address is 0, the region wraps or ends at
/// the top of its address space, or a 32-bit region ends at or above 4 GiB - 1 (QEMU's
/// workaround for 32-bit BARs).
fn bar_address(r: &Regs, index: u8, reg: u16, kind: BarKind, size: u64) -> Option<u64> {
    let cmd = r.word(COMMAND);
    let (raw, mem64) = match kind {
        BarKind::Io => {
            if cmd & COMMAND_IO == 0 {
                return None;
            }
            let new = u64::from(r.dword(reg)) & !(size - 1);
            let last = new.wrapping_add(size - 1);
            return (last > new && last < u64::from(u32::MAX) && new != 0).then_some(new);
        }
        BarKind::Memory { mem64, .. } => {
            if cmd & COMMAND_MEMORY == 0 {
                return None;
            }
            let raw = if mem64 {
                u64::from(r.dword(reg)) | u64::from(r.dword(reg + 4)) << 32
            } else {
                u64::from(r.dword(reg))
            };
            (raw, mem64)
        }
    };
    if index == ROM_SLOT && raw & u64::from(ROM_ADDRESS_ENABLE) == 0 {
        return None;
    }
    let new = raw & !(size - 1);
    let last = new.wrapping_add(size - 1);
    if last <= new || last == u64::MAX || new == 0 {
        return None;
    }
    if !mem64 && last >= u64::from(u32::MAX) {
        return None;
    }
    Some(new)
}

#[cfg(test)]
mod tests;
