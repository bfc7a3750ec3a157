//! A frontend that survives its connection: [`ResumableFrontend`] remembers what it set up on
//! the backend (the handshake options and the interrupt eventfds it registered), the layout
//! generation it last saw and CONFIG_ADDRESS when it latches it, so after a disconnect, or a
//! backend restarted from its state file,
//! [`ResumableFrontend::resume`] reconnects, repeats the handshake, re-sends the backend channel
//! and the eventfds, and says whether the layout moved on meanwhile.
//!
//! Version 1 of the protocol has no session to resume on the backend side: a new connection
//! starts from scratch, and everything a connection set up is re-sent (docs/protocol.md §14).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use crate::channel::BackendChannel;
use crate::error::{Error, Result};
use crate::frontend::{Frontend, FrontendOptions};
use crate::topology::Topology;

/// What [`ResumableFrontend::resume`] found.
#[derive(Debug)]
pub struct Resumed {
    /// The new backend channel, if the options asked for one.
    pub channel: Option<BackendChannel>,
    /// The topology now.
    pub topology: Topology,
    /// Did its generation differ from the last one seen (the frontend must resynchronise its
    /// routing from `topology`)?
    pub layout_changed: bool,
}

/// An interrupt eventfd registration to repeat.
struct Registration {
    segment: u16,
    bus: u8,
    devfn: u8,
    vector: u16,
    fd: EventFd,
}

/// A [`Frontend`] plus what it needs to set itself up again on a new connection.
pub struct ResumableFrontend {
    path: PathBuf,
    opts: FrontendOptions,
    fe: Frontend,
    irqfds: Vec<Registration>,
    generation: u64,
}

impl ResumableFrontend {
    /// Connect and handshake as [`Frontend::connect`]; record the layout generation.
    pub fn connect(path: impl AsRef<Path>, opts: FrontendOptions) -> Result<Self> {
        let mut fe = Frontend::connect(path.as_ref(), opts.clone())?;
        let generation = fe.topology()?.generation;
        Ok(ResumableFrontend {
            path: path.as_ref().to_path_buf(),
            opts,
            fe,
            irqfds: Vec::new(),
            generation,
        })
    }

    /// The connection, for requests.
    pub fn frontend(&mut self) -> &mut Frontend {
        &mut self.fe
    }

    /// Record a layout generation seen on the backend channel (`LayoutChanged`).
    pub fn saw_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    /// The layout generation last seen.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// [`Frontend::set_interrupt_fd`], remembered for [`Self::resume`] (`None` forgets it).
    pub fn set_interrupt_fd(
        &mut self,
        segment: u16,
        bus: u8,
        devfn: u8,
        vector: u16,
        fd: Option<&EventFd>,
    ) -> Result<()> {
        self.fe.set_interrupt_fd(segment, bus, devfn, vector, fd)?;
        let key = |r: &Registration| (r.segment, r.bus, r.devfn, r.vector);
        self.irqfds
            .retain(|r| key(r) != (segment, bus, devfn, vector));
        if let Some(fd) = fd {
            self.irqfds.push(Registration {
                segment,
                bus,
                devfn,
                vector,
                fd: fd.try_clone().map_err(Error::Socket)?,
            });
        }
        Ok(())
    }

    /// Reconnect (retrying until `patience` runs out, while the backend restarts), repeat the
    /// handshake, re-register the interrupt eventfds, and fetch the topology.
    pub fn resume(&mut self, patience: Duration) -> Result<Resumed> {
        // If the old connection still works, take the eventfds off it first, so no interrupt
        // is signalled twice while the backend has not yet seen it close.
        for r in &self.irqfds {
            if self
                .fe
                .set_interrupt_fd(r.segment, r.bus, r.devfn, r.vector, None)
                .is_err()
            {
                break;
            }
        }
        let deadline = Instant::now() + patience;
        let mut fe = loop {
            match Frontend::connect(&self.path, self.opts.clone()) {
                Ok(fe) => break fe,
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        for r in &self.irqfds {
            fe.set_interrupt_fd(r.segment, r.bus, r.devfn, r.vector, Some(&r.fd))?;
        }
        // A CONFIG_ADDRESS this frontend latches is its own state, not the backend's: it
        // carries over whatever the backend (restarted from its state file, perhaps) holds.
        if let Some(latch) = self.fe.config_address_latch() {
            fe.set_config_address_latch(latch);
        }
        let topology = fe.topology()?;
        let layout_changed = topology.generation != self.generation;
        self.generation = topology.generation;
        let channel = fe.take_backend_channel();
        self.fe = fe;
        Ok(Resumed {
            channel,
            topology,
            layout_changed,
        })
    }
}
