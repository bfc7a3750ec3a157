//! The socket side: [`RootComplex`] answers protocol requests from the hierarchies of every segment ([`Segments`]) and fans
//! layout changes out to frontends, with the components it owns: [`ownership`] (frontends'
//! names, claimed functions), [`irqfd`] (interrupt eventfds), [`layout`] (the layout last sent,
//! for deltas), [`snapshot`] (shared
//! configuration snapshots), [`state_file`] (persistence), [`control`] (what QMP commands do)
//! and [`stats`] (counters). [`event_loop`] serves many frontends and the QMP control socket's
//! clients ([`control_socket`]) on one event-manager loop; [`access`] decides who may connect;
//! [`signals`] turns SIGTERM and SIGINT into events of that loop.

pub mod access;
pub mod control;
pub mod control_socket;
pub mod event_loop;
pub mod irqfd;
pub mod layout;
pub mod ownership;
pub mod root_complex;
pub mod signals;
pub mod snapshot;
pub mod state_file;
pub mod stats;
pub mod throttle;

use std::os::fd::RawFd;
use std::path::PathBuf;

use pcierc_protocol::{Features, ProtocolFeatures};

pub use access::{AccessConfig, AccessPolicy};
pub use root_complex::RootComplex;

use crate::topology::{Segments, TopologySpec};
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

/// Where the QMP control socket is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlListen {
    /// Create a unix socket at this path (`--control-socket`), as for [`Listen::Path`].
    Path(PathBuf),
    /// An inherited listening unix stream socket (`--control-fd`, socket activation), already
    /// checked to be one.
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
    pub control: Option<ControlListen>,
    /// Where the guest-visible state is persisted, if anywhere.
    pub state_file: Option<PathBuf>,
    /// Discard what the state file holds instead of loading it (`--state-reset`).
    pub state_reset: bool,
    /// Socket file mode, allowed peers, connection limit.
    pub access: AccessConfig,
    /// The system call filter installed once everything is set up (`--seccomp`).
    pub seccomp: crate::sandbox::SeccompMode,
}

/// Build the hierarchy, print it, and serve frontends until `quit` on the control socket,
/// SIGTERM or SIGINT (or, on an inherited connected socket, until its frontend leaves).
/// `on_ready` runs once every socket listens, the state is restored and the seccomp filter is
/// installed, before the first peer is served (readiness notification, pid file); an error
/// from it stops the service.
///
/// SIGTERM and SIGINT are blocked from the start (in this thread, inherited by any started
/// later), so one that arrives while starting up is handled once the loop runs.
pub fn serve(cfg: ServiceConfig, on_ready: impl FnOnce() -> Result<()>) -> Result<()> {
    let signals = signals::ShutdownSignals::block().map_err(|source| crate::Error::Io {
        context: "blocking SIGTERM and SIGINT for the event loop".into(),
        source,
    })?;
    // The sockets first: a pcierc started on another one's live socket stops here, before it
    // reads or writes the state file. Peers wait in the listen backlog until the loop runs.
    let sockets =
        event_loop::Sockets::open(&cfg.listen, cfg.control.as_ref(), cfg.access.socket_mode)?;
    let mut hierarchy = Segments::new(cfg.spec)?;
    let state_file = match &cfg.state_file {
        Some(p) => Some(state_file::StateFile::open(
            p,
            &mut hierarchy,
            cfg.state_reset,
        )?),
        None => None,
    };
    let tree: String = hierarchy.iter().map(|h| h.tree()).collect();
    let mut rc = RootComplex::new(hierarchy);
    if let Some(f) = state_file {
        rc = rc.with_state_file(f);
    }
    let server = event_loop::Server::new(sockets, rc, cfg.access).with_signals(signals);
    match &cfg.control {
        Some(ControlListen::Path(p)) => println!("control socket (QMP) on {}", p.display()),
        Some(ControlListen::Fd(fd)) => println!("control socket (QMP) on inherited fd {fd}"),
        None => {}
    }
    println!("pcierc {} serving:\n{tree}", env!("CARGO_PKG_VERSION"));
    match &cfg.listen {
        Listen::Path(p) => println!("listening on {}", p.display()),
        Listen::Fd(fd) => println!("serving on inherited fd {fd}"),
    }
    // Set up: from here on only the system calls serving and exiting need.
    crate::sandbox::apply_threaded(cfg.seccomp, &crate::sandbox::syscalls::pcierc(), "pcierc")?;
    on_ready()?;
    server.run()
}
