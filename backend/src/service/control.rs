//! The control plane's side of the root complex: what `device_add`, `device_del`,
//! `pcie-aer-inject-error` and the other QMP commands do to the hierarchy, the requests still
//! pending, and the events the control socket's sessions receive. Each operation returns the
//! hierarchy's [`Effects`]; the [`RootComplex`](super::RootComplex) reports them, so frontends
//! hear about it exactly as about a guest access.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use log::info;

use crate::control::{AerInject, ControlError, DeviceAdd, DeviceState, SlotDevice, SlotInfo};
use crate::pci::caps::slot::{SLTCTL_AIC, SLTCTL_PCC, SLTCTL_PIC, SLTSTA_PDS};
use crate::pci::port::PortFunction;
use crate::pci::Effects;
use crate::topology::hierarchy::HotplugError;
use crate::topology::spec::EndpointSpec;
use crate::topology::{DevFn, Hierarchy, Segments};

/// The root bus's name, as QEMU's Q35 calls it.
const ROOT_BUS: &str = "pcie.0";

/// How long a `device_del` blocks another for the same device (QEMU 7.2's
/// `pending_deleted_expires_ms` for PCIe native hot-plug: pciehp waits 5 s after the button).
const UNPLUG_PENDING: Duration = Duration::from_secs(5);

/// An event for the control socket's sessions (QMP `event` name and `data`).
#[derive(Clone, Debug, PartialEq)]
pub struct ControlEvent {
    /// QMP event name, e.g. `DEVICE_DELETED`.
    pub name: &'static str,
    /// Its `data` member.
    pub data: serde_json::Value,
}

/// What the control socket reports of a slot: power, indicators and presence (PCIe Base 6.0
/// §7.5.3.10 Slot Control, §7.5.3.11 Slot Status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SlotView {
    ctl: u16,
    present: bool,
}

impl SlotView {
    fn indicator(bits: u16) -> &'static str {
        // §7.5.3.10: 01b on, 10b blink, 11b off.
        match bits & 3 {
            1 => "on",
            2 => "blink",
            3 => "off",
            _ => "reserved",
        }
    }
}

/// What the control socket reports of a `pcie-pci-bridge`'s SHPC slot (SHPC 1.0 Logical Slot
/// Register, Slot Status): the slot state, the power and attention indicators (the same
/// encodings as PCIe's: 01b on, 10b blink, 11b off) and PRSNT1#/PRSNT2# (11b: empty).
fn shpc_view(status: u16) -> u16 {
    use crate::pci::caps::shpc::{
        SLOT_ATTN_LED_MASK, SLOT_PWR_LED_MASK, SLOT_STATE_MASK, SLOT_STATUS_PRSNT_MASK,
    };
    status & (SLOT_STATE_MASK | SLOT_PWR_LED_MASK | SLOT_ATTN_LED_MASK | SLOT_STATUS_PRSNT_MASK)
}

/// An SHPC slot's state is power-only (1) or enabled (2): powered.
fn shpc_powered(status: u16) -> bool {
    matches!(status & crate::pci::caps::shpc::SLOT_STATE_MASK, 1 | 2)
}

/// A card is in the SHPC slot (PRSNT1#/PRSNT2# not 11b).
fn shpc_present(status: u16) -> bool {
    status & crate::pci::caps::shpc::SLOT_STATUS_PRSNT_MASK
        != crate::pci::caps::shpc::SLOT_STATUS_PRSNT_MASK
}

/// The control plane's state: events not yet taken, `device_del` requests the guest has not
/// completed, and each root port's and SHPC slot as last reported.
#[derive(Default)]
pub struct ControlPlane {
    events: Vec<ControlEvent>,
    /// `device_del` requests the guest has not completed, and when they were made.
    unplug_requests: BTreeMap<String, Instant>,
    /// Each root port's slot as last reported on the control socket.
    slots: Vec<SlotView>,
    /// Each `pcie-pci-bridge`'s SHPC slots as last reported: (bridge id, device, view).
    shpc_slots: Vec<(String, u8, u16)>,
}

/// The QMP error for a refused hierarchy operation.
fn control_error(e: HotplugError) -> ControlError {
    match e {
        HotplugError::UnknownId(id) => ControlError::DeviceNotFound(id),
        e => ControlError::Generic(e.to_string()),
    }
}

fn is_port(h: &Hierarchy, id: &str) -> bool {
    h.spec().root_ports.iter().any(|p| p.config.id == id)
}

fn is_bridge(h: &Hierarchy, id: &str) -> bool {
    h.spec().bridges.iter().any(|b| b.config.id == id)
}

impl ControlPlane {
    /// Events for the control socket since the last call.
    pub fn take_events(&mut self) -> Vec<ControlEvent> {
        std::mem::take(&mut self.events)
    }

    /// Are events waiting for [`ControlPlane::take_events`]?
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// `X_PCIERC_SLOT_CHANGED` events for every slot of `h` whose power, indicators or
    /// presence changed since the last call (the guest driving pciehp, a card arriving or
    /// leaving).
    pub fn slot_events(&mut self, segments: &Segments) {
        let views: Vec<SlotView> = segments
            .iter()
            .flat_map(|h| h.ports())
            .map(|p| SlotView {
                ctl: p.slot_control() & (SLTCTL_PCC | SLTCTL_PIC | SLTCTL_AIC),
                present: p.slot_status() & SLTSTA_PDS != 0,
            })
            .collect();
        if self.slots.len() == views.len() {
            for (i, (old, new)) in self.slots.iter().zip(&views).enumerate() {
                if old == new {
                    continue;
                }
                let Some(port) = segments
                    .iter()
                    .flat_map(|h| &h.spec().root_ports)
                    .nth(i)
                    .map(|p| &p.config.id)
                else {
                    continue;
                };
                self.events.push(ControlEvent {
                    name: "X_PCIERC_SLOT_CHANGED",
                    data: serde_json::json!({
                        "port": port,
                        "power": if new.ctl & SLTCTL_PCC == 0 { "on" } else { "off" },
                        "power-indicator": SlotView::indicator(new.ctl >> 8),
                        "attention-indicator": SlotView::indicator(new.ctl >> 6),
                        "present": new.present,
                    }),
                });
            }
        }
        self.slots = views;
        self.shpc_slot_events(segments);
    }

    /// [`ControlPlane::slot_events`] for the SHPC slots of every `pcie-pci-bridge`: `port` is
    /// the bridge's id, `slot` the device number (1-31); `power` follows the slot state
    /// (power-only or enabled: on).
    fn shpc_slot_events(&mut self, segments: &Segments) {
        let views: Vec<(String, u8, u16)> = segments
            .iter()
            .flat_map(|h| h.spec().bridges.iter().zip(h.bridges()))
            .flat_map(|(spec, b)| {
                b.slot_statuses()
                    .into_iter()
                    .enumerate()
                    .map(|(i, st)| (spec.config.id.clone(), i as u8 + 1, shpc_view(st)))
                    .collect::<Vec<_>>()
            })
            .collect();
        let keys = |v: &[(String, u8, u16)]| -> Vec<(String, u8)> {
            v.iter().map(|(id, d, _)| (id.clone(), *d)).collect()
        };
        if keys(&self.shpc_slots) == keys(&views) {
            for ((_, _, old), (id, device, new)) in self.shpc_slots.iter().zip(&views) {
                if old == new {
                    continue;
                }
                self.events.push(ControlEvent {
                    name: "X_PCIERC_SLOT_CHANGED",
                    data: serde_json::json!({
                        "port": id,
                        "slot": device,
                        "power": if shpc_powered(*new) { "on" } else { "off" },
                        "power-indicator": SlotView::indicator(*new >> 2),
                        "attention-indicator": SlotView::indicator(*new >> 4),
                        "present": shpc_present(*new),
                    }),
                });
            }
        }
        self.shpc_slots = views;
    }

    /// Function `id` is gone: its `device_del` (if any) is complete; `DEVICE_DELETED`.
    pub fn device_deleted(&mut self, id: &str) {
        self.unplug_requests.remove(id);
        self.events.push(ControlEvent {
            name: "DEVICE_DELETED",
            data: serde_json::json!({ "device": id, "path": format!("/machine/peripheral/{id}") }),
        });
    }

    /// `device_add`: hot-add the function to `h`.
    pub fn device_add(&self, h: &mut Hierarchy, req: &DeviceAdd) -> Result<Effects, ControlError> {
        // QEMU's wording (qdev_set_parent_bus / qbus_find).
        if req.bus == ROOT_BUS {
            return Err(format!("Bus '{ROOT_BUS}' does not support hotplugging").into());
        }
        // An expander's root bus has no hot-plug handler in QEMU either.
        if h.spec().expander(&req.bus).is_some() {
            return Err(format!("Bus '{}' does not support hotplugging", req.bus).into());
        }
        // A root or downstream port's slot, or a `pcie-pci-bridge`'s SHPC slots.
        if !is_port(h, &req.bus) && !is_bridge(h, &req.bus) {
            return Err(format!("Bus '{}' not found", req.bus).into());
        }
        let owner = req
            .owner
            .clone()
            .unwrap_or_else(|| h.spec().default_owner.clone());
        let endpoint = EndpointSpec {
            id: req.id.clone(),
            driver: req.driver.clone(),
            bus: req.bus.clone(),
            addr: req.addr.unwrap_or(DevFn(0)),
            owner,
            multifunction: req.multifunction,
        };
        info!(
            "control: device_add {} ({}) on {} for {}",
            endpoint.id, endpoint.driver, endpoint.bus, endpoint.owner
        );
        h.hot_add(endpoint).map_err(control_error)
    }

    /// `device_del`: ask the guest to release function `id` of `h` (attention button). Once
    /// the effects are reported, the caller records the request with
    /// [`ControlPlane::unplug_requested`].
    pub fn device_del(&self, h: &mut Hierarchy, id: &str) -> Result<Effects, ControlError> {
        // The ports, bridges and expanders pcierc emulates are not hot-unplugged (QEMU's
        // message for those on pcie.0).
        if is_port(h, id) || is_bridge(h, id) || h.spec().expander(id).is_some() {
            return Err(format!("Bus '{ROOT_BUS}' does not support hotplugging").into());
        }
        let Some(e) = h.endpoint(id) else {
            return Err(ControlError::DeviceNotFound(id.into()));
        };
        // qdev_unplug(): a PCIe slot's request still pending is not repeated (a second
        // attention-button press would cancel the first in the guest's pciehp). QEMU's SHPC
        // sets no pending deadline (shpc_device_unplug_request_cb()): below a bridge every
        // device_del presses the button again.
        if !is_bridge(h, &e.bus)
            && self
                .unplug_requests
                .get(id)
                .is_some_and(|t| t.elapsed() < UNPLUG_PENDING)
        {
            return Err(format!("Device {id} is already in the process of unplug").into());
        }
        info!("control: device_del {id}");
        h.request_removal(id).map_err(control_error)
    }

    /// A `device_del` of `id` was made now (pending until the function is gone).
    pub fn unplug_requested(&mut self, id: &str) {
        self.unplug_requests.insert(id.to_string(), Instant::now());
    }

    /// `pcie-aer-inject-error` into `h`.
    pub fn inject_aer(&self, h: &mut Hierarchy, req: &AerInject) -> Result<Effects, ControlError> {
        if req.advisory_non_fatal {
            return Err(
                "advisory-non-fatal is not supported: inject the Advisory Non-Fatal correctable \
                 error (ADV_NONFATAL) instead"
                    .into(),
            );
        }
        if h.endpoint(&req.id).is_some_and(|e| is_bridge(h, &e.bus)) {
            // QEMU drops the Express capability of a function on a conventional bus
            // (pci_qdev_realize()); its HMP `pcie_aer_inject_error` then answers this (asked
            // of QEMU 7.2 with an e1000 below a pcie-pci-bridge).
            return Err(format!("the device doesn't support pci express. {}", req.id).into());
        }
        // A `pcie-pci-bridge` itself is a PCI Express function with AER (QEMU 7.2 accepts it).
        if !is_port(h, &req.id) && !is_bridge(h, &req.id) && h.endpoint(&req.id).is_none() {
            return Err(ControlError::DeviceNotFound(req.id.clone()));
        }
        info!(
            "control: AER {} ({:#x}) on {}",
            req.error, req.status_bits, req.id
        );
        // TLP prefixes are accepted and not logged: the root ports, like QEMU's, have no TLP
        // Prefix Log (AER Capabilities bit 11 clear).
        let header = req.header.unwrap_or([0; 4]);
        h.inject_error_logged(&req.id, req.severity(), req.status_bits, header)
            .map_err(control_error)
    }

    /// A PME from function `id` of `h`.
    pub fn inject_pme(&self, h: &mut Hierarchy, id: &str) -> Result<Effects, ControlError> {
        if is_bridge(h, id) {
            // Refused by name, not "not found": the bridge's Power Management capability, as
            // QEMU's, advertises no PME support (PCI PM 1.2 §3.2.3 PME_Support all clear, PMCSR
            // read-only), so a PME from it would contradict its own registers
            // (docs/qemu-compat.md).
            return Err(format!(
                "{id}: a pcie-pci-bridge does not signal PME (its Power Management capability \
                 advertises no PME support, as QEMU's)"
            )
            .into());
        }
        if h.endpoint(id).is_some_and(|e| is_bridge(h, &e.bus)) {
            return Err(format!(
                "{id}: PME from a function below a pcie-pci-bridge is not modelled \
                 (docs/qemu-compat.md)"
            )
            .into());
        }
        info!("control: PME from {id}");
        h.raise_pme(id).map_err(control_error)
    }

    /// Surprise removal of function `id` from `h`.
    pub fn surprise_remove(&self, h: &mut Hierarchy, id: &str) -> Result<Effects, ControlError> {
        info!("control: surprise removal of {id}");
        h.surprise_remove(id).map_err(control_error)
    }

    /// Every slot of every segment (root and switch downstream ports, then the SHPC slots of
    /// the `pcie-pci-bridge`s that hold a card) and the functions behind it.
    pub fn slots(&self, segments: &Segments) -> Vec<SlotInfo> {
        segments
            .iter()
            .flat_map(|h| {
                let mut v = self.slots_of(h);
                v.extend(self.shpc_slots_of(h));
                v
            })
            .collect()
    }

    fn slot_device(&self, e: &EndpointSpec) -> SlotDevice {
        SlotDevice {
            id: e.id.clone(),
            driver: e.driver.clone(),
            owner: e.owner.clone(),
            addr: e.addr,
            state: if self.unplug_requests.contains_key(&e.id) {
                DeviceState::UnplugPending
            } else {
                DeviceState::Present
            },
        }
    }

    /// The SHPC slots holding a card: `port` the bridge's id, `chassis` 0, `slot` the device
    /// number, `bus` the bridge's secondary bus, `powered` the slot state (power-only or
    /// enabled).
    fn shpc_slots_of(&self, h: &Hierarchy) -> Vec<SlotInfo> {
        let mut out = Vec::new();
        for (spec, b) in h.spec().bridges.iter().zip(h.bridges()) {
            for (i, status) in b.slot_statuses().into_iter().enumerate() {
                let device = i as u8 + 1;
                let devices: Vec<SlotDevice> = h
                    .spec()
                    .endpoints
                    .iter()
                    .filter(|e| e.bus == spec.config.id && e.addr.device() == device)
                    .map(|e| self.slot_device(e))
                    .collect();
                if devices.is_empty() && !b.slot_occupied(device) {
                    continue;
                }
                out.push(SlotInfo {
                    port: spec.config.id.clone(),
                    chassis: 0,
                    slot: device.into(),
                    bus: b.secondary_bus(),
                    powered: shpc_powered(status),
                    devices,
                });
            }
        }
        out
    }

    fn slots_of(&self, h: &Hierarchy) -> Vec<SlotInfo> {
        h.spec()
            .root_ports
            .iter()
            .zip(h.ports())
            // Root and switch downstream ports have slots; a switch's upstream port has none.
            .filter(|(_, port)| port.kind().has_slot())
            .map(|(spec, port)| SlotInfo {
                port: spec.config.id.clone(),
                chassis: spec.config.chassis,
                slot: spec.config.slot,
                bus: port.secondary_bus(),
                powered: port.slot_control() & SLTCTL_PCC == 0,
                devices: h
                    .spec()
                    .endpoints
                    .iter()
                    .filter(|e| e.bus == spec.config.id)
                    .map(|e| self.slot_device(e))
                    .collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::TopologySpec;

    fn add(id: &str, bus: &str) -> DeviceAdd {
        DeviceAdd {
            driver: "virtio-net-pci".into(),
            id: id.into(),
            bus: bus.into(),
            addr: None,
            multifunction: false,
            owner: None,
        }
    }

    #[test]
    fn hot_plug_below_a_bridge_follows_the_shpc() {
        let mut spec = TopologySpec::embedded_default().unwrap();
        spec.add_device_option("pcie-pci-bridge,id=br1,bus=rp1")
            .unwrap();
        spec.add_device_option("e1000,id=n1,bus=br1,addr=1,owner=qemu")
            .unwrap();
        let mut h = Hierarchy::new(spec).unwrap();
        let mut c = ControlPlane::default();
        c.slot_events(&Segments::from(h.clone()));
        assert!(c.take_events().is_empty(), "the power-on state recorded");
        // Without addr QEMU takes devfn 0, which has no SHPC slot.
        assert_eq!(
            c.device_add(&mut h, &add("n2", "br1")),
            Err(ControlError::Generic(
                "Unsupported PCI slot 0 for standard hotplug controller. Valid slots are \
                 between 1 and 31."
                    .into()
            ))
        );
        let at = |addr| DeviceAdd {
            addr: Some(DevFn(addr)),
            ..add("n2", "br1")
        };
        assert_eq!(
            c.device_add(&mut h, &at(0x08)),
            Err(ControlError::Generic(
                "PCI: slot 1 function 0 not available for virtio-net-pci, in use by e1000,id=n1"
                    .into()
            ))
        );
        assert!(c.device_add(&mut h, &at(0x10)).is_ok());
        assert_eq!(h.endpoint("n2").map(|e| e.owner.as_str()), Some("vmm"));
        // The SHPC slot's change on the control socket, and both slots listed.
        c.slot_events(&Segments::from(h.clone()));
        let ev = c.take_events();
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(
            ev[0].data,
            serde_json::json!({"port": "br1", "slot": 2, "power": "off",
                               "power-indicator": "off", "attention-indicator": "reserved",
                               "present": true})
        );
        let slots: Vec<(String, u16, bool, Vec<String>)> = c
            .slots(&Segments::from(h.clone()))
            .into_iter()
            .filter(|s| s.port == "br1")
            .map(|s| {
                (
                    s.port,
                    s.slot,
                    s.powered,
                    s.devices.into_iter().map(|d| d.id).collect(),
                )
            })
            .collect();
        assert_eq!(
            slots,
            [
                ("br1".to_string(), 1, true, vec!["n1".to_string()]),
                ("br1".to_string(), 2, false, vec!["n2".to_string()]),
            ]
        );
        // Errors: from the bridge itself (its AER capability logs them), not from a
        // conventional function below it (QEMU: no Express capability there, so no AER); PME
        // from neither, each said by name.
        let aer = |id: &str| AerInject {
            id: id.into(),
            error: "RCVR".into(),
            status_bits: 1,
            correctable: true,
            advisory_non_fatal: false,
            fatal: None,
            header: None,
            prefix: None,
        };
        assert_eq!(
            c.inject_aer(&mut h, &aer("n1")),
            Err(ControlError::Generic(
                "the device doesn't support pci express. n1".into()
            ))
        );
        assert!(c.inject_aer(&mut h, &aer("br1")).is_ok());
        // The bridge's Correctable Error Status (AER at 0x100, + 0x10): Receiver Error.
        assert_eq!(
            crate::pci::PciFunction::config_read(&h.bridges()[0], 0x110, 4),
            1
        );
        for (id, says) in [("br1", "does not signal PME"), ("n1", "not modelled")] {
            let e = c.inject_pme(&mut h, id);
            assert!(
                matches!(&e, Err(ControlError::Generic(m)) if m.contains(says)),
                "{id}: {e:?}"
            );
        }
        // The cold-plugged n1's slot is enabled: device_del presses the attention button, and
        // again (QEMU's SHPC keeps no pending request).
        assert!(c.device_del(&mut h, "n1").is_ok());
        c.unplug_requested("n1");
        assert!(c.device_del(&mut h, "n1").is_ok());
        assert!(h.endpoint("n1").is_some());
        // n2's slot is still disabled with its power indicator off: gone at once.
        assert!(c.device_del(&mut h, "n2").is_ok());
        assert!(h.endpoint("n2").is_none());
        // The bridge itself is not hot-unplugged.
        assert_eq!(
            c.device_del(&mut h, "br1"),
            Err(ControlError::Generic(
                "Bus 'pcie.0' does not support hotplugging".into()
            ))
        );
    }

    /// QEMU 7.2's replies (asked with QMP): an expander's root bus takes no hot-plug, the
    /// expander cannot be removed; a root port on its bus takes hot-plug as any root port.
    #[test]
    fn expanders_refuse_hot_plug_as_qemu_does() {
        let mut spec = TopologySpec::embedded_default().unwrap();
        spec.add_device_option("pxb-pcie,id=pxb1,bus_nr=0x80,addr=5")
            .unwrap();
        spec.add_device_option("pcie-root-port,id=rp9,bus=pxb1,chassis=9,slot=9,addr=0")
            .unwrap();
        let mut h = Hierarchy::new(spec).unwrap();
        let c = ControlPlane::default();
        assert_eq!(
            c.device_add(&mut h, &add("n1", "pxb1")),
            Err(ControlError::Generic(
                "Bus 'pxb1' does not support hotplugging".into()
            ))
        );
        assert_eq!(
            c.device_del(&mut h, "pxb1"),
            Err(ControlError::Generic(
                "Bus 'pcie.0' does not support hotplugging".into()
            ))
        );
        assert!(c.device_add(&mut h, &add("n1", "rp9")).is_ok());
        assert!(h.endpoint("n1").is_some());
    }

    #[test]
    fn commands_refused_with_qemus_errors_and_pending_unplugs_tracked() {
        let mut h = Hierarchy::new(TopologySpec::embedded_default().unwrap()).unwrap();
        let mut c = ControlPlane::default();
        c.slot_events(&Segments::from(h.clone()));
        assert!(
            c.take_events().is_empty(),
            "the first call records the power-on state"
        );
        assert_eq!(
            c.device_add(&mut h, &add("net0", ROOT_BUS)),
            Err(ControlError::Generic(
                "Bus 'pcie.0' does not support hotplugging".into()
            ))
        );
        assert_eq!(
            c.device_add(&mut h, &add("net0", "rp9")),
            Err(ControlError::Generic("Bus 'rp9' not found".into()))
        );
        assert_eq!(
            c.device_del(&mut h, "net0"),
            Err(ControlError::DeviceNotFound("net0".into()))
        );
        assert!(c.device_add(&mut h, &add("net0", "rp1")).is_ok());
        c.slot_events(&Segments::from(h.clone()));
        assert_eq!(c.take_events()[0].name, "X_PCIERC_SLOT_CHANGED");
        // The guest powers the slot on (ECAM at 0xb0000000; rp1's Slot Control at 0x6c):
        // removal goes through the attention button and stays pending.
        h.pio_write(0xcf8, 4, 0x8000_0060).unwrap();
        h.pio_write(0xcfc, 4, 0xb000_0001).unwrap();
        h.mmio_write(0xb001_006c, 2, 0x01c0).unwrap();
        assert!(c.device_del(&mut h, "net0").is_ok());
        c.unplug_requested("net0");
        assert_eq!(
            c.device_del(&mut h, "net0"),
            Err(ControlError::Generic(
                "Device net0 is already in the process of unplug".into()
            ))
        );
        let pending = |c: &ControlPlane, h: &Hierarchy| {
            c.slots(&Segments::from(h.clone()))[0].devices[0].state
        };
        assert_eq!(pending(&c, &h), DeviceState::UnplugPending);
        c.device_deleted("net0");
        assert_eq!(pending(&c, &h), DeviceState::Present);
        let ev = c.take_events();
        assert_eq!(ev[0].name, "DEVICE_DELETED");
        assert_eq!(ev[0].data["device"], "net0");
    }
}
