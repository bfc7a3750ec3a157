//! The `pcie-pci-bridge`s of the hierarchy: where they sit (on the root bus, or at device 0 on
//! a root or downstream port's secondary bus), the conventional bus below each (functions other
//! emulators serve at devices 1-31, Type 0 only: nothing but endpoints can be below it), and
//! what a write to one changes.
//!
//! Bridges are numbered after the ports wherever the hierarchy numbers its functions: the
//! "emulated index" `k` is port `k` for `k < ports` and bridge `k - ports` after; the bus
//! owner table stores `k + 1`, the configuration snapshot and the topology record number it
//! `1 + k`. Lookups stay O(1).

use pcierc_protocol::ResetReason;

use super::{Hierarchy, HierarchyEvent, Slot};
use crate::devices::PciePciBridge;
use crate::pci::bridge;
use crate::pci::port::PortFunction;
use crate::pci::{Effects, PciFunction};
use crate::topology::spec::ROOT_BUS;

impl Hierarchy {
    /// The bridge models, in spec order.
    pub fn bridges(&self) -> &[PciePciBridge] {
        &self.bridges
    }

    /// Build the bridges' placement tables from the spec: which port's slot each fills (`None`
    /// on the root bus) and the functions below each. Called by `rebuild_slots`, which places
    /// the bridges themselves in the root and port tables.
    pub(super) fn rebuild_bridge_slots(&mut self) {
        let port_index = |id: &str| {
            self.spec
                .root_ports
                .iter()
                .position(|p| p.config.id == id)
                .map(|i| i as u16)
        };
        self.bridge_parents = self
            .spec
            .bridges
            .iter()
            .map(|b| (b.bus != ROOT_BUS).then(|| port_index(&b.bus)).flatten())
            .collect();
        self.bridge_children = vec![[Slot::Empty; 256]; self.spec.bridges.len()];
        for (i, e) in self.spec.endpoints.iter().enumerate() {
            if let Some(j) = self.spec.bridges.iter().position(|b| b.config.id == e.bus) {
                self.bridge_children[j][usize::from(e.addr.0)] = Slot::Endpoint(i as u16);
            }
        }
    }

    /// The functions below the bridges declared in the topology are present from power-on:
    /// their SHPC slots are enabled with a card (QEMU's cold plug, `shpc_device_plug_cb()`).
    /// The SHPC keeps what is occupied across its resets.
    pub(super) fn present_bridge_cards(&mut self) {
        for (j, children) in self.bridge_children.iter().enumerate() {
            for (devfn, s) in children.iter().enumerate() {
                if matches!(s, Slot::Endpoint(_)) && devfn & 7 == 0 {
                    if let Some(b) = self.bridges.get_mut(j) {
                        // Validated: devices 1-31 only.
                        if let Err(e) = b.set_present((devfn >> 3) as u8) {
                            log::warn!("{}: {e}", self.spec.bridges[j].config.id);
                        }
                    }
                }
            }
        }
    }

    /// The index of the port bridge `j` sits behind (`None` on the root bus).
    pub fn bridge_parent(&self, j: usize) -> Option<usize> {
        self.bridge_parents
            .get(j)
            .copied()
            .flatten()
            .map(usize::from)
    }

    /// The bus bridge `j` sits on now: 0, or its port's secondary bus.
    pub fn bridge_bus(&self, j: usize) -> u8 {
        self.bridge_parent(j)
            .and_then(|p| self.ports.get(p))
            .map_or(0, |p| p.secondary_bus())
    }

    /// The bridge in port `i`'s slot, if any.
    pub(super) fn bridge_below(&self, i: usize) -> Option<usize> {
        match self.children.get(i).map(|c| c[0]) {
            Some(Slot::Bridge(j)) => Some(usize::from(j)),
            _ => None,
        }
    }

    /// The bridges on the root bus.
    pub(super) fn top_bridges(&self) -> Vec<usize> {
        (0..self.bridges.len())
            .filter(|&j| self.bridge_parent(j).is_none())
            .collect()
    }

    /// Every bridge below port `i`: in its slot or in the slot of a port of its subtree.
    pub fn bridges_below(&self, i: usize) -> Vec<usize> {
        std::iter::once(i)
            .chain(self.ports_below(i))
            .filter_map(|p| self.bridge_below(p))
            .collect()
    }

    /// The secondary bus of emulated function `k` (port `k`, or bridge `k - ports`).
    pub fn emulated_secondary_bus(&self, k: usize) -> u8 {
        match k.checked_sub(self.ports.len()) {
            None => self.ports.get(k).map_or(0, |p| p.secondary_bus()),
            Some(j) => self.bridges.get(j).map_or(0, |b| b.secondary_bus()),
        }
    }

    /// The slot of emulated function `k` (port `k`, bridge `k - ports`, then the expanders).
    pub(super) fn emulated_slot(&self, k: usize) -> Slot {
        match k.checked_sub(self.ports.len()) {
            None => Slot::Port(k as u16),
            Some(j) => match j.checked_sub(self.bridges.len()) {
                None => Slot::Bridge(j as u16),
                Some(x) => Slot::Expander(x as u16),
            },
        }
    }

    /// Bridge `j` claims the buses of `allowed` its range holds (the bus-owner table: `k + 1`
    /// with `k = ports + j`). Nothing is below a conventional bus but endpoints, so the buses
    /// past its secondary bus are its own and read as absent.
    pub(super) fn claim_bridge(
        &self,
        owner: &mut [u16; 256],
        j: usize,
        allowed: std::ops::RangeInclusive<u8>,
    ) {
        let Some(b) = self.bridges.get(j) else {
            return;
        };
        let (sec, sub) = (b.secondary_bus(), b.subordinate_bus());
        // PCI-to-PCI Bridge 1.2 §3.2.5.3: secondary bus 0 or a subordinate below it forwards
        // nothing.
        if sec == 0 || sec > sub {
            return;
        }
        let lo = sec.max(*allowed.start());
        let hi = sub.min(*allowed.end());
        // While Secondary Bus Reset is held the bridge forwards nothing past its secondary bus
        // (§3.2.5.18); past it there is nothing anyway.
        let hi = if bridge_sbr_held(b) { hi.min(sec) } else { hi };
        for bus in lo..=hi {
            owner[usize::from(bus)] = (self.ports.len() + j + 1) as u16;
        }
    }

    /// Whether each bridge's Secondary Bus Reset is held and its bus numbers, as the bus map
    /// was built from them; the secondary buses that moved are dirty for the snapshot.
    pub(super) fn update_bridge_buses(&mut self) {
        self.bridge_sbr = self.bridges.iter().map(bridge_sbr_held).collect();
        self.bridge_buses.resize(self.bridges.len(), 0);
        for (b, cached) in self.bridges.iter().zip(self.bridge_buses.iter_mut()) {
            let now = b.secondary_bus();
            if now != *cached {
                for bus in [*cached, now].into_iter().filter(|&x| x != 0) {
                    self.dirty_buses.insert(bus);
                }
            }
            *cached = now;
        }
    }

    /// A configuration or SHPC write to bridge `j` returned `effects`: apply them to the
    /// routing tables and deliver what the guest started. A Secondary Bus Reset of the bridge
    /// (PCI-to-PCI Bridge 1.2 §3.2.5.18) resets the functions below it (their owners are told).
    pub(super) fn after_bridge(&mut self, j: usize, effects: Effects) -> Effects {
        self.mark_changed(Slot::Bridge(j as u16));
        let mut effects = effects;
        if effects.contains(Effects::SECONDARY_BUS_RESET) {
            self.reset_endpoints_below_bridge(j, ResetReason::SecondaryBusReset);
        }
        if self.bridge_sbr.get(j).copied().unwrap_or(false)
            != self.bridges.get(j).is_some_and(bridge_sbr_held)
        {
            effects |= Effects::BUS_NUMBERS;
        }
        if effects.contains(Effects::BUS_NUMBERS) {
            self.update_bus_map();
        }
        if effects.contains(Effects::BARS) {
            self.bar_map = self.full_bar_map();
            self.bars_overlap = super::routing::overlapping(&self.bar_map);
        }
        if effects.contains(Effects::SLOT) {
            effects |= self.remove_released(j);
        }
        if effects.contains(Effects::INTERRUPT) {
            let devfn = self.spec.bridges[j].addr.0;
            let bus = self.bridge_bus(j);
            for interrupt in self.bridges[j].take_interrupts() {
                self.events.push(HierarchyEvent::Interrupt {
                    bus,
                    devfn,
                    interrupt,
                });
            }
        }
        effects
    }

    /// The guest disabled SHPC slots of bridge `j` holding cards (with the power indicator
    /// off): the functions there leave, as QEMU unplugs them (`shpc_slot_command()`); their
    /// owners are told.
    fn remove_released(&mut self, j: usize) -> Effects {
        let Some(b) = self.bridges.get_mut(j) else {
            return Effects::empty();
        };
        let devices = b.take_released();
        self.remove_below_bridge(j, &devices, false);
        Effects::empty()
    }

    /// A `FunctionReset` for every function below bridge `j`.
    pub(super) fn reset_endpoints_below_bridge(&mut self, j: usize, reason: ResetReason) {
        let Some(id) = self.spec.bridges.get(j).map(|b| b.config.id.clone()) else {
            return;
        };
        for endpoint in self.spec.endpoints.iter().filter(|e| e.bus == id) {
            self.events.push(HierarchyEvent::FunctionReset {
                endpoint: endpoint.clone(),
                reason,
            });
        }
    }

    /// Reset bridges `js` to their power-on state with the functions below them (a Secondary
    /// Bus Reset or power removal of the port above).
    pub(super) fn reset_bridges(&mut self, js: &[usize], reason: ResetReason) {
        for &j in js {
            if let Some(b) = self.bridges.get_mut(j) {
                b.reset();
                b.take_interrupts();
                b.take_released();
            }
            self.mark_changed(Slot::Bridge(j as u16));
            self.reset_endpoints_below_bridge(j, reason);
        }
    }
}

/// Is the bridge's Bridge Control Secondary Bus Reset set (PCI-to-PCI Bridge 1.2 §3.2.5.18)?
fn bridge_sbr_held(b: &PciePciBridge) -> bool {
    b.config_read(bridge::BRIDGE_CONTROL, 2) as u16 & bridge::BRIDGE_CTL_BUS_RESET != 0
}
