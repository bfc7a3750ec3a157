//! Framing: header validation, encoding, a non-blocking frame assembler ([`FrameReader`]) and a
//! bounded outgoing buffer ([`FrameWriter`]), plus blocking-with-timeout send/receive built on them.
//!
//! File descriptors travel as SCM_RIGHTS. On a stream socket the kernel hands them over with the
//! first byte of the `sendmsg` that carried them, and a `recvmsg` never returns the fds of two
//! sends. [`FrameReader`] never reads past the end of the message it is assembling (it asks for the
//! rest of the header, then the rest of the payload), so every fd it receives belongs to that
//! message.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserMsgValidator;
use vm_memory::ByteValued;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::error::{Error, Result};
use crate::wire::{flags, MsgHeader, HEADER_SIZE, MAX_FDS, MAX_PAYLOAD_SIZE, PROTOCOL_VERSION};

/// Default limit of a [`FrameWriter`]'s queue: what may wait for a peer that is slow to read.
pub const DEFAULT_WRITE_LIMIT: usize = 1 << 20;

/// Largest piece of payload read with one `recvmsg`: a header announcing a large payload does not
/// make the reader allocate it before the bytes arrive.
const READ_CHUNK: usize = 64 << 10;

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

/// One `recvmsg` into `buf`, appending received fds (marked close-on-exec) to `fds`.
fn recv_some(stream: &UnixStream, buf: &mut [u8], fds: &mut Vec<File>) -> io::Result<usize> {
    let mut raw = [-1 as RawFd; MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    // SAFETY: the iovec points into `buf`, which we borrow mutably for the call, and any bytes may
    // be written there. vmm-sys-util closes the fds itself when the control data was truncated.
    let (n, nfds) = unsafe { stream.recv_with_fds(&mut iov, &mut raw) }.map_err(io::Error::from)?;
    for &fd in &raw[..nfds] {
        // SAFETY: recvmsg just gave us these descriptors; nothing else owns them.
        let file = unsafe { File::from_raw_fd(fd) };
        // SAFETY: fcntl on a descriptor we own; failure only leaves it inheritable.
        unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        fds.push(file);
    }
    Ok(n)
}

/// Non-blocking assembler of messages from a stream socket.
///
/// Keeps partial headers, payloads and fds across calls, so a peer that sends half a message and
/// stops costs a few bytes of memory and never blocks the caller (the socket must be
/// non-blocking, or [`FrameReader::recv_timeout`] used). Headers are validated as soon as their
/// 24 bytes are in.
#[derive(Debug)]
pub struct FrameReader {
    kind: MessageKind,
    /// Largest payload accepted per request code (checked with the header).
    limit: fn(u32) -> usize,
    header: [u8; HEADER_SIZE],
    header_len: usize,
    current: Option<MsgHeader>,
    payload: Vec<u8>,
    fds: Vec<File>,
}

impl FrameReader {
    /// A reader for a stream carrying `kind` messages.
    pub fn new(kind: MessageKind) -> Self {
        FrameReader {
            kind,
            limit: |_| MAX_PAYLOAD_SIZE,
            header: [0; HEADER_SIZE],
            header_len: 0,
            current: None,
            payload: Vec::new(),
            fds: Vec::new(),
        }
    }

    /// Refuse, as soon as its header is in, a message whose payload is larger than `limit`
    /// says for its code (e.g. [`crate::wire::max_request_payload`] on a backend's main
    /// socket), so a peer cannot make the reader buffer [`MAX_PAYLOAD_SIZE`] with any request.
    pub fn with_payload_limit(mut self, limit: fn(u32) -> usize) -> Self {
        self.limit = limit;
        self
    }

    /// Is part of a message buffered?
    pub fn has_partial(&self) -> bool {
        self.header_len > 0
    }

    /// Read what is available and return the next complete message, `Ok(None)` if the socket has
    /// no more data for now. Call again until it returns `Ok(None)` (level-triggered polling).
    /// Any `Err` leaves the stream out of sync: drop the connection.
    pub fn poll_message(&mut self, stream: &UnixStream) -> Result<Option<Message>> {
        loop {
            if let Some(h) = self.current {
                if self.payload.len() == h.payload_len() {
                    return Ok(Some(self.take()));
                }
            }
            if !self.read_once(stream)? {
                return Ok(None);
            }
            if self.fds.len() > MAX_FDS {
                return Err(Error::TooManyFds(self.fds.len()));
            }
        }
    }

    /// Wait up to `timeout` (`None`: forever) for the next complete message; `Ok(None)` on timeout
    /// with any partial message kept for the next call. Works on blocking and non-blocking sockets
    /// alike, but only a non-blocking one honours the timeout once a message has started.
    pub fn recv_timeout(
        &mut self,
        stream: &UnixStream,
        timeout: Option<Duration>,
    ) -> Result<Option<Message>> {
        let deadline = deadline_after(timeout);
        loop {
            if let Some(m) = self.poll_message(stream)? {
                return Ok(Some(m));
            }
            if !wait_fd(stream.as_raw_fd(), libc::POLLIN, deadline).map_err(Error::Socket)? {
                return Ok(None);
            }
        }
    }

    /// As [`FrameReader::recv_timeout`], but for a message that is probably not there yet (the
    /// reply to a request just sent): wait for the socket first, so the common case costs no
    /// `recvmsg` that returns `EAGAIN`.
    pub fn recv_after_wait(
        &mut self,
        stream: &UnixStream,
        timeout: Option<Duration>,
    ) -> Result<Option<Message>> {
        let deadline = deadline_after(timeout);
        loop {
            if !wait_fd(stream.as_raw_fd(), libc::POLLIN, deadline).map_err(Error::Socket)? {
                return Ok(None);
            }
            if let Some(m) = self.poll_message(stream)? {
                return Ok(Some(m));
            }
        }
    }

    /// One recvmsg for the rest of the header or a chunk of the rest of the payload. Returns
    /// false when the socket has nothing more for now.
    fn read_once(&mut self, stream: &UnixStream) -> Result<bool> {
        let r = match self.current {
            None => recv_some(stream, &mut self.header[self.header_len..], &mut self.fds),
            Some(h) => {
                let have = self.payload.len();
                let want = (h.payload_len() - have).min(READ_CHUNK);
                self.payload.resize(have + want, 0);
                let r = recv_some(stream, &mut self.payload[have..], &mut self.fds);
                self.payload.truncate(have + r.as_ref().map_or(0, |n| *n));
                r
            }
        };
        match r {
            Ok(0) => Err(Error::PeerClosed),
            Ok(n) => {
                if self.current.is_none() {
                    self.header_len += n;
                    if self.header_len == HEADER_SIZE {
                        self.start_payload()?;
                    }
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                Err(Error::TooManyFds(MAX_FDS + 1))
            }
            Err(e) => Err(Error::io(e)),
        }
    }

    fn start_payload(&mut self) -> Result<()> {
        let h: MsgHeader = read_obj(&self.header).ok_or(Error::InvalidPayload("header"))?;
        validate_header(&h, self.kind)?;
        if h.payload_len() > (self.limit)(h.request) {
            return Err(Error::PayloadTooBig(u64::from(h.size)));
        }
        self.current = Some(h);
        self.payload = Vec::new();
        Ok(())
    }

    fn take(&mut self) -> Message {
        let header = self.current.take().unwrap_or_default();
        self.header_len = 0;
        Message {
            header,
            payload: std::mem::take(&mut self.payload),
            fds: std::mem::take(&mut self.fds),
        }
    }
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
        let pending = self.pending();
        if pending > 0 && pending + bytes.len() > self.limit {
            return Err(Error::OutputOverflow(pending + bytes.len()));
        }
        if self.sent > 0 {
            self.buf.drain(..self.sent);
            self.sent = 0;
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// Write as much as the socket takes without blocking. `Ok(true)` when everything was sent;
    /// `Ok(false)`: wait for the socket to be writable and call again.
    pub fn flush(&mut self, stream: &UnixStream) -> Result<bool> {
        while self.pending() > 0 {
            match stream
                .send_with_fds(&[&self.buf[self.sent..]], &[])
                .map_err(io::Error::from)
            {
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
        match stream
            .send_with_fds(&[&bytes[sent..]], with)
            .map_err(io::Error::from)
        {
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
