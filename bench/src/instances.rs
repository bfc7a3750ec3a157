//! Many instances per host (issue 17, item 5): how long one `pcierc` takes from spawn to a
//! listening socket, what one instance costs in memory (resident and proportional set size,
//! before and after a VMM's handshake), and a fleet of instances started together (time until
//! every one listens, total memory). Every instance is killed when the group ends, on error too.
//!
//! Unpinned: the fleet is meant to use the whole machine, and the baselines (spawning
//! `/bin/true`, one instance's start) are measured the same way in the same run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pcierc_protocol::{Frontend, FrontendOptions};

use crate::backend::ScratchDir;
use crate::error::{Context, Error, Result};
use crate::report::{Ratio, Reporter, Samples};

/// The figures this group prints.
pub const FIGURES: &[&str] = &[
    "process_spawn_ms",
    "process_spawn_p90_ms",
    "instance_start_ms",
    "instance_start_p90_ms",
    "instance_rss_kib",
    "instance_pss_kib",
    "instance_connected_rss_kib",
    "instance_connected_pss_kib",
    "instances_listen_ms",
    "instances_pss_mib",
    "instances_rss_mib",
];

/// Issue 17's target for one instance's start to listening, median.
pub const START_TARGET_MS: f64 = 10.0;

/// Between two connection attempts while waiting for a socket.
const POLL: Duration = Duration::from_micros(100);

/// Longest wait for instances to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(60);

/// How much to measure.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Single starts timed (each next to a spawn of `/bin/true`).
    pub starts: usize,
    /// Instances in the fleet.
    pub fleet: usize,
}

/// A `pcierc --socket-path` started without waiting for it; killed (and reaped) on drop.
struct Instance {
    child: Child,
    socket: PathBuf,
}

impl Instance {
    fn spawn(bin: &Path, socket: PathBuf) -> Result<Self> {
        let child = Command::new(bin)
            .arg("--socket-path")
            .arg(&socket)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context(format!("spawning {}", bin.display()))?;
        Ok(Instance { child, socket })
    }

    /// Does its socket accept a connection? An instance that exited is an error.
    fn listening(&mut self) -> Result<bool> {
        if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
            return Ok(true);
        }
        match self.child.try_wait().context("waiting for pcierc")? {
            Some(st) => Err(Error::Other(format!("pcierc exited at startup: {st}"))),
            None => Ok(false),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Instances that are all killed at once when dropped (then reaped one by one).
struct Fleet(Vec<Instance>);

impl Drop for Fleet {
    fn drop(&mut self) {
        for i in &mut self.0 {
            let _ = i.child.kill();
        }
        // Each Instance's own drop now only reaps.
    }
}

/// Wait until every instance in `fleet` listens; returns when the last one did, after `t0`.
fn wait_all_listening(fleet: &mut [Instance], t0: Instant) -> Result<Duration> {
    let mut waiting: Vec<usize> = (0..fleet.len()).collect();
    let mut last = t0.elapsed();
    while !waiting.is_empty() {
        let mut still = Vec::with_capacity(waiting.len());
        for i in waiting {
            if fleet[i].listening()? {
                last = t0.elapsed();
            } else {
                still.push(i);
            }
        }
        waiting = still;
        if !waiting.is_empty() {
            if t0.elapsed() > LISTEN_TIMEOUT {
                return Err(Error::Other(format!(
                    "{} of {} instances did not listen within {LISTEN_TIMEOUT:?}",
                    waiting.len(),
                    fleet.len()
                )));
            }
            std::thread::sleep(POLL);
        }
    }
    Ok(last)
}

/// `Rss` and `Pss` (KiB) of process `pid`, from `/proc/PID/smaps_rollup`.
fn rss_pss_kib(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).context(format!("reading {path}"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| Error::Other(format!("{path} has no parsable {name} line")))
    };
    Ok((field("Rss:")?, field("Pss:")?))
}

/// Open descriptors of process `pid`.
fn open_fds(pid: u32) -> Result<usize> {
    let dir = format!("/proc/{pid}/fd");
    Ok(std::fs::read_dir(&dir)
        .context(format!("listing {dir}"))?
        .count())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Run the group.
pub fn run(rep: &mut Reporter, bin: &Path, plan: Plan) -> Result<()> {
    let dir = ScratchDir::new("instances")?;
    // Single starts, each next to the baseline so a change of load hits both alike.
    let (mut spawn, mut start) = (Vec::new(), Vec::new());
    for n in 0..plan.starts {
        let t = Instant::now();
        let st = Command::new("/bin/true")
            .stdin(Stdio::null())
            .status()
            .context("running /bin/true")?;
        if !st.success() {
            return Err(Error::Other(format!("/bin/true failed: {st}")));
        }
        spawn.push(ms(t.elapsed()));
        let socket = dir.path().join(format!("single-{n}.sock"));
        let t = Instant::now();
        let mut one = [Instance::spawn(bin, socket)?];
        start.push(ms(wait_all_listening(&mut one, t)?));
    }
    let spawn_s = Samples::new(spawn);
    let start_s = Samples::new(start);
    let (spawn_p90, start_p90) = (spawn_s.p90(), start_s.p90());
    rep.note(format!(
        "instances (unpinned): {} starts of pcierc (default topology, --socket-path) from \
         Command::spawn until its socket accepts a connection (polled every {} us), each next \
         to a spawn of /bin/true until it exits (the baseline); target: median < \
         {START_TARGET_MS} ms (this run: {:.2} of it)",
        plan.starts,
        POLL.as_micros(),
        start_s.median() / START_TARGET_MS
    ));
    rep.figure("process_spawn_ms", spawn_s.median(), "ms", Ratio::Baseline);
    rep.figure("process_spawn_p90_ms", spawn_p90, "ms", Ratio::Baseline);
    rep.figure(
        "instance_start_ms",
        start_s.median(),
        "ms",
        Ratio::Of(spawn_s.median()),
    );
    rep.figure(
        "instance_start_p90_ms",
        start_p90,
        "ms",
        Ratio::Of(spawn_p90),
    );

    // One instance's memory, listening, then with a VMM connected (backend channel and
    // configuration snapshot: the default VMM options).
    let mut one = [Instance::spawn(bin, dir.path().join("memory.sock"))?];
    wait_all_listening(&mut one, Instant::now())?;
    let pid = one[0].pid();
    let (rss, pss) = rss_pss_kib(pid)?;
    let fds_idle = open_fds(pid)?;
    let fe = Frontend::connect(&one[0].socket, FrontendOptions::vmm("bench"))
        .context("connecting a VMM to the instance")?;
    let (rss_c, pss_c) = rss_pss_kib(pid)?;
    let fds_c = open_fds(pid)?;
    drop(fe);
    drop(one);
    rep.note(format!(
        "one instance's memory (/proc/PID/smaps_rollup Rss and Pss) once it listens, and with a \
         VMM connected (handshake with backend channel and configuration snapshot); Pss ratios \
         against the Rss (the share not shared with other processes), connected ratios against \
         the idle figures; open descriptors {fds_idle} idle, {fds_c} connected"
    ));
    rep.figure("instance_rss_kib", rss as f64, "KiB", Ratio::Baseline);
    rep.figure("instance_pss_kib", pss as f64, "KiB", Ratio::Of(rss as f64));
    rep.figure(
        "instance_connected_rss_kib",
        rss_c as f64,
        "KiB",
        Ratio::Of(rss as f64),
    );
    rep.figure(
        "instance_connected_pss_kib",
        pss_c as f64,
        "KiB",
        Ratio::Of(pss as f64),
    );

    // The fleet: all spawned at once, then polled until every one listens.
    let t0 = Instant::now();
    let mut fleet = Fleet(Vec::with_capacity(plan.fleet));
    for n in 0..plan.fleet {
        let socket = dir.path().join(format!("fleet-{n}.sock"));
        fleet.0.push(Instance::spawn(bin, socket)?);
    }
    let spawned = t0.elapsed();
    let all = wait_all_listening(&mut fleet.0, t0)?;
    let (mut total_rss, mut total_pss) = (0u64, 0u64);
    for i in &fleet.0 {
        let (r, p) = rss_pss_kib(i.pid())?;
        total_rss += r;
        total_pss += p;
    }
    drop(fleet);
    let n = plan.fleet as f64;
    rep.note(format!(
        "{} instances spawned together ({:.1} ms to spawn them all), polled until every socket \
         accepts a connection; then the sums of their Rss and Pss (idle), and all killed. \
         Ratios: the time against one instance's median start; the memory against {} x one idle \
         instance's",
        plan.fleet,
        ms(spawned),
        plan.fleet
    ));
    rep.figure(
        "instances_listen_ms",
        ms(all),
        "ms",
        Ratio::Of(start_s.median()),
    );
    let mib = |kib: u64| kib as f64 / 1024.0;
    rep.figure(
        "instances_pss_mib",
        mib(total_pss),
        "MiB",
        Ratio::Of(n * mib(pss)),
    );
    rep.figure(
        "instances_rss_mib",
        mib(total_rss),
        "MiB",
        Ratio::Of(n * mib(rss)),
    );
    Ok(())
}
