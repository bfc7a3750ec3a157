//! `--chroot` and `--runas`: the shim gives up root once set up and still serves the guest.
//!
//! The binary itself opens the real /dev/xen, which this host does not have, so this runs the
//! binary's path after the devices are open: [`cli::serve`] over the simulated Xen with a real
//! `pcierc`, dropping privileges in `on_ready` exactly as `cli::run` does ([`Confinement::apply`]).
//! A uid change is process-wide, so the confined shim runs in a child process: this test binary
//! again, running only `confined_child` with `PCIERC_PRIVDROP_CHILD` set. The parent (root)
//! starts pcierc, whose socket the child connects to before it drops root. Needs root (CI runs
//! as root); skipped loudly otherwise, and a failure when `PCIERC_REQUIRE_TOOLS` is set.

mod common;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::Pcierc;
use pcierc_protocol::{Frontend, FrontendOptions};
use pcierc_xen_shim::cli::{self, Confinement};
use pcierc_xen_shim::privileges::RunAs;
use pcierc_xen_shim::shim::ShimConfig;
use pcierc_xen_shim::sim::guest::{Guest, Mechanism};
use pcierc_xen_shim::sim::{Routed, SimConfig, SimXen};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const CHILD: &str = "PCIERC_PRIVDROP_CHILD";
const NOBODY: RunAs = RunAs {
    uid: 65534,
    gid: 65534,
};

#[test]
fn the_shim_still_serves_after_chroot_and_runas() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("PCIERC_REQUIRE_TOOLS").is_none(),
            "dropping privileges needs root (PCIERC_REQUIRE_TOOLS is set)"
        );
        eprintln!("\n*** SKIP: not root; --chroot/--runas were not tested ***\n");
        return;
    }
    let pcierc = Pcierc::start(&[]);
    let jail = std::env::temp_dir().join(format!("pcierc-shim-jail-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&jail);
    std::fs::create_dir_all(&jail).unwrap();
    std::fs::write(jail.join("inside-the-chroot"), "").unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "confined_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, &jail)
        .env("PCIERC_SHIM_TEST_SOCKET", &pcierc.socket)
        .output()
        .expect("running the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&jail);
    assert!(
        out.status.success() && stdout.contains("CONFINED SHIM SERVED"),
        "child failed: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}

/// The child's part (does nothing unless started by the test above).
#[test]
fn confined_child() {
    let Some(jail) = std::env::var_os(CHILD).map(PathBuf::from) else {
        return;
    };
    let socket = PathBuf::from(std::env::var_os("PCIERC_SHIM_TEST_SOCKET").unwrap());
    let sim = SimXen::new(SimConfig::default());
    let dm = sim.device_model(0);
    let stop = EventFd::new(EFD_NONBLOCK).unwrap();
    let stop_fd = stop.try_clone().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let confinement = Confinement {
        chroot: Some(jail.clone()),
        runas: Some(NOBODY),
    };
    let shim = std::thread::spawn(move || {
        let fe = Frontend::connect(&socket, FrontendOptions::vmm("xen-shim")).unwrap();
        cli::serve(dm, fe, ShimConfig::default(), stop_fd.as_raw_fd(), || {
            let r = confinement.apply();
            let _ = ready_tx.send(r.clone());
            r
        })
    });
    ready_rx
        .recv()
        .expect("the shim got ready")
        .expect("privileges dropped");

    // The whole process is nobody now, inside the jail, and cannot become root again.
    // SAFETY: plain system calls without memory arguments.
    let (euid, egid, regain) = unsafe { (libc::geteuid(), libc::getegid(), libc::setuid(0)) };
    assert_eq!((euid, egid), (NOBODY.uid, NOBODY.gid));
    assert_ne!(regain, 0, "setuid(0) must fail");
    assert!(Path::new("/inside-the-chroot").exists(), "chrooted");
    assert_eq!(std::env::current_dir().unwrap(), Path::new("/"));
    assert!(!jail.exists(), "the host's paths are out of reach");

    // The guest is served by the confined shim: CF8/CFC and ECAM, through pcierc.
    let views = sim.servers();
    let g = Guest::new(sim.vcpu(0));
    let (id, by) = g.config_read(Mechanism::Cf8, 0, 0, 0, 4).unwrap();
    assert_eq!((id, by), (0x29c0_8086, Routed::Server(views[0].id)));
    let (id, by) = g.config_read(Mechanism::Cf8, 0, 0x10, 0, 4).unwrap();
    assert_eq!((id & 0xffff, by), (0x1b36, Routed::Server(views[0].id)));

    // And it still tears down (dm_ops on descriptors opened before the drop).
    stop.write(1).unwrap();
    assert_eq!(shim.join().expect("shim thread"), Ok(()));
    assert!(sim.servers().is_empty(), "ioreq server destroyed");
    assert_eq!(sim.bound_ports(), 0);
    println!("CONFINED SHIM SERVED");
}
