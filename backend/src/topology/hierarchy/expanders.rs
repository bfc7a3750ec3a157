//! The `pxb-pcie` expanders of the hierarchy: each is a function on the root bus that opens
//! one more root bus of the segment, numbered by its `bus_nr` property rather than by any
//! bridge's registers, on which root ports sit.
//!
//! How QEMU 7.2 routes to it (`pci_find_bus_nr()` in hw/pci/pci.c): the expander's bus is a
//! child of `pcie.0` whose number is `bus_nr`; a cycle for `bus_nr` lands on it, and one for a
//! bus a port on it claims (`pci_root_bus_in_range()`) goes down that port as below any root
//! port. So in the bus-owner table an expander owns `bus_nr` and its ports claim their ranges
//! as `pcie.0`'s do (see `routing::update_bus_map`).
//!
//! Expanders are numbered after the ports and the bridges wherever the hierarchy numbers its
//! functions: emulated index `k = ports + bridges + x` for expander `x` (the bus-owner table
//! stores `k + 1`, the configuration snapshot and the topology record number it `1 + k`).

use super::{Hierarchy, Routed, Slot};
use crate::devices::PxbPcie;

impl Hierarchy {
    /// The expander models, in spec order.
    pub fn expanders(&self) -> &[PxbPcie] {
        &self.expanders
    }

    /// The number of expander `x`'s root bus (0 for no such expander).
    pub fn expander_bus(&self, x: usize) -> u8 {
        self.expanders.get(x).map_or(0, PxbPcie::bus_nr)
    }

    /// The expander whose root bus port `i` sits on, if it sits on one.
    pub fn port_root(&self, i: usize) -> Option<usize> {
        self.port_roots.get(i).copied().flatten().map(usize::from)
    }

    /// Is `bus` a root bus: 0, or an expander's (numbered by its `bus_nr`, no register)?
    pub fn is_root_bus(&self, bus: u8) -> bool {
        bus == 0 || self.expanders.iter().any(|x| x.bus_nr() == bus)
    }

    /// The ports on expander `x`'s root bus, in topology order.
    pub fn expander_ports(&self, x: usize) -> &[usize] {
        self.expander_ports.get(x).map_or(&[], Vec::as_slice)
    }

    /// The emulated index of expander `x` (see the module documentation).
    pub(super) fn expander_index(&self, x: usize) -> usize {
        self.ports.len() + self.bridges.len() + x
    }

    /// Build the expanders' tables from the spec: which ports sit on each one's root bus, by
    /// devfn and in topology order. Called by `rebuild_slots`, which places the expanders
    /// themselves on the root bus.
    pub(super) fn rebuild_expander_slots(&mut self) {
        let n = self.spec.expanders.len();
        self.expander_children = vec![[Slot::Empty; 256]; n];
        self.expander_ports = vec![Vec::new(); n];
        self.port_roots = self
            .spec
            .root_ports
            .iter()
            .map(|p| {
                self.spec
                    .expanders
                    .iter()
                    .position(|x| x.config.id == p.bus)
                    .map(|x| x as u16)
            })
            .collect();
        for (i, (root, p)) in self
            .port_roots
            .iter()
            .zip(&self.spec.root_ports)
            .enumerate()
        {
            if let Some(x) = root.map(usize::from) {
                self.expander_children[x][usize::from(p.addr.0)] = Slot::Port(i as u16);
                self.expander_ports[x].push(i);
            }
        }
    }

    /// Let the expanders claim their buses in the bus-owner table: each its own root bus, and
    /// through the ports on it the ranges they claim. The later expanders go first so that
    /// earlier ones overwrite what they share (a guest or configuration bug); an expander's own
    /// number wins over its ports' ranges, as QEMU compares a child bus's number before it
    /// looks into its ranges.
    ///
    /// A port on an expander's bus holding Secondary Bus Reset claims nothing, not even its
    /// secondary bus (where a root port on `pcie.0` keeps taking Type 0 cycles): QEMU 7.2 looks
    /// into an expander's bus only when a bridge on it not in reset has the bus in range
    /// (`pci_root_bus_in_range()` -> `pci_secondary_bus_in_range()`), so with the only such
    /// port in reset the cycle never reaches the expander's bus.
    pub(super) fn claim_expanders(&self, owner: &mut [u16; 256]) {
        for x in (0..self.expanders.len()).rev() {
            let ports: Vec<usize> = self
                .expander_ports(x)
                .iter()
                .copied()
                .filter(|&i| !self.ports.get(i).is_some_and(super::routing::sbr_held))
                .collect();
            self.claim(owner, &ports, 1..=255);
            let bus = self.expander_bus(x);
            if bus != 0 {
                owner[usize::from(bus)] = (self.expander_index(x) + 1) as u16;
            }
        }
    }

    /// [`Hierarchy::locate`] for a bus expander `x` owns: its root bus, where the root ports
    /// sit at any devfn (a root bus has every device number).
    pub(super) fn locate_on_expander(&self, x: usize, bus: u8, devfn: u8) -> Routed {
        let Some(children) = self.expander_children.get(x) else {
            return Routed::Absent;
        };
        if bus != self.expander_bus(x) {
            return Routed::Absent;
        }
        match children[usize::from(devfn)] {
            Slot::Port(i) => Routed::Local(Slot::Port(i)),
            _ => Routed::Absent,
        }
    }

    /// The snapshot route row of expander `x`'s root bus (`Hierarchy::snapshot_route_row`).
    pub(super) fn expander_route_row(&self, x: usize, bus: u8, row: &mut [u16; 256]) {
        let Some(children) = self.expander_children.get(x) else {
            return;
        };
        if bus != self.expander_bus(x) {
            return;
        }
        for (e, s) in row.iter_mut().zip(children.iter()) {
            if let Slot::Port(i) = s {
                *e = i + 2;
            }
        }
    }
}
