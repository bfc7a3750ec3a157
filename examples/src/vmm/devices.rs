//! The endpoints this VMM serves itself behind pcierc's root ports: pcierc owns the hierarchy
//! (slots, bus numbers, windows), the VMM keeps its devices.
//!
//! Which endpoints exist is pcierc's word: every function of the topology whose `owner` is this
//! VMM's frontend name gets an [`Endpoint`] model, made when `FunctionAdded` arrives (a
//! cold-plug claim at start or a `device_add ... owner=<name>` on pcierc's control socket) and
//! dropped on `FunctionRemoved`. Where it is comes from the topology too: a configuration
//! access pcierc answers `EREMOTE` is looked up by (segment, bus, devfn) among this VMM's
//! present functions, and BAR0 decodes only inside a memory window of the root port above it
//! (windows are in the topology only while the port's Memory Space Enable is set), as a root
//! port forwards memory requests downstream.

use std::collections::BTreeMap;

use pcierc_protocol::{
    decode_name, function_flags, AddressSpace, FunctionKind, FunctionRecord, RangeKind, Topology,
};

use super::endpoint::{self, Effects, Endpoint};
use super::vfio::{function::Changes, Assigned};

/// A root port as a configuration request names it: (segment, bus, devfn).
pub type PortAddress = (u16, u8, u8);

/// What a write to one of the VMM's endpoints asks of the VMM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteOutcome {
    /// The model's effects.
    pub effects: Effects,
    /// The root port above the endpoint (its messages go upstream through it).
    pub port: Option<PortAddress>,
    /// The endpoint's device and function on its bus (its INTx is swizzled by its device
    /// number at the bridge above it: [`OwnDevices::intx_route`]).
    pub devfn: u8,
    /// For a passed-through function: its index and what its interrupts need.
    pub assigned: Option<(u32, Changes)>,
}

/// A function this VMM serves.
pub enum Model {
    /// The VMM's test endpoint.
    Emulated(Endpoint),
    /// A host function passed through (`--vfio`).
    Assigned(Box<Assigned>),
}

/// One endpoint and where pcierc says it is.
pub struct OwnedEndpoint {
    /// Its id in pcierc's hierarchy.
    pub id: String,
    /// The device model.
    pub model: Model,
    /// Its record in the latest topology (bus, devfn, present, parent).
    pub record: FunctionRecord,
    /// The root port above it, if behind one.
    pub port: Option<PortAddress>,
    /// The port's memory windows (base, size) that currently forward to it.
    windows: Vec<(u64, u64)>,
}

impl OwnedEndpoint {
    /// The BAR and offset in it that a memory request to `addr` reaches: a memory BAR decodes
    /// it and, behind a root port, one of the port's memory windows holds it.
    pub fn bar_offset(&self, addr: u64) -> Option<(u8, u64)> {
        let inside = |&(b, s): &(u64, u64)| addr >= b && addr - b < s;
        if self.port.is_some() && !self.windows.iter().any(inside) {
            return None;
        }
        match &self.model {
            Model::Emulated(e) => {
                let (base, size) = e.bar0()?;
                inside(&(base, size)).then_some((0, addr - base))
            }
            Model::Assigned(a) => a
                .view
                .decoded()
                .into_iter()
                .find(|(bar, base)| !bar.io && inside(&(*base, bar.size)))
                .map(|(bar, base)| (bar.index, addr - base)),
        }
    }

    /// The test endpoint's model, if this is one.
    pub fn emulated(&self) -> Option<&Endpoint> {
        match &self.model {
            Model::Emulated(e) => Some(e),
            Model::Assigned(_) => None,
        }
    }

    /// "BB:DD.F" where it is now.
    pub fn bdf(&self) -> String {
        format!(
            "{:02x}:{:02x}.{}",
            self.record.bus,
            self.record.devfn >> 3,
            self.record.devfn & 7
        )
    }
}

/// Counters for `--stats`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Endpoints instantiated.
    pub added: u64,
    /// Endpoints dropped.
    pub removed: u64,
    /// Configuration accesses served after pcierc's `EREMOTE`.
    pub config_accesses: u64,
    /// BAR accesses served.
    pub bar_accesses: u64,
    /// Interrupt messages delivered.
    pub messages: u64,
    /// Interrupt messages lost (Bus Master Enable clear on the endpoint or its root port, or
    /// an address that is not the local APIC's).
    pub lost: u64,
}

/// The VMM's own endpoints.
pub struct OwnDevices {
    name: String,
    topology: Topology,
    devices: BTreeMap<String, OwnedEndpoint>,
    /// How endpoints with these ids signal (absent: MSI-X).
    interrupts: BTreeMap<String, endpoint::Interrupts>,
    /// Passed-through functions opened at start, by function id, waiting for their
    /// `FunctionAdded` (and again after their `FunctionRemoved`).
    assigned: BTreeMap<String, Box<Assigned>>,
    /// Counters.
    pub stats: DeviceStats,
}

impl OwnDevices {
    /// No endpoints yet; `name` is this VMM's frontend name (the `owner` of its functions).
    pub fn new(name: &str, topology: Topology) -> OwnDevices {
        OwnDevices {
            name: name.to_string(),
            topology,
            devices: BTreeMap::new(),
            interrupts: BTreeMap::new(),
            assigned: BTreeMap::new(),
            stats: DeviceStats::default(),
        }
    }

    /// The endpoint with function id `id`, when it is made, signals through `interrupts`.
    pub fn set_interrupts(&mut self, id: &str, interrupts: endpoint::Interrupts) {
        self.interrupts.insert(id.to_owned(), interrupts);
    }

    /// A passed-through function, served once pcierc adds it under its id.
    pub fn add_assigned(&mut self, a: Assigned) {
        self.assigned.insert(a.id(), Box::new(a));
    }

    fn model(&mut self, id: &str) -> Model {
        if let Some(a) = self.assigned.remove(id) {
            return Model::Assigned(a);
        }
        let interrupts = self.interrupts.get(id).copied().unwrap_or_default();
        Model::Emulated(Endpoint::with_interrupts(
            endpoint::serial_number(id),
            interrupts,
        ))
    }

    fn mine(&self, r: &FunctionRecord) -> bool {
        r.kind == FunctionKind::Endpoint as u8
            && r.flags & function_flags::EMULATED == 0
            && decode_name(&r.owner) == Some(self.name.as_str())
    }

    /// Models for every function of the topology this VMM owns and does not serve yet (those
    /// declared in pcierc's topology, or left by an earlier run under the same name); their ids.
    pub fn adopt(&mut self) -> Vec<String> {
        let records: Vec<FunctionRecord> = self
            .topology
            .functions
            .iter()
            .filter(|r| self.mine(r))
            .copied()
            .collect();
        records.iter().filter_map(|r| self.add(r)).collect()
    }

    /// `FunctionAdded`: a new model for `record` (its id), unless it is not this VMM's or is
    /// served already.
    pub fn add(&mut self, record: &FunctionRecord) -> Option<String> {
        let id = decode_name(&record.id)?.to_string();
        if !self.mine(record) || self.devices.contains_key(&id) {
            return None;
        }
        let model = self.model(&id);
        let mut ep = OwnedEndpoint {
            model,
            id: id.clone(),
            record: *record,
            port: None,
            windows: Vec::new(),
        };
        self.place(&mut ep);
        self.devices.insert(id.clone(), ep);
        self.stats.added += 1;
        Some(id)
    }

    /// A platform reset: every endpoint back to its power-on state (the cards stay in their
    /// slots, as QEMU's system reset keeps its devices).
    /// Passed-through functions' changes (routes to drop, MSI-X to disable) for the caller.
    pub fn reset(&mut self) -> Vec<(u32, Changes)> {
        self.devices
            .values_mut()
            .filter_map(|ep| Self::reset_model(&ep.id, &mut ep.model))
            .collect()
    }

    fn reset_model(id: &str, model: &mut Model) -> Option<(u32, Changes)> {
        match model {
            Model::Emulated(e) => {
                *e = Endpoint::with_interrupts(endpoint::serial_number(id), e.interrupts());
                None
            }
            Model::Assigned(a) => {
                // VFIO_DEVICE_RESET (FLR, PM or bus reset as the host kernel can), then the
                // guest's view back to its reset state.
                a.view.io().reset();
                Some((a.index, a.view.reset()))
            }
        }
    }

    /// `FunctionReset`: the endpoint `record` names back to its power-on state (the guest reset
    /// the bus below its port or powered its slot off): its id, and for a passed-through
    /// function what its interrupts need; `None` if not served here.
    pub fn reset_function(
        &mut self,
        record: &FunctionRecord,
    ) -> Option<(String, Option<(u32, Changes)>)> {
        let ep = self.devices.get_mut(decode_name(&record.id)?)?;
        let changes = Self::reset_model(&ep.id, &mut ep.model);
        Some((ep.id.clone(), changes))
    }

    /// `FunctionRemoved`: drop the model (a passed-through function waits to be added again);
    /// its id, and for a passed-through function its index (its vectors are to be dropped).
    pub fn remove(&mut self, record: &FunctionRecord) -> Option<(String, Option<u32>)> {
        let ep = self.devices.remove(decode_name(&record.id)?)?;
        self.stats.removed += 1;
        let index = match ep.model {
            Model::Emulated(_) => None,
            Model::Assigned(mut a) => {
                let index = a.index;
                // Out of the guest: its interrupts off in the host driver (the caller drops its
                // irqfds) and the device reset, ready to be added again.
                if a.view.msix_place().is_some() {
                    if let Err(e) = a.view.io().disable_msix() {
                        log::debug!("{}: disabling MSI-X: {e}", a.host.sbdf);
                    }
                }
                a.view.io().reset();
                a.view.reset();
                self.assigned.insert(ep.id.clone(), a);
                Some(index)
            }
        };
        Some((ep.id, index))
    }

    /// `LayoutChanged`: bus numbers, presence and windows as they are now.
    pub fn set_topology(&mut self, topology: Topology) {
        self.topology = topology;
        let mut devices = std::mem::take(&mut self.devices);
        for ep in devices.values_mut() {
            self.place(ep);
        }
        self.devices = devices;
    }

    /// Update an endpoint's record, port and windows from the current topology (a function
    /// missing from it keeps its last record: `FunctionRemoved` will say it is gone).
    fn place(&self, ep: &mut OwnedEndpoint) {
        let t = &self.topology;
        if let Some(r) = t
            .functions
            .iter()
            .find(|r| self.mine(r) && decode_name(&r.id) == Some(ep.id.as_str()))
        {
            ep.record = *r;
        }
        ep.port = t
            .functions
            .get(usize::from(ep.record.parent))
            .filter(|p| p.kind == FunctionKind::RootPort as u8)
            .map(|p| (p.segment, p.bus, p.devfn));
        ep.windows = match ep.port {
            None => Vec::new(),
            Some((segment, bus, devfn)) => t
                .ranges
                .iter()
                .filter(|r| {
                    r.space == AddressSpace::Mmio as u8
                        && matches!(
                            RangeKind::try_from(r.kind),
                            Ok(RangeKind::MemWindow | RangeKind::PrefMemWindow)
                        )
                        && (r.segment, r.bus, r.devfn) == (segment, bus, devfn)
                })
                .map(|r| (r.base, r.size))
                .collect(),
        };
    }

    /// Where INTA of the function at `devfn` below `port` arrives on the root bus: (segment,
    /// devfn of the root port, pin). Each bridge on the way up maps pin `p` of device `d` below
    /// it to pin `(p - 1 + d) mod 4 + 1` of its own slot (PCI-to-PCI Bridge 1.2 §9.1): below a
    /// root or downstream port the function is device 0 and INTA stays INTA; below a
    /// `pcie-pci-bridge` its device number (1-31) counts, and through a switch the downstream
    /// port's device number on the switch's internal bus. `None` if `port` is not a port in the
    /// topology.
    pub fn intx_route(&self, port: PortAddress, devfn: u8) -> Option<(u16, u8, u8)> {
        let t = &self.topology;
        let mut at = t.functions.iter().find(|f| {
            f.kind == FunctionKind::RootPort as u8 && (f.segment, f.bus, f.devfn) == port
        })?;
        let mut pin = (devfn >> 3) % 4 + 1;
        // Bounded by the number of records: a parent chain longer than that is a cycle.
        for _ in 0..t.functions.len() {
            if at.parent == pcierc_protocol::NO_PARENT {
                return Some((at.segment, at.devfn, pin));
            }
            pin = (pin - 1 + (at.devfn >> 3)) % 4 + 1;
            at = t.functions.get(usize::from(at.parent))?;
        }
        None
    }

    /// The endpoint at (segment, bus, devfn), if this VMM serves one there now.
    pub fn at(&mut self, segment: u16, bus: u8, devfn: u8) -> Option<&mut OwnedEndpoint> {
        self.devices.values_mut().find(|ep| {
            let r = &ep.record;
            r.flags & function_flags::PRESENT != 0
                && (r.segment, r.bus, r.devfn) == (segment, bus, devfn)
        })
    }

    /// A configuration read of an endpoint of this VMM; `None` if it serves none there.
    pub fn config_read(
        &mut self,
        segment: u16,
        bus: u8,
        devfn: u8,
        offset: u16,
        width: u8,
    ) -> Option<u32> {
        let v = match &self.at(segment, bus, devfn)?.model {
            Model::Emulated(e) => e.config_read(offset, width),
            Model::Assigned(a) => a.view.config_read(offset, width),
        };
        self.stats.config_accesses += 1;
        Some(v)
    }

    /// A configuration write; `None` if this VMM serves no endpoint there.
    pub fn config_write(
        &mut self,
        segment: u16,
        bus: u8,
        devfn: u8,
        offset: u16,
        width: u8,
        value: u32,
    ) -> Option<WriteOutcome> {
        let ep = self.at(segment, bus, devfn)?;
        let port = ep.port;
        let outcome = match &mut ep.model {
            Model::Emulated(e) => WriteOutcome {
                effects: e.config_write(offset, width, value),
                port,
                devfn: ep.record.devfn,
                assigned: None,
            },
            Model::Assigned(a) => WriteOutcome {
                effects: Effects::default(),
                port,
                devfn: ep.record.devfn,
                assigned: Some((a.index, a.view.config_write(offset, width, value))),
            },
        };
        let bars =
            outcome.effects.bars_changed || outcome.assigned.as_ref().is_some_and(|(_, c)| c.bars);
        if bars {
            let now = match &ep.model {
                Model::Emulated(e) => format!("BAR0 {:x?}", e.bar0()),
                Model::Assigned(a) => format!("BARs {:x?}", a.view.decoded()),
            };
            log::info!("endpoint {} ({}): {now}", ep.id, ep.bdf());
        }
        self.stats.config_accesses += 1;
        Some(outcome)
    }

    /// The endpoint a memory request to `addr` reaches, its BAR and the offset in it.
    fn bar_at(&mut self, addr: u64) -> Option<(&mut OwnedEndpoint, u8, u64)> {
        self.devices
            .values_mut()
            .find_map(|ep| ep.bar_offset(addr).map(|(bar, offset)| (ep, bar, offset)))
    }

    /// An MMIO read in one of this VMM's endpoints' BARs; `None` if none decodes it.
    pub fn mmio_read(&mut self, addr: u64, width: u8) -> Option<u64> {
        let (ep, bar, offset) = self.bar_at(addr)?;
        let v = match &ep.model {
            Model::Emulated(e) => e.bar_read(bar, offset, width),
            Model::Assigned(a) => {
                let mut buf = [0u8; 8];
                let n = usize::from(width.min(8));
                a.view.bar_read(bar, offset, &mut buf[..n]);
                u64::from_le_bytes(buf)
            }
        };
        self.stats.bar_accesses += 1;
        Some(v)
    }

    /// An MMIO write in one of this VMM's endpoints' BARs: its effects and the root port above
    /// the endpoint; `None` if none decodes it.
    pub fn mmio_write(&mut self, addr: u64, width: u8, value: u64) -> Option<WriteOutcome> {
        let (ep, bar, offset) = self.bar_at(addr)?;
        let port = ep.port;
        let outcome = match &mut ep.model {
            Model::Emulated(e) => WriteOutcome {
                effects: e.bar_write(bar, offset, width, value),
                port,
                devfn: ep.record.devfn,
                assigned: None,
            },
            Model::Assigned(a) => {
                let n = usize::from(width.min(8));
                let changes = a.view.bar_write(bar, offset, &value.to_le_bytes()[..n]);
                WriteOutcome {
                    effects: Effects::default(),
                    port,
                    devfn: ep.record.devfn,
                    assigned: Some((a.index, changes)),
                }
            }
        };
        self.stats.bar_accesses += 1;
        Some(outcome)
    }

    /// The passed-through function whose MSI-X PBA a memory read of `addr` reaches: its index
    /// and number of vectors.
    pub fn assigned_pba_at(&mut self, addr: u64) -> Option<(u32, u16)> {
        let (ep, bar, offset) = self.bar_at(addr)?;
        let Model::Assigned(a) = &ep.model else {
            return None;
        };
        let place = a.view.msix_place()?;
        let pba_len = u64::from(place.vectors).div_ceil(64) * 8;
        (place.pba.0 == bar && offset >= place.pba.1 && offset < place.pba.1 + pba_len)
            .then_some((a.index, place.vectors))
    }

    /// The error report of served passed-through function `index` (its AER registers, at its
    /// place in the guest's hierarchy), after reading its error eventfd; `None` if it is not
    /// served now (not present: nothing to report to the guest).
    pub fn assigned_error(&mut self, index: u32) -> Option<pcierc_protocol::ErrorReport> {
        self.devices.values_mut().find_map(|ep| match &ep.model {
            Model::Assigned(a) if a.index == index => {
                if let Some(fd) = &a.error {
                    let _ = fd.read();
                }
                let r = &ep.record;
                Some(super::vfio::errors::report(
                    &a.view, r.segment, r.bus, r.devfn,
                ))
            }
            _ => None,
        })
    }

    /// The error eventfds of the passed-through functions (index, fd), for the VMM to poll.
    pub fn assigned_error_fds(&self) -> Vec<(u32, std::os::fd::RawFd)> {
        use std::os::fd::AsRawFd;
        let served = self.devices.values().filter_map(|ep| match &ep.model {
            Model::Assigned(a) => Some(&**a),
            Model::Emulated(_) => None,
        });
        served
            .chain(self.assigned.values().map(|a| &**a))
            .filter_map(|a| a.error.as_ref().map(|fd| (a.index, fd.as_raw_fd())))
            .collect()
    }

    /// The passed-through function with index `index`, served or waiting.
    pub fn assigned_mut(&mut self, index: u32) -> Option<&mut Assigned> {
        let served = self
            .devices
            .values_mut()
            .find_map(|ep| match &mut ep.model {
                Model::Assigned(a) if a.index == index => Some(a),
                _ => None,
            });
        match served {
            Some(a) => Some(a),
            None => self.assigned.values_mut().find(|a| a.index == index),
        }
        .map(|a| &mut **a)
    }

    /// The segment of pcierc's hierarchy (its host bridge's), which configuration mechanism #1
    /// reaches.
    pub fn segment(&self) -> u16 {
        self.topology.functions.first().map_or(0, |f| f.segment)
    }

    /// How many endpoints are served now.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether no endpoint is served now.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcierc_protocol::{encode_name, AddressRange, NO_PARENT};

    fn record(
        id: &str,
        owner: &str,
        kind: FunctionKind,
        bus: u8,
        devfn: u8,
        parent: u16,
    ) -> FunctionRecord {
        FunctionRecord {
            bus,
            devfn,
            kind: kind as u8,
            flags: function_flags::PRESENT,
            parent,
            id: encode_name(id).unwrap_or_default(),
            owner: encode_name(owner).unwrap_or_default(),
            ..Default::default()
        }
    }

    fn topology(window: Option<(u64, u64)>, ep_bus: u8) -> Topology {
        let mut port = record("rp1", "pcierc", FunctionKind::RootPort, 0, 0x10, NO_PARENT);
        port.flags |= function_flags::EMULATED;
        Topology {
            generation: 1,
            functions: vec![
                record("mch", "pcierc", FunctionKind::HostBridge, 0, 0, NO_PARENT),
                port,
                record("ep-rp1", "vmm", FunctionKind::Endpoint, ep_bus, 0, 1),
                record("gpu0", "gpu-dm", FunctionKind::Endpoint, 2, 0, 1),
            ],
            ecam: vec![],
            ranges: window
                .map(|(base, size)| AddressRange {
                    base,
                    size,
                    space: AddressSpace::Mmio as u8,
                    kind: RangeKind::MemWindow as u8,
                    devfn: 0x10,
                    ..Default::default()
                })
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn endpoints_follow_the_topology() {
        let mut d = OwnDevices::new("vmm", topology(None, 1));
        assert_eq!(
            d.adopt(),
            vec!["ep-rp1".to_string()],
            "another owner's function is not adopted"
        );
        assert_eq!(d.config_read(0, 1, 0, 0, 4), Some(0x0005_1b36));
        assert_eq!(d.config_read(0, 2, 0, 0, 4), None);
        // The guest renumbers the bus behind rp1.
        d.set_topology(topology(None, 5));
        assert_eq!(d.config_read(0, 1, 0, 0, 4), None);
        assert_eq!(d.config_read(0, 5, 0, 0, 4), Some(0x0005_1b36));

        // BAR0 at 0xc020_0000 with Memory Space: reachable only inside rp1's memory window.
        d.config_write(0, 5, 0, 0x10, 4, 0xc020_0000);
        d.config_write(0, 5, 0, 0x04, 2, 0x0006);
        assert_eq!(d.mmio_read(0xc020_0000, 4), None, "rp1 forwards no memory");
        d.set_topology(topology(Some((0xc020_0000, 0x10_0000)), 5));
        assert_eq!(
            d.mmio_read(0xc020_0000, 4),
            Some(u64::from(endpoint::REG_ID_VALUE))
        );
        assert_eq!(d.mmio_read(0xc020_4000, 4), None, "past BAR0");
        d.set_topology(topology(Some((0xc020_0000, 0x2000)), 5));
        assert!(d.mmio_read(0xc020_1ffc, 4).is_some());
        assert_eq!(d.mmio_read(0xc020_2000, 4), None, "outside rp1's window");

        // FunctionReset: the model is back to its power-on state (BAR0 and decode cleared).
        let rec = record("ep-rp1", "vmm", FunctionKind::Endpoint, 5, 0, 1);
        assert_eq!(d.reset_function(&rec), Some(("ep-rp1".into(), None)));
        assert_eq!(
            d.mmio_read(0xc020_0000, 4),
            None,
            "decode off after the reset"
        );
        assert_eq!(
            d.config_read(0, 5, 0, 0x10, 4).map(|v| v & !0xf),
            Some(0),
            "BAR0's address cleared"
        );
        let other = record("gpu0", "gpu-dm", FunctionKind::Endpoint, 2, 0, 1);
        assert_eq!(d.reset_function(&other), None, "not served here");
        assert_eq!(d.remove(&rec), Some(("ep-rp1".into(), None)));
        assert!(d.is_empty());
        assert_eq!(d.config_read(0, 5, 0, 0, 4), None);
        assert_eq!(
            d.add(&rec),
            Some("ep-rp1".into()),
            "hot-added again: a fresh model"
        );
        assert_eq!(d.add(&rec), None, "already served");
        assert_eq!((d.stats.added, d.stats.removed), (2, 1));
    }

    /// INTA of an endpoint below a switch arrives at the root port swizzled by each bridge on
    /// the way up (PCI-to-PCI Bridge 1.2 §9.1): below dp2 at device 1 of the switch's internal
    /// bus, INTA becomes INTB at the upstream port and stays INTB through rp1 (device 0).
    #[test]
    fn intx_is_swizzled_through_a_switch() {
        let mut t = topology(None, 1);
        let port = |id, bus, devfn, parent| {
            let mut r = record(id, "pcierc", FunctionKind::RootPort, bus, devfn, parent);
            r.flags |= function_flags::EMULATED;
            r
        };
        t.functions.push(port("up1", 1, 0, 1)); // 4
        t.functions.push(port("dp1", 2, 0, 4)); // 5
        t.functions.push(port("dp2", 2, 8, 4)); // 6
        let d = OwnDevices::new("vmm", t);
        assert_eq!(
            d.intx_route((0, 0, 0x10), 0),
            Some((0, 0x10, 1)),
            "root port"
        );
        assert_eq!(
            d.intx_route((0, 2, 0), 0),
            Some((0, 0x10, 1)),
            "dp1: device 0"
        );
        assert_eq!(
            d.intx_route((0, 2, 8), 0),
            Some((0, 0x10, 2)),
            "dp2: device 1"
        );
        assert_eq!(d.intx_route((0, 9, 0), 0), None);
    }

    /// Below a `pcie-pci-bridge` (a conventional bus, devices 1-31) the endpoint's own device
    /// number swizzles its INTA at the bridge (PCI-to-PCI Bridge 1.2 §9.1): device 1 -> INTB,
    /// device 3 -> INTD, device 4 -> INTA again; the bridge at device 0 below rp1 passes it on.
    #[test]
    fn intx_is_swizzled_by_the_device_number_below_a_bridge() {
        let mut t = topology(None, 1);
        let mut br1 = record("br1", "pcierc", FunctionKind::RootPort, 1, 0, 1);
        br1.flags |= function_flags::EMULATED;
        t.functions.push(br1);
        let d = OwnDevices::new("vmm", t);
        for (device, pin) in [(1u8, 2u8), (2, 3), (3, 4), (4, 1), (31, 4)] {
            assert_eq!(
                d.intx_route((0, 1, 0), device << 3),
                Some((0, 0x10, pin)),
                "device {device} below br1"
            );
        }
    }
}
