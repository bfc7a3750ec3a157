//! Interrupt eventfds (`SetInterruptFd`): MSI-X vectors of pcierc's own functions that a
//! frontend takes through an eventfd (a KVM irqfd) rather than as `Msi` notifications, and the
//! `MsiRoute` notifications that keep the frontend's routing in step with the guest's MSI-X
//! table.

use std::collections::BTreeMap;

use log::warn;
use pcierc_protocol::{ConnectionId, InterruptFd, MsiRoute, Status};
use vmm_sys_util::eventfd::EventFd;

use super::RootComplex;

/// One frontend's eventfd for one vector.
pub(super) struct Irqfd {
    conn: ConnectionId,
    fd: EventFd,
    /// The route last reported to the frontend.
    sent: Option<MsiRoute>,
}

/// Registrations by (devfn on the root bus, vector).
#[derive(Default)]
pub(super) struct Irqfds(BTreeMap<(u8, u16), Vec<Irqfd>>);

/// Most eventfds one frontend may register (every vector of 256 root ports, and more).
const MAX_PER_CONNECTION: usize = 4096;

impl Irqfds {
    /// Signal the eventfds registered for (`devfn`, `vector`); the connections that took it.
    pub(super) fn signal(&self, devfn: u8, vector: u16) -> Vec<ConnectionId> {
        let Some(regs) = self.0.get(&(devfn, vector)) else {
            return Vec::new();
        };
        regs.iter()
            .map(|r| {
                if let Err(e) = r.fd.write(1) {
                    warn!("{}: interrupt eventfd write failed: {e}", r.conn);
                }
                r.conn
            })
            .collect()
    }

    /// Forget everything `conn` registered.
    pub(super) fn drop_connection(&mut self, conn: ConnectionId) {
        for regs in self.0.values_mut() {
            regs.retain(|r| r.conn != conn);
        }
        self.0.retain(|_, regs| !regs.is_empty());
    }

    fn count(&self, conn: ConnectionId) -> usize {
        self.0
            .values()
            .flat_map(|regs| regs.iter())
            .filter(|r| r.conn == conn)
            .count()
    }
}

impl RootComplex {
    /// `SetInterruptFd` for frontend `conn`.
    pub(super) fn register_irqfd(
        &mut self,
        conn: ConnectionId,
        req: &InterruptFd,
        fd: Option<EventFd>,
    ) -> Result<(), Status> {
        if req.segment != self.hierarchy.spec().segment || req.bus != 0 {
            // Only pcierc's own functions (the root ports, on the root bus) send MSI-X here.
            return Err(Status::NoDevice);
        }
        if self
            .hierarchy
            .msi_route(req.bus, req.devfn, req.vector)
            .is_none()
        {
            return Err(Status::NoDevice);
        }
        let key = (req.devfn, req.vector);
        let regs = self.irqfds.0.entry(key).or_default();
        regs.retain(|r| r.conn != conn);
        if let Some(fd) = fd {
            regs.push(Irqfd {
                conn,
                fd,
                sent: None,
            });
            if self.irqfds.count(conn) > MAX_PER_CONNECTION {
                self.irqfds
                    .0
                    .entry(key)
                    .or_default()
                    .retain(|r| r.conn != conn);
                return Err(Status::TooBig);
            }
        }
        self.irqfds.0.retain(|_, regs| !regs.is_empty());
        self.sync_msi_routes();
        Ok(())
    }

    /// Send `MsiRoute` to every registered frontend whose vector's message or mask changed
    /// since it was last told (and at registration).
    pub(super) fn sync_msi_routes(&mut self) {
        let segment = self.hierarchy.spec().segment;
        let mut outgoing = Vec::new();
        for (&(devfn, vector), regs) in self.irqfds.0.iter_mut() {
            let Some((address, data, masked)) = self.hierarchy.msi_route(0, devfn, vector) else {
                continue;
            };
            let route = MsiRoute {
                address,
                data,
                segment,
                bus: 0,
                devfn,
                vector,
                masked: u8::from(masked),
                reserved: [0; 5],
            };
            for r in regs.iter_mut() {
                if r.sent != Some(route) {
                    r.sent = Some(route);
                    outgoing.push((r.conn, route));
                }
            }
        }
        for (conn, route) in outgoing {
            self.each_channel("msi-route", |c, _| c == conn, |ch| ch.msi_route(&route));
        }
    }
}
