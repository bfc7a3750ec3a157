//! Real Linux against pcierc without KVM: record the configuration-mechanism accesses SeaBIOS and
//! Linux make on QEMU 7.2's `q35` under TCG, then replay them against a real `pcierc`.
//!
//! - [`record`](mod@record) boots a kernel with the busybox initramfs of `tests/linux/` on QEMU with
//!   pcierc's default root ports, traces every `memory_region_ops_read/write`, and drives a
//!   native hot-add, a hot-remove and AER injections through QMP while the guest runs;
//! - [`parse_qemu_log`] keeps what pcierc is asked in a real machine: CONFIG_ADDRESS/CONFIG_DATA
//!   (`pci-conf-idx`, `pci-conf-data`), the MMCONFIG window (`pcie-mmcfg-mmio`), the MSI-X BARs
//!   (`msix-table`, `msix-pba`), plus the root ports' MSIs (`apic-msi` writes by no CPU whose
//!   message is a root port's MSI-X entry) and, at the exact point in the stream where the host
//!   acted, the QMP command (see "Alignment" below);
//! - [`replay`](mod@replay) runs the stream in order against `pcierc` through the protocol, compares every
//!   read pcierc answers with QEMU's value (bit-precise deviations: [`replay::replay_deviations`])
//!   and the MSIs pcierc sends with those QEMU sent, at the same step.
//!
//! # Alignment
//! QEMU runs the guest's accesses on the vCPU thread and QMP commands on the main loop, both under
//! the big lock, and the trace lines are written in that order. The recorder issues each host
//! action inside a `stop` ... `cont` window: `stop` returns once the vCPU is paused, so no guest
//! access can fall between the `qmp_exit_stop` trace line and the action, and everything the
//! action itself makes QEMU do (the hot-plug MSI) is traced after that line. The parser puts the
//! action at that line; the replay sends the same command to pcierc's control socket there, with
//! the same guest accesses before and after it. Slot Status, Link Status and the interrupt for
//! the hot-add are then compared at the same point of the guest's pciehp sequence, whatever the
//! wall-clock times were. Removal needs no alignment: QEMU and pcierc both remove the function
//! inside the guest's Slot Control write that powers the slot off.

pub mod record;
pub mod replay;

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

pub use record::{record, RecordOptions, Recorded};
pub use replay::{replay, ReplayReport};

/// Address space of an access.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Space {
    /// I/O ports.
    Io,
    /// Guest-physical memory.
    Memory,
}

/// One guest access as QEMU's memory core dispatched it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// Port or memory.
    pub space: Space,
    /// A write (else a read).
    pub write: bool,
    /// Port number or guest-physical address.
    pub addr: u64,
    /// 1, 2, 4 or 8 bytes.
    pub width: u8,
    /// The value written, or the value QEMU returned.
    pub value: u64,
}

/// An MSI a root port sent, as QEMU delivered it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Msi {
    /// The port's device/function on bus 0.
    pub devfn: u8,
    /// Message address.
    pub address: u64,
    /// Message data.
    pub data: u32,
}

/// What the host did, in QMP terms; pcierc's control socket gets the same.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// `device_add driver=DRIVER,id=ID,bus=BUS` (native PCIe hot-add into a root port's slot).
    DeviceAdd {
        /// QEMU driver.
        driver: String,
        /// Device id.
        id: String,
        /// Root port id.
        bus: String,
    },
    /// `device_del id=ID` (attention button; removal when the guest powers the slot off).
    DeviceDel {
        /// Device id.
        id: String,
    },
    /// HMP `pcie_aer_inject_error ID ERROR` (pcierc: `pcie-aer-inject-error`).
    AerInject {
        /// Root port or device id.
        id: String,
        /// A name from QEMU's table (`RCVR`, `UNSUP`, ...).
        error: String,
    },
}

impl fmt::Display for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Control::DeviceAdd { driver, id, bus } => write!(f, "device_add {driver} {id} {bus}"),
            Control::DeviceDel { id } => write!(f, "device_del {id}"),
            Control::AerInject { id, error } => write!(f, "aer {id} {error}"),
        }
    }
}

/// One element of a recorded stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// A guest access to CF8/CFC, ECAM or an MSI-X BAR.
    Access(Access),
    /// A root port's MSI, after the access (or host action) that caused it.
    Msi(Msi),
    /// A host action at this point of the stream.
    Control(Control),
}

/// A function QEMU serves on bus 0 that pcierc does not emulate (ICH9's LPC, SATA, SMBus): the
/// replay declares it to pcierc as owned by "qemu", so pcierc answers `EREMOTE` for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteFunction {
    /// Device/function on bus 0.
    pub devfn: u8,
    /// Function 0 of a multifunction device.
    pub multifunction: bool,
}

/// A recorded boot: what ran, and the stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recording {
    /// `uname -r` of the guest kernel.
    pub kernel: String,
    /// QEMU's `-device` options for the root ports (pcierc's default topology).
    pub root_ports: Vec<String>,
    /// Bus-0 functions QEMU has and pcierc does not emulate.
    pub remote: Vec<RemoteFunction>,
    /// The stream, in trace order.
    pub steps: Vec<Step>,
}

impl Recording {
    /// Root port devfns (from the `addr=` of [`Recording::root_ports`]).
    pub fn port_devfns(&self) -> Vec<u8> {
        self.root_ports
            .iter()
            .filter_map(|d| port_devfn(d))
            .collect()
    }

    /// Guest accesses in the stream.
    pub fn accesses(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| matches!(s, Step::Access(_)))
            .count()
    }

    /// The compact text form (`tests/linux/README.md` describes it).
    pub fn to_text(&self) -> String {
        let mut out = String::from("# pcierc Linux trace from QEMU 7.2 q35 (format 1)\n");
        let _ = writeln!(out, "kernel {}", self.kernel);
        for d in &self.root_ports {
            let _ = writeln!(out, "root-port {d}");
        }
        for r in &self.remote {
            let mf = if r.multifunction {
                " multifunction"
            } else {
                ""
            };
            let _ = writeln!(out, "remote {:02x}{mf}", r.devfn);
        }
        for s in &self.steps {
            let _ = match s {
                Step::Access(a) => writeln!(
                    out,
                    "{}{} {:x} {} {:x}",
                    if a.space == Space::Io { 'p' } else { 'm' },
                    if a.write { 'w' } else { 'r' },
                    a.addr,
                    a.width,
                    a.value
                ),
                Step::Msi(m) => writeln!(out, "msi {:02x} {:x} {:x}", m.devfn, m.address, m.data),
                Step::Control(c) => writeln!(out, "do {c}"),
            };
        }
        out
    }

    /// Parse [`Recording::to_text`]'s form.
    pub fn from_text(text: &str) -> Result<Recording, String> {
        let mut rec = Recording::default();
        for (n, line) in text.lines().enumerate() {
            let bad = || format!("line {}: '{line}'", n + 1);
            let w: Vec<&str> = line.split_whitespace().collect();
            let hex = |s: &str| u64::from_str_radix(s, 16).map_err(|_| bad());
            match w.as_slice() {
                [] => {}
                [c, ..] if c.starts_with('#') => {}
                ["kernel", k] => rec.kernel = (*k).to_string(),
                ["root-port", d] => rec.root_ports.push((*d).to_string()),
                ["remote", d, rest @ ..] => rec.remote.push(RemoteFunction {
                    devfn: hex(d)? as u8,
                    multifunction: rest == ["multifunction"],
                }),
                [op @ ("pr" | "pw" | "mr" | "mw"), addr, width, value] => {
                    rec.steps.push(Step::Access(Access {
                        space: if op.starts_with('p') {
                            Space::Io
                        } else {
                            Space::Memory
                        },
                        write: op.ends_with('w'),
                        addr: hex(addr)?,
                        width: width.parse().map_err(|_| bad())?,
                        value: hex(value)?,
                    }))
                }
                ["msi", devfn, address, data] => rec.steps.push(Step::Msi(Msi {
                    devfn: hex(devfn)? as u8,
                    address: hex(address)?,
                    data: hex(data)? as u32,
                })),
                ["do", "device_add", driver, id, bus] => {
                    rec.steps.push(Step::Control(Control::DeviceAdd {
                        driver: (*driver).into(),
                        id: (*id).into(),
                        bus: (*bus).into(),
                    }))
                }
                ["do", "device_del", id] => rec
                    .steps
                    .push(Step::Control(Control::DeviceDel { id: (*id).into() })),
                ["do", "aer", id, error] => rec.steps.push(Step::Control(Control::AerInject {
                    id: (*id).into(),
                    error: (*error).into(),
                })),
                _ => return Err(bad()),
            }
        }
        Ok(rec)
    }
}

/// The devfn of a `-device pcie-root-port,...,addr=0xS.F` option.
pub fn port_devfn(device: &str) -> Option<u8> {
    let addr = device.split(',').find_map(|kv| kv.strip_prefix("addr="))?;
    let (slot, func) = addr.split_once('.').unwrap_or((addr, "0"));
    let slot = u8::from_str_radix(slot.trim_start_matches("0x"), 16).ok()?;
    let func: u8 = func.parse().ok()?;
    (slot < 32 && func < 8).then_some(slot << 3 | func)
}

/// Where a configuration-mechanism access lands, as the guest addressed it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A configuration register of (bus, devfn) at `offset`.
    Config {
        /// Bus.
        bus: u8,
        /// Device/function.
        devfn: u8,
        /// First byte's offset.
        offset: u16,
    },
    /// Anything else: CONFIG_ADDRESS itself, CONFIG_DATA with the enable bit clear, memory
    /// (MSI-X BARs), or ECAM while it is off.
    Other,
}

/// Follows the machine state the stream implies, QEMU's way: the CONFIG_ADDRESS latch, PCIEXBAR,
/// and each root port's BAR0 and MSI-X table entries, to say which function an access reaches
/// and which root port an MSI came from.
#[derive(Clone, Debug, Default)]
pub struct Decoder {
    cf8: u32,
    pciexbar: [u8; 8],
    ports: Vec<u8>,
    /// Per root port devfn: BAR0 bytes and MSI-X table dwords (entry * 4 + dword).
    bar0: BTreeMap<u8, [u8; 4]>,
    table: BTreeMap<(u8, u64), u32>,
}

/// I/O port of CONFIG_ADDRESS and the first of CONFIG_DATA.
const CF8: u64 = 0xcf8;
const CFC: u64 = 0xcfc;

impl Decoder {
    /// A machine whose root ports are at these bus-0 devfns.
    pub fn new(ports: &[u8]) -> Self {
        Decoder {
            ports: ports.to_vec(),
            ..Decoder::default()
        }
    }

    /// The MMCONFIG window (base, size) as QEMU 7.2's `mch_update_pciexbar()` decodes PCIEXBAR.
    pub fn ecam(&self) -> Option<(u64, u64)> {
        const ADMSK: u64 = 0xff << 28;
        let v = u64::from_le_bytes(self.pciexbar);
        if v & 1 == 0 {
            return None;
        }
        match (v >> 1) & 3 {
            0 => Some((v & ADMSK, 256 << 20)),
            1 => Some((v & (ADMSK | 1 << 26 | 1 << 25), 128 << 20)),
            2 => Some((v & (ADMSK | 1 << 25), 64 << 20)),
            _ => None,
        }
    }

    /// Where `a` lands (before it is applied).
    pub fn target(&self, a: &Access) -> Target {
        match a.space {
            Space::Io if (CFC..CFC + 4).contains(&a.addr) && self.cf8 & 1 << 31 != 0 => {
                Target::Config {
                    bus: (self.cf8 >> 16) as u8,
                    devfn: (self.cf8 >> 8) as u8,
                    offset: (self.cf8 & 0xfc) as u16 + (a.addr - CFC) as u16,
                }
            }
            Space::Memory => match self.ecam() {
                Some((base, size)) if (base..base + size).contains(&a.addr) => {
                    let off = a.addr - base;
                    Target::Config {
                        bus: (off >> 20) as u8,
                        devfn: (off >> 12) as u8,
                        offset: (off & 0xfff) as u16,
                    }
                }
                _ => Target::Other,
            },
            Space::Io => Target::Other,
        }
    }

    /// Learn from `a` (writes change the latch, PCIEXBAR, BAR0s and MSI-X entries).
    pub fn apply(&mut self, a: &Access) {
        if !a.write {
            return;
        }
        if a.space == Space::Io && a.addr == CF8 && a.width == 4 {
            self.cf8 = a.value as u32;
            return;
        }
        if let Target::Config { bus, devfn, offset } = self.target(a) {
            for i in 0..u16::from(a.width) {
                let byte = (a.value >> (8 * i)) as u8;
                self.config_byte(bus, devfn, offset + i, byte);
            }
            return;
        }
        if a.space == Space::Memory {
            for (&devfn, bar) in &self.bar0 {
                let base = u64::from(u32::from_le_bytes(*bar) & 0xffff_f000);
                if base != 0 && (base..base + 0x800).contains(&a.addr) {
                    for d in 0..u64::from(a.width).div_ceil(4) {
                        let at = a.addr - base + 4 * d;
                        self.table
                            .insert((devfn, at / 4), (a.value >> (32 * d)) as u32);
                    }
                    return;
                }
            }
        }
    }

    fn config_byte(&mut self, bus: u8, devfn: u8, offset: u16, byte: u8) {
        if bus != 0 {
            return;
        }
        if devfn == 0 && (0x60..0x68).contains(&offset) {
            self.pciexbar[usize::from(offset - 0x60)] = byte;
        } else if self.ports.contains(&devfn) && (0x10..0x14).contains(&offset) {
            self.bar0.entry(devfn).or_default()[usize::from(offset - 0x10)] = byte;
        }
    }

    /// The root port whose MSI-X entry holds this message, if one does.
    pub fn msi_source(&self, address: u64, data: u32) -> Option<u8> {
        let t = |devfn: u8, dw: u64| self.table.get(&(devfn, dw)).copied().unwrap_or(0);
        self.ports.iter().copied().find(|&p| {
            (0..8u64).any(|e| {
                let a = u64::from(t(p, 4 * e)) | u64::from(t(p, 4 * e + 1)) << 32;
                a == address && t(p, 4 * e + 2) == data && a != 0
            })
        })
    }
}

/// Trace events the recorder enables (`-trace NAME` each).
pub const TRACE_EVENTS: [&str; 3] = [
    "memory_region_ops_read",
    "memory_region_ops_write",
    "qmp_exit_stop",
];

/// Region names whose accesses are kept.
const KEPT_REGIONS: [&str; 5] = [
    "pci-conf-idx",
    "pci-conf-data",
    "pcie-mmcfg-mmio",
    "msix-table",
    "msix-pba",
];

/// One parsed `memory_region_ops_*` line.
struct OpsLine<'a> {
    write: bool,
    addr: u64,
    value: u64,
    size: u8,
    name: &'a str,
}

fn parse_ops_line(line: &str) -> Option<OpsLine<'_>> {
    // memory_region_ops_read cpu 0 mr 0x55.. addr 0xcfc value 0x29c08086 size 4 name 'pci-conf-data'
    let (head, name) = line.split_once(" name '")?;
    let name = name.strip_suffix('\'')?;
    let w: Vec<&str> = head.split_whitespace().collect();
    let hex = |s: &str| u64::from_str_radix(s.strip_prefix("0x")?, 16).ok();
    match w.as_slice() {
        [ev, "cpu", _, "mr", _, "addr", addr, "value", value, "size", size] => Some(OpsLine {
            write: match *ev {
                "memory_region_ops_write" => true,
                "memory_region_ops_read" => false,
                _ => return None,
            },
            addr: hex(addr)?,
            value: hex(value)?,
            size: size.parse().ok()?,
            name,
        }),
        _ => None,
    }
}

/// Turn QEMU's trace log into the stream: kept accesses in order, root-port MSIs after their
/// cause, and `controls[i]` at the i-th `qmp_exit_stop` line (the recorder stops the VM around
/// every host action; a `None` marks a stop with no action).
pub fn parse_qemu_log(
    log: &str,
    root_ports: &[u8],
    controls: &[Option<Control>],
) -> Result<Vec<Step>, String> {
    let mut dec = Decoder::new(root_ports);
    let mut steps = Vec::new();
    let mut stops = controls.iter();
    for line in log.lines() {
        if line.starts_with("qmp_exit_stop") {
            match stops.next() {
                Some(Some(c)) => steps.push(Step::Control(c.clone())),
                Some(None) => {}
                None => return Err(format!("more stops in the trace than recorded: {line}")),
            }
            continue;
        }
        let Some(op) = parse_ops_line(line) else {
            continue;
        };
        if op.name == "apic-msi" {
            // Messages to the local APIC window: the IOAPIC's, a PCI function's (from the vCPU
            // thread when a guest access caused it, else from none), and the CPU's own LAPIC
            // accesses. A root port's is the one that equals its MSI-X entry.
            if op.write {
                if let Some(devfn) = dec.msi_source(op.addr, op.value as u32) {
                    steps.push(Step::Msi(Msi {
                        devfn,
                        address: op.addr,
                        data: op.value as u32,
                    }));
                }
            }
            continue;
        }
        if !KEPT_REGIONS.contains(&op.name) {
            continue;
        }
        let a = Access {
            space: if op.name.starts_with("pci-conf") {
                Space::Io
            } else {
                Space::Memory
            },
            write: op.write,
            addr: op.addr,
            width: op.size,
            value: op.value,
        };
        dec.apply(&a);
        steps.push(Step::Access(a));
    }
    if stops.next().is_some() {
        return Err("fewer stops in the trace than recorded (was the log flushed?)".into());
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
memory_region_ops_write cpu 0 mr 0x1 addr 0xcf8 value 0x80000060 size 4 name 'pci-conf-idx'
memory_region_ops_write cpu 0 mr 0x2 addr 0xcfc value 0xb0000001 size 4 name 'pci-conf-data'
memory_region_ops_write cpu 0 mr 0x3 addr 0x3f8 value 0x41 size 1 name 'serial'
memory_region_ops_write cpu 0 mr 0x4 addr 0xb0010010 value 0xfe200000 size 4 name 'pcie-mmcfg-mmio'
memory_region_ops_write cpu 0 mr 0x5 addr 0xfe200000 value 0xfee01004 size 4 name 'msix-table'
memory_region_ops_write cpu 0 mr 0x5 addr 0xfe200008 value 0x22 size 4 name 'msix-table'
memory_region_ops_write cpu -1 mr 0x6 addr 0xfee01004 value 0x30 size 4 name 'apic-msi'
qmp_exit_stop {} 1
memory_region_ops_write cpu -1 mr 0x6 addr 0xfee01004 value 0x22 size 4 name 'apic-msi'
memory_region_ops_read cpu 0 mr 0x4 addr 0xb001006e value 0x48 size 2 name 'pcie-mmcfg-mmio'
";

    #[test]
    fn the_log_becomes_the_stream() {
        let add = Control::DeviceAdd {
            driver: "e1000e".into(),
            id: "nic0".into(),
            bus: "rp1".into(),
        };
        let steps = parse_qemu_log(LOG, &[0x10], &[Some(add.clone())]).unwrap();
        assert_eq!(steps.len(), 8, "{steps:#?}");
        assert_eq!(steps[5], Step::Control(add));
        assert_eq!(
            steps[6],
            Step::Msi(Msi {
                devfn: 0x10,
                address: 0xfee0_1004,
                data: 0x22
            }),
            "the port's message, not the IOAPIC's (data 0x30)"
        );
        let rec = Recording {
            kernel: "6.1".into(),
            root_ports: vec!["pcie-root-port,id=rp1,addr=0x2.0".into()],
            remote: vec![RemoteFunction {
                devfn: 0xf8,
                multifunction: true,
            }],
            steps,
        };
        assert_eq!(rec.port_devfns(), [0x10]);
        assert_eq!(Recording::from_text(&rec.to_text()).unwrap(), rec);
        assert!(parse_qemu_log(LOG, &[0x10], &[]).is_err(), "unmatched stop");
    }

    #[test]
    fn the_decoder_follows_cf8_and_pciexbar() {
        let mut d = Decoder::new(&[0x10]);
        let io = |write, addr, width, value| Access {
            space: Space::Io,
            write,
            addr,
            width,
            value,
        };
        assert_eq!(d.target(&io(false, 0xcfc, 4, 0)), Target::Other);
        d.apply(&io(true, 0xcf8, 4, 0x8000_1068));
        assert_eq!(
            d.target(&io(false, 0xcfe, 2, 0)),
            Target::Config {
                bus: 0,
                devfn: 0x10,
                offset: 0x6a
            }
        );
        d.apply(&io(true, 0xcf8, 4, 0x8000_0060));
        d.apply(&io(true, 0xcfc, 4, 0xb800_0003));
        assert_eq!(
            d.ecam(),
            Some((0xb000_0000, 128 << 20)),
            "QEMU's narrow mask"
        );
        d.apply(&io(true, 0xcfc, 1, 0x01));
        assert_eq!(d.ecam(), Some((0xb000_0000, 256 << 20)));
        assert_eq!(port_devfn("pcie-root-port,addr=0x1c.3,id=x"), Some(0xe3));
    }
}
