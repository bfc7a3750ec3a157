//! `--state-file`: pcierc killed with SIGKILL in the middle of a guest-like workload and
//! restarted from its state file (a base and a journal of records) presents the same
//! configuration space, slot state, hot-added functions and layout generation, and no
//! acknowledged write is lost; files of the older formats still load; damaged files are
//! refused.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pcierc_protocol::{Frontend, FrontendOptions};
use pcierc_tests::process::{Backend, ScratchDir};
use pcierc_tests::qmp_socket::QmpSocket;
use serde_json::json;

const ECAM: u64 = 0xb000_0000;
const RP1: u64 = ECAM + (0x10 << 12);
/// Free writable dword after rp1's capabilities (QEMU leaves those bytes writable).
const SCRATCH: u16 = 0x200;

/// Every dword of every function pcierc emulates, and rp1's MSI-X table entry.
fn snapshot(f: &mut Frontend) -> Vec<(String, u16, u32)> {
    let mut out = Vec::new();
    for (name, devfn) in [
        ("mch", 0u8),
        ("rp1", 0x10),
        ("rp2", 0x11),
        ("rp3", 0x12),
        ("rp4", 0x13),
    ] {
        for off in (0..0x1000u16).step_by(4) {
            out.push((
                name.to_string(),
                off,
                f.config_read(0, 0, devfn, off, 4).unwrap(),
            ));
        }
    }
    for off in (0..16u64).step_by(4) {
        let v = f.mmio_read(0xfe00_0000 + off, 4).unwrap() as u32;
        out.push(("rp1 msix".into(), off as u16, v));
    }
    out
}

#[test]
fn sigkill_mid_workload_then_restart_loses_no_acknowledged_write() {
    let dir = ScratchDir::new("state");
    let state = dir.0.join("pcierc.state");
    let state_arg = state.to_str().expect("utf-8 path").to_string();
    let mut b = Backend::start_with_control(&["--state-file", &state_arg]);

    // A guest-like setup: ECAM, bus numbers, MSI-X, slot power, a hot-added function.
    let mut f = Frontend::connect(&b.socket, FrontendOptions::vmm("vmm")).expect("frontend");
    f.pio_write(0xcf8, 4, 0x8000_0060).unwrap();
    f.pio_write(0xcfc, 4, ECAM | 1).unwrap();
    f.mmio_write(RP1 + 0x18, 4, 0x0001_0100).unwrap();
    f.mmio_write(RP1 + 0x20, 4, 0xfe10_fe10).unwrap();
    f.mmio_write(RP1 + 0x10, 4, 0xfe00_0000).unwrap();
    f.mmio_write(RP1 + 4, 2, 0x6).unwrap();
    f.mmio_write(0xfe00_0000, 8, 0xfee0_1000).unwrap();
    f.mmio_write(0xfe00_0008, 4, 0x4021).unwrap();
    f.mmio_write(RP1 + 0x4a, 2, 0x8000).unwrap();
    f.mmio_write(RP1 + 0x6c, 2, 0x1039 | 0x00c0 | 0x0100)
        .unwrap();
    let control = b.control.clone().expect("control socket");
    let mut qmp = QmpSocket::connect(&control, Duration::from_secs(5)).expect("QMP");
    let reply = qmp
        .execute(
            "device_add",
            json!({"driver": "e1000e", "id": "net0", "bus": "rp1", "owner": "qemu"}),
        )
        .expect("QMP reply");
    assert!(reply.is_ok(), "{reply:?}");
    drop(qmp);
    let generation = f.topology().unwrap().generation;
    let before = snapshot(&mut f);

    // A writer hammers a register; SIGKILL lands somewhere in the middle.
    let acked = Arc::new(AtomicU32::new(0));
    let writer = {
        let acked = acked.clone();
        let socket = b.socket.clone();
        std::thread::spawn(move || {
            let mut w = Frontend::connect(&socket, FrontendOptions::tool("writer")).unwrap();
            for i in 1u32.. {
                if w.config_write(0, 0, 0x10, SCRATCH, 4, i).is_err() {
                    return;
                }
                acked.store(i, Ordering::SeqCst);
            }
        })
    };
    let started = std::time::Instant::now();
    while acked.load(Ordering::SeqCst) < 50 {
        std::thread::sleep(Duration::from_millis(5));
    }
    b.kill();
    let elapsed = started.elapsed();
    writer.join().expect("writer thread");
    let last = acked.load(Ordering::SeqCst);
    eprintln!(
        "state file: {last} writes acknowledged in {elapsed:.2?} before SIGKILL ({:.0} us per persisted write)",
        elapsed.as_secs_f64() * 1e6 / f64::from(last)
    );
    drop(f);
    let file = std::fs::read(&state).expect("the state file");
    assert!(file.starts_with(b"pcierc-state-file 2 "), "a journal");
    eprintln!(
        "state file: {} bytes, {} records after its base",
        file.len(),
        file.windows(12).filter(|w| w == b"\nrecord len=").count()
    );

    let b2 = Backend::start(&["--state-file", &state_arg]);
    let mut f = Frontend::connect(&b2.socket, FrontendOptions::vmm("vmm")).expect("frontend");
    let scratch = f.config_read(0, 0, 0x10, SCRATCH, 4).unwrap();
    assert!(
        scratch == last || scratch == last + 1,
        "acknowledged {last}, restored {scratch} (only the unacknowledged in-flight write may be extra)"
    );
    let after = snapshot(&mut f);
    let diffs: Vec<_> = before
        .iter()
        .zip(&after)
        .filter(|(a, b)| a != b && !(a.0 == "rp1" && a.1 == SCRATCH))
        .collect();
    assert!(diffs.is_empty(), "restored state differs: {diffs:?}");
    let topo = f.topology().unwrap();
    assert_eq!(
        topo.generation, generation,
        "the layout generation continues"
    );
    assert_eq!(
        f.mmio_read(ECAM + (1 << 20), 4).map_err(|e| e.status()),
        Err(Some(pcierc_protocol::Status::Remote)),
        "net0 (hot-added before the crash) is still behind rp1, served by its owner"
    );
}

#[test]
fn a_state_file_that_does_not_load_is_refused_and_kept() {
    let dir = ScratchDir::new("state-bad");
    let state = dir.0.join("pcierc.state");
    let bad = br#"{"format":"pcierc-state","version":99}"#;
    std::fs::write(&state, bad).unwrap();
    let out = std::process::Command::new(pcierc_tests::process::pcierc_bin())
        .arg("--socket-path")
        .arg(dir.0.join("s.sock"))
        .arg("--state-file")
        .arg(&state)
        .output()
        .expect("running pcierc");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("state version 99 is not supported"),
        "a clear error: {err}"
    );
    assert_eq!(std::fs::read(&state).unwrap(), bad, "never overwritten");
}

/// A state file as a real pcierc writes it, after a guest-like write to rp1's scratch dword.
fn a_real_state_file(dir: &ScratchDir) -> Vec<u8> {
    let state = dir.0.join("real.state");
    let mut b = Backend::start(&["--state-file", state.to_str().expect("utf-8 path")]);
    let mut f = Frontend::connect(&b.socket, FrontendOptions::tool("t")).expect("frontend");
    f.config_write(0, 0, 0x10, SCRATCH, 4, 0x5eed_1234).unwrap();
    b.kill();
    std::fs::read(&state).expect("the state file")
}

/// Where the base of a version 2 file ends (after its closing end of line).
fn base_end(file: &[u8]) -> usize {
    let nl = file
        .iter()
        .position(|&b| b == b'\n')
        .expect("a header line");
    let header = std::str::from_utf8(&file[..nl]).expect("text");
    let len: usize = header
        .split(' ')
        .find_map(|w| w.strip_prefix("len="))
        .and_then(|l| l.parse().ok())
        .expect("a length");
    nl + 1 + len + 1
}

/// The state a real state file (of the default topology) holds, as a version 1 file (the whole
/// state after the header) or as a bare blob (before the header existed).
fn in_older_format(file: &[u8], bare: bool) -> Vec<u8> {
    let spec = pcierc_backend::topology::TopologySpec::embedded_default().unwrap();
    let mut h = pcierc_backend::topology::Segments::new(spec).unwrap();
    pcierc_backend::service::state_file::load_bytes(&mut h, file).expect("loads");
    let blob = pcierc_backend::topology::state::save_segments(&h);
    if bare {
        blob
    } else {
        pcierc_backend::service::state_file::format::encode_whole(&blob)
    }
}

#[test]
fn files_of_the_older_formats_still_load_and_are_rewritten_as_journals() {
    let dir = ScratchDir::new("state-old");
    let good = a_real_state_file(&dir);
    assert!(good.starts_with(b"pcierc-state-file 2 "));
    for bare in [false, true] {
        let state = dir.0.join(format!("old-{bare}.state"));
        let old = in_older_format(&good, bare);
        assert_eq!(old.starts_with(b"pcierc-state-file 1 "), !bare);
        std::fs::write(&state, &old).unwrap();
        let b = Backend::start(&["--state-file", state.to_str().unwrap()]);
        let mut f = Frontend::connect(&b.socket, FrontendOptions::tool("t")).expect("frontend");
        assert_eq!(f.config_read(0, 0, 0x10, SCRATCH, 4).unwrap(), 0x5eed_1234);
        let now = std::fs::read(&state).unwrap();
        assert!(now.starts_with(b"pcierc-state-file 2 "), "rewritten");
        assert!(
            now.len() * 20 < old.len(),
            "the base holds what differs from power-on: {} bytes, the whole state {}",
            now.len(),
            old.len()
        );
    }
}

/// Start `pcierc` in `dir` with `args` (logging warnings to a file named after `name`), check
/// that it serves and rp1's scratch dword reads its power-on 0, stop it; its stderr.
fn serve_power_on_scratch(dir: &ScratchDir, name: &str, args: &[&str]) -> String {
    let err_path = dir.0.join(format!("{name}.stderr"));
    let socket = dir.0.join(format!("{name}.sock"));
    let mut child = std::process::Command::new(pcierc_tests::process::pcierc_bin())
        .arg("--socket-path")
        .arg(&socket)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("running pcierc");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut f = loop {
        if let Ok(f) = Frontend::connect(&socket, FrontendOptions::tool("t")) {
            break f;
        }
        assert!(child.try_wait().unwrap().is_none(), "pcierc exited");
        assert!(std::time::Instant::now() < deadline, "pcierc did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(f.config_read(0, 0, 0x10, SCRATCH, 4).unwrap(), 0);
    let _ = child.kill();
    let _ = child.wait();
    std::fs::read_to_string(&err_path).unwrap()
}

#[test]
fn a_cut_last_record_is_dropped_with_a_warning() {
    let dir = ScratchDir::new("state-torn");
    let good = a_real_state_file(&dir);
    let state = dir.0.join("pcierc.state");
    // The last record cut: the write to the scratch dword never acknowledged.
    let cut = good.len() - 7;
    std::fs::write(&state, &good[..cut]).unwrap();
    let state_arg = state.to_str().expect("utf-8 path");
    let err = serve_power_on_scratch(&dir, "torn", &["--state-file", state_arg]);
    assert!(
        err.contains("WARN") && err.contains("its last record") && err.contains("dropped"),
        "{err}"
    );
    // The next base replaced the cut record.
    let now = std::fs::read(&state).unwrap();
    assert_eq!(base_end(&now), now.len(), "a base alone");
}

/// Run `pcierc --socket-path S --state-file F ARGS` with `RUST_LOG=warn`: its exit status (or
/// `None` if it was still running after 10 s, then killed) and standard error.
fn run_pcierc(
    dir: &ScratchDir,
    state: &std::path::Path,
    args: &[&str],
) -> (Option<std::process::ExitStatus>, String) {
    let err_path = dir.0.join("stderr");
    let mut child = std::process::Command::new(pcierc_tests::process::pcierc_bin())
        .arg("--socket-path")
        .arg(dir.0.join("s.sock"))
        .arg("--state-file")
        .arg(state)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("running pcierc");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, std::fs::read_to_string(&err_path).unwrap())
}

#[test]
fn a_damaged_foreign_or_newer_state_file_is_refused_with_one_line_and_kept() {
    let dir = ScratchDir::new("state-refused");
    let journal = a_real_state_file(&dir);
    let good = in_older_format(&journal, false);
    let text = String::from_utf8(good.clone()).expect("a text file");
    let (header, blob) = text.split_once('\n').expect("a header line");
    assert!(header.starts_with("pcierc-state-file 1 len="), "{header}");
    let value_at = text.find("\"config_address\"").expect("a field to damage");
    let mut flipped = good.clone();
    flipped[value_at + 20] ^= 0x01;
    let newer_blob = blob.replacen("\"version\":1", "\"version\":2", 1);
    let newer_blob_file = format!(
        "pcierc-state-file 1 len={} crc32={:08x}\n{newer_blob}",
        newer_blob.len(),
        pcierc_backend::service::state_file::format::crc32(newer_blob.as_bytes())
    );
    // The journal: its base, then one record (the write to the scratch dword).
    let base = base_end(&journal);
    assert!(base < journal.len(), "a record after the base");
    let mut base_flipped = journal.clone();
    base_flipped[base - 3] ^= 0x10;
    // A record after the damaged one: the damaged one is not a cut last write.
    let mut two = journal.clone();
    two.extend_from_slice(&journal[base..]);
    let mut record_flipped = two.clone();
    record_flipped[journal.len() - 4] ^= 0x01;
    // Another pcierc's power-on state: the header rewritten as that one would (its check too).
    let header_end = text_find(&journal, b"\n");
    let header = std::str::from_utf8(&journal[..header_end]).unwrap();
    let (head, _) = header.split_once(" check=").expect("a check field");
    let at = head.find("power-on=").expect("a power-on field") + 9;
    let other = format!(
        "{}{:08x}",
        &head[..at],
        u32::from_str_radix(&head[at..], 16).unwrap() ^ 1
    );
    let check = pcierc_backend::service::state_file::format::crc32(other.as_bytes());
    let another_power_on = [
        format!("{other} check={check:08x}").as_bytes(),
        &journal[header_end..],
    ]
    .concat();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "the file is empty"),
        (
            "truncated",
            good[..good.len() * 2 / 3].to_vec(),
            "truncated:",
        ),
        (
            "truncated in its header",
            good[..12].to_vec(),
            "header line is damaged (cut short",
        ),
        ("bit flipped", flipped, "corrupted: the state's CRC-32"),
        (
            "another program's JSON",
            br#"{"name":"my-app","version":"1.0.2","dependencies":{}}"#.to_vec(),
            "JSON that is not a pcierc state",
        ),
        (
            "another program's file",
            b"\x7fELF\x02\x01\x01\0\0\0\0\0".to_vec(),
            "not a pcierc state file",
        ),
        (
            "a newer file version",
            text.replacen("pcierc-state-file 1 ", "pcierc-state-file 3 ", 1)
                .into_bytes(),
            "state file version 3 is newer than this pcierc reads",
        ),
        (
            "a newer state version",
            newer_blob_file.into_bytes(),
            "state version 2 is not supported",
        ),
        (
            "a journal's base truncated",
            journal[..base - 1].to_vec(),
            "corrupted: no end of line after",
        ),
        (
            "a journal's base with a bit flipped",
            base_flipped,
            "corrupted: the state's CRC-32",
        ),
        (
            "a journal's record before the last with a bit flipped",
            record_flipped,
            "corrupted: record 1 (at byte",
        ),
        (
            "a journal of another power-on state",
            another_power_on,
            "written against another power-on state",
        ),
    ];
    let state = dir.0.join("pcierc.state");
    for (what, bytes, expected) in cases {
        std::fs::write(&state, &bytes).unwrap();
        let (status, err) = run_pcierc(&dir, &state, &[]);
        let status = status.unwrap_or_else(|| panic!("{what}: pcierc started from it"));
        assert!(!status.success(), "{what}: exit status {status}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{what}: one line of error, got: {err}");
        assert!(
            lines[0].starts_with("pcierc: state file ")
                && lines[0].contains(expected)
                && lines[0].contains("refusing to start")
                && lines[0].contains("--state-reset"),
            "{what}: a clear error naming what is wrong ({expected}): {err}"
        );
        assert_eq!(std::fs::read(&state).unwrap(), bytes, "{what}: file kept");
        eprintln!("{what}: {}", lines[0]);
    }
    // A directory is not a state file either.
    let (status, err) = run_pcierc(&dir, &dir.0, &[]);
    assert!(status.is_some_and(|s| !s.success()), "{err}");
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn state_reset_discards_a_damaged_file_with_a_warning_and_starts_fresh() {
    let dir = ScratchDir::new("state-reset");
    let good = a_real_state_file(&dir);
    let state = dir.0.join("pcierc.state");
    std::fs::write(&state, &good[..base_end(&good) - 3]).unwrap();
    let state_arg = state.to_str().expect("utf-8 path");

    // The intact file loads: rp1's scratch dword is what was written before the kill.
    let intact = dir.0.join("intact.state");
    std::fs::write(&intact, &good).unwrap();
    let b = Backend::start(&["--state-file", intact.to_str().unwrap()]);
    let mut f = Frontend::connect(&b.socket, FrontendOptions::tool("t")).expect("frontend");
    assert_eq!(f.config_read(0, 0, 0x10, SCRATCH, 4).unwrap(), 0x5eed_1234);
    drop((f, b));

    // The damaged one with --state-reset: power-on state, a warning, a sound file again.
    let err = serve_power_on_scratch(&dir, "reset", &["--state-file", state_arg, "--state-reset"]);
    assert!(
        err.contains("WARN") && err.contains("discarded as --state-reset asks (truncated:"),
        "{err}"
    );
    let now = std::fs::read(&state).unwrap();
    assert!(now.starts_with(b"pcierc-state-file 2 "), "rewritten whole");
    // ... which loads without --state-reset.
    let _b = Backend::start(&["--state-file", state_arg]);
}

#[test]
fn a_state_file_from_another_machine_type_is_refused_with_one_line() {
    let dir = ScratchDir::new("state-machine");
    let state = dir.0.join("pcierc.state");
    let mut b = Backend::start(&[
        "--machine",
        "pc-q35-10.0",
        "--state-file",
        state.to_str().expect("utf-8 path"),
    ]);
    let mut f = Frontend::connect(&b.socket, FrontendOptions::tool("t")).expect("frontend");
    f.config_write(0, 0, 0x10, SCRATCH, 4, 0x5eed_1234).unwrap();
    b.kill();
    let saved = std::fs::read(&state).expect("the state file");
    let (status, err) = run_pcierc(&dir, &state, &[]);
    let status = status.expect("pcierc exits");
    assert!(!status.success(), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line of error, got: {err}");
    assert!(
        lines[0].contains("saved under machine type pc-q35-10.0, this pcierc runs pc-q35-7.2")
            && lines[0].contains("refusing to start"),
        "{err}"
    );
    assert_eq!(std::fs::read(&state).unwrap(), saved, "file kept");
    // The same machine type restores it (`q35` names the newest, pc-q35-10.0).
    let b = Backend::start(&[
        "--machine",
        "q35",
        "--state-file",
        state.to_str().expect("utf-8 path"),
    ]);
    let mut f = Frontend::connect(&b.socket, FrontendOptions::tool("t")).expect("frontend");
    assert_eq!(f.config_read(0, 0, 0x10, SCRATCH, 4).unwrap(), 0x5eed_1234);
}

/// Where `needle` starts in `hay`.
fn text_find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .expect("present")
}
