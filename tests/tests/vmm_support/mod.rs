//! Helpers shared by the VMM's end-to-end tests (`vmm_*.rs`): the `vmm` binary of this build,
//! running it with a time limit (and checking what the guest printed), following its console line
//! by line, and a QMP session on pcierc's control socket.
#![allow(dead_code)] // each test binary uses a different part

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use pcierc_tests::process::{pcierc_bin, ScratchDir};
use pcierc_tests::qmp_socket::QmpSocket;

/// Longest a VMM run may take before the test kills it and fails (a hang is a bug).
pub const RUN_LIMIT: Duration = Duration::from_secs(25);

/// Is there a `/dev/kvm`? Absent, the caller skips (loudly), unless `PCIERC_REQUIRE_KVM` is set.
pub fn kvm_available() -> bool {
    if Path::new("/dev/kvm").exists() {
        return true;
    }
    assert!(
        std::env::var("PCIERC_REQUIRE_KVM").is_err(),
        "/dev/kvm is required (PCIERC_REQUIRE_KVM is set) but absent"
    );
    eprintln!("\n*** SKIP: /dev/kvm is absent: the VMM tests did not run ***\n");
    false
}

/// The `vmm` binary of this build's profile, brought up to date once (next to `pcierc`).
pub fn vmm_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let pcierc = pcierc_bin();
            let dir = pcierc.parent().expect("target/<profile>");
            let mut cmd = Command::new(env!("CARGO"));
            cmd.args(["build", "-q", "-p", "pcierc-examples", "--bin", "vmm"]);
            if dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let st = cmd.status().expect("running cargo build");
            assert!(st.success(), "building the vmm failed");
            dir.join("vmm")
        })
        .clone()
}

/// The probe guest's VMM options: 64 MiB of RAM and the VMM's own 20 s limit (within
/// [`RUN_LIMIT`]).
pub const PROBE_LIMITS: [&str; 4] = ["--mem", "64", "--timeout", "20"];

/// `--spawn-backend --pcierc PCIERC`: the VMM starts this build's `pcierc` itself.
pub fn spawn_backend() -> [&'static str; 3] {
    static PCIERC: OnceLock<String> = OnceLock::new();
    let pcierc = PCIERC.get_or_init(|| pcierc_bin().to_string_lossy().into_owned());
    ["--spawn-backend", "--pcierc", pcierc]
}

/// Run the VMM to completion (killed after [`RUN_LIMIT`]).
pub fn run_vmm(args: &[&str]) -> Output {
    run_vmm_for(args, RUN_LIMIT)
}

/// Run the VMM to completion (killed after [`RUN_LIMIT`]), which must succeed; its stdout and
/// stderr.
pub fn run_vmm_ok(args: &[&str]) -> (String, String) {
    let out = run_vmm(args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "vmm {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

/// Run the VMM to completion (killed after `limit`: a test failure).
pub fn run_vmm_for(args: &[&str], limit: Duration) -> Output {
    let mut cmd = Command::new(vmm_bin());
    cmd.args(args).env(
        "RUST_LOG",
        std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
    );
    run_for(cmd, limit)
}

/// Run a program to completion with stdin closed and both outputs captured; a run longer than
/// `limit` is killed and fails the test (a hang is a bug).
pub fn run_for(mut cmd: Command, limit: Duration) -> Output {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    // Drain both pipes on threads so a chatty guest never blocks on a full pipe.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("waiting for the child") {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = String::from_utf8_lossy(&out_t.join().unwrap_or_default()).into_owned();
            let stderr = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
            panic!("{cmd:?} hung for {limit:?}; stdout:\n{stdout}\nstderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

/// Bytes a process printed, as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The lines of the VMM's `stderr` that start with one of `prefixes` (its `--stats` report),
/// each indented, for the test's own report.
pub fn stats_lines(stderr: &str, prefixes: &[&str]) -> String {
    stderr
        .lines()
        .filter(|l| prefixes.iter().any(|p| l.starts_with(p)))
        .map(|l| format!("  {l}\n"))
        .collect()
}

/// Check that the guest printed each of the `expected` lines.
pub fn assert_lines(stdout: &str, expected: &[impl AsRef<str>]) {
    let lines: Vec<&str> = stdout.lines().collect();
    for e in expected {
        let e = e.as_ref();
        assert!(
            lines.contains(&e),
            "missing {e:?} in the guest's output:\n{stdout}"
        );
    }
}

/// A QMP session on pcierc's control socket (docs/control-socket.md).
pub fn qmp(control: &Path) -> QmpSocket {
    QmpSocket::connect(control, Duration::from_secs(10)).expect("connecting to the control socket")
}

/// The probe guest's image in a file, so `--kernel` (linux-loader's ELF path) is what runs.
pub fn probe_image(dir: &ScratchDir) -> String {
    let path = dir.0.join("pcie-probe.elf");
    let bytes = pcierc_examples::guest::PCIE_PROBE_ELF;
    assert!(
        !bytes.is_empty(),
        "the test guest was not built: install binutils (as, ld) and rebuild pcierc-examples"
    );
    std::fs::write(&path, bytes).expect("writing the guest image");
    path.to_string_lossy().into_owned()
}

/// A VMM whose stdout arrives line by line, stamped.
pub struct RunningVmm {
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
    seen: Vec<String>,
    stderr: std::thread::JoinHandle<Vec<u8>>,
}

impl RunningVmm {
    /// Start the VMM with `args` (stdin closed, both outputs captured; the VMM's own log at
    /// `info` unless `RUST_LOG` says otherwise).
    pub fn start(args: &[&str]) -> RunningVmm {
        let mut child = Command::new(vmm_bin())
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,pcierc_examples=info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning the vmm");
        let out = child.stdout.take().expect("stdout");
        let mut err = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send((Instant::now(), l));
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = err.read_to_end(&mut v);
            v
        });
        RunningVmm {
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// Wait for a line starting with `prefix`; when it arrived and the line.
    pub fn expect_line(&mut self, prefix: &str) -> (Instant, String) {
        let deadline = Instant::now() + RUN_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((t, l)) => {
                    self.seen.push(l.clone());
                    if l.starts_with(prefix) {
                        return (t, l);
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!(
                        "no line {prefix:?} from the guest; it printed:\n{}",
                        self.seen.join("\n")
                    );
                }
            }
        }
    }

    /// Wait for the exit; its status and stderr.
    pub fn finish(mut self) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + RUN_LIMIT;
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("waiting for the vmm") {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the vmm did not exit");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        (status, text(&self.stderr.join().unwrap_or_default()))
    }
}
