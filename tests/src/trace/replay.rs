//! Replaying a [`Recording`] against a running `pcierc`: every access in order through the
//! protocol (`PioRead`/`PioWrite`/`MmioRead`/`MmioWrite`, as a VMM forwards them), every host
//! action through the control socket at its point in the stream, every read pcierc answers
//! compared with QEMU's, and the MSIs pcierc sends compared with QEMU's, step by step.
//!
//! Routing, as a VMM in front of pcierc would see it:
//! - pcierc answers `EREMOTE` for a function another emulator serves: QEMU's ICH9 functions on
//!   bus 0 (declared with `owner=qemu`, see [`backend_args`]) and the hot-added endpoint (whose
//!   `device_add` names `owner: "qemu"`). QEMU served those reads; they are not pcierc's and are
//!   counted, not compared. The same answer for the MCH or a root port is a mismatch.
//! - `ENODEV` ("not claimed") is expected where the access is no configuration cycle of a
//!   function pcierc emulates: byte/word accesses to 0xCF8-0xCFB (`docs/qemu-compat.md`) and
//!   memory that is no MSI-X BAR of a root port (the endpoint's BARs).
//! - Reads of absent functions (bus 0 slots, buses behind the ports) are pcierc's and compared.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::time::{Duration, Instant};

use pcierc_protocol::{Frontend, FrontendOptions, Notification, Status};
use serde_json::json;

use super::{Access, Control, Decoder, Msi, Recording, Space, Step, Target};
use crate::differential::{assert_no_mismatches, Deviation, Kind, DEVIATIONS};
use crate::process::Backend;
use crate::qmp_socket::QmpSocket;

/// Bit-precise allowed differences a replay reaches beyond the register differential's
/// [`DEVIATIONS`] (a hot-plug sequence changes link state; `docs/qemu-compat.md`).
pub const REPLAY_ONLY_DEVIATIONS: &[Deviation] = &[Deviation {
    kind: Kind::RootPort,
    // Slot Status: 0x54 + 0x1a.
    offsets: 0x6e..0x70,
    bits: 1 << 8,
    reason: "Slot Status DLL State Changed is set on link changes: pcierc reports them",
}];

/// Every deviation a replay allows: [`DEVIATIONS`] and [`REPLAY_ONLY_DEVIATIONS`].
pub fn replay_deviations() -> impl Iterator<Item = &'static Deviation> {
    DEVIATIONS.iter().chain(REPLAY_ONLY_DEVIATIONS)
}

/// What makes a [`ScopedDeviation`] apply to a root port, from that point of the stream on.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Trigger {
    /// A `device_add` into the port's slot.
    HotAdd,
    /// An uncorrectable error injected at the port (`pcie_aer_inject_error PORT NAME`).
    UncorrectableAer,
}

/// A bit-precise difference that applies only to the root port a host action targeted, from
/// that action on (`docs/qemu-compat.md`, "Linux replay").
#[derive(Clone, Debug)]
pub struct ScopedDeviation {
    /// When it starts applying.
    pub trigger: Trigger,
    /// Configuration offsets of the root port.
    pub offsets: Range<u16>,
    /// The bits that may differ, little-endian from `offsets.start`.
    pub bits: u64,
    /// pcierc lacks QEMU behaviour it should have: listed so the replay passes, to be fixed in
    /// the backend and then removed from this list.
    pub known_gap: bool,
    /// Why.
    pub reason: &'static str,
}

/// The differences that appear only after a hot-add or an AER injection on a port.
pub const SCOPED_DEVIATIONS: &[ScopedDeviation] = &[
    ScopedDeviation {
        trigger: Trigger::HotAdd,
        // Link Status (0x54 + 0x12): Current Link Speed, Negotiated Link Width.
        offsets: 0x66..0x68,
        bits: 0x3ff,
        known_gap: false,
        reason: "QEMU negotiates Link Status with the endpoint's own Link Status \
                 (pcie_sync_bridge_lnk); pcierc does not know the endpoint's link and reports \
                 the port's Link Capabilities",
    },
    ScopedDeviation {
        trigger: Trigger::UncorrectableAer,
        // Link Capabilities (0x54 + 0x0c), low word.
        offsets: 0x60..0x62,
        bits: 0xffff,
        known_gap: false,
        reason: "QEMU 7.2 bug: pcie_aer_inject_uncor_error() stores Device Status with \
                 pci_set_long, zeroing Link Capabilities bits 15:0 (speed, width, ASPM)",
    },
    ScopedDeviation {
        trigger: Trigger::UncorrectableAer,
        // Link Status: speed and width, which QEMU re-derives from the zeroed Link Capabilities.
        offsets: 0x66..0x68,
        bits: 0x3ff,
        known_gap: false,
        reason: "follows from the QEMU 7.2 Link Capabilities bug: an empty slot's Link Status \
                 is synchronised from Link Capabilities on every read",
    },
];

/// The outcome of a replay.
#[derive(Clone, Debug, Default)]
pub struct ReplayReport {
    /// Guest accesses replayed.
    pub accesses: usize,
    /// Reads among them.
    pub reads: usize,
    /// Reads pcierc answered with data, compared with QEMU's value.
    pub compared: usize,
    /// Of those, reads of the MCH and the root ports (the rest: absent functions, MSI-X BARs).
    pub compared_emulated: usize,
    /// Differing reads excused bit for bit by a [`replay_deviations`] entry.
    pub allowed: usize,
    /// Differing reads excused by a [`SCOPED_DEVIATIONS`] entry that is not a known gap.
    pub allowed_scoped: usize,
    /// Differing reads excused only by a known gap of pcierc's (see [`ScopedDeviation`]).
    pub known_gaps: usize,
    /// Accesses pcierc answered `EREMOTE` (QEMU's own functions, the hot-added endpoint).
    pub remote: usize,
    /// Accesses pcierc answered `ENODEV` (not a configuration cycle of its functions).
    pub unclaimed: usize,
    /// Host actions sent to the control socket.
    pub controls: usize,
    /// Root-port MSIs QEMU sent, and pcierc.
    pub msis: (usize, usize),
    /// Everything that differs beyond the deviations, in stream order.
    pub mismatches: Vec<String>,
    /// Compared reads per emulated function (`00:dd.f`), absent functions, MSI-X BARs.
    pub per_function: BTreeMap<String, usize>,
    /// Wall-clock time of the replay.
    pub elapsed: Duration,
}

impl ReplayReport {
    /// One line of figures.
    pub fn summary(&self) -> String {
        format!(
            "{} accesses ({} reads): {} compared ({} MCH/root port), {} mismatches, {} allowed \
             by deviations ({} by scoped ones, {} by known gaps), {} EREMOTE, {} ENODEV; {} host \
             actions; MSIs qemu {} pcierc {}; {:.2?}",
            self.accesses,
            self.reads,
            self.compared,
            self.compared_emulated,
            self.mismatches.len(),
            self.allowed + self.allowed_scoped + self.known_gaps,
            self.allowed_scoped,
            self.known_gaps,
            self.remote,
            self.unclaimed,
            self.controls,
            self.msis.0,
            self.msis.1,
            self.elapsed
        )
    }

    /// Panic listing the mismatches (the first 60) if there are any.
    pub fn assert_clean(&self) {
        assert_no_mismatches(&self.mismatches, || {
            format!(
                "{} differences from QEMU: {}",
                self.mismatches.len(),
                self.summary()
            )
        });
    }
}

/// `pcierc` arguments that declare the recording's remote functions as QEMU's (`owner=qemu`).
/// The root ports are the embedded default topology's (the recording used the same).
pub fn backend_args(rec: &Recording) -> Vec<String> {
    rec.remote
        .iter()
        .flat_map(|r| {
            let mf = if r.multifunction {
                ",multifunction=on"
            } else {
                ""
            };
            [
                "--device".to_string(),
                format!(
                    "qemu-builtin,id=qemu{:02x},bus=pcie.0,addr={:#x}.{}{mf},owner=qemu",
                    r.devfn,
                    r.devfn >> 3,
                    r.devfn & 7
                ),
            ]
        })
        .collect()
}

/// How the frontend reaches pcierc's registers.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ReadPath {
    /// Every access a request on the socket.
    Requests,
    /// Reads from the shared-memory configuration snapshot where pcierc offers it.
    Snapshot,
}

struct Replayer {
    fe: Frontend,
    channel: pcierc_protocol::BackendChannel,
    control: QmpSocket,
    decoder: Decoder,
    ports: Vec<u8>,
    report: ReplayReport,
    /// pcierc's MSIs as (index of the step after which it arrived, message).
    ours: Vec<(usize, Msi)>,
    /// QEMU's, the same way.
    theirs: Vec<(usize, Msi)>,
    /// (port devfn, trigger) pairs that have happened.
    triggered: BTreeSet<(u8, Trigger)>,
    /// Root port ids and their devfns; hot-added device ids and their port.
    port_ids: BTreeMap<String, u8>,
    /// The last value read of each root port configuration byte: (QEMU's, pcierc's).
    last_read: BTreeMap<(u8, u16), (u8, u8)>,
}

/// Replay `rec` against `backend` (started with [`backend_args`] and a control socket).
pub fn replay(rec: &Recording, backend: &Backend, path: ReadPath) -> ReplayReport {
    let mut opts = FrontendOptions::vmm("vmm");
    if path == ReadPath::Requests {
        opts.protocol_features
            .remove(pcierc_protocol::ProtocolFeatures::CONFIG_SNAPSHOT);
    }
    let mut fe = Frontend::connect(&backend.socket, opts).expect("connecting to pcierc");
    let channel = fe.take_backend_channel().expect("a backend channel");
    let control = QmpSocket::connect(
        backend
            .control
            .as_deref()
            .expect("pcierc with a control socket"),
        Duration::from_secs(10),
    )
    .expect("pcierc's control socket");
    let ports = rec.port_devfns();
    let mut r = Replayer {
        fe,
        channel,
        control,
        decoder: Decoder::new(&ports),
        ports,
        report: ReplayReport::default(),
        ours: Vec::new(),
        theirs: Vec::new(),
        triggered: BTreeSet::new(),
        last_read: BTreeMap::new(),
        port_ids: rec
            .root_ports
            .iter()
            .filter_map(|d| {
                let id = d.split(',').find_map(|kv| kv.strip_prefix("id="))?;
                Some((id.to_string(), super::port_devfn(d)?))
            })
            .collect(),
    };
    let started = Instant::now();
    let mut last = 0;
    for (i, step) in rec.steps.iter().enumerate() {
        match step {
            Step::Access(a) => {
                r.access(i, a);
                last = i;
            }
            Step::Control(c) => {
                r.control(c);
                last = i;
            }
            Step::Msi(m) => r.theirs.push((last, *m)),
        }
        r.drain(last);
    }
    r.report.elapsed = started.elapsed();
    r.compare_msis();
    r.report
}

impl Replayer {
    fn kind(&self, target: Target) -> Option<Kind> {
        match target {
            Target::Config {
                bus: 0, devfn: 0, ..
            } => Some(Kind::Mch),
            Target::Config { bus: 0, devfn, .. } if self.ports.contains(&devfn) => {
                Some(Kind::RootPort)
            }
            _ => None,
        }
    }

    fn access(&mut self, i: usize, a: &Access) {
        let target = self.decoder.target(a);
        self.decoder.apply(a);
        self.report.accesses += 1;
        let (is_io, what) = (a.space == Space::Io, describe(a, target));
        let written = if a.write {
            self.as_written_on_pcierc(target, a)
        } else {
            a.value
        };
        let result = match (a.write, is_io) {
            (true, true) => self.fe.pio_write(a.addr, a.width, written).map(|()| None),
            (true, false) => self.fe.mmio_write(a.addr, a.width, written).map(|()| None),
            (false, true) => self.fe.pio_read(a.addr, a.width).map(Some),
            (false, false) => self.fe.mmio_read(a.addr, a.width).map(Some),
        };
        let kind = self.kind(target);
        if !a.write {
            self.report.reads += 1;
        }
        let value = match result {
            Ok(v) => v,
            Err(e) => {
                match e.status() {
                    Some(Status::Remote) if kind.is_none() => self.report.remote += 1,
                    Some(Status::NoDevice) if kind.is_none() => self.report.unclaimed += 1,
                    _ => self
                        .report
                        .mismatches
                        .push(format!("step {i}: {what}: pcierc failed: {e}")),
                }
                return;
            }
        };
        let Some(ours) = value else { return };
        let mask = if a.width >= 8 {
            u64::MAX
        } else {
            (1u64 << (8 * a.width)) - 1
        };
        let (ours, qemu) = (ours & mask, a.value & mask);
        if let (Some(Kind::RootPort), Target::Config { devfn, offset, .. }) = (kind, target) {
            for b in 0..u16::from(a.width) {
                let byte = |v: u64| (v >> (8 * b)) as u8;
                self.last_read
                    .insert((devfn, offset + b), (byte(qemu), byte(ours)));
            }
        }
        self.report.compared += 1;
        if kind.is_some() {
            self.report.compared_emulated += 1;
        }
        let bucket = match (kind, target) {
            (Some(_), t) => function_name(t),
            (None, Target::Config { .. }) => "absent".to_string(),
            (None, Target::Other) => "MSI-X BARs".to_string(),
        };
        *self.report.per_function.entry(bucket).or_default() += 1;
        if ours == qemu {
            return;
        }
        let allowed = match (kind, target) {
            (Some(kind), Target::Config { offset, .. }) => replay_deviations()
                .filter(|d| d.kind == kind)
                .map(|d| bits_in(&d.offsets, d.bits, offset, a.width))
                .fold(0, |x, y| x | y),
            _ => 0,
        };
        let diff = ours ^ qemu;
        let (scoped, gaps) = self.scoped_bits(target, a.width);
        if diff & !allowed == 0 {
            self.report.allowed += 1;
        } else if diff & !(allowed | scoped) == 0 {
            self.report.allowed_scoped += 1;
        } else if diff & !(allowed | scoped | gaps) == 0 {
            self.report.known_gaps += 1;
        } else {
            self.report.mismatches.push(format!(
                "step {i}: {what}: qemu {qemu:#x}, pcierc {ours:#x}"
            ));
        }
    }

    /// The value the guest would have written had it run on pcierc: in a root port register
    /// with a [`replay_deviations`] bit, a deviated bit the guest wrote back as it last read it
    /// from QEMU is written as it last read it from pcierc. Linux read-modify-writes these
    /// registers (pciehp writes back the Slot Control it read and acknowledges the Slot Status
    /// events it read), so on pcierc it keeps DLL State Changed Enable and PME Interrupt Enable
    /// set and clears the DLL State Changed it saw; replaying QEMU's values unchanged would
    /// clear the enables and leave the event pending, and the interrupts would part ways.
    fn as_written_on_pcierc(&self, target: Target, a: &Access) -> u64 {
        let (Some(Kind::RootPort), Target::Config { devfn, offset, .. }) =
            (self.kind(target), target)
        else {
            return a.value;
        };
        let mut v = a.value;
        for b in 0..u16::from(a.width) {
            let dev = replay_deviations()
                .filter(|d| d.kind == Kind::RootPort)
                .map(|d| bits_in(&d.offsets, d.bits, offset + b, 1))
                .fold(0, |x, y| x | y);
            let Some(&(qemu, ours)) = self.last_read.get(&(devfn, offset + b)) else {
                continue;
            };
            let shift = 8 * u32::from(b);
            let byte = (v >> shift) as u8;
            let same = !(byte ^ qemu) & dev as u8;
            let adjusted = (byte & !same) | (ours & same);
            v = (v & !(0xff << shift)) | u64::from(adjusted) << shift;
        }
        v
    }

    /// Bits of a read that triggered [`SCOPED_DEVIATIONS`] excuse: (deviations, known gaps).
    fn scoped_bits(&self, target: Target, width: u8) -> (u64, u64) {
        let Target::Config {
            bus: 0,
            devfn,
            offset,
        } = target
        else {
            return (0, 0);
        };
        let mut out = (0, 0);
        for d in SCOPED_DEVIATIONS {
            if self.triggered.contains(&(devfn, d.trigger)) {
                let b = bits_in(&d.offsets, d.bits, offset, width);
                if d.known_gap {
                    out.1 |= b;
                } else {
                    out.0 |= b;
                }
            }
        }
        out
    }

    fn control(&mut self, c: &Control) {
        self.report.controls += 1;
        match c {
            Control::DeviceAdd { id, bus, .. } => {
                if let Some(&port) = self.port_ids.get(bus) {
                    self.port_ids.insert(id.clone(), port);
                    self.triggered.insert((port, Trigger::HotAdd));
                }
            }
            Control::AerInject { id, error } => {
                let uncorrectable =
                    pcierc_backend::control::aer::lookup(error).is_some_and(|e| !e.correctable);
                if let (Some(&port), true) = (self.port_ids.get(id), uncorrectable) {
                    self.triggered.insert((port, Trigger::UncorrectableAer));
                }
            }
            Control::DeviceDel { .. } => {}
        }
        let r = match c {
            Control::DeviceAdd { driver, id, bus } => self.control.execute(
                "device_add",
                json!({"driver": driver, "id": id, "bus": bus, "owner": "qemu"}),
            ),
            Control::DeviceDel { id } => self.control.execute("device_del", json!({ "id": id })),
            Control::AerInject { id, error } => self
                .control
                .execute("pcie-aer-inject-error", json!({"id": id, "error": error})),
        };
        match r {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => self
                .report
                .mismatches
                .push(format!("{c}: pcierc refused: {e}")),
            Err(e) => panic!("pcierc's control socket: {e}"),
        }
    }

    /// Take what pcierc sent on the backend channel (notifications precede the reply to the
    /// request that caused them, so they are here by now).
    fn drain(&mut self, at: usize) {
        loop {
            match self.channel.try_recv() {
                Ok(Some(Notification::Msi(m))) => self.ours.push((
                    at,
                    Msi {
                        devfn: m.devfn,
                        address: m.address,
                        data: m.data,
                    },
                )),
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(e) => panic!("pcierc's backend channel: {e}"),
            }
        }
    }

    fn compare_msis(&mut self) {
        self.report.msis = (self.theirs.len(), self.ours.len());
        if std::env::var_os("PCIERC_TRACE_DEBUG").is_some() {
            let list = |v: &[(usize, Msi)]| -> Vec<(usize, u8)> {
                v.iter().map(|(at, m)| (*at, m.devfn)).collect()
            };
            eprintln!("MSIs (after step, devfn): qemu   {:?}", list(&self.theirs));
            eprintln!("MSIs (after step, devfn): pcierc {:?}", list(&self.ours));
        }
        let n = self.theirs.len().max(self.ours.len());
        for k in 0..n {
            let (q, o) = (self.theirs.get(k), self.ours.get(k));
            if q != o {
                let show = |m: Option<&(usize, Msi)>| {
                    m.map_or("none".to_string(), |(at, m)| {
                        format!(
                            "after step {at} from 00:{:02x}.{} {:#x} <- {:#x}",
                            m.devfn >> 3,
                            m.devfn & 7,
                            m.address,
                            m.data
                        )
                    })
                };
                self.report.mismatches.push(format!(
                    "MSI #{k}: qemu {}, pcierc {}",
                    show(q),
                    show(o)
                ));
            }
        }
    }
}

/// The bits of a `width`-byte read at `offset` that `bits` (little-endian from
/// `offsets.start`) let differ, as [`Deviation`] defines them.
pub fn bits_in(offsets: &Range<u16>, bits: u64, offset: u16, width: u8) -> u64 {
    (0..u16::from(width))
        .filter_map(|b| {
            let at = offset + b;
            let rel = at.checked_sub(offsets.start)?;
            (at < offsets.end && rel < 8).then(|| ((bits >> (8 * rel)) & 0xff) << (8 * b))
        })
        .fold(0, |a, b| a | b)
}

fn function_name(t: Target) -> String {
    match t {
        Target::Config { bus, devfn, .. } => {
            format!("{bus:02x}:{:02x}.{}", devfn >> 3, devfn & 7)
        }
        Target::Other => "memory".into(),
    }
}

fn describe(a: &Access, t: Target) -> String {
    let op = match (a.space, a.write) {
        (Space::Io, false) => "in",
        (Space::Io, true) => "out",
        (Space::Memory, false) => "read",
        (Space::Memory, true) => "write",
    };
    let at = match t {
        Target::Config { offset, .. } => format!(" ({} {offset:#05x})", function_name(t)),
        Target::Other => String::new(),
    };
    format!("{op}{} {:#x}{at}", a.width, a.addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_deviations_are_single_bits_of_root_port_registers() {
        let bits = |d: &Deviation, off, w| bits_in(&d.offsets, d.bits, off, w);
        let dllsc = &REPLAY_ONLY_DEVIATIONS[0];
        assert_eq!(bits(dllsc, 0x6c, 4), 1 << 24, "Slot Status bit 8");
        assert_eq!(bits(dllsc, 0x6e, 2), 1 << 8);
        assert_eq!(bits(dllsc, 0x6f, 1), 1);
        assert_eq!(bits(dllsc, 0x6e, 1), 0);
        assert_eq!(bits(&DEVIATIONS[0], 0x70, 4), 1 << 3);
        let lnkcap = &SCOPED_DEVIATIONS[1];
        assert_eq!(bits_in(&lnkcap.offsets, lnkcap.bits, 0x60, 4), 0xffff);
        assert_eq!(bits_in(&lnkcap.offsets, lnkcap.bits, 0x62, 2), 0);
    }
}
