//! The hierarchy as frontends see it: the protocol's [`Topology`] and a human-readable tree.

use std::fmt::Write as _;

use pcierc_protocol::{
    encode_name, function_flags, AddressRange, AddressSpace, EcamWindow, FunctionKind,
    FunctionRecord, RangeKind, Topology, NO_PARENT,
};

use super::hierarchy::{Hierarchy, Routed, Slot, CONFIG_ADDRESS_PORT, CONFIG_DATA_PORT};
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
            id: name("mch"),
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
        // Every port pcierc emulates is a `RootPort` record (kind 2: a PCI Express port with a
        // type 1 header); a switch port names the port it sits behind as `parent` and sits on
        // that port's secondary bus, `PRESENT` while configuration cycles reach it
        // (docs/protocol.md section 10). Record 1 + i is port i.
        for (i, (p, ps)) in self.ports().iter().zip(&spec.root_ports).enumerate() {
            let (v, d, c, mf) = identity(p);
            let (bus, parent) = match self.port_parent(i) {
                None => (0, NO_PARENT),
                Some(up) => (self.port_bus(i), up as u16 + 1),
            };
            let reachable = parent == NO_PARENT
                || matches!(
                    self.route(bus, ps.addr.0),
                    Routed::Local(Slot::Port(j)) if usize::from(j) == i
                );
            let present = if reachable {
                function_flags::PRESENT
            } else {
                0
            };
            functions.push(FunctionRecord {
                bus,
                devfn: ps.addr.0,
                vendor_id: v,
                device_id: d,
                class_code: c,
                kind: FunctionKind::RootPort as u8,
                flags: function_flags::EMULATED
                    | present
                    | if mf { function_flags::MULTIFUNCTION } else { 0 },
                parent,
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
                    bus,
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
            // Reachable: the cycle for its bus gets to the port it sits behind (through a
            // switch, every port above must forward it).
            let reachable = sec != 0 && self.bus_claimed_by(sec, pi);
            (sec, reachable, pi as u16 + 1)
        };
        FunctionRecord {
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
        let _ = writeln!(out, "{ROOT_BUS} (segment {:04x})", spec.segment);
        let (v, d, _, _) = identity(self.mch());
        let _ = writeln!(
            out,
            "├── 00:00.0 mch           [{v:04x}:{d:04x}] Q35 host bridge (pcierc)"
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
        let tops: Vec<usize> = (0..self.ports().len())
            .filter(|&i| self.port_parent(i).is_none())
            .collect();
        let n = tops.len() + root_eps.len();
        for (k, &i) in tops.iter().enumerate() {
            self.tree_port(&mut out, i, "", k + 1 == n, true);
        }
        for (i, e) in root_eps.iter().enumerate() {
            let last = tops.len() + i + 1 == n;
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

    /// Port `i` and what is below it, for [`Hierarchy::tree`].
    fn tree_port(&self, out: &mut String, i: usize, indent: &str, last: bool, root: bool) {
        let spec = self.spec();
        let (Some(p), Some(ps)) = (self.ports().get(i), spec.root_ports.get(i)) else {
            return;
        };
        let (v, d, _, _) = identity(p);
        let c = &ps.config;
        let place = if root {
            format!("00:{}", ps.addr)
        } else {
            ps.addr.to_string()
        };
        let slot = if c.model.kind().has_slot() {
            format!(" chassis {} slot {}", c.chassis, c.slot)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{indent}{} {place} {:<13} [{v:04x}:{d:04x}] {}{slot} port {:#x} (pcierc)",
            if last { "└──" } else { "├──" },
            c.id,
            c.model.driver(),
            c.port
        );
        let inner = format!("{indent}{}   ", if last { " " } else { "│" });
        let kids: Vec<usize> = (0..self.ports().len())
            .filter(|&j| self.port_parent(j) == Some(i))
            .collect();
        let eps: Vec<&EndpointSpec> = spec.endpoints.iter().filter(|e| e.bus == c.id).collect();
        let n = kids.len() + eps.len();
        for (k, &j) in kids.iter().enumerate() {
            self.tree_port(out, j, &inner, k + 1 == n, false);
        }
        for (k, e) in eps.iter().enumerate() {
            let _ = writeln!(
                out,
                "{inner}{} {}  {:<13} {} (owner {})",
                if kids.len() + k + 1 == n {
                    "└──"
                } else {
                    "├──"
                },
                e.addr,
                e.id,
                e.driver,
                e.owner
            );
        }
    }
}
