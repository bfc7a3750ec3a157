//! The hierarchy as frontends see it: the protocol's [`Topology`] and a human-readable tree.

use std::fmt::Write as _;

use pcierc_protocol::{
    encode_name, function_flags, AddressRange, AddressSpace, EcamWindow, FunctionKind,
    FunctionRecord, FunctionUpdate, LayoutDelta, RangeKind, Topology, NO_PARENT,
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

/// The topology by parts, as the last [`Hierarchy::layout_delta`] described it: the MCH's record,
/// each root port's record and ranges, the endpoints' records. Only the functions whose
/// registers may have changed (the ones the configuration snapshot is told about,
/// `Hierarchy::mark_changed`) are described again, and only what differs goes into the delta,
/// so a layout change costs what changed, not a walk over every port.
#[derive(Clone, Debug, Default)]
pub struct DescribeCache {
    /// 0 = MCH, 1 + i = port i: describe again before use.
    stale: Vec<bool>,
    /// Everything may have changed (functions came or left): describe the endpoints again too.
    all: bool,
    generation: u64,
    mch: FunctionRecord,
    ports: Vec<(FunctionRecord, Vec<AddressRange>)>,
    endpoints: Vec<FunctionRecord>,
}

impl DescribeCache {
    /// Mark function `n` (0 = MCH, 1 + i = port i) to be described again.
    pub fn mark(&mut self, n: usize) {
        if let Some(s) = self.stale.get_mut(n) {
            *s = true;
        }
    }

    /// Mark every function of a hierarchy with `functions` of them to be described again.
    pub fn mark_all(&mut self, functions: usize) {
        self.stale = vec![true; functions];
        self.all = true;
    }
}

/// Where a function with a type 1 header sits and what it forwards
/// (`Hierarchy::type1_description`).
struct Type1At<'a> {
    id: &'a str,
    bus: u8,
    devfn: u8,
    parent: u16,
    /// What it is to the hierarchy: below a port it is `PRESENT` while configuration cycles
    /// to (`bus`, `devfn`) reach it.
    slot: Slot,
    buses: (u8, u8),
    windows: crate::pci::bridge::BridgeWindows,
}

/// The claimed configuration-mechanism ports.
fn config_ranges() -> [AddressRange; 2] {
    [
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
    ]
}

impl Hierarchy {
    /// The topology record frontends receive (`GetTopology`, `LayoutChanged`).
    pub fn describe(&self) -> Topology {
        let spec = self.spec();
        let mut functions = Vec::with_capacity(1 + spec.root_ports.len() + spec.endpoints.len());
        functions.push(self.mch_record());
        let mut ranges = config_ranges().to_vec();
        for i in 0..self.emulated_functions() {
            let (record, port_ranges) = self.emulated_description(i);
            functions.push(record);
            ranges.extend(port_ranges);
        }
        self.finish_description(functions, ranges)
    }

    /// What changed in [`Hierarchy::describe`] since the last call with `cache`: a delta from
    /// that call's topology (generation `base_generation`) to the current one. Only the parts
    /// of `cache` marked stale are described again. The first call's delta (from an empty
    /// cache) is not a delta of any topology a frontend holds; its caller sends the whole one.
    pub(super) fn layout_delta_cached(&self, cache: &mut DescribeCache) -> LayoutDelta {
        let n = 1 + self.emulated_functions();
        if cache.stale.len() != n || cache.ports.len() + 1 != n {
            cache.stale = vec![true; n];
            cache.ports = vec![Default::default(); n - 1];
        }
        let mut updates = Vec::new();
        let update = |index: usize, record: FunctionRecord| FunctionUpdate {
            index: index as u32,
            reserved: 0,
            record,
        };
        // The ports whose ranges changed: the first and the last.
        let mut moved: Option<(usize, usize)> = None;
        let mut stale_ports = Vec::new();
        // A switch port's record (its bus, whether cycles reach it) and the endpoints below it
        // follow every port above it: describe a stale port's whole subtree again.
        for i in 0..self.ports().len() {
            if cache.stale.get(1 + i) == Some(&true) {
                for below in self.ports_below(i) {
                    cache.mark(1 + below);
                }
                for j in self.bridges_below(i) {
                    cache.mark(1 + self.ports().len() + j);
                }
            }
        }
        // An expander's record names the highest bus below its ports: it follows them.
        let first_expander = 1 + self.ports().len() + self.bridges().len();
        for x in 0..self.expanders().len() {
            if self
                .expander_ports(x)
                .iter()
                .any(|&i| cache.stale.get(1 + i) == Some(&true))
            {
                cache.mark(first_expander + x);
            }
        }
        for (i, stale) in cache.stale.iter_mut().enumerate() {
            if !std::mem::take(stale) {
                continue;
            }
            if i > 0 {
                stale_ports.push(i - 1);
            }
            if i == 0 {
                let r = self.mch_record();
                if r != cache.mch {
                    updates.push(update(0, r));
                    cache.mch = r;
                }
                continue;
            }
            let (r, ranges) = self.emulated_description(i - 1);
            let old = &mut cache.ports[i - 1];
            if r != old.0 {
                updates.push(update(i, r));
            }
            if ranges != old.1 {
                moved = Some(moved.map_or((i - 1, i - 1), |(f, _)| (f, i - 1)));
            }
            *old = (r, ranges);
        }
        // An endpoint's record follows the spec and the port it sits behind: all of them after
        // functions came or left, else those behind the ports described again.
        let endpoints = &self.spec().endpoints;
        if std::mem::take(&mut cache.all) || cache.endpoints.len() != endpoints.len() {
            let records: Vec<FunctionRecord> =
                endpoints.iter().map(|e| self.endpoint_record(e)).collect();
            for (k, r) in records.iter().enumerate() {
                if cache.endpoints.get(k) != Some(r) {
                    updates.push(update(n + k, *r));
                }
            }
            cache.endpoints = records;
        } else {
            let mut behind: Vec<(usize, FunctionRecord)> = stale_ports
                .iter()
                .flat_map(|&p| self.endpoints_below(p).into_iter().map(move |k| (p, k)))
                .filter_map(|(p, k)| Some((k, self.endpoint_record_at(endpoints.get(k)?, Some(p)))))
                .filter(|(k, r)| cache.endpoints.get(*k) != Some(r))
                .collect();
            behind.sort_by_key(|(k, _)| *k);
            for (k, r) in behind {
                cache.endpoints[k] = r;
                updates.push(update(n + k, r));
            }
        }
        // The ranges: the two config ports, then each port's; the ports outside first..=last
        // kept theirs.
        let len = |p: &[(FunctionRecord, Vec<AddressRange>)]| p.iter().map(|p| p.1.len()).sum();
        let (front, back, ranges) = match moved {
            Some((first, last)) => (
                2 + len(&cache.ports[..first]),
                len(&cache.ports[last + 1..]),
                cache.ports[first..=last]
                    .iter()
                    .flat_map(|p| p.1.iter().copied())
                    .collect(),
            ),
            None => (2 + len(&cache.ports), 0, Vec::new()),
        };
        let generation = self.generation();
        let base_generation = std::mem::replace(&mut cache.generation, generation);
        LayoutDelta {
            base_generation,
            generation,
            num_functions: (n + cache.endpoints.len()) as u32,
            updates,
            ecam: self.ecam_windows(),
            ranges_kept_front: front as u32,
            ranges_kept_back: back as u32,
            ranges,
        }
    }

    fn ecam_windows(&self) -> Vec<EcamWindow> {
        self.ecam()
            .map(|(base, size, end_bus)| EcamWindow {
                base,
                size,
                segment: self.spec().segment,
                start_bus: 0,
                end_bus,
                reserved: 0,
            })
            .into_iter()
            .collect()
    }

    /// The endpoints' records, the ECAM window and the generation after the emulated
    /// functions' records and ranges.
    fn finish_description(
        &self,
        mut functions: Vec<FunctionRecord>,
        ranges: Vec<AddressRange>,
    ) -> Topology {
        functions.extend(
            self.spec()
                .endpoints
                .iter()
                .map(|e| self.endpoint_record(e)),
        );
        Topology {
            generation: self.generation(),
            functions,
            ecam: self.ecam_windows(),
            ranges,
        }
    }

    fn mch_record(&self) -> FunctionRecord {
        self.host_bridge_record(self.mch(), self.host_bridge_id())
    }

    /// The record of host bridge `f` (the MCH, an expander) named `id`: a `HostBridge` record
    /// (kind 1) pcierc emulates, present, with no parent; bus 0, devfn 0 unless the caller
    /// says otherwise.
    fn host_bridge_record(&self, f: &dyn PciFunction, id: &str) -> FunctionRecord {
        let (v, d, c, mf) = identity(f);
        FunctionRecord {
            vendor_id: v,
            device_id: d,
            class_code: c,
            kind: FunctionKind::HostBridge as u8,
            flags: function_flags::PRESENT
                | function_flags::EMULATED
                | if mf { function_flags::MULTIFUNCTION } else { 0 },
            parent: NO_PARENT,
            segment: self.spec().segment,
            id: name(id),
            owner: name(PCIERC_OWNER),
            ..Default::default()
        }
    }

    /// The functions pcierc emulates besides the host bridge: ports, bridges, expanders.
    fn emulated_functions(&self) -> usize {
        self.ports().len() + self.bridges().len() + self.expanders().len()
    }

    /// Emulated function `k`'s record and ranges: port `k`, bridge `k - ports`, then the
    /// expanders.
    fn emulated_description(&self, k: usize) -> (FunctionRecord, Vec<AddressRange>) {
        match k.checked_sub(self.ports().len()) {
            None => self.port_description(k),
            Some(j) => match j.checked_sub(self.bridges().len()) {
                None => self.bridge_description(j),
                Some(x) => (self.expander_record(x), Vec::new()),
            },
        }
    }

    /// Expander `x`'s record (record `1 + ports + bridges + x`): a `HostBridge` record (kind 1,
    /// class 06/00/00) on the root bus, with no ranges (it has no BAR and no window: QEMU's
    /// expander bus shares `pcie.0`'s address spaces). `secondary_bus` is the number of the
    /// root bus it opens (`bus_nr`), `subordinate_bus` the highest bus below it now: that bus
    /// or the highest Subordinate Bus Number of the root ports on it (QEMU's `build_crs()` bus
    /// range for the expander's ACPI host bridge, docs/protocol.md section 10); `proximity` its
    /// `numa_node` + 1 (0 unassigned).
    fn expander_record(&self, x: usize) -> FunctionRecord {
        let (f, xs) = (&self.expanders()[x], &self.spec().expanders[x]);
        let bus = self.expander_bus(x);
        let last = self
            .expander_ports(x)
            .iter()
            .filter_map(|&i| self.ports().get(i))
            .map(|p| p.subordinate_bus())
            .fold(bus, u8::max);
        FunctionRecord {
            bus: 0,
            devfn: xs.addr.0,
            secondary_bus: bus,
            subordinate_bus: last,
            // The numa_node as the protocol carries it: + 1, 0 for none (at most 128).
            proximity: xs.config.numa_node().map_or(0, |n| n + 1),
            ..self.host_bridge_record(f, &xs.config.id)
        }
    }

    /// Bridge `j`'s record (record `1 + ports + j`) and ranges. A `pcie-pci-bridge` is a kind 2
    /// record too (a function with a type 1 header, docs/protocol.md section 10): on the root
    /// bus, or naming the port whose slot it fills as `parent`, `PRESENT` while configuration
    /// cycles reach it.
    fn bridge_description(&self, j: usize) -> (FunctionRecord, Vec<AddressRange>) {
        let (b, bs) = (&self.bridges()[j], &self.spec().bridges[j]);
        let (bus, parent) = match self.bridge_parent(j) {
            None => (0, NO_PARENT),
            Some(up) => (self.bridge_bus(j), up as u16 + 1),
        };
        let at = Type1At {
            id: &bs.config.id,
            bus,
            devfn: bs.addr.0,
            parent,
            slot: Slot::Bridge(j as u16),
            buses: (b.secondary_bus(), b.subordinate_bus()),
            windows: b.windows(),
        };
        self.type1_description(b, at)
    }

    /// Port `i`'s record and ranges (BARs, then its I/O, memory and prefetchable windows).
    /// Every port pcierc emulates is a `RootPort` record (kind 2: a PCI Express port with a
    /// type 1 header); a switch port names the port it sits behind as `parent` and sits on
    /// that port's secondary bus, `PRESENT` while configuration cycles reach it
    /// (docs/protocol.md section 10). Record 1 + i is port i.
    fn port_description(&self, i: usize) -> (FunctionRecord, Vec<AddressRange>) {
        let (p, ps) = (&self.ports()[i], &self.spec().root_ports[i]);
        // A root port sits on pcie.0 or on an expander's root bus, a switch port on its
        // parent's secondary bus (`port_bus` either way).
        let bus = self.port_bus(i);
        let parent = self.port_parent(i).map_or(NO_PARENT, |up| up as u16 + 1);
        let at = Type1At {
            id: &ps.config.id,
            bus,
            devfn: ps.addr.0,
            parent,
            slot: Slot::Port(i as u16),
            buses: (p.secondary_bus(), p.subordinate_bus()),
            windows: p.windows(),
        };
        self.type1_description(p, at)
    }

    /// The record and ranges (BARs, then the I/O, memory and prefetchable windows) of a
    /// function with a type 1 header pcierc emulates.
    fn type1_description(
        &self,
        f: &dyn PciFunction,
        t: Type1At<'_>,
    ) -> (FunctionRecord, Vec<AddressRange>) {
        let (v, d, c, mf) = identity(f);
        let reachable =
            t.parent == NO_PARENT || self.route(t.bus, t.devfn) == Routed::Local(t.slot);
        let present = if reachable {
            function_flags::PRESENT
        } else {
            0
        };
        let segment = self.spec().segment;
        let (bus, devfn) = (t.bus, t.devfn);
        let record = FunctionRecord {
            segment,
            bus,
            devfn,
            vendor_id: v,
            device_id: d,
            class_code: c,
            kind: FunctionKind::RootPort as u8,
            flags: function_flags::EMULATED
                | present
                | if mf { function_flags::MULTIFUNCTION } else { 0 },
            parent: t.parent,
            secondary_bus: t.buses.0,
            subordinate_bus: t.buses.1,
            id: name(t.id),
            owner: name(PCIERC_OWNER),
            ..Default::default()
        };
        let at =
            |base: u64, size: u64, space: AddressSpace, kind: RangeKind, bar: u8| AddressRange {
                base,
                size,
                space: space as u8,
                kind: kind as u8,
                segment,
                bus,
                devfn,
                bar,
                ..Default::default()
            };
        let mut ranges: Vec<AddressRange> = f
            .bars()
            .into_iter()
            .map(|b| at(b.base, b.size, AddressSpace::Mmio, RangeKind::Bar, b.index))
            .collect();
        let w = t.windows;
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
        (record, ranges)
    }

    /// The record of a function another emulator serves (also for one that just left: its
    /// address is where it was).
    pub fn endpoint_record(&self, e: &EndpointSpec) -> FunctionRecord {
        let spec = self.spec();
        let port = (e.bus != ROOT_BUS).then(|| {
            spec.root_ports
                .iter()
                .position(|p| p.config.id == e.bus)
                .or_else(|| {
                    spec.bridges
                        .iter()
                        .position(|b| b.config.id == e.bus)
                        .map(|j| spec.root_ports.len() + j)
                })
                .unwrap_or(0)
        });
        self.endpoint_record_at(e, port)
    }

    /// [`Hierarchy::endpoint_record`] of an endpoint behind root port `port` (index), or on the
    /// root bus (`None`).
    fn endpoint_record_at(&self, e: &EndpointSpec, port: Option<usize>) -> FunctionRecord {
        let (bus, present, parent) = match port {
            None => (0, true, NO_PARENT),
            Some(pi) => {
                let sec = self.emulated_secondary_bus(pi);
                // Reachable: the cycle for its bus gets to the port it sits behind (through a
                // switch, every port above must forward it).
                let reachable = sec != 0 && self.bus_claimed_by(sec, pi);
                (sec, reachable, pi as u16 + 1)
            }
        };
        FunctionRecord {
            segment: self.spec().segment,
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
        let tops: Vec<usize> = (0..self.ports().len())
            .filter(|&i| self.port_parent(i).is_none() && self.port_root(i).is_none())
            .collect();
        let bridges: Vec<usize> = (0..self.bridges().len())
            .filter(|&j| self.bridge_parent(j).is_none())
            .collect();
        let expanders = self.expanders().len();
        let n = tops.len() + bridges.len() + expanders + root_eps.len();
        for (k, &i) in tops.iter().enumerate() {
            self.tree_port(&mut out, i, "", k + 1 == n, true);
        }
        for (k, &j) in bridges.iter().enumerate() {
            self.tree_bridge(&mut out, j, "", tops.len() + k + 1 == n, true);
        }
        for x in 0..expanders {
            let last = tops.len() + bridges.len() + x + 1 == n;
            self.tree_expander(&mut out, x, last);
        }
        for (i, e) in root_eps.iter().enumerate() {
            let last = tops.len() + bridges.len() + expanders + i + 1 == n;
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
            format!("{:02x}:{}", self.port_bus(i), ps.addr)
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
        let bridges: Vec<usize> = (0..self.bridges().len())
            .filter(|&j| self.bridge_parent(j) == Some(i))
            .collect();
        let eps: Vec<&EndpointSpec> = spec.endpoints.iter().filter(|e| e.bus == c.id).collect();
        let n = kids.len() + bridges.len() + eps.len();
        for (k, &j) in kids.iter().enumerate() {
            self.tree_port(out, j, &inner, k + 1 == n, false);
        }
        for (k, &j) in bridges.iter().enumerate() {
            self.tree_bridge(out, j, &inner, kids.len() + k + 1 == n, false);
        }
        let kids = kids.len() + bridges.len();
        for (k, e) in eps.iter().enumerate() {
            let _ = writeln!(
                out,
                "{inner}{} {}  {:<13} {} (owner {})",
                if kids + k + 1 == n {
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

    /// Expander `x` and the root ports on its bus, for [`Hierarchy::tree`].
    fn tree_expander(&self, out: &mut String, x: usize, last: bool) {
        let (Some(f), Some(xs)) = (self.expanders().get(x), self.spec().expanders.get(x)) else {
            return;
        };
        let (v, d, _, _) = identity(f);
        let numa = xs
            .config
            .numa_node()
            .map(|n| format!(" numa_node {n}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{} 00:{} {:<13} [{v:04x}:{d:04x}] {} root bus {:02x}{numa} (pcierc)",
            if last { "└──" } else { "├──" },
            xs.addr,
            xs.config.id,
            crate::topology::pxb_pcie::DRIVER,
            xs.config.bus_nr,
        );
        let inner = if last { "    " } else { "│   " };
        let ports = self.expander_ports(x);
        for (k, &i) in ports.iter().enumerate() {
            self.tree_port(out, i, inner, k + 1 == ports.len(), true);
        }
    }

    /// Bridge `j` and the functions below it, for [`Hierarchy::tree`].
    fn tree_bridge(&self, out: &mut String, j: usize, indent: &str, last: bool, root: bool) {
        let spec = self.spec();
        let (Some(b), Some(bs)) = (self.bridges().get(j), spec.bridges.get(j)) else {
            return;
        };
        let (v, d, _, _) = identity(b);
        let place = if root {
            format!("00:{}", bs.addr)
        } else {
            bs.addr.to_string()
        };
        let _ = writeln!(
            out,
            "{indent}{} {place} {:<13} [{v:04x}:{d:04x}] {} (pcierc)",
            if last { "└──" } else { "├──" },
            bs.config.id,
            crate::topology::pcie_pci_bridge::DRIVER,
        );
        let inner = format!("{indent}{}   ", if last { " " } else { "│" });
        let eps: Vec<&EndpointSpec> = spec
            .endpoints
            .iter()
            .filter(|e| e.bus == bs.config.id)
            .collect();
        for (k, e) in eps.iter().enumerate() {
            let _ = writeln!(
                out,
                "{inner}{} {}  {:<13} {} (owner {})",
                if k + 1 == eps.len() {
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
