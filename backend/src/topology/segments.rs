//! Every PCI segment the service serves: one [`Hierarchy`] per segment, the Q35 hierarchy
//! (segment 0) first, then the extra segments of the topology's `[[segment]]` tables. Requests
//! that name a segment go to its hierarchy; MMIO goes to the hierarchy whose ECAM window or
//! BAR holds the address; the topology record is every hierarchy's, one after the other.

use pcierc_protocol::{FunctionRecord, LayoutDelta, RangeKind, Status, Topology, NO_PARENT};

use super::hierarchy::{FunctionChange, Hierarchy, HierarchyEvent, SavedModels};
use super::spec::TopologySpec;
use crate::pci::{Effects, Width};

/// The hierarchies of all segments.
#[derive(Clone)]
pub struct Segments {
    /// The topology as declared (what power-on is built from).
    declared: TopologySpec,
    /// Segment 0's first, then the extra segments in declaration order.
    all: Vec<Hierarchy>,
    /// With extra segments: the topology [`Segments::layout_delta`] last described.
    described: Option<Topology>,
}

impl From<Hierarchy> for Segments {
    /// A topology of one segment.
    fn from(h: Hierarchy) -> Self {
        Segments {
            declared: h.spec().clone(),
            all: vec![h],
            described: None,
        }
    }
}

impl Segments {
    /// Build every segment's hierarchy at power-on from a validated topology.
    pub fn new(spec: TopologySpec) -> crate::Result<Self> {
        spec.validate()?;
        let all = spec
            .segment_numbers()
            .into_iter()
            .map(|n| Hierarchy::new(spec.for_segment(n)))
            .collect::<crate::Result<Vec<_>>>()?;
        Ok(Segments {
            declared: spec,
            all,
            described: None,
        })
    }

    /// The topology as declared: every segment's ports and functions at power-on.
    pub fn declared(&self) -> &TopologySpec {
        &self.declared
    }

    /// Segment 0's hierarchy: the Q35 one, with the MCH and configuration mechanism #1.
    pub fn primary(&self) -> &Hierarchy {
        &self.all[0]
    }

    /// Segment 0's hierarchy, to change.
    pub fn primary_mut(&mut self) -> &mut Hierarchy {
        &mut self.all[0]
    }

    /// Segment `segment`'s hierarchy.
    pub fn get(&self, segment: u16) -> Option<&Hierarchy> {
        self.all.iter().find(|h| h.spec().segment == segment)
    }

    /// Segment `segment`'s hierarchy, to change.
    pub fn get_mut(&mut self, segment: u16) -> Option<&mut Hierarchy> {
        self.all.iter_mut().find(|h| h.spec().segment == segment)
    }

    /// Every hierarchy, segment 0's first.
    pub fn iter(&self) -> impl Iterator<Item = &Hierarchy> {
        self.all.iter()
    }

    /// Every hierarchy, to change.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Hierarchy> {
        self.all.iter_mut()
    }

    /// The segment whose hierarchy has a root port or function named `id` (its host bridge
    /// included); segment 0 when none has.
    pub fn segment_of(&self, id: &str) -> u16 {
        self.all
            .iter()
            .find(|h| {
                h.host_bridge_id() == id
                    || h.endpoint(id).is_some()
                    || h.spec().root_ports.iter().any(|p| p.config.id == id)
                    || h.spec().bridges.iter().any(|b| b.config.id == id)
            })
            .map_or(0, |h| h.spec().segment)
    }

    /// The hierarchy `segment_of(id)` names, to change.
    pub fn of_id_mut(&mut self, id: &str) -> &mut Hierarchy {
        let segment = self.segment_of(id);
        let i = self
            .all
            .iter()
            .position(|h| h.spec().segment == segment)
            .unwrap_or(0);
        &mut self.all[i]
    }

    /// Is `id` taken by any segment's function, port, `pcie-pci-bridge`, `pxb-pcie` or host
    /// bridge?
    pub fn id_in_use(&self, id: &str) -> bool {
        self.all.iter().any(|h| {
            h.host_bridge_id() == id
                || h.endpoint(id).is_some()
                || h.spec().root_ports.iter().any(|p| p.config.id == id)
                || h.spec().bridges.iter().any(|b| b.config.id == id)
                || h.spec().expanders.iter().any(|x| x.config.id == id)
        })
    }

    /// The layout generation of the whole: the sum of the segments' (each only grows, so the
    /// sum moves on whenever one does).
    pub fn generation(&self) -> u64 {
        self.all.iter().map(Hierarchy::generation).sum()
    }

    /// A trapped MMIO read: the hierarchy whose ECAM window or emulated BAR holds `addr`
    /// (segment 0's first), `ENODEV` when none does.
    pub fn mmio_read(&mut self, addr: u64, width: Width) -> Result<u64, Status> {
        for h in &mut self.all {
            match h.mmio_read(addr, width) {
                Err(Status::NoDevice) => continue,
                r => return r,
            }
        }
        Err(Status::NoDevice)
    }

    /// A trapped MMIO write, routed as [`Segments::mmio_read`].
    pub fn mmio_write(&mut self, addr: u64, width: Width, value: u64) -> Result<Effects, Status> {
        for h in &mut self.all {
            match h.mmio_write(addr, width, value) {
                Err(Status::NoDevice) => continue,
                r => return r,
            }
        }
        Err(Status::NoDevice)
    }

    /// Platform reset of every segment.
    pub fn reset(&mut self) -> Effects {
        self.all
            .iter_mut()
            .fold(Effects::empty(), |acc, h| acc | h.reset())
    }

    /// Every segment's undelivered events, with the segment they come from.
    pub fn take_events(&mut self) -> Vec<(u16, HierarchyEvent)> {
        self.all
            .iter_mut()
            .flat_map(|h| {
                let segment = h.spec().segment;
                h.take_events().into_iter().map(move |e| (segment, e))
            })
            .collect()
    }

    /// The topology record of every segment: segment 0's records, ECAM window and ranges as
    /// before, then each extra segment's host bridge, ports and endpoints (their `parent`
    /// indexes into the whole list), its ECAM window and its BARs and windows. The generation
    /// is [`Segments::generation`].
    pub fn describe(&self) -> Topology {
        let mut out = self.primary().describe();
        out.generation = self.generation();
        for h in &self.all[1..] {
            let t = h.describe();
            let offset = out.functions.len() as u16;
            out.functions.extend(t.functions.into_iter().map(|mut f| {
                if f.parent != NO_PARENT {
                    f.parent += offset;
                }
                f
            }));
            out.ecam.extend(t.ecam);
            out.ranges.extend(t.ranges.into_iter().filter(|r| {
                r.kind != RangeKind::ConfigAddress as u8 && r.kind != RangeKind::ConfigData as u8
            }));
        }
        out
    }

    /// What changed in [`Segments::describe`] since the last call. With one segment, segment
    /// 0's own delta, built from the functions that changed ([`Hierarchy::layout_delta`]);
    /// with extra segments (rare, small), the difference of two whole descriptions, since a
    /// segment's records move with the segments before it.
    pub fn layout_delta(&mut self) -> LayoutDelta {
        if self.all.len() == 1 {
            return self.all[0].layout_delta();
        }
        let now = self.describe();
        let delta = match &self.described {
            Some(old) => LayoutDelta::between(old, &now),
            None => LayoutDelta::between(&Topology::default(), &now),
        };
        self.described = Some(now);
        delta
    }

    /// The record of endpoint `e` of segment `segment` (`FunctionAdded`, `FunctionRemoved`,
    /// `FunctionReset`), its `parent` an index into [`Segments::describe`]'s list.
    pub fn endpoint_record(&self, segment: u16, e: &super::EndpointSpec) -> FunctionRecord {
        let mut offset = 0u16;
        for h in &self.all {
            if h.spec().segment == segment {
                let mut r = h.endpoint_record(e);
                if r.parent != NO_PARENT {
                    r.parent += offset;
                }
                return r;
            }
            // What `describe` lists for it: the host bridge, the ports, the bridges, the
            // endpoints.
            let spec = h.spec();
            offset +=
                (1 + spec.root_ports.len() + spec.bridges.len() + spec.endpoints.len()) as u16;
        }
        self.primary().endpoint_record(e)
    }

    /// Every segment's [`Hierarchy::save_functions`], one list, segment 0's first.
    pub fn save_functions(&self) -> Vec<(String, serde_json::Value)> {
        self.all
            .iter()
            .flat_map(Hierarchy::save_functions)
            .collect()
    }

    /// [`Hierarchy::save_changed_functions`] of every segment, indexed in
    /// [`Segments::save_functions`]' list; `since` holds one copy per segment.
    pub fn save_changed_functions(
        &self,
        since: &mut Vec<SavedModels>,
        gap: usize,
    ) -> Vec<(usize, FunctionChange<'_>)> {
        since.resize_with(self.all.len(), SavedModels::default);
        let mut offset = 0;
        let mut out = Vec::new();
        for (h, saved) in self.all.iter().zip(since.iter_mut()) {
            out.extend(
                h.save_changed_functions(saved, gap)
                    .into_iter()
                    .map(|(i, s)| (offset + i, s)),
            );
            offset += h.snapshot_functions();
        }
        out
    }

    /// Restore every segment (see [`Hierarchy::restore_functions`]): `functions` is
    /// [`Segments::save_functions`]' list, `endpoints` every segment's with its segment
    /// number; all or nothing. Segment 0 takes the latch and the saved generation.
    pub fn restore_functions(
        &mut self,
        config_address: u32,
        functions: &[(String, serde_json::Value)],
        endpoints: Vec<(u16, super::EndpointSpec)>,
        generation: u64,
    ) -> crate::Result<()> {
        if let Some((segment, e)) = endpoints.iter().find(|(s, _)| self.get(*s).is_none()) {
            return Err(
                super::StateError::Topology(super::TopologyError::UnknownBus {
                    id: e.id.clone(),
                    bus: format!("{} (segment {segment})", e.bus),
                })
                .into(),
            );
        }
        let mut restored = self.all.clone();
        let mut rest = functions;
        let last = restored.len() - 1;
        for (i, h) in restored.iter_mut().enumerate() {
            let segment = h.spec().segment;
            // The last segment takes what remains, so a list of the wrong length is refused
            // by name there.
            let n = if i == last {
                rest.len()
            } else {
                h.snapshot_functions().min(rest.len())
            };
            let (mine, more) = rest.split_at(n);
            rest = more;
            let eps = endpoints
                .iter()
                .filter(|(s, _)| *s == segment)
                .map(|(_, e)| e.clone())
                .collect();
            let (latch, gen) = if i == 0 {
                (config_address, generation)
            } else {
                (0, 0)
            };
            h.restore_functions(latch, mine, eps, gen)?;
        }
        self.all = restored;
        Ok(())
    }
}
