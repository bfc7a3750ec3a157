//! The shim under its seccomp filter (`--seccomp`), over the simulated Xen with a real
//! `pcierc`: in a child process (this test binary run again for [`child`]) the shim is set up,
//! installs the filter where `cli::run` does (just before it reports ready), serves a guest's
//! configuration reads and writes, and tears down on SIGTERM. Under `kill` any call outside
//! the list would kill the child; under `log` the kernel's log must hold no record of one.
//! The real `/dev/xen` calls (ioctls and mappings of the privcmd and evtchn devices) are not
//! exercised here: this host has no Xen.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use common::Pcierc;
use pcierc_backend::sandbox::{self, SeccompMode};
use pcierc_backend::service::signals::ShutdownSignals;
use pcierc_protocol::{Frontend, FrontendOptions};
use pcierc_xen_shim::cli;
use pcierc_xen_shim::shim::ShimConfig;
use pcierc_xen_shim::sim::guest::{Guest, Mechanism};
use pcierc_xen_shim::sim::{SimConfig, SimXen};

const MODE_ENV: &str = "PCIERC_SHIM_SECCOMP_CHILD";
const SOCKET_ENV: &str = "PCIERC_SHIM_SECCOMP_SOCKET";
const DONE: &str = "child: served and tore down under the filter";

/// The child's side (does nothing as an ordinary test).
#[test]
fn child() {
    let (Ok(mode), Ok(socket)) = (std::env::var(MODE_ENV), std::env::var(SOCKET_ENV)) else {
        return;
    };
    let mode = if mode == "log" {
        SeccompMode::Log
    } else {
        SeccompMode::Kill
    };
    let sim = SimXen::new(SimConfig::default());
    let dm = sim.device_model(0);
    let (tx, tid) = std::sync::mpsc::channel();
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let shim = std::thread::spawn(move || {
        let stop = ShutdownSignals::block().unwrap();
        // SAFETY: gettid has no preconditions.
        tx.send(unsafe { libc::gettid() }).unwrap();
        let fe = Frontend::connect(socket, FrontendOptions::vmm("xen-shim")).unwrap();
        cli::serve(dm, fe, ShimConfig::default(), stop.as_raw_fd(), || {
            let applied = sandbox::apply(mode, &sandbox::syscalls::xen_shim(), "pcierc-xen-shim")
                .map_err(|e| e.to_string());
            let _ = ready_tx.send(());
            applied
        })
    });
    let tid = tid.recv().unwrap();
    // Wait until the shim is ready: its server enabled, its ranges mapped (Xen routes nothing
    // to it before that: a guest access would read all ones) and the filter installed.
    ready.recv().expect("the shim got ready");
    assert!(sim.servers().first().is_some_and(|s| s.enabled));
    let guest = Guest::new(sim.vcpu(0));
    // rp1's memory base/limit (writable bits 0xfff0_fff0).
    for n in 0..50u64 {
        let v = (n << 20) | (n << 4);
        guest
            .config_write(Mechanism::Cf8, 0, 0x10, 0x20, 4, v)
            .unwrap();
        assert_eq!(
            guest.read32(Mechanism::Cf8, 0, 0x10, 0x20).unwrap(),
            v as u32
        );
    }
    assert_eq!(guest.read32(Mechanism::Cf8, 0, 0, 0).unwrap(), 0x29c0_8086);
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = status.lines().find(|l| l.starts_with("Seccomp:")).unwrap();
    println!("child {}: {field}", std::process::id());
    // SAFETY: tgkill to a thread of this process that blocks the signal.
    assert_eq!(
        unsafe { libc::tgkill(libc::getpid(), tid, libc::SIGTERM) },
        0
    );
    assert_eq!(shim.join().expect("shim thread"), Ok(()));
    assert!(sim.servers().is_empty(), "the ioreq server is destroyed");
    println!("{DONE}");
}

fn run_child(mode: &str, socket: &std::path::Path) -> (std::process::ExitStatus, String) {
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "child", "--nocapture", "--test-threads", "1"])
        .env(MODE_ENV, mode)
        .env(SOCKET_ENV, socket)
        .output()
        .expect("running the child");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status, text)
}

#[test]
fn the_shim_serves_and_tears_down_under_its_filter() {
    let pcierc = Pcierc::start(&[]);
    for mode in ["kill", "log"] {
        let (status, out) = run_child(mode, &pcierc.socket);
        assert!(
            status.success(),
            "{mode}: {status} (signal {:?}): {out}",
            status.signal()
        );
        assert!(out.contains("Seccomp:\t2") && out.contains(DONE), "{out}");
        if mode == "log" {
            // Every call outside the list is in the kernel's log, with the child's pid.
            let pid = out
                .split("child ")
                .nth(1)
                .and_then(|r| r.split(':').next())
                .expect("the child's pid");
            match Command::new("dmesg").output() {
                Ok(d) if d.status.success() => {
                    let log = String::from_utf8_lossy(&d.stdout);
                    let calls: Vec<&str> = log
                        .lines()
                        .filter(|l| l.contains("type=1326") && l.contains(&format!(" pid={pid} ")))
                        .collect();
                    assert!(calls.is_empty(), "calls outside the list: {calls:#?}");
                }
                _ => eprintln!("dmesg not readable here: the log-mode check is skipped"),
            }
        }
    }
}
