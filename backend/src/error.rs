//! The backend's error type: one variant per layer, each wrapping that layer's typed error
//! ([`TopologyError`], [`StateError`], [`UsageError`], ...), so callers match on what failed and
//! the `pcierc` command line prints one line (`pcierc: ` and the [`Display`](std::fmt::Display)
//! of the error, which names its cause).

use std::path::PathBuf;

use pcierc_protocol::Status;
use thiserror::Error;

use crate::cli::UsageError;
use crate::topology::{StateError, TopologyError};

/// Errors of the pcierc backend.
#[derive(Debug, Error)]
pub enum Error {
    /// The topology (embedded or `--device`) is invalid; the error names the offending item.
    #[error("invalid topology: {0}")]
    Topology(#[from] TopologyError),
    /// The topology file (`--topology FILE`) is invalid.
    #[error("invalid topology: {}: {source}", path.display())]
    TopologyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong in it.
        #[source]
        source: TopologyError,
    },
    /// A saved state blob could not be restored.
    #[error("invalid device state: {0}")]
    State(#[from] StateError),
    /// The command line (or the environment a service manager set) asks for something
    /// impossible.
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// Sockets passed by a service manager (`LISTEN_FDS`, `--control-fd`) cannot be used.
    #[error(transparent)]
    Activation(#[from] crate::cli::activation::ActivationError),
    /// The state file (`--state-file`) cannot be used.
    #[error(transparent)]
    StateFile(#[from] crate::service::state_file::StateFileError),
    /// The seccomp filter (`--seccomp`) could not be installed.
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    /// A socket file could not be created (`--socket-path`, `--control-socket`).
    #[error(transparent)]
    Socket(#[from] crate::service::access::SocketError),
    /// The protocol socket's listener could not be set up.
    #[error("listener: {0}")]
    Listener(#[source] vhost::vhost_user::Error),
    /// The event loop could not be created or failed.
    #[error("{context}: {source}")]
    EventLoop {
        /// What was being done.
        context: &'static str,
        /// The event manager's error.
        #[source]
        source: event_manager::Error,
    },
    /// A tool (`pcierc dump --connect`, `pcierc qtest`) could not connect to a running backend.
    #[error("connecting to {}: {source}", path.display())]
    Connect {
        /// The backend's socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: pcierc_protocol::Error,
    },
    /// A request a tool sent to a running backend failed.
    #[error("{context}: {source}")]
    Request {
        /// What was asked.
        context: String,
        /// Why it failed.
        #[source]
        source: pcierc_protocol::Error,
    },
    /// A configuration read of the power-on hierarchy (`pcierc dump`) failed.
    #[error("reading {devfn:#x}+{offset:#x}: {status}")]
    ConfigRead {
        /// Device and function on the root bus.
        devfn: u8,
        /// Register offset.
        offset: u16,
        /// The status the hierarchy answered.
        status: Status,
    },
    /// An I/O error at the edges (sockets, files).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias for the backend.
pub type Result<T, E = Error> = std::result::Result<T, E>;
