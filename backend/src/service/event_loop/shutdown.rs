//! Ending the loop cleanly, on `quit` or on SIGTERM/SIGINT: every request that has arrived
//! whole is answered and its reply sent (within [`DRAIN_TIME`]), the frontends are closed
//! (frontend threads: `SHUT_RD`, which they see as the end of the stream once they have
//! answered what the socket holds, then `SHUT_RDWR` at the deadline for one whose frontend does
//! not read; every thread joined),
//! control clients get QEMU's `SHUTDOWN` event, and the loop stops; the socket files go when
//! the server is dropped. The state file needs nothing: it is written before each reply, and a
//! signal is only read between requests.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use event_manager::EventOps;
use log::{debug, info, warn};

use super::Server;
use crate::control;
use crate::service::signals;

/// Longest time spent answering and sending what frontends are owed before exiting.
pub const DRAIN_TIME: Duration = Duration::from_secs(2);

impl Server {
    /// The signalfd is readable: stop on SIGTERM or SIGINT.
    pub(super) fn signal_event(&mut self, ops: &mut EventOps) {
        let Some(signo) = self.signals.as_ref().and_then(|s| s.take()) else {
            return;
        };
        info!("{} received; shutting down", signals::name(signo));
        self.shutdown(ops, "host-signal");
    }

    /// Answer what frontends are owed, close them, send `SHUTDOWN` (QEMU's shape:
    /// `{"guest": false, "reason": REASON}`) to every control client, and stop the loop.
    pub(super) fn shutdown(&mut self, ops: &mut EventOps, reason: &str) {
        self.drain_frontends(ops, Instant::now() + DRAIN_TIME);
        // What the last requests caused (a slot powered off, ...) comes before SHUTDOWN.
        self.broadcast_control_events(ops);
        let line = control::event(
            "SHUTDOWN",
            Some(serde_json::json!({"guest": false, "reason": reason})),
        );
        for (c, _, _) in self.controls.values_mut() {
            let _ = c.event(&line);
            c.finish();
        }
        self.quit = true;
    }

    /// Answer every request already received (read until a frontend's socket is empty,
    /// without waiting for more) and send the replies as the frontends read them, round-robin
    /// so one frontend that does not read holds up no other; then close every frontend
    /// connection. Stops at `deadline` whatever is left.
    fn drain_frontends(&mut self, ops: &mut EventOps, deadline: Instant) {
        // Frontend threads first stop reading (they answer what has arrived meanwhile).
        for w in self.workers.values() {
            w.stop_reading();
        }
        let tokens: Vec<u32> = self.conns.keys().copied().collect();
        let mut active = tokens.clone();
        while !active.is_empty() {
            let mut fds: Vec<libc::pollfd> = Vec::with_capacity(active.len());
            let mut writing = false;
            for t in &active {
                let Some(c) = self.conns.get(t) else { continue };
                let mut events = 0;
                if c.conn.wants_read() {
                    events |= libc::POLLIN;
                }
                if c.conn.wants_write() {
                    events |= libc::POLLOUT;
                    writing = true;
                }
                fds.push(libc::pollfd {
                    fd: c.conn.as_raw_fd(),
                    events,
                    revents: 0,
                });
            }
            // Wait only for frontends to read their replies; requests are taken as they are.
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = if writing { left } else { Duration::ZERO };
            poll(&mut fds, timeout);
            let mut next = Vec::new();
            for (t, p) in active.iter().zip(&fds) {
                let Some(c) = self.conns.get_mut(t) else {
                    continue;
                };
                // Requests read with earlier ones wait in the connection, not in the socket.
                let buffered = c.conn.has_buffered_requests();
                if p.revents == 0 && !buffered {
                    if c.conn.wants_write() {
                        next.push(*t);
                    }
                    continue;
                }
                let readable = p.revents & !libc::POLLOUT != 0;
                let handler = &self.handler;
                let r = c.conn.process_ready_with(|| handler.lock(), readable);
                if let Err(e) = r {
                    debug!("frontend connection {t} while stopping: {e}");
                    self.drop_connection(*t, ops, "closed while stopping");
                    continue;
                }
                if c.conn.wants_read() || c.conn.wants_write() || c.conn.has_buffered_requests() {
                    next.push(*t);
                }
            }
            active = next;
            if Instant::now() >= deadline {
                for t in &active {
                    if self.conns.get(t).is_some_and(|c| c.conn.wants_write()) {
                        warn!("frontend connection {t}: replies left unsent at exit (it does not read)");
                    }
                }
                break;
            }
        }
        for token in tokens {
            self.drop_connection(token, ops, "pcierc is stopping");
        }
        let workers: Vec<_> = self.workers.drain().collect();
        if let Some(wake) = &self.wake {
            super::frontend_threads::stop_all(workers, wake, deadline);
        }
    }
}

/// Wait up to `timeout` for the events in `fds` (an interrupted wait counts as nothing).
fn poll(fds: &mut [libc::pollfd], timeout: Duration) {
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
}
