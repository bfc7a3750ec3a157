//! The protocol handler: answers requests from the hierarchy of the segment they name
//! ([`Segments`]) and reports what changed.
//! What it keeps besides the hierarchy lives in components of their own, which it owns:
//! [`Ownership`] (who identified as whom, claims and releases), [`Irqfds`] (interrupt eventfds),
//! [`Snapshots`] (shared configuration snapshots), [`StateFile`] (persistence) and
//! [`ControlPlane`] (the QMP operations, pending requests and events); [`Stats`] counts.

use std::collections::BTreeMap;

use log::{debug, info, warn};
use pcierc_protocol::{
    BackendChannelSender, BackendHandler, ChipsetMemory, ConfigAddress, ConnectionId, ErrorReport,
    ErrorSeverityCode, Features, FrontendIdentity, FunctionAddress, FunctionClaim, FunctionRelease,
    FunctionReset, InterruptFd, IntxLevel, LayoutChanges, MsiMessage, Status, Topology,
};
use vmm_sys_util::eventfd::EventFd;

pub use super::control::ControlEvent;
use super::control::ControlPlane;
use super::irqfd::Irqfds;
use super::layout::LayoutTracker;
use super::ownership::Ownership;
use super::snapshot::Snapshots;
use super::state_file::StateFile;
use super::stats::{HotplugStats, SocketCounters, Stats};
use super::BACKEND_FEATURES;
use crate::control::query_pci::query_pci_segments;
use crate::control::{AerInject, ControlError, ControlOps, DeviceAdd, SlotInfo};
use crate::pci::{AerError, Effects, ErrorSeverity, Interrupt};
use crate::topology::hierarchy::{HierarchyEvent, HotplugError};
use crate::topology::{state, Hierarchy, Segments};

/// The root complex as the protocol sees it.
pub struct RootComplex {
    /// Every segment's hierarchy (segment 0's, the Q35 one, first).
    hierarchy: Segments,
    /// The names frontends identified with; functions' owners.
    ownership: Ownership,
    channels: BTreeMap<ConnectionId, BackendChannelSender>,
    /// The QMP control plane's state and events.
    control: ControlPlane,
    /// Interrupt eventfds frontends registered (`SetInterruptFd`).
    irqfds: Irqfds,
    /// Where the state is persisted (`--state-file`).
    state_file: Option<StateFile>,
    /// Frontends' configuration snapshots (`SetConfigSnapshot`).
    snapshots: Snapshots,
    /// Counters for `x-pcierc-query-stats`.
    stats: Stats,
    /// The layout last sent, for `LayoutDelta`s.
    layout: LayoutTracker,
}

impl RootComplex {
    /// Serve `hierarchy` (one [`Hierarchy`], or the [`Segments`] of a topology with extra
    /// segments).
    pub fn new(hierarchy: impl Into<Segments>) -> Self {
        let mut rc = RootComplex {
            hierarchy: hierarchy.into(),
            ownership: Ownership::default(),
            channels: BTreeMap::new(),
            control: ControlPlane::default(),
            irqfds: Irqfds::default(),
            state_file: None,
            snapshots: Snapshots::default(),
            stats: Stats::default(),
            layout: LayoutTracker::default(),
        };
        // The power-on state, reported as changes from here on.
        rc.control.slot_events(&rc.hierarchy);
        rc
    }

    /// Persist the state in `file` after every change (`--state-file`).
    pub fn with_state_file(mut self, file: StateFile) -> Self {
        self.state_file = Some(file);
        self
    }

    /// Segment 0's hierarchy (for tests and tools).
    pub fn hierarchy(&self) -> &Hierarchy {
        self.hierarchy.primary()
    }

    /// Segment 0's hierarchy, for the control plane's operations (callers then call
    /// [`Self::report`]).
    pub fn hierarchy_mut(&mut self) -> &mut Hierarchy {
        self.hierarchy.primary_mut()
    }

    /// Every segment's hierarchy.
    pub fn segments(&self) -> &Segments {
        &self.hierarchy
    }

    /// The hierarchy of segment `segment`; `ENODEV` for a segment pcierc does not have.
    fn segment_mut(&mut self, segment: u16) -> Result<&mut Hierarchy, Status> {
        self.hierarchy.get_mut(segment).ok_or(Status::NoDevice)
    }

    /// The operator's counters.
    pub fn stats_mut(&mut self) -> &mut Stats {
        &mut self.stats
    }

    /// The connection and QMP command counters, which the event loop updates without the lock.
    pub fn socket_counters(&self) -> std::sync::Arc<SocketCounters> {
        std::sync::Arc::clone(&self.stats.sockets)
    }

    /// Events for the control socket since the last call.
    pub fn take_control_events(&mut self) -> Vec<ControlEvent> {
        self.control.take_events()
    }

    /// Are events waiting for [`RootComplex::take_control_events`]?
    pub fn has_control_events(&self) -> bool {
        self.control.has_events()
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
            let name = self.ownership.name(conn).unwrap_or("?");
            warn!("frontend {name}: backend channel failed ({e}); no more notifications to it");
            self.channels.remove(&conn);
        }
    }

    /// Deliver what the hierarchy queued: interrupts to the frontends that inject them, added
    /// and removed functions to their owners and the control socket. Returns the layout
    /// changes the events imply.
    fn deliver_events(&mut self) -> LayoutChanges {
        let mut changes = LayoutChanges::empty();
        for (segment, ev) in self.hierarchy.take_events() {
            let h = &self.hierarchy;
            match ev {
                HierarchyEvent::Interrupt {
                    bus,
                    devfn,
                    interrupt:
                        Interrupt::Msi {
                            vector,
                            address,
                            data,
                        },
                } => {
                    // Frontends with an eventfd for this vector get a write, not a message
                    // (eventfds are registered for root-bus functions: bus 0, an expander's).
                    let root_bus = h.get(segment).is_some_and(|h| h.is_root_bus(bus));
                    let by_fd = if root_bus {
                        self.irqfds.signal(segment, bus, devfn, vector)
                    } else {
                        Vec::new()
                    };
                    for c in &by_fd {
                        self.stats.notified(*c, "msi-eventfd");
                    }
                    let m = MsiMessage {
                        address,
                        data,
                        segment,
                        bus,
                        devfn,
                    };
                    debug!(
                        "MSI from {segment:04x}:{bus:02x}:{:02x}.{}: {address:#x} <- {data:#x}",
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
                    bus,
                    devfn,
                    interrupt: Interrupt::Intx { asserted },
                } => {
                    let l = IntxLevel {
                        segment,
                        bus,
                        devfn,
                        pin: 1,
                        level: u8::from(asserted),
                        ..Default::default()
                    };
                    self.each_channel("intx", |_, ch| ch.wants_interrupts(), |ch| ch.intx(&l));
                }
                HierarchyEvent::FunctionAdded { endpoint } => {
                    changes |= LayoutChanges::FUNCTIONS;
                    let rec = h.endpoint_record(segment, &endpoint);
                    let owners = self.ownership.connections_of(&endpoint.owner);
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
                        function: h.endpoint_record(segment, &endpoint),
                        reason: reason as u32,
                        reserved: 0,
                    };
                    let owners = self.ownership.connections_of(&endpoint.owner);
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
                    let rec = h.endpoint_record(segment, &endpoint);
                    let owners = self.ownership.connections_of(&endpoint.owner);
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
                    self.stats.hotplug.device_deleted_events += 1;
                    self.control.device_deleted(&endpoint.id);
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
        // The snapshot holds segment 0 (its header names it); the others' changes are not
        // collected.
        let mut segments = self.hierarchy.iter_mut();
        if let Some(q35) = segments.next() {
            self.snapshots.sync(q35);
        }
        segments.for_each(Hierarchy::discard_snapshot_changes);
        self.sync_msi_routes();
        let mut changes = self.deliver_events();
        if effects.contains(Effects::SLOT) || changes.contains(LayoutChanges::FUNCTIONS) {
            self.control.slot_events(&self.hierarchy);
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
        let memory = self.hierarchy.primary().chipset_memory();
        if !changes.is_empty() {
            let delta = self.hierarchy.layout_delta();
            debug!("layout generation {}: {changes:?}", delta.generation);
            #[cfg(debug_assertions)]
            self.layout.check(&delta, self.hierarchy.describe());
            let serial = self.layout.next_serial();
            let whole = self
                .channels
                .values()
                .any(|ch| ch.needs_whole_layout(serial))
                .then(|| self.hierarchy.describe());
            let encoded = delta.encode();
            let notice = self.layout.notice(changes, &encoded, whole.as_ref());
            self.each_channel(
                "layout-changed",
                |_, _| true,
                |ch| ch.layout_notice(&notice),
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

    /// Send `MsiRoute` to every registered frontend whose vector's message or mask changed
    /// since it was last told (and at registration).
    fn sync_msi_routes(&mut self) {
        for (conn, route) in self.irqfds.stale_routes(&self.hierarchy) {
            self.each_channel("msi-route", |c, _| c == conn, |ch| ch.msi_route(&route));
        }
    }

    /// Report the effects of an operation that succeeded.
    fn reported<E>(&mut self, r: Result<Effects, E>) -> Result<(), E> {
        r.map(|fx| self.report(fx))
    }

    /// Count a hot-plug command: in `field` when it succeeded, as refused otherwise.
    fn count_hotplug(
        &mut self,
        r: &Result<(), ControlError>,
        field: impl FnOnce(&mut HotplugStats) -> &mut u64,
    ) {
        let h = &mut self.stats.hotplug;
        match r {
            Ok(()) => *field(h) += 1,
            Err(_) => h.refused += 1,
        }
    }
}

impl ControlOps for RootComplex {
    fn query_pci(&mut self) -> serde_json::Value {
        query_pci_segments(&self.hierarchy)
    }

    fn device_add(&mut self, req: &DeviceAdd) -> Result<(), ControlError> {
        // Ids are unique across segments; the port's segment checks its own.
        let r = if self.hierarchy.segment_of(&req.bus) != self.hierarchy.segment_of(&req.id)
            && self.hierarchy.id_in_use(&req.id)
        {
            Err(ControlError::Generic(
                HotplugError::Duplicate(req.id.clone()).to_string(),
            ))
        } else {
            let h = self.hierarchy.of_id_mut(&req.bus);
            self.control.device_add(h, req)
        };
        let r = self.reported(r);
        self.count_hotplug(&r, |h| &mut h.device_add);
        r
    }

    fn device_del(&mut self, id: &str) -> Result<(), ControlError> {
        let r = self.control.device_del(self.hierarchy.of_id_mut(id), id);
        let r = self.reported(r);
        // A slot the guest kept powered off gave the function up at once (DEVICE_DELETED is
        // already queued): nothing is pending then.
        if r.is_ok() && self.hierarchy.of_id_mut(id).endpoint(id).is_some() {
            self.control.unplug_requested(id);
        }
        self.count_hotplug(&r, |h| &mut h.device_del);
        r
    }

    fn inject_aer(&mut self, req: &AerInject) -> Result<(), ControlError> {
        let r = self
            .control
            .inject_aer(self.hierarchy.of_id_mut(&req.id), req);
        self.reported(r)
    }

    fn inject_pme(&mut self, id: &str) -> Result<(), ControlError> {
        let r = self.control.inject_pme(self.hierarchy.of_id_mut(id), id);
        self.reported(r)
    }

    fn surprise_remove(&mut self, id: &str) -> Result<(), ControlError> {
        let r = self
            .control
            .surprise_remove(self.hierarchy.of_id_mut(id), id);
        let r = self.reported(r);
        self.count_hotplug(&r, |h| &mut h.surprise_removals);
        r
    }

    fn query_slots(&mut self) -> Vec<SlotInfo> {
        self.control.slots(&self.hierarchy)
    }

    fn status(&mut self) -> String {
        "running".into()
    }

    fn quit(&mut self) {
        info!("control: quit");
    }

    fn query_stats(&mut self) -> serde_json::Value {
        let state_file = self.state_file.as_ref().map(|f| f.stats());
        self.stats.to_json(state_file)
    }

    fn command_done(&mut self, ok: bool) {
        self.stats.sockets.command_done(ok);
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
        let h = self.hierarchy.get(a.segment).ok_or(Status::NoDevice)?;
        h.config_read(a.bus, a.devfn, a.offset, width)
    }

    fn config_write(&mut self, a: ConfigAddress, width: u8, value: u32) -> Result<(), Status> {
        let effects = self
            .segment_mut(a.segment)?
            .config_write(a.bus, a.devfn, a.offset, width, value)?;
        self.report(effects);
        Ok(())
    }

    // Configuration mechanism #1 reaches segment 0 only (PCI Firmware 3.3 §4.1: other
    // segments are reachable through their MCFG windows alone).
    fn pio_read(&mut self, port: u64, width: u8) -> Result<u64, Status> {
        self.hierarchy.primary().pio_read(port, width)
    }

    fn pio_write(&mut self, port: u64, width: u8, value: u64) -> Result<(), Status> {
        let effects = self.hierarchy.primary_mut().pio_write(port, width, value)?;
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
        Ok(state::save_segments(&self.hierarchy))
    }

    fn load_state(&mut self, blob: &[u8]) -> Result<(), Status> {
        state::load_segments(&mut self.hierarchy, blob).map_err(|e| {
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
        self.hierarchy.primary().chipset_memory()
    }

    fn report_error(&mut self, conn: ConnectionId, r: &ErrorReport) -> Result<(), Status> {
        let e = self
            .hierarchy
            .get(r.segment)
            .ok_or(Status::NoDevice)?
            .endpoint_at(r.bus, r.devfn)
            .ok_or(Status::NoDevice)?;
        if !self.ownership.is_owner(conn, &e.owner) {
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
            .segment_mut(r.segment)?
            .report_error(r.bus, r.devfn, err)
            .map_err(|e| {
                warn!("error report refused: {e}");
                Status::Invalid
            })?;
        self.report(fx);
        Ok(())
    }

    fn raise_pme(&mut self, conn: ConnectionId, a: &FunctionAddress) -> Result<(), Status> {
        let e = self
            .hierarchy
            .get(a.segment)
            .ok_or(Status::NoDevice)?
            .endpoint_at(a.bus, a.devfn)
            .ok_or(Status::NoDevice)?;
        if !self.ownership.is_owner(conn, &e.owner) {
            return Err(Status::Permission);
        }
        let id = e.id.clone();
        let fx = self
            .segment_mut(a.segment)?
            .raise_pme(&id)
            .map_err(|_| Status::NoDevice)?;
        self.report(fx);
        Ok(())
    }

    fn frontend_identified(&mut self, conn: ConnectionId, who: &FrontendIdentity) {
        info!("frontend {} ({:?}) connected", who.name, who.role);
        self.ownership.identify(conn, &who.name);
        self.stats.frontend_named(conn, &who.name);
    }

    fn backend_channel(&mut self, conn: ConnectionId, sender: BackendChannelSender) {
        self.channels.insert(conn, sender);
    }

    fn disconnected(&mut self, conn: ConnectionId) {
        if let Some(name) = self.ownership.forget(conn) {
            info!("frontend {name} disconnected");
        }
        self.channels.remove(&conn);
        self.irqfds.drop_connection(conn);
        self.snapshots.remove(conn);
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
        self.snapshots.add(self.hierarchy.primary(), conn, file)
    }

    fn set_interrupt_fd(
        &mut self,
        conn: ConnectionId,
        req: &InterruptFd,
        fd: Option<EventFd>,
    ) -> Result<(), Status> {
        self.irqfds.register(&self.hierarchy, conn, req, fd)?;
        self.sync_msi_routes();
        Ok(())
    }

    fn claim_function(&mut self, conn: ConnectionId, c: &FunctionClaim) -> Result<(), Status> {
        // The port names the segment; ids are unique across segments.
        let port = pcierc_protocol::decode_name(&c.port).ok_or(Status::Invalid)?;
        let id = pcierc_protocol::decode_name(&c.id).ok_or(Status::Invalid)?;
        if self.hierarchy.segment_of(port) != self.hierarchy.segment_of(id)
            && self.hierarchy.id_in_use(id)
        {
            return Err(Status::Exists);
        }
        let h = self.hierarchy.of_id_mut(port);
        let r = self.ownership.claim(h, conn, c);
        self.reported(r)
    }

    fn release_function(&mut self, conn: ConnectionId, r: &FunctionRelease) -> Result<(), Status> {
        let id = pcierc_protocol::decode_name(&r.id).ok_or(Status::Invalid)?;
        let h = self.hierarchy.of_id_mut(id);
        let r = self.ownership.release(h, conn, r);
        self.reported(r)
    }
}
