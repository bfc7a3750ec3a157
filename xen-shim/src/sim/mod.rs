//! A simulated Xen 4.17 for tests: one HVM guest domain whose accesses are routed to ioreq
//! servers exactly as `xen/arch/x86/hvm/ioreq.c` and `xen/common/ioreq.c` route them, with the
//! ioreq pages in ordinary memory and event channels modelled with eventfds.
//!
//! - [`SimXen::device_model`] opens the "devices" for a device model running in some domain:
//!   a [`SimDm`], which implements [`crate::hypervisor::Hypervisor`] by decoding the very
//!   dm_op bytes the real ioctl would carry, with Xen's checks (pads, ids, the emulating
//!   domain, range overlap, the 256-range limit, state order).
//! - [`SimXen::vcpu`] is a guest vCPU ([`Vcpu`]): its port and MMIO accesses are routed like
//!   Xen's: dword writes to 0xCF8 latched; 0xCFC-0xCFF with CF8 bit 31 set become PCI_CONFIG
//!   (`addr = SBDF << 32 | reg`) chosen by the PCI ranges servers mapped; other port and MMIO
//!   accesses by PORT and MEMORY ranges (the whole access inside one range); enabled servers
//!   only, the highest id first; an access no server claims is dropped (reads all ones).
//!   ECAM is never decoded, unless the simulation has the proposed MMCONFIG extension
//!   ([`SimConfig::mmcfg_extension`], [`crate::abi::proposed`]).
//! - [`guest::Guest`] scripts a firmware-like guest on top (CF8/CFC and ECAM helpers,
//!   enumeration).
//!
//! A device model that breaks the slot protocol (a state going backwards, `vp_eport`
//! overwritten, no answer) "crashes the domain", as Xen does: [`SimXen::crashed`] says why.

mod dm;
mod evtchn;
pub mod guest;
mod page;
pub mod rangeset;
mod route;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::abi::dm_op::ioservid_t;
use crate::abi::evtchn_port_t;
use crate::DomId;
pub use dm::SimDm;
use evtchn::SimEvtchn;
use page::SharedPage;
pub use page::SimPage;
use rangeset::RangeSet;
pub use route::{Routed, SimError};

/// Ioreq servers per domain in Xen 4.17 (`MAX_NR_IOREQ_SERVERS`).
pub const MAX_NR_IOREQ_SERVERS: usize = 8;

/// The simulated guest.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The guest's domain id.
    pub domid: DomId,
    /// Its vCPUs.
    pub vcpus: u32,
    /// Whether the hypervisor implements the proposed MMCONFIG decode.
    pub mmcfg_extension: bool,
    /// How long a vCPU waits for a device model's answer before the test fails.
    pub timeout: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            domid: 5,
            vcpus: 2,
            mmcfg_extension: false,
            timeout: Duration::from_secs(10),
        }
    }
}

/// An interrupt a device model injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimInterrupt {
    /// `inject_msi`.
    Msi {
        /// Address.
        addr: u64,
        /// Data.
        data: u32,
    },
    /// `set_pci_intx_level` (segment and bus are always 0: Xen refuses others).
    Intx {
        /// Device on bus 0.
        device: u8,
        /// Pin, 0 = INTA.
        intx: u8,
        /// Asserted.
        level: bool,
    },
}

/// One server, as tests see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerView {
    /// Its id.
    pub id: ioservid_t,
    /// The domain of the device model that created it.
    pub emulator: DomId,
    /// Enabled.
    pub enabled: bool,
    /// PORT, MEMORY and PCI ranges (merged, inclusive).
    pub ranges: [Vec<(u64, u64)>; 3],
}

/// The decoded MMCONFIG window (proposed extension).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mmcfg {
    pub(crate) base: u64,
    pub(crate) segment: u16,
    pub(crate) start_bus: u8,
    pub(crate) end_bus: u8,
}

#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) emulator: DomId,
    pub(crate) enabled: bool,
    pub(crate) legacy_gfns: bool,
    pub(crate) page: Option<Arc<SharedPage>>,
    pub(crate) ranges: [RangeSet; 3],
    /// Guest-side port of each vCPU's channel.
    pub(crate) vp_ports: Vec<evtchn_port_t>,
}

#[derive(Debug)]
pub(crate) struct GuestPort {
    pub(crate) vcpu: usize,
    /// The domain allowed to bind it (the server's creator).
    pub(crate) remote_dom: DomId,
    pub(crate) bound: Option<(Arc<SimEvtchn>, evtchn_port_t)>,
}

#[derive(Debug, Default)]
pub(crate) struct Domain {
    pub(crate) servers: [Option<Server>; MAX_NR_IOREQ_SERVERS],
    pub(crate) cf8: u32,
    pub(crate) mmcfg: Option<Mmcfg>,
    pub(crate) ports: HashMap<evtchn_port_t, GuestPort>,
    pub(crate) next_port: evtchn_port_t,
    pub(crate) crashed: Option<String>,
    pub(crate) interrupts: Vec<SimInterrupt>,
    pub(crate) dropped: u64,
}

impl Domain {
    pub(crate) fn crash(&mut self, why: String) {
        log::error!("simulated domain crash: {why}");
        self.crashed.get_or_insert(why);
    }
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) cfg: SimConfig,
    pub(crate) domain: Mutex<Domain>,
    /// Wakes vCPU `v` when a device model notifies one of its channels.
    pub(crate) vcpu_wake: Vec<EventFd>,
}

/// The simulated hypervisor with its one guest domain.
#[derive(Clone, Debug)]
pub struct SimXen {
    pub(crate) inner: Arc<Inner>,
}

impl SimXen {
    /// A guest as `cfg` describes.
    ///
    /// # Panics
    /// If the host cannot create eventfds (the simulation's event channels).
    pub fn new(cfg: SimConfig) -> Self {
        let vcpu_wake = (0..cfg.vcpus)
            .map(|_| EventFd::new(EFD_NONBLOCK).expect("eventfd"))
            .collect();
        SimXen {
            inner: Arc::new(Inner {
                cfg,
                domain: Mutex::new(Domain {
                    next_port: 100,
                    ..Default::default()
                }),
                vcpu_wake,
            }),
        }
    }

    pub(crate) fn domain(&self) -> MutexGuard<'_, Domain> {
        self.inner.domain.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.inner.cfg
    }

    /// Open `/dev/xen/privcmd` and `/dev/xen/evtchn` for a device model running in domain
    /// `dm_domain` (0: dom0), targeting the guest.
    ///
    /// # Panics
    /// If the host cannot create an eventfd.
    pub fn device_model(&self, dm_domain: DomId) -> SimDm {
        SimDm::new(self.clone(), dm_domain)
    }

    /// Guest vCPU `v`.
    pub fn vcpu(&self, v: usize) -> Vcpu {
        assert!(v < self.inner.cfg.vcpus as usize, "no vCPU {v}");
        Vcpu {
            xen: self.clone(),
            id: v,
        }
    }

    /// Why the domain crashed, if it did.
    pub fn crashed(&self) -> Option<String> {
        self.domain().crashed.clone()
    }

    /// Interrupts injected so far (and forget them).
    pub fn take_interrupts(&self) -> Vec<SimInterrupt> {
        std::mem::take(&mut self.domain().interrupts)
    }

    /// Accesses no server claimed.
    pub fn dropped(&self) -> u64 {
        self.domain().dropped
    }

    /// Every existing server.
    pub fn servers(&self) -> Vec<ServerView> {
        let d = self.domain();
        d.servers
            .iter()
            .enumerate()
            .filter_map(|(id, s)| {
                let s = s.as_ref()?;
                Some(ServerView {
                    id: id as ioservid_t,
                    emulator: s.emulator,
                    enabled: s.enabled,
                    ranges: [0, 1, 2].map(|t| s.ranges[t].iter().collect()),
                })
            })
            .collect()
    }

    /// Guest-side ports still bound to a device model.
    pub fn bound_ports(&self) -> usize {
        self.domain()
            .ports
            .values()
            .filter(|p| p.bound.is_some())
            .count()
    }
}

/// One guest vCPU: its accesses, routed as Xen routes them (see the module docs).
#[derive(Clone, Debug)]
pub struct Vcpu {
    pub(crate) xen: SimXen,
    pub(crate) id: usize,
}
