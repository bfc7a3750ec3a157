//! [`FrameReader`]: messages parsed out of a reusable receive buffer, so that one `recvmsg`
//! brings a header and its payload (and any messages behind them) and the hot path allocates
//! nothing.
//!
//! File descriptors travel as SCM_RIGHTS with the first byte of the `sendmsg` that carried them.
//! On a unix stream socket the kernel never joins two sends into one chunk, and a `recvmsg` that
//! picks up a chunk with descriptors stops at the end of that chunk: the chunk with the
//! descriptors is the last one a read returns. Its first byte is therefore the start of the last
//! message that begins in the bytes read so far, or, when no message begins there, inside the
//! message in progress; the descriptors are filed under that message. A sender that sends each
//! message with its own `sendmsg` (as every sender in this crate does) gets its descriptors
//! delivered with exactly the message they were sent with. A sender that packs several messages
//! into one `sendmsg` with descriptors gets them attached to the last message of the pack that
//! begins within the read; either way they stay bounded ([`MAX_FDS`] per message) and are closed
//! with the message or the reader.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::{deadline_after, read_obj, sys, validate_header, wait_fd, Message, MessageKind};
use crate::error::{Error, Result};
use crate::wire::{MsgHeader, HEADER_SIZE, MAX_FDS, MAX_PAYLOAD_SIZE};

/// Space a read may fill when no larger message is in progress: room for many small messages.
const READ_SPACE: usize = 4 << 10;

/// Largest piece of a large payload made room for per read: a header announcing a large payload
/// does not make the reader allocate it before the bytes arrive.
pub(crate) const READ_CHUNK: usize = 64 << 10;

/// A buffer grown past this for a large message is given back once it has been consumed.
const SHRINK_ABOVE: usize = 2 * READ_CHUNK;

/// A complete message, its payload borrowed from the [`FrameReader`] that parsed it.
#[derive(Debug)]
pub struct Frame<'a> {
    /// The validated header (`header.size == payload.len()`).
    pub header: MsgHeader,
    /// The payload, not yet validated.
    pub payload: &'a [u8],
    /// File descriptors that came with the message; dropping them closes them.
    pub fds: Vec<File>,
}

impl Frame<'_> {
    /// An owned copy of the message (its payload copied out of the reader's buffer).
    pub fn to_message(self) -> Message {
        Message {
            header: self.header,
            payload: self.payload.to_vec(),
            fds: self.fds,
        }
    }
}

/// What one [`FrameReader::fill`] brought.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Fill {
    /// Bytes arrived. `more`: the socket may hold more right now (the read filled the space it
    /// was given, or stopped after a message with descriptors); false: the socket was empty when
    /// the read returned, so another read would most likely return `EAGAIN`.
    Data {
        /// Another read may return more bytes at once.
        more: bool,
    },
    /// Nothing to read now (`EAGAIN`; for a blocking read, the socket's receive timeout passed).
    Empty,
    /// A signal interrupted a blocking read.
    Interrupted,
}

/// Non-blocking assembler of messages from a stream socket.
///
/// Keeps partial headers, payloads and fds across calls, so a peer that sends half a message and
/// stops costs a few bytes of memory and never blocks the caller. Headers are validated as soon
/// as their 24 bytes are in. Two ways to use it:
/// - [`FrameReader::poll_message`] (and its waiting forms): an owned [`Message`], reading until
///   one is complete or the socket is empty;
/// - [`FrameReader::next_frame`] and [`FrameReader::fill`]: a borrowed [`Frame`] out of the
///   buffer, and one `recvmsg` at a time, so a caller that tracks readiness (an event loop, or a
///   blocking read of a reply) makes exactly the reads it needs and allocates nothing.
#[derive(Debug)]
pub struct FrameReader {
    kind: MessageKind,
    /// Largest payload accepted per request code (checked with the header).
    limit: fn(u32) -> usize,
    /// Received bytes are `buf[start..end]`; reads fill `buf[end..]`.
    buf: Vec<u8>,
    /// First byte not yet handed out: always the start of a message.
    start: usize,
    end: usize,
    /// Stream offset of `buf[0]`.
    base: u64,
    /// Descriptors received and not yet handed out, with the stream offset of their message.
    fds: Vec<(u64, File)>,
    /// The stream offset of a message that came with more than [`MAX_FDS`] descriptors, and
    /// how many: the stream is broken there, after the messages before it are handed out.
    fd_overflow: Option<(u64, usize)>,
}

impl FrameReader {
    /// A reader for a stream carrying `kind` messages.
    pub fn new(kind: MessageKind) -> Self {
        FrameReader {
            kind,
            limit: |_| MAX_PAYLOAD_SIZE,
            buf: Vec::new(),
            start: 0,
            end: 0,
            base: 0,
            fds: Vec::new(),
            fd_overflow: None,
        }
    }

    /// Refuse, as soon as its header is in, a message whose payload is larger than `limit`
    /// says for its code (e.g. [`crate::wire::max_request_payload`] on a backend's main
    /// socket), so a peer cannot make the reader buffer [`MAX_PAYLOAD_SIZE`] with any request.
    pub fn with_payload_limit(mut self, limit: fn(u32) -> usize) -> Self {
        self.limit = limit;
        self
    }

    /// Is part of a message (or more) buffered?
    pub fn has_partial(&self) -> bool {
        self.start < self.end
    }

    /// Would [`FrameReader::next_frame`] return a message (or a framing error) without reading?
    /// An event loop must come back for these: the socket's readiness no longer shows them.
    pub fn has_frame(&self) -> bool {
        if self.broken_here() {
            return true;
        }
        match self.header() {
            Ok(Some(h)) => self.end - self.start >= HEADER_SIZE + h.payload_len(),
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Bytes of the buffer (what this reader holds in memory besides descriptors).
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The header of the message at the front of the buffer, validated, once its 24 bytes are in.
    fn header(&self) -> Result<Option<MsgHeader>> {
        let Some(bytes) = self.buf.get(self.start..self.start + HEADER_SIZE) else {
            return Ok(None);
        };
        if self.end - self.start < HEADER_SIZE {
            return Ok(None);
        }
        let h: MsgHeader = read_obj(bytes).ok_or(Error::InvalidPayload("header"))?;
        validate_header(&h, self.kind)?;
        if h.payload_len() > (self.limit)(h.request) {
            return Err(Error::PayloadTooBig(u64::from(h.size)));
        }
        Ok(Some(h))
    }

    /// Has the stream reached a message that came with too many descriptors?
    fn broken_here(&self) -> bool {
        self.fd_overflow
            .is_some_and(|(at, _)| self.base + self.start as u64 >= at)
    }

    /// The next complete message in the buffer, without reading. Any `Err` leaves the stream out
    /// of sync: drop the connection.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        if let Some((_, count)) = self.fd_overflow.filter(|_| self.broken_here()) {
            return Err(Error::TooManyFds(count));
        }
        let Some(header) = self.header()? else {
            return Ok(None);
        };
        let total = HEADER_SIZE + header.payload_len();
        if self.end - self.start < total {
            return Ok(None);
        }
        let at = self.start;
        self.start += total;
        let fds = self.take_fds(self.base + at as u64);
        Ok(Some(Frame {
            header,
            payload: &self.buf[at + HEADER_SIZE..at + total],
            fds,
        }))
    }

    /// The descriptors filed under the message at stream offset `pos`.
    fn take_fds(&mut self, pos: u64) -> Vec<File> {
        if self.fds.is_empty() {
            return Vec::new();
        }
        let (mine, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.fds)
            .into_iter()
            .partition(|(owner, _)| *owner <= pos);
        self.fds = later;
        mine.into_iter().map(|(_, f)| f).collect()
    }

    /// One `recvmsg` (blocking if `block` and the socket is in blocking mode, else with
    /// `MSG_DONTWAIT`) into the free end of the buffer, made large enough for a useful read.
    /// Call it when [`FrameReader::next_frame`] returned `Ok(None)`. End of file is
    /// `Err(PeerClosed)`. More than [`MAX_FDS`] descriptors for one message make
    /// [`FrameReader::next_frame`] fail with `TooManyFds` once the messages before it are out.
    pub fn fill(&mut self, stream: &UnixStream, block: bool) -> Result<Fill> {
        if self.fd_overflow.is_some() {
            // Nothing after the broken message will be used.
            return Ok(Fill::Empty);
        }
        self.make_room();
        let space = self.buf.len() - self.end;
        let flags = if block { 0 } else { libc::MSG_DONTWAIT };
        let mut received: Vec<File> = Vec::new();
        loop {
            let r = sys::recv(stream.as_raw_fd(), &mut self.buf[self.end..], flags, |f| {
                received.push(f)
            });
            match r {
                Ok(r) if r.bytes == 0 => return Err(Error::PeerClosed),
                Ok(r) => {
                    self.end += r.bytes;
                    if r.too_many_fds {
                        self.broken_at(MAX_FDS + 1);
                        return Ok(Fill::Data { more: false });
                    }
                    if !received.is_empty() {
                        self.file_fds(received);
                        return Ok(Fill::Data { more: true });
                    }
                    return Ok(Fill::Data {
                        more: r.bytes == space,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Fill::Empty),
                Err(e) if e.kind() == io::ErrorKind::Interrupted && block => {
                    return Ok(Fill::Interrupted)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(e)),
            }
        }
    }

    /// File descriptors that just arrived under the last message starting in the buffer (see
    /// the module documentation), at most [`MAX_FDS`] per message.
    fn file_fds(&mut self, received: Vec<File>) {
        let owner = self.base + self.last_message_start() as u64;
        self.fds.extend(received.into_iter().map(|f| (owner, f)));
        let count = self.fds.iter().filter(|(o, _)| *o == owner).count();
        if count > MAX_FDS {
            self.broken_at(count);
        }
    }

    /// The last message starting in the buffer came with `count` descriptors, too many: close
    /// them all, and fail there.
    fn broken_at(&mut self, count: usize) {
        let owner = self.base + self.last_message_start() as u64;
        self.fds.retain(|(o, _)| *o < owner);
        self.fd_overflow = Some((owner, count));
    }

    /// Where the last message that starts in the buffered bytes starts (headers not validated:
    /// a bad one fails in `next_frame` before any of this matters).
    fn last_message_start(&self) -> usize {
        let mut s = self.start;
        loop {
            let Some(h) = self
                .buf
                .get(s..s + HEADER_SIZE)
                .filter(|_| s + HEADER_SIZE <= self.end)
                .and_then(read_obj::<MsgHeader>)
            else {
                return s;
            };
            let next = s.saturating_add(HEADER_SIZE + h.payload_len());
            if next >= self.end {
                return s;
            }
            s = next;
        }
    }

    /// Make the free end of the buffer big enough: for the rest of the message in progress (up
    /// to [`READ_CHUNK`] at a time) and at least [`READ_SPACE`].
    fn make_room(&mut self) {
        if self.start == self.end {
            self.base += self.start as u64;
            self.start = 0;
            self.end = 0;
            if self.buf.len() > SHRINK_ABOVE {
                self.buf = Vec::new();
            }
        }
        let have = self.end - self.start;
        let need = match self.buf.get(self.start..self.start + HEADER_SIZE) {
            Some(h) if have >= HEADER_SIZE => read_obj::<MsgHeader>(h)
                .map_or(1, |h| (HEADER_SIZE + h.payload_len()).saturating_sub(have)),
            _ => HEADER_SIZE - have,
        };
        let want = need.clamp(1, READ_CHUNK).max(READ_SPACE);
        if self.buf.len() - self.end >= want {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.base += self.start as u64;
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < want {
            self.buf.resize(self.end + want, 0);
        }
    }

    /// Read what is available and return the next complete message, `Ok(None)` if the socket has
    /// no more data for now. Call again until it returns `Ok(None)` (level-triggered polling).
    /// Any `Err` leaves the stream out of sync: drop the connection.
    pub fn poll_message(&mut self, stream: &UnixStream) -> Result<Option<Message>> {
        loop {
            if let Some(f) = self.next_frame()? {
                return Ok(Some(f.to_message()));
            }
            match self.fill(stream, false)? {
                Fill::Data { .. } | Fill::Interrupted => {}
                Fill::Empty => return Ok(None),
            }
        }
    }

    /// Wait up to `timeout` (`None`: forever) for the next complete message; `Ok(None)` on timeout
    /// with any partial message kept for the next call.
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
            if let Some(f) = self.next_frame()? {
                return Ok(Some(f.to_message()));
            }
            if !wait_fd(stream.as_raw_fd(), libc::POLLIN, deadline).map_err(Error::Socket)? {
                return Ok(None);
            }
            if let Some(m) = self.poll_message(stream)? {
                return Ok(Some(m));
            }
        }
    }
}
