//! Errors of both ends, classified like vhost's: [`Error::should_disconnect`] tells a serving loop
//! whether only the current request failed or the connection must be dropped.

use std::io;

use crate::wire::Status;

/// Result type of this crate (the error type defaults to [`Error`], so a glob import of the crate
/// does not break `Result<T, E>` elsewhere).
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while talking the protocol.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A socket operation failed.
    #[error("socket error: {0}")]
    Socket(#[source] io::Error),
    /// The peer closed the connection (possibly in the middle of a message).
    #[error("peer closed the connection")]
    PeerClosed,
    /// The peer did not answer or send in time.
    #[error("timed out waiting for the peer")]
    Timeout,
    /// Header version field is not [`crate::PROTOCOL_VERSION`].
    #[error("unsupported protocol version {0}")]
    BadVersion(u32),
    /// Reserved header flag bits are set.
    #[error("reserved header flag bits set ({0:#x})")]
    ReservedFlags(u32),
    /// A request (or backend-channel notification) arrived with the REPLY bit set.
    #[error("REPLY flag set on a request (code {0})")]
    UnexpectedReplyFlag(u32),
    /// A reply arrived without the REPLY bit.
    #[error("REPLY flag missing on a reply (code {0})")]
    MissingReplyFlag(u32),
    /// A request header carried a non-zero status.
    #[error("non-zero status {0} in a request header")]
    StatusInRequest(i32),
    /// The header announced a payload larger than [`crate::MAX_PAYLOAD_SIZE`].
    #[error("payload of {0} bytes exceeds the maximum")]
    PayloadTooBig(u64),
    /// More than [`crate::MAX_FDS`] file descriptors came with one message (they were closed).
    #[error("too many file descriptors with one message ({0})")]
    TooManyFds(usize),
    /// A reply carried an id no request is waiting for.
    #[error("reply with unexpected id {id} (code {request})")]
    UnexpectedReply {
        /// Request code of the stray reply.
        request: u32,
        /// Its id.
        id: u64,
    },
    /// A reply's code differs from the code of the request with the same id.
    #[error("reply {id} has code {got}, request had code {expected}")]
    ReplyMismatch {
        /// Id of the request.
        id: u64,
        /// Code of the request.
        expected: u32,
        /// Code of the reply.
        got: u32,
    },
    /// The peer answered with a non-zero status.
    #[error("request {request} failed: {status}")]
    Status {
        /// Request code.
        request: u32,
        /// The status the peer returned.
        status: Status,
    },
    /// The peer answered with a status value this crate does not know.
    #[error("request {request} failed with unknown status {raw}")]
    UnknownStatus {
        /// Request code.
        request: u32,
        /// The raw status.
        raw: i32,
    },
    /// A payload has the wrong size for its request code.
    #[error("payload of code {request} is {got} bytes, expected {expected}")]
    PayloadSize {
        /// Request code.
        request: u32,
        /// Size this code requires.
        expected: usize,
        /// Size received.
        got: usize,
    },
    /// A payload field failed validation.
    #[error("invalid payload: {0}")]
    InvalidPayload(&'static str),
    /// An encoded topology failed validation.
    #[error("invalid topology: {0}")]
    InvalidTopology(&'static str),
    /// A request code this end does not know (backend channel).
    #[error("unknown request code {0}")]
    UnknownRequest(u32),
    /// The peer stopped reading and the outgoing buffer passed its limit.
    #[error("peer is not reading: {0} bytes queued")]
    OutputOverflow(usize),
    /// The backend channel was closed or disabled after an earlier failure.
    #[error("backend channel closed")]
    ChannelClosed,
    /// A local argument cannot be encoded (e.g. a name that is too long or not printable ASCII).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
}

impl Error {
    /// Must the connection be dropped? True when the byte stream can no longer be trusted to be
    /// in sync (framing errors, I/O errors, closed peer, stray replies, overflow); false when only
    /// the request at hand failed (a status from the peer, a bad payload in a well-framed message,
    /// a local argument error).
    pub fn should_disconnect(&self) -> bool {
        !matches!(
            self,
            Error::Status { .. }
                | Error::UnknownStatus { .. }
                | Error::PayloadSize { .. }
                | Error::InvalidPayload(_)
                | Error::InvalidTopology(_)
                | Error::UnknownRequest(_)
                | Error::InvalidArgument(_)
        )
    }

    /// Same as [`Error::should_disconnect`] (vhost's naming).
    pub fn is_fatal(&self) -> bool {
        self.should_disconnect()
    }

    /// The status the peer returned, if this is a [`Error::Status`].
    pub fn status(&self) -> Option<Status> {
        match self {
            Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Map an I/O error, turning timeouts into [`Error::Timeout`].
    pub(crate) fn io(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout,
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted => Error::PeerClosed,
            _ => Error::Socket(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert!(Error::PeerClosed.should_disconnect());
        assert!(Error::BadVersion(2).should_disconnect());
        assert!(Error::OutputOverflow(1).is_fatal());
        let failed = Error::Status {
            request: 8,
            status: Status::Invalid,
        };
        assert!(!failed.should_disconnect());
        assert_eq!(failed.status(), Some(Status::Invalid));
        assert!(!Error::InvalidPayload("x").should_disconnect());
        assert!(matches!(
            Error::io(io::ErrorKind::WouldBlock.into()),
            Error::Timeout
        ));
        assert!(matches!(
            Error::io(io::ErrorKind::BrokenPipe.into()),
            Error::PeerClosed
        ));
    }
}
