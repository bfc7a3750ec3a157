//! Frontends served by threads of their own once they have negotiated (docs/service.md,
//! "Threading"): the event loop hands a connection over when its session reaches
//! [`Stage::Negotiated`], so a peer that never completes the handshake (garbage, a flood of
//! connections) costs no thread. Each thread blocks in `recvmsg` and takes the [`RootComplex`]
//! under a [`FairMutex`] for the requests it read ([`Connection::serve_shared`]); the fair
//! hand-off on unlock gives every waiting frontend its turn before a busy one takes the lock
//! again. A thread tells the loop (through [`Wake`], an eventfd) when its requests queued QMP
//! events and when it ends, so control clients get events promptly and the loop counts, joins
//! and (for an inherited socket) exits when the last frontend leaves.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, warn};
use parking_lot::FairMutex;
use pcierc_protocol::backend::Stage;
use pcierc_protocol::Connection;
use vmm_sys_util::eventfd::EventFd;

use super::super::RootComplex;

/// The root complex as the event loop and the frontend threads share it.
pub(super) type Shared = Arc<FairMutex<RootComplex>>;

/// The event loop's doorbell: written by frontend threads, read by the loop (registered
/// with its epoll).
#[derive(Clone)]
pub(super) struct Wake(Arc<EventFd>);

impl Wake {
    pub(super) fn new() -> std::io::Result<Self> {
        Ok(Wake(Arc::new(EventFd::new(
            libc::EFD_NONBLOCK | libc::EFD_CLOEXEC,
        )?)))
    }

    fn ring(&self) {
        if let Err(e) = self.0.write(1) {
            // Only a counter overflow could fail, and then the loop is already due to wake.
            debug!("waking the event loop: {e}");
        }
    }

    /// Reset the counter (after waking).
    pub(super) fn clear(&self) {
        let _ = self.0.read();
    }

    /// Wait up to `timeout` for a ring.
    fn wait(&self, timeout: Duration) {
        let mut p = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut p, 1, ms) };
        self.clear();
    }
}

impl AsRawFd for Wake {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// One frontend thread, as the loop keeps it.
pub(super) struct Worker {
    join: JoinHandle<()>,
    /// The connection's socket, to shut down when pcierc stops.
    stream: UnixStream,
    /// Set by the thread when it is about to end (before it rings).
    done: Arc<AtomicBool>,
}

/// Is `conn` ready to leave the event loop: negotiated, still reading, nothing left over that
/// the loop would have to finish?
pub(super) fn ready_for_thread(conn: &Connection) -> bool {
    conn.session().stage() == Stage::Negotiated && conn.wants_read() && !conn.finished()
}

/// Serve `conn` (connection `token`) on a new thread. `Err(Some(conn))` when no thread could
/// be made: the caller keeps serving it (`Err(None)` cannot happen: the slot is only emptied
/// by the thread).
pub(super) fn spawn(
    conn: Connection,
    token: u32,
    handler: &Shared,
    wake: &Wake,
) -> Result<Worker, Option<Box<Connection>>> {
    let stream = match conn_stream(&conn) {
        Ok(s) => s,
        Err(e) => {
            warn!("frontend connection {token}: staying on the event loop: {e}");
            return Err(Some(Box::new(conn)));
        }
    };
    // The thread takes the connection out of this slot; if it never starts, it is still here.
    let slot = Arc::new(Mutex::new(Some(conn)));
    let done = Arc::new(AtomicBool::new(false));
    let (t_slot, t_handler, t_wake, t_done) = (
        Arc::clone(&slot),
        Arc::clone(handler),
        wake.clone(),
        Arc::clone(&done),
    );
    let spawned = std::thread::Builder::new()
        .name(format!("frontend-{token}"))
        .spawn(move || {
            let conn = t_slot.lock().ok().and_then(|mut s| s.take());
            if let Some(conn) = conn {
                let r = conn.serve_shared(
                    || t_handler.lock(),
                    |h: &mut RootComplex| {
                        if h.has_control_events() {
                            t_wake.ring();
                        }
                    },
                );
                match r {
                    Ok(()) => debug!("frontend connection {token} closed: peer left"),
                    Err(e) => debug!("frontend connection {token} closed: {e}"),
                }
            }
            t_done.store(true, Ordering::Release);
            t_wake.ring();
        });
    match spawned {
        Ok(join) => {
            debug!("frontend connection {token} served by its own thread");
            Ok(Worker { join, stream, done })
        }
        Err(e) => {
            warn!("frontend connection {token}: no thread ({e}); staying on the event loop");
            // The closure was dropped unrun: the connection is still in the slot.
            let back = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
            Err(back.map(Box::new))
        }
    }
}

/// A second handle on the connection's socket (for [`Worker::stream`]).
fn conn_stream(conn: &Connection) -> std::io::Result<UnixStream> {
    let fd = conn.as_raw_fd();
    // SAFETY: dup of a descriptor the connection owns and keeps open for this call.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `dup` is a new descriptor this process owns.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(dup) })
}

impl Worker {
    /// Has the thread finished serving (it may still be returning)?
    pub(super) fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Wait for the thread to return (promptly once [`Worker::is_done`]).
    pub(super) fn join(self, token: u32) {
        if self.join.join().is_err() {
            warn!("frontend connection {token}: its thread panicked");
        }
    }

    /// Stop reading requests: the thread answers what it has read and what the socket holds,
    /// then sees the end of the stream and ends.
    pub(super) fn stop_reading(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Read);
    }

    /// Stop everything: a thread waiting for its frontend to read a reply gives up.
    pub(super) fn abort(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// Stop every worker: `SHUT_RD` first (they answer what has arrived), then, for those still
/// serving at `deadline` (their frontend does not read its replies), `SHUT_RDWR`; all joined.
pub(super) fn stop_all(workers: Vec<(u32, Worker)>, wake: &Wake, deadline: Instant) {
    for (_, w) in &workers {
        w.stop_reading();
    }
    while workers.iter().any(|(_, w)| !w.is_done()) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        wake.wait(left);
    }
    for (token, w) in &workers {
        if !w.is_done() {
            warn!("frontend connection {token}: replies left unsent at exit (it does not read)");
            w.abort();
        }
    }
    for (token, w) in workers {
        w.join(token);
    }
}
