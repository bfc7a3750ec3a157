//! Interrupt eventfds (`SetInterruptFd`): MSI-X vectors of pcierc's own functions that a
//! frontend takes through an eventfd (a KVM irqfd) rather than as `Msi` notifications, and the
//! `MsiRoute` notifications that keep the frontend's routing in step with the guest's MSI-X
//! table.

use std::collections::BTreeMap;

use log::warn;
use pcierc_protocol::{ConnectionId, InterruptFd, MsiRoute, Status};
use vmm_sys_util::eventfd::EventFd;

use crate::topology::Segments;

/// One frontend's eventfd for one vector.
struct Irqfd {
    conn: ConnectionId,
    fd: EventFd,
    /// The route last reported to the frontend.
    sent: Option<MsiRoute>,
}

/// The interrupt eventfds frontends registered, by (segment, root bus, devfn on it, vector): a
/// root bus is bus 0 or a `pxb-pcie` expander's (whose number no register changes).
#[derive(Default)]
pub struct Irqfds(BTreeMap<(u16, u8, u8, u16), Vec<Irqfd>>);

/// Most eventfds one frontend may register (every vector of 256 root ports, and more).
const MAX_PER_CONNECTION: usize = 4096;

impl Irqfds {
    /// Signal the eventfds registered for (`segment`, `bus`, `devfn`, `vector`); the
    /// connections that took it.
    pub fn signal(&self, segment: u16, bus: u8, devfn: u8, vector: u16) -> Vec<ConnectionId> {
        let Some(regs) = self.0.get(&(segment, bus, devfn, vector)) else {
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
    pub fn drop_connection(&mut self, conn: ConnectionId) {
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

    /// `SetInterruptFd` for frontend `conn`: register `fd` for a vector of a function of the
    /// segment it names (or, without one, unregister). The caller then sends
    /// [`Irqfds::stale_routes`].
    pub fn register(
        &mut self,
        segments: &Segments,
        conn: ConnectionId,
        req: &InterruptFd,
        fd: Option<EventFd>,
    ) -> Result<(), Status> {
        let Some(h) = segments.get(req.segment).filter(|h| h.is_root_bus(req.bus)) else {
            // Only pcierc's own functions on a root bus (the root ports) send MSI-X here.
            return Err(Status::NoDevice);
        };
        if h.msi_route(req.bus, req.devfn, req.vector).is_none() {
            return Err(Status::NoDevice);
        }
        let key = (req.segment, req.bus, req.devfn, req.vector);
        let regs = self.0.entry(key).or_default();
        regs.retain(|r| r.conn != conn);
        if let Some(fd) = fd {
            regs.push(Irqfd {
                conn,
                fd,
                sent: None,
            });
            if self.count(conn) > MAX_PER_CONNECTION {
                self.0.entry(key).or_default().retain(|r| r.conn != conn);
                return Err(Status::TooBig);
            }
        }
        self.0.retain(|_, regs| !regs.is_empty());
        Ok(())
    }

    /// The `MsiRoute` notifications to send: for every registration whose vector's message or
    /// mask changed since its frontend was last told (and at registration). They count as
    /// told from here on.
    pub fn stale_routes(&mut self, segments: &Segments) -> Vec<(ConnectionId, MsiRoute)> {
        let mut outgoing = Vec::new();
        for (&(segment, bus, devfn, vector), regs) in self.0.iter_mut() {
            let Some((address, data, masked)) = segments
                .get(segment)
                .and_then(|h| h.msi_route(bus, devfn, vector))
            else {
                continue;
            };
            let route = MsiRoute {
                address,
                data,
                segment,
                bus,
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
        outgoing
    }
}
