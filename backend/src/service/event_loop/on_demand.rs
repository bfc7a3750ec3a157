//! The root complex as the event loop reaches it: locked only when something it handles needs
//! it. The loop spends most of a connection flood on peers that never send a well-formed
//! request (a frontend's garbage header, a QMP client's broken JSON or a `qmp_capabilities`
//! it refuses), and none of that should make a negotiated frontend's thread wait for the lock
//! or hand it over: the lock is fair, so each acquisition by the loop costs a served frontend
//! a turn.

use parking_lot::FairMutexGuard;
use serde_json::Value;

use super::frontend_threads::Shared;
use super::RootComplex;
use crate::control::{AerInject, ControlError, ControlOps, DeviceAdd, SlotInfo};
use crate::service::stats::SocketCounters;

/// The shared root complex, locked on first use and released when dropped.
pub(super) struct OnDemand<'a> {
    shared: &'a Shared,
    counters: &'a SocketCounters,
    guard: Option<FairMutexGuard<'a, RootComplex>>,
}

impl<'a> OnDemand<'a> {
    pub(super) fn new(shared: &'a Shared, counters: &'a SocketCounters) -> Self {
        OnDemand {
            shared,
            counters,
            guard: None,
        }
    }

    /// The root complex, locking it if this is the first use.
    pub(super) fn get(&mut self) -> &mut RootComplex {
        let shared = self.shared;
        self.guard.get_or_insert_with(|| shared.lock())
    }

    /// Was the lock taken (so the handling may have queued QMP events)?
    pub(super) fn was_taken(&self) -> bool {
        self.guard.is_some()
    }
}

/// Every command locks, except what the QMP session answers itself (malformed input, commands
/// before or repeated negotiation, unknown commands), which never reaches these methods.
impl ControlOps for OnDemand<'_> {
    fn query_pci(&mut self) -> Value {
        self.get().query_pci()
    }
    fn device_add(&mut self, req: &DeviceAdd) -> Result<(), ControlError> {
        self.get().device_add(req)
    }
    fn device_del(&mut self, id: &str) -> Result<(), ControlError> {
        self.get().device_del(id)
    }
    fn inject_aer(&mut self, req: &AerInject) -> Result<(), ControlError> {
        self.get().inject_aer(req)
    }
    fn inject_pme(&mut self, id: &str) -> Result<(), ControlError> {
        self.get().inject_pme(id)
    }
    fn surprise_remove(&mut self, id: &str) -> Result<(), ControlError> {
        self.get().surprise_remove(id)
    }
    fn query_slots(&mut self) -> Vec<SlotInfo> {
        self.get().query_slots()
    }
    fn status(&mut self) -> String {
        self.get().status()
    }
    fn quit(&mut self) {
        self.get().quit()
    }
    fn query_stats(&mut self) -> Value {
        self.get().query_stats()
    }
    /// Counted without the lock.
    fn command_done(&mut self, ok: bool) {
        self.counters.command_done(ok)
    }
}
