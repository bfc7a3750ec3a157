//! The shim: an ioreq server whose requests become pcierc protocol accesses, with Xen's
//! routing kept in step with pcierc's layout and pcierc's interrupts injected through dm_ops.
//!
//! ```text
//!  guest vCPU ──(Xen: CF8/CFC -> PCI_CONFIG by SBDF, ECAM -> MMIO by address)──> ioreq slot
//!     shim: take slot -> Frontend::config_read/config_write (or mmio/pio) -> complete, notify
//!  pcierc ──LayoutChanged──> shim: map/unmap SBDFs and ECAM slices (own and peers' servers)
//!  pcierc ──Msi / Intx────> shim: inject_msi / set_pci_intx_level
//! ```
//!
//! [`Shim::start`] sets the server up in Xen's order and applies the current layout;
//! [`Shim::run`] serves until a stop descriptor is readable; [`Shim::shutdown`] tears down.
//! A layout change caused by a guest write is applied before that write's ioreq is completed,
//! so the guest's next access already goes to the right server.

mod events;
mod translate;

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use log::{debug, error, info, warn};
use pcierc_protocol::{BackendChannel, Frontend, ProtocolFeatures};
use thiserror::Error;

use crate::abi::dm_op::ioservid_t;
use crate::hypervisor::{Hypervisor, XenError};
use crate::ioreq_service::Serviced;
use crate::routing::{EcamRouting, Routing, RoutingConfig};
use crate::server::IoreqServer;
use translate::Translator;

/// Why the shim stopped.
#[derive(Debug, Error)]
pub enum ShimError {
    /// The hypervisor refused a call the shim cannot do without.
    #[error("Xen: {0}")]
    Xen(#[from] XenError),
    /// The connection to pcierc failed.
    #[error("pcierc: {0}")]
    Pcierc(#[from] pcierc_protocol::Error),
    /// pcierc did not negotiate what the shim needs.
    #[error("pcierc: {0}")]
    Negotiation(&'static str),
    /// Waiting for events failed.
    #[error("poll: {0}")]
    Poll(#[source] std::io::Error),
    /// pcierc serves PCI segments besides 0: an HVM guest's ACPI tables (hvmloader's MCFG)
    /// describe one MMCONFIG window, of segment 0, so the guest could never find the others.
    #[error(
        "pcierc serves PCI segment {0:04x} besides segment 0; a Xen HVM guest finds segment 0 \
         only (hvmloader's MCFG has one entry): remove the [[segment]] tables from the topology"
    )]
    ExtraSegment(u16),
}

/// How the shim routes, besides what pcierc's layout says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShimConfig {
    /// Ioreq server ids of the other device models of the guest, by the owner name pcierc
    /// knows them by (e.g. `qemu`), created from the shim's domain: the shim keeps their
    /// functions' SBDFs mapped to them.
    pub peers: BTreeMap<String, ioservid_t>,
    /// Ask Xen to decode MMCONFIG (the proposed extension); falls back to decoding ECAM in the
    /// shim when Xen answers EOPNOTSUPP.
    pub mmcfg_extension: bool,
    /// Claim ports 0xCF8-0xCFF (only when the shim is the guest's only device model).
    pub config_ports: bool,
}

/// Counters the shim keeps, readable from other threads (tests, monitoring).
#[derive(Debug)]
pub struct ShimStatus {
    generation: AtomicU64,
    /// Requests answered (handled by pcierc, or dropped as Xen would).
    pub answered: AtomicU64,
    /// Requests refused (bad size, unknown type, rep or pointer) and answered with all ones.
    pub refused: AtomicU64,
    /// `IOREQ_TYPE_INVALIDATE` requests completed.
    pub invalidations: AtomicU64,
    /// MSIs injected (`inject_msi`).
    pub msis: AtomicU64,
    /// INTx level changes passed on (`set_pci_intx_level`).
    pub intx: AtomicU64,
    /// Accesses pcierc answered "served by another emulator" (stale or unknown routing).
    pub remote: AtomicU64,
}

impl Default for ShimStatus {
    fn default() -> Self {
        ShimStatus {
            generation: AtomicU64::new(u64::MAX),
            answered: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            msis: AtomicU64::new(0),
            intx: AtomicU64::new(0),
            remote: AtomicU64::new(0),
        }
    }
}

impl ShimStatus {
    /// The layout generation whose routing is applied, if any.
    pub fn generation(&self) -> Option<u64> {
        let g = self.generation.load(Ordering::Acquire);
        (g != u64::MAX).then_some(g)
    }

    fn set_generation(&self, g: Option<u64>) {
        if let Some(g) = g {
            self.generation.store(g, Ordering::Release);
        }
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A running shim.
pub struct Shim<H: Hypervisor> {
    server: IoreqServer<H>,
    pcierc: Frontend,
    channel: BackendChannel,
    routing: Routing,
    status: Arc<ShimStatus>,
}

impl<H: Hypervisor> std::fmt::Debug for Shim<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shim")
            .field("server", &self.server)
            .field("routing", &self.routing)
            .finish()
    }
}

impl<H: Hypervisor> Shim<H> {
    /// Set up the ioreq server for `hv`'s domain and map what pcierc's current layout needs.
    /// `pcierc` must have a backend channel with layout events and interrupts (as
    /// `FrontendOptions::vmm` asks for).
    pub fn start(hv: H, mut pcierc: Frontend, cfg: ShimConfig) -> Result<Self, ShimError> {
        let need = ProtocolFeatures::LAYOUT_EVENTS | ProtocolFeatures::INTERRUPTS;
        if !pcierc.protocol_features().contains(need) {
            return Err(ShimError::Negotiation(
                "layout events and interrupts are not negotiated",
            ));
        }
        let channel = pcierc
            .take_backend_channel()
            .ok_or(ShimError::Negotiation("no backend channel"))?;
        // Refused before any ioreq server exists (docs/xen.md, "PCI segments").
        let topology = pcierc.topology()?;
        if let Some(extra) = topology
            .functions
            .iter()
            .map(|f| f.segment)
            .chain(topology.ecam.iter().map(|w| w.segment))
            .find(|&s| s != 0)
        {
            return Err(ShimError::ExtraSegment(extra));
        }
        let server = IoreqServer::create(hv)?;
        info!(
            "ioreq server {} for domain {} ({} vCPUs)",
            server.id(),
            server.hypervisor().domid(),
            server.vcpus()
        );
        let routing = Routing::new(RoutingConfig {
            own: server.id(),
            peers: cfg.peers,
            ecam: if cfg.mmcfg_extension {
                EcamRouting::XenDecodes
            } else {
                EcamRouting::ShimDecodes
            },
            config_ports: cfg.config_ports,
        });
        let mut shim = Shim {
            server,
            pcierc,
            channel,
            routing,
            status: Arc::new(ShimStatus::default()),
        };
        shim.routing.apply(shim.server.hypervisor(), topology);
        shim.status.set_generation(shim.routing.generation());
        shim.translator().drain()?;
        Ok(shim)
    }

    /// The server id Xen gave the shim.
    pub fn server_id(&self) -> ioservid_t {
        self.server.id()
    }

    /// The counters, shareable with other threads.
    pub fn status(&self) -> Arc<ShimStatus> {
        Arc::clone(&self.status)
    }

    /// The routing applied to Xen.
    pub fn routing(&self) -> &Routing {
        &self.routing
    }

    fn translator(&mut self) -> Translator<'_, H> {
        Translator {
            hv: self.server.hypervisor(),
            pcierc: &mut self.pcierc,
            channel: &mut self.channel,
            routing: &mut self.routing,
            status: &self.status,
        }
    }

    /// Serve ioreqs and pcierc's notifications until `stop` polls readable (e.g. an eventfd
    /// written by a signal handler or a test).
    pub fn run(&mut self, stop: RawFd) -> Result<(), ShimError> {
        loop {
            if self.poll_once(Some(stop), -1)? {
                return Ok(());
            }
        }
    }

    /// Wait up to `timeout_ms` (-1: forever) for events and handle them. Returns whether
    /// `stop` became readable.
    pub fn poll_once(&mut self, stop: Option<RawFd>, timeout_ms: i32) -> Result<bool, ShimError> {
        let mut fds = [
            pollfd(self.server.hypervisor().event_fd()),
            pollfd(self.channel.as_raw_fd()),
            pollfd(stop.unwrap_or(-1)),
        ];
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(ShimError::Poll(e));
        }
        let ready = |i: usize| fds[i].revents != 0;
        if ready(1) {
            self.translator().drain()?;
        }
        if ready(0) {
            self.service()?;
        }
        Ok(ready(2))
    }

    fn service(&mut self) -> Result<(), ShimError> {
        let status = Arc::clone(&self.status);
        let mut t = Translator {
            hv: self.server.hypervisor(),
            pcierc: &mut self.pcierc,
            channel: &mut self.channel,
            routing: &mut self.routing,
            status: &self.status,
        };
        let outcomes = self.server.service_pending(&mut t)?;
        for (vcpu, outcome) in outcomes {
            match outcome {
                Serviced::Idle(state) => debug!("vCPU {vcpu}: event with slot state {state}"),
                Serviced::Answered(_) => ShimStatus::bump(&status.answered),
                Serviced::Refused(why) => {
                    ShimStatus::bump(&status.refused);
                    warn!("vCPU {vcpu}: bad ioreq refused ({why}); answered, reads with all ones");
                }
                Serviced::Failed(req, e) => {
                    error!("vCPU {vcpu}: {req:x?} failed ({e}); answered with all ones");
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Unmap the shim's ranges, then disable and destroy its server, unbind its ports and
    /// unmap its page.
    pub fn shutdown(mut self) -> Result<(), ShimError> {
        self.routing.teardown(self.server.hypervisor());
        self.server.shutdown()?;
        Ok(())
    }
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}
