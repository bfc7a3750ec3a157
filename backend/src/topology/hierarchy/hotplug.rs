//! Functions arriving and leaving behind root ports, errors and PMEs they report, and the
//! interrupts the ports raise: the hierarchy's side of PCIe Base 6.0 §6.7 (hot-plug), §6.2 (AER)
//! and §6.1.6 (PME). The register behaviour lives in the port model; this module keeps the
//! functions, the routing tables and the events for the service in step with it. Functions
//! arriving or leaving show up as [`HierarchyEvent`]s (the layout generation moves with them).

use pcierc_protocol::ResetReason;
use thiserror::Error;

use super::{Hierarchy, HierarchyEvent};
use crate::devices::BridgeKind;
use crate::pci::caps::aer::InjectError;
use crate::pci::caps::shpc::ShpcError;
use crate::pci::port::{PortFunction, UnplugRequest};
use crate::pci::{AerError, Effects, ErrorSeverity, SlotError, SlotEvent};
use crate::topology::spec::{valid_name, EndpointSpec};
use crate::topology::TopologyError;

/// Why a hot-plug, error or PME request was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HotplugError {
    /// No function or port has this id.
    #[error("no device with id '{0}'")]
    UnknownId(String),
    /// The bus is not a root port (Q35's root bus has no native hot-plug).
    #[error("bus '{0}' is not a root or switch downstream port: only they have hot-plug slots")]
    NotHotpluggable(String),
    /// A function or port already has this id.
    #[error("id '{0}' is already in use")]
    Duplicate(String),
    /// The owner is not a valid emulator name.
    #[error("owner '{0}' is not a valid emulator name")]
    InvalidOwner(String),
    /// A function other than 0 added to an empty slot.
    #[error("{id}: add function 0 of the slot first (function {function} would not be seen)")]
    FunctionZeroFirst {
        /// The function.
        id: String,
        /// Its function number.
        function: u8,
    },
    /// The request contradicts the topology (address in use, bad name, ...).
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// No function another emulator serves is at this address.
    #[error("no function at {bus:02x}:{:02x}.{}", devfn >> 3, devfn & 7)]
    NoFunction {
        /// Bus number.
        bus: u8,
        /// Device and function.
        devfn: u8,
    },
    /// The root port refused the error (not one it can log).
    #[error(transparent)]
    Inject(#[from] InjectError),
    /// The port has `hotplug=off` and the machine type is QEMU 10.0's
    /// ([`PortCompat::hotplug_off_refused_by_bus`](crate::devices::machine::PortCompat)):
    /// qdev's message for a bus without hot-plug, for `device_add` and `device_del` alike.
    #[error("Bus '{0}' does not support hotplugging")]
    BusNoHotplug(String),
    /// The port is not hot-plug capable (`hotplug=off`, `x-native-hotplug=off`): QEMU 7.2's
    /// `pcie_cap_slot_pre_plug_cb()` message.
    #[error("Hot-plug failed: unsupported by the port device '{0}'")]
    HotPlugUnsupported(String),
    /// The port is not hot-plug capable: QEMU 7.2's `pcie_cap_slot_unplug_request_cb()` message.
    #[error("Hot-unplug failed: unsupported by the port device '{0}'")]
    HotUnplugUnsupported(String),
    /// The slot's electromechanical interlock is engaged (QEMU's `EBUSY` message).
    #[error("slot is electromechanically locked: Device or resource busy")]
    Interlocked(String),
    /// The guest is busy with the slot (its power indicator blinks).
    #[error("Hot-unplug failed: guest is busy (power indicator blinking)")]
    PowerIndicatorBlinking(String),
    /// The function's device and function number on a `pcie-pci-bridge`'s bus are taken:
    /// QEMU 7.2's `do_pci_register_device()` message.
    #[error(
        "PCI: slot {device} function {function} not available for {driver}, in use by {other_driver},id={other}"
    )]
    DevfnInUse {
        /// Device number.
        device: u8,
        /// Function number.
        function: u8,
        /// The new function's driver.
        driver: String,
        /// The driver of the function there.
        other_driver: String,
        /// The id of the function there.
        other: String,
    },
    /// A `pcie-pci-bridge`'s SHPC refused it (QEMU's messages where QEMU has one: device 0 has
    /// no slot; QEMU 10.0 refuses a removal while the power indicator blinks).
    #[error("{source}")]
    Shpc {
        /// The bridge id.
        bridge: String,
        /// What the SHPC said.
        #[source]
        source: ShpcError,
    },
    /// The slot state machine refused it.
    #[error("slot of {port}: {source}")]
    Slot {
        /// The root port id.
        port: String,
        /// What the slot said.
        #[source]
        source: SlotError,
    },
}

/// How the functions behind a port leave it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Removal {
    /// The guest powered the slot off (the registers already show it).
    GuestPoweredOff,
    /// The card is pulled without asking (PCIe Base 6.0 §6.7.6).
    Surprise,
    /// A removal request for a slot the guest keeps powered off (QEMU 7.2's fast unplug).
    WhileOff,
}

impl Hierarchy {
    fn port_index(&self, id: &str) -> Option<usize> {
        self.spec.root_ports.iter().position(|p| p.config.id == id)
    }

    /// QEMU 10.0's qdev check before the slot's callbacks (`qdev_hotplug_allowed()`,
    /// `qdev_hotunplug_allowed()` asking `pcie_slot_is_hotpluggable_bus()`): a port with
    /// `hotplug=off` takes no hot-plug on its bus. QEMU 7.2 leaves it to the slot.
    fn bus_takes_hotplug(&self, port: usize) -> Result<(), HotplugError> {
        let p = &self.spec.root_ports[port].config;
        if self.spec.machine.port_compat().hotplug_off_refused_by_bus && !p.hotplug {
            return Err(HotplugError::BusNoHotplug(p.id.clone()));
        }
        Ok(())
    }

    fn slot_err(&self, port: usize) -> impl Fn(SlotError) -> HotplugError + '_ {
        move |source| {
            let port = self.spec.root_ports[port].config.id.clone();
            match source {
                SlotError::HotPlugUnsupported => HotplugError::HotPlugUnsupported(port),
                SlotError::HotUnplugUnsupported => HotplugError::HotUnplugUnsupported(port),
                SlotError::Interlocked => HotplugError::Interlocked(port),
                SlotError::PowerIndicatorBlinking => HotplugError::PowerIndicatorBlinking(port),
                SlotError::Occupied | SlotError::Empty => HotplugError::Slot { port, source },
            }
        }
    }

    /// Drain a port's interrupts and slot events after an operation returned `effects`: the
    /// guest powering a slot off completes the removal of the functions behind it.
    pub(super) fn after_port(&mut self, port: usize, effects: Effects) -> Effects {
        self.mark_changed(super::Slot::Port(port as u16));
        let mut effects = effects;
        // PCI-to-PCI Bridge 1.2 §3.2.5.18 (Secondary Bus Reset), PCIe Base 6.0 §6.7.1.8 (power
        // removed from a slot) and §6.6.2 (a bridge's Function Level Reset, which QEMU's
        // pci_device_reset() applies to its secondary bus too): everything below the port is
        // reset.
        let reason =
            if effects.intersects(Effects::SECONDARY_BUS_RESET | Effects::FUNCTION_LEVEL_RESET) {
                Some(ResetReason::SecondaryBusReset)
            } else if effects.contains(Effects::SLOT_POWER_OFF) {
                Some(ResetReason::SlotPowerOff)
            } else {
                None
            };
        if effects.contains(Effects::FUNCTION_LEVEL_RESET) && self.occupied(port) {
            // The port reset itself; what is in its slot stays there.
            self.ports[port].set_present();
        }
        if let Some(reason) = reason {
            effects |= self.reset_below(port, reason);
        }
        // The routing tables, for what this port (and a reset below it) changed only. Secondary
        // Bus Reset held or released changes what the port forwards.
        if self.sbr_changed(port) {
            effects |= Effects::BUS_NUMBERS;
        }
        if effects.contains(Effects::BUS_NUMBERS) {
            self.update_bus_map();
        }
        if effects.contains(Effects::BARS) {
            self.update_port_bars(port);
        }
        if effects.contains(Effects::SLOT) {
            self.slot_power_changed(port);
        }
        if effects.contains(Effects::SLOT) {
            let events = self.ports[port].slot_events();
            for ev in events {
                if ev != SlotEvent::PoweredOff {
                    continue;
                }
                if self.holds_endpoints(port) {
                    effects |= self.remove_behind(port, Removal::GuestPoweredOff);
                } else if !self.ports_below(port).is_empty() {
                    // A switch pcierc emulates stays (QEMU 7.2 deletes it: docs/qemu-compat.md)
                    // but loses power: it is reset like the functions in a powered-off slot.
                    effects |= self.reset_below(port, ResetReason::SlotPowerOff);
                    self.update_bus_map();
                }
            }
        }
        if effects.contains(Effects::INTERRUPT) {
            let devfn = self.spec.root_ports[port].addr.0;
            let bus = self.port_bus(port);
            for interrupt in self.ports[port].take_interrupts() {
                self.events.push(HierarchyEvent::Interrupt {
                    bus,
                    devfn,
                    interrupt,
                });
            }
        }
        effects
    }

    /// Reset everything below `port` (not the port itself): every switch port pcierc emulates
    /// in its subtree, in its power-on state with the slots that hold something occupied again,
    /// and a `FunctionReset` for every function other emulators serve there. What the resets
    /// changed in the routing tables is returned as effects for [`Self::after_port`].
    fn reset_below(&mut self, port: usize, reason: ResetReason) -> Effects {
        let below = self.ports_below(port);
        for &i in &below {
            crate::pci::PciFunction::reset(&mut self.ports[i]);
            // Their interrupts and slot events from before the reset are moot.
            self.ports[i].take_interrupts();
            self.ports[i].slot_events();
            self.mark_changed(super::Slot::Port(i as u16));
        }
        self.present_occupied(below.iter().copied());
        let ids: Vec<&str> = std::iter::once(port)
            .chain(below.iter().copied())
            .map(|i| self.spec.root_ports[i].config.id.as_str())
            .collect();
        for endpoint in self
            .spec
            .endpoints
            .iter()
            .filter(|e| ids.contains(&e.bus.as_str()))
        {
            self.events.push(HierarchyEvent::FunctionReset {
                endpoint: endpoint.clone(),
                reason,
            });
        }
        // A pcie-pci-bridge in a slot of the subtree is reset with what is below it.
        let bridges = self.bridges_below(port);
        self.reset_bridges(&bridges, reason);
        if below.is_empty() && bridges.is_empty() {
            return Effects::empty();
        }
        self.bar_map = self.full_bar_map();
        self.bars_overlap = super::routing::overlapping(&self.bar_map);
        Effects::BUS_NUMBERS | Effects::WINDOWS | Effects::BARS
    }

    /// Remove every function behind `port`, in the way `how` says.
    fn remove_behind(&mut self, port: usize, how: Removal) -> Effects {
        let port_id = self.spec.root_ports[port].config.id.clone();
        let (gone, kept): (Vec<EndpointSpec>, Vec<EndpointSpec>) =
            std::mem::take(&mut self.spec.endpoints)
                .into_iter()
                .partition(|e| e.bus == port_id);
        self.spec.endpoints = kept;
        self.rebuild_slots();
        let fx = match how {
            Removal::GuestPoweredOff => Effects::empty(),
            Removal::Surprise => self.ports[port].removed().unwrap_or_default(),
            Removal::WhileOff => self.ports[port].unplugged_while_off().unwrap_or_default(),
        };
        let surprise = how == Removal::Surprise;
        for endpoint in gone {
            self.events
                .push(HierarchyEvent::FunctionRemoved { endpoint, surprise });
        }
        self.generation += 1;
        self.after_port(port, fx)
    }

    /// Hot-add a function served by another emulator behind a root port: the slot sees a card
    /// inserted (presence, link up, interrupt when enabled).
    pub fn hot_add(&mut self, endpoint: EndpointSpec) -> Result<Effects, HotplugError> {
        self.plug(endpoint, false)
    }

    /// Plug a function that is present from power-on (an emulator claiming it before the guest
    /// runs): the slot looks as if the card had been there at reset, with no hot-plug event.
    pub fn cold_plug(&mut self, endpoint: EndpointSpec) -> Result<Effects, HotplugError> {
        self.plug(endpoint, true)
    }

    fn plug(&mut self, endpoint: EndpointSpec, cold: bool) -> Result<Effects, HotplugError> {
        if let Some(j) = self.bridge_index(&endpoint.bus) {
            return self.plug_below_bridge(j, endpoint, cold);
        }
        let port = self
            .port_index(&endpoint.bus)
            .ok_or_else(|| HotplugError::NotHotpluggable(endpoint.bus.clone()))?;
        Self::not_emulated(&endpoint)?;
        // A switch's upstream port has no slot: only root and downstream ports take cards.
        if !self.ports[port].kind().has_slot() {
            return Err(HotplugError::NotHotpluggable(endpoint.bus));
        }
        if !cold {
            // QEMU 10.0 asks the bus before it looks at the id (qdev_device_add_from_qdict()).
            self.bus_takes_hotplug(port)?;
        }
        self.owner_and_id_free(&endpoint)?;
        if !cold {
            // QEMU 7.2 checks the slot (pcie_cap_slot_pre_plug_cb()) before the address.
            self.ports[port]
                .may_hot_add()
                .map_err(self.slot_err(port))?;
        }
        let occupied = self.occupied(port);
        if occupied && endpoint.addr.function() == 0 {
            return Err(HotplugError::Slot {
                port: endpoint.bus.clone(),
                source: SlotError::Occupied,
            });
        }
        if !occupied && endpoint.addr.function() != 0 {
            return Err(HotplugError::FunctionZeroFirst {
                function: endpoint.addr.function(),
                id: endpoint.id,
            });
        }
        let mut spec = self.spec.clone();
        spec.endpoints.push(endpoint.clone());
        spec.validate()?;
        let fx = match (occupied, cold) {
            (true, _) => Effects::empty(),
            (false, false) => self.ports[port].hot_add().map_err(self.slot_err(port))?,
            (false, true) => {
                self.ports[port].set_present();
                Effects::SLOT
            }
        };
        self.spec = spec;
        self.rebuild_slots();
        self.generation += 1;
        self.events.push(HierarchyEvent::FunctionAdded { endpoint });
        Ok(self.after_port(port, fx))
    }

    /// Functions pcierc emulates are declared when it starts, not hot-plugged (QEMU's driver
    /// names of its port models and of the `pcie-pci-bridge` are not functions another
    /// emulator serves).
    pub(super) fn not_emulated(endpoint: &EndpointSpec) -> Result<(), HotplugError> {
        if crate::devices::RootPortModel::from_driver(&endpoint.driver).is_some() {
            return Err(TopologyError::PortAsDevice {
                id: endpoint.id.clone(),
            }
            .into());
        }
        if endpoint.driver == crate::topology::pcie_pci_bridge::DRIVER {
            return Err(TopologyError::BridgeAsDevice {
                id: endpoint.id.clone(),
            }
            .into());
        }
        Ok(())
    }

    /// A new function's owner is a valid emulator name and its id is not taken.
    pub(super) fn owner_and_id_free(&self, endpoint: &EndpointSpec) -> Result<(), HotplugError> {
        if !valid_name(&endpoint.owner) {
            return Err(HotplugError::InvalidOwner(endpoint.owner.clone()));
        }
        if self.endpoint(&endpoint.id).is_some()
            || self.port_index(&endpoint.id).is_some()
            || self.bridge_index(&endpoint.id).is_some()
        {
            return Err(HotplugError::Duplicate(endpoint.id.clone()));
        }
        Ok(())
    }

    /// Ask for the removal of a function behind a port, by QEMU's rules
    /// ([`PciePort::unplug_request`](crate::pci::port::PciePort::unplug_request)): refused when
    /// the port has `hotplug=off` (QEMU 10.0's qdev check, by machine type), when the slot is
    /// not hot-plug capable, is interlocked or its power indicator blinks; a slot
    /// the guest keeps powered off gives its functions up at once; otherwise the attention
    /// button is pressed and they are gone once the guest powers the slot off. Either way a
    /// `FunctionRemoved` event says when. Below a `pcie-pci-bridge` the SHPC's rules apply
    /// instead (QEMU's `shpc_device_unplug_request_cb()`, `bridge_hotplug.rs`).
    pub fn request_removal(&mut self, id: &str) -> Result<Effects, HotplugError> {
        if let Some((j, device)) = self.below_bridge(id) {
            return self.request_removal_below_bridge(j, device);
        }
        let port = self.port_of(id)?;
        self.bus_takes_hotplug(port)?;
        match self.ports[port]
            .unplug_request()
            .map_err(self.slot_err(port))?
        {
            UnplugRequest::Now => Ok(self.remove_behind(port, Removal::WhileOff)),
            UnplugRequest::AttentionButton => {
                let fx = self.ports[port]
                    .attention_button()
                    .map_err(self.slot_err(port))?;
                Ok(self.after_port(port, fx))
            }
        }
    }

    /// Surprise removal: the card is pulled without asking (Slot Capabilities Hot-Plug Surprise,
    /// which QEMU's root ports advertise).
    pub fn surprise_remove(&mut self, id: &str) -> Result<Effects, HotplugError> {
        if let Some((j, device)) = self.below_bridge(id) {
            return self.surprise_remove_below_bridge(j, device);
        }
        let port = self.port_of(id)?;
        if !self.ports[port].slot_occupied() {
            return Err(HotplugError::Slot {
                port: self.spec.root_ports[port].config.id.clone(),
                source: SlotError::Empty,
            });
        }
        Ok(self.remove_behind(port, Removal::Surprise))
    }

    /// The root port a function sits behind.
    fn port_of(&self, id: &str) -> Result<usize, HotplugError> {
        let e = self
            .endpoint(id)
            .ok_or_else(|| HotplugError::UnknownId(id.to_string()))?;
        self.port_index(&e.bus)
            .ok_or_else(|| HotplugError::NotHotpluggable(e.bus.clone()))
    }

    /// A function served by another emulator, by id.
    pub fn endpoint(&self, id: &str) -> Option<&EndpointSpec> {
        self.spec.endpoints.iter().find(|e| e.id == id)
    }

    /// The function served by another emulator at (bus, devfn) now, if any.
    pub fn endpoint_at(&self, bus: u8, devfn: u8) -> Option<&EndpointSpec> {
        match self.locate(bus, devfn) {
            super::Routed::Remote(i) => self.spec.endpoints.get(usize::from(i)),
            _ => None,
        }
    }

    /// Inject an error (QEMU's `pcie_aer_inject_error`): `id` is a root port (an error the port
    /// itself detected and logs), a switch port or a `pcie-pci-bridge` (an error it detected
    /// itself: logged in its AER capability, its message received by the root port above), or a
    /// function behind a port (an error message it sent, received by the root port above it).
    pub fn inject_error(
        &mut self,
        id: &str,
        severity: ErrorSeverity,
        status: u32,
    ) -> Result<Effects, HotplugError> {
        self.inject_error_logged(id, severity, status, [0; 4])
    }

    /// [`Self::inject_error`] with a TLP header for the Header Log (PCIe Base 6.0 §7.8.4.8).
    pub fn inject_error_logged(
        &mut self,
        id: &str,
        severity: ErrorSeverity,
        status: u32,
        header_log: [u32; 4],
    ) -> Result<Effects, HotplugError> {
        // The error as `requester` detected or sent it.
        let error = |requester| AerError {
            severity,
            status,
            requester,
            header_log,
        };
        if let Some(j) = self.bridge_index(id) {
            // A `pcie-pci-bridge`'s own error: logged in its AER capability, the message
            // received by the root port above it, as for a switch port (below).
            let requester =
                u16::from(self.bridge_bus(j)) << 8 | u16::from(self.spec.bridges[j].addr.0);
            let msg = self.bridges[j].record_error(&error(requester))?;
            self.mark_changed(super::Slot::Bridge(j as u16));
            return self.send_up(self.bridge_parent(j), msg);
        }
        let (port, requester, own) = match self.port_index(id) {
            Some(p) if self.ports[p].kind() != BridgeKind::RootPort => {
                // A switch port's own error: logged in its AER capability, the message received
                // by the root port above it (QEMU's pcie_aer_inject_error() + pcie_aer_msg()).
                let requester =
                    u16::from(self.port_bus(p)) << 8 | u16::from(self.spec.root_ports[p].addr.0);
                let msg = self.ports[p].port_mut().record_error(&error(requester))?;
                self.mark_changed(super::Slot::Port(p as u16));
                return self.send_up(Some(p), msg);
            }
            Some(p) => (p, u16::from(self.spec.root_ports[p].addr.0), true),
            None => {
                let port = self.port_of(id)?;
                let bus = self.ports[port].secondary_bus();
                let devfn = self.endpoint(id).map_or(0, |e| e.addr.0);
                // The error message travels up to the root port (QEMU's pcie_aer_msg()),
                // through a switch if the function sits behind one.
                let root = self.root_port_of(port);
                (root, u16::from(bus) << 8 | u16::from(devfn), false)
            }
        };
        let fx = self.ports[port].inject_error(&error(requester), own)?;
        Ok(self.after_port(port, fx))
    }

    /// The error message `msg` (ERR_COR / ERR_NONFATAL / ERR_FATAL) a function pcierc emulates
    /// sent upstream from the secondary side of port `from` (or from port `from` itself, a
    /// switch port): received by the root port above (PCIe Base 6.0 §6.2.6; QEMU's
    /// `pcie_aer_msg()`), through a switch if need be. Nothing for a masked error (`None`) or a
    /// function on a root bus (no root port above it: QEMU's walk ends there too).
    fn send_up(
        &mut self,
        from: Option<usize>,
        msg: Option<AerError>,
    ) -> Result<Effects, HotplugError> {
        let (Some(from), Some(msg)) = (from, msg) else {
            return Ok(Effects::empty());
        };
        let root = self.root_port_of(from);
        let fx = self.ports[root].inject_error(&msg, false)?;
        Ok(self.after_port(root, fx))
    }

    /// An error the function at (bus, devfn) reported through the protocol: received by the
    /// root port above it, with that function as the requester.
    pub fn report_error(
        &mut self,
        bus: u8,
        devfn: u8,
        err: AerError,
    ) -> Result<Effects, HotplugError> {
        let id = self.endpoint_at(bus, devfn).map(|e| e.id.clone());
        let id = id.ok_or(HotplugError::NoFunction { bus, devfn })?;
        let port = self.root_port_of(self.port_of(&id)?);
        let err = AerError {
            requester: u16::from(bus) << 8 | u16::from(devfn),
            ..err
        };
        let fx = self.ports[port].inject_error(&err, false)?;
        Ok(self.after_port(port, fx))
    }

    /// A PME from function `id` behind a port: Root Status of the root port above it (PCIe
    /// Base 6.0 §6.1.6: PME messages travel up to the root port), with the function's id.
    pub fn raise_pme(&mut self, id: &str) -> Result<Effects, HotplugError> {
        let port = self.port_of(id)?;
        let bus = self.ports[port].secondary_bus();
        let devfn = self.endpoint(id).map_or(0, |e| e.addr.0);
        let port = self.root_port_of(port);
        let fx = self.ports[port].raise_pme(u16::from(bus) << 8 | u16::from(devfn));
        Ok(self.after_port(port, fx))
    }

    /// The MSI-X message `vector` of pcierc's function at (`bus`, `devfn`) sends now, and
    /// whether it is masked; `None` if no such function or vector.
    pub fn msi_route(&self, bus: u8, devfn: u8, vector: u16) -> Option<(u64, u32, bool)> {
        match self.locate(bus, devfn) {
            super::Routed::Local(super::Slot::Port(i)) => {
                self.ports.get(usize::from(i))?.msi_route(vector)
            }
            // The bridge's MSI capability has one vector.
            super::Routed::Local(super::Slot::Bridge(j)) if vector == 0 => {
                self.bridges.get(usize::from(j))?.msi_route()
            }
            _ => None,
        }
    }

    /// Events (interrupts, functions added and removed) since the last call.
    pub fn take_events(&mut self) -> Vec<HierarchyEvent> {
        std::mem::take(&mut self.events)
    }
}
