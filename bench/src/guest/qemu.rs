//! The same probe guest under `qemu-system-x86_64 -M q35 -accel kvm`, entered through its PVH
//! ELF note, with pcierc's default topology as QEMU's own `pcie-root-port`s (the command line of
//! `tests/tests/vmm_guest.rs`'s `probe_guest_boots_under_qemu_through_its_pvh_note`): the
//! in-process root ports issue 7 compares pcierc with.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::{Context, Error, Result};

use super::probe;

/// Past this a QEMU run is killed (a boot takes about 4-5 s here).
const KILL_AFTER: Duration = Duration::from_secs(60);

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";

/// `qemu-system-x86_64` is on `PATH`.
pub fn available() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(QEMU).is_file()))
}

/// `-device` values of four `pcie-root-port`s laid out as pcierc's default topology (00:02.0-3,
/// chassis and slot 1-4).
pub fn root_ports() -> Vec<String> {
    (0..4)
        .zip(1..)
        .map(|(f, n)| {
            let mf = if f == 0 { ",multifunction=on" } else { "" };
            format!(
                "pcie-root-port,id=rp{n},chassis={n},slot={n},port=0x1{f},bus=pcie.0,addr=0x2.{f}{mf}"
            )
        })
        .collect()
}

/// Boot the guest image at `kernel` once; its `bench:` lines as cycles per access by label.
pub fn run(kernel: &Path) -> Result<BTreeMap<String, u64>> {
    let mut cmd = Command::new(QEMU);
    cmd.args(["-M", "q35", "-accel", "kvm", "-m", "128", "-nodefaults"])
        .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
        .arg("-no-reboot");
    for d in root_ports() {
        cmd.arg("-device").arg(d);
    }
    cmd.arg("-kernel").arg(kernel);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context(format!("spawning {QEMU}"))?;
    let (status, stdout, stderr) = probe::run_bounded(child, "QEMU", KILL_AFTER)?;
    let tail = probe::last_lines(&stderr);
    let Some(status) = status else {
        return Err(Error::Other(format!(
            "QEMU did not stop within {KILL_AFTER:?}: killed{tail}"
        )));
    };
    if !status.success() {
        return Err(Error::Other(format!("QEMU failed ({status}){tail}")));
    }
    let cycles = probe::parse_bench(&stdout);
    for label in [
        probe::FLOOR,
        probe::ECAM_READ,
        probe::ECAM_WRITE,
        probe::CF8_CFC_READ,
    ] {
        if !cycles.contains_key(label) {
            return Err(Error::Other(format!(
                "the guest under QEMU printed no \"bench: {label}\" line; it printed:\n{stdout}"
            )));
        }
    }
    Ok(cycles)
}
