//! `--state-file`: pcierc killed with SIGKILL in the middle of a guest-like workload and
//! restarted from its state file presents the same configuration space, slot state, hot-added
//! functions and layout generation, and no acknowledged write is lost.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pcierc_protocol::{Frontend, FrontendOptions};
use pcierc_tests::process::{Backend, ScratchDir};

const ECAM: u64 = 0xb000_0000;
const RP1: u64 = ECAM + (0x10 << 12);
/// Free writable dword after rp1's capabilities (QEMU leaves those bytes writable).
const SCRATCH: u16 = 0x200;

/// A QMP command on a raw connection (negotiates first); the reply line.
fn qmp(path: &std::path::Path, cmd: &str) -> String {
    let s = UnixStream::connect(path).expect("control socket");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap(); // greeting
    let mut w = s;
    writeln!(w, r#"{{"execute":"qmp_capabilities"}}"#).unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    writeln!(w, "{cmd}").unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    line
}

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
    let reply = qmp(
        &control,
        r#"{"execute":"device_add","arguments":{"driver":"e1000e","id":"net0","bus":"rp1","owner":"qemu"}}"#,
    );
    assert!(reply.contains("\"return\""), "{reply}");
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
