//! Functions arriving and leaving below a `pcie-pci-bridge`: the hierarchy's side of the
//! bridge's Standard Hot-Plug Controller (SHPC 1.0; QEMU 7.2's `shpc_device_plug_cb()`,
//! `shpc_device_unplug_request_cb()` and `shpc_free_devices_in_slot()`). SHPC logical slot `n`
//! is device `n` (1-31) of the bridge's conventional secondary bus; a slot holds the functions
//! of one device number. The register behaviour lives in the SHPC model
//! ([`crate::pci::caps::shpc`]); this module keeps the functions, the routing tables and the
//! events for the service in step with it, as `hotplug.rs` does for the ports' slots.

use super::{Hierarchy, HierarchyEvent};
use crate::pci::caps::shpc::{ShpcError, ShpcUnplug};
use crate::pci::Effects;
use crate::topology::spec::EndpointSpec;

use super::hotplug::HotplugError;

impl Hierarchy {
    /// The index of the `pcie-pci-bridge` with this id.
    pub(super) fn bridge_index(&self, id: &str) -> Option<usize> {
        self.spec.bridges.iter().position(|b| b.config.id == id)
    }

    /// The bridge function `id` sits below and its device number (its SHPC slot), if it sits
    /// below a `pcie-pci-bridge`.
    pub(super) fn below_bridge(&self, id: &str) -> Option<(usize, u8)> {
        let e = self.endpoint(id)?;
        Some((self.bridge_index(&e.bus)?, e.addr.device()))
    }

    fn shpc_err(&self, j: usize) -> impl Fn(ShpcError) -> HotplugError + '_ {
        move |source| HotplugError::Shpc {
            bridge: self.spec.bridges[j].config.id.clone(),
            source,
        }
    }

    /// Plug a function another emulator serves below bridge `j`, with QEMU 7.2's checks in its
    /// order: the device and function number free on the bus (`do_pci_register_device()`),
    /// then the SHPC slot (`shpc_device_plug_common()`: devices 1-31 only). Function 0 fills
    /// the slot: hot-plugged, the MRL closes, a card is present and Attention Button Pressed,
    /// MRL Sensor Changed and Card Presence Changed are latched (an interrupt if unmasked);
    /// cold-plugged, the slot is enabled with its power indicator on and no event. Further
    /// functions of a multi-function card join an occupied slot without an event, as behind a
    /// port (function 0 first: docs/qemu-compat.md).
    pub(super) fn plug_below_bridge(
        &mut self,
        j: usize,
        endpoint: EndpointSpec,
        cold: bool,
    ) -> Result<Effects, HotplugError> {
        Self::not_emulated(&endpoint)?;
        self.owner_and_id_free(&endpoint)?;
        if let Some(other) = self
            .spec
            .endpoints
            .iter()
            .find(|e| e.bus == endpoint.bus && e.addr == endpoint.addr)
        {
            return Err(HotplugError::DevfnInUse {
                device: endpoint.addr.device(),
                function: endpoint.addr.function(),
                driver: endpoint.driver.clone(),
                other_driver: other.driver.clone(),
                other: other.id.clone(),
            });
        }
        let device = endpoint.addr.device();
        let occupied = self.bridges[j].slot_occupied(device);
        if !occupied {
            self.bridges[j]
                .may_hot_add(device)
                .map_err(self.shpc_err(j))?;
            if endpoint.addr.function() != 0 {
                return Err(HotplugError::FunctionZeroFirst {
                    function: endpoint.addr.function(),
                    id: endpoint.id,
                });
            }
        }
        let mut spec = self.spec.clone();
        spec.endpoints.push(endpoint.clone());
        spec.validate()?;
        let fx = match (occupied, cold) {
            (true, _) => Effects::empty(),
            (false, false) => self.bridges[j].hot_add(device).map_err(self.shpc_err(j))?,
            (false, true) => {
                self.bridges[j]
                    .set_present(device)
                    .map_err(self.shpc_err(j))?;
                Effects::empty()
            }
        };
        self.spec = spec;
        self.rebuild_slots();
        self.generation += 1;
        self.events.push(HierarchyEvent::FunctionAdded { endpoint });
        Ok(self.after_bridge(j, fx))
    }

    /// QEMU's `shpc_device_unplug_request_cb()` for the card at `device` below bridge `j`:
    /// refused while the slot's power indicator blinks on `pc-q35-10.0`; a slot the guest keeps
    /// disabled with its power indicator off gives the card (every function at that device
    /// number) up at once; otherwise Attention Button Pressed is latched and the card goes
    /// when the guest disables the slot with its power indicator off. A `FunctionRemoved`
    /// event for each function says when.
    pub(super) fn request_removal_below_bridge(
        &mut self,
        j: usize,
        device: u8,
    ) -> Result<Effects, HotplugError> {
        let (how, fx) = self.bridges[j]
            .unplug_request(device)
            .map_err(self.shpc_err(j))?;
        if how == ShpcUnplug::Now {
            self.remove_below_bridge(j, &[device], false);
        }
        Ok(self.after_bridge(j, fx))
    }

    /// Surprise removal of the card at `device` below bridge `j`: the MRL opens and the slot
    /// reads empty (MRL Sensor Changed, Card Presence Changed) without the guest's consent.
    pub(super) fn surprise_remove_below_bridge(
        &mut self,
        j: usize,
        device: u8,
    ) -> Result<Effects, HotplugError> {
        let fx = self.bridges[j].removed(device).map_err(self.shpc_err(j))?;
        self.remove_below_bridge(j, &[device], true);
        Ok(self.after_bridge(j, fx))
    }

    /// The functions at `devices` below bridge `j` are gone: out of the spec and the routing
    /// tables, a `FunctionRemoved` each for their owners.
    pub(super) fn remove_below_bridge(&mut self, j: usize, devices: &[u8], surprise: bool) {
        let Some(id) = self.spec.bridges.get(j).map(|b| b.config.id.clone()) else {
            return;
        };
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.spec.endpoints)
            .into_iter()
            .partition(|e| e.bus == id && devices.contains(&e.addr.device()));
        self.spec.endpoints = kept;
        if gone.is_empty() {
            return;
        }
        self.rebuild_slots();
        for endpoint in gone {
            self.events
                .push(HierarchyEvent::FunctionRemoved { endpoint, surprise });
        }
        self.generation += 1;
    }
}
