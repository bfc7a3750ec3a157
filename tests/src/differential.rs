//! Differential testing of configuration space: the same accesses against two targets (QEMU and
//! pcierc), every read compared.
//!
//! A [`ConfigTarget`] is anything that answers configuration accesses (through its native path,
//! ECAM for QEMU), configuration mechanism #1, guest memory (to probe where ECAM and BARs
//! decode) and a platform reset. [`QtestTarget`] drives any qtest peer (QEMU, or `pcierc qtest`);
//! `tests/models_vs_qemu.rs` runs pcierc's models in-process. [`Differential`] generates the
//! accesses, runs them on both sides in batches and collects mismatches.

use std::ops::Range;
use std::rc::Rc;

pub use crate::qtest_target::QtestTarget;

/// Where QEMU's firmware (and these tests) put ECAM: PCIEXBAR base 0xb0000000, 256 buses.
pub const ECAM_BASE: u64 = 0xb000_0000;
/// I/O port of CONFIG_ADDRESS.
pub const CONFIG_ADDRESS: u16 = 0xcf8;
/// First I/O port of CONFIG_DATA.
pub const CONFIG_DATA: u16 = 0xcfc;
/// The ICH9 reset control register (write 0x06 for a hard reset).
pub const RESET_CONTROL: u16 = 0xcf9;

/// A configuration register of a function.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Reg {
    /// Bus.
    pub bus: u8,
    /// Device and function.
    pub devfn: u8,
    /// Register offset.
    pub offset: u16,
    /// 1, 2 or 4 bytes.
    pub width: u8,
}

/// One access.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Configuration read through the target's native path.
    Read(Reg),
    /// Configuration write through the target's native path.
    Write(Reg, u32),
    /// Configuration read through CONFIG_ADDRESS/CONFIG_DATA (offset below 256).
    Cf8Read(Reg),
    /// Configuration write through CONFIG_ADDRESS/CONFIG_DATA.
    Cf8Write(Reg, u32),
    /// Guest memory read of (address, width 1/2/4/8).
    MemRead(u64, u8),
    /// Guest memory write of (address, width, data).
    MemWrite(u64, u8, u64),
}

impl Reg {
    /// The register `width` bytes wide at `offset` of (bus, devfn).
    pub const fn new(bus: u8, devfn: u8, offset: u16, width: u8) -> Self {
        Reg {
            bus,
            devfn,
            offset,
            width,
        }
    }
}

impl Op {
    /// Does this access produce a value to compare?
    pub fn is_read(&self) -> bool {
        matches!(self, Op::Read(_) | Op::Cf8Read(_) | Op::MemRead(..))
    }
}

/// Something that answers configuration accesses.
pub trait ConfigTarget {
    /// Configuration read through the native path.
    fn read(&mut self, bus: u8, devfn: u8, offset: u16, width: u8) -> u32;
    /// Configuration write through the native path.
    fn write(&mut self, bus: u8, devfn: u8, offset: u16, width: u8, value: u32);
    /// Configuration read through mechanism #1.
    fn cf8_read(&mut self, bus: u8, devfn: u8, offset: u16, width: u8) -> u32;
    /// Configuration write through mechanism #1.
    fn cf8_write(&mut self, bus: u8, devfn: u8, offset: u16, width: u8, value: u32);
    /// Guest memory read.
    fn mem_read(&mut self, addr: u64, width: u8) -> u64;
    /// Guest memory write.
    fn mem_write(&mut self, addr: u64, width: u8, value: u64);
    /// A platform reset, then ECAM enabled again at [`ECAM_BASE`].
    fn platform_reset(&mut self);
    /// Run `ops` in order; the values of the reads, in order.
    fn run(&mut self, ops: &[Op]) -> Vec<u64> {
        let mut out = Vec::new();
        for op in ops {
            match *op {
                Op::Read(r) => out.push(self.read(r.bus, r.devfn, r.offset, r.width).into()),
                Op::Write(r, v) => self.write(r.bus, r.devfn, r.offset, r.width, v),
                Op::Cf8Read(r) => out.push(self.cf8_read(r.bus, r.devfn, r.offset, r.width).into()),
                Op::Cf8Write(r, v) => self.cf8_write(r.bus, r.devfn, r.offset, r.width, v),
                Op::MemRead(addr, width) => out.push(self.mem_read(addr, width)),
                Op::MemWrite(addr, width, value) => self.mem_write(addr, width, value),
            }
        }
        out
    }
}

/// CONFIG_ADDRESS for (bus, devfn, offset) with the enable bit (PCI Local Bus 3.0 §3.2.2.3.2).
pub fn config_address(bus: u8, devfn: u8, offset: u16) -> u32 {
    1 << 31 | u32::from(bus) << 16 | u32::from(devfn) << 8 | u32::from(offset & 0xfc)
}

/// ECAM address of (bus, devfn, offset) (PCIe Base 6.0 §7.2.2).
pub fn ecam_address(bus: u8, devfn: u8, offset: u16) -> u64 {
    ECAM_BASE + (u64::from(bus) << 20 | u64::from(devfn) << 12 | u64::from(offset & 0xfff))
}

/// Which model a function is.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The Q35 MCH.
    Mch,
    /// A `pcie-root-port`.
    RootPort,
    /// An `ioh3420` root port (MSI, capabilities at other offsets).
    Ioh3420,
    /// A `pcie-pci-bridge` (SHPC in BAR0, MSI at 0x8c unless `msi=off`).
    PciePciBridge,
    /// A switch's `x3130-upstream` port.
    X3130Upstream,
    /// A switch's `xio3130-downstream` port.
    Xio3130Downstream,
    /// A `pxb-pcie` expander bridge's function (type 0, host bridge class).
    PxbPcie,
}

impl Kind {
    /// Is it a type 1 function (a port or a bridge) whose bus numbers the tests put back?
    pub fn is_port(self) -> bool {
        !matches!(self, Kind::Mch | Kind::PxbPcie)
    }

    /// The model a QEMU `-device` argument (`DRIVER,...`) names, if the tests know it.
    pub fn of_device(arg: &str) -> Option<Kind> {
        match arg.split(',').next()? {
            "pcie-root-port" => Some(Kind::RootPort),
            "ioh3420" => Some(Kind::Ioh3420),
            "pcie-pci-bridge" => Some(Kind::PciePciBridge),
            "x3130-upstream" => Some(Kind::X3130Upstream),
            "xio3130-downstream" => Some(Kind::Xio3130Downstream),
            "pxb-pcie" => Some(Kind::PxbPcie),
            _ => None,
        }
    }

    /// The dword holding the port's Slot Control, if it has a slot.
    fn slot_control(self) -> Option<u16> {
        match self {
            Kind::RootPort => Some(0x6c),
            Kind::Ioh3420 | Kind::Xio3130Downstream => Some(0xa8),
            Kind::Mch | Kind::X3130Upstream | Kind::PciePciBridge | Kind::PxbPcie => None,
        }
    }
}

/// A function both targets have.
#[derive(Clone, Debug)]
pub struct Function {
    /// Name in reports.
    pub name: String,
    /// Model.
    pub kind: Kind,
    /// Bus it sits on once the bus numbers are programmed ([`Differential::with_bus_numbers`]).
    pub bus: u8,
    /// Device and function.
    pub devfn: u8,
}

/// A documented, deliberate difference: `bits` of the register at `offsets` of `kind` functions
/// may differ; every other bit of a read covering them is still compared.
#[derive(Clone, Debug)]
pub struct Deviation {
    /// Model.
    pub kind: Kind,
    /// Configuration offsets.
    pub offsets: Range<u16>,
    /// The bits that may differ, little-endian from `offsets.start`.
    pub bits: u64,
    /// Why (see `docs/qemu-compat.md`).
    pub reason: &'static str,
}

impl Deviation {
    /// The bits of a `width`-byte read at `offset` that this deviation lets differ.
    fn bits_in(&self, offset: u64, width: u8) -> u64 {
        (0..u64::from(width))
            .filter_map(|b| {
                let at = offset + b;
                let start = u64::from(self.offsets.start);
                let rel = at.checked_sub(start)?;
                (at < u64::from(self.offsets.end) && rel < 8)
                    .then(|| ((self.bits >> (8 * rel)) & 0xff) << (8 * b))
            })
            .fold(0, |a, b| a | b)
    }
}

/// The deviations visible in configuration space. (The reserved PCIEXBAR length, where QEMU
/// aborts and pcierc disables ECAM, is never written to QEMU.)
pub const DEVIATIONS: &[Deviation] = &[
    Deviation {
        kind: Kind::RootPort,
        // Root Control: the PCI Express capability at 0x54 + 0x1c.
        offsets: 0x70..0x72,
        bits: 1 << 3,
        reason: "Root Control PME Interrupt Enable is writable: pcierc implements PME",
    },
    Deviation {
        kind: Kind::RootPort,
        // Slot Control: 0x54 + 0x18.
        offsets: 0x6c..0x6e,
        bits: 1 << 12,
        reason: "Slot Control DLL State Changed Enable is writable: pcierc reports link changes",
    },
    Deviation {
        kind: Kind::Ioh3420,
        // Root Control: the PCI Express capability at 0x90 + 0x1c.
        offsets: 0xac..0xae,
        bits: 1 << 3,
        reason: "Root Control PME Interrupt Enable is writable: pcierc implements PME",
    },
    Deviation {
        kind: Kind::Ioh3420,
        // Slot Control: 0x90 + 0x18.
        offsets: 0xa8..0xaa,
        bits: 1 << 12,
        reason: "Slot Control DLL State Changed Enable is writable: pcierc reports link changes",
    },
    Deviation {
        kind: Kind::Xio3130Downstream,
        // Slot Control: 0x90 + 0x18.
        offsets: 0xa8..0xaa,
        bits: 1 << 12,
        reason: "Slot Control DLL State Changed Enable is writable: pcierc reports link changes",
    },
];

/// One differing read.
#[derive(Clone, Debug)]
pub struct Mismatch {
    /// Function name, or "memory" for guest-memory probes.
    pub function: String,
    /// Configuration offset or guest-physical address.
    pub offset: u64,
    /// Access width.
    pub width: u8,
    /// The step and pattern that led here.
    pub step: String,
    /// QEMU's value.
    pub qemu: u64,
    /// pcierc's value.
    pub ours: u64,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (func, off, w, step) = (&self.function, self.offset, self.width, &self.step);
        write!(
            f,
            "{func} {off:#05x}/{w} [{step}]: qemu {:#x}, pcierc {:#x}",
            self.qemu, self.ours
        )
    }
}

#[derive(Clone, Debug)]
struct Label {
    function: Option<usize>,
    offset: u64,
    width: u8,
    step: Rc<str>,
}

/// A batch of accesses with a label for every read, run on both sides by [`Differential::run`].
pub struct Script {
    step: Rc<str>,
    ops: Vec<Op>,
    labels: Vec<Label>,
}

impl Script {
    /// An empty batch; reads are labelled with `step` until [`Script::step`] changes it.
    pub fn new(step: &str) -> Self {
        Script {
            step: step.into(),
            ops: Vec::new(),
            labels: Vec::new(),
        }
    }

    /// Label the following reads with `step`.
    pub fn step(&mut self, step: &str) {
        self.step = step.into();
    }

    /// Append a raw access; reads are labelled with `function` (an index) and `offset`.
    pub fn push(&mut self, op: Op, function: Option<usize>, offset: u64) {
        if op.is_read() {
            let width = match op {
                Op::Read(r) | Op::Cf8Read(r) => r.width,
                Op::MemRead(_, w) => w,
                _ => 0,
            };
            self.labels.push(Label {
                function,
                offset,
                width,
                step: self.step.clone(),
            });
        }
        self.ops.push(op);
    }
}

/// The comparison engine: generates accesses for the functions under test and compares every
/// read of `qemu` and `ours`.
pub struct Differential<'a> {
    qemu: &'a mut dyn ConfigTarget,
    ours: &'a mut dyn ConfigTarget,
    functions: Vec<Function>,
    deviations: &'a [Deviation],
    compared: usize,
    allowed: usize,
    ops: usize,
    mismatches: Vec<Mismatch>,
    /// (bus, devfn, dword at 0x18) programmed so that functions behind ports are reachable.
    numbering: Vec<(u8, u8, u32)>,
    /// (bus, devfn) of the ports whose slot holds a switch: their Slot Control is not written
    /// (see `protected`).
    switch_slots: Vec<(u8, u8)>,
}

/// The dword patterns written everywhere.
pub const PATTERNS: [u32; 4] = [0xffff_ffff, 0x0000_0000, 0xa5a5_a5a5, 0x5a5a_5a5a];
/// Where the root ports' MSI-X BARs are placed (one MiB apart), below QEMU's IOAPIC.
pub const BAR_BASE: u64 = 0xfe00_0000;

/// (low, high) dwords the PCIEXBAR step programs, in order; never the reserved length.
#[rustfmt::skip]
const PCIEXBAR_STATES: [(u32, u32); 9] = [
    (0xe000_0001, 0), (0xe000_0003, 0), (0xe000_0005, 0), (0xb800_0003, 0), (0xb600_0005, 0),
    (0xb000_0001, 1), (0xbfff_fff1, 0xffff_ffff), (0xb000_0000, 0), (0xb000_0001, 0),
];
/// Candidate ECAM bases probed after each PCIEXBAR state.
#[rustfmt::skip]
const PCIEXBAR_PROBES: [u64; 9] = [
    0xb000_0000, 0xb200_0000, 0xb400_0000, 0xb600_0000, 0xb800_0000, 0xe000_0000, 0xe400_0000,
    0x1_b000_0000, 0xf_b000_0000,
];
/// MSI-X BAR offsets read at every width: table, its end, the hole, PBA, the BAR's end.
#[rustfmt::skip]
const MSIX_OFFSETS: [u64; 18] = [
    0, 2, 4, 6, 8, 0xa, 0xc, 0xe, 0x10, 0x14, 0x7fc, 0x800, 0x802, 0x804, 0x806, 0x808, 0xff8, 0xffc,
];
/// MSI-X BAR writes (offset, width, value): whole and partial table dwords, unaligned and
/// straddling accesses, the hole and the PBA.
#[rustfmt::skip]
const MSIX_WRITES: [(u64, u8, u64); 12] = [
    (0x0, 4, 0xfee0_0000), (0x4, 4, 0x1), (0x8, 4, 0x4041), (0xc, 1, 0), (0xc, 2, 0),
    (0x0, 8, 0x1122_3344_5566_7788), (0x2, 4, 0xdead_beef), (0x6, 8, u64::MAX),
    (0x10, 4, 0xffff_ffff), (0x800, 4, 0xffff_ffff), (0x7fc, 8, u64::MAX), (0xc, 4, 0xffff_ffff),
];
/// Hot-plug events against MSI-X state: (step, config offset or 0xffff for the vector's mask
/// in the table, width, value). Masked events pend in the PBA; unmasking delivers them; with
/// MSI-X off, INTx (Status bit 3) is what QEMU shows.
#[rustfmt::skip]
const HOTPLUG_SEQUENCE: [(&str, u16, u8, u32); 12] = [
    ("vector masked", 0xffff, 0, 1), ("msix enable+maskall", 0x48, 4, 0xc000_0000),
    ("sltctl hpie+ccie", 0x6c, 2, 0x0030), ("function unmask", 0x48, 4, 0x8000_0000),
    ("vector unmask", 0xffff, 0, 0), ("clear cc", 0x6e, 2, 0x0010), ("sltctl again", 0x6c, 2, 0x0030),
    ("vector mask", 0xffff, 0, 1), ("sltctl hpie only", 0x6c, 2, 0x0020), ("msix off", 0x48, 4, 0),
    ("clear cc again", 0x6e, 2, 0x0010), ("sltctl intx", 0x6c, 4, 0x0000_0030),
];

/// Hot-plug events against an `ioh3420`'s MSI state: (step, config offset, width, value). Its
/// MSI capability is at 0x60 (flags 0x62, address 0x64, data 0x68, mask bits 0x6c, pending bits
/// 0x70), Slot Control/Status at 0xa8/0xaa. Masked vectors pend in the pending bits; unmasking
/// with MSI enabled delivers them; with MSI off, INTx (Status bit 3) is what QEMU shows, and
/// enabling MSI drops it.
#[rustfmt::skip]
const MSI_HOTPLUG_SEQUENCE: [(&str, u16, u8, u32); 16] = [
    ("msi address", 0x64, 4, 0xfee0_0000), ("msi data", 0x68, 2, 0x4041),
    ("vector 0 masked", 0x6c, 4, 1), ("msi on, two vectors", 0x62, 2, 0x0011),
    ("sltctl hpie+ccie", 0xa8, 2, 0x0030), ("vector unmask", 0x6c, 4, 0),
    ("clear cc", 0xaa, 2, 0x0010), ("both masked", 0x6c, 4, 3), ("sltctl again", 0xa8, 2, 0x0030),
    ("eight vectors while on", 0x62, 2, 0x0031), ("msi off", 0x62, 2, 0),
    ("clear cc again", 0xaa, 2, 0x0010), ("sltctl intx", 0xa8, 4, 0x0000_0030),
    ("msi on with intx up", 0x62, 2, 0x0001), ("vector 1 unmasked", 0x6c, 1, 1),
    ("msi off, one vector", 0x62, 1, 0),
];

/// SHPC BAR offsets also read at widths 1, 2 and 8: unaligned, straddling, the register set's
/// end (0xa0) and the BAR's.
#[rustfmt::skip]
const SHPC_ODD_OFFSETS: [u64; 14] = [0, 1, 2, 3, 0xd, 0xe, 0x13, 0x15, 0x17, 0x1f, 0x26, 0x9e, 0x9f, 0xf8];

/// SHPC BAR writes (offset, width, value): unaligned and straddling accesses over the command
/// and mask registers (a write reaching the command byte runs the command), 8-byte writes.
#[rustfmt::skip]
const SHPC_WRITES: [(u64, u8, u64); 10] = [
    (0x13, 2, 0x0cff), (0x15, 1, 0x02), (0x12, 4, 0x0102_0300), (0x10, 8, 0x0000_0301_0000_0000),
    (0x17, 1, 0xff), (0x1e, 4, 0x0001_0000), (0x22, 2, 0x0003), (0x26, 2, 0x0707),
    (0x9c, 8, u64::MAX), (0xa0, 4, 0xffff_ffff),
];

/// Where an SHPC sequence step writes.
#[derive(Copy, Clone, Debug)]
enum Shpc {
    /// An offset in BAR0.
    Bar(u64),
    /// A configuration offset.
    Config(u16),
}

/// Slot and controller commands (the Command register at 0x14 takes code | target << 8), event
/// masks, MSI and the capability's DWORD Select (0x42) / Data (0x44), in an order that shows
/// the interrupt: (step, where, width, value). The MSI capability is at 0x8c (flags 0x8e,
/// address 0x90, data 0x98, mask 0x9c, pending 0xa0); a bridge with `msi=off` ignores those
/// writes, as the free bytes there are written through.
#[rustfmt::skip]
const SHPC_SEQUENCE: [(&str, Shpc, u8, u32); 39] = [
    ("serr-int unmask all", Shpc::Bar(0x20), 4, 0x0003_0000),
    ("slot 1 events unmasked", Shpc::Bar(0x27), 1, 0),
    ("power-only slot 1", Shpc::Bar(0x14), 2, 0x0105),
    ("enable slot 1", Shpc::Bar(0x14), 2, 0x0106),
    ("enabled to power-only", Shpc::Bar(0x14), 2, 0x0105),
    ("blink slot 1", Shpc::Bar(0x14), 2, 0x0108),
    ("attention on slot 1", Shpc::Bar(0x14), 2, 0x0110),
    ("disable slot 1, indicators off", Shpc::Bar(0x14), 2, 0x013f),
    ("clear slot 1 latch", Shpc::Bar(0x26), 1, 0x1f),
    ("slot 31", Shpc::Bar(0x14), 2, 0x1f0d),
    ("slot 32 invalid", Shpc::Bar(0x14), 2, 0x200d),
    ("target 0", Shpc::Bar(0x14), 2, 0x0006),
    ("power-only all", Shpc::Bar(0x14), 2, 0x0048),
    ("enable all", Shpc::Bar(0x14), 2, 0x0049),
    ("speed 33", Shpc::Bar(0x14), 2, 0x0040),
    ("speed 66", Shpc::Bar(0x14), 2, 0x0041),
    ("speed 0x47", Shpc::Bar(0x14), 2, 0x0047),
    ("code 0x4a", Shpc::Bar(0x14), 2, 0x004a),
    ("code 0xff", Shpc::Bar(0x14), 2, 0x00ff),
    ("clear command detected", Shpc::Bar(0x20), 4, 0x0001_0000),
    ("command interrupt masked", Shpc::Bar(0x20), 4, 0x0000_0004),
    ("command again", Shpc::Bar(0x14), 2, 0x0203),
    ("global mask", Shpc::Bar(0x20), 4, 0x0001_0001),
    ("msi address", Shpc::Config(0x90), 4, 0xfee0_0000),
    ("msi data", Shpc::Config(0x98), 2, 0x4041),
    ("msi on", Shpc::Config(0x8e), 2, 0x0001),
    ("unmask, command", Shpc::Bar(0x20), 4, 0x0001_0000),
    ("command, same level", Shpc::Bar(0x14), 2, 0x0308),
    ("msi vector masked", Shpc::Config(0x9c), 4, 1),
    ("clear, falling edge", Shpc::Bar(0x20), 4, 0x0001_0000),
    ("command while masked", Shpc::Bar(0x14), 2, 0x030c),
    ("msi vector unmasked", Shpc::Config(0x9c), 4, 0),
    ("dword select command", Shpc::Config(0x42), 1, 5),
    ("dword data write", Shpc::Config(0x44), 4, 0xdead_beef),
    ("dword select 9 (slot 1)", Shpc::Config(0x40), 4, 0x0009_0000),
    ("msi off, intx", Shpc::Config(0x8e), 2, 0),
    ("command with intx", Shpc::Bar(0x14), 2, 0x0308),
    ("intx disabled, level up", Shpc::Config(0x04), 2, 0x0402),
    ("intx enabled again", Shpc::Config(0x04), 2, 0x0002),
];

/// Hot-plug events against an `xio3130-downstream`'s MSI (one 64-bit vector, no masking, at
/// 0x70: flags 0x72, address 0x74/0x78, data 0x7c; Slot Control/Status at 0xa8/0xaa): with MSI
/// on, slot events send it; with MSI off the port has no INTx (Interrupt Pin 0) and Status shows
/// nothing.
#[rustfmt::skip]
const SWITCH_MSI_HOTPLUG_SEQUENCE: [(&str, u16, u8, u32); 9] = [
    ("msi address", 0x74, 4, 0xfee0_0000), ("msi address high", 0x78, 4, 0),
    ("msi data", 0x7c, 2, 0x4041), ("msi on", 0x72, 2, 0x0001),
    ("sltctl hpie+ccie", 0xa8, 2, 0x0030), ("clear cc", 0xaa, 2, 0x0010),
    ("msi off", 0x72, 2, 0), ("sltctl intx?", 0xa8, 4, 0x0000_0030),
    ("clear cc again", 0xaa, 2, 0x0010),
];

/// Would this write make QEMU 7.2 abort? `ioh3420_aer_vector()` aborts when Multiple Message
/// Enable says more than two vectors while MSI is off (it is clamped only while MSI is on); see
/// docs/qemu-compat.md. Such writes are left out of the patterns.
fn aborts_qemu(kind: Kind, offset: u16, width: u8, value: u32) -> bool {
    if kind != Kind::Ioh3420 {
        return false;
    }
    // The bytes written to Message Control (0x62, 0x63).
    let flags = (0..u16::from(width))
        .filter(|b| (0x62..0x64).contains(&(offset + b)))
        .fold(0u16, |f, b| {
            f | (((value >> (8 * b)) & 0xff) as u16) << (8 * (offset + b - 0x62))
        });
    let touches = (0..u16::from(width)).any(|b| offset + b == 0x62);
    touches && flags & 1 == 0 && (flags >> 4) & 7 > 1
}

impl<'a> Differential<'a> {
    /// Compare `ours` against `qemu` on `functions`, tolerating `deviations`.
    pub fn new(
        qemu: &'a mut dyn ConfigTarget,
        ours: &'a mut dyn ConfigTarget,
        functions: Vec<Function>,
        deviations: &'a [Deviation],
    ) -> Self {
        Differential {
            qemu,
            ours,
            functions,
            deviations,
            compared: 0,
            allowed: 0,
            ops: 0,
            mismatches: Vec::new(),
            numbering: Vec::new(),
            switch_slots: Vec::new(),
        }
    }

    /// Program these Primary/Secondary/Subordinate Bus Number dwords, (bus, devfn, value) in
    /// order, before the comparison, after each platform reset, and after every write that may
    /// have changed or reset them (bus numbers, Bridge Control, Device Control's Function Level
    /// Reset), so that the functions behind ports stay reachable. The ports at the devfns of
    /// bus 0 in `switch_slots` hold a switch in their slot: their Slot Control is never written (a
    /// guest powering such a slot off makes QEMU 7.2 delete the switch, docs/qemu-compat.md).
    pub fn with_bus_numbers(mut self, numbering: &[(u8, u8, u32)], switch_slots: &[u8]) -> Self {
        self.numbering = numbering.to_vec();
        self.switch_slots = switch_slots.iter().map(|&d| (0, d)).collect();
        self
    }

    /// Also leave the Slot Control of the ports at these (bus, devfn) alone (ports on an
    /// expander's root bus holding a switch, say): as `switch_slots` of
    /// [`Differential::with_bus_numbers`], anywhere.
    pub fn with_held_slots(mut self, slots: &[(u8, u8)]) -> Self {
        self.switch_slots.extend_from_slice(slots);
        self
    }

    /// Append the bus-number writes of [`Differential::with_bus_numbers`] to `s`.
    fn renumber(&self, s: &mut Script) {
        for &(bus, devfn, value) in &self.numbering {
            s.push(Op::Write(Reg::new(bus, devfn, 0x18, 4), value), None, 0x18);
        }
    }

    /// A platform reset on both sides, then the bus numbers programmed again.
    fn platform_reset(&mut self) {
        self.qemu.platform_reset();
        self.ours.platform_reset();
        let mut s = Script::new("renumber");
        self.renumber(&mut s);
        self.run(s);
    }

    /// Reads compared so far.
    pub fn compared(&self) -> usize {
        self.compared
    }
    /// Accesses run so far on each side.
    pub fn ops(&self) -> usize {
        self.ops
    }
    /// Differing reads excused by a [`Deviation`].
    pub fn allowed(&self) -> usize {
        self.allowed
    }
    /// The mismatches found so far.
    pub fn mismatches(&self) -> &[Mismatch] {
        &self.mismatches
    }

    fn reg(&self, f: usize, offset: u16, width: u8) -> Reg {
        let func = &self.functions[f];
        Reg::new(func.bus, func.devfn, offset, width)
    }
    fn read(&self, s: &mut Script, f: usize, offset: u16, width: u8) {
        s.push(Op::Read(self.reg(f, offset, width)), Some(f), offset.into());
    }
    fn write(&self, s: &mut Script, f: usize, offset: u16, width: u8, value: u32) {
        s.push(
            Op::Write(self.reg(f, offset, width), value),
            Some(f),
            offset.into(),
        );
    }

    /// Run a script on both sides and compare every read.
    pub fn run(&mut self, script: Script) {
        let q = self.qemu.run(&script.ops);
        let o = self.ours.run(&script.ops);
        self.ops += script.ops.len();
        for ((l, qv), ov) in script.labels.iter().zip(q).zip(o) {
            self.compared += 1;
            if qv == ov {
                continue;
            }
            let func = l.function.and_then(|i| self.functions.get(i));
            let allowed: u64 = self
                .deviations
                .iter()
                .filter(|d| func.is_some_and(|f| f.kind == d.kind))
                .map(|d| d.bits_in(l.offset, l.width))
                .fold(0, |a, b| a | b);
            let excused = (qv ^ ov) & !allowed == 0;
            if excused {
                self.allowed += 1;
                continue;
            }
            let function = func.map_or_else(|| "memory".to_string(), |f| f.name.clone());
            let (offset, width, step) = (l.offset, l.width, l.step.to_string());
            self.mismatches.push(Mismatch {
                function,
                offset,
                width,
                step,
                qemu: qv,
                ours: ov,
            });
        }
    }

    /// Run every access ([`Differential::run_all`]), print what was compared as `what` with the
    /// time since `started`, and [`Differential::assert_clean`].
    pub fn run_all_and_check(&mut self, what: &str, started: std::time::Instant) {
        self.run_all();
        eprintln!(
            "{what}: {} accesses, {} reads compared, {} mismatches, {} allowed, {:.2?}",
            self.ops(),
            self.compared(),
            self.mismatches().len(),
            self.allowed(),
            started.elapsed()
        );
        self.assert_clean();
    }

    /// Panic listing the mismatches (the first 60) if there are any.
    pub fn assert_clean(&self) {
        assert_no_mismatches(&self.mismatches, || {
            format!(
                "{} of {} reads differ from QEMU",
                self.mismatches.len(),
                self.compared
            )
        });
    }

    /// Everything, in an order that keeps both sides addressable: reset values, mechanism #1,
    /// PCIEXBAR moves, write patterns, MSI-X BARs, and a platform reset after writes.
    pub fn run_all(&mut self) {
        let mut s = Script::new("renumber");
        self.renumber(&mut s);
        self.run(s);
        self.reset_values("reset");
        self.mechanism1();
        self.pciexbar();
        self.write_patterns();
        self.msix_bars();
        self.shpc_bars();
        self.reset_after_writes();
    }

    /// Every offset of every function at widths 1, 2 and 4.
    pub fn reset_values(&mut self, step: &str) {
        let mut s = Script::new(step);
        for f in 0..self.functions.len() {
            for width in [1u8, 2, 4] {
                for off in (0..0x1000u16).step_by(width.into()) {
                    self.read(&mut s, f, off, width);
                }
            }
        }
        // Absent functions and buses read all ones.
        for (bus, devfn) in [(0u8, 0x08u8), (0, 0xff), (1, 0), (0xff, 0xe0)] {
            s.push(
                Op::Read(Reg::new(bus, devfn, 0, 4)),
                None,
                u64::from(bus) << 8 | u64::from(devfn),
            );
            s.push(
                Op::Cf8Read(Reg::new(bus, devfn, 0, 4)),
                None,
                u64::from(bus) << 8 | u64::from(devfn),
            );
        }
        self.run(s);
    }

    /// The first 256 bytes through CONFIG_ADDRESS/CONFIG_DATA at every width, and a few writes.
    pub fn mechanism1(&mut self) {
        let mut s = Script::new("cf8 read");
        for f in 0..self.functions.len() {
            for width in [1u8, 2, 4] {
                for off in (0..0x100u16).step_by(width.into()) {
                    s.push(Op::Cf8Read(self.reg(f, off, width)), Some(f), off.into());
                }
            }
            s.step("cf8 write");
            for (off, width, value) in [
                (0x3c, 1, 0x5a),
                (0x0c, 1, 0x10),
                (0x04, 2, 0x0004),
                (0x40, 4, 0x1234_5678),
            ] {
                s.push(
                    Op::Cf8Write(self.reg(f, off, width), value),
                    Some(f),
                    off.into(),
                );
                s.push(
                    Op::Cf8Read(self.reg(f, off & !3, 4)),
                    Some(f),
                    u64::from(off & !3),
                );
                self.read(&mut s, f, off & !3, 4);
                s.push(
                    Op::Cf8Write(self.reg(f, off, width), 0),
                    Some(f),
                    off.into(),
                );
            }
            s.step("cf8 read");
        }
        self.run(s);
    }

    /// PCIEXBAR moved, resized and disabled through mechanism #1 (never to the reserved length,
    /// which aborts QEMU); after each, where the MCH, a port and the window edges answer.
    pub fn pciexbar(&mut self) {
        let Some(mch) = self.functions.iter().position(|f| f.kind == Kind::Mch) else {
            return;
        };
        let port = self
            .functions
            .iter()
            .find(|f| f.kind.is_port())
            .map_or(0, |f| f.devfn);
        let mut s = Script::new("pciexbar");
        for (lo, hi) in PCIEXBAR_STATES {
            s.step(&format!("PCIEXBAR={hi:#x}:{lo:#010x}"));
            s.push(Op::Cf8Write(self.reg(mch, 0x64, 4), hi), Some(mch), 0x64);
            s.push(Op::Cf8Write(self.reg(mch, 0x60, 4), lo), Some(mch), 0x60);
            s.push(Op::Cf8Read(self.reg(mch, 0x60, 4)), Some(mch), 0x60);
            s.push(Op::Cf8Read(self.reg(mch, 0x64, 4)), Some(mch), 0x64);
            for base in PCIEXBAR_PROBES {
                for bus in [0u64, 63, 64, 127, 128, 255] {
                    s.push(Op::MemRead(base + (bus << 20), 4), None, base + (bus << 20));
                }
                let a = base + (u64::from(port) << 12) + 8;
                s.push(Op::MemRead(a, 4), None, a);
            }
        }
        self.run(s);
    }

    /// After a write, re-read the dword it landed in; bus numbers are put back to 0 after.
    fn write_and_check(&self, s: &mut Script, f: usize, off: u16, width: u8, value: u32) {
        if !aborts_qemu(self.functions[f].kind, off, width, value) {
            self.write(s, f, off, width, value);
        }
        self.read(s, f, off & !3, 4);
        let kind = self.functions[f].kind;
        if self.numbering.is_empty() {
            if kind.is_port() && (0x18..0x1c).contains(&off) {
                self.write(s, f, 0x18, 4, 0);
            }
        } else if kind.is_port() && [0x18, 0x3c, 0x98, 0x5c].contains(&(off & !3)) {
            // Bus numbers, Secondary Bus Reset, Function Level Reset (switch ports' Device
            // Control at 0x98; a root port's at 0x5c cannot reset): put the numbering back.
            self.renumber(s);
        }
    }

    /// Registers never written through ECAM: the MCH's PCIEXBAR (it moves ECAM itself, and the
    /// reserved length aborts QEMU) — see [`Differential::pciexbar`].
    fn protected(&self, f: usize, off: u16) -> bool {
        let func = &self.functions[f];
        let switch_slot = self.switch_slots.contains(&(func.bus, func.devfn))
            && func
                .kind
                .slot_control()
                .is_some_and(|at| (at..at + 4).contains(&off));
        (func.kind == Kind::Mch && (0x60..0x68).contains(&off)) || switch_slot
    }

    /// Dword patterns at every dword, then every word and every byte written 1s and 0s; each
    /// write followed by a read of its dword, each pass by a read of everything.
    pub fn write_patterns(&mut self) {
        for p in PATTERNS {
            let mut s = Script::new(&format!("dword {p:#010x}"));
            for f in 0..self.functions.len() {
                for off in (0..0x1000u16).step_by(4).filter(|&o| !self.protected(f, o)) {
                    self.write_and_check(&mut s, f, off, 4, p);
                }
            }
            s.step(&format!("after dword {p:#010x}"));
            self.read_everything(&mut s);
            self.run(s);
        }
        for (width, name) in [(2u8, "word"), (1, "byte")] {
            let mut s = Script::new(name);
            for f in 0..self.functions.len() {
                for off in (0..0x1000u16)
                    .step_by(width.into())
                    .filter(|&o| !self.protected(f, o))
                {
                    self.write_and_check(
                        &mut s,
                        f,
                        off,
                        width,
                        0xffff_ffff >> (32 - 8 * u32::from(width)),
                    );
                    self.write_and_check(&mut s, f, off, width, 0);
                }
            }
            s.step(&format!("after {name} writes"));
            self.read_everything(&mut s);
            self.run(s);
        }
    }

    fn read_everything(&self, s: &mut Script) {
        for f in 0..self.functions.len() {
            for off in (0..0x1000u16).step_by(4) {
                self.read(s, f, off, 4);
            }
        }
    }

    /// Each root port's BAR0 (MSI-X table and PBA) at every width and alignment, writes to the
    /// table and PBA, and the hot-plug/MSI-X interplay QEMU shows in the PBA and Status; for each
    /// `ioh3420`, the hot-plug/MSI interplay in its pending bits and Status.
    pub fn msix_bars(&mut self) {
        self.platform_reset();
        let ports: Vec<usize> = (0..self.functions.len())
            .filter(|&f| self.functions[f].kind == Kind::RootPort)
            .collect();
        let mut s = Script::new("msix");
        for (i, &f) in ports.iter().enumerate() {
            let bar = BAR_BASE + ((i as u64) << 20);
            self.write(&mut s, f, 0x10, 4, bar as u32);
            self.write(&mut s, f, 0x04, 2, 0x0002);
            let dump = |s: &mut Script| {
                for off in MSIX_OFFSETS {
                    for width in [1u8, 2, 4, 8]
                        .into_iter()
                        .filter(|&w| off + u64::from(w) <= 0x1000)
                    {
                        s.push(Op::MemRead(bar + off, width), None, bar + off);
                    }
                }
            };
            dump(&mut s);
            for (off, width, value) in MSIX_WRITES {
                s.step(&format!("msix write{width} {off:#x}={value:#x}"));
                s.push(Op::MemWrite(bar + off, width, value), None, bar + off);
                dump(&mut s);
            }
            // Hot-plug events with MSI-X enabled and masked pend; unmasking delivers them.
            for (name, off, width, value) in HOTPLUG_SEQUENCE {
                s.step(name);
                if off == 0xffff {
                    s.push(Op::MemWrite(bar + 0xc, 4, value.into()), None, bar + 0xc);
                } else {
                    self.write(&mut s, f, off, width, value);
                }
                for r in [0x04u16, 0x48, 0x6c] {
                    self.read(&mut s, f, r, 4);
                }
                s.push(Op::MemRead(bar + 0x800, 8), None, bar + 0x800);
                s.push(Op::MemRead(bar + 0x8, 8), None, bar + 0x8);
            }
            s.step("memory decode off");
            self.write(&mut s, f, 0x04, 2, 0);
            s.push(Op::MemRead(bar + 0xc, 4), None, bar + 0xc);
        }
        for f in
            (0..self.functions.len()).filter(|&f| self.functions[f].kind == Kind::Xio3130Downstream)
        {
            for (name, off, width, value) in SWITCH_MSI_HOTPLUG_SEQUENCE {
                s.step(name);
                self.write(&mut s, f, off, width, value);
                for r in [0x04u16, 0x70, 0x74, 0x78, 0x7c, 0xa8] {
                    self.read(&mut s, f, r, 4);
                }
            }
        }
        for f in (0..self.functions.len()).filter(|&f| self.functions[f].kind == Kind::Ioh3420) {
            for (name, off, width, value) in MSI_HOTPLUG_SEQUENCE {
                s.step(name);
                self.write(&mut s, f, off, width, value);
                for r in [0x04u16, 0x60, 0x64, 0x68, 0x6c, 0x70, 0xa8, 0x130] {
                    self.read(&mut s, f, r, 4);
                }
            }
        }
        self.run(s);
    }

    /// Each `pcie-pci-bridge`'s SHPC Working Register Set (BAR0, 64-bit, placed at
    /// [`BAR_BASE`] + 1 MiB per bridge): every dword and the odd widths at reset, all-ones and
    /// all-zeros written everywhere, unaligned and straddling accesses, the slot and controller
    /// commands with their status, the Interrupt Locator and the interrupt (Status.Interrupt
    /// Status, MSI pending bits), the capability's DWORD Select/Data window, and the BAR with
    /// memory decode off. Every step reads the registers it can change.
    pub fn shpc_bars(&mut self) {
        let bridges: Vec<usize> = (0..self.functions.len())
            .filter(|&f| self.functions[f].kind == Kind::PciePciBridge)
            .collect();
        if bridges.is_empty() {
            return;
        }
        self.qemu.platform_reset();
        self.ours.platform_reset();
        let mut s = Script::new("shpc");
        for (i, &f) in bridges.iter().enumerate() {
            let bar = BAR_BASE + ((i as u64) << 20);
            self.write(&mut s, f, 0x10, 4, bar as u32);
            self.write(&mut s, f, 0x14, 4, (bar >> 32) as u32);
            self.write(&mut s, f, 0x04, 2, 0x0002);
            let regs = |d: &Self, s: &mut Script| {
                for off in (0..0x100u64).step_by(4) {
                    s.push(Op::MemRead(bar + off, 4), None, bar + off);
                }
                for r in [0x04u16, 0x40, 0x44, 0x8c, 0x9c, 0xa0] {
                    d.read(s, f, r, 4);
                }
            };
            s.step("shpc reset");
            regs(self, &mut s);
            for off in SHPC_ODD_OFFSETS {
                for width in [1u8, 2, 8] {
                    s.push(Op::MemRead(bar + off, width), None, bar + off);
                }
            }
            for (name, value) in [("ones", u64::MAX), ("zeros", 0)] {
                s.step(&format!("shpc dwords {name}"));
                for off in (0..0x100u64).step_by(4) {
                    s.push(Op::MemWrite(bar + off, 4, value), None, bar + off);
                    s.push(Op::MemRead(bar + off, 4), None, bar + off);
                }
                regs(self, &mut s);
            }
            for (off, width, value) in SHPC_WRITES {
                s.step(&format!("shpc write{width} {off:#x}={value:#x}"));
                s.push(Op::MemWrite(bar + off, width, value), None, bar + off);
                regs(self, &mut s);
            }
            for (name, off, width, value) in SHPC_SEQUENCE {
                s.step(name);
                match off {
                    Shpc::Bar(o) => {
                        s.push(Op::MemWrite(bar + o, width, value.into()), None, bar + o)
                    }
                    Shpc::Config(o) => self.write(&mut s, f, o, width, value),
                }
                regs(self, &mut s);
            }
            s.step("shpc memory decode off");
            self.write(&mut s, f, 0x04, 2, 0);
            s.push(Op::MemRead(bar + 0x14, 4), None, bar + 0x14);
        }
        self.run(s);
    }

    /// Write every register, reset the platform, compare everything again.
    pub fn reset_after_writes(&mut self) {
        let mut s = Script::new("before reset");
        for f in 0..self.functions.len() {
            for off in (0..0x1000u16).step_by(4).filter(|&o| !self.protected(f, o)) {
                self.write_and_check(&mut s, f, off, 4, 0xa5a5_a5a5);
            }
        }
        self.run(s);
        self.platform_reset();
        self.reset_values("after platform reset");
    }
}

/// Panic with `headline` and the first 60 of `mismatches`, one an indented line, if there are
/// any: the failure of every comparison against QEMU (register reads, replayed traces).
pub fn assert_no_mismatches<T: std::fmt::Display>(
    mismatches: &[T],
    headline: impl FnOnce() -> String,
) {
    if mismatches.is_empty() {
        return;
    }
    let list: Vec<String> = mismatches
        .iter()
        .take(60)
        .map(|m| format!("  {m}"))
        .collect();
    panic!("{}:\n{}", headline(), list.join("\n"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_that_abort_qemu_are_recognised() {
        assert!(aborts_qemu(Kind::Ioh3420, 0x60, 4, 0x5a5a_5a5a));
        assert!(aborts_qemu(Kind::Ioh3420, 0x62, 2, 0x0020));
        assert!(aborts_qemu(Kind::Ioh3420, 0x62, 1, 0x70));
        assert!(
            !aborts_qemu(Kind::Ioh3420, 0x60, 4, 0xa5a5_a5a5),
            "MSI on: clamped"
        );
        assert!(!aborts_qemu(Kind::Ioh3420, 0x60, 4, 0xffff_ffff));
        assert!(!aborts_qemu(Kind::Ioh3420, 0x62, 2, 0x0010), "two vectors");
        assert!(
            !aborts_qemu(Kind::Ioh3420, 0x63, 1, 0xff),
            "not Multiple Message Enable"
        );
        assert!(!aborts_qemu(Kind::RootPort, 0x60, 4, 0x5a5a_5a5a));
    }

    #[test]
    fn a_deviation_excuses_only_its_bits() {
        let d = &DEVIATIONS[0];
        assert_eq!(
            d.bits_in(0x70, 4),
            0x8,
            "Root Control's bit 3 in a dword read"
        );
        assert_eq!(d.bits_in(0x70, 1), 0x8);
        assert_eq!(d.bits_in(0x71, 1), 0, "the high byte has none");
        assert_eq!(d.bits_in(0x6c, 4), 0, "Slot Control/Status are compared");
        assert_eq!(DEVIATIONS[1].bits_in(0x6c, 4), 0x1000, "but DLLSCE");
        let wide = Deviation {
            kind: Kind::Mch,
            offsets: 0x10..0x12,
            bits: 0xff00,
            reason: "",
        };
        assert_eq!(wide.bits_in(0x10, 4), 0xff00);
        assert_eq!(wide.bits_in(0x11, 2), 0x00ff);
        assert_eq!(wide.bits_in(0x0e, 4), 0xff00_0000);
    }
}
