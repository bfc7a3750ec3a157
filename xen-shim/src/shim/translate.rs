//! The shim's [`IoHandler`]: ioreqs as pcierc protocol accesses.
//!
//! - PCI_CONFIG (CF8/CFC, decoded by Xen) and MMIO inside the ECAM window (decoded here) become
//!   `ConfigRead` / `ConfigWrite` of the function; unaligned accesses become byte accesses,
//!   8-byte ECAM accesses two dwords.
//! - Other MMIO (the BARs pcierc claims) and port I/O (only with the config ports claimed) go
//!   to pcierc as trapped accesses.
//! - "Not mine" answers (ENODEV) read as all ones, as an unclaimed access does under Xen;
//!   "another emulator's function" (EREMOTE) too, and are logged: the routing was stale or
//!   that emulator's server is unknown to the shim.
//! - After a write, pcierc's notifications are applied before the ioreq completes.

use log::{debug, warn};
use pcierc_protocol::{BackendChannel, Frontend, Status};

use super::{ShimError, ShimStatus};
use crate::abi::dm_op::PciSbdf;
use crate::hypervisor::Hypervisor;
use crate::ioreq_service::{Access, IoHandler};
use crate::pci_config::{assemble, split};
use crate::routing::Routing;

/// One service pass's view of the shim.
pub(super) struct Translator<'a, H: Hypervisor> {
    pub(super) hv: &'a H,
    pub(super) pcierc: &'a mut Frontend,
    pub(super) channel: &'a mut BackendChannel,
    pub(super) routing: &'a mut Routing,
    pub(super) status: &'a ShimStatus,
}

/// All ones in the low `size` bytes.
fn ones(size: u8) -> u64 {
    u64::MAX >> (64 - 8 * u32::from(size.clamp(1, 8)))
}

/// A failed request: a status is the access's answer (logged when unexpected); anything else
/// means the connection to pcierc is gone.
enum Answer {
    Status(Status),
    Fatal(pcierc_protocol::Error),
}

fn classify(e: pcierc_protocol::Error) -> Answer {
    match e.status() {
        Some(s) => Answer::Status(s),
        None => Answer::Fatal(e),
    }
}

impl<H: Hypervisor> Translator<'_, H> {
    /// A configuration access of `size` (1, 2, 4 or 8) bytes at `reg` of a function.
    fn config(&mut self, f: PciSbdf, reg: u32, size: u8, access: Access) -> Result<u64, ShimError> {
        let data = match access {
            Access::Read => 0,
            Access::Write(v) => v,
        };
        let pieces = match split(f.segment, f.bus, f.devfn, reg, size.into(), data) {
            Ok(p) => p,
            Err(e) => {
                warn!("config access to {f:x?}: {e}; reads all ones");
                return Ok(ones(size));
            }
        };
        let mut replies = Vec::with_capacity(pieces.len());
        for a in &pieces {
            let r = match access {
                Access::Read => self
                    .pcierc
                    .config_read(a.segment, a.bus, a.devfn, a.offset, a.width),
                Access::Write(_) => self
                    .pcierc
                    .config_write(a.segment, a.bus, a.devfn, a.offset, a.width, a.data as u32)
                    .map(|()| 0),
            };
            match r.map_err(classify) {
                Ok(v) => replies.push(v),
                Err(Answer::Fatal(e)) => return Err(e.into()),
                Err(Answer::Status(s)) => {
                    self.unexpected(f, s);
                    replies.push(u32::MAX);
                }
            }
        }
        if matches!(access, Access::Write(_)) {
            self.drain()?;
        }
        Ok(assemble(&pieces, &replies))
    }

    fn unexpected(&self, f: PciSbdf, s: Status) {
        match s {
            Status::NoDevice => debug!("{f:x?}: no such function"),
            Status::Remote => {
                ShimStatus::bump(&self.status.remote);
                warn!(
                    "{f:x?} is another emulator's function but reached the shim (stale routing, \
                     or an ECAM access stock Xen cannot route to its owner); all ones"
                );
            }
            s => warn!("{f:x?}: pcierc answered {s}; all ones"),
        }
    }

    /// A trapped access pcierc answers (`MmioRead`.. / `PioRead`..).
    fn trapped(
        &mut self,
        mmio: bool,
        addr: u64,
        size: u8,
        access: Access,
    ) -> Result<u64, ShimError> {
        let r = match (mmio, access) {
            (true, Access::Read) => self.pcierc.mmio_read(addr, size),
            (true, Access::Write(v)) => self.pcierc.mmio_write(addr, size, v).map(|()| 0),
            (false, Access::Read) => self.pcierc.pio_read(addr, size),
            (false, Access::Write(v)) => self.pcierc.pio_write(addr, size, v).map(|()| 0),
        };
        let value = match r.map_err(classify) {
            Ok(v) => v,
            Err(Answer::Fatal(e)) => return Err(e.into()),
            Err(Answer::Status(s)) => {
                if s != Status::NoDevice {
                    warn!(
                        "{} {addr:#x} ({size} bytes): pcierc answered {s}; all ones",
                        if mmio { "MMIO" } else { "port" }
                    );
                }
                ones(size)
            }
        };
        if matches!(access, Access::Write(_)) {
            self.drain()?;
        }
        Ok(value)
    }
}

impl<H: Hypervisor> IoHandler for Translator<'_, H> {
    type Error = ShimError;

    fn pio(&mut self, port: u16, size: u8, access: Access) -> Result<u64, ShimError> {
        self.trapped(false, port.into(), size, access)
    }

    fn mmio(&mut self, gpa: u64, size: u8, access: Access) -> Result<u64, ShimError> {
        let target = self
            .routing
            .topology()
            .and_then(|t| t.ecam.iter().find_map(|w| crate::ecam::decode(w, gpa)));
        match target {
            Some(t) => {
                let f = PciSbdf {
                    segment: t.segment,
                    bus: t.bus,
                    devfn: t.devfn,
                };
                self.config(f, t.reg, size, access)
            }
            None => self.trapped(true, gpa, size, access),
        }
    }

    fn pci_config(
        &mut self,
        sbdf: PciSbdf,
        reg: u32,
        size: u8,
        access: Access,
    ) -> Result<u64, ShimError> {
        self.config(sbdf, reg, size, access)
    }

    fn invalidate(&mut self) {
        // The shim maps no guest memory, so there is no map cache to flush.
        ShimStatus::bump(&self.status.invalidations);
    }
}
