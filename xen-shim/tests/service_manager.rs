//! The shim under a service manager, over the simulated Xen with a real `pcierc`: `READY=1`
//! and the pid file once its ioreq server serves, and SIGTERM ending it through its teardown
//! (ranges unmapped, server disabled and destroyed, ports unbound) with a clean return, which
//! `pcierc-xen-shim` turns into exit status 0. This runs [`cli::serve`], the part of the binary
//! after the Xen devices are opened, on a thread of its own with the signal handling the binary
//! uses: the binary itself opens the real /dev/xen, which this host does not have.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::Pcierc;
use pcierc_backend::cli::notify::{Notifier, Readiness};
use pcierc_backend::service::signals::ShutdownSignals;
use pcierc_protocol::{Frontend, FrontendOptions};
use pcierc_xen_shim::cli;
use pcierc_xen_shim::shim::ShimConfig;
use pcierc_xen_shim::sim::guest::{Guest, Mechanism};
use pcierc_xen_shim::sim::{Routed, SimConfig, SimXen};

fn recv(rx: &UnixDatagram) -> String {
    let mut buf = [0u8; 64];
    let n = rx.recv(&mut buf).expect("a notification");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn sigterm_tears_the_ioreq_server_down_and_the_shim_ends_cleanly() {
    common::capture_log();
    let sim = SimXen::new(SimConfig::default());
    let pcierc = Pcierc::start(&[]);
    let dir = std::env::temp_dir().join(format!("pcierc-shim-notify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (notify, pidfile) = (dir.join("notify"), dir.join("shim.pid"));
    let rx = UnixDatagram::bind(&notify).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(20))).unwrap();

    let dm = sim.device_model(0);
    let socket = pcierc.socket.clone();
    let pid_path = pidfile.clone();
    let (tx, tid) = std::sync::mpsc::channel();
    let shim = std::thread::spawn(move || {
        // As `cli::run` does, on this thread: SIGTERM blocked here and read from a signalfd.
        let stop = ShutdownSignals::block().unwrap();
        // SAFETY: gettid has no preconditions.
        tx.send(unsafe { libc::gettid() }).unwrap();
        let fe = Frontend::connect(&socket, FrontendOptions::vmm("xen-shim")).unwrap();
        let mut readiness = Readiness::new(
            Some(Notifier::new(notify.into_os_string()).unwrap()),
            Some(pid_path),
        );
        let r = cli::serve(dm, fe, ShimConfig::default(), stop.as_raw_fd(), || {
            readiness.ready().map_err(|e| e.to_string())
        });
        readiness.stopping();
        (r, stop.take())
    });
    let tid = tid.recv().unwrap();

    assert_eq!(recv(&rx), "READY=1");
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap(),
        format!("{}\n", std::process::id())
    );
    let views = sim.servers();
    assert_eq!(views.len(), 1);
    assert!(views[0].enabled);
    assert!(!views[0].ranges[2].is_empty(), "pcierc's SBDFs mapped");
    let (id, served_by) = Guest::new(sim.vcpu(0))
        .config_read(Mechanism::Cf8, 0, 0, 0, 4)
        .unwrap();
    assert_eq!((id, served_by), (0x29c0_8086, Routed::Server(views[0].id)));

    // SIGTERM to the shim's thread (the one that blocks it; the test harness's others do not).
    // SAFETY: tgkill to a thread of this process that blocks the signal.
    assert_eq!(
        unsafe { libc::tgkill(libc::getpid(), tid, libc::SIGTERM) },
        0
    );
    let (r, signal) = shim.join().expect("shim thread");
    assert_eq!(r, Ok(()));
    assert_eq!(signal, Some(libc::SIGTERM));
    assert!(sim.servers().is_empty(), "the ioreq server is destroyed");
    assert_eq!(sim.bound_ports(), 0, "its event channels are unbound");
    assert_eq!(recv(&rx), "STOPPING=1");
    assert!(!pidfile.exists(), "pid file removed");
    let _ = std::fs::remove_dir_all(&dir);
}
