//! The `pcierc-xen-shim` command line: clap [`Args`] -> validated [`Config`] -> [`run`].

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use clap::Parser;
use log::info;
use pcierc_protocol::{Frontend, FrontendOptions};

use crate::abi::dm_op::ioservid_t;
use crate::hypervisor::linux::LinuxXen;
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
        Ok(Config {
            domid: a.domid,
            backend_socket: a.backend_socket,
            shim: ShimConfig {
                peers,
                mmcfg_extension: a.mmcfg_extension,
                config_ports: a.claim_config_ports,
            },
        })
    }
}

/// Open the Xen devices (first: without them nothing else matters), connect to pcierc, set up
/// the server and serve until SIGINT or SIGTERM; then tear down.
pub fn run(cfg: Config) -> Result<(), String> {
    let xen = LinuxXen::open(cfg.domid).map_err(|e| e.to_string())?;
    xen.restrict().map_err(|e| e.to_string())?;
    let pcierc = Frontend::connect(&cfg.backend_socket, FrontendOptions::vmm("xen-shim"))
        .map_err(|e| format!("{}: {e}", cfg.backend_socket.display()))?;
    let stop = stop_on_signals().map_err(|e| format!("signal handling: {e}"))?;
    let mut shim = Shim::start(xen, pcierc, cfg.shim).map_err(|e| e.to_string())?;
    info!(
        "serving domain {} as ioreq server {}",
        cfg.domid,
        shim.server_id()
    );
    let r = shim.run(stop.as_raw_fd()).map_err(|e| e.to_string());
    shim.shutdown().map_err(|e| e.to_string())?;
    r
}

/// A descriptor that becomes readable on SIGINT or SIGTERM (a signalfd; the signals are
/// blocked so they do not kill the process first).
fn stop_on_signals() -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain libc calls on a local sigset; the signalfd is new and owned here.
    unsafe {
        let mut set: libc::sigset_t = core::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, core::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(std::os::fd::OwnedFd::from_raw_fd(fd))
    }
}
