//! [`IoreqServer`]: one ioreq server's lifetime in Xen's required order (FLOW.md §1, §2, §7),
//! over any [`Hypervisor`], with any [`IoHandler`] serving its requests.
//!
//! Setup: `nr_vcpus`, `create_ioreq_server` (no buffered ring: every request is synchronous),
//! map the ioreq page (frame `XENMEM_resource_ioreq_server_frame_ioreq(0)`), `get_ioreq_server
//! _info` with `no_gfns`, enable, then read each vCPU's `vp_eport` from the page (Xen writes it
//! only when the server is enabled with its page mapped) and bind it. Ranges are mapped after
//! that, so no request can reach the server before its ports are bound.
//!
//! Service: for each port the event-channel device returns, unmask it, find its vCPU, and let
//! [`service`] take, dispatch and complete the slot; then notify the port.
//!
//! Teardown ([`IoreqServer::shutdown`], or on drop): disable, destroy, unbind every port,
//! unmap the page.

use std::cell::Cell;
use std::collections::HashMap;
use std::marker::PhantomData;

use log::{debug, warn};

use crate::abi::dm_op::{ioservid_t, xen_dm_op, IoRange};
use crate::abi::evtchn_port_t;
use crate::abi::hvm::HVM_IOREQSRV_BUFIOREQ_OFF;
use crate::abi::ioreq::IOREQS_PER_PAGE;
use crate::abi::privcmd::XENMEM_resource_ioreq_server_frame_ioreq;
use crate::hypervisor::{Hypervisor, IoreqPage, XenError};
use crate::ioreq_service::{service, IoHandler, IoreqSlot, Serviced};

/// What [`IoreqServer::service_pending`] did: each serviced vCPU and its outcome.
pub type Outcomes<E> = Vec<(usize, Serviced<E>)>;

/// A live ioreq server: its id, mapped page and bound ports.
pub struct IoreqServer<H: Hypervisor> {
    hv: H,
    id: ioservid_t,
    page: Option<H::Page>,
    /// Local port of each vCPU's channel, by vCPU id.
    ports: Vec<evtchn_port_t>,
    by_port: HashMap<evtchn_port_t, usize>,
    live: bool,
    /// One thread services the slots (the slot discipline assumes it): not `Sync`.
    _not_sync: PhantomData<Cell<()>>,
}

impl<H: Hypervisor> std::fmt::Debug for IoreqServer<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoreqServer")
            .field("domid", &self.hv.domid())
            .field("id", &self.id)
            .field("ports", &self.ports)
            .finish()
    }
}

/// A dm_op that must succeed, with the op named in the error.
pub fn dm_op<H: Hypervisor + ?Sized>(hv: &H, mut op: xen_dm_op) -> Result<xen_dm_op, XenError> {
    hv.dm_op(&mut op)?;
    Ok(op)
}

impl<H: Hypervisor> IoreqServer<H> {
    /// Create, map, enable and bind a server for `hv`'s domain, in Xen's order.
    pub fn create(hv: H) -> Result<Self, XenError> {
        let vcpus = dm_op(&hv, xen_dm_op::nr_vcpus())?
            .nr_vcpus_out()
            .ok_or_else(|| XenError::Unusable("nr_vcpus: no answer".into()))?;
        let vcpus = usize::try_from(vcpus)
            .ok()
            .filter(|&n| (1..=IOREQS_PER_PAGE).contains(&n))
            .ok_or_else(|| {
                XenError::Unusable(format!(
                    "domain {} has {vcpus} vCPUs; one ioreq page serves 1 to {IOREQS_PER_PAGE}",
                    hv.domid()
                ))
            })?;
        let id = dm_op(
            &hv,
            xen_dm_op::create_ioreq_server(HVM_IOREQSRV_BUFIOREQ_OFF),
        )?
        .ioreq_server_id_out()
        .ok_or_else(|| XenError::Unusable("create_ioreq_server: no id".into()))?;
        // From here on, `Drop` destroys the server if a later step fails.
        let mut server = IoreqServer {
            hv,
            id,
            page: None,
            ports: Vec::with_capacity(vcpus),
            by_port: HashMap::new(),
            live: true,
            _not_sync: PhantomData,
        };
        let page = server
            .hv
            .map_ioreq_pages(id, XENMEM_resource_ioreq_server_frame_ioreq(0), 1)?;
        if page.len() < vcpus * core::mem::size_of::<crate::abi::ioreq::ioreq_t>() {
            return Err(XenError::Unusable("ioreq page mapping too short".into()));
        }
        server.page = Some(page);
        dm_op(&server.hv, xen_dm_op::get_ioreq_server_info(id))?;
        dm_op(&server.hv, xen_dm_op::set_ioreq_server_state(id, true))?;
        for v in 0..vcpus {
            let remote = server.slot(v)?.vp_eport();
            if remote == 0 {
                return Err(XenError::Unusable(format!(
                    "vCPU {v}: Xen wrote no event channel (vp_eport 0) when the server was enabled"
                )));
            }
            let local = server.hv.bind_interdomain(remote)?;
            server.ports.push(local);
            server.by_port.insert(local, v);
        }
        debug!(
            "ioreq server {id} for domain {}: {vcpus} vCPUs, ports {:?}",
            server.hv.domid(),
            server.ports
        );
        Ok(server)
    }

    /// The server id Xen assigned.
    pub fn id(&self) -> ioservid_t {
        self.id
    }

    /// The hypervisor handle (for dm_ops of the server's user: ranges, interrupts).
    pub fn hypervisor(&self) -> &H {
        &self.hv
    }

    /// Number of vCPUs (= slots served).
    pub fn vcpus(&self) -> usize {
        self.ports.len()
    }

    /// Local event-channel port of each vCPU.
    pub fn ports(&self) -> &[evtchn_port_t] {
        &self.ports
    }

    fn slot(&self, vcpu: usize) -> Result<IoreqSlot<'_>, XenError> {
        let page = self
            .page
            .as_ref()
            .ok_or_else(|| XenError::Unusable("ioreq page not mapped".into()))?;
        if vcpu >= IOREQS_PER_PAGE
            || (vcpu + 1) * core::mem::size_of::<crate::abi::ioreq::ioreq_t>() > page.len()
        {
            return Err(XenError::Unusable(format!("no ioreq slot for vCPU {vcpu}")));
        }
        // SAFETY: the page stays mapped while `self` lives (it owns it), the slot lies inside
        // the mapping (checked above), and only this server (one thread: not Sync) accesses
        // the slots on this side.
        Ok(unsafe { IoreqSlot::in_page(page.as_ptr(), vcpu) })
    }

    /// Map `range` to this server.
    pub fn map(&self, range: IoRange) -> Result<(), XenError> {
        dm_op(
            &self.hv,
            xen_dm_op::map_io_range_to_ioreq_server(self.id, range),
        )
        .map(drop)
    }

    /// Unmap `range` from this server.
    pub fn unmap(&self, range: IoRange) -> Result<(), XenError> {
        dm_op(
            &self.hv,
            xen_dm_op::unmap_io_range_from_ioreq_server(self.id, range),
        )
        .map(drop)
    }

    /// Service every request whose port fired: unmask, take the slot, let `handler` answer,
    /// complete, notify. Returns what happened per vCPU. If the device lost events (its ring
    /// overflowed), every slot is checked.
    pub fn service_pending<I: IoHandler + ?Sized>(
        &self,
        handler: &mut I,
    ) -> Result<Outcomes<I::Error>, XenError> {
        let mut fired = Vec::new();
        let vcpus: Vec<usize> = match self.hv.pending(&mut fired) {
            Ok(()) => fired
                .iter()
                .filter_map(|p| {
                    let v = self.by_port.get(p).copied();
                    if v.is_none() {
                        warn!("event on port {p}, which is not one of this server's");
                    }
                    v
                })
                .collect(),
            Err(e) if e.errno() == Some(libc::EFBIG) => {
                warn!("event channel ring overflowed ({e}); checking every slot");
                fired = self.ports.clone();
                (0..self.ports.len()).collect()
            }
            Err(e) => return Err(e),
        };
        // QEMU unmasks right after the read: a request on the port can only follow our answer.
        for p in &fired {
            self.hv.unmask(*p)?;
        }
        let mut out = Vec::with_capacity(vcpus.len());
        for v in vcpus {
            let outcome = service(&self.slot(v)?, handler);
            if outcome.must_notify() {
                self.hv.notify(self.ports[v])?;
            }
            out.push((v, outcome));
        }
        Ok(out)
    }

    /// Disable and destroy the server, unbind its ports, unmap its page. Every step is tried;
    /// the first error is returned.
    pub fn shutdown(mut self) -> Result<(), XenError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), XenError> {
        if !self.live {
            return Ok(());
        }
        self.live = false;
        let mut first = None;
        let mut keep = |r: Result<(), XenError>| {
            if let Err(e) = r {
                warn!("ioreq server teardown: {e}");
                first.get_or_insert(e);
            }
        };
        keep(dm_op(&self.hv, xen_dm_op::set_ioreq_server_state(self.id, false)).map(drop));
        keep(dm_op(&self.hv, xen_dm_op::destroy_ioreq_server(self.id)).map(drop));
        for p in self.ports.drain(..) {
            keep(self.hv.unbind(p));
        }
        self.by_port.clear();
        self.page = None;
        first.map_or(Ok(()), Err)
    }
}

impl<H: Hypervisor> Drop for IoreqServer<H> {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}
