//! What the VMM asks of pcierc before the guest runs: the firmware's part (ECAM through
//! PCIEXBAR), one irqfd per MSI-X vector of the root ports (`SetInterruptFd`), and the claims
//! of its cold-plugged endpoints (`ClaimFunction`). docs/vmm.md, "Wiring pcierc into another
//! rust-vmm VMM", walks through the same calls.

use std::sync::PoisonError;

use pcierc_protocol::{decode_name, function_flags, FunctionKind, Status, Topology, NO_PARENT};

use super::machine::Machine;
use super::pcie::{self, PcieLink};
use super::{endpoint, endpoint_id, irq, layout, Error};

/// Firmware's part: enable ECAM through the MCH's PCIEXBAR (Q35: 00:00.0 offset 0x60, base |
/// length 256 MiB | enable) if pcierc decodes none yet, and route it at once.
pub fn enable_ecam(pcie: &PcieLink) -> Result<(), Error> {
    let backend = |what: &str| {
        let what = what.to_string();
        move |source| Error::Backend { what, source }
    };
    let mut fe = pcie.frontend();
    if fe
        .topology()
        .map_err(backend("GetTopology"))?
        .ecam
        .is_empty()
    {
        fe.config_write(0, 0, 0, 0x64, 4, (layout::ECAM_BASE >> 32) as u32)
            .map_err(backend("enabling ECAM (PCIEXBAR)"))?;
        fe.config_write(0, 0, 0, 0x60, 4, layout::ECAM_BASE as u32 | 1)
            .map_err(backend("enabling ECAM (PCIEXBAR)"))?;
    }
    let topology = fe.topology().map_err(backend("GetTopology"))?;
    if topology.ecam.is_empty() {
        return Err(Error::Config(
            "pcierc decodes no ECAM window after PCIEXBAR was enabled".into(),
        ));
    }
    drop(fe);
    pcie.set_claims(pcie::Claims::from_topology(&topology));
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
