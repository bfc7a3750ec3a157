//! What the configuration snapshot (`SetConfigSnapshot`, `pcierc_protocol::snapshot`) needs
//! from the hierarchy: which functions changed since the last look, their register images,
//! and the routing of every (bus, devfn). Function slot `n` of the snapshot is function `n` of
//! [`Hierarchy::snapshot_functions`]: the MCH, then the root ports in topology order.

use pcierc_protocol::snapshot::{SnapshotHeader, ROUTE_ABSENT, ROUTE_REMOTE};

use super::{Hierarchy, Routed, Slot};
use crate::pci::PciFunction;

impl Hierarchy {
    /// Functions the snapshot holds: the MCH and every root port.
    pub fn snapshot_functions(&self) -> usize {
        1 + self.ports.len()
    }

    pub(super) fn mark_changed(&mut self, slot: Slot) {
        let i = match slot {
            Slot::Mch => 0,
            Slot::Port(p) => 1 + usize::from(p),
            _ => return,
        };
        if let Some(c) = self.changed.get_mut(i) {
            *c = true;
        }
    }

    pub(super) fn mark_all_changed(&mut self) {
        self.changed = vec![true; self.snapshot_functions()];
        self.routes_changed = true;
    }

    /// Forget what changed since the last call (no snapshot to bring up to date: nothing is
    /// collected, nothing allocated).
    pub fn discard_snapshot_changes(&mut self) {
        self.changed.fill(false);
        self.routes_changed = false;
    }

    /// The functions whose registers may have changed, and whether routing did, since the last
    /// call; clears both.
    pub fn take_snapshot_changes(&mut self) -> (Vec<usize>, bool) {
        let changed = self
            .changed
            .iter_mut()
            .enumerate()
            .filter_map(|(i, c)| std::mem::take(c).then_some(i))
            .collect();
        (changed, std::mem::take(&mut self.routes_changed))
    }

    /// Function `n`'s whole configuration space as a guest read would see it.
    pub fn snapshot_image(&self, n: usize) -> Vec<u8> {
        let f: Option<&dyn PciFunction> = match n {
            0 => Some(&self.mch),
            _ => self.ports.get(n - 1).map(|p| p as &dyn PciFunction),
        };
        f.map(PciFunction::config_image).unwrap_or_default()
    }

    /// Every (bus, devfn): absent, another emulator's, or snapshot function `n` (as `n + 1`).
    /// The same answers as [`Hierarchy::route`], one bus at a time: a bus no port owns is
    /// absent as a whole, so this costs the owned buses, not 65536 lookups.
    pub fn snapshot_routes(&self) -> Box<[u16; 65536]> {
        let mut t = Box::new([ROUTE_ABSENT; 65536]);
        let entry = |r: Routed| match r {
            Routed::Local(Slot::Mch) => 1,
            Routed::Local(Slot::Port(p)) => p + 2,
            Routed::Remote(_) => ROUTE_REMOTE,
            _ => ROUTE_ABSENT,
        };
        for bus in 0..=255u8 {
            if bus != 0 && self.bus_owner[usize::from(bus)] == 0 {
                continue;
            }
            let row = &mut t[usize::from(bus) << 8..][..256];
            for (devfn, e) in row.iter_mut().enumerate() {
                *e = entry(self.route(bus, devfn as u8));
            }
        }
        t
    }

    /// The snapshot header's routing fields.
    pub fn snapshot_header(&self) -> SnapshotHeader {
        let (ecam_base, ecam_size, ecam_buses) = match self.ecam() {
            Some((base, size, last)) => (base, size, (0, last)),
            None => (0, 0, (0, 0)),
        };
        SnapshotHeader {
            generation: self.generation,
            ecam_base,
            ecam_size,
            ecam_buses,
            config_address: self.config_address,
            segment: self.spec.segment,
        }
    }
}
