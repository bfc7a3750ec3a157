//! The real `pcierc` process: finding (and building) the binary of this profile, starting it on a
//! scratch socket, connecting to it as a VMM, and reading its resident memory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pcierc_examples::socket_bus::SocketBus;
use pcierc_protocol::{Frontend, FrontendOptions, ProtocolFeatures};

use crate::error::{Context, Error, Result};

/// The workspace manifest, for `cargo build`.
const WORKSPACE_MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");

/// How long pcierc may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The `pcierc` binary to measure: `explicit` as given, or the one of this build's profile
/// (`target/<profile>/pcierc` next to this executable), brought up to date with `cargo build` so
/// a stale backend is never measured. Returns the path and a note for the header.
pub fn pcierc_binary(explicit: Option<&Path>) -> Result<(PathBuf, String)> {
    profile_binary(explicit, "pcierc-backend", "pcierc", "--pcierc")
}

/// The example VMM (`examples/src/bin/vmm.rs`) the guest figures run, found and brought up to
/// date as [`pcierc_binary`] does pcierc.
pub fn vmm_binary(explicit: Option<&Path>) -> Result<(PathBuf, String)> {
    profile_binary(explicit, "pcierc-examples", "vmm", "--vmm")
}

/// Binary `bin` of `package`: `explicit` (given with `option`) as is, or the one next to this
/// executable after a `cargo build` of this profile.
fn profile_binary(
    explicit: Option<&Path>,
    package: &str,
    bin_name: &str,
    option: &str,
) -> Result<(PathBuf, String)> {
    if let Some(p) = explicit {
        if !p.is_file() {
            return Err(Error::Other(format!(
                "{option} {}: no such file",
                p.display()
            )));
        }
        return Ok((p.to_path_buf(), format!("given with {option}")));
    }
    let exe = std::env::current_exe().context("locating the pcierc-bench executable")?;
    let dir = exe
        .parent()
        .ok_or_else(|| Error::Other(format!("{} has no parent directory", exe.display())))?;
    let bin = dir.join(bin_name);
    let release = dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var_os("CARGO")
        .or_else(|| option_env!("CARGO").map(Into::into))
        .unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-q", "-p", package, "--bin", bin_name])
        .arg("--manifest-path")
        .arg(WORKSPACE_MANIFEST);
    if release {
        cmd.arg("--release");
    }
    let mut note = if release {
        "release build".to_string()
    } else {
        "NOT a release build: run with --release for meaningful figures".to_string()
    };
    let started = Instant::now();
    match cmd.status() {
        Ok(st) if st.success() => {
            note += &format!(
                ", cargo build checked it in {:.1} s",
                started.elapsed().as_secs_f64()
            )
        }
        Ok(st) => {
            return Err(Error::Other(format!(
                "building {bin_name} (cargo build -p {package}) failed ({st}; cargo's messages \
                 are above)"
            )))
        }
        Err(e) if bin.is_file() => note += &format!("; not rebuilt (cargo: {e}), may be stale"),
        Err(e) => {
            return Err(Error::Other(format!(
                "{} is missing and cargo could not build it: {e} (use {option} PATH)",
                bin.display()
            )))
        }
    }
    if !bin.is_file() {
        return Err(Error::Other(format!(
            "cargo build succeeded but {} does not exist",
            bin.display()
        )));
    }
    Ok((bin, note))
}

/// A scratch directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// A fresh, empty directory.
    pub fn new(tag: &str) -> Result<Self> {
        Self::new_in(&std::env::temp_dir(), tag)
    }

    /// A fresh, empty directory in `parent`.
    pub fn new_in(parent: &Path, tag: &str) -> Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let d = parent.join(format!(
            "pcierc-bench-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).context(format!("creating {}", d.display()))?;
        Ok(ScratchDir(d))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `pcierc --socket-path`, killed on drop.
#[derive(Debug)]
pub struct Pcierc {
    child: Child,
    socket: PathBuf,
    _dir: ScratchDir,
}

impl Pcierc {
    /// Start `bin` with `args` (topology options) and wait until its socket accepts connections.
    pub fn start(bin: &Path, args: &[String]) -> Result<Self> {
        let dir = ScratchDir::new("backend")?;
        let socket = dir.path().join("pcierc.sock");
        let child = Command::new(bin)
            .arg("--socket-path")
            .arg(&socket)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context(format!("spawning {}", bin.display()))?;
        let mut p = Pcierc {
            child,
            socket,
            _dir: dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while std::os::unix::net::UnixStream::connect(&p.socket).is_err() {
            if let Some(st) = p.child.try_wait().context("waiting for pcierc")? {
                return Err(Error::Other(format!("pcierc exited at startup: {st}")));
            }
            if Instant::now() >= deadline {
                return Err(Error::Other(format!(
                    "pcierc did not listen on {} within {START_TIMEOUT:?}",
                    p.socket.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(p)
    }

    /// The socket it listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Connect as a VMM named `name` (handshake, backend channel drained by a thread), with
    /// the default options: configuration reads served from the shared snapshot.
    pub fn connect(&self, name: &str) -> Result<Vmm> {
        self.connect_with(name, true)
    }

    /// As [`Pcierc::connect`]; `fast_path: false` leaves `CONFIG_SNAPSHOT` out, so every read
    /// crosses the socket.
    pub fn connect_with(&self, name: &str, fast_path: bool) -> Result<Vmm> {
        let mut opts = FrontendOptions::vmm(name);
        if !fast_path {
            opts.protocol_features -= ProtocolFeatures::CONFIG_SNAPSHOT;
        }
        let mut frontend = Frontend::connect(&self.socket, opts)
            .context(format!("connecting to {}", self.socket.display()))?;
        if frontend.snapshot_active() != fast_path {
            return Err(Error::Other(format!(
                "the configuration snapshot is {} although it was {}",
                if fast_path { "off" } else { "on" },
                if fast_path { "asked for" } else { "left out" }
            )));
        }
        let channel = Arc::new(ChannelStats::default());
        if let Some(mut ch) = frontend.take_backend_channel() {
            let stats = Arc::clone(&channel);
            // Ends when the backend closes the channel (on disconnect, exit, or when it gives up
            // on a reader that fell behind).
            std::thread::spawn(move || {
                loop {
                    match ch.recv() {
                        Ok(_) => {
                            stats.received.fetch_add(1, Ordering::Relaxed);
                            stats.bytes.store(ch.layout_bytes(), Ordering::Relaxed);
                        }
                        Err(e) if e.should_disconnect() => break,
                        Err(_) => {}
                    }
                }
                stats.closed.store(true, Ordering::Relaxed);
            });
        }
        Ok(Vmm {
            bus: SocketBus(frontend),
            channel,
        })
    }

    /// The process's resident set size (`VmRSS` of `/proc/PID/status`) in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let path = format!("/proc/{}/status", self.child.id());
        let status = std::fs::read_to_string(&path).context(format!("reading {path}"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| Error::Other(format!("{path} has no parsable VmRSS line")))
    }
}

impl Drop for Pcierc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A VMM-role connection: the frontend, and the thread reading its backend channel (as a VMM
/// does, so notifications never pile up in the backend).
pub struct Vmm {
    bus: SocketBus,
    channel: Arc<ChannelStats>,
}

/// What the backend channel of a [`Vmm`] received.
#[derive(Debug, Default)]
struct ChannelStats {
    received: AtomicU64,
    /// Payload bytes of layout notifications (`LayoutChanged` with the whole topology,
    /// `LayoutDelta` with what changed).
    bytes: AtomicU64,
    /// The backend closed the channel.
    closed: AtomicBool,
}

impl Vmm {
    /// The connection.
    pub fn frontend(&mut self) -> &mut Frontend {
        &mut self.bus.0
    }

    /// The connection as the trapped-access path the firmware enumerator drives.
    pub fn bus(&mut self) -> &mut SocketBus {
        &mut self.bus
    }

    /// The backend channel so far (notifications, layout notification payload bytes), and
    /// whether the backend closed it while this connection was up (its reader fell behind).
    pub fn channel_summary(&self) -> String {
        let c = &self.channel;
        format!(
            "{} backend-channel notifications ({:.2} MiB of layout notification payload){}",
            c.received.load(Ordering::Relaxed),
            c.bytes.load(Ordering::Relaxed) as f64 / f64::from(1 << 20),
            if c.closed.load(Ordering::Relaxed) {
                "; the backend CLOSED the channel (the reader fell behind)"
            } else {
                ""
            }
        )
    }
}
