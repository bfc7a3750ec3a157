//! Running the real `pcierc` binary for end-to-end tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The `pcierc` binary of this build, brought up to date once per test process (a no-op build
/// when `cargo test --workspace` already built it; without it, `cargo test -p pcierc-tests`
/// would run a stale binary).
pub fn pcierc_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            // target/<profile>/deps/<test-binary> -> target/<profile>/pcierc
            let exe = std::env::current_exe().expect("test binary path");
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("target/<profile>");
            let release = profile_dir.file_name().is_some_and(|n| n == "release");
            let mut cmd = Command::new(env!("CARGO"));
            cmd.args(["build", "-q", "-p", "pcierc-backend", "--bin", "pcierc"]);
            if release {
                cmd.arg("--release");
            }
            let st = cmd.status().expect("running cargo build");
            assert!(st.success(), "building pcierc failed");
            profile_dir.join("pcierc")
        })
        .clone()
}

/// A scratch directory removed on drop.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    /// A fresh directory under the system temp dir.
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "pcierc-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).expect("creating scratch dir");
        ScratchDir(d)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The names in directory `d`, sorted (what a process left in its socket directory).
pub fn dir_entries(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap_or_else(|e| panic!("reading {}: {e}", d.display()))
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

/// A running `pcierc --socket-path`, killed on drop.
pub struct Backend {
    child: Child,
    /// The socket it serves.
    pub socket: PathBuf,
    /// Its control socket, when started with [`Backend::start_with_control`].
    pub control: Option<PathBuf>,
    _dir: ScratchDir,
}

impl Backend {
    /// Start pcierc with extra arguments and wait until its socket accepts connections.
    pub fn start(extra: &[&str]) -> Backend {
        Self::spawn(extra, false)
    }

    /// As [`Backend::start`], also serving the QMP control socket ([`Backend::control`]).
    pub fn start_with_control(extra: &[&str]) -> Backend {
        Self::spawn(extra, true)
    }

    fn spawn(extra: &[&str], with_control: bool) -> Backend {
        let dir = ScratchDir::new("backend");
        let socket = dir.0.join("pcierc.sock");
        let control = with_control.then(|| dir.0.join("control.sock"));
        let child = Self::launch(&socket, control.as_deref(), extra);
        let mut b = Backend {
            child,
            socket,
            control,
            _dir: dir,
        };
        b.wait_ready();
        b
    }

    /// Kill the process (SIGKILL) and start a new one on the same sockets with `extra`.
    pub fn restart(&mut self, extra: &[&str]) {
        self.kill();
        self.child = Self::launch(&self.socket, self.control.as_deref(), extra);
        self.wait_ready();
    }

    fn launch(socket: &Path, control: Option<&Path>, extra: &[&str]) -> Child {
        let mut cmd = Command::new(pcierc_bin());
        if let Some(c) = control {
            cmd.arg("--control-socket").arg(c);
        }
        cmd.arg("--socket-path")
            .arg(socket)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning pcierc")
    }

    fn wait_ready(&mut self) {
        let b = self;
        let deadline = Instant::now() + Duration::from_secs(20);
        let ready = |b: &Backend| {
            std::os::unix::net::UnixStream::connect(&b.socket).is_ok()
                && b.control
                    .as_ref()
                    .is_none_or(|c| std::os::unix::net::UnixStream::connect(c).is_ok())
        };
        while !ready(b) {
            if let Ok(Some(st)) = b.child.try_wait() {
                panic!("pcierc exited early: {st}");
            }
            assert!(Instant::now() < deadline, "pcierc did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the process in KiB (`VmRSS` in /proc/PID/status).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Is the process still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kill the process with SIGKILL (no chance to clean up) and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait up to `timeout` for the process to exit on its own; its status if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--device` options for `n` root ports `rp1`..`rpN` on slots 00:02.0 onwards (eight functions
/// per slot, function 0 multifunction), for topologies larger than the default.
pub fn root_port_options(n: usize) -> Vec<String> {
    (0..n)
        .flat_map(|i| {
            let (dev, func) = (2 + i / 8, i % 8);
            let mf = if func == 0 { ",multifunction=on" } else { "" };
            [
                "--device".to_string(),
                format!(
                    "pcie-root-port,id=rp{n},chassis={n},slot={n},addr={dev:#x}.{func}{mf}",
                    n = i + 1
                ),
            ]
        })
        .collect()
}

/// Is an external tool present? When `PCIERC_REQUIRE_TOOLS=1` (CI) its absence is a failure;
/// otherwise the caller skips, and this says so loudly ([`skip_loudly`]).
pub fn tool_available(name: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        skip_loudly(&format!("{name} is not installed"));
    }
    found
}

/// Say loudly that the calling test skips because `what` is missing, or fail with `what` when
/// `PCIERC_REQUIRE_TOOLS` is set (CI, where every prerequisite is installed).
pub fn skip_loudly(what: &str) {
    assert!(
        std::env::var_os("PCIERC_REQUIRE_TOOLS").is_none(),
        "{what} (PCIERC_REQUIRE_TOOLS is set)"
    );
    eprintln!("\n*** SKIP: {what}; this test did not run ***\n");
}
