//! The socket side: [`RootComplex`] answers protocol requests from the [`Hierarchy`] and fans
//! layout changes out to frontends; [`event_loop`] serves many frontends and the QMP control
//! socket's clients ([`control_socket`]) on one event-manager loop; [`access`] decides who may
//! connect.

pub mod access;
pub mod control_socket;
pub mod event_loop;
pub mod root_complex;
pub mod state_file;

use std::os::fd::RawFd;
use std::path::PathBuf;

use pcierc_protocol::{Features, ProtocolFeatures};

pub use access::{AccessConfig, AccessPolicy};
pub use root_complex::RootComplex;

use crate::topology::{Hierarchy, TopologySpec};
use crate::Result;

/// Emulation features this backend offers.
pub const BACKEND_FEATURES: Features = Features::all();

/// Protocol features this backend offers.
pub const BACKEND_PROTOCOL_FEATURES: ProtocolFeatures = ProtocolFeatures::all();

/// Where to listen.
#[derive(Debug, Clone)]
pub enum Listen {
    /// Create a unix socket at this path (a dead socket file there is replaced; anything else
    /// there is an error).
    Path(PathBuf),
    /// An inherited socket: listening (accept frontends) or connected (serve one frontend).
    Fd(RawFd),
}

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The validated topology.
    pub spec: TopologySpec,
    /// Where frontends connect.
    pub listen: Listen,
    /// The QMP-compatible control socket, if any.
    pub control_socket: Option<PathBuf>,
    /// Where the guest-visible state is persisted, if anywhere.
    pub state_file: Option<PathBuf>,
    /// Socket file mode, allowed peers, connection limit.
    pub access: AccessConfig,
}

/// Build the hierarchy, print it, and serve frontends until the process is stopped.
pub fn serve(cfg: ServiceConfig) -> Result<()> {
    // The sockets first: a pcierc started on another one's live socket stops here, before it
    // reads or writes the state file. Peers wait in the listen backlog until the loop runs.
    let sockets = event_loop::Sockets::open(
        &cfg.listen,
        cfg.control_socket.as_deref(),
        cfg.access.socket_mode,
    )?;
    let mut hierarchy = Hierarchy::new(cfg.spec)?;
    let state_file = match &cfg.state_file {
        Some(p) => Some(state_file::StateFile::open(p, &mut hierarchy)?),
        None => None,
    };
    let tree = hierarchy.tree();
    let mut rc = RootComplex::new(hierarchy);
    if let Some(f) = state_file {
        rc = rc.with_state_file(f);
    }
    let server = event_loop::Server::new(sockets, rc, cfg.access);
    if let Some(p) = &cfg.control_socket {
        println!("control socket (QMP) on {}", p.display());
    }
    println!("pcierc {} serving:\n{tree}", env!("CARGO_PKG_VERSION"));
    match &cfg.listen {
        Listen::Path(p) => println!("listening on {}", p.display()),
        Listen::Fd(fd) => println!("serving on inherited fd {fd}"),
    }
    server.run()
}
