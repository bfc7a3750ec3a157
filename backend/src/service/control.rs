//! The control plane's operations on the root complex: what `device_add`, `device_del`,
//! `pcie-aer-inject-error` and the other QMP commands do to the hierarchy. Each operation ends
//! with [`RootComplex::report`], so frontends hear about it exactly as about a guest access.

use std::time::{Duration, Instant};

use log::info;

use super::RootComplex;
use crate::control::query_pci::query_pci;
use crate::control::{
    AerInject, ControlError, ControlOps, DeviceAdd, DeviceState, SlotDevice, SlotInfo,
};
use crate::pci::caps::slot::{SLTCTL_AIC, SLTCTL_PCC, SLTCTL_PIC, SLTSTA_PDS};
use crate::pci::port::PortFunction;
use crate::pci::Effects;
use crate::service::stats::HotplugStats;
use crate::topology::hierarchy::HotplugError;
use crate::topology::spec::EndpointSpec;
use crate::topology::DevFn;

/// The root bus's name, as QEMU's Q35 calls it.
const ROOT_BUS: &str = "pcie.0";

/// How long a `device_del` blocks another for the same device (QEMU 7.2's
/// `pending_deleted_expires_ms` for PCIe native hot-plug: pciehp waits 5 s after the button).
const UNPLUG_PENDING: Duration = Duration::from_secs(5);

/// What the control socket reports of a slot: power, indicators and presence (PCIe Base 6.0
/// §7.5.3.10 Slot Control, §7.5.3.11 Slot Status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SlotView {
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

impl RootComplex {
    /// `X_PCIERC_SLOT_CHANGED` events for every slot whose power, indicators or presence
    /// changed since the last call (the guest driving pciehp, a card arriving or leaving).
    pub(super) fn slot_events(&mut self) {
        let views: Vec<SlotView> = self
            .hierarchy
            .ports()
            .iter()
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
                let port = &self.hierarchy.spec().root_ports[i].config.id;
                self.control_events.push(super::ControlEvent {
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
    }

    fn control_result(&mut self, r: Result<Effects, HotplugError>) -> Result<(), ControlError> {
        match r {
            Ok(fx) => {
                self.report(fx);
                Ok(())
            }
            Err(HotplugError::UnknownId(id)) => Err(ControlError::DeviceNotFound(id)),
            Err(e) => Err(ControlError::Generic(e.to_string())),
        }
    }

    fn is_port(&self, id: &str) -> bool {
        self.hierarchy()
            .spec()
            .root_ports
            .iter()
            .any(|p| p.config.id == id)
    }
}

impl ControlOps for RootComplex {
    fn query_pci(&mut self) -> serde_json::Value {
        query_pci(self.hierarchy())
    }

    fn device_add(&mut self, req: &DeviceAdd) -> Result<(), ControlError> {
        let r = self.device_add_inner(req);
        self.count_hotplug(&r, |h| &mut h.device_add);
        r
    }

    fn device_del(&mut self, id: &str) -> Result<(), ControlError> {
        let r = self.device_del_inner(id);
        self.count_hotplug(&r, |h| &mut h.device_del);
        r
    }

    fn inject_aer(&mut self, req: &AerInject) -> Result<(), ControlError> {
        self.inject_aer_inner(req)
    }

    fn inject_pme(&mut self, id: &str) -> Result<(), ControlError> {
        info!("control: PME from {id}");
        let r = self.hierarchy_mut().raise_pme(id);
        self.control_result(r)
    }

    fn surprise_remove(&mut self, id: &str) -> Result<(), ControlError> {
        info!("control: surprise removal of {id}");
        let r = self.hierarchy_mut().surprise_remove(id);
        let r = self.control_result(r);
        self.count_hotplug(&r, |h| &mut h.surprise_removals);
        r
    }

    fn query_slots(&mut self) -> Vec<SlotInfo> {
        self.slots_info()
    }

    fn status(&mut self) -> String {
        "running".into()
    }

    fn quit(&mut self) {
        info!("control: quit");
    }

    fn query_stats(&mut self) -> serde_json::Value {
        let state_file = self.state_file.as_ref().map(|f| f.stats());
        self.stats.to_json(state_file)
    }

    fn command_done(&mut self, ok: bool) {
        let c = &mut self.stats.qmp_commands;
        c.commands += 1;
        if !ok {
            c.errors += 1;
        }
    }
}

impl RootComplex {
    /// Count a hot-plug command: in `field` when it succeeded, as refused otherwise.
    fn count_hotplug(
        &mut self,
        r: &Result<(), ControlError>,
        field: impl FnOnce(&mut HotplugStats) -> &mut u64,
    ) {
        let h = &mut self.stats.hotplug;
        match r {
            Ok(()) => *field(h) += 1,
            Err(_) => h.refused += 1,
        }
    }

    fn device_add_inner(&mut self, req: &DeviceAdd) -> Result<(), ControlError> {
        // QEMU's wording (qdev_set_parent_bus / qbus_find).
        if req.bus == ROOT_BUS {
            return Err(format!("Bus '{ROOT_BUS}' does not support hotplugging").into());
        }
        if !self.is_port(&req.bus) {
            return Err(format!("Bus '{}' not found", req.bus).into());
        }
        let owner = req
            .owner
            .clone()
            .unwrap_or_else(|| self.hierarchy().spec().default_owner.clone());
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
        let r = self.hierarchy_mut().hot_add(endpoint);
        self.control_result(r)
    }

    fn device_del_inner(&mut self, id: &str) -> Result<(), ControlError> {
        if self.is_port(id) {
            return Err(format!("Bus '{ROOT_BUS}' does not support hotplugging").into());
        }
        if self.hierarchy().endpoint(id).is_none() {
            return Err(ControlError::DeviceNotFound(id.into()));
        }
        // qdev_unplug(): a request still pending is not repeated (a second attention-button
        // press would cancel the first in the guest's pciehp).
        if self
            .unplug_requests
            .get(id)
            .is_some_and(|t| t.elapsed() < UNPLUG_PENDING)
        {
            return Err(format!("Device {id} is already in the process of unplug").into());
        }
        info!("control: device_del {id}");
        let r = self.hierarchy_mut().request_removal(id);
        self.control_result(r)?;
        self.unplug_requests.insert(id.to_string(), Instant::now());
        Ok(())
    }

    fn inject_aer_inner(&mut self, req: &AerInject) -> Result<(), ControlError> {
        if req.advisory_non_fatal {
            return Err(
                "advisory-non-fatal is not supported: inject the Advisory Non-Fatal correctable \
                 error (ADV_NONFATAL) instead"
                    .into(),
            );
        }
        if !self.is_port(&req.id) && self.hierarchy().endpoint(&req.id).is_none() {
            return Err(ControlError::DeviceNotFound(req.id.clone()));
        }
        info!(
            "control: AER {} ({:#x}) on {}",
            req.error, req.status_bits, req.id
        );
        // TLP prefixes are accepted and not logged: the root ports, like QEMU's, have no TLP
        // Prefix Log (AER Capabilities bit 11 clear).
        let header = req.header.unwrap_or([0; 4]);
        let r = self.hierarchy_mut().inject_error_logged(
            &req.id,
            req.severity(),
            req.status_bits,
            header,
        );
        self.control_result(r)
    }

    fn slots_info(&self) -> Vec<SlotInfo> {
        let h = &self.hierarchy;
        h.spec()
            .root_ports
            .iter()
            .zip(h.ports())
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
                    .map(|e| SlotDevice {
                        id: e.id.clone(),
                        driver: e.driver.clone(),
                        owner: e.owner.clone(),
                        addr: e.addr,
                        state: if self.unplug_requests.contains_key(&e.id) {
                            DeviceState::UnplugPending
                        } else {
                            DeviceState::Present
                        },
                    })
                    .collect(),
            })
            .collect()
    }
}
