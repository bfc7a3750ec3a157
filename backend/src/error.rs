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
