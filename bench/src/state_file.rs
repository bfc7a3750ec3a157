//! `--state-file`: a persisted config write (the reply comes after its record is appended and
//! `fdatasync`'ed) against a record-sized append + `fdatasync` in the same directory, measured
//! in the same run (issue 17: at most 1.5x); the firmware setup with and without a state file;
//! and the file's size after the setup, as the journal left it and as a base alone (after a
//! restart), against the whole state (`SaveState`).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use pcierc_examples::firmware::{enumerate, Layout};

use crate::affinity::{Pinned, Placement};
use crate::backend::{Pcierc, ScratchDir, Vmm};
use crate::error::{Context, Error, Result};
use crate::report::{record, Ratio, Reporter, Samples};

/// rp1 of the embedded default topology: 00:02.0.
const RP1_DEVFN: u8 = 2 << 3;
/// A dword after rp1's capabilities that QEMU leaves writable: writing it changes the state and
/// nothing else (no layout change, no notification).
const SCRATCH: u16 = 0x200;
/// The target of issue 17.
pub const TARGET: f64 = 1.5;

/// How many writes to time.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Untimed persisted writes first (they also give the record size).
    pub warmup: usize,
    /// Rounds, each timing `per_round` of both kinds in turn.
    pub rounds: usize,
    /// Timed operations of each kind per round.
    pub per_round: usize,
    /// Firmware setups timed with and without a state file.
    pub setups: usize,
}

/// The file system of `dir` (`statfs` magic), for the notes.
fn fs_kind(dir: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return "unknown".into();
    };
    // SAFETY: `c` is a NUL-terminated path and `st` a zeroed statfs the call fills in.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; the pointers are valid for the call.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return "unknown".into();
    }
    match st.f_type as i64 {
        0xef53 => "ext4".into(),
        0x0102_1994 => "tmpfs (fdatasync does not reach a disk)".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683e => "btrfs".into(),
        0x794c_7630 => "overlayfs".into(),
        other => format!("type {other:#x}"),
    }
}

/// The mean size of the records after the base of the state file at `path`.
fn record_size(path: &Path) -> Result<usize> {
    let file = std::fs::read(path).context(format!("reading {}", path.display()))?;
    let starts: Vec<usize> = file
        .windows(12)
        .enumerate()
        .filter(|(_, w)| w == b"\nrecord len=")
        .map(|(i, _)| i + 1)
        .collect();
    match starts.first() {
        Some(&first) => Ok((file.len() - first) / starts.len()),
        None => Err(Error::Other(format!(
            "{}: no record after its base (not a journal?)",
            path.display()
        ))),
    }
}

/// A VMM connection to `rc` once it serves requests: pcierc listens before it opens its state
/// file, and answers only after.
fn connected(rc: &Pcierc) -> Result<Vmm> {
    let mut vmm = rc.connect("bench")?;
    vmm.frontend()
        .config_read(0, 0, RP1_DEVFN, 0, 4)
        .context("a first ConfigRead")?;
    Ok(vmm)
}

/// Run the group in `dir` (the directory the state file and the baseline's file live in).
pub fn run(
    rep: &mut Reporter,
    bin: &Path,
    dir: &Path,
    plan: Plan,
    placement: Placement,
) -> Result<()> {
    let scratch = ScratchDir::new_in(dir, "state")?;
    let state = scratch.path().join("pcierc.state");
    let state_arg = state
        .to_str()
        .ok_or_else(|| Error::Other(format!("{}: not UTF-8", state.display())))?
        .to_string();
    let args = ["--state-file".to_string(), state_arg];
    let pinned = Pinned::new(placement)?;

    // The firmware setup without and with a state file, then the sizes.
    let plain = pinned.spawn_peers(|| Pcierc::start(bin, &[]))?;
    let mut vmm = plain.connect("bench")?;
    let whole_state = vmm
        .frontend()
        .save_state()
        .context("SaveState at power-on")?
        .len();
    let mut setup_plain = Vec::new();
    let mut accesses = 0;
    for i in 0..plan.setups {
        if i > 0 {
            vmm.frontend().reset().context("platform reset")?;
        }
        let t = Instant::now();
        accesses = enumerate(vmm.bus(), Layout::default())
            .context("firmware setup")?
            .accesses;
        setup_plain.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let whole_after = vmm
        .frontend()
        .save_state()
        .context("SaveState after the setup")?
        .len();
    // Kept for the same config writes without a state file, timed with the others.
    let mut plain_vmm = vmm;

    let rc = pinned.spawn_peers(|| Pcierc::start(bin, &args))?;
    let size = || std::fs::metadata(&state).map(|m| m.len() as f64);
    let mut vmm = connected(&rc)?;
    let at_start = size().context("the state file")?;
    let mut setup_file = Vec::new();
    let mut after_setup = 0.0;
    let mut setup_records = 0;
    for i in 0..plan.setups {
        if i > 0 {
            vmm.frontend().reset().context("platform reset")?;
        }
        let t = Instant::now();
        enumerate(vmm.bus(), Layout::default()).context("firmware setup")?;
        setup_file.push(t.elapsed().as_secs_f64() * 1e3);
        if i == 0 {
            after_setup = size().context("the state file")?;
            setup_records = std::fs::read(&state)
                .context("reading the state file")?
                .windows(12)
                .filter(|w| w == b"\nrecord len=")
                .count();
        }
    }
    drop((vmm, rc));
    // A restart writes a new base: the state that differs from power-on, alone.
    let rc = pinned.spawn_peers(|| Pcierc::start(bin, &args))?;
    let mut vmm = connected(&rc)?;
    let base_after_setup = size().context("the state file")?;

    // Persisted writes against the disk's own append + fdatasync of a record's size.
    let mut value = 0u32;
    let mut write = || {
        value = value.wrapping_add(1);
        vmm.frontend()
            .config_write(0, 0, RP1_DEVFN, SCRATCH, 4, value)
            .context("ConfigWrite of rp1's scratch dword")
    };
    for _ in 0..plan.warmup {
        write()?;
    }
    let rec = record_size(&state)?;
    let baseline_path = scratch.path().join("append-baseline");
    let mut baseline = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&baseline_path)
        .context(format!("creating {}", baseline_path.display()))?;
    let buf = vec![b'x'; rec];
    let mut append = || -> Result<()> {
        baseline
            .write_all(&buf)
            .and_then(|()| baseline.sync_data())
            .context(format!("appending to {}", baseline_path.display()))
    };
    for _ in 0..plan.warmup {
        append()?;
    }
    let mut plain_value = 0u32;
    let mut plain_write = || {
        plain_value = plain_value.wrapping_add(1);
        plain_vmm
            .frontend()
            .config_write(0, 0, RP1_DEVFN, SCRATCH, 4, plain_value)
            .context("ConfigWrite without a state file")
    };
    let (mut persisted, mut appended, mut unpersisted) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..plan.rounds {
        record(&mut appended, plan.per_round, &mut append)?;
        record(&mut persisted, plan.per_round, &mut write)?;
        record(&mut unpersisted, plan.per_round, &mut plain_write)?;
    }
    drop((plain_vmm, plain));
    let appended = Samples::new(appended);
    let persisted = Samples::new(persisted);
    let unpersisted = Samples::new(unpersisted);
    let after_writes = size().context("the state file")?;

    rep.note(format!(
        "state file ({}): in {} ({}); {} rounds of {} record-sized ({rec} bytes) appends + \
         fdatasync to a file of the same directory, then {} ConfigWrites of rp1's scratch dword \
         (each a new value: one record appended and fdatasync'ed before the reply); medians; \
         target ratio <= {TARGET}",
        placement.describe(),
        dir.display(),
        fs_kind(dir),
        plan.rounds,
        plan.per_round,
        plan.per_round
    ));
    rep.note(format!(
        "appends: min {:.0} p99 {:.0} mean {:.0} ns; persisted writes: min {:.0} p99 {:.0} mean \
         {:.0} ns (the mean includes the compactions: a new base once the records pass 4x the \
         base or 64 KiB); the same ConfigWrite without a state file: median {:.0} ns (the \
         socket round trip and the models); the file after them: {after_writes} bytes",
        appended.min(),
        appended.p99(),
        appended.mean(),
        persisted.min(),
        persisted.p99(),
        persisted.mean(),
        unpersisted.median()
    ));
    rep.figure(
        "state_file_append_fdatasync_ns",
        appended.median(),
        "ns",
        Ratio::Baseline,
    );
    rep.figure(
        "state_file_persisted_write_ns",
        persisted.median(),
        "ns",
        Ratio::Of(appended.median()),
    );
    rep.note(format!(
        "firmware setup (examples/src/firmware.rs, {accesses} accesses), medians of {}: without \
         a state file (baseline), then with one",
        plan.setups
    ));
    let (plain_ms, file_ms) = (Samples::new(setup_plain), Samples::new(setup_file));
    rep.figure(
        "state_file_setup_without_ms",
        plain_ms.median(),
        "ms",
        Ratio::Baseline,
    );
    rep.figure(
        "state_file_setup_ms",
        file_ms.median(),
        "ms",
        Ratio::Of(plain_ms.median()),
    );
    rep.note(format!(
        "state file size: {at_start} bytes at power-on; against the whole state (SaveState: \
         {whole_state} bytes at power-on, {whole_after} after the setup, the baseline): the file \
         after one firmware setup as the journal left it ({setup_records} records: the accesses \
         that changed state), then after a restart (a base alone)"
    ));
    let whole = whole_after as f64;
    rep.figure("state_blob_bytes", whole, "bytes", Ratio::Baseline);
    rep.figure(
        "state_file_after_setup_bytes",
        after_setup,
        "bytes",
        Ratio::Of(whole),
    );
    rep.figure(
        "state_file_base_after_setup_bytes",
        base_after_setup,
        "bytes",
        Ratio::Of(whole),
    );
    Ok(())
}
