//! Scale: firmware-style enumeration with the default topology and with 128 root ports, and the
//! backend's resident memory with the default topology and with as many root ports as fit.

use std::path::Path;
use std::time::Instant;

use pcierc_examples::firmware::{enumerate, Layout};

use crate::affinity::{Pinned, Placement};
use crate::backend::{Pcierc, Vmm};
use crate::error::{Context, Error, Result};
use crate::report::{Ratio, Reporter, Samples};
use crate::scan::{full_scan, root_port_args, ScanCount, MAX_ROOT_PORTS};

/// Root ports of the large enumeration topology (issue 7).
const MANY_PORTS: usize = 128;
/// Resident memory targets of issue 7, in KiB: default topology, and 256 root ports.
const RSS_TARGET_DEFAULT_KIB: f64 = 16.0 * 1024.0;
const RSS_TARGET_MANY_KIB: f64 = 64.0 * 1024.0;

/// One enumeration pass measured: firmware setup, then the full scan.
#[derive(Debug)]
struct Pass {
    setup_ms: f64,
    setup_accesses: u64,
    functions_configured: usize,
    last_bus: u8,
    scan_ms: f64,
    scan: ScanCount,
}

/// Firmware setup with `examples/src/firmware.rs` (PCIEXBAR through CF8/CFC, bus numbers, BARs and
/// windows through ECAM), then [`full_scan`] with `ConfigRead`.
fn pass(vmm: &mut Vmm) -> Result<Pass> {
    let t = Instant::now();
    let e = enumerate(vmm.bus(), Layout::default()).context("firmware setup")?;
    let setup_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let scan = full_scan(vmm.frontend())?;
    let scan_ms = t.elapsed().as_secs_f64() * 1e3;
    let configured = e.functions.len() + e.remote.len();
    if scan.functions != configured as u64 {
        return Err(Error::Other(format!(
            "the full scan found {} functions, the firmware setup {configured}",
            scan.functions
        )));
    }
    Ok(Pass {
        setup_ms,
        setup_accesses: e.accesses,
        functions_configured: e.functions.len(),
        last_bus: e.last_bus,
        scan_ms,
        scan,
    })
}

/// Medians of `reps` passes on one backend, each after a platform reset.
#[derive(Debug)]
struct Measured {
    setup_ms: Samples,
    scan_ms: Samples,
    last: Pass,
    channel: String,
}

fn measure(bin: &Path, args: &[String], reps: usize, placement: Placement) -> Result<Measured> {
    let pinned = Pinned::new(placement)?;
    let rc = pinned.spawn_peers(|| Pcierc::start(bin, args))?;
    let mut vmm = rc.connect("bench")?;
    let mut setup = Vec::with_capacity(reps);
    let mut scan = Vec::with_capacity(reps);
    let mut last = None;
    for i in 0..reps {
        if i > 0 {
            vmm.frontend()
                .reset()
                .context("platform reset between passes")?;
        }
        let p = pass(&mut vmm)?;
        setup.push(p.setup_ms);
        scan.push(p.scan_ms);
        last = Some(p);
    }
    let last = last.ok_or_else(|| Error::Other("no enumeration pass ran".into()))?;
    Ok(Measured {
        setup_ms: Samples::new(setup),
        scan_ms: Samples::new(scan),
        last,
        channel: vmm.channel_summary(),
    })
}

/// The enumeration figures: default topology (the baseline) and 128 root ports.
pub fn enumeration(
    rep: &mut Reporter,
    bin: &Path,
    reps: usize,
    placement: Placement,
) -> Result<()> {
    let base = measure(bin, &[], reps, placement)?;
    let many = measure(bin, &root_port_args(MANY_PORTS)?, reps, placement)?;
    rep.note(format!(
        "enumeration ({}): per topology, {reps} pass(es) (platform Reset between them), each a \
         firmware setup with examples/src/firmware.rs (PCIEXBAR via CF8/CFC, bus numbers, BARs, \
         windows; MmioRead/MmioWrite to ECAM) then a full scan of 256 buses x 32 devices x 8 \
         functions with ConfigRead (Vendor ID, Header Type, functions 1-7 of multi-function \
         devices); medians; ratios against the default topology (4 root ports)",
        placement.describe()
    ));
    for (label, m) in [("default (4 root ports)", &base), ("128 root ports", &many)] {
        rep.note(format!(
            "{label}: setup configured {} functions, last bus {:#04x}, {} accesses; scan found \
             {} functions with {} config reads; over all passes: {}",
            m.last.functions_configured,
            m.last.last_bus,
            m.last.setup_accesses,
            m.last.scan.functions,
            m.last.scan.reads,
            m.channel
        ));
    }
    let per_read = |m: &Measured| m.scan_ms.median() * 1e6 / m.last.scan.reads as f64;
    let per_access = |m: &Measured| m.setup_ms.median() * 1e6 / m.last.setup_accesses as f64;
    let reads = |m: &Measured| m.last.scan.reads as f64;
    rep.figure(
        "enumeration_ms",
        base.scan_ms.median(),
        "ms",
        Ratio::Baseline,
    );
    rep.figure(
        "enumeration_128_ports_ms",
        many.scan_ms.median(),
        "ms",
        Ratio::Of(base.scan_ms.median()),
    );
    rep.figure("enumeration_reads", reads(&base), "reads", Ratio::Baseline);
    rep.figure(
        "enumeration_128_ports_reads",
        reads(&many),
        "reads",
        Ratio::Of(reads(&base)),
    );
    rep.note(
        "normalised by the reads done (target: ratio ~1.00, no growth with the number of ports)",
    );
    rep.figure(
        "enumeration_read_ns",
        per_read(&base),
        "ns",
        Ratio::Baseline,
    );
    rep.figure(
        "enumeration_128_ports_read_ns",
        per_read(&many),
        "ns",
        Ratio::Of(per_read(&base)),
    );
    rep.note(
        "firmware setup alone (each write that changes the layout makes the backend send a \
         layout notification: with LAYOUT_DELTA, as this frontend negotiates, the records and \
         ranges that changed; target: ratio <= 1.2, issue 17 item 3)",
    );
    rep.figure(
        "firmware_setup_ms",
        base.setup_ms.median(),
        "ms",
        Ratio::Baseline,
    );
    rep.figure(
        "firmware_setup_128_ports_ms",
        many.setup_ms.median(),
        "ms",
        Ratio::Of(base.setup_ms.median()),
    );
    rep.figure(
        "firmware_setup_access_ns",
        per_access(&base),
        "ns",
        Ratio::Baseline,
    );
    rep.figure(
        "firmware_setup_128_ports_access_ns",
        per_access(&many),
        "ns",
        Ratio::Of(per_access(&base)),
    );
    Ok(())
}

/// The resident-memory figures: default topology and the most root ports that fit on bus 0,
/// each after startup and one enumeration pass; ratios against issue 7's targets.
pub fn rss(rep: &mut Reporter, bin: &Path, placement: Placement) -> Result<()> {
    rep.note(format!(
        "rss: VmRSS of the pcierc process after startup and one enumeration pass (setup + full \
         scan), VMM connected; ratios against the targets ({RSS_TARGET_DEFAULT_KIB} KiB default, \
         {RSS_TARGET_MANY_KIB} KiB with 256 root ports; {MAX_ROOT_PORTS} is the most that fit on \
         bus 0: devices 1-31 x 8 functions)"
    ));
    let cases = [
        (
            "rss_kib",
            Vec::new(),
            RSS_TARGET_DEFAULT_KIB,
            "default (4 root ports)".to_string(),
        ),
        (
            "rss_248_ports_kib",
            root_port_args(MAX_ROOT_PORTS)?,
            RSS_TARGET_MANY_KIB,
            format!("{MAX_ROOT_PORTS} root ports"),
        ),
    ];
    for (name, args, target, label) in cases {
        let pinned = Pinned::new(placement)?;
        let rc = pinned.spawn_peers(|| Pcierc::start(bin, &args))?;
        let started = rc.rss_kib()?;
        let mut vmm = rc.connect("bench")?;
        let p = pass(&mut vmm)?;
        let after = rc.rss_kib()?;
        rep.note(format!(
            "{label}: {started} KiB at startup; enumeration pass: setup {:.1} ms ({} accesses), \
             scan {:.1} ms ({} reads, {} functions); {}",
            p.setup_ms,
            p.setup_accesses,
            p.scan_ms,
            p.scan.reads,
            p.scan.functions,
            vmm.channel_summary()
        ));
        rep.figure(name, after as f64, "KiB", Ratio::Of(target));
    }
    Ok(())
}
