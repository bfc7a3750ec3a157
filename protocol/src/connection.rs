//! [`Connection`]: a [`Session`] over a non-blocking unix stream socket, with its
//! [`FrameReader`] and bounded [`FrameWriter`], for a backend's event loop (or a thread per
//! connection with [`Connection::serve`], or one sharing the handler with others through a lock
//! with [`Connection::serve_shared`]).

mod shared;

use std::ops::DerefMut;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use log::{debug, warn};

use crate::backend::Session;
use crate::error::{Error, Result};
use crate::frame::{wait_fd, Fill, FrameReader, FrameWriter, MessageKind, DEFAULT_WRITE_LIMIT};
use crate::handler::{BackendHandler, ConnectionId};

/// Requests handled per [`Connection::process`] call, so one busy frontend cannot starve others.
pub const MAX_REQUESTS_PER_CALL: usize = 64;

/// Unsent reply bytes above which a connection stops reading requests until the frontend reads.
pub const BACKPRESSURE_BYTES: usize = 256 << 10;

/// One frontend connection on the backend side.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    reader: FrameReader,
    writer: FrameWriter,
    session: Session,
    /// The frontend shut its sending side: no more requests, the queued replies still go out.
    read_closed: bool,
}

impl Connection {
    /// Take an accepted stream (made non-blocking).
    pub fn new(stream: UnixStream, id: ConnectionId) -> Result<Self> {
        stream.set_nonblocking(true).map_err(Error::Socket)?;
        Ok(Connection {
            stream,
            reader: FrameReader::new(MessageKind::Request)
                .with_payload_limit(crate::wire::max_request_payload),
            writer: FrameWriter::new(DEFAULT_WRITE_LIMIT),
            session: Session::new(id),
            read_closed: false,
        })
    }

    /// The connection's id.
    pub fn id(&self) -> ConnectionId {
        self.session.id()
    }

    /// Its protocol state.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Should the event loop wait for the socket to be readable? False while replies pile up
    /// unread (back-pressure: the frontend must read before it may send more).
    pub fn wants_read(&self) -> bool {
        !self.read_closed && self.writer.pending() < BACKPRESSURE_BYTES
    }

    /// Has the frontend stopped sending and received every reply? Then close the connection.
    pub fn finished(&self) -> bool {
        self.read_closed && self.writer.pending() == 0
    }

    /// Should the event loop wait for the socket to be writable (replies are queued)?
    pub fn wants_write(&self) -> bool {
        self.writer.pending() > 0
    }

    /// Are whole requests waiting in the connection's buffer (read with earlier requests, left
    /// for the next call by [`MAX_REQUESTS_PER_CALL`] or back-pressure)? The socket's readiness
    /// does not show them: an event loop must call [`Connection::process_ready`] again, e.g. by
    /// waiting for writability too (the socket is writable unless replies pile up, and then
    /// those requests must wait anyway).
    pub fn has_buffered_requests(&self) -> bool {
        !self.read_closed && self.reader.has_frame()
    }

    /// [`Connection::process_ready`] for a socket that may be readable.
    pub fn process<H: BackendHandler + ?Sized>(&mut self, handler: &mut H) -> Result<()> {
        self.process_ready(handler, true)
    }

    /// Handle the complete requests available now (at most [`MAX_REQUESTS_PER_CALL`]) and send
    /// their replies as far as the socket takes them. `readable`: the socket was reported
    /// readable (otherwise only requests already buffered are handled). Each `recvmsg` takes
    /// whatever the socket holds, several requests at a time; the socket is read again only
    /// while the last read may have left bytes behind (it filled its space or stopped at
    /// descriptors), so a request that was read whole costs no read that returns `EAGAIN`
    /// (the event loop is level-triggered: bytes that arrive later wake it again). Replies are
    /// sent once per batch read.
    ///
    /// Any `Err` means: close this connection with [`Connection::close`]. When the frontend
    /// shuts its sending side down (end of file), every request that arrived whole is still
    /// answered (§4): the connection stops reading and [`Connection::finished`] says when the
    /// last reply is out; `Err(PeerClosed)` comes at once only when nothing is left to send.
    pub fn process_ready<H: BackendHandler + ?Sized>(
        &mut self,
        handler: &mut H,
        readable: bool,
    ) -> Result<()> {
        self.process_access(&mut Direct(handler), readable)
    }

    /// [`Connection::process_ready`] for a handler shared behind a lock: `lock` is called at
    /// most once, and only when a whole request is there to handle, so bytes that do not make
    /// a request (a partial frame, garbage that breaks the stream) never take the lock. The
    /// guard is dropped before this returns.
    pub fn process_ready_with<H, G>(
        &mut self,
        lock: impl FnMut() -> G,
        readable: bool,
    ) -> Result<()>
    where
        H: BackendHandler + ?Sized,
        G: DerefMut<Target = H>,
    {
        self.process_access(&mut Lazy { lock, held: None }, readable)
    }

    fn process_access<H: BackendHandler + ?Sized>(
        &mut self,
        access: &mut impl Access<H>,
        readable: bool,
    ) -> Result<()> {
        if let Err(e) = self.handle_available(access, readable) {
            // The replies to the requests before the one that broke the stream still go out.
            let _ = self.writer.flush(&self.stream);
            return Err(e);
        }
        self.writer.flush(&self.stream).map(drop)
    }

    /// The loop of [`Connection::process_ready`], leaving the last replies queued.
    fn handle_available<H: BackendHandler + ?Sized>(
        &mut self,
        access: &mut impl Access<H>,
        readable: bool,
    ) -> Result<()> {
        let mut may_read = readable && !self.read_closed;
        let mut handled = 0;
        while handled < MAX_REQUESTS_PER_CALL && self.wants_read() {
            let Some(frame) = self.reader.next_frame()? else {
                if !may_read {
                    break;
                }
                // Send what this batch produced before waiting on the peer's next bytes.
                self.writer.flush(&self.stream)?;
                match self.reader.fill(&self.stream, false) {
                    Ok(Fill::Data { more }) => may_read = more,
                    Ok(Fill::Empty) => break,
                    Ok(Fill::Interrupted) => {}
                    Err(Error::PeerClosed) if self.writer.pending() > 0 => {
                        self.read_closed = true;
                        break;
                    }
                    Err(e) => return Err(e),
                }
                continue;
            };
            let session = &mut self.session;
            self.writer
                .append(|out| session.handle_into(access.get(), frame, out))??;
            handled += 1;
        }
        Ok(())
    }

    /// Send queued replies without blocking; `Ok(true)` when none are left.
    pub fn flush(&mut self) -> Result<bool> {
        self.writer.flush(&self.stream)
    }

    /// Tell the handler the connection is gone and shut the socket down.
    pub fn close<H: BackendHandler + ?Sized>(&mut self, handler: &mut H) {
        self.session.disconnect(handler);
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// [`Connection::close`] for a handler behind a lock: `lock` is called only when the handler
    /// has to hear of it ([`crate::Session::reached_handler`]).
    pub fn close_with<H, G>(&mut self, lock: impl FnOnce() -> G)
    where
        H: BackendHandler + ?Sized,
        G: DerefMut<Target = H>,
    {
        if self.session.reached_handler() {
            self.session.disconnect(&mut *lock());
        }
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// Serve this connection until the frontend leaves or breaks the protocol (for a thread per
    /// connection, tests and examples). Returns `Ok(())` when the frontend closed the socket.
    pub fn serve<H: BackendHandler + ?Sized>(mut self, handler: &mut H) -> Result<()> {
        let r = loop {
            let mut events = 0;
            if self.wants_read() {
                events |= libc::POLLIN;
            }
            if self.wants_write() {
                events |= libc::POLLOUT;
            }
            // Requests already buffered are handled without waiting.
            let buffered = self.has_buffered_requests() && self.wants_read();
            if !buffered {
                if let Err(e) = wait_fd(self.stream.as_raw_fd(), events, None) {
                    break Err(Error::Socket(e));
                }
            }
            if let Err(e) = self.process_ready(handler, !buffered) {
                break Err(e);
            }
            if self.finished() {
                break Err(Error::PeerClosed);
            }
        };
        self.close(handler);
        match r {
            Err(Error::PeerClosed) => {
                debug!("{}: frontend closed the connection", self.id());
                Ok(())
            }
            Err(e) => {
                warn!("{}: dropping the connection: {e}", self.id());
                Err(e)
            }
            Ok(()) => Ok(()),
        }
    }
}

/// How [`Connection::handle_available`] reaches the handler.
trait Access<H: ?Sized> {
    fn get(&mut self) -> &mut H;
}

/// A handler passed directly.
struct Direct<'a, H: ?Sized>(&'a mut H);

impl<H: ?Sized> Access<H> for Direct<'_, H> {
    fn get(&mut self) -> &mut H {
        self.0
    }
}

/// A handler behind a lock, taken on first use and held until dropped.
struct Lazy<F, G> {
    lock: F,
    held: Option<G>,
}

impl<H: ?Sized, G: DerefMut<Target = H>, F: FnMut() -> G> Access<H> for Lazy<F, G> {
    fn get(&mut self) -> &mut H {
        self.held.get_or_insert_with(&mut self.lock)
    }
}

impl AsRawFd for Connection {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}
