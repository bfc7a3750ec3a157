//! pcierc's notifications: layout changes become map/unmap dm_ops, interrupts become
//! `inject_msi` / `set_pci_intx_level`.

use log::{debug, warn};
use pcierc_protocol::Notification;

use super::translate::Translator;
use super::{ShimError, ShimStatus};
use crate::abi::dm_op::xen_dm_op;
use crate::hypervisor::Hypervisor;
use crate::server::dm_op;

impl<H: Hypervisor> Translator<'_, H> {
    /// Apply every notification that has arrived. A notification that fails validation is
    /// logged and skipped; a broken channel is fatal (the routing could no longer follow).
    pub(super) fn drain(&mut self) -> Result<(), ShimError> {
        loop {
            match self.channel.try_recv() {
                Ok(Some(n)) => self.notification(n),
                Ok(None) => return Ok(()),
                Err(e) if e.should_disconnect() => return Err(e.into()),
                Err(e) => warn!("bad notification from pcierc: {e}"),
            }
        }
    }

    fn notification(&mut self, n: Notification) {
        match n {
            Notification::LayoutChanged { changes, topology } => {
                debug!("layout generation {}: {changes:?}", topology.generation);
                self.routing.apply(self.hv, topology);
                self.status.set_generation(self.routing.generation());
            }
            Notification::LayoutResync {
                changes,
                generation,
            } => {
                // A delta that did not fit the layout held: never route by a stale layout.
                warn!("pcierc layout {generation}: resynchronising (GetTopology)");
                match self.channel.resync(self.pcierc, changes) {
                    Ok(n) => self.notification(n),
                    Err(e) => warn!("resynchronising pcierc's layout: {e}"),
                }
            }
            Notification::Msi(m) => {
                match dm_op(self.hv, xen_dm_op::inject_msi(m.address, m.data)) {
                    Ok(_) => ShimStatus::bump(&self.status.msis),
                    Err(e) => warn!(
                        "MSI {:#x} <- {:#x} from {:02x}:{:02x}.{}: {e}",
                        m.address,
                        m.data,
                        m.bus,
                        m.devfn >> 3,
                        m.devfn & 7
                    ),
                }
            }
            Notification::Intx(l) => {
                // Xen 4.17 accepts INTx only for segment 0, bus 0 (FLOW.md §4).
                if l.segment != 0 || l.bus != 0 || !(1..=4).contains(&l.pin) {
                    warn!("INTx of {l:?}: Xen takes INTx only from bus 0 of segment 0");
                    return;
                }
                let op = xen_dm_op::set_pci_intx_level(0, 0, l.devfn >> 3, l.pin - 1, l.level != 0);
                match dm_op(self.hv, op) {
                    Ok(_) => ShimStatus::bump(&self.status.intx),
                    Err(e) => warn!("INTx of {l:?}: {e}"),
                }
            }
            other => debug!("ignored notification {other:?}"),
        }
    }
}
