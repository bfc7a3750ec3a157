//! `pcierc-bench`: the benchmark suite of issue 7 that exists today. Every figure is printed as
//! `bench <name> <value> <unit> ratio=<x>`, with its ratio against a baseline measured in the same
//! run (a `ratio=1.00` line printed before it) or against a fixed target; lines starting with `#`
//! say what was measured. Figures are printed, never asserted. See BENCHMARKS.md.
//!
//! ```sh
//! cargo run --release -p pcierc-bench                  # everything, about 25 s here
//! cargo run --release -p pcierc-bench -- --quick       # a short run, about 6 s here
//! cargo run --release -p pcierc-bench -- --filter rss  # only groups with a figure matching "rss"
//! ```

mod affinity;
mod backend;
mod error;
mod guest;
mod instances;
mod machine;
mod memory;
mod nested;
mod pingpong;
mod report;
mod round_trip;
mod scale;
mod scan;
mod state_file;

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;

use crate::affinity::Placement;
use crate::error::{Error, Result};
use crate::report::Reporter;

/// Benchmarks of pcierc: socket round trips against a raw ping-pong, a plain memory read,
/// enumeration at scale, resident memory and guest-visible latency through the example KVM VMM.
/// Build with --release.
#[derive(Parser, Debug)]
#[command(name = "pcierc-bench")]
struct Args {
    /// A short run (fewer iterations; noisier figures).
    #[arg(long)]
    quick: bool,
    /// Run only the groups that print a figure whose name contains NAME (e.g. config_read,
    /// ping_pong, enumeration, rss, memory, instance, guest, state_file). `nested` (or a
    /// `guest_l2` figure's name) selects the nested group, which nothing else runs.
    #[arg(long, value_name = "NAME")]
    filter: Option<String>,
    /// Let the scheduler place the measuring thread and its peers (default: pin them, all on one
    /// CPU, plus the socket round trips again across two CPUs; see BENCHMARKS.md).
    #[arg(long)]
    no_pin: bool,
    /// The directory the state-file figures write in (default: the system temp directory);
    /// give one on the disk whose fdatasync matters.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The pcierc binary to measure (default: the one of this build's profile, rebuilt if stale).
    #[arg(long, value_name = "PATH")]
    pcierc: Option<PathBuf>,
    /// The example VMM the guest figures run (default: `vmm` of this build's profile, rebuilt if
    /// stale).
    #[arg(long, value_name = "PATH")]
    vmm: Option<PathBuf>,
    /// Internal: be the echo peer of the ping-pong baseline, connecting to PATH.
    #[arg(long, value_name = "PATH", hide = true, requires = "echo_sizes")]
    echo_peer: Option<PathBuf>,
    /// Internal: REQUEST,REPLY sizes of the echo peer.
    #[arg(long, hide = true, value_parser = pingpong::parse_sizes)]
    echo_sizes: Option<(usize, usize)>,
}

/// A group of figures measured together (baselines with what is compared to them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Group {
    /// Socket ping-pongs and config reads/writes through pcierc.
    RoundTrip,
    /// A plain memory read (the fast path's baseline).
    Memory,
    /// Firmware setup and full scans, default topology and 128 root ports.
    Enumeration,
    /// pcierc's resident memory, default topology and 248 root ports.
    Rss,
    /// Guest-visible latency through the example KVM VMM.
    Guest,
    /// Start-to-listening time and memory of one instance, and of a fleet started together.
    Instances,
    /// `--state-file`: a persisted write against an append + fdatasync, and the file's size.
    StateFile,
    /// The ECAM read from mapped pages in a nested L2 against L1's QEMU (opt-in: minutes).
    Nested,
}

impl Group {
    const ALL: [Group; 8] = [
        Group::RoundTrip,
        Group::Memory,
        Group::Enumeration,
        Group::Rss,
        Group::Instances,
        Group::StateFile,
        Group::Guest,
        Group::Nested,
    ];

    /// Does `filter` (none: a full run) select the group? The nested group only by name.
    fn selected(self, filter: Option<&str>) -> bool {
        match self {
            Group::Nested => nested::selected(filter),
            _ => filter.is_none_or(|f| self.figures().iter().any(|n| n.contains(f))),
        }
    }

    /// The figures the group prints.
    fn figures(self) -> &'static [&'static str] {
        match self {
            Group::RoundTrip => &[
                "socket_ping_pong_ns",
                "socket_ping_pong_p99_ns",
                "socket_ping_pong_write_ns",
                "socket_ping_pong_write_p99_ns",
                "config_read_ns",
                "config_read_p99_ns",
                "config_write_ns",
                "config_write_p99_ns",
                "socket_ping_pong_cross_cpu_ns",
                "socket_ping_pong_cross_cpu_p99_ns",
                "socket_ping_pong_write_cross_cpu_ns",
                "socket_ping_pong_write_cross_cpu_p99_ns",
                "config_read_cross_cpu_ns",
                "config_read_cross_cpu_p99_ns",
                "config_write_cross_cpu_ns",
                "config_write_cross_cpu_p99_ns",
            ],
            Group::Memory => &["plain_memory_read_ns", "config_read_fastpath_ns"],
            Group::Enumeration => &[
                "enumeration_ms",
                "enumeration_128_ports_ms",
                "enumeration_reads",
                "enumeration_128_ports_reads",
                "enumeration_read_ns",
                "enumeration_128_ports_read_ns",
                "firmware_setup_ms",
                "firmware_setup_128_ports_ms",
                "firmware_setup_access_ns",
                "firmware_setup_128_ports_access_ns",
            ],
            Group::Rss => &["rss_kib", "rss_248_ports_kib"],
            Group::Guest => guest::FIGURES,
            Group::Nested => nested::FIGURES,
            Group::Instances => instances::FIGURES,
            Group::StateFile => &[
                "state_file_append_fdatasync_ns",
                "state_file_persisted_write_ns",
                "state_file_setup_without_ms",
                "state_file_setup_ms",
                "state_blob_bytes",
                "state_file_after_setup_bytes",
                "state_file_base_after_setup_bytes",
            ],
        }
    }
}

/// Where the figures are measured: the main placement (everything on the last allowed CPU, or
/// unpinned), and the cross-CPU one of the socket round trips when two CPUs are allowed.
fn placements(no_pin: bool) -> Result<(Placement, Option<Placement>)> {
    if no_pin {
        return Ok((Placement::Free, None));
    }
    let cpus = affinity::allowed_cpus()?;
    let (first, last) = match (cpus.first(), cpus.last()) {
        (Some(&f), Some(&l)) => (f, l),
        _ => return Err(Error::Other("no CPU is allowed".into())),
    };
    let split = (first != last).then_some(Placement::Split {
        client: first,
        server: last,
    });
    Ok((Placement::SameCpu(last), split))
}

fn run(args: &Args) -> Result<()> {
    let groups: Vec<Group> = Group::ALL
        .into_iter()
        .filter(|g| g.selected(args.filter.as_deref()))
        .collect();
    if groups.is_empty() {
        let names: Vec<&str> = Group::ALL
            .iter()
            .flat_map(|g| g.figures())
            .copied()
            .collect();
        return Err(Error::Other(format!(
            "--filter matches no figure; figures: {}",
            names.join(" ")
        )));
    }
    let needs_backend = !groups.is_empty();
    let bin = if needs_backend {
        Some(backend::pcierc_binary(args.pcierc.as_deref())?)
    } else {
        None
    };
    machine::header(
        args.quick,
        bin.as_ref().map(|(p, note)| (p.as_path(), note.as_str())),
    );
    let started = Instant::now();
    let mut rep = Reporter::default();
    let bin = || {
        bin.as_ref()
            .map(|(p, _)| p.as_path())
            .ok_or_else(|| Error::Other("internal: the pcierc binary was not located".into()))
    };
    let (same, split) = placements(args.no_pin)?;
    rep.note(format!(
        "placement: {}{}",
        same.describe(),
        match (split, args.no_pin) {
            (Some(p), _) => format!("; socket round trips again with {}", p.describe()),
            (None, false) => "; no *_cross_cpu_* figures: only one CPU is allowed".into(),
            (None, true) => String::new(),
        }
    ));
    if !groups.contains(&Group::Nested) && !groups.is_empty() && args.filter.is_none() {
        rep.note(
            "skipped: guest_l2_*: opt-in (--filter nested): boots a nested L1 under TCG, minutes",
        );
    }
    for g in groups {
        match g {
            Group::Nested => nested::run(
                &mut rep,
                nested::Plan {
                    runs: if args.quick { 1 } else { 3 },
                },
            )?,
            Group::Memory => memory::run(
                &mut rep,
                if args.quick { 200 } else { 2000 },
                Some(bin()?),
                same,
            )?,
            Group::RoundTrip => {
                let plan = |rounds, per_round| round_trip::Plan {
                    warmup: if args.quick { 500 } else { 2_000 },
                    rounds,
                    per_round,
                };
                let (local, cross) = if args.quick {
                    (plan(40, 250), plan(20, 100))
                } else {
                    (plan(200, 500), plan(100, 200))
                };
                round_trip::run(&mut rep, bin()?, local, same, "")?;
                if let Some(split) = split {
                    round_trip::run(&mut rep, bin()?, cross, split, "_cross_cpu")?;
                }
            }
            Group::Enumeration => {
                scale::enumeration(&mut rep, bin()?, if args.quick { 1 } else { 5 }, same)?
            }
            Group::Rss => scale::rss(&mut rep, bin()?, same)?,
            Group::Instances => {
                let plan = if args.quick {
                    instances::Plan {
                        starts: 15,
                        fleet: 50,
                    }
                } else {
                    instances::Plan {
                        starts: 50,
                        fleet: 200,
                    }
                };
                instances::run(&mut rep, bin()?, plan)?
            }
            Group::StateFile => {
                let plan = if args.quick {
                    state_file::Plan {
                        warmup: 50,
                        rounds: 10,
                        per_round: 20,
                        setups: 2,
                    }
                } else {
                    state_file::Plan {
                        warmup: 200,
                        rounds: 40,
                        per_round: 25,
                        setups: 5,
                    }
                };
                let dir = args.state_dir.clone().unwrap_or_else(std::env::temp_dir);
                state_file::run(&mut rep, bin()?, &dir, plan, same)?
            }
            Group::Guest => {
                let vmm = backend::vmm_binary(args.vmm.as_deref()).map_err(|e| e.to_string());
                let plan = guest::Plan {
                    runs: if args.quick { 2 } else { 7 },
                    pings: if args.quick { 200 } else { 500 },
                };
                let mut placements = vec![(same, "")];
                placements.extend(split.map(|p| (p, "_cross_cpu")));
                guest::run(
                    &mut rep,
                    bin()?,
                    vmm.as_ref()
                        .map(|(p, note)| (p.as_path(), note.as_str()))
                        .map_err(Clone::clone),
                    plan,
                    &placements,
                )?
            }
        }
    }
    rep.note(format!(
        "{} figures in {:.1} s",
        rep.figures(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn main() {
    let args = Args::parse();
    let result = match (&args.echo_peer, args.echo_sizes) {
        (Some(path), Some((request, reply))) => pingpong::serve_echo(path, request, reply),
        _ => run(&args),
    };
    if let Err(e) = result {
        eprintln!("pcierc-bench: {e}");
        std::process::exit(1);
    }
}
