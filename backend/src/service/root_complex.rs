//! The protocol handler: answers requests from the [`Hierarchy`] and reports what changed.

use std::collections::BTreeMap;
use std::time::Instant;

use log::{debug, info, warn};
use pcierc_protocol::{
    BackendChannelSender, BackendHandler, ChipsetMemory, ConfigAddress, ConnectionId, ErrorReport,
    ErrorSeverityCode, Features, FrontendIdentity, FunctionAddress, FunctionClaim, FunctionRelease,
    FunctionReset, InterruptFd, IntxLevel, LayoutChanges, MsiMessage, Status, Topology,
};
use vmm_sys_util::eventfd::EventFd;

use super::state_file::StateFile;
use super::stats::Stats;
use super::BACKEND_FEATURES;
use crate::pci::{AerError, Effects, ErrorSeverity, Interrupt};
use crate::topology::hierarchy::HierarchyEvent;
use crate::topology::{state, Hierarchy};

#[path = "control.rs"]
mod control;
#[path = "irqfd.rs"]
mod irqfd;
#[path = "ownership.rs"]
mod ownership;
#[path = "snapshot.rs"]
mod snapshot;

/// An event for the control socket's sessions (QMP `event` name and `data`).
#[derive(Clone, Debug, PartialEq)]
pub struct ControlEvent {
    /// QMP event name, e.g. `DEVICE_DELETED`.
    pub name: &'static str,
    /// Its `data` member.
    pub data: serde_json::Value,
}

/// The root complex as the protocol sees it.
pub struct RootComplex {
    hierarchy: Hierarchy,
    frontends: BTreeMap<ConnectionId, String>,
    channels: BTreeMap<ConnectionId, BackendChannelSender>,
    control_events: Vec<ControlEvent>,
    /// `device_del` requests the guest has not completed, and when they were made.
    unplug_requests: BTreeMap<String, Instant>,
    /// Interrupt eventfds frontends registered (`SetInterruptFd`).
    irqfds: irqfd::Irqfds,
    /// Each root port's slot as last reported on the control socket.
    slots: Vec<control::SlotView>,
    /// Where the state is persisted (`--state-file`).
    state_file: Option<StateFile>,
    /// Frontends' configuration snapshots (`SetConfigSnapshot`).
    snapshots: BTreeMap<ConnectionId, pcierc_protocol::snapshot::SnapshotWriter>,
    /// The routing table they all hold.
    snapshot_routes: Option<Box<[u16; 65536]>>,
    /// Counters for `x-pcierc-query-stats`.
    stats: Stats,
}

impl RootComplex {
    /// Serve `hierarchy`.
    pub fn new(hierarchy: Hierarchy) -> Self {
        let mut rc = RootComplex {
            hierarchy,
            frontends: BTreeMap::new(),
            channels: BTreeMap::new(),
            control_events: Vec::new(),
            unplug_requests: BTreeMap::new(),
            irqfds: irqfd::Irqfds::default(),
            slots: Vec::new(),
            state_file: None,
            snapshots: BTreeMap::new(),
            snapshot_routes: None,
            stats: Stats::default(),
        };
        rc.slot_events(); // the power-on state, reported as changes from here on
        rc
    }

    /// Persist the state in `file` after every change (`--state-file`).
    pub fn with_state_file(mut self, file: StateFile) -> Self {
        self.state_file = Some(file);
        self
    }

    /// The hierarchy (for tests and tools).
    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hierarchy
    }

    /// The hierarchy, for the control plane's operations (callers then call [`Self::report`]).
    pub fn hierarchy_mut(&mut self) -> &mut Hierarchy {
        &mut self.hierarchy
    }

    /// The operator's counters (the event loop counts connections here).
    pub fn stats_mut(&mut self) -> &mut Stats {
        &mut self.stats
    }

    /// Events for the control socket since the last call.
    pub fn take_control_events(&mut self) -> Vec<ControlEvent> {
        std::mem::take(&mut self.control_events)
    }

    /// The connections of the frontends named `owner`.
    fn owner_conns(&self, owner: &str) -> Vec<ConnectionId> {
        self.frontends
            .iter()
            .filter(|(_, n)| n.as_str() == owner)
            .map(|(c, _)| *c)
            .collect()
    }

    /// Send `f` (a notification of `kind`, counted) to every channel `pick` selects; channels
    /// that fail are dropped.
    fn each_channel(
        &mut self,
        kind: &'static str,
        pick: impl Fn(ConnectionId, &BackendChannelSender) -> bool,
        mut f: impl FnMut(&mut BackendChannelSender) -> pcierc_protocol::Result<()>,
    ) {
        let mut dead = Vec::new();
        for (conn, ch) in &mut self.channels {
            if pick(*conn, ch) {
                match f(ch) {
                    Ok(()) => self.stats.notified(*conn, kind),
                    Err(e) => dead.push((*conn, e)),
                }
            }
        }
        for (conn, e) in dead {
            let name = self.frontends.get(&conn).map_or("?", String::as_str);
            warn!("frontend {name}: backend channel failed ({e}); no more notifications to it");
            self.channels.remove(&conn);
        }
    }

    /// Deliver what the hierarchy queued: interrupts to the frontends that inject them, added
    /// and removed functions to their owners and the control socket. Returns the layout
    /// changes the events imply.
    fn deliver_events(&mut self) -> LayoutChanges {
        let mut changes = LayoutChanges::empty();
        for ev in self.hierarchy.take_events() {
            match ev {
                HierarchyEvent::Interrupt {
                    devfn,
                    interrupt:
                        Interrupt::Msi {
                            vector,
                            address,
                            data,
                        },
                } => {
                    // Frontends with an eventfd for this vector get a write, not a message.
                    let by_fd = self.irqfds.signal(devfn, vector);
                    for c in &by_fd {
                        self.stats.notified(*c, "msi-eventfd");
                    }
                    let m = MsiMessage {
                        address,
                        data,
                        segment: self.hierarchy.spec().segment,
                        bus: 0,
                        devfn,
                    };
                    debug!(
                        "MSI from 00:{:02x}.{}: {address:#x} <- {data:#x}",
                        devfn >> 3,
                        devfn & 7
                    );
                    self.each_channel(
                        "msi",
                        |c, ch| ch.wants_interrupts() && !by_fd.contains(&c),
                        |ch| ch.msi(&m),
                    );
                }
                HierarchyEvent::Interrupt {
                    devfn,
                    interrupt: Interrupt::Intx { asserted },
                } => {
                    let l = IntxLevel {
                        segment: self.hierarchy.spec().segment,
                        devfn,
                        pin: 1,
                        level: u8::from(asserted),
                        ..Default::default()
                    };
                    self.each_channel("intx", |_, ch| ch.wants_interrupts(), |ch| ch.intx(&l));
                }
                HierarchyEvent::FunctionAdded { endpoint } => {
                    changes |= LayoutChanges::FUNCTIONS;
                    let rec = self.hierarchy.endpoint_record(&endpoint);
                    let owners = self.owner_conns(&endpoint.owner);
                    info!(
                        "{} hot-added behind {} (owner {})",
                        endpoint.id, endpoint.bus, endpoint.owner
                    );
                    self.each_channel(
                        "function-added",
                        |c, _| owners.contains(&c),
                        |ch| ch.function_added(&rec),
                    );
                }
                HierarchyEvent::FunctionReset { endpoint, reason } => {
                    let r = FunctionReset {
                        function: self.hierarchy.endpoint_record(&endpoint),
                        reason: reason as u32,
                        reserved: 0,
                    };
                    let owners = self.owner_conns(&endpoint.owner);
                    info!(
                        "{} behind {} reset ({reason:?}; owner {}, {} connected)",
                        endpoint.id,
                        endpoint.bus,
                        endpoint.owner,
                        owners.len()
                    );
                    self.each_channel(
                        "function-reset",
                        |c, _| owners.contains(&c),
                        |ch| ch.function_reset(&r),
                    );
                }
                HierarchyEvent::FunctionRemoved { endpoint, surprise } => {
                    changes |= LayoutChanges::FUNCTIONS;
                    let rec = self.hierarchy.endpoint_record(&endpoint);
                    let owners = self.owner_conns(&endpoint.owner);
                    info!(
                        "{} removed from {} (owner {}{})",
                        endpoint.id,
                        endpoint.bus,
                        endpoint.owner,
                        if surprise { ", surprise" } else { "" }
                    );
                    self.each_channel(
                        "function-removed",
                        |c, _| owners.contains(&c),
                        |ch| ch.function_removed(&rec),
                    );
                    self.unplug_requests.remove(&endpoint.id);
                    self.stats.hotplug.device_deleted_events += 1;
                    self.control_events.push(ControlEvent {
                        name: "DEVICE_DELETED",
                        data: serde_json::json!({ "device": endpoint.id, "path": format!("/machine/peripheral/{}", endpoint.id) }),
                    });
                }
            }
        }
        changes
    }

    /// Tell every frontend what an operation changed: deliver the hierarchy's events, then
    /// layout and chipset-memory notifications to every backend channel.
    pub fn report(&mut self, effects: Effects) {
        // Order matters: the snapshots and MSI routes first, so a guest's interrupt handler
        // (woken by the eventfd or message below) and a frontend woken by a notification read
        // the state after the change, never before it.
        self.sync_snapshots();
        self.sync_msi_routes();
        let mut changes = self.deliver_events();
        if effects.contains(Effects::SLOT) || changes.contains(LayoutChanges::FUNCTIONS) {
            self.slot_events();
        }
        // Before the reply to the request that changed it is sent.
        if let Some(f) = &mut self.state_file {
            f.persist(&self.hierarchy);
        }
        for (e, c) in [
            (Effects::ECAM, LayoutChanges::ECAM),
            (Effects::BUS_NUMBERS, LayoutChanges::BUS_NUMBERS),
            (Effects::WINDOWS, LayoutChanges::WINDOWS),
            (Effects::BARS, LayoutChanges::BARS),
        ] {
            if effects.contains(e) {
                changes |= c;
            }
        }
        if changes.is_empty() && !effects.contains(Effects::CHIPSET_MEMORY) {
            return;
        }
        let topology = (!changes.is_empty()).then(|| self.hierarchy.describe());
        let memory = self.hierarchy.chipset_memory();
        if let Some(t) = &topology {
            debug!("layout generation {}: {changes:?}", t.generation);
        }
        if let Some(t) = &topology {
            self.each_channel(
                "layout-changed",
                |_, _| true,
                |ch| ch.layout_changed(changes, t),
            );
        }
        if effects.contains(Effects::CHIPSET_MEMORY) {
            self.each_channel(
                "chipset-memory-changed",
                |_, _| true,
                |ch| ch.chipset_memory_changed(&memory),
            );
        }
    }
}

impl BackendHandler for RootComplex {
    fn features(&mut self) -> Features {
        BACKEND_FEATURES
    }

    fn topology(&mut self) -> Topology {
        self.hierarchy.describe()
    }

    fn config_read(&mut self, a: ConfigAddress, width: u8) -> Result<u32, Status> {
        if a.segment != self.hierarchy.spec().segment {
            return Err(Status::NoDevice);
        }
        self.hierarchy.config_read(a.bus, a.devfn, a.offset, width)
    }

    fn config_write(&mut self, a: ConfigAddress, width: u8, value: u32) -> Result<(), Status> {
        if a.segment != self.hierarchy.spec().segment {
            return Err(Status::NoDevice);
        }
        let effects = self
            .hierarchy
            .config_write(a.bus, a.devfn, a.offset, width, value)?;
        self.report(effects);
        Ok(())
    }

    fn pio_read(&mut self, port: u64, width: u8) -> Result<u64, Status> {
        self.hierarchy.pio_read(port, width)
    }

    fn pio_write(&mut self, port: u64, width: u8, value: u64) -> Result<(), Status> {
        let effects = self.hierarchy.pio_write(port, width, value)?;
        self.report(effects);
        Ok(())
    }

    fn mmio_read(&mut self, addr: u64, width: u8) -> Result<u64, Status> {
        self.hierarchy.mmio_read(addr, width)
    }

    fn mmio_write(&mut self, addr: u64, width: u8, value: u64) -> Result<(), Status> {
        let effects = self.hierarchy.mmio_write(addr, width, value)?;
        self.report(effects);
        Ok(())
    }

    fn reset(&mut self) -> Result<(), Status> {
        info!("platform reset");
        let effects = self.hierarchy.reset();
        self.report(effects | Effects::SLOT);
        Ok(())
    }

    fn save_state(&mut self) -> Result<Vec<u8>, Status> {
        Ok(state::save(&self.hierarchy))
    }

    fn load_state(&mut self, blob: &[u8]) -> Result<(), Status> {
        state::load(&mut self.hierarchy, blob).map_err(|e| {
            warn!("load state refused: {e}");
            Status::BadMessage
        })?;
        self.report(
            Effects::ECAM
                | Effects::BUS_NUMBERS
                | Effects::WINDOWS
                | Effects::BARS
                | Effects::CHIPSET_MEMORY
                | Effects::SLOT,
        );
        Ok(())
    }

    fn chipset_memory(&mut self) -> ChipsetMemory {
        self.hierarchy.chipset_memory()
    }

    fn report_error(&mut self, conn: ConnectionId, r: &ErrorReport) -> Result<(), Status> {
        if r.segment != self.hierarchy.spec().segment {
            return Err(Status::NoDevice);
        }
        let e = self
            .hierarchy
            .endpoint_at(r.bus, r.devfn)
            .ok_or(Status::NoDevice)?;
        if self.frontends.get(&conn).map(String::as_str) != Some(e.owner.as_str()) {
            return Err(Status::Permission);
        }
        let severity = match ErrorSeverityCode::try_from(r.severity) {
            Ok(ErrorSeverityCode::Correctable) => ErrorSeverity::Correctable,
            Ok(ErrorSeverityCode::NonFatal) => ErrorSeverity::NonFatal,
            Ok(ErrorSeverityCode::Fatal) => ErrorSeverity::Fatal,
            Err(_) => return Err(Status::Invalid),
        };
        let err = AerError {
            severity,
            status: r.status,
            requester: 0,
            header_log: r.header_log,
        };
        let fx = self
            .hierarchy
            .report_error(r.bus, r.devfn, err)
            .map_err(|e| {
                warn!("error report refused: {e}");
                Status::Invalid
            })?;
        self.report(fx);
        Ok(())
    }

    fn raise_pme(&mut self, conn: ConnectionId, a: &FunctionAddress) -> Result<(), Status> {
        if a.segment != self.hierarchy.spec().segment {
            return Err(Status::NoDevice);
        }
        let e = self
            .hierarchy
            .endpoint_at(a.bus, a.devfn)
            .ok_or(Status::NoDevice)?;
        if self.frontends.get(&conn).map(String::as_str) != Some(e.owner.as_str()) {
            return Err(Status::Permission);
        }
        let id = e.id.clone();
        let fx = self
            .hierarchy
            .raise_pme(&id)
            .map_err(|_| Status::NoDevice)?;
        self.report(fx);
        Ok(())
    }

    fn frontend_identified(&mut self, conn: ConnectionId, who: &FrontendIdentity) {
        info!("frontend {} ({:?}) connected", who.name, who.role);
        self.frontends.insert(conn, who.name.clone());
        self.stats.frontend_named(conn, &who.name);
    }

    fn backend_channel(&mut self, conn: ConnectionId, sender: BackendChannelSender) {
        self.channels.insert(conn, sender);
    }

    fn disconnected(&mut self, conn: ConnectionId) {
        if let Some(name) = self.frontends.remove(&conn) {
            info!("frontend {name} disconnected");
        }
        self.channels.remove(&conn);
        self.irqfds.drop_connection(conn);
        self.snapshots.remove(&conn);
        self.stats.frontend_gone(conn);
    }

    fn request_done(&mut self, conn: ConnectionId, request: u32, status: Status) {
        self.stats.request_done(conn, request, status);
    }

    fn set_config_snapshot(
        &mut self,
        conn: ConnectionId,
        file: std::fs::File,
    ) -> Result<(), Status> {
        self.add_snapshot(conn, file)
    }

    fn set_interrupt_fd(
        &mut self,
        conn: ConnectionId,
        req: &InterruptFd,
        fd: Option<EventFd>,
    ) -> Result<(), Status> {
        self.register_irqfd(conn, req, fd)
    }

    fn claim_function(&mut self, conn: ConnectionId, c: &FunctionClaim) -> Result<(), Status> {
        self.claim(conn, c)
    }

    fn release_function(&mut self, conn: ConnectionId, r: &FunctionRelease) -> Result<(), Status> {
        self.release(conn, r)
    }
}
