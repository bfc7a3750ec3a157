//! The hierarchy as frontends see it: the protocol's [`Topology`] and a human-readable tree.

use std::fmt::Write as _;

use pcierc_protocol::{
    encode_name, function_flags, AddressRange, AddressSpace, EcamWindow, FunctionKind,
    FunctionRecord, RangeKind, Topology, NO_PARENT,
};

use super::hierarchy::{Hierarchy, CONFIG_ADDRESS_PORT, CONFIG_DATA_PORT};
use super::spec::{EndpointSpec, PCIERC_OWNER, ROOT_BUS};
use crate::pci::port::PortFunction;
use crate::pci::PciFunction;

/// Identity registers of an emulated function: (vendor, device, class code, multifunction).
fn identity(f: &dyn PciFunction) -> (u16, u16, u32, bool) {
    let id = f.config_read(0, 4);
    let class = f.config_read(8, 4) >> 8;
    let header = f.config_read(0xc, 4) >> 16;
    (id as u16, (id >> 16) as u16, class, header & 0x80 != 0)
}

fn name(s: &str) -> [u8; pcierc_protocol::NAME_LEN] {
    // Names were validated with the spec (valid_name), so they always encode.
    encode_name(s).unwrap_or_default()
}

impl Hierarchy {
    /// The topology record frontends receive (`GetTopology`, `LayoutChanged`).
    pub fn describe(&self) -> Topology {
        let spec = self.spec();
        let mut functions = Vec::with_capacity(1 + spec.root_ports.len() + spec.endpoints.len());
        let emulated = function_flags::PRESENT | function_flags::EMULATED;
        let (v, d, c, mf) = identity(self.mch());
        functions.push(FunctionRecord {
            vendor_id: v,
            device_id: d,
            class_code: c,
            kind: FunctionKind::HostBridge as u8,
            flags: emulated | if mf { function_flags::MULTIFUNCTION } else { 0 },
            parent: NO_PARENT,
            id: name(self.host_bridge_id()),
            owner: name(PCIERC_OWNER),
            ..Default::default()
        });
        let mut ranges = vec![
            AddressRange {
                base: CONFIG_ADDRESS_PORT,
                size: 4,
                space: AddressSpace::Pio as u8,
                kind: RangeKind::ConfigAddress as u8,
                ..Default::default()
            },
            AddressRange {
                base: CONFIG_DATA_PORT,
                size: 4,
                space: AddressSpace::Pio as u8,
                kind: RangeKind::ConfigData as u8,
                ..Default::default()
            },
        ];
        for (p, ps) in self.ports().iter().zip(&spec.root_ports) {
            let (v, d, c, mf) = identity(p);
            functions.push(FunctionRecord {
                devfn: ps.addr.0,
                vendor_id: v,
                device_id: d,
                class_code: c,
                kind: FunctionKind::RootPort as u8,
                flags: emulated | if mf { function_flags::MULTIFUNCTION } else { 0 },
                parent: NO_PARENT,
                secondary_bus: p.secondary_bus(),
                subordinate_bus: p.subordinate_bus(),
                id: name(&ps.config.id),
                owner: name(PCIERC_OWNER),
                ..Default::default()
            });
            let at = |base: u64, size: u64, space: AddressSpace, kind: RangeKind, bar: u8| {
                AddressRange {
                    base,
                    size,
                    space: space as u8,
                    kind: kind as u8,
                    devfn: ps.addr.0,
                    bar,
                    ..Default::default()
                }
            };
            for b in p.bars() {
                ranges.push(at(
                    b.base,
                    b.size,
                    AddressSpace::Mmio,
                    RangeKind::Bar,
                    b.index,
                ));
            }
            let w = p.windows();
            if let Some((base, size)) = w.io {
                ranges.push(at(base, size, AddressSpace::Pio, RangeKind::IoWindow, 0));
            }
            if let Some((base, size)) = w.mem {
                ranges.push(at(base, size, AddressSpace::Mmio, RangeKind::MemWindow, 0));
            }
            if let Some((base, size)) = w.pref {
                ranges.push(at(
                    base,
                    size,
                    AddressSpace::Mmio,
                    RangeKind::PrefMemWindow,
                    0,
                ));
            }
        }
        functions.extend(spec.endpoints.iter().map(|e| self.endpoint_record(e)));
        let ecam = self
            .ecam()
            .map(|(base, size, end_bus)| EcamWindow {
                base,
                size,
                segment: spec.segment,
                start_bus: 0,
                end_bus,
                reserved: 0,
            })
            .into_iter()
            .collect();
        // Every record belongs to this hierarchy's segment; the CONFIG_ADDRESS/CONFIG_DATA
        // ranges to none (configuration mechanism #1 reaches segment 0 only, and
        // [`super::Segments::describe`] keeps them from segment 0 alone).
        for f in &mut functions {
            f.segment = spec.segment;
        }
        for r in &mut ranges {
            if r.kind != RangeKind::ConfigAddress as u8 && r.kind != RangeKind::ConfigData as u8 {
                r.segment = spec.segment;
            }
        }
        Topology {
            generation: self.generation(),
            functions,
            ecam,
            ranges,
        }
    }

    /// The record of a function another emulator serves (also for one that just left: its
    /// address is where it was).
    pub fn endpoint_record(&self, e: &EndpointSpec) -> FunctionRecord {
        let spec = self.spec();
        let (bus, present, parent) = if e.bus == ROOT_BUS {
            (0, true, NO_PARENT)
        } else {
            let pi = spec
                .root_ports
                .iter()
                .position(|p| p.config.id == e.bus)
                .unwrap_or(0);
            let sec = self.ports().get(pi).map_or(0, |p| p.secondary_bus());
            (sec, sec != 0, pi as u16 + 1)
        };
        FunctionRecord {
            segment: spec.segment,
            bus,
            devfn: e.addr.0,
            vendor_id: 0xffff,
            device_id: 0xffff,
            kind: FunctionKind::Endpoint as u8,
            flags: if present { function_flags::PRESENT } else { 0 }
                | if e.multifunction {
                    function_flags::MULTIFUNCTION
                } else {
                    0
                },
            parent,
            id: name(&e.id),
            owner: name(&e.owner),
            ..Default::default()
        }
    }

    /// The hierarchy as a tree, for the start-up banner.
    pub fn tree(&self) -> String {
        let spec = self.spec();
        let mut out = String::new();
        let host = self.host_bridge_id();
        let (root, kind) = match self.mch().as_mch() {
            Some(_) => (ROOT_BUS, "Q35 host bridge"),
            None => (host, "host bridge"),
        };
        let _ = writeln!(out, "{root} (segment {:04x})", spec.segment);
        let (v, d, _, _) = identity(self.mch());
        let _ = writeln!(
            out,
            "├── 00:00.0 {host:<13} [{v:04x}:{d:04x}] {kind} (pcierc)"
        );
        match self.ecam() {
            Some((base, size, end)) => {
                let _ = writeln!(out, "│   ECAM {base:#x}+{size:#x} buses 00-{end:02x}");
            }
            None => {
                let _ = writeln!(out, "│   ECAM disabled (PCIEXBAR)");
            }
        }
        let root_eps: Vec<_> = spec
            .endpoints
            .iter()
            .filter(|e| e.bus == ROOT_BUS)
            .collect();
        let n = spec.root_ports.len() + root_eps.len();
        for (i, (p, ps)) in self.ports().iter().zip(&spec.root_ports).enumerate() {
            let last = i + 1 == n;
            let (v, d, _, _) = identity(p);
            let c = &ps.config;
            let _ = writeln!(
                out,
                "{} 00:{} {:<13} [{v:04x}:{d:04x}] {} chassis {} slot {} port {:#x} (pcierc)",
                if last { "└──" } else { "├──" },
                ps.addr,
                c.id,
                c.model.driver(),
                c.chassis,
                c.slot,
                c.port
            );
            for e in spec.endpoints.iter().filter(|e| e.bus == c.id) {
                let _ = writeln!(
                    out,
                    "{}   └── {}  {:<13} {} (owner {})",
                    if last { " " } else { "│" },
                    e.addr,
                    e.id,
                    e.driver,
                    e.owner
                );
            }
        }
        for (i, e) in root_eps.iter().enumerate() {
            let last = spec.root_ports.len() + i + 1 == n;
            let _ = writeln!(
                out,
                "{} 00:{} {:<13} {} (owner {})",
                if last { "└──" } else { "├──" },
                e.addr,
                e.id,
                e.driver,
                e.owner
            );
        }
        out
    }
}
