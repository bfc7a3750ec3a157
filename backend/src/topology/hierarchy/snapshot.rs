//! What the configuration snapshot (`SetConfigSnapshot`, `pcierc_protocol::snapshot`) needs
//! from the hierarchy: which functions changed since the last look, their register images,
//! and the routing of every (bus, devfn). Function slot `n` of the snapshot is function `n` of
//! [`Hierarchy::snapshot_functions`]: the MCH, then the ports in topology order, then the
//! `pcie-pci-bridge`s, then the `pxb-pcie`s.

use pcierc_protocol::snapshot::{SnapshotHeader, ROUTE_ABSENT, ROUTE_REMOTE};

use super::{BusSet, Hierarchy, Slot};
use crate::pci::port::PortFunction;
use crate::pci::PciFunction;

impl Hierarchy {
    /// Functions the snapshot holds: the MCH, every port (root and switch ports), every
    /// `pcie-pci-bridge` and every `pxb-pcie`.
    pub fn snapshot_functions(&self) -> usize {
        1 + self.ports.len() + self.bridges.len() + self.expanders.len()
    }

    pub(super) fn mark_changed(&mut self, slot: Slot) {
        let i = match slot {
            Slot::Mch => 0,
            Slot::Port(p) => 1 + usize::from(p),
            Slot::Bridge(j) => 1 + self.ports.len() + usize::from(j),
            Slot::Expander(x) => 1 + self.expander_index(usize::from(x)),
            _ => return,
        };
        if let Some(c) = self.changed.get_mut(i) {
            *c = true;
        }
        self.described.mark(i);
    }

    pub(super) fn mark_all_changed(&mut self) {
        self.changed = vec![true; self.snapshot_functions()];
        self.dirty_buses = BusSet::ALL;
        self.described.mark_all(self.snapshot_functions());
    }

    /// The endpoints (spec indices) on emulated function `k`'s secondary bus (port `k`, or
    /// bridge `k - ports`).
    pub(crate) fn endpoints_below(&self, k: usize) -> Vec<usize> {
        let table = match k.checked_sub(self.ports.len()) {
            None => self.children.get(k),
            Some(j) => self.bridge_children.get(j),
        };
        table
            .into_iter()
            .flatten()
            .filter_map(|s| match s {
                Slot::Endpoint(e) => Some(usize::from(*e)),
                _ => None,
            })
            .collect()
    }

    /// What changed in the topology ([`Hierarchy::describe`]) since the last call: the records
    /// and ranges of the functions whose registers changed (the ones
    /// [`Hierarchy::take_snapshot_changes`] reports, tracked apart), as a delta from the
    /// topology of the last call.
    pub fn layout_delta(&mut self) -> pcierc_protocol::LayoutDelta {
        let mut cache = std::mem::take(&mut self.described);
        // A bus that changed owner (sibling ports claiming it, a port above renumbered) moves
        // the reachability of what sits on it: the ports whose secondary bus it is are
        // described again, with what is below them.
        let moved = std::mem::take(&mut self.owner_moved);
        if !moved.is_empty() {
            for (i, p) in self.ports.iter().enumerate() {
                if moved.contains(p.secondary_bus()) {
                    cache.mark(1 + i);
                    // The bridge in its slot is on that bus.
                    if let Some(j) = self.bridge_below(i) {
                        cache.mark(1 + self.ports.len() + j);
                    }
                }
            }
            for (j, b) in self.bridges.iter().enumerate() {
                if moved.contains(b.secondary_bus()) {
                    cache.mark(1 + self.ports.len() + j);
                }
            }
        }
        let d = self.layout_delta_cached(&mut cache);
        self.described = cache;
        d
    }

    /// Forget what changed since the last call (no snapshot to bring up to date: nothing is
    /// collected, nothing allocated).
    pub fn discard_snapshot_changes(&mut self) {
        self.changed.fill(false);
        self.dirty_buses = BusSet::default();
    }

    /// The functions whose registers may have changed, and the buses whose routing may have
    /// (see [`Hierarchy::snapshot_route_row`]), since the last call; clears both.
    pub fn take_snapshot_changes(&mut self) -> (Vec<usize>, BusSet) {
        let changed = self
            .changed
            .iter_mut()
            .enumerate()
            .filter_map(|(i, c)| std::mem::take(c).then_some(i))
            .collect();
        (changed, std::mem::take(&mut self.dirty_buses))
    }

    /// Function `n`'s whole configuration space as a guest read would see it.
    pub fn snapshot_image(&self, n: usize) -> Vec<u8> {
        let f: Option<&dyn PciFunction> = match n {
            0 => Some(&self.mch),
            _ => self.function(self.emulated_slot(n - 1)),
        };
        f.map(PciFunction::config_image).unwrap_or_default()
    }

    /// Every (bus, devfn): absent, another emulator's, or snapshot function `n` (as `n + 1`),
    /// built from scratch (a new snapshot; and what the incremental updates must equal).
    pub fn snapshot_routes(&self) -> Box<[u16; 65536]> {
        let mut t = Box::new([ROUTE_ABSENT; 65536]);
        for bus in 0..=255u8 {
            if bus != 0 && self.bus_owner[usize::from(bus)] == 0 {
                continue;
            }
            t[usize::from(bus) << 8..][..256].copy_from_slice(&self.snapshot_route_row(bus));
        }
        t
    }

    /// The routing entries of one bus (`routes[bus * 256 ..][..256]`): the same answers as
    /// [`Hierarchy::route`], without asking it 256 times. A bus no port owns is absent as a
    /// whole; one below a port's secondary bus belongs as a whole to whoever emulates function
    /// 0 behind the port (a switch); on a secondary bus only device 0 answers (PCIe Base 6.0
    /// §7.3.1), and only while the slot is powered.
    pub fn snapshot_route_row(&self, bus: u8) -> [u16; 256] {
        let mut row = [ROUTE_ABSENT; 256];
        let remote = |e: Option<u16>| e.map_or(ROUTE_ABSENT, |_| ROUTE_REMOTE);
        if bus == 0 {
            for (devfn, e) in row.iter_mut().enumerate() {
                *e = match self.root[devfn] {
                    Slot::Mch => 1,
                    Slot::Port(p) => p + 2,
                    Slot::Bridge(j) => self.bridge_route(j),
                    Slot::Expander(x) => (2 + self.expander_index(usize::from(x))) as u16,
                    Slot::Endpoint(_) => ROUTE_REMOTE,
                    Slot::Empty => ROUTE_ABSENT,
                };
            }
            return row;
        }
        let Some(port) = usize::from(self.bus_owner[usize::from(bus)]).checked_sub(1) else {
            return row;
        };
        if let Some(x) = port.checked_sub(self.ports.len() + self.bridges.len()) {
            // An expander's root bus: its root ports.
            self.expander_route_row(x, bus, &mut row);
            return row;
        }
        if let Some(j) = port.checked_sub(self.ports.len()) {
            // A bridge's secondary bus: devices 1-31 (Type 0); nothing past it.
            if let (Some(b), Some(children)) = (self.bridges.get(j), self.bridge_children.get(j)) {
                if b.secondary_bus() == bus {
                    for (e, s) in row.iter_mut().zip(children.iter()).skip(8) {
                        if let Slot::Endpoint(_) = s {
                            *e = ROUTE_REMOTE;
                        }
                    }
                }
            }
            return row;
        }
        let (Some(p), Some(children)) = (self.ports.get(port), self.children.get(port)) else {
            return row;
        };
        let entry = |s: &Slot| match s {
            Slot::Port(j) => j + 2,
            Slot::Bridge(j) => self.bridge_route(*j),
            Slot::Endpoint(_) => ROUTE_REMOTE,
            Slot::Empty | Slot::Mch | Slot::Expander(_) => ROUTE_ABSENT,
        };
        if bus != p.secondary_bus() {
            row.fill(remote(match children[0] {
                Slot::Endpoint(e) => Some(e),
                _ => None,
            }));
        } else if !p.kind().has_slot() || p.slot_powered() {
            let devices = if p.kind().device0_only() { 8 } else { 256 };
            for (e, s) in row.iter_mut().zip(children.iter()).take(devices) {
                *e = entry(s);
            }
        }
        row
    }

    /// The snapshot route entry of bridge `j`: its function slot `1 + ports + j`, plus one.
    fn bridge_route(&self, j: u16) -> u16 {
        (2 + self.ports.len() + usize::from(j)) as u16
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
