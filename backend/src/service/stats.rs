//! Counters for the operator (`x-pcierc-query-stats` on the control socket): per frontend
//! (requests, refusals by request and status, notifications by kind), connections accepted and
//! refused, hot-plug operations and events, state-file writes and their latency, QMP clients
//! and commands. Plain counters, updated where each thing happens; nothing here blocks or
//! allocates per request beyond the first refusal of a kind. `docs/control-socket.md` describes
//! the result.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pcierc_protocol::{ConnectionId, FrontendReq, Status};
use serde::Serialize;
use serde_json::{json, Value};

/// What one frontend connection did and was sent.
#[derive(Debug, Default, Clone)]
pub struct FrontendStats {
    /// Its name (`SetFrontendInfo`), once it said.
    pub name: Option<String>,
    /// Requests answered (refused ones included).
    pub requests: u64,
    /// Requests answered with an error status, by (request, status).
    pub refusals: BTreeMap<(String, &'static str), u64>,
    /// Notifications sent to it, by kind (backend-channel messages, eventfd writes).
    pub notifications: BTreeMap<&'static str, u64>,
}

impl FrontendStats {
    fn to_json(&self, conn: ConnectionId) -> Value {
        let refusals: Vec<Value> = self
            .refusals
            .iter()
            .map(|((request, status), count)| {
                json!({"request": request, "status": status, "count": count})
            })
            .collect();
        json!({
            "connection": conn.0,
            "name": self.name,
            "requests": self.requests,
            "refused": self.refusals.values().sum::<u64>(),
            "refusals": refusals,
            "notifications": self.notifications,
            "notifications-sent": self.notifications.values().sum::<u64>(),
        })
    }
}

/// Connections accepted and refused on one socket, as reported.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ConnectionStats {
    /// Served now.
    pub current: u64,
    /// Accepted since start.
    pub accepted: u64,
    /// Closed at accept (uid not allowed, or the limit reached).
    pub refused: u64,
}

/// The counters behind one socket's [`ConnectionStats`], kept by the event loop without the
/// root complex's lock: accepting, refusing and dropping a connection (a flood of garbage
/// connections, say) never waits for a frontend's request, nor holds one up.
#[derive(Debug, Default)]
pub struct ConnectionCounters {
    current: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
}

impl ConnectionCounters {
    /// A connection was accepted.
    pub fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.current.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection was refused at accept.
    pub fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// An accepted connection is gone.
    pub fn closed(&self) {
        // Never below zero, even if a caller closed more than it accepted.
        let _ = self
            .current
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| c.checked_sub(1));
    }

    /// The figures now.
    pub fn get(&self) -> ConnectionStats {
        ConnectionStats {
            current: self.current.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

/// The protocol socket's and the control socket's [`ConnectionCounters`], and the QMP
/// commands answered (counted without the lock too: most commands a flood sends are refused
/// by the QMP session before they reach the root complex).
#[derive(Debug, Default)]
pub struct SocketCounters {
    /// Frontend connections (the protocol socket).
    pub frontends: ConnectionCounters,
    /// QMP clients (the control socket).
    pub qmp: ConnectionCounters,
    commands: AtomicU64,
    command_errors: AtomicU64,
}

impl SocketCounters {
    /// A QMP command was answered (`ok`: without an error).
    pub fn command_done(&self, ok: bool) {
        self.commands.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.command_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The QMP commands answered so far.
    pub fn commands(&self) -> CommandStats {
        CommandStats {
            commands: self.commands.load(Ordering::Relaxed),
            errors: self.command_errors.load(Ordering::Relaxed),
        }
    }
}

/// Hot-plug operations (QMP) and their outcomes.
#[derive(Debug, Default, Clone, Copy, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct HotplugStats {
    /// `device_add` commands that plugged a card.
    pub device_add: u64,
    /// `device_del` commands accepted (attention button pressed).
    pub device_del: u64,
    /// `x-pcierc-surprise-remove` commands that removed a card.
    pub surprise_removals: u64,
    /// Hot-plug commands (the three above) refused.
    pub refused: u64,
    /// Functions that left the hierarchy (orderly or surprise): one `DEVICE_DELETED` each.
    pub device_deleted_events: u64,
}

/// `--state-file` writes.
#[derive(Debug, Default, Clone, Copy)]
pub struct StateFileStats {
    /// Writes that reached the disk (unchanged state is not written).
    pub writes: u64,
    /// Writes that failed (logged; the guest goes on).
    pub failures: u64,
    /// Time spent in successful writes, fsyncs and renames included.
    pub total: Duration,
    /// The longest successful write.
    pub max: Duration,
}

impl StateFileStats {
    /// Count one write that took `took` (`ok`: it succeeded).
    pub fn record(&mut self, ok: bool, took: Duration) {
        if ok {
            self.writes += 1;
            self.total += took;
            self.max = self.max.max(took);
        } else {
            self.failures += 1;
        }
    }

    fn to_json(self) -> Value {
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let mean = if self.writes == 0 {
            Duration::ZERO
        } else {
            self.total / u32::try_from(self.writes).unwrap_or(u32::MAX)
        };
        json!({
            "writes": self.writes,
            "failures": self.failures,
            "total-us": us(self.total),
            "mean-us": us(mean),
            "max-us": us(self.max),
        })
    }
}

/// QMP commands run on the control socket.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CommandStats {
    /// Commands answered (`qmp_capabilities` and refused ones included).
    pub commands: u64,
    /// Commands answered with an error.
    pub errors: u64,
}

/// Every counter of a running pcierc.
#[derive(Debug, Clone)]
pub struct Stats {
    started: Instant,
    /// Live frontend connections whose requests reached the root complex.
    pub frontends: BTreeMap<ConnectionId, FrontendStats>,
    /// Both sockets' connections (shared with the event loop).
    pub sockets: Arc<SocketCounters>,
    /// Requests answered on connections that are gone (their frontends' entries are dropped).
    pub departed_requests: u64,
    /// Hot-plug.
    pub hotplug: HotplugStats,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            frontends: BTreeMap::new(),
            sockets: Arc::default(),
            departed_requests: 0,
            hotplug: HotplugStats::default(),
        }
    }
}

impl Stats {
    /// A frontend connection whose requests reached the root complex is gone: its entry is
    /// dropped (its requests still count in the total) and it leaves `current` in the same
    /// step, so a query never sees one without the other. (The event loop counts out the
    /// connections the root complex never heard of.)
    pub fn frontend_gone(&mut self, conn: ConnectionId) {
        if let Some(f) = self.frontends.remove(&conn) {
            self.departed_requests += f.requests;
        }
        self.sockets.frontends.closed();
    }

    /// A frontend said its name (in a request: the entry starts here if this is its first).
    pub fn frontend_named(&mut self, conn: ConnectionId, name: &str) {
        self.frontends.entry(conn).or_default().name = Some(name.to_string());
    }

    /// A request of `conn` was answered with `status` (its entry starts with its first one).
    pub fn request_done(&mut self, conn: ConnectionId, request: u32, status: Status) {
        let f = self.frontends.entry(conn).or_default();
        f.requests += 1;
        if status != Status::Ok {
            let request = match FrontendReq::try_from(request) {
                Ok(r) => r.name().to_string(),
                Err(e) => format!("unknown({})", e.raw),
            };
            *f.refusals
                .entry((request, status.errno_name()))
                .or_default() += 1;
        }
    }

    /// A notification of `kind` went to `conn`.
    pub fn notified(&mut self, conn: ConnectionId, kind: &'static str) {
        if let Some(f) = self.frontends.get_mut(&conn) {
            *f.notifications.entry(kind).or_default() += 1;
        }
    }

    /// The result of `x-pcierc-query-stats`; `state_file` is `None` without `--state-file`.
    pub fn to_json(&self, state_file: Option<StateFileStats>) -> Value {
        let frontends: Vec<Value> = self
            .frontends
            .iter()
            .map(|(conn, f)| f.to_json(*conn))
            .collect();
        let requests =
            self.departed_requests + self.frontends.values().map(|f| f.requests).sum::<u64>();
        json!({
            "uptime-ms": u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "frontends": frontends,
            "frontend-connections": self.sockets.frontends.get(),
            "requests": requests,
            "hotplug": self.hotplug,
            "state-file": state_file.map(StateFileStats::to_json),
            "qmp-clients": self.sockets.qmp.get(),
            "qmp-commands": self.sockets.commands(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_follow_a_connection_and_refusals_are_grouped() {
        let mut s = Stats::default();
        let c = ConnectionId(7);
        s.sockets.frontends.accepted();
        s.request_done(c, FrontendReq::ConfigRead as u32, Status::Ok);
        s.frontend_named(c, "vmm");
        s.request_done(c, FrontendReq::ReportError as u32, Status::Permission);
        s.request_done(c, FrontendReq::ReportError as u32, Status::Permission);
        s.request_done(c, 999, Status::NotSupported);
        s.notified(c, "msi");
        s.notified(ConnectionId(8), "msi"); // no request of it reached the root complex: ignored
        let v = s.to_json(None);
        assert_eq!(v["frontends"].as_array().map(Vec::len), Some(1));
        let f = &v["frontends"][0];
        assert_eq!(
            (&f["name"], &f["requests"], &f["refused"]),
            (&json!("vmm"), &json!(4), &json!(3))
        );
        assert_eq!(
            f["refusals"],
            json!([
                {"request": "ReportError", "status": "EACCES", "count": 2},
                {"request": "unknown(999)", "status": "ENOSYS", "count": 1}
            ])
        );
        assert_eq!(f["notifications"], json!({"msi": 1}));
        assert_eq!(v["state-file"], Value::Null);
        s.frontend_gone(c);
        s.sockets.frontends.closed(); // one too many: stays at zero
        let v = s.to_json(None);
        assert_eq!(v["frontends"], json!([]));
        assert_eq!(
            v["requests"], 4,
            "requests of departed frontends still count"
        );
        assert_eq!(
            v["frontend-connections"],
            json!({"current": 0, "accepted": 1, "refused": 0})
        );
    }

    #[test]
    fn state_file_latency_has_a_mean_and_a_max() {
        let mut f = StateFileStats::default();
        f.record(true, Duration::from_micros(100));
        f.record(true, Duration::from_micros(300));
        f.record(false, Duration::from_micros(5));
        assert_eq!(
            f.to_json(),
            json!({"writes": 2, "failures": 1, "total-us": 400, "mean-us": 200, "max-us": 300})
        );
    }
}
