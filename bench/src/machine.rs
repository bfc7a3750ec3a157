//! The header of a run: the machine, the toolchain, the binary measured.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// The CPU model from `/proc/cpuinfo` (`model name`), if there is one.
fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
}

/// `rustc --version`, if a rustc is on the PATH.
fn rustc_version() -> Option<String> {
    let out = Command::new("rustc").arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The cost of one `Instant::now()` pair, which every per-operation sample includes (median of
/// 10,001 pairs, in ns).
fn timer_overhead_ns() -> u128 {
    let mut d: Vec<u128> = (0..10_001)
        .map(|_| {
            let t = Instant::now();
            t.elapsed().as_nanos()
        })
        .collect();
    d.sort_unstable();
    d[d.len() / 2]
}

/// Print the header lines (`#`-prefixed).
pub fn header(quick: bool, pcierc: Option<(&Path, &str)>) {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    println!(
        "# pcierc-bench {}: {} run",
        env!("CARGO_PKG_VERSION"),
        if quick { "quick" } else { "full" }
    );
    println!(
        "# machine: {}, {cpus} CPUs available, Linux {kernel}",
        cpu_model().unwrap_or_else(|| "unknown CPU".into())
    );
    println!(
        "# toolchain: {}",
        rustc_version().unwrap_or_else(|| "rustc not found on PATH".into())
    );
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        let load: Vec<&str> = load.split_whitespace().take(3).collect();
        println!(
            "# load average before the run: {} (other work on the machine skews every figure)",
            load.join(" ")
        );
    }
    if let Some((path, note)) = pcierc {
        println!("# pcierc: {} ({note})", path.display());
    }
    println!(
        "# timer: an Instant::now() pair costs {} ns, included in per-operation samples",
        timer_overhead_ns()
    );
}
