//! One QMP client on the control socket: a non-blocking stream, its [`QmpSession`], and the
//! bytes waiting to be written. The event loop calls [`ControlConn::readable`] and
//! [`ControlConn::flush`]; a client that stops reading while output piles up past
//! [`MAX_PENDING_OUTPUT`] is disconnected rather than allowed to grow the process.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use crate::control::{ControlOps, QmpSession};

/// Most reply and event bytes held for a client that does not read.
pub const MAX_PENDING_OUTPUT: usize = 4 << 20;

/// Why a control connection ends.
#[derive(Debug, thiserror::Error)]
pub enum ControlConnError {
    /// The client closed its end.
    #[error("client closed the connection")]
    Closed,
    /// The socket failed.
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    /// The client does not read its replies.
    #[error("client does not read: more than {MAX_PENDING_OUTPUT} bytes pending")]
    Stalled,
}

/// A control-socket client.
pub struct ControlConn {
    stream: UnixStream,
    session: QmpSession,
    out: Vec<u8>,
}

impl ControlConn {
    /// Adopt an accepted client and queue the greeting.
    pub fn new(stream: UnixStream) -> std::io::Result<Self> {
        stream.set_nonblocking(true)?;
        let (session, greeting) = QmpSession::new();
        let mut c = ControlConn {
            stream,
            session,
            out: Vec::new(),
        };
        c.queue(&greeting);
        Ok(c)
    }

    fn queue(&mut self, line: &str) {
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// Queue an event line if the client has negotiated (QMP sends events in command mode only).
    pub fn event(&mut self, line: &str) -> Result<(), ControlConnError> {
        if self.session.wants_events() {
            self.queue(line);
        }
        self.check_backlog()
    }

    fn check_backlog(&self) -> Result<(), ControlConnError> {
        if self.out.len() > MAX_PENDING_OUTPUT {
            return Err(ControlConnError::Stalled);
        }
        Ok(())
    }

    /// Read what the client sent and run its commands. Returns after the socket would block.
    pub fn readable(&mut self, ops: &mut dyn ControlOps) -> Result<(), ControlConnError> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(ControlConnError::Closed),
                Ok(n) => {
                    for line in self.session.input(ops, &buf[..n]) {
                        self.queue(&line);
                    }
                    self.check_backlog()?;
                    if self.session.quit_requested() {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Write as much pending output as the socket takes.
    pub fn flush(&mut self) -> Result<(), ControlConnError> {
        while !self.out.is_empty() {
            match self.stream.write(&self.out) {
                Ok(0) => return Err(ControlConnError::Closed),
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Is output waiting for the socket to become writable?
    pub fn wants_write(&self) -> bool {
        !self.out.is_empty()
    }

    /// Did the client run `quit`?
    pub fn quit_requested(&self) -> bool {
        self.session.quit_requested()
    }

    /// Write what is pending, waiting for the socket if needed, before the process exits.
    pub fn finish(&mut self) {
        if self.stream.set_nonblocking(false).is_ok() {
            let _ = self
                .stream
                .set_write_timeout(Some(std::time::Duration::from_secs(1)));
            let _ = self.stream.write_all(&self.out);
            self.out.clear();
        }
    }
}

impl AsRawFd for ControlConn {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}
