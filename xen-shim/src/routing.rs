//! pcierc's layout as the ranges each ioreq server must have mapped (Xen 4.17's selection
//! rules, FLOW.md §1.5, §4, §5), and the dm_ops that keep Xen in step as the layout changes.
//!
//! - Every function pcierc emulates gets its PCI SBDF mapped to the shim's server: CF8/CFC
//!   accesses to it arrive as PCI_CONFIG requests.
//! - Every function another emulator owns gets its SBDF mapped to that emulator's server, when
//!   the shim was told the server's id ([`RoutingConfig::peers`]): Xen lets a device model
//!   change the ranges of any server created from its own domain, so the shim keeps QEMU's
//!   SBDFs right as the guest renumbers buses, and QEMU need not know pcierc exists.
//! - ECAM: Xen 4.17 does not decode it ([`EcamRouting::ShimDecodes`]): the shim maps the 4 KiB
//!   slices of pcierc's own functions and decodes those accesses itself; other emulators'
//!   slices stay unmapped (Xen drops those accesses: reads return all ones). With the proposed
//!   extension ([`EcamRouting::XenDecodes`]) Xen decodes the window pcierc reports into
//!   PCI_CONFIG requests routed by SBDF, so no slices are mapped.
//! - BARs of pcierc's functions (a root port's MSI-X table) are mapped to the shim.
//! - Ports 0xCF8-0xCFF only with [`RoutingConfig::config_ports`] (the shim is the only device
//!   model): next to QEMU, the shim's newer, higher server id would steal them.

use std::collections::{BTreeMap, BTreeSet};

use log::{debug, info, warn};
use pcierc_protocol::{decode_name, function_flags, EcamWindow, RangeKind, Topology};

use crate::abi::dm_op::{ioservid_t, xen_dm_op, IoRange, PciSbdf};
use crate::hypervisor::{Hypervisor, XenError};
use crate::server::dm_op;

/// The owner name pcierc reports for the functions it emulates itself.
pub const PCIERC_OWNER: &str = "pcierc";

/// Who decodes ECAM accesses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EcamRouting {
    /// Stock Xen 4.17: ECAM arrives as MMIO; the shim maps and decodes its functions' slices.
    ShimDecodes,
    /// The proposed extension: Xen decodes the window into PCI_CONFIG requests.
    XenDecodes,
}

/// What the routing is computed from, besides the layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingConfig {
    /// The shim's own server id.
    pub own: ioservid_t,
    /// Server ids of other emulators (by the owner name pcierc knows them by) created from the
    /// shim's domain.
    pub peers: BTreeMap<String, ioservid_t>,
    /// Who decodes ECAM.
    pub ecam: EcamRouting,
    /// Claim ports 0xCF8-0xCFF (only when no other device model serves the guest).
    pub config_ports: bool,
}

/// The mappings a layout needs: (server, range) pairs and the MMCONFIG window for Xen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Every range, with the server it must be mapped to.
    pub ranges: BTreeSet<(ioservid_t, IoRange)>,
    /// The window Xen decodes (only with [`EcamRouting::XenDecodes`]).
    pub mmcfg: Option<EcamWindow>,
}

/// The mappings `topo` needs under `cfg`.
pub fn plan(topo: &Topology, cfg: &RoutingConfig) -> Plan {
    let mut ranges = BTreeSet::new();
    let present = |f: &&pcierc_protocol::FunctionRecord| f.flags & function_flags::PRESENT != 0;
    for f in topo.functions.iter().filter(present) {
        let Some(owner) = decode_name(&f.owner) else {
            continue;
        };
        let server = if owner == PCIERC_OWNER {
            cfg.own
        } else if let Some(&id) = cfg.peers.get(owner) {
            id
        } else {
            continue;
        };
        let sbdf = PciSbdf {
            segment: f.segment,
            bus: f.bus,
            devfn: f.devfn,
        };
        ranges.insert((server, IoRange::Pci(sbdf)));
        if server == cfg.own && cfg.ecam == EcamRouting::ShimDecodes {
            for w in topo.ecam.iter().filter(|w| w.segment == f.segment) {
                if let Some(s) = crate::ecam::slice(w, f.bus, f.devfn) {
                    ranges.insert((server, s));
                }
            }
        }
    }
    for r in &topo.ranges {
        if r.kind == RangeKind::Bar as u8 && r.space == pcierc_protocol::AddressSpace::Mmio as u8 {
            if let Some(last) = r.base.checked_add(r.size - 1) {
                ranges.insert((
                    cfg.own,
                    IoRange::Memory {
                        first: r.base,
                        last,
                    },
                ));
            }
        }
    }
    if cfg.config_ports {
        ranges.insert((
            cfg.own,
            IoRange::Port {
                first: 0xcf8,
                last: 0xcff,
            },
        ));
    }
    let mmcfg = match cfg.ecam {
        EcamRouting::XenDecodes => topo.ecam.first().copied(),
        EcamRouting::ShimDecodes => None,
    };
    Plan { ranges, mmcfg }
}

/// What one [`Routing::apply`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Ranges mapped.
    pub mapped: usize,
    /// Ranges unmapped.
    pub unmapped: usize,
    /// dm_ops Xen refused (logged).
    pub failed: usize,
}

/// The routing as applied to Xen, and the layout it came from.
#[derive(Debug)]
pub struct Routing {
    cfg: RoutingConfig,
    applied: Plan,
    topology: Option<Topology>,
}

impl Routing {
    /// Nothing mapped yet.
    pub fn new(cfg: RoutingConfig) -> Self {
        Routing {
            cfg,
            applied: Plan::default(),
            topology: None,
        }
    }

    /// The configuration (its `ecam` may have fallen back to `ShimDecodes`).
    pub fn config(&self) -> &RoutingConfig {
        &self.cfg
    }

    /// The layout last applied.
    pub fn topology(&self) -> Option<&Topology> {
        self.topology.as_ref()
    }

    /// Its generation.
    pub fn generation(&self) -> Option<u64> {
        self.topology.as_ref().map(|t| t.generation)
    }

    /// What is mapped now.
    pub fn applied(&self) -> &Plan {
        &self.applied
    }

    /// The ECAM window of `segment`, if PCIEXBAR enables one.
    pub fn ecam_window(&self, segment: u16) -> Option<&EcamWindow> {
        self.topology
            .as_ref()?
            .ecam
            .iter()
            .find(|w| w.segment == segment)
    }

    /// Make Xen's mappings match `topo`, unless it is older than what was applied. New ranges
    /// are mapped before old ones are unmapped, so a function that stays put is never
    /// unreachable in between. A refused dm_op is logged and counted, never fatal.
    pub fn apply<H: Hypervisor + ?Sized>(&mut self, hv: &H, topo: Topology) -> ApplyReport {
        if self.generation().is_some_and(|g| topo.generation <= g) {
            debug!("layout generation {} already applied", topo.generation);
            return ApplyReport::default();
        }
        let want = plan(&topo, &self.cfg);
        let mut report = ApplyReport::default();
        if want.mmcfg != self.applied.mmcfg {
            let window = want
                .mmcfg
                .map(|w| (w.base, w.segment, w.start_bus, w.end_bus));
            match dm_op(hv, xen_dm_op::x_pcierc_mmcfg(window)) {
                Ok(_) => {
                    info!("Xen decodes MMCONFIG: {window:x?}");
                    self.applied.mmcfg = want.mmcfg;
                }
                Err(e) if e.errno() == Some(libc::EOPNOTSUPP) => {
                    warn!(
                        "this Xen has no MMCONFIG decode extension ({e}); \
                         decoding ECAM in the shim (functions of other emulators are not \
                         reachable through ECAM)"
                    );
                    self.cfg.ecam = EcamRouting::ShimDecodes;
                    return self.apply(hv, topo);
                }
                Err(e) => {
                    warn!("setting the MMCONFIG window {window:x?}: {e}");
                    report.failed += 1;
                }
            }
        }
        let added: Vec<_> = want
            .ranges
            .difference(&self.applied.ranges)
            .copied()
            .collect();
        let removed: Vec<_> = self
            .applied
            .ranges
            .difference(&want.ranges)
            .copied()
            .collect();
        for (server, range) in added {
            match dm_op(hv, xen_dm_op::map_io_range_to_ioreq_server(server, range)) {
                Ok(_) => report.mapped += 1,
                Err(e) if e.errno() == Some(libc::EEXIST) => {
                    warn!("{range:x?} was already mapped to server {server}");
                }
                Err(e) => {
                    log_refusal("mapping", server, range, &e, &self.cfg);
                    report.failed += 1;
                    continue;
                }
            }
            self.applied.ranges.insert((server, range));
        }
        for (server, range) in removed {
            match dm_op(
                hv,
                xen_dm_op::unmap_io_range_from_ioreq_server(server, range),
            ) {
                Ok(_) => report.unmapped += 1,
                Err(e) => {
                    log_refusal("unmapping", server, range, &e, &self.cfg);
                    report.failed += 1;
                }
            }
            self.applied.ranges.remove(&(server, range));
        }
        info!(
            "layout generation {}: {} ranges mapped, {} unmapped, {} refused",
            topo.generation, report.mapped, report.unmapped, report.failed
        );
        self.topology = Some(topo);
        report
    }

    /// Unmap the shim's own ranges and stop Xen's MMCONFIG decode (peers keep theirs: their
    /// functions stay where they are).
    pub fn teardown<H: Hypervisor + ?Sized>(&mut self, hv: &H) {
        let own = self.cfg.own;
        let mine: Vec<_> = self
            .applied
            .ranges
            .iter()
            .filter(|(s, _)| *s == own)
            .copied()
            .collect();
        for (server, range) in mine {
            if let Err(e) = dm_op(
                hv,
                xen_dm_op::unmap_io_range_from_ioreq_server(server, range),
            ) {
                log_refusal("unmapping", server, range, &e, &self.cfg);
            }
            self.applied.ranges.remove(&(server, range));
        }
        if self.applied.mmcfg.take().is_some() {
            if let Err(e) = dm_op(hv, xen_dm_op::x_pcierc_mmcfg(None)) {
                warn!("clearing the MMCONFIG window: {e}");
            }
        }
    }
}

fn log_refusal(what: &str, server: ioservid_t, range: IoRange, e: &XenError, cfg: &RoutingConfig) {
    let whose = if server == cfg.own {
        "the shim's server".to_string()
    } else {
        let owner = cfg
            .peers
            .iter()
            .find(|(_, &id)| id == server)
            .map_or("?", |(n, _)| n.as_str());
        format!("{owner}'s server")
    };
    let why = if e.errno() == Some(libc::EPERM) {
        " (Xen lets a device model change only servers created from its own domain)"
    } else {
        ""
    };
    warn!("{what} {range:x?} on {whose} {server}: {e}{why}");
}

#[cfg(test)]
mod tests;
