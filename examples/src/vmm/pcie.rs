//! The VMM's side of pcierc: which trapped accesses belong to pcierc (from its topology, kept up
//! to date by `LayoutChanged`), forwarding them unchanged, and the backend channel.
//!
//! Ordering: pcierc queues a guest write's notifications on the backend channel before the
//! write's reply (docs/protocol.md §11), so after every forwarded write the vCPU drains the
//! channel before resuming the guest. A guest that enables ECAM and reads it in the next
//! instruction therefore always finds the new window routed.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};

use pcierc_protocol::{
    AddressSpace, BackendChannel, EcamWindow, Frontend, Notification, ProtocolFeatures, RangeKind,
    Status, Topology,
};

use super::Error;

/// CONFIG_ADDRESS (configuration mechanism #1).
pub const CONFIG_ADDRESS_PORT: u64 = 0xcf8;
/// CONFIG_DATA: 0xCFC-0xCFF.
pub const CONFIG_DATA_PORT: u16 = 0xcfc;

/// What pcierc decodes of the guest's address spaces: (base, size) pairs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claims {
    /// The topology generation these come from.
    pub generation: u64,
    /// ECAM windows (MMIO).
    pub ecam: Vec<(u64, u64)>,
    /// The same windows with the buses they decode, to find the function of an access pcierc
    /// answers `EREMOTE` (served by this VMM, perhaps).
    pub ecam_windows: Vec<EcamWindow>,
    /// BARs of the functions pcierc emulates (MMIO).
    pub mmio: Vec<(u64, u64)>,
    /// BARs of the functions pcierc emulates (port I/O), CONFIG_ADDRESS and CONFIG_DATA.
    pub pio: Vec<(u64, u64)>,
}

/// An access belongs to a range if its first byte does (accesses are at most 8 bytes; pcierc
/// decides what one straddling the end of its range means).
fn hits(ranges: &[(u64, u64)], addr: u64) -> bool {
    ranges
        .iter()
        .any(|&(base, size)| addr >= base && addr - base < size)
}

impl Claims {
    /// The claimed ranges of a topology (docs/protocol.md §10). Windows are not claimed: they
    /// route to whoever serves the functions behind the port.
    pub fn from_topology(t: &Topology) -> Claims {
        let mut c = Claims {
            generation: t.generation,
            ecam: t.ecam.iter().map(|e| (e.base, e.size)).collect(),
            ecam_windows: t.ecam.clone(),
            ..Claims::default()
        };
        for r in &t.ranges {
            let claimed = matches!(
                RangeKind::try_from(r.kind),
                Ok(RangeKind::ConfigAddress | RangeKind::ConfigData | RangeKind::Bar)
            );
            if !claimed {
                continue;
            }
            if r.space == AddressSpace::Mmio as u8 {
                c.mmio.push((r.base, r.size));
            } else if r.space == AddressSpace::Pio as u8 {
                c.pio.push((r.base, r.size));
            }
        }
        c
    }

    /// Does pcierc decode this MMIO access?
    pub fn mmio(&self, addr: u64) -> bool {
        hits(&self.ecam, addr) || hits(&self.mmio, addr)
    }

    /// Does pcierc decode this port-I/O access?
    pub fn pio(&self, port: u16) -> bool {
        hits(&self.pio, u64::from(port))
    }

    /// The function and register an ECAM address names (PCIe Base 6.0 §7.2.2: bus << 20 |
    /// device << 15 | function << 12 | offset from the window's first bus).
    pub fn ecam_function(&self, addr: u64) -> Option<ConfigAddress> {
        self.ecam_windows.iter().find_map(|w| {
            let off = addr.checked_sub(w.base).filter(|&o| o < w.size)?;
            Some(ConfigAddress {
                segment: w.segment,
                bus: w.start_bus.checked_add((off >> 20) as u8)?,
                devfn: (off >> 12) as u8,
                offset: (off & 0xfff) as u16,
            })
        })
    }
}

/// A register of a function's configuration space, as a configuration request names it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ConfigAddress {
    /// PCI segment group.
    pub segment: u16,
    /// Bus.
    pub bus: u8,
    /// Device << 3 | function.
    pub devfn: u8,
    /// Register offset (0-4095).
    pub offset: u16,
}

impl ConfigAddress {
    /// What CONFIG_ADDRESS (0xCF8) selects for an access to CONFIG_DATA byte `byte` (0-3), if
    /// the mechanism is enabled (PCI Local Bus 3.0 §3.2.2.3.2).
    pub fn from_config_address(segment: u16, latch: u32, byte: u16) -> Option<ConfigAddress> {
        (latch & 1 << 31 != 0 && byte < 4).then_some(ConfigAddress {
            segment,
            bus: (latch >> 16) as u8,
            devfn: (latch >> 8) as u8,
            offset: (latch & 0xfc) as u16 + byte,
        })
    }
}

/// The answer to a forwarded access.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Forwarded {
    /// pcierc handled it (reads carry the value).
    Done(u64),
    /// pcierc does not decode it after all (`ENODEV`: the platform default applies) or another
    /// emulator serves the function (`EREMOTE`: this VMM, perhaps).
    NotMine(Status),
}

/// The connection to pcierc shared by the vCPUs and the notification thread.
pub struct PcieLink {
    frontend: Mutex<Frontend>,
    channel: Mutex<Option<BackendChannel>>,
    claims: RwLock<Claims>,
    /// The frontend latches CONFIG_ADDRESS (`CONFIG_ADDRESS_LATCH` negotiated).
    latches_config_address: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock ends the VMM anyway; the data is still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn backend(what: &str) -> impl FnOnce(pcierc_protocol::Error) -> Error + '_ {
    move |source| Error::Backend {
        what: what.to_string(),
        source,
    }
}

impl PcieLink {
    /// Take over a connected frontend: its backend channel and its current claims.
    pub fn new(mut frontend: Frontend) -> Result<PcieLink, Error> {
        if !frontend
            .protocol_features()
            .contains(ProtocolFeatures::GUEST_ACCESS)
        {
            return Err(Error::Config(
                "pcierc did not offer GUEST_ACCESS: trapped accesses cannot be forwarded".into(),
            ));
        }
        let topology = frontend.topology().map_err(backend("GetTopology"))?;
        let channel = frontend.take_backend_channel();
        Ok(PcieLink {
            latches_config_address: frontend.config_address_latch().is_some(),
            claims: RwLock::new(Claims::from_topology(&topology)),
            frontend: Mutex::new(frontend),
            channel: Mutex::new(channel),
        })
    }

    /// Use the frontend (setup calls: topology, interrupt eventfds, configuration writes).
    pub fn frontend(&self) -> MutexGuard<'_, Frontend> {
        lock(&self.frontend)
    }

    /// pcierc's topology now (`GetTopology`).
    pub fn topology(&self) -> Result<Topology, Error> {
        self.frontend().topology().map_err(backend("GetTopology"))
    }

    /// The backend channel's descriptor, for polling.
    pub fn channel_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        lock(&self.channel).as_ref().map(|c| c.as_raw_fd())
    }

    /// The current claims.
    pub fn claims(&self) -> Claims {
        self.claims
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replace the claims (after a `LayoutChanged`).
    pub fn set_claims(&self, claims: Claims) {
        *self.claims.write().unwrap_or_else(PoisonError::into_inner) = claims;
    }

    /// Does pcierc decode this MMIO access?
    pub fn claims_mmio(&self, addr: u64) -> bool {
        self.claims
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .mmio(addr)
    }

    /// Does pcierc decode this port-I/O access?
    pub fn claims_pio(&self, port: u16) -> bool {
        self.claims
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .pio(port)
    }

    /// Forward a trapped access. `Err` only when the connection is unusable.
    pub fn forward(&self, access: Access) -> Result<Forwarded, Error> {
        let mut fe = lock(&self.frontend);
        let r = match access {
            Access::PioRead { port, width } => fe.pio_read(u64::from(port), width),
            Access::PioWrite { port, width, value } => {
                fe.pio_write(u64::from(port), width, value).map(|()| 0)
            }
            Access::MmioRead { addr, width } => fe.mmio_read(addr, width),
            Access::MmioWrite { addr, width, value } => {
                fe.mmio_write(addr, width, value).map(|()| 0)
            }
        };
        match r {
            Ok(v) => Ok(Forwarded::Done(v)),
            Err(e) => match e.status() {
                Some(s @ (Status::NoDevice | Status::Remote)) => Ok(Forwarded::NotMine(s)),
                Some(s) if !e.should_disconnect() => {
                    log::warn!("pcierc refused {access:?}: {s:?}");
                    Ok(Forwarded::NotMine(s))
                }
                _ => Err(Error::Backend {
                    what: format!("forwarding {access:?}"),
                    source: e,
                }),
            },
        }
    }

    /// Does the frontend latch CONFIG_ADDRESS (`CONFIG_ADDRESS_LATCH` negotiated)?
    pub fn latches_config_address(&self) -> bool {
        self.latches_config_address
    }

    /// Is this port write handled without a message to pcierc (a dword CONFIG_ADDRESS write
    /// the frontend latches), so no notification can have been queued by it?
    pub fn is_local_write(&self, port: u16, width: u8) -> bool {
        self.latches_config_address && u64::from(port) == CONFIG_ADDRESS_PORT && width == 4
    }

    /// CONFIG_ADDRESS as the frontend latched it, or as pcierc did for a frontend that does
    /// not latch it (to decode a CONFIG_DATA access pcierc answered `EREMOTE`).
    pub fn config_address(&self) -> Result<u32, Error> {
        lock(&self.frontend)
            .pio_read(CONFIG_ADDRESS_PORT, 4)
            .map(|v| v as u32)
            .map_err(backend("reading CONFIG_ADDRESS"))
    }

    /// Is Bus Master Enable set in the Command register of pcierc's function (segment, bus,
    /// devfn)? A root port forwards its endpoints' memory requests (MSI-X messages) upstream
    /// only then (PCI-to-PCI Bridge 1.2 §3.2.5.1).
    pub fn bus_master(&self, segment: u16, bus: u8, devfn: u8) -> Result<bool, Error> {
        match lock(&self.frontend).config_read(segment, bus, devfn, 0x04, 2) {
            Ok(command) => Ok(command & 1 << 2 != 0),
            Err(e) if e.should_disconnect() => Err(Error::Backend {
                what: "reading a root port's Command register".into(),
                source: e,
            }),
            Err(_) => Ok(false),
        }
    }

    /// Hand every complete notification now waiting on the backend channel to `apply`, in
    /// order. The channel stays locked meanwhile, so two threads draining at once (a vCPU after a
    /// write, the notification thread) never apply notifications out of order.
    pub fn drain(
        &self,
        mut apply: impl FnMut(Notification) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut ch = lock(&self.channel);
        loop {
            let Some(c) = ch.as_mut() else {
                return Ok(());
            };
            match c.try_recv() {
                // A layout delta the channel could not apply: the layout it knows is stale;
                // fetch it (lock order: channel, then frontend; nothing takes them the other
                // way round).
                Ok(Some(Notification::LayoutResync {
                    changes,
                    generation,
                })) => {
                    log::warn!("pcierc layout {generation}: resynchronising (GetTopology)");
                    let n = c
                        .resync(&mut lock(&self.frontend), changes)
                        .map_err(backend("GetTopology"))?;
                    apply(n)?
                }
                Ok(Some(n)) => apply(n)?,
                Ok(None) => return Ok(()),
                Err(e) if e.should_disconnect() => {
                    log::warn!("pcierc's backend channel closed: {e}");
                    *ch = None;
                }
                // A notification this VMM does not understand: skip it, as §11 requires.
                Err(e) => log::debug!("ignoring a notification: {e}"),
            }
        }
    }
}

/// A trapped access, as forwarded.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// Port-I/O read.
    PioRead {
        /// Port.
        port: u16,
        /// 1, 2 or 4.
        width: u8,
    },
    /// Port-I/O write.
    PioWrite {
        /// Port.
        port: u16,
        /// 1, 2 or 4.
        width: u8,
        /// Value (low `width` bytes).
        value: u64,
    },
    /// MMIO read.
    MmioRead {
        /// Guest-physical address.
        addr: u64,
        /// 1, 2, 4 or 8.
        width: u8,
    },
    /// MMIO write.
    MmioWrite {
        /// Guest-physical address.
        addr: u64,
        /// 1, 2, 4 or 8.
        width: u8,
        /// Value (low `width` bytes).
        value: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcierc_protocol::{AddressRange, EcamWindow};

    #[test]
    fn claims_follow_the_topology() {
        let t = Topology {
            generation: 2,
            functions: vec![],
            ecam: vec![EcamWindow {
                base: 0xb000_0000,
                size: 256 << 20,
                segment: 0,
                start_bus: 0,
                end_bus: 255,
                reserved: 0,
            }],
            ranges: vec![
                AddressRange {
                    base: 0xcf8,
                    size: 4,
                    space: AddressSpace::Pio as u8,
                    kind: RangeKind::ConfigAddress as u8,
                    ..Default::default()
                },
                AddressRange {
                    base: 0xc000_0000,
                    size: 0x1000,
                    space: AddressSpace::Mmio as u8,
                    kind: RangeKind::Bar as u8,
                    devfn: 0x10,
                    ..Default::default()
                },
                AddressRange {
                    base: 0xc100_0000,
                    size: 0x10_0000,
                    space: AddressSpace::Mmio as u8,
                    kind: RangeKind::MemWindow as u8,
                    ..Default::default()
                },
            ],
        };
        let c = Claims::from_topology(&t);
        assert!(c.mmio(0xb000_0000) && c.mmio(0xbfff_fffc));
        assert!(c.mmio(0xc000_0ffc) && !c.mmio(0xc000_1000));
        assert!(
            !c.mmio(0xc100_0000),
            "windows route to the endpoints' owners"
        );
        assert!(c.pio(0xcf8) && c.pio(0xcfb) && !c.pio(0xcfc));
        assert_eq!(c.generation, 2);
        let at = |bus, devfn, offset| {
            Some(ConfigAddress {
                segment: 0,
                bus,
                devfn,
                offset,
            })
        };
        assert_eq!(c.ecam_function(0xb010_0104), at(1, 0, 0x104));
        assert_eq!(c.ecam_function(0xb001_7ffc), at(0, 0x17, 0xffc));
        assert_eq!(c.ecam_function(0xc000_0000), None);
        assert_eq!(
            ConfigAddress::from_config_address(0, 0x8001_1004, 2),
            at(1, 0x10, 6)
        );
        assert_eq!(ConfigAddress::from_config_address(0, 0x0001_1004, 0), None);
    }
}
