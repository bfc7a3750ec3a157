//! The hierarchy pcierc serves: the MCH, the root ports, the PCI Express switches below them
//! (upstream and downstream ports, a tree), the `pcie-pci-bridge`s, the `pxb-pcie` expanders
//! with the root ports on their root buses, and the functions other emulators own behind the
//! ports. Routes configuration cycles (mechanism #1 and ECAM) and BAR accesses to the function
//! models, applies their [`Effects`] and keeps the layout generation.

use pcierc_protocol::{width_mask, AccessKind, ChipsetMemory, ResetReason, Status};

use super::addr::DevFn;
use super::spec::{TopologySpec, ROOT_BUS};
use crate::devices::{HostBridge, Mch, PciePciBridge, PxbPcie, RootPort, SegmentHostBridge};
use crate::pci::port::PortFunction;
use crate::pci::{Effects, Interrupt, PciFunction, Width};
use crate::topology::report::DescribeCache;
use crate::topology::spec::EndpointSpec;
use crate::topology::StateError;

mod bridge_hotplug;
mod bridges;
mod expanders;
mod hotplug;
mod routing;
mod snapshot;
pub use hotplug::HotplugError;
pub use routing::BusSet;

/// Something the service must deliver after an operation: interrupts to the frontends that
/// inject them, and functions arriving or leaving to their owners (and the control socket).
#[derive(Clone, Debug, PartialEq)]
pub enum HierarchyEvent {
    /// A port pcierc emulates (at `bus`, `devfn` now) raised an interrupt.
    Interrupt {
        /// The bus the port sits on now: 0 for root ports, the parent's secondary bus for
        /// switch ports.
        bus: u8,
        /// Devfn of the port on its bus.
        devfn: u8,
        /// The MSI-X message or INTx level.
        interrupt: Interrupt,
    },
    /// A function behind a port was hot-added.
    FunctionAdded {
        /// The function.
        endpoint: EndpointSpec,
    },
    /// A function behind a port is gone: the guest powered the slot off, or it was surprise-removed.
    FunctionRemoved {
        /// The function.
        endpoint: EndpointSpec,
        /// Surprise removal (no guest involvement).
        surprise: bool,
    },
    /// A function behind a port was reset: a Secondary Bus Reset of the port, its slot powered
    /// off with the card in it, or a platform reset. Its owner resets the device.
    FunctionReset {
        /// The function.
        endpoint: EndpointSpec,
        /// Why.
        reason: ResetReason,
    },
}

/// I/O port of CONFIG_ADDRESS (PCI Local Bus 3.0 §3.2.2.3.2, configuration mechanism #1).
pub const CONFIG_ADDRESS_PORT: u64 = 0xcf8;
/// First I/O port of CONFIG_DATA.
pub const CONFIG_DATA_PORT: u64 = 0xcfc;
/// CONFIG_ADDRESS bit 31: configuration cycles enabled.
const CONFIG_ENABLE: u32 = 1 << 31;

/// What sits at an address on the root bus or behind a port.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Slot {
    /// Nothing: reads return all ones, writes are dropped (Unsupported Request).
    Empty,
    /// The host bridge.
    Mch,
    /// Port `n` (index into the spec's `root_ports`: a root port or a switch port).
    Port(u16),
    /// Endpoint `n` (index into the spec's `endpoints`), served by another emulator.
    Endpoint(u16),
    /// `pcie-pci-bridge` `n` (index into the spec's `bridges`).
    Bridge(u16),
    /// `pxb-pcie` `n` (index into the spec's `expanders`), on the root bus.
    Expander(u16),
}

/// Where a configuration access landed.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Routed {
    /// A function pcierc emulates.
    Local(Slot),
    /// A function served by another emulator (endpoint index).
    Remote(u16),
    /// No function: all ones / dropped.
    Absent,
}

/// The hierarchy state.
#[derive(Clone)]
pub struct Hierarchy {
    spec: TopologySpec,
    /// The host bridge at 00.0: the MCH in segment 0, a plain one with a fixed ECAM window in
    /// an extra segment.
    mch: HostBridge,
    ports: Vec<RootPort>,
    /// The `pcie-pci-bridge`s, in spec order (see `bridges.rs` for how they are numbered).
    bridges: Vec<PciePciBridge>,
    /// Per bridge: the port whose slot it fills (`None` on the root bus).
    bridge_parents: Vec<Option<u16>>,
    /// Per bridge: devfn on its secondary bus -> the function another emulator serves there.
    bridge_children: Vec<[Slot; 256]>,
    /// Per bridge: the secondary bus and Secondary Bus Reset `bus_owner` was built from.
    bridge_buses: Vec<u8>,
    bridge_sbr: Vec<bool>,
    /// The `pxb-pcie`s, in spec order (see `expanders.rs`).
    expanders: Vec<PxbPcie>,
    /// Per expander: devfn on its root bus -> the root port there.
    expander_children: Vec<[Slot; 256]>,
    /// Per expander: the ports on its root bus, in topology order.
    expander_ports: Vec<Vec<usize>>,
    /// Per port: the expander whose root bus it sits on (`None`: `pcie.0` or behind a port).
    port_roots: Vec<Option<u16>>,
    /// Root bus: devfn -> slot.
    root: [Slot; 256],
    /// Per port: devfn on its secondary bus -> what sits there (switch ports pcierc emulates,
    /// functions other emulators serve). Below a root or downstream port only device 0 is used.
    children: Vec<[Slot; 256]>,
    /// Per port: the index of the port it sits behind (`None` on the root bus).
    parents: Vec<Option<u16>>,
    /// The ports on the root bus, then per port the ports on its secondary bus, in topology
    /// order (the tree `routing::update_bus_map` walks).
    top_ports: Vec<usize>,
    child_ports: Vec<Vec<usize>>,
    /// Bus number -> the port or bridge that claims it (0 = none, else emulated index + 1): the deepest port whose
    /// secondary..=subordinate range holds it among those the cycle reaches (see
    /// `routing::update_bus_map`).
    bus_owner: [u16; 256],
    /// Per port: the (secondary, subordinate) bus numbers `bus_owner` was built from.
    port_buses: Vec<(u8, u8)>,
    /// Per port: whether Bridge Control Secondary Bus Reset was held when `bus_owner` was built.
    port_sbr: Vec<bool>,
    config_address: u32,
    generation: u64,
    /// Undelivered events, drained by [`Hierarchy::take_events`].
    events: Vec<HierarchyEvent>,
    /// Functions (0 = MCH, 1 + i = port i) whose registers may have changed since the last
    /// [`Hierarchy::take_snapshot_changes`], and the buses whose routing may have.
    changed: Vec<bool>,
    dirty_buses: BusSet,
    /// Buses whose owning port changed since the last [`Hierarchy::layout_delta`]: the
    /// functions on them may have become (un)reachable without a write of their own.
    owner_moved: BusSet,
    /// Decoding BARs of the functions pcierc emulates, sorted by base: (base, size, port, BAR).
    bar_map: Vec<(u64, u64, u16, u8)>,
    /// Some of them overlap (a guest's mistake): look up by scanning, lowest port first.
    bars_overlap: bool,
    /// The topology by parts, for the functions in `changed` ([`Hierarchy::layout_delta`]).
    described: DescribeCache,
}

impl Hierarchy {
    /// Build the hierarchy at power-on state from a validated spec: of the spec's own segment
    /// ([`TopologySpec::for_segment`]; the Q35 hierarchy for segment 0; the other segments of
    /// the topology are [`super::Segments`]' other hierarchies).
    pub fn new(spec: TopologySpec) -> crate::Result<Self> {
        spec.validate()?;
        let spec = spec.for_segment(spec.segment);
        let mch = match spec.segments.first() {
            Some(own) => HostBridge::Segment(SegmentHostBridge::new(own.ecam())),
            None => HostBridge::Mch(Mch::new()),
        };
        let ports: Vec<RootPort> = spec
            .root_ports
            .iter()
            .map(|p| RootPort::on_machine(p.config.clone(), spec.machine))
            .collect();
        let bridges: Vec<PciePciBridge> = spec
            .bridges
            .iter()
            .map(|b| PciePciBridge::on_machine(b.config.clone(), spec.machine))
            .collect();
        let expanders: Vec<PxbPcie> = spec
            .expanders
            .iter()
            .map(|x| PxbPcie::new(x.config.clone()))
            .collect();
        let mut h = Hierarchy {
            bridges,
            expanders,
            expander_children: Vec::new(),
            expander_ports: Vec::new(),
            port_roots: Vec::new(),
            bridge_parents: Vec::new(),
            bridge_children: Vec::new(),
            bridge_buses: Vec::new(),
            bridge_sbr: Vec::new(),
            children: Vec::new(),
            parents: Vec::new(),
            top_ports: Vec::new(),
            child_ports: Vec::new(),
            spec,
            mch,
            ports,
            root: [Slot::Empty; 256],
            bus_owner: [0; 256],
            port_buses: Vec::new(),
            port_sbr: Vec::new(),
            config_address: 0,
            generation: 1,
            events: Vec::new(),
            changed: Vec::new(),
            dirty_buses: BusSet::ALL,
            owner_moved: BusSet::default(),
            bar_map: Vec::new(),
            bars_overlap: false,
            described: DescribeCache::default(),
        };
        h.mark_all_changed();
        h.rebuild_slots();
        // Functions and switches declared in the topology are present from power-on: their
        // slots are occupied.
        h.present_occupied(0..h.ports.len());
        h.present_bridge_cards();
        h.sync_links();
        h.rebuild_routing();
        Ok(h)
    }

    /// Rebuild the root bus and per-port tables from the spec (after functions come or go).
    fn rebuild_slots(&mut self) {
        self.mark_all_changed();
        self.rebuild_expander_slots();
        self.root = [Slot::Empty; 256];
        self.root[0] = Slot::Mch;
        let n = self.ports.len();
        self.children = vec![[Slot::Empty; 256]; n];
        let index = |id: &str| {
            self.spec
                .root_ports
                .iter()
                .position(|p| p.config.id == id)
                .map(|i| i as u16)
        };
        self.parents = self
            .spec
            .root_ports
            .iter()
            .map(|p| (p.bus != ROOT_BUS).then(|| index(&p.bus)).flatten())
            .collect();
        self.top_ports = Vec::new();
        self.child_ports = vec![Vec::new(); n];
        for (i, parent) in self.parents.iter().enumerate() {
            match parent.and_then(|up| self.child_ports.get_mut(usize::from(up))) {
                Some(kids) => kids.push(i),
                // The root ports of expanders' buses are in `expander_ports`.
                None if self.port_roots.get(i).copied().flatten().is_some() => {}
                None => self.top_ports.push(i),
            }
        }
        let place = |bus: &str| (bus != ROOT_BUS).then(|| index(bus)).flatten();
        let mut placed: Vec<(Option<u16>, u8, Slot)> = Vec::new();
        for (i, p) in self.spec.root_ports.iter().enumerate() {
            if self.port_roots.get(i).copied().flatten().is_none() {
                placed.push((place(&p.bus), p.addr.0, Slot::Port(i as u16)));
            }
        }
        for (i, x) in self.spec.expanders.iter().enumerate() {
            placed.push((None, x.addr.0, Slot::Expander(i as u16)));
        }
        for (i, b) in self.spec.bridges.iter().enumerate() {
            placed.push((place(&b.bus), b.addr.0, Slot::Bridge(i as u16)));
        }
        for (i, e) in self.spec.endpoints.iter().enumerate() {
            if e.bus == ROOT_BUS {
                placed.push((None, e.addr.0, Slot::Endpoint(i as u16)));
            } else if let Some(pi) = place(&e.bus) {
                placed.push((Some(pi), e.addr.0, Slot::Endpoint(i as u16)));
            }
        }
        for (parent, devfn, slot) in placed {
            let table = match parent {
                None => &mut self.root,
                Some(pi) => match self.children.get_mut(usize::from(pi)) {
                    Some(t) => t,
                    None => continue,
                },
            };
            table[usize::from(devfn)] = slot;
        }
        self.rebuild_bridge_slots();
    }

    /// Is something (a function another emulator serves, or a switch) in port `i`'s slot?
    fn occupied(&self, i: usize) -> bool {
        let has_slot = self.ports.get(i).is_some_and(|p| p.kind().has_slot());
        has_slot
            && self
                .children
                .get(i)
                .is_some_and(|c| c[..8].iter().any(|s| *s != Slot::Empty))
    }

    /// Is a function another emulator serves in port `i`'s slot?
    fn holds_endpoints(&self, i: usize) -> bool {
        self.children
            .get(i)
            .is_some_and(|c| c[..8].iter().any(|s| matches!(s, Slot::Endpoint(_))))
    }

    /// Mark the slots of `ports` that hold something occupied from power-on (no event).
    fn present_occupied(&mut self, ports: impl IntoIterator<Item = usize>) {
        for i in ports {
            if self.occupied(i) {
                self.ports[i].set_present();
            }
        }
    }

    /// A port whose slot holds a switch's upstream port or a pcie-pci-bridge shows that link's
    /// speed and width in its Link Status, as QEMU's `pcie_sync_bridge_lnk()` does on every read.
    fn sync_links(&mut self) {
        use crate::devices::{pcie_pci_bridge, root_port::xio3130};
        use crate::pci::caps::express::LNKSTA;
        for i in 0..self.ports.len() {
            // A pcie-pci-bridge has a PCI Express capability too (a PCI Express-to-PCI
            // bridge): QEMU copies its link as it does an upstream port's.
            let lnksta = match self.children.get(i).map(|c| c[0]) {
                Some(Slot::Port(up)) => self
                    .ports
                    .get(usize::from(up))
                    .map(|p| p.config_read(u16::from(xio3130::EXP_OFFSET) + LNKSTA, 2) as u16),
                Some(Slot::Bridge(j)) => self.bridges.get(usize::from(j)).map(|b| {
                    b.config_read(u16::from(pcie_pci_bridge::EXP_OFFSET) + LNKSTA, 2) as u16
                }),
                _ => None,
            };
            if let Some(lnksta) = lnksta {
                self.ports[i].port_mut().sync_link(lnksta);
            }
        }
    }

    /// The bus a port sits on now: 0, an expander's root bus, or its parent's secondary bus.
    pub fn port_bus(&self, i: usize) -> u8 {
        match self.parents.get(i).copied().flatten() {
            Some(up) => self
                .ports
                .get(usize::from(up))
                .map_or(0, |p| p.secondary_bus()),
            None => self.port_root(i).map_or(0, |x| self.expander_bus(x)),
        }
    }

    /// What sits on port `i`'s secondary bus, by devfn: switch ports pcierc emulates and
    /// functions other emulators serve.
    pub fn children_of(&self, i: usize) -> impl Iterator<Item = (u8, Slot)> + '_ {
        self.children
            .get(i)
            .into_iter()
            .flat_map(|c| c.iter().enumerate())
            .filter(|(_, s)| **s != Slot::Empty)
            .map(|(devfn, s)| (devfn as u8, *s))
    }

    /// The index of the port port `i` sits behind, if it is a switch port.
    pub fn port_parent(&self, i: usize) -> Option<usize> {
        self.parents.get(i).copied().flatten().map(usize::from)
    }

    /// Every port below port `i` (its subtree, `i` excluded), parents before children.
    pub fn ports_below(&self, i: usize) -> Vec<usize> {
        let mut out: Vec<usize> = self.child_ports.get(i).cloned().unwrap_or_default();
        let mut at = 0;
        // Each port is some port's child once (the spec has no cycles), so this ends.
        while at < out.len() && out.len() <= self.ports.len() {
            let p = out[at];
            at += 1;
            out.extend(self.child_ports.get(p).into_iter().flatten().copied());
        }
        out
    }

    /// Does a configuration cycle for `bus` reach emulated function `k`'s secondary bus (port
    /// `k`, or bridge `k - ports`, owns it and it is its secondary bus)?
    pub fn bus_claimed_by(&self, bus: u8, k: usize) -> bool {
        bus != 0
            && usize::from(self.bus_owner[usize::from(bus)]) == k + 1
            && self.emulated_secondary_bus(k) == bus
    }

    /// The root port above port `i` (`i` itself for a root port).
    pub fn root_port_of(&self, i: usize) -> usize {
        let mut at = i;
        // The spec forbids cycles; the bound only guards against a broken one.
        for _ in 0..=self.ports.len() {
            match self.port_parent(at) {
                Some(up) => at = up,
                None => break,
            }
        }
        at
    }

    /// The spec this hierarchy was built from.
    pub fn spec(&self) -> &TopologySpec {
        &self.spec
    }

    /// The layout generation: incremented on every guest-visible routing change.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The host bridge model (the MCH in segment 0).
    pub fn mch(&self) -> &HostBridge {
        &self.mch
    }

    /// The saved-state and topology-record name of the host bridge: `mch` in segment 0, the
    /// segment's id in an extra one.
    pub fn host_bridge_id(&self) -> &str {
        self.spec.segments.first().map_or("mch", |s| s.id.as_str())
    }

    /// The root port models, in spec order.
    pub fn ports(&self) -> &[RootPort] {
        &self.ports
    }

    /// The current ECAM window: (base, size, last bus), or `None` when PCIEXBAR is disabled.
    pub fn ecam(&self) -> Option<(u64, u64, u8)> {
        self.mch.ecam()
    }

    /// PAM/SMRAM routing of the MCH.
    pub fn chipset_memory(&self) -> ChipsetMemory {
        self.mch.chipset_memory()
    }

    /// The latched CONFIG_ADDRESS value.
    pub fn config_address(&self) -> u32 {
        self.config_address
    }

    /// Power-on reset of every function pcierc emulates (a platform reset).
    pub fn reset(&mut self) -> Effects {
        self.mark_all_changed();
        self.mch.reset();
        self.ports.iter_mut().for_each(PciFunction::reset);
        for b in &mut self.bridges {
            b.reset();
            b.take_interrupts();
            b.take_released();
        }
        self.expanders.iter_mut().for_each(PciFunction::reset);
        // The functions other emulators serve are reset with the platform; their owners (a
        // passthrough device model need not be the frontend that sent `Reset`) are told.
        for endpoint in &self.spec.endpoints {
            self.events.push(HierarchyEvent::FunctionReset {
                endpoint: endpoint.clone(),
                reason: ResetReason::PlatformReset,
            });
        }
        // Cards stay in their slots across a platform reset.
        self.present_occupied(0..self.ports.len());
        self.config_address = 0;
        self.rebuild_routing();
        self.generation += 1;
        Effects::ECAM
            | Effects::BUS_NUMBERS
            | Effects::WINDOWS
            | Effects::BARS
            | Effects::CHIPSET_MEMORY
    }

    /// Route a configuration access to (bus, devfn) in O(1): [`Hierarchy::locate`], except
    /// that a card in a slot the guest keeps powered off does not answer: QEMU 7.2 takes power
    /// from the functions on the port's secondary bus (`pcie_cap_update_power()`) and reads of
    /// an unpowered function return all ones (`pci_host_config_read_common()`).
    pub fn route(&self, bus: u8, devfn: u8) -> Routed {
        let r = self.locate(bus, devfn);
        if r != Routed::Absent {
            if let Some(port) = self.port_of_secondary(bus) {
                // A switch in a powered-off slot is unpowered too (QEMU's has_power).
                if port.kind().has_slot() && !port.slot_powered() {
                    return Routed::Absent;
                }
            }
        }
        r
    }

    /// The root port whose secondary bus is `bus`, if any.
    fn port_of_secondary(&self, bus: u8) -> Option<&RootPort> {
        let owner = usize::from(*self.bus_owner.get(usize::from(bus))?);
        let port = self.ports.get(owner.checked_sub(1)?)?;
        (bus != 0 && port.secondary_bus() == bus).then_some(port)
    }

    /// Which function (bus, devfn) names in the hierarchy, powered or not, in O(1).
    pub fn locate(&self, bus: u8, devfn: u8) -> Routed {
        if bus == 0 {
            return match self.root[usize::from(devfn)] {
                Slot::Empty => Routed::Absent,
                Slot::Endpoint(e) => Routed::Remote(e),
                s => Routed::Local(s),
            };
        }
        let owner = self.bus_owner[usize::from(bus)];
        if owner == 0 {
            return Routed::Absent;
        }
        let port = usize::from(owner - 1);
        if let Some(j) = port.checked_sub(self.ports.len()) {
            return match j.checked_sub(self.bridges.len()) {
                None => self.locate_below_bridge(j, bus, devfn),
                Some(x) => self.locate_on_expander(x, bus, devfn),
            };
        }
        let (Some(p), Some(children)) = (self.ports.get(port), self.children.get(port)) else {
            return Routed::Absent;
        };
        if bus != p.secondary_bus() {
            // Buses below the port that no switch port pcierc emulates claims belong to
            // whoever emulates the switch at device 0 behind it, if another emulator does.
            return match children[0] {
                Slot::Endpoint(e) => Routed::Remote(e),
                _ => Routed::Absent,
            };
        }
        if p.kind().device0_only() && DevFn(devfn).device() != 0 {
            // PCIe Base 6.0 §7.3.1: a Downstream Port forwards Type 0 cycles to Device 0 only
            // (a switch's internal bus, below its upstream port, has every device number).
            return Routed::Absent;
        }
        match children[usize::from(devfn)] {
            Slot::Endpoint(e) => Routed::Remote(e),
            Slot::Empty | Slot::Mch => Routed::Absent,
            s => Routed::Local(s),
        }
    }

    /// [`Hierarchy::locate`] for a bus bridge `j` owns: on its secondary bus the functions
    /// other emulators serve at devices 1-31 (Type 0; device 0 is the SHPC's reserved slot and
    /// absent), past it nothing pcierc knows.
    fn locate_below_bridge(&self, j: usize, bus: u8, devfn: u8) -> Routed {
        let (Some(b), Some(children)) = (self.bridges.get(j), self.bridge_children.get(j)) else {
            return Routed::Absent;
        };
        if bus != b.secondary_bus() || DevFn(devfn).device() == 0 {
            return Routed::Absent;
        }
        match children[usize::from(devfn)] {
            Slot::Endpoint(e) => Routed::Remote(e),
            _ => Routed::Absent,
        }
    }

    fn function_mut(&mut self, slot: Slot) -> Option<&mut dyn PciFunction> {
        match slot {
            Slot::Expander(x) => self
                .expanders
                .get_mut(usize::from(x))
                .map(|f| f as &mut dyn PciFunction),
            Slot::Bridge(j) => self
                .bridges
                .get_mut(usize::from(j))
                .map(|b| b as &mut dyn PciFunction),
            Slot::Mch => Some(&mut self.mch),
            Slot::Port(i) => self
                .ports
                .get_mut(usize::from(i))
                .map(|p| p as &mut dyn PciFunction),
            _ => None,
        }
    }

    fn function(&self, slot: Slot) -> Option<&dyn PciFunction> {
        match slot {
            Slot::Expander(x) => self
                .expanders
                .get(usize::from(x))
                .map(|f| f as &dyn PciFunction),
            Slot::Bridge(j) => self
                .bridges
                .get(usize::from(j))
                .map(|b| b as &dyn PciFunction),
            Slot::Mch => Some(&self.mch),
            Slot::Port(i) => self
                .ports
                .get(usize::from(i))
                .map(|p| p as &dyn PciFunction),
            _ => None,
        }
    }

    /// Configuration read. Any offset/width inside 4 KiB is accepted; unaligned accesses are
    /// performed byte by byte as QEMU does. Absent functions read as all ones.
    pub fn config_read(
        &self,
        bus: u8,
        devfn: u8,
        offset: u16,
        width: Width,
    ) -> Result<u32, Status> {
        check_config(offset, width)?;
        let slot = match self.route(bus, devfn) {
            Routed::Local(s) => s,
            Routed::Remote(_) => return Err(Status::Remote),
            Routed::Absent => return Ok(ones(width)),
        };
        let f = self.function(slot).ok_or(Status::Io)?;
        if offset.is_multiple_of(u16::from(width)) {
            return Ok(f.config_read(offset, width));
        }
        Ok((0..u16::from(width)).fold(0, |acc, i| acc | f.config_read(offset + i, 1) << (8 * i)))
    }

    /// Configuration write; returns what changed (already applied to the routing tables).
    pub fn config_write(
        &mut self,
        bus: u8,
        devfn: u8,
        offset: u16,
        width: Width,
        value: u32,
    ) -> Result<Effects, Status> {
        check_config(offset, width)?;
        let slot = match self.route(bus, devfn) {
            Routed::Local(s) => s,
            Routed::Remote(_) => return Err(Status::Remote),
            Routed::Absent => return Ok(Effects::empty()),
        };
        self.mark_changed(slot);
        let f = self.function_mut(slot).ok_or(Status::Io)?;
        let effects = if offset.is_multiple_of(u16::from(width)) {
            f.config_write(offset, width, value)
        } else {
            (0..u16::from(width)).fold(Effects::empty(), |acc, i| {
                acc | f.config_write(offset + i, 1, (value >> (8 * i)) & 0xff)
            })
        };
        let effects = match slot {
            Slot::Port(i) => self.after_port(usize::from(i), effects),
            Slot::Bridge(j) => self.after_bridge(usize::from(j), effects),
            _ => effects,
        };
        Ok(self.apply(effects))
    }

    /// Count a guest-visible routing change in the layout generation. The routing tables
    /// themselves were updated by [`Hierarchy::after_port`] for the port that changed (only
    /// ports have bus numbers, windows and BARs; the MCH changes only the ECAM window).
    fn apply(&mut self, effects: Effects) -> Effects {
        if effects
            .intersects(Effects::ECAM | Effects::BUS_NUMBERS | Effects::WINDOWS | Effects::BARS)
        {
            self.generation += 1;
        }
        effects
    }

    /// A trapped port-I/O read. `Err(NoDevice)` for ports pcierc does not claim, including
    /// non-dword accesses to 0xCF8-0xCFB (0xCF9 is the ICH9 reset control register).
    pub fn pio_read(&self, port: u64, width: Width) -> Result<u64, Status> {
        AccessKind::Pio.check_width(width)?;
        if (CONFIG_ADDRESS_PORT..CONFIG_DATA_PORT).contains(&port) {
            return if port == CONFIG_ADDRESS_PORT && width == 4 {
                Ok(u64::from(self.config_address))
            } else {
                Err(Status::NoDevice)
            };
        }
        let Some(first) = data_port_offset(port) else {
            return Err(Status::NoDevice);
        };
        // Bytes past 0xCFF are not ours and float high, as on a PC.
        let mut value = 0u64;
        for i in 0..u64::from(width) {
            let byte = match first.checked_add(i as u16).filter(|&b| b < 4) {
                Some(b) if self.config_address & CONFIG_ENABLE != 0 => {
                    let (bus, devfn, reg) = decode_config_address(self.config_address);
                    self.config_read(bus, devfn, reg + b, 1)?
                }
                _ => 0xff,
            };
            value |= u64::from(byte) << (8 * i);
        }
        Ok(value)
    }

    /// A trapped port-I/O write.
    pub fn pio_write(&mut self, port: u64, width: Width, value: u64) -> Result<Effects, Status> {
        AccessKind::Pio.check_width(width)?;
        if (CONFIG_ADDRESS_PORT..CONFIG_DATA_PORT).contains(&port) {
            if port == CONFIG_ADDRESS_PORT && width == 4 {
                // QEMU keeps all 32 bits; bits 30:24 and 1:0 are ignored when decoding.
                self.config_address = value as u32;
                return Ok(Effects::empty());
            }
            return Err(Status::NoDevice);
        }
        let Some(first) = data_port_offset(port) else {
            return Err(Status::NoDevice);
        };
        if self.config_address & CONFIG_ENABLE == 0 {
            return Ok(Effects::empty());
        }
        let (bus, devfn, reg) = decode_config_address(self.config_address);
        let n = (4 - first).min(u16::from(width));
        let v = (value & ((1u64 << (8 * n)) - 1)) as u32;
        // n is 1..=4; a 3-byte remainder is written byte-wise by config_write's unaligned path.
        match n {
            3 => (0..3u16).try_fold(Effects::empty(), |acc, i| {
                Ok(acc
                    | self.config_write(bus, devfn, reg + first + i, 1, (v >> (8 * i)) & 0xff)?)
            }),
            _ => self.config_write(bus, devfn, reg + first, n as u8, v),
        }
    }

    /// Decode a guest-physical address in the ECAM window: (bus, devfn, offset).
    pub fn ecam_decode(&self, addr: u64) -> Option<(u8, u8, u16)> {
        let (base, size, _) = self.ecam()?;
        let off = addr.checked_sub(base).filter(|&o| o < size)?;
        Some(((off >> 20) as u8, (off >> 12) as u8, (off & 0xfff) as u16))
    }

    /// Which emulated BAR holds `addr`: (slot, bar index, offset in the BAR, BAR size).
    fn bar_at(&self, addr: u64) -> Option<(Slot, u8, u64, u64)> {
        let hit = |&(base, size, port, bar): &(u64, u64, u16, u8)| {
            let off = addr.checked_sub(base).filter(|&o| o < size)?;
            Some((
                port,
                (self.emulated_slot(usize::from(port)), bar, off, size),
            ))
        };
        if self.bars_overlap {
            return self
                .bar_map
                .iter()
                .filter_map(hit)
                .min_by_key(|(port, _)| *port)
                .map(|(_, r)| r);
        }
        // No overlaps: the only candidate is the last BAR starting at or below `addr`.
        let i = self.bar_map.partition_point(|&(base, ..)| base <= addr);
        i.checked_sub(1)
            .and_then(|i| self.bar_map.get(i))
            .and_then(hit)
            .map(|(_, r)| r)
    }

    /// A trapped MMIO read: ECAM, or a BAR of a function pcierc emulates.
    pub fn mmio_read(&mut self, addr: u64, width: Width) -> Result<u64, Status> {
        AccessKind::Mmio.check_width(width)?;
        if let Some((bus, devfn, off)) = self.ecam_decode(addr) {
            // 8-byte ECAM accesses are split into two dword accesses, as QEMU's memory core does.
            if off as usize + usize::from(width) > 4096 {
                return Err(Status::OutOfRange);
            }
            let lo_w = width.min(4);
            let lo = self.config_read(bus, devfn, off, lo_w)?;
            let hi = if width == 8 {
                self.config_read(bus, devfn, off + 4, 4)?
            } else {
                0
            };
            return Ok(u64::from(lo) | u64::from(hi) << 32);
        }
        let (slot, bar, off, size) = self.bar_at(addr).ok_or(Status::NoDevice)?;
        if off + u64::from(width) > size {
            return Err(Status::OutOfRange);
        }
        let f = self.function_mut(slot).ok_or(Status::Io)?;
        Ok(f.bar_read(bar, off, width))
    }

    /// A trapped MMIO write.
    pub fn mmio_write(&mut self, addr: u64, width: Width, value: u64) -> Result<Effects, Status> {
        AccessKind::Mmio.check_width(width)?;
        if let Some((bus, devfn, off)) = self.ecam_decode(addr) {
            if off as usize + usize::from(width) > 4096 {
                return Err(Status::OutOfRange);
            }
            let mut effects = self.config_write(bus, devfn, off, width.min(4), value as u32)?;
            if width == 8 {
                effects |= self.config_write(bus, devfn, off + 4, 4, (value >> 32) as u32)?;
            }
            return Ok(effects);
        }
        let (slot, bar, off, size) = self.bar_at(addr).ok_or(Status::NoDevice)?;
        if off + u64::from(width) > size {
            return Err(Status::OutOfRange);
        }
        let f = self.function_mut(slot).ok_or(Status::Io)?;
        let effects = f.bar_write(bar, off, width, value);
        let effects = match slot {
            Slot::Port(i) => self.after_port(usize::from(i), effects),
            Slot::Bridge(j) => self.after_bridge(usize::from(j), effects),
            _ => effects,
        };
        Ok(self.apply(effects))
    }

    /// Serialize the complete guest-visible state (see [`super::state`]).
    pub fn save_functions(&self) -> Vec<(String, serde_json::Value)> {
        let mut v = vec![(self.host_bridge_id().to_string(), self.mch.save())];
        for (p, spec) in self.ports.iter().zip(&self.spec.root_ports) {
            v.push((spec.config.id.clone(), p.save()));
        }
        for (b, spec) in self.bridges.iter().zip(&self.spec.bridges) {
            v.push((spec.config.id.clone(), b.save()));
        }
        for (x, spec) in self.expanders.iter().zip(&self.spec.expanders) {
            v.push((spec.config.id.clone(), x.save()));
        }
        v
    }

    /// [`Hierarchy::save_functions`]'s states of only the functions whose model differs from
    /// the copy in `since` (all of them the first time), as (index in that list, change);
    /// `since` is brought up to date. A model equal to its copy saves to the same state, so a
    /// caller that keeps the last states has them all for the cost of the changed ones. A root
    /// port whose register values alone changed gives those bytes
    /// ([`FunctionChange::Values`], runs closer than `gap` equal bytes merged), not its state:
    /// serializing a port's whole state is most of the cost of a persisted write.
    pub fn save_changed_functions(
        &self,
        since: &mut SavedModels,
        gap: usize,
    ) -> Vec<(usize, FunctionChange<'_>)> {
        let mut out = Vec::new();
        if since.mch.as_ref() != Some(&self.mch) {
            out.push((0, FunctionChange::State(self.mch.save())));
            since.mch = Some(self.mch.clone());
        }
        since.ports.resize(self.ports.len(), None);
        for (i, (p, copy)) in self.ports.iter().zip(&mut since.ports).enumerate() {
            let change = match copy {
                Some(c) if c == p => continue,
                Some(c) => match p.port().value_changes(c.port(), gap) {
                    Some(runs) => {
                        // The copy's saved state is brought up to date in place; what it does
                        // not save (pending interrupts, say) may stay behind, which only
                        // sends the next call here again instead of to the equality above.
                        c.port_mut().set_values(&runs);
                        FunctionChange::Values(runs)
                    }
                    None => FunctionChange::State(p.save()),
                },
                None => FunctionChange::State(p.save()),
            };
            if let FunctionChange::State(_) = change {
                *copy = Some(p.clone());
            }
            out.push((1 + i, change));
        }
        since.bridges.resize(self.bridges.len(), None);
        let first = 1 + self.ports.len();
        for (j, (b, copy)) in self.bridges.iter().zip(&mut since.bridges).enumerate() {
            if copy.as_ref() != Some(b) {
                out.push((first + j, FunctionChange::State(b.save())));
                *copy = Some(b.clone());
            }
        }
        since.expanders.resize(self.expanders.len(), None);
        let first = first + self.bridges.len();
        for (x, (f, copy)) in self.expanders.iter().zip(&mut since.expanders).enumerate() {
            if copy.as_ref() != Some(f) {
                out.push((first + x, FunctionChange::State(f.save())));
                *copy = Some(f.clone());
            }
        }
        out
    }

    /// Restore state saved by [`Hierarchy::save_functions`] and the functions other emulators
    /// serve; all or nothing. The layout generation moves past both the current one and the
    /// saved `generation`, so a frontend that saw either resynchronises, and a backend restarted
    /// from its state file continues the generation its frontends knew.
    pub fn restore_functions(
        &mut self,
        config_address: u32,
        functions: &[(String, serde_json::Value)],
        endpoints: Vec<EndpointSpec>,
        generation: u64,
    ) -> crate::Result<()> {
        let expected: Vec<&str> = std::iter::once(self.host_bridge_id())
            .chain(self.spec.root_ports.iter().map(|p| p.config.id.as_str()))
            .chain(self.spec.bridges.iter().map(|b| b.config.id.as_str()))
            .chain(self.spec.expanders.iter().map(|x| x.config.id.as_str()))
            .collect();
        let got: Vec<&str> = functions.iter().map(|(id, _)| id.as_str()).collect();
        if expected != got {
            return Err(StateError::Functions {
                got: got.into_iter().map(String::from).collect(),
                expected: expected.into_iter().map(String::from).collect(),
            }
            .into());
        }
        let mut spec = self.spec.clone();
        spec.endpoints = endpoints;
        spec.validate().map_err(StateError::Topology)?;
        // Restore into copies first so a bad entry leaves the running state untouched.
        let mut mch = self.mch.clone();
        mch.restore(&functions[0].1)?;
        let mut ports = self.ports.clone();
        for (p, (_, s)) in ports.iter_mut().zip(&functions[1..]) {
            p.restore(s)?;
        }
        let mut bridges = self.bridges.clone();
        for (b, (_, s)) in bridges.iter_mut().zip(&functions[1 + ports.len()..]) {
            b.restore(s)?;
        }
        let mut expanders = self.expanders.clone();
        let first = 1 + ports.len() + bridges.len();
        for (x, (_, s)) in expanders.iter_mut().zip(&functions[first..]) {
            x.restore(s)?;
        }
        self.spec = spec;
        self.mch = mch;
        self.ports = ports;
        self.bridges = bridges;
        self.expanders = expanders;
        self.config_address = config_address;
        self.rebuild_slots(); // marks every function changed
        self.rebuild_routing();
        self.generation = (self.generation + 1).max(generation);
        Ok(())
    }
}

/// How a function's saved state changed ([`Hierarchy::save_changed_functions`]).
#[derive(Debug, PartialEq)]
pub enum FunctionChange<'a> {
    /// Its whole state ([`PciFunction::save`]).
    State(serde_json::Value),
    /// Only register values changed: these bytes (offset, new bytes) of the register values
    /// whose hex is the string at [`crate::pci::port::SAVED_VALUES_PATH`] in its state; nothing else of the state
    /// changed.
    Values(Vec<(usize, &'a [u8])>),
}

/// Copies of the function models a state was last saved from
/// ([`Hierarchy::save_changed_functions`]).
#[derive(Clone, Debug, Default)]
pub struct SavedModels {
    mch: Option<HostBridge>,
    ports: Vec<Option<RootPort>>,
    bridges: Vec<Option<PciePciBridge>>,
    expanders: Vec<Option<PxbPcie>>,
}

/// All ones in a configuration read of `width` bytes (1, 2 or 4: checked before).
fn ones(width: Width) -> u32 {
    width_mask(width) as u32
}

fn check_config(offset: u16, width: Width) -> Result<(), Status> {
    AccessKind::Config.check_width(width)?;
    if usize::from(offset) + usize::from(width) > 4096 {
        return Err(Status::OutOfRange);
    }
    Ok(())
}

/// Byte offset of `port` within CONFIG_DATA, if it is one of 0xCFC-0xCFF.
fn data_port_offset(port: u64) -> Option<u16> {
    port.checked_sub(CONFIG_DATA_PORT)
        .filter(|&o| o < 4)
        .map(|o| o as u16)
}

/// CONFIG_ADDRESS fields: bus 23:16, device 15:11, function 10:8, dword register 7:2
/// (PCI Local Bus 3.0 §3.2.2.3.2).
fn decode_config_address(ca: u32) -> (u8, u8, u16) {
    ((ca >> 16) as u8, (ca >> 8) as u8, (ca & 0xfc) as u16)
}

#[cfg(test)]
mod tests;
