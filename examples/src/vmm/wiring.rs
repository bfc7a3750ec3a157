//! What the VMM asks of pcierc before the guest runs: the firmware's part (ECAM through
//! PCIEXBAR), one irqfd per MSI-X vector of the root ports (`SetInterruptFd`), and the claims
//! of its cold-plugged endpoints (`ClaimFunction`). docs/vmm.md, "Wiring pcierc into another
//! rust-vmm VMM", walks through the same calls.

use std::sync::PoisonError;

use pcierc_protocol::{decode_name, function_flags, FunctionKind, Status, Topology, NO_PARENT};

use super::machine::Machine;
use super::pcie::{self, PcieLink};
use super::vfio::Assigned;
use super::{endpoint, endpoint_id, irq, layout, Error};

/// Firmware's part: enable ECAM through the MCH's PCIEXBAR (Q35: 00:00.0 offset 0x60, base |
/// length 256 MiB | enable) if pcierc decodes no window for segment 0 yet, and route it at once
/// (extra segments' windows are fixed: they decode from power-on).
pub fn enable_ecam(pcie: &PcieLink) -> Result<(), Error> {
    let backend = |what: &str| {
        let what = what.to_string();
        move |source| Error::Backend { what, source }
    };
    let mut fe = pcie.frontend();
    let segment0 = |t: &Topology| t.ecam.iter().any(|w| w.segment == 0);
    if !segment0(&fe.topology().map_err(backend("GetTopology"))?) {
        fe.config_write(0, 0, 0, 0x64, 4, (layout::ECAM_BASE >> 32) as u32)
            .map_err(backend("enabling ECAM (PCIEXBAR)"))?;
        fe.config_write(0, 0, 0, 0x60, 4, layout::ECAM_BASE as u32 | 1)
            .map_err(backend("enabling ECAM (PCIEXBAR)"))?;
    }
    let topology = fe.topology().map_err(backend("GetTopology"))?;
    if !segment0(&topology) {
        return Err(Error::Config(
            "pcierc decodes no ECAM window after PCIEXBAR was enabled".into(),
        ));
    }
    drop(fe);
    pcie.set_claims(pcie::Claims::from_topology(&topology));
    Ok(())
}

/// Extra PCI segments' ECAM windows are fixed by pcierc's topology: refuse to start when one
/// overlaps the guest's RAM, the 32-bit hole's fixed devices or the 64-bit PCI apertures of this
/// memory map (`mem` bytes of RAM), rather than let the guest see RAM where MCFG says ECAM is.
pub fn check_segment_windows(pcie: &PcieLink, mem: u64) -> Result<(), Error> {
    let topology = pcie
        .frontend()
        .topology()
        .map_err(|source| Error::Backend {
            what: "GetTopology".into(),
            source,
        })?;
    let busy: Vec<(u64, u64, &str)> = layout::ram_regions(mem)
        .into_iter()
        .map(|(a, len)| (a.0, len, "guest RAM"))
        .chain([
            (
                layout::MMIO_HOLE_START,
                (1 << 32) - layout::MMIO_HOLE_START,
                "the 32-bit PCI hole",
            ),
            (
                super::acpi::MMIO64_START,
                super::acpi::MMIO64_SPAN,
                "the 64-bit PCI apertures",
            ),
        ])
        .collect();
    for w in topology.ecam.iter().filter(|w| w.segment != 0) {
        if let Some((_, _, what)) = busy.iter().find(|&&(a, len, _)| {
            w.base < a.saturating_add(len) && a < w.base.saturating_add(w.size)
        }) {
            return Err(Error::Config(format!(
                "PCI segment {:04x}'s ECAM window {:#x}+{:#x} overlaps {what}: move its ecam-base \
                 in pcierc's topology (or give the guest less memory)",
                w.segment, w.base, w.size
            )));
        }
    }
    Ok(())
}

/// `--endpoint PORT`: claim a function behind root port `port`, present from power-on; its model
/// is made when `FunctionAdded` arrives. A claim pcierc already holds for this VMM (a run before
/// this one, against the same pcierc) is served again.
pub fn claim_endpoint(
    machine: &Machine,
    name: &str,
    port: &str,
    topology: &Topology,
) -> Result<(), Error> {
    let id = endpoint_id(port);
    let r = machine
        .pcie
        .frontend()
        .claim_function(port, &id, endpoint::DRIVER, 0, true, false);
    match r {
        Ok(()) => {
            log::info!("claimed {id} behind {port}");
            Ok(())
        }
        Err(e)
            if e.status() == Some(Status::Exists)
                && topology.functions.iter().any(|f| {
                    decode_name(&f.id) == Some(id.as_str()) && decode_name(&f.owner) == Some(name)
                }) =>
        {
            log::info!("{id} is this VMM's already: serving it again");
            Ok(())
        }
        Err(source) => Err(Error::Backend {
            what: format!("ClaimFunction {id} behind {port}"),
            source,
        }),
    }
}

/// `--vfio`: claim each passed-through function behind its root port (`spec.port`, else the
/// first root port with an empty slot and not in `taken`; the functions of one host device
/// share a port) at `spec.addr` (else device 0 and the host function's number), cold-plugged,
/// function 0 first and with the multi-function flag when it has siblings there; the models
/// wait in the VMM's devices for their `FunctionAdded`.
pub fn claim_assigned(
    machine: &Machine,
    assigned: Vec<Assigned>,
    taken: &[&str],
    topology: &Topology,
) -> Result<(), Error> {
    let ports: Vec<String> = topology
        .functions
        .iter()
        .enumerate()
        .filter(|(_, f)| f.kind == FunctionKind::RootPort as u8)
        .filter(|(i, _)| {
            // An empty slot: no function has this port as its parent.
            !topology
                .functions
                .iter()
                .any(|c| usize::from(c.parent) == *i && c.parent != NO_PARENT)
        })
        .filter_map(|(_, f)| decode_name(&f.id).map(str::to_owned))
        .collect();
    let mut used: Vec<String> = taken.iter().map(|s| s.to_string()).collect();
    // (port, devfn, function) for each, in claim order: function 0 of each slot first.
    let mut plan = Vec::new();
    for a in &assigned {
        let sibling_port = plan
            .iter()
            .find_map(|(p, _, other): &(String, u8, &Assigned)| {
                let (x, y) = (other.host.sbdf, a.host.sbdf);
                ((x.segment, x.bus, x.device) == (y.segment, y.bus, y.device)).then(|| p.clone())
            });
        let port = match (&a.spec.port, sibling_port) {
            (Some(p), _) => p.clone(),
            (None, Some(p)) => p,
            (None, None) => ports
                .iter()
                .find(|p| !used.contains(p))
                .cloned()
                .ok_or_else(|| {
                    Error::Config(format!(
                        "{}: no root port with an empty slot left (give port=ID)",
                        a.host.sbdf
                    ))
                })?,
        };
        used.push(port.clone());
        let (d, f) = a.spec.addr.unwrap_or((0, a.host.sbdf.function));
        plan.push((port, d << 3 | f, a));
    }
    plan.sort_by_key(|(port, devfn, _)| (port.clone(), *devfn));
    let claims: Vec<(String, u8, bool, String)> = plan
        .iter()
        .map(|(port, devfn, a)| {
            let siblings = plan
                .iter()
                .filter(|(p, d, _)| p == port && d >> 3 == devfn >> 3)
                .count();
            (
                port.clone(),
                *devfn,
                *devfn & 7 == 0 && siblings > 1,
                a.id(),
            )
        })
        .collect();
    for a in assigned {
        machine.devices().add_assigned(a);
    }
    for (port, devfn, multifunction, id) in claims {
        machine
            .pcie
            .frontend()
            .claim_function(&port, &id, "vfio-pci", devfn, true, multifunction)
            .map_err(|source| Error::Backend {
                what: format!("ClaimFunction {id} behind {port}"),
                source,
            })?;
        log::info!(
            "claimed {id} behind {port} at device {:02x}.{}",
            devfn >> 3,
            devfn & 7
        );
    }
    Ok(())
}

/// One irqfd per MSI-X vector of each root port pcierc emulates on the root bus (pcierc
/// implements `SetInterruptFd` for those, one vector each).
pub fn register_msix_vectors(machine: &Machine) -> Result<(), Error> {
    let topology = machine.pcie.topology()?;
    for f in &topology.functions {
        let is_port = f.kind == FunctionKind::RootPort as u8
            && f.flags & function_flags::EMULATED != 0
            && f.parent == NO_PARENT;
        if !is_port {
            continue;
        }
        let id = irq::VectorId {
            segment: f.segment,
            bus: f.bus,
            devfn: f.devfn,
            vector: 0,
        };
        let mut irq = machine.irq.lock().unwrap_or_else(PoisonError::into_inner);
        let eventfd = irq.add_vector(&machine.vm, id)?;
        machine
            .pcie
            .frontend()
            .set_interrupt_fd(f.segment, f.bus, f.devfn, 0, Some(eventfd))
            .map_err(|source| Error::Backend {
                what: format!(
                    "SetInterruptFd {:02x}:{:02x}.{}",
                    f.bus,
                    f.devfn >> 3,
                    f.devfn & 7
                ),
                source,
            })?;
        log::info!(
            "MSI-X vector 0 of {:02x}:{:02x}.{} on GSI {:?}",
            f.bus,
            f.devfn >> 3,
            f.devfn & 7,
            irq.gsi(&id)
        );
    }
    Ok(())
}
