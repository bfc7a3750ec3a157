//! The `pcierc-xen-shim` command line: clap [`Args`] -> validated [`Config`] -> [`run`].

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;

use clap::{CommandFactory, Parser};
use log::info;
use pcierc_backend::cli::logging::LogLevel;
use pcierc_backend::cli::man::ManSection;
use pcierc_backend::cli::notify::Readiness;
use pcierc_backend::sandbox::{self, SeccompMode};
use pcierc_backend::service::signals::{self, ShutdownSignals};
use pcierc_protocol::{Frontend, FrontendOptions};

use crate::abi::dm_op::ioservid_t;
use crate::hypervisor::linux::LinuxXen;
use crate::hypervisor::Hypervisor;
use crate::privileges::{self, RunAs};
use crate::shim::{Shim, ShimConfig};
use crate::DomId;

/// pcierc-xen-shim: a Xen ioreq server that serves a guest's accesses to pcierc's host bridge
/// and root ports, and keeps Xen's routing in step with pcierc's layout.
#[derive(Parser, Debug)]
#[command(name = "pcierc-xen-shim", version)]
pub struct Args {
    /// The guest's domain id.
    #[arg(long, value_name = "N")]
    pub domid: u16,
    /// pcierc's socket.
    #[arg(long, value_name = "PATH")]
    pub backend_socket: PathBuf,
    /// Another device model's ioreq server, created from this domain, that owns functions in
    /// pcierc's hierarchy: `OWNER=ID` (e.g. `qemu=0`). Its functions' SBDFs are kept mapped to
    /// it. Repeatable.
    #[arg(long, value_name = "OWNER=ID")]
    pub peer_server: Vec<String>,
    /// Ask Xen to decode MMCONFIG (a proposed extension; see docs/xen.md). Falls back to
    /// decoding ECAM in the shim when Xen does not have it.
    #[arg(long)]
    pub mmcfg_extension: bool,
    /// Claim ports 0xCF8-0xCFF: only when the shim is the guest's only device model (next to
    /// QEMU it would take QEMU's ports).
    #[arg(long)]
    pub claim_config_ports: bool,
    /// System calls outside the shim's allow-list once it serves: kill the process (default),
    /// allow and have the kernel log them, or no filter at all.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = SeccompMode::Kill)]
    pub seccomp: SeccompMode,
    /// Write the shim's pid to FILE (atomically) once its ioreq server is serving; removed at
    /// exit (unless --chroot or --runas left the shim unable to).
    #[arg(long, value_name = "FILE")]
    pub pidfile: Option<PathBuf>,
    /// Once set up (and ready), run as USER (its passwd uid and group), UID or UID:GID, as
    /// QEMU's -runas: supplementary groups dropped, root refused.
    #[arg(long, value_name = "USER|UID[:GID]")]
    pub runas: Option<String>,
    /// Once set up (and ready), chroot into DIR (before --runas), as QEMU's -chroot.
    #[arg(long, value_name = "DIR")]
    pub chroot: Option<PathBuf>,
    /// Log LEVEL and above to standard error (instead of RUST_LOG's filter; default info).
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<LogLevel>,
}

/// The `pcierc-xen-shim` command line as clap describes it (for `--help`, man pages).
pub fn command() -> clap::Command {
    Args::command()
}

/// What privileges the shim gives up once it serves (`--chroot`, `--runas`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Confinement {
    /// `--chroot`.
    pub chroot: Option<PathBuf>,
    /// `--runas`, looked up.
    pub runas: Option<RunAs>,
}

impl Confinement {
    /// Chroot and change user as asked (nothing if nothing was asked).
    pub fn apply(&self) -> Result<(), String> {
        privileges::drop_privileges(self.chroot.as_deref(), self.runas).map_err(|e| e.to_string())
    }
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Guest domain.
    pub domid: DomId,
    /// pcierc's socket.
    pub backend_socket: PathBuf,
    /// What the shim is told about routing.
    pub shim: ShimConfig,
    /// `--seccomp`.
    pub seccomp: SeccompMode,
    /// `--pidfile`.
    pub pidfile: Option<PathBuf>,
    /// `--chroot`, `--runas`.
    pub confinement: Confinement,
}

impl TryFrom<Args> for Config {
    type Error = String;
    fn try_from(a: Args) -> Result<Self, String> {
        if a.domid == 0 || a.domid >= crate::abi::DOMID_SELF {
            return Err(format!("--domid {}: not a guest domain id", a.domid));
        }
        let mut peers = BTreeMap::new();
        for p in &a.peer_server {
            let (owner, id) = p
                .split_once('=')
                .ok_or_else(|| format!("--peer-server {p}: expected OWNER=ID"))?;
            let id: ioservid_t = id
                .parse()
                .ok()
                .filter(|&i: &ioservid_t| usize::from(i) < crate::sim::MAX_NR_IOREQ_SERVERS)
                .ok_or_else(|| format!("--peer-server {p}: ID must be 0 to 7"))?;
            if owner.is_empty() || owner == crate::routing::PCIERC_OWNER {
                return Err(format!("--peer-server {p}: not another emulator's name"));
            }
            peers.insert(owner.to_string(), id);
        }
        let runas = a
            .runas
            .as_deref()
            .map(RunAs::parse)
            .transpose()
            .map_err(|e| e.to_string())?;
        if let Some(dir) = &a.chroot {
            privileges::check_chroot_dir(dir).map_err(|e| e.to_string())?;
        }
        Ok(Config {
            domid: a.domid,
            backend_socket: a.backend_socket,
            shim: ShimConfig {
                peers,
                mmcfg_extension: a.mmcfg_extension,
                config_ports: a.claim_config_ports,
            },
            seccomp: a.seccomp,
            pidfile: a.pidfile,
            confinement: Confinement {
                chroot: a.chroot,
                runas,
            },
        })
    }
}

/// Open the Xen devices (first: without them nothing else matters), connect to pcierc, set up
/// the server, tell the service manager (`READY=1` on `$NOTIFY_SOCKET`, `--pidfile`), give up
/// root (`--chroot`, `--runas`), install the seccomp filter (`--seccomp`; after the privilege
/// drop, whose calls are not on the list), all before the first guest request is served, and
/// serve until SIGINT or SIGTERM; then tear down (unmap the ranges, disable and destroy the server,
/// unbind, unmap its page). Both signals are blocked from the start, so one that arrives while
/// setting up ends the shim cleanly as soon as it serves.
pub fn run(cfg: Config) -> Result<(), String> {
    let stop = ShutdownSignals::block().map_err(|e| format!("signal handling: {e}"))?;
    let mut readiness = Readiness::from_env(cfg.pidfile.clone());
    let xen = LinuxXen::open(cfg.domid).map_err(|e| e.to_string())?;
    xen.restrict().map_err(|e| e.to_string())?;
    let pcierc = Frontend::connect(&cfg.backend_socket, FrontendOptions::vmm("xen-shim"))
        .map_err(|e| format!("{}: {e}", cfg.backend_socket.display()))?;
    let confinement = cfg.confinement;
    let r = serve(xen, pcierc, cfg.shim, stop.as_raw_fd(), || {
        readiness.ready().map_err(|e| e.to_string())?;
        confinement.apply()?;
        // Set up: from here on only what serving and the teardown need.
        sandbox::apply(
            cfg.seccomp,
            &sandbox::syscalls::xen_shim(),
            "pcierc-xen-shim",
        )
        .map_err(|e| e.to_string())
    });
    if let Some(signo) = stop.take() {
        info!("{} received; stopped", signals::name(signo));
    }
    readiness.stopping();
    r
}

/// The extra sections of `pcierc-xen-shim(1)` (beside what clap describes).
pub const MAN_SECTIONS: &[ManSection] = &[
    ManSection {
        title: "ENVIRONMENT",
        entries: &[
            (
                "RUST_LOG",
                "Log filter (env_logger syntax) when --log-level is not given; default info.",
            ),
            (
                "RUST_LOG_STYLE",
                "auto (default: colours only when standard error is a terminal), always or never.",
            ),
            (
                "NOTIFY_SOCKET",
                "systemd's notification socket: READY=1 once the ioreq server serves, STOPPING=1 \
                 at exit. Removed from the environment.",
            ),
        ],
    },
    ManSection {
        title: "SIGNALS",
        entries: &[(
            "SIGTERM, SIGINT",
            "Tear down (ranges unmapped, ioreq server disabled and destroyed, event channels \
             unbound, the ioreq page unmapped) and exit with status 0.",
        )],
    },
    ManSection {
        title: "EXIT STATUS",
        entries: &[
            ("0", "Stopped by a signal."),
            (
                "1",
                "An error (no /dev/xen, pcierc unreachable, a failed dm_op, ...), one line on \
                 standard error.",
            ),
            ("2", "The command line is wrong."),
        ],
    },
    ManSection {
        title: "SEE ALSO",
        entries: &[(
            "pcierc(1), xl(1)",
            "docs/xen.md (message sequence, routing, the xl launch recipe in contrib/xen) and \
             docs/service.md in pcierc's source.",
        )],
    },
];

/// Start the shim for `hv`'s domain, call `on_ready` once it serves, serve until `stop` polls
/// readable (a signalfd, or an eventfd in tests), then tear down. The teardown runs whether
/// serving ended cleanly or not (also when `on_ready` fails); the first error is returned.
pub fn serve<H: Hypervisor>(
    hv: H,
    pcierc: Frontend,
    cfg: ShimConfig,
    stop: RawFd,
    on_ready: impl FnOnce() -> Result<(), String>,
) -> Result<(), String> {
    let domid = hv.domid();
    let mut shim = Shim::start(hv, pcierc, cfg).map_err(|e| e.to_string())?;
    info!(
        "serving domain {domid} as ioreq server {}",
        shim.server_id()
    );
    let r = on_ready().and_then(|()| shim.run(stop).map_err(|e| e.to_string()));
    let down = shim.shutdown().map_err(|e| e.to_string());
    info!("ioreq server torn down");
    r.and(down)
}
