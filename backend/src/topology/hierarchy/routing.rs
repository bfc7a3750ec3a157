//! The hierarchy's routing tables, kept up to date by what a write changed rather than rebuilt:
//! the bus -> port table (with the buses whose routing may have moved, for the configuration
//! snapshot) and the sorted map of the BARs pcierc's functions decode.
//!
//! Routing of a bus `b` (see [`Hierarchy::locate`] and [`Hierarchy::route`]) depends only on
//! the port that owns it (`bus_owner[b]`), whether `b` is that port's secondary bus, what sits
//! behind the port and whether its slot is powered. So a write that changes port `i`'s bus
//! numbers can only move the routing of buses whose owner changed and of `i`'s old and new
//! secondary buses; a slot power change only that of the port's secondary bus. That holds for a
//! tree of ports as for root ports alone: the owner of a bus is the deepest port that claims it
//! (below), and each port's table of what sits on its secondary bus is its own.

use std::ops::RangeInclusive;

use super::Hierarchy;
use crate::pci::bridge;
use crate::pci::port::PortFunction;
use crate::pci::PciFunction;

/// A set of bus numbers (256 bits).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct BusSet([u64; 4]);

impl BusSet {
    /// Every bus.
    pub const ALL: BusSet = BusSet([u64::MAX; 4]);

    /// Add `bus`.
    pub fn insert(&mut self, bus: u8) {
        self.0[usize::from(bus >> 6)] |= 1 << (bus & 63);
    }

    /// Is `bus` in the set?
    pub fn contains(&self, bus: u8) -> bool {
        self.0[usize::from(bus >> 6)] & 1 << (bus & 63) != 0
    }

    /// No bus at all?
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }

    /// The buses in the set, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u8> + '_ {
        (0..=255u8).filter(|&b| self.contains(b))
    }
}

/// The bus range a port with these Secondary and Subordinate Bus Numbers forwards Type 1
/// configuration cycles to, if any (PCI-to-PCI Bridge 1.2 §3.2.5.3; secondary bus 0 or a
/// subordinate below it forwards nothing).
fn bus_range(sec: u8, sub: u8) -> Option<std::ops::RangeInclusive<u8>> {
    (sec != 0 && sec <= sub).then_some(sec..=sub)
}

impl Hierarchy {
    /// Bring the bus -> port table up to date with the ports' bus-number registers, and record
    /// the buses whose routing may have changed. A configuration cycle for bus `b` goes down the
    /// tree as PCI-to-PCI Bridge 1.2 §3.2.5.3 and PCIe Base 6.0 §7.3.1 say: on the root bus the
    /// port whose [secondary, subordinate] holds `b` takes it; a port forwards it as Type 0 when
    /// `b` is its secondary bus, else as Type 1 on its secondary bus, where the port below
    /// whose range holds `b` takes it, and so on. The owner is the last port to take it. Among
    /// siblings claiming the same bus (a guest bug) the first in topology order wins, as a scan
    /// would find it. The table is 256 entries and is refilled from the ports' ranges (O(ports
    /// x buses) at worst, O(ports + buses) without switches); the expensive part, the
    /// snapshot's 65536 routes, is then refreshed only for the buses recorded here.
    pub(super) fn update_bus_map(&mut self) {
        let mut owner = [0u16; 256];
        // Expanders' root buses and the ports on them first: pcie.0's functions overwrite
        // what they share (a guest bug).
        self.claim_expanders(&mut owner);
        // Bridges on the root bus claim next: a root port claiming the same bus (a guest bug)
        // overwrites them.
        for j in self.top_bridges() {
            self.claim_bridge(&mut owner, j, 1..=255);
        }
        self.claim(&mut owner, &self.top_ports, 1..=255);
        for (b, (new, old)) in owner.iter().zip(&self.bus_owner).enumerate() {
            if new != old {
                self.dirty_buses.insert(b as u8);
                self.owner_moved.insert(b as u8);
            }
        }
        self.bus_owner = owner;
        self.port_sbr = self.ports.iter().map(sbr_held).collect();
        self.port_buses.resize(self.ports.len(), (0, 0));
        for (p, cached) in self.ports.iter().zip(self.port_buses.iter_mut()) {
            let now = (p.secondary_bus(), p.subordinate_bus());
            if now.0 != cached.0 {
                // Whether a bus is the port's secondary one (Type 0 cycles, device 0 only) or
                // one further down (Type 1, whoever emulates the switch) moved for these two.
                // (Bus 0 is the root bus: its routing never depends on a port.)
                for b in [cached.0, now.0].into_iter().filter(|&b| b != 0) {
                    self.dirty_buses.insert(b);
                }
            }
            *cached = now;
        }
        self.update_bridge_buses();
    }

    /// Let `siblings` (ports on one bus, in topology order) claim the buses of `allowed` (what
    /// reaches that bus as Type 1) their ranges hold, each then passing the buses above its
    /// secondary bus on to the ports on that bus. Later siblings go first so that earlier ones
    /// overwrite them; a port's descendants claim inside its range only, before the port's
    /// earlier siblings overwrite what they share.
    pub(super) fn claim(
        &self,
        owner: &mut [u16; 256],
        siblings: &[usize],
        allowed: RangeInclusive<u8>,
    ) {
        for &i in siblings.iter().rev() {
            let Some(p) = self.ports.get(i) else {
                continue;
            };
            let Some(range) = bus_range(p.secondary_bus(), p.subordinate_bus()) else {
                continue;
            };
            let (lo, hi) = (
                (*range.start()).max(*allowed.start()),
                (*range.end()).min(*allowed.end()),
            );
            if lo > hi {
                continue;
            }
            // While Bridge Control Secondary Bus Reset is held the port takes Type 0 cycles for
            // its secondary bus but forwards nothing beyond it (PCI-to-PCI Bridge 1.2
            // §3.2.5.18 holds the secondary interface in reset; QEMU's
            // pci_secondary_bus_in_range() does not walk a bus in reset).
            let hi = if sbr_held(p) {
                hi.min(p.secondary_bus())
            } else {
                hi
            };
            if lo > hi {
                continue;
            }
            for b in lo..=hi {
                owner[usize::from(b)] = i as u16 + 1;
            }
            // Type 1 cycles beyond the secondary bus go to the ports on it.
            if let Some(first) = p.secondary_bus().checked_add(1).filter(|&f| f <= hi) {
                if let Some(kids) = self.child_ports.get(i).filter(|k| !k.is_empty()) {
                    self.claim(owner, kids, first.max(lo)..=hi);
                }
                // A bridge filling the port's slot takes the buses below the port that its
                // range holds.
                if let Some(j) = self.bridge_below(i) {
                    self.claim_bridge(owner, j, first.max(lo)..=hi);
                }
            }
        }
    }

    /// Did port `port`'s Secondary Bus Reset change since the bus map was built (so what it
    /// forwards did)?
    pub(super) fn sbr_changed(&self, port: usize) -> bool {
        let now = self.ports.get(port).is_some_and(sbr_held);
        self.port_sbr.get(port).copied().unwrap_or(false) != now
    }

    /// Port `port`'s slot power may have changed: whether the functions on its secondary bus
    /// answer does (see [`Hierarchy::route`]).
    pub(super) fn slot_power_changed(&mut self, port: usize) {
        if let Some(p) = self.ports.get(port) {
            let b = p.secondary_bus();
            if b != 0 {
                self.dirty_buses.insert(b);
            }
        }
    }

    /// Replace port `port`'s entries in the BAR map with the BARs it decodes now: O(BARs) to
    /// remove and insert in the sorted map, instead of collecting and sorting every port's.
    pub(super) fn update_port_bars(&mut self, port: usize) {
        let Some(p) = self.ports.get(port) else {
            return;
        };
        let tag = port as u16;
        self.bar_map.retain(|&(.., owner, _)| owner != tag);
        for b in p.bars() {
            let entry = (b.base, b.size, tag, b.index);
            let at = self.bar_map.partition_point(|e| *e < entry);
            self.bar_map.insert(at, entry);
        }
        self.bars_overlap = overlapping(&self.bar_map);
    }

    /// The BAR map built from scratch (power-on, reset, restore; and what the incremental
    /// updates must always equal).
    pub(super) fn full_bar_map(&self) -> Vec<(u64, u64, u16, u8)> {
        let mut map = Vec::new();
        for (i, p) in self.ports.iter().enumerate() {
            for b in p.bars() {
                map.push((b.base, b.size, i as u16, b.index));
            }
        }
        // Bridges are tagged after the ports (emulated index).
        for (j, b) in self.bridges.iter().enumerate() {
            for bar in b.bars() {
                let tag = (self.ports.len() + j) as u16;
                map.push((bar.base, bar.size, tag, bar.index));
            }
        }
        map.sort_unstable();
        map
    }

    /// Rebuild every routing table from the registers (power-on, platform reset, restore).
    pub(super) fn rebuild_routing(&mut self) {
        self.bar_map = self.full_bar_map();
        self.bars_overlap = overlapping(&self.bar_map);
        self.update_bus_map();
        self.dirty_buses = BusSet::ALL;
    }
}

/// Is Bridge Control Secondary Bus Reset set (PCI-to-PCI Bridge 1.2 §3.2.5.18)?
pub(super) fn sbr_held(p: &crate::devices::RootPort) -> bool {
    p.config_read(bridge::BRIDGE_CONTROL, 2) as u16 & bridge::BRIDGE_CTL_BUS_RESET != 0
}

/// Do any two BARs of a sorted map overlap?
pub(super) fn overlapping(map: &[(u64, u64, u16, u8)]) -> bool {
    map.windows(2)
        .any(|w| w[0].0.saturating_add(w[0].1) > w[1].0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_sets_hold_every_bus_number() {
        let mut s = BusSet::default();
        assert!(s.is_empty());
        for b in [0u8, 63, 64, 127, 128, 255] {
            s.insert(b);
        }
        assert_eq!(s.iter().collect::<Vec<_>>(), [0, 63, 64, 127, 128, 255]);
        assert!(!s.contains(1) && s.contains(255));
        assert_eq!(BusSet::ALL.iter().count(), 256);
    }

    #[test]
    fn only_valid_ranges_forward() {
        assert_eq!(bus_range(0, 5), None);
        assert_eq!(bus_range(3, 2), None);
        assert_eq!(bus_range(2, 2), Some(2..=2));
    }
}
