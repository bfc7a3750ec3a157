//! Why a benchmark could not run. Every variant says what was being done.

use pcierc_examples::firmware::BusError;

/// A benchmark that could not run (never a figure that is out of its target).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call or file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A request to pcierc failed.
    #[error("{context}: {source}")]
    Protocol {
        /// What was being done.
        context: String,
        /// The protocol error.
        #[source]
        source: pcierc_protocol::Error,
    },
    /// The firmware-style enumerator of `examples/` failed.
    #[error("{context}: {source}")]
    Firmware {
        /// What was being done.
        context: String,
        /// The enumerator's error.
        #[source]
        source: BusError,
    },
    /// Anything else, described.
    #[error("{0}")]
    Other(String),
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attach what was being done to a failure.
pub trait Context<T> {
    /// Wrap the error with `context`.
    fn context(self, context: impl Into<String>) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, std::io::Error> {
    fn context(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: context.into(),
            source,
        })
    }
}

impl<T> Context<T> for std::result::Result<T, pcierc_protocol::Error> {
    fn context(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|source| Error::Protocol {
            context: context.into(),
            source,
        })
    }
}

impl<T> Context<T> for std::result::Result<T, BusError> {
    fn context(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|source| Error::Firmware {
            context: context.into(),
            source,
        })
    }
}
