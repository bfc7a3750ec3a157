//! One event-manager loop serving every frontend and every control-socket client: the listening
//! sockets and each connection are registered with the same subscriber, connections are
//! non-blocking, and a connection that sends garbage, stops reading, or hangs up is dropped alone.
//! Every accepted peer passes the [`AccessPolicy`] (`SO_PEERCRED`) before anything is read from
//! it; a refused one is closed at once.
//!
//! Limits, each an error to the one peer that exceeds it: at most `max_connections` frontends
//! (`--max-connections`) and [`MAX_CONTROL_CONNECTIONS`] control clients, at most
//! [`MAX_CONTROL_CONNECTIONS_PER_PEER`] of them from one process; more are closed at accept,
//! and the warnings about refusals are rate-limited ([`super::throttle`]). Per frontend, the protocol's [`Connection`] bounds what a peer can make pcierc hold:
//! it stops reading requests while
//! [`BACKPRESSURE_BYTES`](pcierc_protocol::connection::BACKPRESSURE_BYTES) of replies wait
//! unread (this loop then waits for writability only, so further requests stay in the kernel's
//! socket buffer and the frontend's writes block), drops a frontend whose unread replies would
//! pass [`DEFAULT_WRITE_LIMIT`](pcierc_protocol::DEFAULT_WRITE_LIMIT), and closes a connection
//! whose header announces more than [`MAX_PAYLOAD_SIZE`](pcierc_protocol::MAX_PAYLOAD_SIZE). A
//! control client is dropped once
//! [`MAX_PENDING_OUTPUT`](super::control_socket::MAX_PENDING_OUTPUT) bytes of output wait unread.
//!
//! Fairness under floods of connections: each wake-up accepts at most [`ACCEPT_BUDGET`]
//! connections per listening socket, so the connections already established are served between
//! two such batches whatever the rate of newcomers, and the sockets pcierc creates have a short
//! [`LISTEN_BACKLOG`], so flooding peers wait in `connect()` instead of spinning.
//! Nothing a peer does before it sends a well-formed request takes the root complex's lock
//! (shared with the frontend threads, and fair: every acquisition by the loop would cost a
//! served frontend a hand-off): the connection counters are atomics
//! ([`SocketCounters`]), a frontend's bytes take the lock only once a whole request is buffered
//! ([`Connection::process_ready_with`]), its departure only if a request of it reached the root
//! complex, and QMP input only for a command the session does not answer itself
//! (`event_loop/on_demand.rs`).
//!
//! Threads: a frontend is served here until it has negotiated (`SetProtocolFeatures`), then
//! by a thread of its own (`event_loop/frontend_threads.rs`) that blocks in `recvmsg` and
//! shares the root complex with the loop and the other threads under a fair lock; the loop
//! keeps the listeners, the handshakes, the control socket and the signals, and is woken by an
//! eventfd when a thread's requests queued QMP events or a thread ended.
//!
//! SIGTERM and SIGINT arrive on the same loop through a signalfd ([`ShutdownSignals`]); they end
//! it as `quit` does, after the requests already received are answered (`shutdown`).

mod frontend_threads;
mod on_demand;
mod shutdown;

use std::collections::HashMap;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use log::{debug, error, info, warn};
use pcierc_protocol::{Connection, ConnectionId};
use vhost::vhost_user::Listener;

use super::access::{self, AccessConfig, AccessPolicy, SocketFile};
use super::control_socket::ControlConn;
use super::signals::ShutdownSignals;
use super::stats::SocketCounters;
use super::throttle::REFUSALS;
use super::{ControlListen, Listen, RootComplex};
use crate::control;
use crate::{Error, Result};
use on_demand::OnDemand;

/// Token of the listening socket in epoll data; connections use their id (starting at 1).
const LISTENER_TOKEN: u32 = 0;
/// Token of the control socket's listener.
const CONTROL_LISTENER_TOKEN: u32 = u32::MAX;
/// Token of the shutdown signals' signalfd.
const SIGNAL_TOKEN: u32 = u32::MAX - 1;
/// Token of the frontend threads' eventfd ([`frontend_threads::Wake`]).
const WAKE_TOKEN: u32 = u32::MAX - 2;

/// Most control-socket clients served at once.
pub const MAX_CONTROL_CONNECTIONS: usize = 16;

/// Most control-socket clients one process (`SO_PEERCRED` pid) holds at once, so that one peer
/// cannot take every slot; other processes, of the same uid or not, still get theirs.
pub const MAX_CONTROL_CONNECTIONS_PER_PEER: usize = 4;

/// Connections taken from each listening socket per wake-up of the loop. The rest wait in the
/// kernel's backlog: the listeners are level-triggered, so the next wake-up takes the next
/// ones, after every connection that was ready in this one has been served. A flood of new
/// connections thus costs the established frontends at most this many accepts (per socket)
/// between two of their turns, and the flooders wait in `connect()` once the backlog is full.
pub const ACCEPT_BUDGET: usize = 1;

/// Connections the kernel queues on a socket pcierc creates before `connect()` blocks (or
/// fails with `EAGAIN` when non-blocking). Short, so that peers flooding it with connections
/// wait in `connect()` at the pace pcierc accepts them instead of spending the CPU the served
/// frontends need; frontends connecting in a burst wait their turn the same way. Sockets a
/// service manager passes keep the backlog it gave them.
pub const LISTEN_BACKLOG: libc::c_int = 64;

struct Conn {
    conn: Connection,
    /// The epoll interest currently registered.
    interest: EventSet,
}

enum Source {
    Listener(Listener),
    /// An inherited connected socket: served once, nothing to accept.
    None,
}

/// The sockets a [`Server`] serves, claimed before the rest of the service starts (so a second
/// pcierc pointed at a live socket stops before it touches anything else, the state file
/// included).
pub struct Sockets {
    source: Source,
    /// An inherited connected socket, served as soon as the loop starts.
    pending: Option<UnixStream>,
    control: Option<UnixListener>,
    /// The socket files created, removed when the server is dropped.
    files: Vec<SocketFile>,
}

impl Sockets {
    /// Create or adopt the frontends' socket described by `listen`, and create or adopt the
    /// control socket `control` if given. Socket files get `socket_mode`
    /// ([`access::create_listener`]); inherited descriptors are taken over (close-on-exec set)
    /// and their files, if any, are left to whoever made them.
    pub fn open(
        listen: &Listen,
        control: Option<&ControlListen>,
        socket_mode: u32,
    ) -> Result<Self> {
        let mut pending = None;
        let mut files = Vec::new();
        let source = match listen {
            Listen::Path(p) => {
                let (l, file) = access::create_listener(p, socket_mode)?;
                set_backlog(&l);
                files.push(file);
                Source::Listener(Listener::from(l))
            }
            Listen::Fd(fd) => {
                let what = format!("--fd {fd}");
                if is_listening(*fd).map_err(|source| Error::Io {
                    context: format!("{what}: not a socket pcierc can serve"),
                    source,
                })? {
                    // SAFETY: the caller handed us this fd (command line or socket
                    // activation, checked there); we own it from now on.
                    let l = unsafe { UnixListener::from_raw_fd(*fd) };
                    set_cloexec(*fd).map_err(io_err(&what))?;
                    Source::Listener(Listener::from(l))
                } else {
                    // SAFETY: as above; it is a connected stream socket.
                    pending = Some(unsafe { UnixStream::from_raw_fd(*fd) });
                    set_cloexec(*fd).map_err(io_err(&what))?;
                    Source::None
                }
            }
        };
        if let Source::Listener(l) = &source {
            l.set_nonblocking(true).map_err(Error::Listener)?;
        }
        let control = match control {
            Some(ControlListen::Path(path)) => {
                let (l, file) = access::create_listener(path, socket_mode)?;
                set_backlog(&l);
                files.push(file);
                Some(l)
            }
            Some(ControlListen::Fd(fd)) => {
                crate::cli::activation::check_listening_unix_stream(*fd, "control socket")?;
                // SAFETY: an open listening unix stream socket (checked just above) that the
                // caller handed over; we own it from now on.
                let l = unsafe { UnixListener::from_raw_fd(*fd) };
                set_cloexec(*fd).map_err(io_err("control socket"))?;
                Some(l)
            }
            None => None,
        };
        if let Some(l) = &control {
            l.set_nonblocking(true)
                .map_err(io_err("control socket listener"))?;
        }
        Ok(Sockets {
            source,
            pending,
            control,
            files,
        })
    }
}

/// The serving state: the handler and every live connection.
pub struct Server {
    source: Source,
    handler: frontend_threads::Shared,
    /// Connection counters, updated without the handler's lock.
    counters: Arc<SocketCounters>,
    /// The loop took the handler's lock for what it handled last: QMP events may be queued.
    events_due: bool,
    /// Frontends still on the loop (before and during their handshake).
    conns: HashMap<u32, Conn>,
    /// Frontends served by threads of their own, by token.
    workers: HashMap<u32, frontend_threads::Worker>,
    /// Rung by the frontend threads; `None` if no eventfd could be made (frontends then stay
    /// on the loop).
    wake: Option<frontend_threads::Wake>,
    next_token: u32,
    pending: Option<UnixStream>,
    control: Option<UnixListener>,
    /// Control clients: the connection, its epoll interest, and the peer's pid.
    controls: HashMap<u32, (ControlConn, EventSet, i32)>,
    access: AccessConfig,
    /// SIGTERM and SIGINT, when the server handles them.
    signals: Option<ShutdownSignals>,
    quit: bool,
    /// Declared last: removed after the listeners are closed.
    _files: Vec<SocketFile>,
}

fn io_err(context: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        context: context.to_string(),
        source,
    }
}

impl Server {
    /// Serve `sockets` with `handler`, admitting peers and limiting connections as `access`
    /// says. An inherited connected socket is served without a credentials check: whoever
    /// handed it over chose the peer.
    pub fn new(sockets: Sockets, handler: RootComplex, access: AccessConfig) -> Self {
        let wake = match frontend_threads::Wake::new() {
            Ok(w) => Some(w),
            Err(e) => {
                warn!("no eventfd ({e}): every frontend is served on the event loop");
                None
            }
        };
        Server {
            source: sockets.source,
            counters: handler.socket_counters(),
            events_due: false,
            handler: Arc::new(parking_lot::FairMutex::new(handler)),
            conns: HashMap::new(),
            workers: HashMap::new(),
            wake,
            next_token: 1,
            pending: sockets.pending,
            control: sockets.control,
            controls: HashMap::new(),
            access,
            signals: None,
            quit: false,
            _files: sockets.files,
        }
    }

    /// Stop cleanly on SIGTERM or SIGINT (read from `signals`), as on `quit`, with QEMU's
    /// `SHUTDOWN` event `reason: "host-signal"`.
    pub fn with_signals(mut self, signals: ShutdownSignals) -> Self {
        self.signals = Some(signals);
        self
    }

    /// The access policy in force.
    fn policy(&self) -> &AccessPolicy {
        &self.access.policy
    }

    /// A token no live connection uses.
    fn new_token(&mut self) -> u32 {
        loop {
            let t = self.next_token;
            self.next_token = self.next_token.wrapping_add(1).max(1);
            if t != CONTROL_LISTENER_TOKEN
                && t != SIGNAL_TOKEN
                && t != WAKE_TOKEN
                && !self.conns.contains_key(&t)
                && !self.workers.contains_key(&t)
                && !self.controls.contains_key(&t)
            {
                return t;
            }
        }
    }

    /// Run the loop until an unrecoverable epoll error, a `quit` on the control socket, SIGTERM
    /// or SIGINT (with [`Server::with_signals`]), or, with an inherited connected socket, until
    /// that frontend disconnects. The socket files are removed when it returns (if they are
    /// still pcierc's).
    pub fn run(self) -> Result<()> {
        let single = matches!(self.source, Source::None);
        let mut manager: EventManager<Server> =
            EventManager::new().map_err(|source| Error::EventLoop {
                context: "event manager",
                source,
            })?;
        let id = manager.add_subscriber(self);
        loop {
            manager.run().map_err(|source| Error::EventLoop {
                context: "event loop",
                source,
            })?;
            if manager.subscriber_mut(id).is_ok_and(|s| s.quit) {
                return Ok(());
            }
            if single
                && manager
                    .subscriber_mut(id)
                    .map_or(true, |s| s.conns.is_empty() && s.workers.is_empty())
            {
                info!("the frontend on the inherited socket left; exiting");
                return Ok(());
            }
        }
    }

    fn add_connection(&mut self, stream: UnixStream, ops: &mut EventOps) {
        let token = self.new_token();
        let conn = match Connection::new(stream, ConnectionId(u64::from(token))) {
            Ok(c) => c,
            Err(e) => {
                warn!("refusing a frontend: {e}");
                return;
            }
        };
        let interest = EventSet::IN | EventSet::READ_HANG_UP;
        if let Err(e) = ops.add(Events::with_data(&conn, token, interest)) {
            warn!("refusing a frontend: epoll: {e:?}");
            return;
        }
        debug!("frontend connection {token} accepted");
        self.counters.frontends.accepted();
        self.conns.insert(token, Conn { conn, interest });
    }

    fn drop_connection(&mut self, token: u32, ops: &mut EventOps, why: &str) {
        if let Some(mut c) = self.conns.remove(&token) {
            let _ = ops.remove(Events::with_data(&c.conn, token, c.interest));
            debug!("frontend connection {token} closed: {why}");
            self.close(&mut c.conn);
        }
    }

    /// Close a frontend connection the loop holds, taking the lock only if its requests
    /// reached the root complex (which then counts it out; the others are counted out here).
    fn close(&mut self, conn: &mut Connection) {
        let mut taken = false;
        conn.close_with(|| {
            taken = true;
            self.handler.lock()
        });
        self.events_due |= taken;
        if !taken {
            self.counters.frontends.closed();
        }
    }

    fn accept_all(&mut self, ops: &mut EventOps) {
        for _ in 0..ACCEPT_BUDGET {
            let accepted = match &self.source {
                Source::Listener(l) => l.accept(),
                Source::None => return,
            };
            match accepted {
                Ok(Some(s)) => {
                    // A refused peer is closed (dropped) before anything is read from it.
                    let Some(cred) = self.policy().admit(&s, "frontend") else {
                        self.counters.frontends.refused();
                        continue;
                    };
                    if self.conns.len() + self.workers.len() >= self.access.max_connections {
                        self.counters.frontends.refused();
                        let max = self.access.max_connections;
                        REFUSALS.warn(|| {
                            format!(
                                "refusing a frontend (pid {} uid {}): {max} connections already (--max-connections)",
                                cred.pid, cred.uid
                            )
                        });
                        continue;
                    }
                    self.add_connection(s, ops);
                }
                Ok(None) => return,
                Err(e) => {
                    warn!("accept: {e}");
                    return;
                }
            }
        }
    }

    fn process_event(&mut self, events: Events, ops: &mut EventOps) {
        // Once stopping, the rest of the wake-up's events are left alone: no new peers, no
        // new requests (those already received were answered on the way out).
        if self.quit {
            return;
        }
        let token = events.data();
        if token == SIGNAL_TOKEN {
            self.signal_event(ops);
            return;
        }
        if token == WAKE_TOKEN {
            self.reap_workers();
            self.broadcast_control_events(ops);
            return;
        }
        if token == LISTENER_TOKEN {
            self.accept_all(ops);
            return;
        }
        if token == CONTROL_LISTENER_TOKEN {
            self.accept_controls(ops);
            return;
        }
        if self.controls.contains_key(&token) {
            self.control_event(token, events.event_set(), ops);
        } else {
            self.frontend_event(token, events, ops);
        }
        // Whatever ran under the lock may have produced QMP events (a guest powering a slot
        // off, a device_del completing): every negotiated control client gets them.
        if std::mem::take(&mut self.events_due) {
            self.broadcast_control_events(ops);
        }
    }

    fn frontend_event(&mut self, token: u32, events: Events, ops: &mut EventOps) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        let set = events.event_set();
        let result = if set.intersects(EventSet::IN | EventSet::OUT) {
            let (handler, events_due) = (&self.handler, &mut self.events_due);
            c.conn.process_ready_with(
                || {
                    *events_due = true;
                    handler.lock()
                },
                set.contains(EventSet::IN),
            )
        } else {
            Ok(())
        };
        if let Err(e) = result {
            return self.drop_connection(token, ops, &e.to_string());
        }
        if c.conn.finished() {
            return self.drop_connection(token, ops, "peer closed after its last reply");
        }
        if frontend_threads::ready_for_thread(&c.conn)
            && !set.intersects(EventSet::HANG_UP | EventSet::ERROR | EventSet::READ_HANG_UP)
            && self.hand_over(token, ops)
        {
            return;
        }
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        // A peer that only shut its sending side still gets the replies it is owed.
        if set.intersects(EventSet::HANG_UP | EventSet::ERROR)
            || (set.contains(EventSet::READ_HANG_UP)
                && !set.contains(EventSet::IN)
                && !c.conn.wants_write())
        {
            return self.drop_connection(token, ops, "peer hung up");
        }
        // Back-pressure: stop reading while replies wait unread; wait for writability instead.
        // (A half-closed peer keeps READ_HANG_UP raised: leave it out while only writing.)
        let mut want = if c.conn.wants_read() {
            EventSet::READ_HANG_UP
        } else {
            EventSet::empty()
        };
        if c.conn.wants_read() {
            want |= EventSet::IN;
        }
        // Requests left in the connection's buffer (its per-call budget) wake the loop again
        // through writability, after the other ready peers had their turn.
        if c.conn.wants_write() || c.conn.has_buffered_requests() {
            want |= EventSet::OUT;
        }
        if want != c.interest && ops.modify(Events::with_data(&c.conn, token, want)).is_ok() {
            c.interest = want;
        }
    }

    /// Move negotiated connection `token` from the loop to a thread of its own. False when it
    /// stays on the loop (no eventfd, or no thread could be made).
    fn hand_over(&mut self, token: u32, ops: &mut EventOps) -> bool {
        let Some(wake) = &self.wake else {
            return false;
        };
        let Some(c) = self.conns.remove(&token) else {
            return false;
        };
        let _ = ops.remove(Events::with_data(&c.conn, token, c.interest));
        match frontend_threads::spawn(c.conn, token, &self.handler, wake) {
            Ok(w) => {
                self.workers.insert(token, w);
                true
            }
            Err(Some(conn)) => {
                let conn = *conn;
                let interest = EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP;
                if let Err(e) = ops.add(Events::with_data(&conn, token, interest)) {
                    warn!("frontend connection {token}: epoll: {e:?}");
                    let mut conn = conn;
                    self.close(&mut conn);
                    return true;
                }
                self.conns.insert(token, Conn { conn, interest });
                false
            }
            Err(None) => {
                error!("frontend connection {token} lost while starting its thread");
                self.counters.frontends.closed();
                true
            }
        }
    }

    /// Join the frontend threads that have ended.
    fn reap_workers(&mut self) {
        if let Some(w) = &self.wake {
            w.clear();
        }
        let done: Vec<u32> = self
            .workers
            .iter()
            .filter(|(_, w)| w.is_done())
            .map(|(t, _)| *t)
            .collect();
        for token in done {
            if let Some(w) = self.workers.remove(&token) {
                // Its thread told the root complex, which counted it out.
                w.join(token);
            }
        }
    }

    fn accept_controls(&mut self, ops: &mut EventOps) {
        for _ in 0..ACCEPT_BUDGET {
            let Some(l) = &self.control else { return };
            let stream = match l.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!("control socket accept: {e}");
                    return;
                }
            };
            // A refused client is closed before the greeting is sent or anything read.
            let Some(cred) = self.policy().admit(&stream, "control client") else {
                self.counters.qmp.refused();
                continue;
            };
            if self.controls.len() >= MAX_CONTROL_CONNECTIONS {
                self.counters.qmp.refused();
                REFUSALS.warn(|| {
                    format!(
                        "refusing a control client (pid {} uid {}): {MAX_CONTROL_CONNECTIONS} already connected",
                        cred.pid, cred.uid
                    )
                });
                continue;
            }
            let of_peer = self.controls.values().filter(|c| c.2 == cred.pid).count();
            if of_peer >= MAX_CONTROL_CONNECTIONS_PER_PEER {
                self.counters.qmp.refused();
                REFUSALS.warn(|| {
                    format!(
                        "refusing a control client (pid {} uid {}): that process has \
                         {MAX_CONTROL_CONNECTIONS_PER_PEER} connected already",
                        cred.pid, cred.uid
                    )
                });
                continue;
            }
            let mut conn = match ControlConn::new(stream) {
                Ok(c) => c,
                Err(e) => {
                    warn!("refusing a control client: {e}");
                    continue;
                }
            };
            let token = self.new_token();
            let _ = conn.flush();
            let interest = control_interest(&conn);
            if let Err(e) = ops.add(Events::with_data(&conn, token, interest)) {
                warn!("refusing a control client: epoll: {e:?}");
                continue;
            }
            debug!("control client {token} connected");
            self.controls.insert(token, (conn, interest, cred.pid));
            self.counters.qmp.accepted();
        }
    }

    fn drop_control(&mut self, token: u32, ops: &mut EventOps, why: &str) {
        if let Some((c, interest, _)) = self.controls.remove(&token) {
            let _ = ops.remove(Events::with_data(&c, token, interest));
            debug!("control client {token} closed: {why}");
            self.counters.qmp.closed();
        }
    }

    fn control_event(&mut self, token: u32, set: EventSet, ops: &mut EventOps) {
        let Some((c, _, _)) = self.controls.get_mut(&token) else {
            return;
        };
        let mut result = Ok(());
        if set.contains(EventSet::IN) {
            let mut rc = OnDemand::new(&self.handler, &self.counters);
            result = c.readable(&mut rc);
            self.events_due |= rc.was_taken();
        }
        if result.is_ok() {
            result = c.flush();
        }
        if let Err(e) = result {
            return self.drop_control(token, ops, &e.to_string());
        }
        if c.quit_requested() {
            info!("quit requested on the control socket; exiting");
            return self.shutdown(ops, "host-qmp-quit");
        }
        if set.intersects(EventSet::HANG_UP | EventSet::ERROR)
            || (set.contains(EventSet::READ_HANG_UP) && !set.contains(EventSet::IN))
        {
            return self.drop_control(token, ops, "client hung up");
        }
        self.update_control_interest(token, ops);
    }

    fn update_control_interest(&mut self, token: u32, ops: &mut EventOps) {
        if let Some((c, interest, _)) = self.controls.get_mut(&token) {
            let want = control_interest(c);
            if want != *interest && ops.modify(Events::with_data(&*c, token, want)).is_ok() {
                *interest = want;
            }
        }
    }

    /// Send the root complex's pending QMP events to every control client.
    fn broadcast_control_events(&mut self, ops: &mut EventOps) {
        let events = self.handler.lock().take_control_events();
        if events.is_empty() {
            return;
        }
        let lines: Vec<String> = events
            .into_iter()
            .map(|e| control::event(e.name, Some(e.data)))
            .collect();
        let tokens: Vec<u32> = self.controls.keys().copied().collect();
        for token in tokens {
            let Some((c, _, _)) = self.controls.get_mut(&token) else {
                continue;
            };
            let r = lines
                .iter()
                .try_for_each(|l| c.event(l))
                .and_then(|()| c.flush());
            match r {
                Ok(()) => self.update_control_interest(token, ops),
                Err(e) => self.drop_control(token, ops, &e.to_string()),
            }
        }
    }

    fn init_events(&mut self, ops: &mut EventOps) {
        if let Source::Listener(l) = &self.source {
            if let Err(e) = ops.add(Events::with_data(l, LISTENER_TOKEN, EventSet::IN)) {
                error!("cannot watch the listening socket: {e:?}");
            }
        }
        if let Some(l) = &self.control {
            if let Err(e) = ops.add(Events::with_data(l, CONTROL_LISTENER_TOKEN, EventSet::IN)) {
                error!("cannot watch the control socket: {e:?}");
            }
        }
        if let Some(sig) = &self.signals {
            if let Err(e) = ops.add(Events::with_data(sig, SIGNAL_TOKEN, EventSet::IN)) {
                error!("cannot watch for SIGTERM and SIGINT: {e:?}");
            }
        }
        if let Some(w) = &self.wake {
            if let Err(e) = ops.add(Events::with_data(w, WAKE_TOKEN, EventSet::IN)) {
                error!("cannot watch the frontend threads: {e:?}; frontends stay on the loop");
                self.wake = None;
            }
        }
        if let Some(s) = self.pending.take() {
            self.add_connection(s, ops);
        }
    }
}

impl MutEventSubscriber for Server {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        self.process_event(events, ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.init_events(ops);
    }
}

fn control_interest(c: &ControlConn) -> EventSet {
    if c.wants_write() {
        EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP
    } else {
        EventSet::IN | EventSet::READ_HANG_UP
    }
}

/// Give a socket pcierc created the [`LISTEN_BACKLOG`] (the standard library asks for the
/// kernel's maximum, 4096 by default). Best effort: the kernel's own backlog stays otherwise.
fn set_backlog(l: &UnixListener) {
    use std::os::fd::AsRawFd;
    // SAFETY: listen() again on a socket this process owns and already listens on only
    // changes its backlog; no memory is passed.
    if unsafe { libc::listen(l.as_raw_fd(), LISTEN_BACKLOG) } < 0 {
        debug!("listen backlog: {}", std::io::Error::last_os_error());
    }
}

/// Set close-on-exec on an inherited descriptor pcierc keeps.
fn set_cloexec(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor this process owns; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Is `fd` a listening socket (SO_ACCEPTCONN)?
fn is_listening(fd: RawFd) -> std::io::Result<bool> {
    Ok(socket_option(fd, libc::SO_ACCEPTCONN)? != 0)
}

/// An integer `SOL_SOCKET` option of `fd` (`SO_TYPE`, `SO_DOMAIN`, `SO_ACCEPTCONN`, ...).
pub(crate) fn socket_option(fd: RawFd, name: libc::c_int) -> std::io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`, which lives for the call.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(v)
}
