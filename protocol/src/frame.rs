//! Framing: header validation, encoding, a non-blocking frame assembler ([`FrameReader`], in
//! `reader.rs`, with how descriptors are matched to their message) and a bounded outgoing buffer
//! ([`FrameWriter`]), plus blocking-with-timeout send/receive built on them. `sys.rs` holds the
//! `recvmsg`/`sendmsg` calls, which allocate nothing.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserMsgValidator;
use vm_memory::ByteValued;

use crate::error::{Error, Result};
use crate::wire::{flags, MsgHeader, HEADER_SIZE, MAX_FDS, MAX_PAYLOAD_SIZE, PROTOCOL_VERSION};

mod reader;
pub(crate) mod sys;

pub use reader::{Fill, Frame, FrameReader};

/// Default limit of a [`FrameWriter`]'s queue: what may wait for a peer that is slow to read.
pub const DEFAULT_WRITE_LIMIT: usize = 1 << 20;

/// Which kind of message a stream is expected to carry.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// Requests: the REPLY bit must be clear and the status 0 (the backend's main socket, and the
    /// frontend's end of the backend channel).
    Request,
    /// Replies: the REPLY bit must be set (the frontend's main socket).
    Reply,
}

/// Check a received header: version, reserved bits, REPLY bit against `kind`, request status and
/// payload size. Every error is fatal for the connection.
pub fn validate_header(h: &MsgHeader, kind: MessageKind) -> Result<()> {
    if h.version() != PROTOCOL_VERSION {
        return Err(Error::BadVersion(h.version()));
    }
    if h.flags & flags::RESERVED != 0 {
        return Err(Error::ReservedFlags(h.flags & flags::RESERVED));
    }
    if h.payload_len() > MAX_PAYLOAD_SIZE {
        return Err(Error::PayloadTooBig(u64::from(h.size)));
    }
    match kind {
        MessageKind::Request if h.is_reply() => Err(Error::UnexpectedReplyFlag(h.request)),
        MessageKind::Request if h.status != 0 => Err(Error::StatusInRequest(h.status)),
        MessageKind::Reply if !h.is_reply() => Err(Error::MissingReplyFlag(h.request)),
        _ => Ok(()),
    }
}

/// A complete received message.
#[derive(Debug)]
pub struct Message {
    /// The validated header (`header.size == payload.len()`).
    pub header: MsgHeader,
    /// The payload, not yet validated.
    pub payload: Vec<u8>,
    /// File descriptors that came with the message; dropping the message closes them.
    pub fds: Vec<File>,
}

/// Encode `header` + `payload`; `header.size` is set from the payload length.
pub fn encode(mut header: MsgHeader, payload: &[u8]) -> Result<Vec<u8>> {
    if payload.len() > MAX_PAYLOAD_SIZE {
        return Err(Error::PayloadTooBig(payload.len() as u64));
    }
    header.size = payload.len() as u32;
    let mut out = Vec::with_capacity(HEADER_SIZE + payload.len());
    out.extend_from_slice(header.as_slice());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Copy a plain-data object out of `bytes`, which must be exactly its size (no alignment needed).
pub fn read_obj<T: ByteValued + Default>(bytes: &[u8]) -> Option<T> {
    let mut obj = T::default();
    if bytes.len() != std::mem::size_of::<T>() {
        return None;
    }
    obj.as_mut_slice().copy_from_slice(bytes);
    Some(obj)
}

/// Decode the fixed-size payload of `request`: exact size first, then `is_valid()`.
pub fn decode_payload<T: VhostUserMsgValidator + Default>(
    request: u32,
    payload: &[u8],
) -> Result<T> {
    let obj: T = read_obj(payload).ok_or(Error::PayloadSize {
        request,
        expected: std::mem::size_of::<T>(),
        got: payload.len(),
    })?;
    if !obj.is_valid() {
        return Err(Error::InvalidPayload(
            std::any::type_name::<T>()
                .rsplit("::")
                .next()
                .unwrap_or("payload"),
        ));
    }
    Ok(obj)
}

/// Wait until `fd` is ready for `events` (`libc::POLLIN`/`POLLOUT`) or `deadline` passes.
/// Returns false on timeout.
pub(crate) fn wait_fd(
    fd: RawFd,
    events: libc::c_short,
    deadline: Option<Instant>,
) -> io::Result<bool> {
    loop {
        let timeout_ms = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    0
                } else {
                    // Round up so we never spin on a sub-millisecond remainder.
                    left.as_millis().clamp(1, i32::MAX as u128) as i32
                }
            }
        };
        let mut pfd = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid pollfd for the duration of the call and we pass a count of 1.
        let r = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        match r {
            -1 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            0 if deadline.is_some_and(|d| Instant::now() >= d) => return Ok(false),
            0 => {}
            // Readiness, hang-up or error: let the following read/write report which.
            _ => return Ok(true),
        }
    }
}

fn deadline_after(timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|t| Instant::now().checked_add(t))
}

/// Bounded queue of outgoing bytes for a non-blocking socket (no fds).
///
/// A peer that stops reading makes [`FrameWriter::queue`] fail with [`Error::OutputOverflow`]
/// once more than `limit` bytes wait, which is fatal for that connection only. One message is
/// always accepted when nothing is queued, whatever its size.
#[derive(Debug)]
pub struct FrameWriter {
    buf: Vec<u8>,
    sent: usize,
    limit: usize,
}

impl Default for FrameWriter {
    fn default() -> Self {
        Self::new(DEFAULT_WRITE_LIMIT)
    }
}

impl FrameWriter {
    /// A writer that lets at most `limit` bytes wait.
    pub fn new(limit: usize) -> Self {
        FrameWriter {
            buf: Vec::new(),
            sent: 0,
            limit,
        }
    }

    /// Bytes waiting to be sent.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.sent
    }

    /// Append an encoded message.
    pub fn queue(&mut self, bytes: &[u8]) -> Result<()> {
        self.append(|out| out.extend_from_slice(bytes))
    }

    /// Append a message that `encode` writes at the end of the queue's buffer (no copy, and no
    /// allocation once the buffer has grown to its working size). What `encode` appended is
    /// taken back if it passes the limit.
    pub fn append<R>(&mut self, encode: impl FnOnce(&mut Vec<u8>) -> R) -> Result<R> {
        let pending = self.pending();
        if self.sent > 0 {
            self.buf.drain(..self.sent);
            self.sent = 0;
        }
        let r = encode(&mut self.buf);
        let total = self.buf.len();
        if pending > 0 && total > self.limit {
            self.buf.truncate(pending);
            return Err(Error::OutputOverflow(total));
        }
        Ok(r)
    }

    /// Write as much as the socket takes without blocking. `Ok(true)` when everything was sent;
    /// `Ok(false)`: wait for the socket to be writable and call again.
    pub fn flush(&mut self, stream: &UnixStream) -> Result<bool> {
        while self.pending() > 0 {
            match sys::send(
                stream.as_raw_fd(),
                &self.buf[self.sent..],
                &[],
                libc::MSG_DONTWAIT,
            ) {
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(e)),
            }
        }
        self.buf.clear();
        self.sent = 0;
        Ok(true)
    }
}

/// Send one message with `fds`, waiting up to `timeout` (`None`: forever) for the socket to take
/// it. Works on blocking and non-blocking sockets; a timeout in the middle of a message leaves the
/// stream out of sync ([`Error::Timeout`] is fatal).
pub fn send_message(
    stream: &UnixStream,
    header: MsgHeader,
    payload: &[u8],
    fds: &[RawFd],
    timeout: Option<Duration>,
) -> Result<()> {
    if fds.len() > MAX_FDS {
        return Err(Error::InvalidArgument("more than MAX_FDS file descriptors"));
    }
    let bytes = encode(header, payload)?;
    let deadline = deadline_after(timeout);
    let mut sent = 0;
    while sent < bytes.len() {
        // The fds go with the first byte; later pieces carry none.
        let with = if sent == 0 { fds } else { &[] };
        match sys::send(stream.as_raw_fd(), &bytes[sent..], with, 0) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !wait_fd(stream.as_raw_fd(), libc::POLLOUT, deadline).map_err(Error::Socket)? {
                    return Err(Error::Timeout);
                }
            }
            Err(e) => return Err(Error::io(e)),
        }
    }
    Ok(())
}

/// Receive one `kind` message, waiting up to `timeout`. Convenience for one-shot use: a partial
/// message is lost on timeout, so keep a [`FrameReader`] when the stream must survive timeouts.
pub fn recv_message(
    stream: &UnixStream,
    kind: MessageKind,
    timeout: Option<Duration>,
) -> Result<Message> {
    FrameReader::new(kind)
        .recv_timeout(stream, timeout)?
        .ok_or(Error::Timeout)
}

#[cfg(test)]
mod tests;
