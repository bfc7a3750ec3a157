//! Shared by the simulated-Xen tests: the real `pcierc` process, a QMP client for its control
//! socket, a QEMU stand-in ioreq server, and the shim on its own thread.
#![allow(dead_code)]

pub mod qemu;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pcierc_protocol::{Frontend, FrontendOptions};
use pcierc_xen_shim::shim::{Shim, ShimConfig, ShimStatus};
use pcierc_xen_shim::sim::SimXen;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The `pcierc` binary of this build, built once per test process (like pcierc-tests does).
pub fn pcierc_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test binary path");
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("target/<profile>");
            let mut cmd = Command::new(env!("CARGO"));
            cmd.args(["build", "-q", "-p", "pcierc-backend", "--bin", "pcierc"]);
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            assert!(
                cmd.status().expect("cargo build").success(),
                "building pcierc failed"
            );
            profile_dir.join("pcierc")
        })
        .clone()
}

/// A running `pcierc` with a control socket, killed on drop.
pub struct Pcierc {
    child: Child,
    dir: PathBuf,
    /// Its protocol socket.
    pub socket: PathBuf,
    /// Its QMP control socket.
    pub control: PathBuf,
}

impl Pcierc {
    /// Start with extra arguments and wait until both sockets accept connections.
    pub fn start(extra: &[&str]) -> Pcierc {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pcierc-xen-shim-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let socket = dir.join("pcierc.sock");
        let control = dir.join("qmp.sock");
        let child = Command::new(pcierc_bin())
            .arg("--socket-path")
            .arg(&socket)
            .arg("--control-socket")
            .arg(&control)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning pcierc");
        let mut p = Pcierc {
            child,
            dir,
            socket,
            control,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&p.socket).is_err() || UnixStream::connect(&p.control).is_err() {
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!("pcierc exited early: {st}");
            }
            assert!(Instant::now() < deadline, "pcierc did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        p
    }

    /// A tool connection (for the current layout generation).
    pub fn tool(&self) -> Frontend {
        Frontend::connect(&self.socket, FrontendOptions::tool("test")).expect("tool connection")
    }

    /// pcierc's current layout generation.
    pub fn generation(&self) -> u64 {
        self.tool().topology().expect("topology").generation
    }

    /// A negotiated QMP session.
    pub fn qmp(&self) -> Qmp {
        Qmp::connect(&self.control)
    }
}

impl Drop for Pcierc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A minimal QMP client.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    fn connect(path: &Path) -> Qmp {
        let s = UnixStream::connect(path).expect("control socket");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut q = Qmp {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        };
        let greeting = q.line();
        assert!(greeting.get("QMP").is_some(), "greeting: {greeting}");
        q.execute("qmp_capabilities", serde_json::json!({}))
            .expect("negotiation");
        q
    }

    fn line(&mut self) -> serde_json::Value {
        let mut l = String::new();
        self.reader.read_line(&mut l).expect("QMP line");
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("QMP: {e}: {l}"))
    }

    /// Run a command: its `return`, or its `error` as `Err`. Events are skipped.
    pub fn execute(
        &mut self,
        cmd: &str,
        args: serde_json::Value,
    ) -> Result<serde_json::Value, serde_json::Value> {
        let req = serde_json::json!({"execute": cmd, "arguments": args});
        writeln!(self.writer, "{req}").expect("QMP write");
        loop {
            let v = self.line();
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(e.clone());
            }
        }
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
