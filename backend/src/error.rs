//! Backend error types.

use thiserror::Error;

/// Errors of the pcierc backend.
#[derive(Debug, Error)]
pub enum Error {
    /// The topology (embedded, TOML or `--device`) is invalid; the message names the offending item.
    #[error("invalid topology: {0}")]
    Topology(String),
    /// A saved state blob could not be restored.
    #[error("invalid device state: {0}")]
    State(String),
    /// The command line (or the environment a service manager set) asks for something
    /// impossible; the message says what.
    #[error("{0}")]
    Usage(String),
    /// Sockets passed by a service manager (`LISTEN_FDS`, `--control-fd`) cannot be used.
    #[error(transparent)]
    Activation(#[from] crate::cli::activation::ActivationError),
    /// The state file (`--state-file`) cannot be used.
    #[error(transparent)]
    StateFile(#[from] crate::service::state_file::StateFileError),
    /// The seccomp filter (`--seccomp`) could not be installed.
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
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
