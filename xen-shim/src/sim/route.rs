//! A vCPU's accesses through the simulated Xen: `hvm_access_cf8` latching,
//! `arch_ioreq_server_get_type_addr()` (CF8/CFC -> PCI_CONFIG), `ioreq_server_select()` (ids
//! 7..0, enabled only, whole access in one range), `ioreq_send()` / `wait_for_io()`, the
//! null handler for unclaimed accesses, and the INVALIDATE broadcast.

use std::os::fd::AsRawFd;
use std::time::Instant;

use thiserror::Error;

use super::{Domain, Mmcfg, Vcpu};
use crate::abi::dm_op::{ioservid_t, XEN_DMOP_PCI_SBDF};
use crate::abi::ioreq::*;

/// Where an access went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routed {
    /// To this ioreq server.
    Server(ioservid_t),
    /// No server claimed it: reads all ones, writes discarded.
    Dropped,
}

/// The access did not complete.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum SimError {
    /// The domain was crashed (by a device model breaking the protocol).
    #[error("domain crashed: {0}")]
    Crashed(String),
    /// No answer in time.
    #[error("vCPU {vcpu}: no answer from ioreq server {server} in time")]
    Timeout {
        /// The vCPU.
        vcpu: usize,
        /// The server it waited for.
        server: ioservid_t,
    },
    /// A request for a server that cannot take it.
    #[error("{0}")]
    Unusable(String),
}

const CF8_ENABLE: u32 = 1 << 31;

/// (type, addr) as `arch_ioreq_server_get_type_addr()` computes them: 0 PORT, 1 MEMORY, 2 PCI.
fn type_addr(d: &Domain, req: &ioreq_t) -> (usize, u64) {
    if req.type_ == IOREQ_TYPE_PIO && req.addr & !3 == 0xcfc && d.cf8 & CF8_ENABLE != 0 {
        let cf8 = d.cf8;
        let sbdf = XEN_DMOP_PCI_SBDF(0, (cf8 >> 16) & 0xff, (cf8 >> 11) & 0x1f, (cf8 >> 8) & 7);
        let reg = (cf8 & 0xfc) | (req.addr as u32 & 3);
        return (2, (u64::from(sbdf) << 32) | u64::from(reg));
    }
    if req.type_ == IOREQ_TYPE_PIO {
        (0, req.addr)
    } else {
        (1, req.addr)
    }
}

/// `ioreq_server_select()`.
fn select(d: &Domain, ty: usize, addr: u64, req: &ioreq_t) -> Option<ioservid_t> {
    (0..d.servers.len()).rev().find_map(|id| {
        let s = d.servers[id].as_ref().filter(|s| s.enabled)?;
        let r = &s.ranges[ty];
        let hit = match ty {
            2 => r.contains(addr >> 32, addr >> 32),
            _ => {
                let len = u64::from(req.size).saturating_mul(u64::from(req.count.max(1)));
                r.contains(addr, addr.saturating_add(len.saturating_sub(1)))
            }
        };
        hit.then_some(id as ioservid_t)
    })
}

fn ones(size: u32) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * size)) - 1
    }
}

impl Vcpu {
    /// This vCPU's id.
    pub fn id(&self) -> usize {
        self.id
    }

    fn request(ty: u8, addr: u64, size: u8, data: Option<u64>) -> ioreq_t {
        let mut r = ioreq_t {
            addr,
            data: data.unwrap_or(0),
            count: 1,
            size: size.into(),
            type_: ty,
            ..Default::default()
        };
        r.set_dir(if data.is_some() {
            IOREQ_WRITE
        } else {
            IOREQ_READ
        });
        r
    }

    /// `in` of `size` bytes from `port`: the value and where it went.
    pub fn pio_read(&self, port: u16, size: u8) -> Result<(u64, Routed), SimError> {
        self.emulate(Self::request(IOREQ_TYPE_PIO, port.into(), size, None))
    }

    /// `out` of `size` bytes to `port`.
    pub fn pio_write(&self, port: u16, size: u8, value: u64) -> Result<Routed, SimError> {
        self.emulate(Self::request(
            IOREQ_TYPE_PIO,
            port.into(),
            size,
            Some(value),
        ))
        .map(|(_, r)| r)
    }

    /// A `size`-byte MMIO read at `gpa`.
    pub fn mmio_read(&self, gpa: u64, size: u8) -> Result<(u64, Routed), SimError> {
        self.emulate(Self::request(IOREQ_TYPE_COPY, gpa, size, None))
    }

    /// A `size`-byte MMIO write at `gpa`.
    pub fn mmio_write(&self, gpa: u64, size: u8, value: u64) -> Result<Routed, SimError> {
        self.emulate(Self::request(IOREQ_TYPE_COPY, gpa, size, Some(value)))
            .map(|(_, r)| r)
    }

    /// Route and complete one access as Xen's emulator would.
    pub fn emulate(&self, mut req: ioreq_t) -> Result<(u64, Routed), SimError> {
        let mut d = self.xen.domain();
        if let Some(why) = &d.crashed {
            return Err(SimError::Crashed(why.clone()));
        }
        // hvm_access_cf8: dword writes to 0xCF8 are latched; the access goes on regardless.
        if req.type_ == IOREQ_TYPE_PIO
            && req.addr == 0xcf8
            && req.size == 4
            && req.dir() == IOREQ_WRITE
        {
            d.cf8 = req.data as u32;
        }
        let (ty, addr) = match self.mmcfg_decode(&d, &req) {
            Some(Ok(pci_addr)) => (2, pci_addr),
            Some(Err(())) => {
                // An 8-byte access in the window: two 4-byte configuration requests.
                drop(d);
                return self.split_mmcfg(req);
            }
            None => type_addr(&d, &req),
        };
        let Some(id) = select(&d, ty, addr, &req) else {
            d.dropped += 1;
            let read = req.dir() == IOREQ_READ;
            return Ok((if read { ones(req.size) } else { 0 }, Routed::Dropped));
        };
        if ty == 2 {
            req.type_ = IOREQ_TYPE_PCI_CONFIG;
            req.addr = addr;
        }
        let done = self.send(d, id, &req)?;
        Ok((done.data, Routed::Server(id)))
    }

    /// The proposed extension: an MMIO access in the MMCONFIG window as a PCI_CONFIG address
    /// (`Some(Err(()))` for an 8-byte access, which becomes two requests).
    fn mmcfg_decode(&self, d: &Domain, req: &ioreq_t) -> Option<Result<u64, ()>> {
        let Mmcfg {
            base,
            segment,
            start_bus,
            end_bus,
        } = d.mmcfg?;
        if req.type_ != IOREQ_TYPE_COPY {
            return None;
        }
        let size = (u64::from(end_bus - start_bus) + 1) << 20;
        let off = req.addr.checked_sub(base).filter(|&o| o < size)?;
        if req.size == 8 {
            return Some(Err(()));
        }
        let bus = u32::from(start_bus) + (off >> 20) as u32;
        let sbdf = XEN_DMOP_PCI_SBDF(
            segment.into(),
            bus,
            (off >> 15) as u32 & 0x1f,
            (off >> 12) as u32 & 7,
        );
        Some(Ok((u64::from(sbdf) << 32) | (off & 0xfff)))
    }

    fn split_mmcfg(&self, req: ioreq_t) -> Result<(u64, Routed), SimError> {
        let write = req.dir() == IOREQ_WRITE;
        let half = |i: u64| {
            let data = write.then_some((req.data >> (32 * i)) & 0xffff_ffff);
            Self::request(IOREQ_TYPE_COPY, req.addr + 4 * i, 4, data)
        };
        let (lo, r) = self.emulate(half(0))?;
        let (hi, _) = self.emulate(half(1))?;
        Ok((lo | (hi << 32), r))
    }

    /// Put `req` in server `id`'s slot for this vCPU, notify, wait for the answer.
    fn send(
        &self,
        mut d: std::sync::MutexGuard<'_, Domain>,
        id: ioservid_t,
        req: &ioreq_t,
    ) -> Result<ioreq_t, SimError> {
        let v = self.id;
        let (page, port) = {
            let s = d.servers[usize::from(id)]
                .as_ref()
                .ok_or_else(|| SimError::Unusable(format!("no server {id}")))?;
            let Some(page) = s.page.clone() else {
                d.crash(format!("server {id} has no ioreq page"));
                return Err(SimError::Crashed(format!("server {id} has no ioreq page")));
            };
            (page, s.vp_ports.get(v).copied().unwrap_or(0))
        };
        let slot = page.slot(v);
        if slot.state() != STATE_IOREQ_NONE {
            let why = format!(
                "device model set bad IO state {} (server {id})",
                slot.state()
            );
            d.crash(why.clone());
            return Err(SimError::Crashed(why));
        }
        if slot.vp_eport() != port {
            let why = format!(
                "device model set bad event channel {} (server {id}, vCPU {v}, expected {port})",
                slot.vp_eport()
            );
            d.crash(why.clone());
            return Err(SimError::Crashed(why));
        }
        slot.post(req);
        match d.ports.get(&port).and_then(|p| p.bound.clone()) {
            Some((evtchn, local)) => evtchn.deliver(local),
            None => log::warn!("server {id}: vCPU {v}'s event channel is not bound"),
        }
        drop(d);
        self.wait(id, &page)
    }

    /// `wait_for_io()`.
    fn wait(&self, id: ioservid_t, page: &super::SharedPage) -> Result<ioreq_t, SimError> {
        let v = self.id;
        let slot = page.slot(v);
        let wake = &self.xen.inner.vcpu_wake[v];
        let deadline = Instant::now() + self.xen.inner.cfg.timeout;
        let mut prev = STATE_IOREQ_NONE;
        loop {
            let state = slot.state();
            if state < prev {
                let why = format!("weird ioreq state transition {prev} -> {state} (server {id})");
                self.xen.domain().crash(why.clone());
                return Err(SimError::Crashed(why));
            }
            match state {
                STATE_IORESP_READY => {
                    let done = slot.read();
                    slot.set_none();
                    return Ok(done);
                }
                STATE_IOREQ_READY | STATE_IOREQ_INPROCESS => {
                    prev = state;
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(SimError::Timeout {
                            vcpu: v,
                            server: id,
                        });
                    }
                    let mut pfd = libc::pollfd {
                        fd: wake.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    let ms = left.as_millis().clamp(1, 1000) as i32;
                    // SAFETY: one valid pollfd for the duration of the call.
                    unsafe { libc::poll(&mut pfd, 1, ms) };
                    let _ = wake.read();
                }
                other => {
                    let why = format!("weird ioreq state {other} (server {id})");
                    self.xen.domain().crash(why.clone());
                    return Err(SimError::Crashed(why));
                }
            }
        }
    }

    /// `IOREQ_TYPE_INVALIDATE`, broadcast synchronously to every enabled server (as Xen does
    /// after removing guest p2m entries); the servers that answered.
    pub fn invalidate(&self) -> Result<Vec<ioservid_t>, SimError> {
        let ids: Vec<ioservid_t> = {
            let d = self.xen.domain();
            (0..d.servers.len())
                .filter(|&i| d.servers[i].as_ref().is_some_and(|s| s.enabled))
                .map(|i| i as ioservid_t)
                .collect()
        };
        let req = ioreq_t {
            type_: IOREQ_TYPE_INVALIDATE,
            size: 4,
            count: 1,
            ..Default::default()
        };
        for &id in &ids {
            self.send_raw(id, req)?;
        }
        Ok(ids)
    }

    /// Send `req` as is to server `id` (bypassing selection: a request Xen would never make,
    /// e.g. a bad size or an unknown type) and wait for the answer: the completed slot.
    pub fn send_raw(&self, id: ioservid_t, req: ioreq_t) -> Result<ioreq_t, SimError> {
        let d = self.xen.domain();
        if let Some(why) = &d.crashed {
            return Err(SimError::Crashed(why.clone()));
        }
        self.send(d, id, &req)
    }
}
