//! One run of the example VMM (`examples/src/bin/vmm.rs`) with the probe guest
//! (`examples/guest/pcie_probe.S`) against a running pcierc, and what its output says: the
//! guest's `bench: <label> <cycles> TSC cycles per access` lines, the guest TSC frequency and
//! the VMM's mean handling time per exit kind that `--stats` prints on stderr (docs/vmm.md).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Context, Error, Result};

/// `in` from an unclaimed port (0x5f0): all ones from the VMM itself, no message. The floor.
pub const FLOOR: &str = "local-pio";
/// A read of unclaimed MMIO in the PCI hole: all ones from the VMM itself, no message.
pub const UNCLAIMED_MMIO: &str = "local-mmio";
/// A 4-byte ECAM read of 00:00.0's vendor/device id.
pub const ECAM_READ: &str = "ecam-read";
/// The same read through CONFIG_ADDRESS/CONFIG_DATA: an `out` and an `in`.
pub const CF8_CFC_READ: &str = "cf8-cfc-read";
/// A timed ECAM write, if the guest has one (the probe guest prints none today).
pub const ECAM_WRITE: &str = "ecam-write";
/// Ten iterations of a three-instruction register loop: no exit, the guest alone.
pub const LOOP: &str = "loop-x10";
/// The bench loop with an empty routine (call, ret, dec, jnz): every figure's overhead.
pub const EMPTY: &str = "empty";

/// The `--stats` exit kind of MMIO forwarded to pcierc (its mean handling time in the VMM).
pub const FORWARDED_MMIO: &str = "forwarded-mmio";

/// The VMM's own limit for a run (`--timeout`, seconds).
const VMM_TIMEOUT_S: &str = "60";
/// The bench's: past it the VMM is killed (it should have stopped itself before).
const KILL_AFTER: Duration = Duration::from_secs(75);

/// Wait for `child` to end, killing it after `limit` (status `None` then), with both pipes
/// drained on threads so a full pipe never stalls it: its status, stdout and stderr.
pub(super) fn run_bounded(
    mut child: Child,
    what: &str,
    limit: Duration,
) -> Result<(Option<ExitStatus>, String, String)> {
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut v);
            }
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let started = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().context(format!("waiting for {what}"))? {
            break Some(st);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ok((
        status,
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    ))
}

/// What one run printed.
#[derive(Clone, Debug)]
pub struct ProbeRun {
    /// Nanoseconds per access by `bench:` label.
    pub ns: BTreeMap<String, f64>,
    /// The guest's TSC frequency, kHz.
    pub tsc_khz: f64,
    /// The VMM's mean handling time per exit (ns) by kind.
    pub handling_ns: BTreeMap<String, f64>,
}

/// How the VMM serves the guest's configuration reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The default: pcierc's snapshot mapped into the ECAM window (`--ecam-map on`), ECAM
    /// reads of pcierc's functions without an exit.
    Mapped,
    /// Every read exits; the VMM answers it from the snapshot (`--ecam-map off`).
    Snapshot,
    /// Every read exits and is a message (`--no-config-snapshot --ecam-map off`).
    Forwarded,
}

/// Boot the probe guest under `vmm` connected to the pcierc listening on `socket`, its reads
/// served as `mode` says.
pub fn run(vmm: &Path, socket: &Path, mode: Mode) -> Result<ProbeRun> {
    let mut cmd = Command::new(vmm);
    cmd.arg("--backend-socket")
        .arg(socket)
        .args(["--guest", "pcie-probe", "--mem", "64", "--stats"])
        .args(["--timeout", VMM_TIMEOUT_S]);
    match mode {
        Mode::Mapped => cmd.args(["--ecam-map", "on"]),
        Mode::Snapshot => cmd.args(["--ecam-map", "off"]),
        Mode::Forwarded => cmd.args(["--no-config-snapshot", "--ecam-map", "off"]),
    };
    let child = cmd
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context(format!("spawning {}", vmm.display()))?;
    let (status, stdout, stderr) = run_bounded(child, "the vmm", KILL_AFTER)?;
    let what = match mode {
        Mode::Mapped => "the probe guest",
        Mode::Snapshot => "the probe guest with --ecam-map off",
        Mode::Forwarded => "the probe guest with --no-config-snapshot",
    };
    let Some(status) = status else {
        return Err(Error::Other(format!(
            "{what} did not stop within {KILL_AFTER:?}: killed{}",
            last_lines(&stderr)
        )));
    };
    if !status.success() {
        return Err(Error::Other(format!(
            "{what} failed ({status}){}",
            last_lines(&stderr)
        )));
    }
    let tsc_khz = parse_tsc_khz(&stderr).ok_or_else(|| {
        Error::Other(format!(
            "{what}: no \"vmm: guest TSC <kHz> kHz\" line from --stats{}",
            last_lines(&stderr)
        ))
    })?;
    // The mapped figures are only what they say if the VMM did map the window.
    let mapped = stderr
        .lines()
        .find_map(|l| l.strip_prefix("vmm: ecam map: "))
        .is_some_and(|l| !l.starts_with("off") && !l.starts_with("0 image pages"));
    if (mode == Mode::Mapped) != mapped {
        return Err(Error::Other(format!(
            "{what}: the VMM's ECAM map is {} (its --stats line \"vmm: ecam map: ...\"){}",
            if mapped { "on" } else { "off or empty" },
            last_lines(&stderr)
        )));
    }
    let cycles = parse_bench(&stdout);
    for label in [FLOOR, UNCLAIMED_MMIO, ECAM_READ, CF8_CFC_READ] {
        if !cycles.contains_key(label) {
            return Err(Error::Other(format!(
                "{what} printed no \"bench: {label}\" line; it printed:\n{stdout}"
            )));
        }
    }
    Ok(ProbeRun {
        ns: cycles
            .into_iter()
            .map(|(l, c)| (l, c as f64 / tsc_khz * 1e6))
            .collect(),
        tsc_khz,
        handling_ns: parse_handling(&stderr)
            .into_iter()
            .map(|(k, us)| (k, us * 1000.0))
            .collect(),
    })
}

/// The last few lines of the VMM's stderr, for an error message.
pub(super) fn last_lines(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(3)..];
    if tail.is_empty() {
        String::new()
    } else {
        format!(": {}", tail.join(" / "))
    }
}

/// `bench: <label> <cycles> TSC cycles per access` lines: cycles per access by label.
pub(crate) fn parse_bench(stdout: &str) -> BTreeMap<String, u64> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("bench: "))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let label = it.next()?;
            let cycles = it.next()?.parse().ok()?;
            (it.next() == Some("TSC")).then(|| (label.to_string(), cycles))
        })
        .collect()
}

/// `vmm: guest TSC <kHz> kHz`.
pub(crate) fn parse_tsc_khz(stderr: &str) -> Option<f64> {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("vmm: guest TSC "))
        .and_then(|l| l.trim().strip_suffix("kHz"))
        .and_then(|v| v.trim().parse().ok())
        .filter(|&k: &f64| k > 0.0)
}

/// `vmm: exits <kind> <count> mean handling <us> us`: mean handling (us) by kind.
fn parse_handling(stderr: &str) -> BTreeMap<String, f64> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("vmm: exits "))
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            match words[..] {
                [kind, _count, "mean", "handling", us, "us"] => {
                    Some((kind.to_string(), us.parse().ok()?))
                }
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_vmm_prints() {
        let stdout = "pcie-probe: functions 05 last bus 04\n\
                      bench: local-pio 29427 TSC cycles per access\n\
                      bench: ecam-read 32037 TSC cycles per access\n\
                      bench: broken\n\
                      pcie-probe: power off\n";
        let b = parse_bench(stdout);
        assert_eq!(b.len(), 2);
        assert_eq!(b[FLOOR], 29427);
        assert_eq!(b[ECAM_READ], 32037);
        let stderr = "vmm: guest TSC 2596148 kHz\n\
                      vmm: exits forwarded-mmio      2189  mean handling    19.71 us\n\
                      vmm: exits local-pio           2001  mean handling     0.03 us\n\
                      vmm: interrupts: 4 MSI routes updated\n";
        assert_eq!(parse_tsc_khz(stderr), Some(2596148.0));
        let h = parse_handling(stderr);
        assert_eq!(h.len(), 2);
        assert_eq!(h[FORWARDED_MMIO], 19.71);
        assert_eq!(parse_tsc_khz("vmm: guest TSC 0 kHz"), None);
        assert_eq!(last_lines("a\n\nb\nc\nd\n"), ": b / c / d");
    }
}
