//! Guest-visible latency (issue 7): the example KVM VMM boots the probe guest against a real
//! pcierc process; the guest times its own exits with the TSC. Each kind of configuration access
//! is set against the floor, a trivial exit the VMM answers itself, and the forwarded ones also
//! against a raw socket ping-pong of the same message sizes measured in the same run.

mod image;
pub(crate) mod probe;
pub(crate) mod qemu;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use crate::affinity::{Pinned, Placement};
use pcierc_protocol::{Frontend, FrontendOptions, ProtocolFeatures};

use crate::backend::{Pcierc, ScratchDir};
use crate::error::{Context, Error, Result};
use crate::pingpong::{EchoPeer, GUEST_READ_REPLY, GUEST_REQUEST, GUEST_WRITE_REPLY};
use crate::report::{Ratio, Reporter, Samples};

use self::probe::{Mode, ProbeRun};

/// Where the probe guest's ECAM read goes: 00:00.0 offset 0 at the ECAM base it programs
/// (QEMU's q35 address, as the VMM's MCFG says).
const ECAM_READ_ADDR: u64 = 0xb000_0000;
/// What it reads there: the MCH's vendor and device id (8086:29c0).
const MCH_ID: u64 = 0x29c0_8086;

/// Issue 7: a read served from the configuration snapshot, at most this many floors.
const READ_TARGET: f64 = 1.2;
/// Issue 7: a forwarded write, at most the floor plus this many socket ping-pongs.
const WRITE_TARGET: f64 = 1.3;

/// Every figure the group prints (both placements), for `--filter`.
pub const FIGURES: &[&str] = &[
    "guest_exit_floor_ns",
    "guest_unclaimed_mmio_ns",
    "guest_ecam_read_mapped_ns",
    "guest_ecam_read_mapped_above_loop_ns",
    "guest_ecam_read_snapshot_ns",
    "guest_ecam_read_forwarded_ns",
    "guest_cf8_cfc_read_snapshot_ns",
    "guest_cf8_cfc_read_forwarded_ns",
    "guest_socket_ping_pong_ns",
    "guest_socket_ping_pong_write_ns",
    "guest_frontend_mmio_read_ns",
    "guest_ecam_write_target_ns",
    "guest_ecam_write_ns",
    "guest_exit_floor_cross_cpu_ns",
    "guest_unclaimed_mmio_cross_cpu_ns",
    "guest_ecam_read_mapped_cross_cpu_ns",
    "guest_ecam_read_snapshot_cross_cpu_ns",
    "guest_ecam_read_forwarded_cross_cpu_ns",
    "guest_cf8_cfc_read_snapshot_cross_cpu_ns",
    "guest_cf8_cfc_read_forwarded_cross_cpu_ns",
    "guest_socket_ping_pong_cross_cpu_ns",
    "guest_socket_ping_pong_write_cross_cpu_ns",
    "guest_frontend_mmio_read_cross_cpu_ns",
    "guest_ecam_write_target_cross_cpu_ns",
    "guest_ecam_write_cross_cpu_ns",
    "guest_qemu_exit_floor_ns",
    "guest_qemu_ecam_read_ns",
    "guest_qemu_ecam_write_ns",
    "guest_qemu_cf8_cfc_read_ns",
    "guest_pcierc_vs_qemu_exit_floor_ns",
    "guest_pcierc_vs_qemu_ecam_read_ns",
    "guest_pcierc_vs_qemu_ecam_read_above_floor_ns",
    "guest_pcierc_vs_qemu_ecam_write_ns",
    "guest_pcierc_vs_qemu_ecam_write_above_floor_ns",
    "guest_pcierc_vs_qemu_cf8_cfc_read_ns",
    "guest_pcierc_vs_qemu_cf8_cfc_read_above_floor_ns",
];

/// Issue 7: pcierc through the VMM within this many times QEMU's in-process root ports.
const QEMU_TARGET: f64 = 1.2;
/// Issue 17 item 7: an ECAM read from the mapped snapshot at most this many of QEMU's.
const MAPPED_TARGET: f64 = 0.1;

/// How much to measure per placement.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// VMM runs of each mode (snapshot mapped into ECAM, snapshot, forwarded), interleaved.
    pub runs: usize,
    /// Ping-pongs of each size after each pair of runs.
    pub pings: usize,
}

/// Run the group in each placement (`suffix` after the figure stems). `vmm` is the VMM binary
/// or why there is none; when the VMM cannot run here, a `# missing:` line says why and the
/// group prints nothing else.
pub fn run(
    rep: &mut Reporter,
    pcierc: &Path,
    vmm: std::result::Result<(&Path, &str), String>,
    plan: Plan,
    placements: &[(Placement, &str)],
) -> Result<()> {
    let vmm = match vmm.and_then(|v| kvm_usable().map(|()| v)) {
        Ok((v, note)) => {
            rep.note(format!("vmm: {} ({note})", v.display()));
            v
        }
        Err(why) => {
            rep.note(format!("missing: guest_*: {why}"));
            return Ok(());
        }
    };
    rep.note(format!("guest: /dev/kvm is {}", kvm_kind()));
    let mut first = true;
    for &(placement, suffix) in placements {
        match measure(pcierc, vmm, plan, placement)? {
            Measured::CannotRun(why) => {
                rep.note(format!(
                    "missing: guest_*: the VMM cannot run the probe guest here: {why}"
                ));
                return Ok(());
            }
            Measured::Done(m) => {
                print(rep, &m, plan, placement, suffix);
                // QEMU right after the main placement, so its comparison (and the mapped read's
                // ratio against it) does not depend on the other placements.
                if first {
                    let qemu = compare_with_qemu(rep, &m, plan, placement)?;
                    print_mapped(rep, &m, qemu);
                    first = false;
                }
            }
        }
    }
    Ok(())
}

/// QEMU's figures the mapped read is set against: its ECAM read and, if the guest printed
/// it, its empty bench loop (ns).
struct QemuRead {
    read: f64,
    empty: Option<f64>,
}

/// Issue 17 item 7: the main placement's ECAM read from the mapped snapshot, against QEMU's
/// ECAM read measured in the same run (or, without QEMU, against the floor); and the same
/// without the bench loop's own cost, where both guests timed it.
fn print_mapped(rep: &mut Reporter, m: &Measurements, qemu: Option<QemuRead>) {
    let Some(mapped) = m.mapped_label(probe::ECAM_READ) else {
        rep.note("missing: guest_ecam_read_mapped_ns: no --ecam-map run printed an ECAM read");
        return;
    };
    let range = format!("{:.0}-{:.0}", mapped.min(), mapped.max());
    match qemu {
        Some(QemuRead { read: q, empty }) => {
            rep.note(format!(
                "ECAM read with pcierc's snapshot mapped read-only into the guest's ECAM window \
                 (--ecam-map on, the default: no VM exit), {} runs (run means {range} ns), \
                 against QEMU's ECAM read above (issue 17 item 7's target: <= {MAPPED_TARGET}x)",
                m.mapped.len()
            ));
            rep.figure(
                "guest_ecam_read_mapped_ns",
                mapped.median(),
                "ns",
                Ratio::Of(q),
            );
            let own = m.mapped_label(probe::EMPTY).map(|e| e.median());
            if let (Some(own), Some(qe)) = (own, empty) {
                let (v, qv) = (mapped.median() - own, q - qe);
                rep.note(format!(
                    "the same without the bench loop (`bench: {}`: call, ret, dec, jnz, no \
                     access; {own:.0} ns here, {qe:.0} ns under QEMU), i.e. the access alone: \
                     on this PVM every guest instruction is emulated, so the loop dominates a \
                     read that no longer exits",
                    probe::EMPTY
                ));
                rep.figure(
                    "guest_ecam_read_mapped_above_loop_ns",
                    v,
                    "ns",
                    Ratio::Of(qv),
                );
            }
        }
        None => {
            let floor = m
                .mapped_label(probe::FLOOR)
                .map_or(f64::NAN, |f| f.median());
            rep.note(format!(
                "ECAM read with the snapshot mapped (--ecam-map on), {} runs (run means {range} \
                 ns); QEMU could not run, so its ratio is against the same runs' exit floor \
                 (issue 17 item 7's target, <= {MAPPED_TARGET}x QEMU's ECAM read, not measured)",
                m.mapped.len()
            ));
            rep.figure(
                "guest_ecam_read_mapped_ns",
                mapped.median(),
                "ns",
                Ratio::Of(floor),
            );
        }
    }
}

/// The same guest under `qemu-system-x86_64 -M q35 -accel kvm` (QEMU's own root ports), in the
/// main placement, against the VMM's figures `m`; `# missing:` when QEMU cannot boot it here.
fn compare_with_qemu(
    rep: &mut Reporter,
    m: &Measurements,
    plan: Plan,
    placement: Placement,
) -> Result<Option<QemuRead>> {
    let missing = |why: String| {
        rep.note(format!(
            "missing: guest_qemu_*: the same guest on {} -M q35 -accel kvm, target within \
             {QEMU_TARGET}x: {why}",
            qemu::QEMU
        ))
    };
    if let Err(why) = image::qemu_entry(pcierc_examples::guest::PCIE_PROBE_ELF) {
        missing(why);
        return Ok(None);
    }
    if !qemu::available() {
        missing(format!("{} is not on PATH", qemu::QEMU));
        return Ok(None);
    }
    // The guest's TSC under KVM is the host's, as under the VMM: its --stats frequency.
    let khz = Samples::new(
        m.snapshot
            .iter()
            .chain(&m.forwarded)
            .chain(&m.mapped)
            .map(|r| r.tsc_khz)
            .collect(),
    )
    .median();
    let dir = ScratchDir::new("qemu")?;
    let kernel = dir.path().join("pcie-probe.elf");
    std::fs::write(&kernel, pcierc_examples::guest::PCIE_PROBE_ELF)
        .context(format!("writing {}", kernel.display()))?;
    let runs = plan.runs.clamp(1, 3);
    let pinned = Pinned::new(placement)?;
    let mut cycles = Vec::with_capacity(runs);
    for run in 0..runs {
        match qemu::run(&kernel) {
            Ok(c) => cycles.push(c),
            Err(e) if run == 0 => {
                drop(pinned);
                missing(format!("the boot failed: {e}"));
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
    }
    drop(pinned);
    let ns = |label: &str| {
        Samples::new(
            cycles
                .iter()
                .filter_map(|c| c.get(label))
                .map(|&c| c as f64 / khz * 1e6)
                .collect(),
        )
    };
    let q_floor = ns(probe::FLOOR);
    let q_read = ns(probe::ECAM_READ);
    let q_write = ns(probe::ECAM_WRITE);
    let q_cf8 = ns(probe::CF8_CFC_READ);
    let q_loop = cycles
        .iter()
        .filter_map(|c| c.get(probe::LOOP))
        .map(|&c| c as f64 / khz * 1e6)
        .collect::<Vec<_>>();
    let range = |s: &Samples| format!("{:.0}-{:.0}", s.min(), s.max());
    rep.note(format!(
        "the same probe guest under {} -M q35 -accel kvm (PVH entry, pcierc's default topology \
         as four pcie-root-ports on pcie.0 02.0-02.3, QEMU's own in-process root ports, no \
         pcierc), {runs} boots in the main placement, cycles converted with the VMM's --stats \
         TSC frequency ({khz:.0} kHz: the host's TSC in both); medians over boots; floor: the \
         same `in` from port 0x5f0 (QEMU's unassigned-I/O path){}; run means (min-max, ns): \
         floor {}, ECAM read {}, ECAM write {}, CF8/CFC read {}; ratios against QEMU's floor",
        qemu::QEMU,
        if q_loop.is_empty() {
            String::new()
        } else {
            format!(
                "; the exit-free loop-x10 takes {:.0} ns",
                Samples::new(q_loop).median()
            )
        },
        range(&q_floor),
        range(&q_read),
        range(&q_write),
        range(&q_cf8),
    ));
    let qf = q_floor.median();
    rep.figure("guest_qemu_exit_floor_ns", qf, "ns", Ratio::Baseline);
    for (stem, s) in [
        ("ecam_read", &q_read),
        ("ecam_write", &q_write),
        ("cf8_cfc_read", &q_cf8),
    ] {
        rep.figure(
            &format!("guest_qemu_{stem}_ns"),
            s.median(),
            "ns",
            Ratio::Of(qf),
        );
    }
    let vf = m
        .label(probe::FLOOR, true, true)
        .expect("every run has a floor line (checked by probe::run)")
        .median();
    rep.note(format!(
        "pcierc (through the example VMM, configuration snapshot on, --ecam-map off) against QEMU's \
         in-process root ports, ratio = pcierc / QEMU (issue 7's target: within {QEMU_TARGET}x); \
         the floors differ (the example VMM's exit path against QEMU's), so each access also \
         as (figure - its floor), pcierc's over QEMU's, where both are positive"
    ));
    rep.figure(
        "guest_pcierc_vs_qemu_exit_floor_ns",
        vf,
        "ns",
        Ratio::Of(qf),
    );
    for (stem, label, q) in [
        ("ecam_read", probe::ECAM_READ, &q_read),
        ("ecam_write", probe::ECAM_WRITE, &q_write),
        ("cf8_cfc_read", probe::CF8_CFC_READ, &q_cf8),
    ] {
        let Some(v) = m.label(label, true, false) else {
            rep.note(format!(
                "missing: guest_pcierc_vs_qemu_{stem}_ns: the VMM runs printed no \"bench: \
                 {label}\" line"
            ));
            continue;
        };
        let (v, q) = (v.median(), q.median());
        rep.figure(
            &format!("guest_pcierc_vs_qemu_{stem}_ns"),
            v,
            "ns",
            Ratio::Of(q),
        );
        if v > vf && q > qf {
            rep.figure(
                &format!("guest_pcierc_vs_qemu_{stem}_above_floor_ns"),
                v - vf,
                "ns",
                Ratio::Of(q - qf),
            );
        } else {
            rep.note(format!(
                "guest_pcierc_vs_qemu_{stem}_above_floor_ns not printed: pcierc's {v:.0} - \
                 {vf:.0} ns or QEMU's {q:.0} - {qf:.0} ns is not above its floor"
            ));
        }
    }
    if let Some(fwd) = m.label(probe::ECAM_READ, false, true) {
        rep.note(format!(
            "for reference, pcierc's forwarded ECAM read (--no-config-snapshot) is {:.2}x QEMU's \
             ECAM read",
            fwd.median() / q_read.median()
        ));
    }
    let q_empty = ns(probe::EMPTY);
    Ok(Some(QemuRead {
        read: q_read.median(),
        empty: (q_empty.len() > 0).then(|| q_empty.median()),
    }))
}

/// `/dev/kvm` can be opened for reading and writing, as the VMM does.
fn kvm_usable() -> std::result::Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(|e| format!("/dev/kvm cannot be opened ({e}): no KVM here"))
}

/// Which KVM this is: PVM (software-assisted) or hardware virtualization.
fn kvm_kind() -> &'static str {
    let module = |m: &str| Path::new("/sys/module").join(m).exists();
    if module("kvm_pvm") {
        "PVM (kvm_pvm: software-assisted, the guest's ring-0 code is emulated; every guest \
         instruction is slow, exits or not)"
    } else if module("kvm_intel") || module("kvm_amd") {
        "hardware-assisted (kvm_intel / kvm_amd)"
    } else {
        "of an unknown kind (no kvm_pvm, kvm_intel or kvm_amd module)"
    }
}

enum Measured {
    Done(Box<Measurements>),
    /// The first VMM run failed: KVM or the VMM does not work here.
    CannotRun(String),
}

/// Everything measured in one placement.
struct Measurements {
    /// `--ecam-map on` (the default).
    mapped: Vec<ProbeRun>,
    /// `--ecam-map off`.
    snapshot: Vec<ProbeRun>,
    forwarded: Vec<ProbeRun>,
    ping_read: Samples,
    ping_write: Samples,
    /// `Frontend::mmio_read` of the guest's ECAM address from the bench, as a message.
    frontend_read: Samples,
}

impl Measurements {
    /// A label's ns per access over the runs of one mode (or both).
    fn label(&self, label: &str, snapshot: bool, forwarded: bool) -> Option<Samples> {
        let runs = self
            .snapshot
            .iter()
            .filter(|_| snapshot)
            .chain(self.forwarded.iter().filter(|_| forwarded));
        let v: Vec<f64> = runs.filter_map(|r| r.ns.get(label).copied()).collect();
        (!v.is_empty()).then(|| Samples::new(v))
    }

    /// A label's ns per access over the `--ecam-map on` runs.
    fn mapped_label(&self, label: &str) -> Option<Samples> {
        let v: Vec<f64> = self
            .mapped
            .iter()
            .filter_map(|r| r.ns.get(label).copied())
            .collect();
        (!v.is_empty()).then(|| Samples::new(v))
    }

    /// The VMM's mean handling time of an exit kind over the runs of one mode.
    fn handling(runs: &[ProbeRun], kind: &str) -> Option<f64> {
        let v: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.handling_ns.get(kind).copied())
            .collect();
        (!v.is_empty()).then(|| Samples::new(v).median())
    }
}

fn measure(pcierc: &Path, vmm: &Path, plan: Plan, placement: Placement) -> Result<Measured> {
    let pinned = Pinned::new(placement)?;
    // pcierc and the echo peers where the server goes; the VMM (its vCPU thread and its
    // backend-channel thread) is spawned from this thread, so it runs where the client goes.
    let (rc, mut ping_read, mut ping_write) = pinned.spawn_peers(|| {
        Ok((
            Pcierc::start(pcierc, &[])?,
            EchoPeer::spawn(GUEST_REQUEST, GUEST_READ_REPLY)?,
            EchoPeer::spawn(GUEST_REQUEST, GUEST_WRITE_REPLY)?,
        ))
    })?;
    let first = match probe::run(vmm, rc.socket(), Mode::Snapshot) {
        Ok(r) => r,
        Err(e) => return Ok(Measured::CannotRun(e.to_string())),
    };
    // The guest's forwarded ECAM read without a guest: the same MmioRead from this thread (a
    // tool frontend without the snapshot; the VMM's first run enabled ECAM).
    let mut tool = FrontendOptions::tool("bench-guest");
    tool.protocol_features -= ProtocolFeatures::CONFIG_SNAPSHOT;
    let mut fe = Frontend::connect(rc.socket(), tool).context("connecting a tool frontend")?;
    let mut mmio_read = || -> Result<()> {
        let v = fe
            .mmio_read(ECAM_READ_ADDR, 4)
            .context("MmioRead of the ECAM base")?;
        if v != MCH_ID {
            return Err(Error::Other(format!(
                "the ECAM base reads {v:#x}, not the MCH's id {MCH_ID:#x}"
            )));
        }
        Ok(())
    };
    for _ in 0..plan.pings {
        ping_read.round_trip()?;
        ping_write.round_trip()?;
        mmio_read()?;
    }
    let mut snapshot = vec![first];
    let mut mapped = Vec::with_capacity(plan.runs);
    let mut forwarded = Vec::with_capacity(plan.runs);
    // Batch means, as the guest measures (one TSC reading around 2000 accesses).
    let mut means: [Vec<f64>; 3] = std::array::from_fn(|_| Vec::with_capacity(plan.runs));
    for run in 0..plan.runs {
        if run > 0 {
            snapshot.push(probe::run(vmm, rc.socket(), Mode::Snapshot)?);
        }
        mapped.push(probe::run(vmm, rc.socket(), Mode::Mapped)?);
        forwarded.push(probe::run(vmm, rc.socket(), Mode::Forwarded)?);
        means[0].push(batch_mean(plan.pings, || ping_read.round_trip())?);
        means[1].push(batch_mean(plan.pings, || ping_write.round_trip())?);
        means[2].push(batch_mean(plan.pings, &mut mmio_read)?);
    }
    drop(pinned);
    let [ping_read, ping_write, frontend_read] = means.map(Samples::new);
    Ok(Measured::Done(Box::new(Measurements {
        mapped,
        snapshot,
        forwarded,
        ping_read,
        ping_write,
        frontend_read,
    })))
}

/// Mean time (ns) of `n` calls of `op`, timed together.
fn batch_mean(n: usize, mut op: impl FnMut() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    for _ in 0..n {
        op()?;
    }
    Ok(t.elapsed().as_nanos() as f64 / n.max(1) as f64)
}

fn print(rep: &mut Reporter, m: &Measurements, plan: Plan, placement: Placement, suffix: &str) {
    let name = |stem: &str| format!("guest_{stem}{suffix}_ns");
    let all_runs = || m.snapshot.iter().chain(&m.forwarded).chain(&m.mapped);
    let khz: BTreeMap<u64, usize> = all_runs().fold(BTreeMap::new(), |mut acc, r| {
        *acc.entry(r.tsc_khz as u64).or_default() += 1;
        acc
    });
    let khz: Vec<String> = khz.keys().map(u64::to_string).collect();
    let floor = m
        .label(probe::FLOOR, true, true)
        .expect("every run has a floor line (checked by probe::run)");
    let get = |label, snapshot, forwarded| {
        m.label(label, snapshot, forwarded)
            .expect("every run has this line (checked by probe::run)")
    };
    let unclaimed = get(probe::UNCLAIMED_MMIO, true, true);
    let ecam_snapshot = get(probe::ECAM_READ, true, false);
    let ecam_forwarded = get(probe::ECAM_READ, false, true);
    let cf8_snapshot = get(probe::CF8_CFC_READ, true, false);
    let cf8_forwarded = get(probe::CF8_CFC_READ, false, true);
    let range = |s: &Samples| format!("{:.0}-{:.0}", s.min(), s.max());

    rep.note(format!(
        "guest-visible latency{} ({}; the VMM's vCPU and backend-channel threads count as the \
         measuring thread, pcierc and the echo processes as the peers): the example VMM boots \
         the probe guest (examples/guest/pcie_probe.S) against one pcierc process (default \
         topology); the guest times 2000 accesses of each kind with rdtsc and prints their mean, \
         converted to ns with the TSC frequency of --stats ({} kHz); {} runs with pcierc's \
         configuration snapshot (--ecam-map off), {} with --no-config-snapshot, {} with the \
         snapshot mapped into the ECAM window (--ecam-map on, the default), interleaved with \
         the ping-pongs; medians over runs",
        if suffix.is_empty() {
            String::new()
        } else {
            format!(", figures named *{suffix}_*")
        },
        placement.describe(),
        khz.join("/"),
        m.snapshot.len(),
        m.forwarded.len(),
        m.mapped.len(),
    ));
    if let Some(lp) = m.label(probe::LOOP, true, true) {
        rep.note(format!(
            "every figure, the floor included, contains the guest's bench loop (call, the \
             access, ret, dec, jnz); for scale, ten iterations of a three-instruction loop \
             without an exit take {:.0} ns in this guest",
            lp.median()
        ));
    }
    rep.note(format!(
        "run means (min-max, ns): floor {}, unclaimed MMIO {}, ECAM read snapshot {}, \
         forwarded {}, CF8/CFC read snapshot {}, forwarded {}",
        range(&floor),
        range(&unclaimed),
        range(&ecam_snapshot),
        range(&ecam_forwarded),
        range(&cf8_snapshot),
        range(&cf8_forwarded),
    ));
    rep.note(
        "floor: `in` from an unclaimed port (0x5f0), answered all ones by the VMM itself; \
         unclaimed MMIO: a read in the PCI hole, the same without a message; ratios against \
         the floor",
    );
    let f = floor.median();
    rep.figure(&name("exit_floor"), f, "ns", Ratio::Baseline);
    rep.figure(
        &name("unclaimed_mmio"),
        unclaimed.median(),
        "ns",
        Ratio::Of(f),
    );
    rep.note(format!(
        "ECAM read: 4 bytes of 00:00.0 (vendor/device id) at the MCFG base, served from pcierc's \
         configuration snapshot (target <= {READ_TARGET}x the floor) or forwarded as MmioRead \
         (--no-config-snapshot); CF8/CFC read: the same through CONFIG_ADDRESS and CONFIG_DATA, \
         one exit (the `out` is coalesced by KVM, --coalesce-pio on, and latched by the VMM, \
         CONFIG_ADDRESS_LATCH, before the `in` exits; the `in` is sent as the ConfigRead it \
         selects: served from the snapshot, or forwarded); ratios against the floor"
    ));
    // The main placement's mapped read is printed against QEMU's (print_mapped).
    if let (false, Some(mapped)) = (suffix.is_empty(), m.mapped_label(probe::ECAM_READ)) {
        rep.note(format!(
            "ECAM read with the snapshot mapped into the guest's ECAM window (--ecam-map on, \
             no VM exit), {} runs (run means {}); ratio against the floor",
            m.mapped.len(),
            range(&mapped)
        ));
        rep.figure(
            &name("ecam_read_mapped"),
            mapped.median(),
            "ns",
            Ratio::Of(f),
        );
    }
    for (stem, s) in [
        ("ecam_read_snapshot", &ecam_snapshot),
        ("ecam_read_forwarded", &ecam_forwarded),
        ("cf8_cfc_read_snapshot", &cf8_snapshot),
        ("cf8_cfc_read_forwarded", &cf8_forwarded),
    ] {
        rep.figure(&name(stem), s.median(), "ns", Ratio::Of(f));
    }
    rep.note(format!(
        "baselines of the forwarded figures: blocking unix-socket echo with a child process, \
         {GUEST_REQUEST}-byte request, {GUEST_READ_REPLY}-byte reply (as MmioRead) or \
         {GUEST_WRITE_REPLY}-byte reply (as MmioWrite), from the bench process in the VMM's \
         place; timed as the guest times: the mean of a batch of {} after each pair of runs, \
         median of the {} batches (min-max {} / {})",
        plan.pings,
        m.ping_read.len(),
        range(&m.ping_read),
        range(&m.ping_write),
    ));
    let pr = m.ping_read.median();
    let pw = m.ping_write.median();
    rep.figure(&name("socket_ping_pong"), pr, "ns", Ratio::Baseline);
    rep.figure(&name("socket_ping_pong_write"), pw, "ns", Ratio::Baseline);
    rep.note(format!(
        "the guest's forwarded ECAM read without guest or VMM: Frontend::mmio_read of \
         {ECAM_READ_ADDR:#x} (MmioRead, snapshot off) from the bench process in the VMM's place, \
         batches as the ping-pongs (min-max {}); ratio against guest_socket_ping_pong{suffix}_ns",
        range(&m.frontend_read)
    ));
    let fr = m.frontend_read.median();
    rep.figure(&name("frontend_mmio_read"), fr, "ns", Ratio::Of(pr));
    let write_target = f + WRITE_TARGET * pw;
    rep.note(format!(
        "ECAM write target (issue 7): guest_exit_floor{suffix}_ns + {WRITE_TARGET} x \
         guest_socket_ping_pong_write{suffix}_ns; its ratio against the floor"
    ));
    rep.figure(&name("ecam_write_target"), write_target, "ns", Ratio::Of(f));
    match m.label(probe::ECAM_WRITE, true, false) {
        Some(w) => {
            rep.note(format!(
                "ECAM write as the guest timed it (\"bench: {}\", snapshot on); ratio against \
                 guest_ecam_write_target{suffix}_ns (met when <= 1.00)",
                probe::ECAM_WRITE
            ));
            rep.figure(
                &name("ecam_write"),
                w.median(),
                "ns",
                Ratio::Of(write_target),
            );
        }
        None => rep.note(format!(
            "missing: guest_ecam_write{suffix}_ns: the probe guest does not time ECAM writes \
             (no \"bench: {}\" line); the nearest measured: CF8/CFC read with the snapshot minus \
             the floor, i.e. one forwarded PioWrite (the same {GUEST_REQUEST}/{GUEST_WRITE_REPLY} \
             bytes as MmioWrite) as the guest sees it, about {:.0} ns = {:.2}x the write target \
             (met when <= 1.00; an estimate: it takes the snapshot `in` to cost one floor)",
            probe::ECAM_WRITE,
            cf8_snapshot.median() - f,
            (cf8_snapshot.median() - f) / write_target
        )),
    }
    let read_target = f + WRITE_TARGET * pr;
    let mmio = Measurements::handling(&m.forwarded, probe::FORWARDED_MMIO);
    rep.note(format!(
        "the forwarded ECAM read against a target of the write's form (floor + {WRITE_TARGET} x \
         guest_socket_ping_pong{suffix}_ns = {read_target:.0} ns): {:.2}x (met when <= 1.00){}",
        ecam_forwarded.median() / read_target,
        match mmio {
            Some(h) => format!(
                "; the guest sees {:.0} ns more than the floor ({:.2}x \
                 guest_frontend_mmio_read{suffix}_ns); the VMM's own time per forwarded MMIO \
                 exit (--stats mean handling of the --no-config-snapshot runs, median over runs) \
                 {h:.0} ns = {:.2}x guest_frontend_mmio_read{suffix}_ns",
                ecam_forwarded.median() - f,
                (ecam_forwarded.median() - f) / fr,
                h / fr
            ),
            None => String::new(),
        }
    ));
}
