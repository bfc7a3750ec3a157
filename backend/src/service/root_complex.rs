//! The protocol handler: answers requests from the [`Hierarchy`] and reports what changed.

use std::collections::BTreeMap;

use log::{debug, info, warn};
use pcierc_protocol::{
    BackendChannelSender, BackendHandler, ChipsetMemory, ConfigAddress, ConnectionId, Features,
    FrontendIdentity, LayoutChanges, Status, Topology,
};

use super::BACKEND_FEATURES;
use crate::pci::Effects;
use crate::topology::{state, Hierarchy};

/// The root complex as the protocol sees it.
pub struct RootComplex {
    hierarchy: Hierarchy,
    frontends: BTreeMap<ConnectionId, String>,
    channels: BTreeMap<ConnectionId, BackendChannelSender>,
}

impl RootComplex {
    /// Serve `hierarchy`.
    pub fn new(hierarchy: Hierarchy) -> Self {
        RootComplex {
            hierarchy,
            frontends: BTreeMap::new(),
            channels: BTreeMap::new(),
        }
    }

    /// The hierarchy (for tests and tools).
    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hierarchy
    }

    /// Tell every frontend with a backend channel what a write changed.
    fn report(&mut self, effects: Effects) {
        let mut changes = LayoutChanges::empty();
        for (e, c) in [
            (Effects::ECAM, LayoutChanges::ECAM),
            (Effects::BUS_NUMBERS, LayoutChanges::BUS_NUMBERS),
            (Effects::WINDOWS, LayoutChanges::WINDOWS),
            (Effects::BARS, LayoutChanges::BARS),
        ] {
            if effects.contains(e) {
                changes |= c;
            }
        }
        if changes.is_empty() && !effects.contains(Effects::CHIPSET_MEMORY) {
            return;
        }
        let topology = (!changes.is_empty()).then(|| self.hierarchy.describe());
        let memory = self.hierarchy.chipset_memory();
        if let Some(t) = &topology {
            debug!("layout generation {}: {changes:?}", t.generation);
        }
        let mut dead = Vec::new();
        for (conn, ch) in &mut self.channels {
            let sent = match &topology {
                Some(t) => ch.layout_changed(changes, t),
                None => Ok(()),
            }
            .and_then(|()| {
                if effects.contains(Effects::CHIPSET_MEMORY) {
                    ch.chipset_memory_changed(&memory)
                } else {
                    Ok(())
                }
            });
            if let Err(e) = sent {
                let name = self.frontends.get(conn).map_or("?", String::as_str);
                warn!("frontend {name}: backend channel failed ({e}); no more notifications to it");
                dead.push(*conn);
            }
        }
        for conn in dead {
            self.channels.remove(&conn);
        }
    }
}

impl BackendHandler for RootComplex {
    fn features(&mut self) -> Features {
        BACKEND_FEATURES
    }

    fn topology(&mut self) -> Topology {
        self.hierarchy.describe()
    }

    fn config_read(&mut self, a: ConfigAddress, width: u8) -> Result<u32, Status> {
        if a.segment != self.hierarchy.spec().segment {
            return Err(Status::NoDevice);
        }
        self.hierarchy.config_read(a.bus, a.devfn, a.offset, width)
    }

    fn config_write(&mut self, a: ConfigAddress, width: u8, value: u32) -> Result<(), Status> {
        if a.segment != self.hierarchy.spec().segment {
            return Err(Status::NoDevice);
        }
        let effects = self
            .hierarchy
            .config_write(a.bus, a.devfn, a.offset, width, value)?;
        self.report(effects);
        Ok(())
    }

    fn pio_read(&mut self, port: u64, width: u8) -> Result<u64, Status> {
        self.hierarchy.pio_read(port, width)
    }

    fn pio_write(&mut self, port: u64, width: u8, value: u64) -> Result<(), Status> {
        let effects = self.hierarchy.pio_write(port, width, value)?;
        self.report(effects);
        Ok(())
    }

    fn mmio_read(&mut self, addr: u64, width: u8) -> Result<u64, Status> {
        self.hierarchy.mmio_read(addr, width)
    }

    fn mmio_write(&mut self, addr: u64, width: u8, value: u64) -> Result<(), Status> {
        let effects = self.hierarchy.mmio_write(addr, width, value)?;
        self.report(effects);
        Ok(())
    }

    fn reset(&mut self) -> Result<(), Status> {
        info!("platform reset");
        let effects = self.hierarchy.reset();
        self.report(effects);
        Ok(())
    }

    fn save_state(&mut self) -> Result<Vec<u8>, Status> {
        Ok(state::save(&self.hierarchy))
    }

    fn load_state(&mut self, blob: &[u8]) -> Result<(), Status> {
        state::load(&mut self.hierarchy, blob).map_err(|e| {
            warn!("load state refused: {e}");
            Status::BadMessage
        })?;
        self.report(
            Effects::ECAM
                | Effects::BUS_NUMBERS
                | Effects::WINDOWS
                | Effects::BARS
                | Effects::CHIPSET_MEMORY,
        );
        Ok(())
    }

    fn chipset_memory(&mut self) -> ChipsetMemory {
        self.hierarchy.chipset_memory()
    }

    fn frontend_identified(&mut self, conn: ConnectionId, who: &FrontendIdentity) {
        info!("frontend {} ({:?}) connected", who.name, who.role);
        self.frontends.insert(conn, who.name.clone());
    }

    fn backend_channel(&mut self, conn: ConnectionId, sender: BackendChannelSender) {
        self.channels.insert(conn, sender);
    }

    fn disconnected(&mut self, conn: ConnectionId) {
        if let Some(name) = self.frontends.remove(&conn) {
            info!("frontend {name} disconnected");
        }
        self.channels.remove(&conn);
    }
}
