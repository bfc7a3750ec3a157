//! Shared by the simulated-Xen tests: the real `pcierc` process (`pcierc-testkit`'s, with its QMP
//! client), a QEMU stand-in ioreq server, and the shim on its own thread.
#![allow(dead_code)]

pub mod qemu;

use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pcierc_protocol::{Frontend, FrontendOptions};
use pcierc_testkit::process::Backend;
use pcierc_testkit::qmp_socket::QmpSocket;
use pcierc_xen_shim::shim::{Shim, ShimConfig, ShimStatus};
use pcierc_xen_shim::sim::SimXen;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A running `pcierc` with a control socket (the shared [`Backend`]), killed on drop.
pub struct Pcierc(Backend);

impl Pcierc {
    /// Start with extra arguments and wait until both sockets accept connections.
    pub fn start(extra: &[&str]) -> Pcierc {
        Pcierc(Backend::start_with_control(extra))
    }

    /// A tool connection (for the current layout generation).
    pub fn tool(&self) -> Frontend {
        Frontend::connect(&self.socket, FrontendOptions::tool("test")).expect("tool connection")
    }

    /// pcierc's current layout generation.
    pub fn generation(&self) -> u64 {
        self.tool().topology().expect("topology").generation
    }

    /// A negotiated QMP session on the control socket.
    pub fn qmp(&self) -> QmpSocket {
        let control = self
            .control
            .as_deref()
            .expect("started with a control socket");
        QmpSocket::connect(control, Duration::from_secs(10)).expect("QMP session")
    }
}

impl Deref for Pcierc {
    type Target = Backend;

    fn deref(&self) -> &Backend {
        &self.0
    }
}

/// The shim on its own thread, over the simulated Xen.
pub struct ShimThread {
    stop: EventFd,
    handle: Option<JoinHandle<Result<(), String>>>,
    /// Its counters.
    pub status: Arc<ShimStatus>,
    /// Its server id.
    pub id: u16,
}

impl ShimThread {
    /// Connect to pcierc as `xen-shim`, start the shim in dom0 of `sim`, serve until stopped.
    pub fn start(sim: &SimXen, pcierc: &Pcierc, cfg: ShimConfig) -> ShimThread {
        let stop = EventFd::new(EFD_NONBLOCK).unwrap();
        let stop_fd = stop.try_clone().unwrap();
        let dm = sim.device_model(0);
        let socket = pcierc.socket.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let fe = Frontend::connect(&socket, FrontendOptions::vmm("xen-shim"))
                .map_err(|e| e.to_string())?;
            let mut shim = match Shim::start(dm, fe, cfg) {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return Err(e.to_string());
                }
            };
            let _ = tx.send(Ok((shim.status(), shim.server_id())));
            let r = shim.run(stop_fd.as_raw_fd()).map_err(|e| e.to_string());
            shim.shutdown().map_err(|e| e.to_string())?;
            r
        });
        let (status, id) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("shim started")
            .expect("shim start");
        ShimThread {
            stop,
            handle: Some(handle),
            status,
            id,
        }
    }

    /// Wait until the shim has applied layout generation `g` (changes made outside the
    /// guest, e.g. through QMP, reach it asynchronously).
    pub fn wait_generation(&self, g: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.status.generation().is_none_or(|have| have < g) {
            assert!(
                Instant::now() < deadline,
                "shim never applied generation {g}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stop, tear down, and return how the loop ended.
    pub fn stop(mut self) -> Result<(), String> {
        self.stop.write(1).unwrap();
        self.handle
            .take()
            .unwrap()
            .join()
            .expect("shim thread panicked")
    }
}

impl Drop for ShimThread {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = self.stop.write(1);
            let _ = h.join();
        }
    }
}

/// Log records, kept for tests that check something was logged.
pub struct CaptureLog {
    records: Mutex<Vec<String>>,
}

impl log::Log for CaptureLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            let line = format!("{} {}: {}", r.level(), r.target(), r.args());
            eprintln!("{line}");
            self.records.lock().unwrap().push(line);
        }
    }
    fn flush(&self) {}
}

/// Install the capturing logger (once per test binary) and return it.
pub fn capture_log() -> &'static CaptureLog {
    static LOG: OnceLock<&'static CaptureLog> = OnceLock::new();
    LOG.get_or_init(|| {
        let l: &'static CaptureLog = Box::leak(Box::new(CaptureLog {
            records: Mutex::new(Vec::new()),
        }));
        let _ = log::set_logger(l);
        log::set_max_level(log::LevelFilter::Warn);
        l
    })
}

impl CaptureLog {
    /// Whether a warning or error containing `needle` was logged.
    pub fn contains(&self, needle: &str) -> bool {
        self.records
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }
}
