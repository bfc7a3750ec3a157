//! [`Connection::serve_shared`]: one frontend served by a thread of its own that blocks in
//! `recvmsg` (no `epoll_wait` per request) and shares the handler with other such threads
//! through a lock.

use std::ops::DerefMut;
use std::os::fd::AsRawFd;

use super::{Connection, BACKPRESSURE_BYTES, MAX_REQUESTS_PER_CALL};
use crate::error::{Error, Result};
use crate::frame::wait_fd;
use crate::handler::BackendHandler;

impl Connection {
    /// Serve this connection on the calling thread until the frontend leaves, breaks the
    /// protocol, or the socket is shut down (by another thread, to stop it). Each turn blocks in
    /// one `recvmsg` for whatever the frontend sent, then takes the handler with `lock` for at
    /// most [`MAX_REQUESTS_PER_CALL`] requests (fewer once [`BACKPRESSURE_BYTES`] of replies are
    /// queued), sends their replies before releasing it (without
    /// blocking: so a reply precedes the notifications that other frontends' later requests
    /// cause), calls `after_batch` with the handler still held, and waits for the rest of the
    /// replies to be taken outside the lock (a frontend that does not read holds up only its own
    /// thread). Requests already read (on an event loop, before the hand-over) are served first,
    /// replies already queued sent first. The connection is closed under the lock
    /// ([`Connection::close`]) and `after_batch` called once more. `Ok(())` when the frontend
    /// closed its side (every reply sent).
    pub fn serve_shared<H, G>(
        mut self,
        mut lock: impl FnMut() -> G,
        mut after_batch: impl FnMut(&mut H),
    ) -> Result<()>
    where
        H: BackendHandler + ?Sized,
        G: DerefMut<Target = H>,
    {
        let r = self.serve_shared_loop(&mut lock, &mut after_batch);
        {
            let mut h = lock();
            self.close(&mut *h);
            after_batch(&mut h);
        }
        match r {
            Err(Error::PeerClosed) => Ok(()),
            other => other,
        }
    }

    fn serve_shared_loop<H, G>(
        &mut self,
        lock: &mut impl FnMut() -> G,
        after_batch: &mut impl FnMut(&mut H),
    ) -> Result<()>
    where
        H: BackendHandler + ?Sized,
        G: DerefMut<Target = H>,
    {
        self.stream.set_nonblocking(false).map_err(Error::Socket)?;
        self.flush_blocking()?;
        loop {
            while !self.reader.has_frame() {
                // `Fill::Empty` comes only after a message with too many descriptors, which
                // `has_frame` then reports (as the error `next_frame` returns).
                self.reader.fill(&self.stream, true)?;
            }
            let handled = {
                let mut h = lock();
                let r = self.handle_buffered(&mut *h);
                // Replies leave before the lock does, as far as the socket takes them.
                let sent = self.writer.flush(&self.stream);
                after_batch(&mut h);
                r.and(sent.map(drop))
            };
            if let Err(e) = handled {
                // What the requests before the broken one were owed, if the socket takes it.
                let _ = self.writer.flush(&self.stream);
                return Err(e);
            }
            self.flush_blocking()?;
        }
    }

    /// Handle the whole requests buffered, at most [`MAX_REQUESTS_PER_CALL`], and none once
    /// [`BACKPRESSURE_BYTES`] of replies wait unsent (the rest stay buffered for the next turn,
    /// after the frontend has read).
    fn handle_buffered<H: BackendHandler + ?Sized>(&mut self, handler: &mut H) -> Result<()> {
        for _ in 0..MAX_REQUESTS_PER_CALL {
            if self.writer.pending() >= BACKPRESSURE_BYTES {
                break;
            }
            let Some(frame) = self.reader.next_frame()? else {
                break;
            };
            let session = &mut self.session;
            self.writer
                .append(|out| session.handle_into(handler, frame, out))??;
        }
        Ok(())
    }

    /// Send the queued replies, waiting for the socket to take them.
    fn flush_blocking(&mut self) -> Result<()> {
        while !self.writer.flush(&self.stream)? {
            wait_fd(self.stream.as_raw_fd(), libc::POLLOUT, None).map_err(Error::Socket)?;
        }
        Ok(())
    }
}
