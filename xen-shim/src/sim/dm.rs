//! [`SimDm`]: a device model's handles on the simulated Xen, implementing
//! [`Hypervisor`] by decoding the dm_op bytes with Xen 4.17's checks (`xen/arch/x86/hvm/dm.c`,
//! `xen/common/ioreq.c`).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use super::evtchn::SimEvtchn;
use super::page::{SharedPage, SimPage};
use super::{GuestPort, Mmcfg, Server, SimInterrupt, SimXen};
use crate::abi::dm_op::*;
use crate::abi::evtchn_port_t;
use crate::abi::hvm::HVM_IOREQSRV_BUFIOREQ_ATOMIC;
use crate::abi::proposed::{xen_dm_op_x_pcierc_mmcfg_t, XEN_DMOP_x_pcierc_mmcfg};
use crate::hypervisor::linux::dm_op_name;
use crate::hypervisor::{Hypervisor, XenError};
use crate::DomId;

/// A device model's `/dev/xen/privcmd` + `/dev/xen/evtchn`, opened in domain `dm_domain`.
#[derive(Debug)]
pub struct SimDm {
    xen: SimXen,
    dm_domain: DomId,
    evtchn: Arc<SimEvtchn>,
}

impl SimDm {
    pub(crate) fn new(xen: SimXen, dm_domain: DomId) -> Self {
        SimDm {
            xen,
            dm_domain,
            evtchn: Arc::new(SimEvtchn::new().expect("eventfd")),
        }
    }

    /// The domain this device model runs in.
    pub fn dm_domain(&self) -> DomId {
        self.dm_domain
    }
}

fn err(op: u32, errno: i32) -> XenError {
    XenError::call(format!("dm_op {}", dm_op_name(op)), errno)
}

impl SimDm {
    /// The server `id` if it exists and this device model's domain created it.
    fn server<'d>(
        &self,
        d: &'d mut super::Domain,
        op: u32,
        id: ioservid_t,
    ) -> Result<&'d mut Server, XenError> {
        let s = d
            .servers
            .get_mut(usize::from(id))
            .and_then(Option::as_mut)
            .ok_or_else(|| err(op, libc::ENOENT))?;
        if s.emulator != self.dm_domain {
            return Err(err(op, libc::EPERM));
        }
        Ok(s)
    }

    #[allow(non_upper_case_globals)] // the C names
    fn do_dm_op(&self, op: &mut xen_dm_op) -> Result<(), XenError> {
        let code = op.op;
        if op.pad != 0 {
            return Err(err(code, libc::EINVAL));
        }
        let vcpus = self.xen.inner.cfg.vcpus;
        let mut d = self.xen.domain();
        match code {
            XEN_DMOP_nr_vcpus => op.set_payload(xen_dm_op_nr_vcpus_t { vcpus }),
            XEN_DMOP_create_ioreq_server => {
                let mut p: xen_dm_op_create_ioreq_server_t = op.payload();
                if p.pad != [0; 3] || p.handle_bufioreq > HVM_IOREQSRV_BUFIOREQ_ATOMIC {
                    return Err(err(code, libc::EINVAL));
                }
                let id = d
                    .servers
                    .iter()
                    .position(Option::is_none)
                    .ok_or_else(|| err(code, libc::ENOSPC))?;
                let mut vp_ports = Vec::new();
                for v in 0..vcpus as usize {
                    let port = d.next_port;
                    d.next_port += 1;
                    d.ports.insert(
                        port,
                        GuestPort {
                            vcpu: v,
                            remote_dom: self.dm_domain,
                            bound: None,
                        },
                    );
                    vp_ports.push(port);
                }
                d.servers[id] = Some(Server {
                    emulator: self.dm_domain,
                    enabled: false,
                    legacy_gfns: false,
                    page: None,
                    ranges: Default::default(),
                    vp_ports,
                });
                p.id = id as ioservid_t;
                op.set_payload(p);
            }
            XEN_DMOP_get_ioreq_server_info => {
                let mut p: xen_dm_op_get_ioreq_server_info_t = op.payload();
                if p.flags & !XEN_DMOP_no_gfns != 0 {
                    return Err(err(code, libc::EINVAL));
                }
                let s = self.server(&mut d, code, p.id)?;
                if p.flags & XEN_DMOP_no_gfns == 0 {
                    // The legacy path: pages placed at guest gfns; acquiring them now fails.
                    s.legacy_gfns = true;
                    p.ioreq_gfn = 0xfeff0;
                }
                p.bufioreq_port = 0;
                op.set_payload(p);
            }
            XEN_DMOP_map_io_range_to_ioreq_server | XEN_DMOP_unmap_io_range_from_ioreq_server => {
                let p: xen_dm_op_ioreq_server_range_t = op.payload();
                if p.pad != 0 || p.type_ > XEN_DMOP_IO_RANGE_PCI || p.start > p.end {
                    return Err(err(code, libc::EINVAL));
                }
                let s = self.server(&mut d, code, p.id)?;
                let set = &mut s.ranges[p.type_ as usize];
                if code == XEN_DMOP_map_io_range_to_ioreq_server {
                    if set.overlaps(p.start, p.end) {
                        return Err(err(code, libc::EEXIST));
                    }
                    if !set.add(p.start, p.end) {
                        return Err(err(code, libc::ENOSPC));
                    }
                } else {
                    if !set.contains(p.start, p.end) {
                        return Err(err(code, libc::ENOENT));
                    }
                    set.remove(p.start, p.end);
                }
            }
            XEN_DMOP_set_ioreq_server_state => {
                let p: xen_dm_op_set_ioreq_server_state_t = op.payload();
                if p.pad != 0 {
                    return Err(err(code, libc::EINVAL));
                }
                let s = self.server(&mut d, code, p.id)?;
                s.enabled = p.enabled != 0;
                // ioreq_server_update_evtchn(): only now, and only if the page exists.
                if s.enabled {
                    if let Some(page) = &s.page {
                        for (v, port) in s.vp_ports.iter().enumerate() {
                            page.slot(v).set_vp_eport(*port);
                        }
                    }
                }
            }
            XEN_DMOP_destroy_ioreq_server => {
                let p: xen_dm_op_destroy_ioreq_server_t = op.payload();
                if p.pad != 0 {
                    return Err(err(code, libc::EINVAL));
                }
                self.server(&mut d, code, p.id)?;
                if let Some(s) = d.servers[usize::from(p.id)].take() {
                    for port in s.vp_ports {
                        d.ports.remove(&port);
                    }
                }
            }
            XEN_DMOP_set_pci_intx_level => {
                let p: xen_dm_op_set_pci_intx_level_t = op.payload();
                if p.domain != 0 || p.bus != 0 || p.device > 31 || p.intx > 3 || p.level > 1 {
                    return Err(err(code, libc::EINVAL));
                }
                d.interrupts.push(SimInterrupt::Intx {
                    device: p.device,
                    intx: p.intx,
                    level: p.level != 0,
                });
            }
            XEN_DMOP_inject_msi => {
                let p: xen_dm_op_inject_msi_t = op.payload();
                if p.pad != 0 {
                    return Err(err(code, libc::EINVAL));
                }
                d.interrupts.push(SimInterrupt::Msi {
                    addr: p.addr,
                    data: p.data,
                });
            }
            XEN_DMOP_x_pcierc_mmcfg if self.xen.inner.cfg.mmcfg_extension => {
                let p: xen_dm_op_x_pcierc_mmcfg_t = op.payload();
                if p.pad != [0; 3] || p.enabled > 1 || p.start_bus > p.end_bus {
                    return Err(err(code, libc::EINVAL));
                }
                d.mmcfg = (p.enabled == 1).then_some(Mmcfg {
                    base: p.base,
                    segment: p.segment,
                    start_bus: p.start_bus,
                    end_bus: p.end_bus,
                });
            }
            _ => return Err(err(code, libc::EOPNOTSUPP)),
        }
        Ok(())
    }
}

impl Hypervisor for SimDm {
    type Page = SimPage;

    fn domid(&self) -> DomId {
        self.xen.inner.cfg.domid
    }

    fn dm_op(&self, op: &mut xen_dm_op) -> Result<(), XenError> {
        self.do_dm_op(op)
    }

    fn map_ioreq_pages(
        &self,
        id: ioservid_t,
        first_frame: u32,
        frames: usize,
    ) -> Result<SimPage, XenError> {
        let what = "IOCTL_PRIVCMD_MMAP_RESOURCE";
        let mut d = self.xen.domain();
        let s = d
            .servers
            .get_mut(usize::from(id))
            .and_then(Option::as_mut)
            .ok_or_else(|| XenError::call(what, libc::ENOENT))?;
        if s.emulator != self.dm_domain || s.legacy_gfns {
            return Err(XenError::call(what, libc::EPERM));
        }
        // With BUFIOREQ_OFF there is no frame 0; Xen 4.17 has one synchronous page (frame 1).
        match (first_frame, frames) {
            (0, _) => Err(XenError::call(what, libc::ENOENT)),
            (1, 1) => {
                let page = s
                    .page
                    .get_or_insert_with(|| Arc::new(SharedPage::new()))
                    .clone();
                Ok(SimPage { page })
            }
            _ => Err(XenError::call(what, libc::EINVAL)),
        }
    }

    fn bind_interdomain(&self, remote_port: evtchn_port_t) -> Result<evtchn_port_t, XenError> {
        let what = "IOCTL_EVTCHN_BIND_INTERDOMAIN";
        let mut d = self.xen.domain();
        let p = d
            .ports
            .get_mut(&remote_port)
            .ok_or_else(|| XenError::call(what, libc::EINVAL))?;
        if p.remote_dom != self.dm_domain {
            return Err(XenError::call(what, libc::EPERM));
        }
        if p.bound.is_some() {
            return Err(XenError::call(what, libc::EINVAL));
        }
        let local = self.evtchn.bind(remote_port);
        p.bound = Some((Arc::clone(&self.evtchn), local));
        Ok(local)
    }

    fn unbind(&self, local_port: evtchn_port_t) -> Result<(), XenError> {
        let remote = self
            .evtchn
            .unbind(local_port)
            .ok_or_else(|| XenError::call("IOCTL_EVTCHN_UNBIND", libc::ENOTCONN))?;
        if let Some(p) = self.xen.domain().ports.get_mut(&remote) {
            p.bound = None;
        }
        Ok(())
    }

    fn notify(&self, local_port: evtchn_port_t) -> Result<(), XenError> {
        let remote = self
            .evtchn
            .remote_of(local_port)
            .ok_or_else(|| XenError::call("IOCTL_EVTCHN_NOTIFY", libc::EINVAL))?;
        let vcpu = self.xen.domain().ports.get(&remote).map(|p| p.vcpu);
        if let Some(w) = vcpu.and_then(|v| self.xen.inner.vcpu_wake.get(v)) {
            let _ = w.write(1);
        }
        Ok(())
    }

    fn pending(&self, ports: &mut Vec<evtchn_port_t>) -> Result<(), XenError> {
        self.evtchn.take(ports);
        Ok(())
    }

    fn unmask(&self, local_port: evtchn_port_t) -> Result<(), XenError> {
        if self.evtchn.unmask(local_port) {
            Ok(())
        } else {
            Err(XenError::call("write (unmask) of evtchn", libc::EINVAL))
        }
    }

    fn event_fd(&self) -> RawFd {
        self.evtchn.fd().as_raw_fd()
    }
}
