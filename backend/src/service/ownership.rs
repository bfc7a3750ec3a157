//! Who owns what: the name each connection identified itself with, and the functions emulators
//! plug in and take out themselves (`ClaimFunction` / `ReleaseFunction`). Each function has one
//! owner, the frontend whose name claimed it (or the topology named); conflicting claims are
//! refused with a status that says why.

use std::collections::BTreeMap;

use log::info;
use pcierc_protocol::{decode_name, ConnectionId, FunctionClaim, FunctionRelease, Status};

use crate::pci::caps::shpc::ShpcError;
use crate::pci::{Effects, SlotError};
use crate::topology::hierarchy::HotplugError;
use crate::topology::spec::EndpointSpec;
use crate::topology::{DevFn, Hierarchy};

/// The protocol status for a refused hot-plug operation.
fn status(e: &HotplugError) -> Status {
    match e {
        HotplugError::UnknownId(_) | HotplugError::NotHotpluggable(_) => Status::NoDevice,
        HotplugError::Duplicate(_) => Status::Exists,
        HotplugError::Shpc {
            source: ShpcError::Occupied(_) | ShpcError::PowerIndicatorBlinking(_),
            ..
        }
        | HotplugError::DevfnInUse { .. }
        | HotplugError::Slot {
            source: SlotError::Occupied,
            ..
        }
        | HotplugError::Interlocked(_)
        | HotplugError::PowerIndicatorBlinking(_) => Status::Busy,
        HotplugError::HotPlugUnsupported(_)
        | HotplugError::HotUnplugUnsupported(_)
        | HotplugError::BusNoHotplug(_) => Status::Permission,
        HotplugError::Slot { .. }
        | HotplugError::Shpc { .. }
        | HotplugError::InvalidOwner(_)
        | HotplugError::FunctionZeroFirst { .. }
        | HotplugError::Topology(_)
        | HotplugError::NoFunction { .. }
        | HotplugError::Inject(_) => Status::Invalid,
    }
}

/// The identified frontends by connection: a function's `owner` is one of these names.
#[derive(Default)]
pub struct Ownership {
    names: BTreeMap<ConnectionId, String>,
}

impl Ownership {
    /// Connection `conn` identified itself as `name`.
    pub fn identify(&mut self, conn: ConnectionId, name: &str) {
        self.names.insert(conn, name.to_string());
    }

    /// Connection `conn` is gone; the name it had, if it identified itself.
    pub fn forget(&mut self, conn: ConnectionId) -> Option<String> {
        self.names.remove(&conn)
    }

    /// The name connection `conn` identified itself with.
    pub fn name(&self, conn: ConnectionId) -> Option<&str> {
        self.names.get(&conn).map(String::as_str)
    }

    /// Does connection `conn` speak for `owner`?
    pub fn is_owner(&self, conn: ConnectionId, owner: &str) -> bool {
        self.name(conn) == Some(owner)
    }

    /// The connections of the frontends named `owner`.
    pub fn connections_of(&self, owner: &str) -> Vec<ConnectionId> {
        self.names
            .iter()
            .filter(|(_, n)| n.as_str() == owner)
            .map(|(c, _)| *c)
            .collect()
    }

    /// `ClaimFunction` from frontend `conn` (identified: the session checked it): plug the
    /// function into `h`; what changed.
    pub fn claim(
        &self,
        h: &mut Hierarchy,
        conn: ConnectionId,
        c: &FunctionClaim,
    ) -> Result<Effects, Status> {
        let owner = self.name(conn).ok_or(Status::Protocol)?.to_string();
        let name = |raw| decode_name(raw).map(str::to_string).ok_or(Status::Invalid);
        let endpoint = EndpointSpec {
            id: name(&c.id)?,
            driver: name(&c.driver)?,
            bus: name(&c.port)?,
            addr: DevFn(c.devfn),
            owner,
            multifunction: c.flags & FunctionClaim::MULTIFUNCTION != 0,
        };
        let cold = c.flags & FunctionClaim::COLDPLUG != 0;
        info!(
            "{} claims {} behind {} ({})",
            endpoint.owner,
            endpoint.id,
            endpoint.bus,
            if cold {
                "present from power-on"
            } else {
                "hot-added"
            }
        );
        let r = if cold {
            h.cold_plug(endpoint)
        } else {
            h.hot_add(endpoint)
        };
        r.map_err(|e| {
            info!("claim refused: {e}");
            status(&e)
        })
    }

    /// `ReleaseFunction` from frontend `conn`: only the owner may release a function; what
    /// changed.
    pub fn release(
        &self,
        h: &mut Hierarchy,
        conn: ConnectionId,
        r: &FunctionRelease,
    ) -> Result<Effects, Status> {
        let id = decode_name(&r.id).ok_or(Status::Invalid)?.to_string();
        let e = h.endpoint(&id).ok_or(Status::NoDevice)?;
        if !self.is_owner(conn, &e.owner) {
            return Err(Status::Permission);
        }
        let surprise = r.flags & FunctionRelease::SURPRISE != 0;
        info!(
            "{} releases {id}{}",
            e.owner,
            if surprise { " at once" } else { "" }
        );
        let res = if surprise {
            h.surprise_remove(&id)
        } else {
            h.request_removal(&id)
        };
        res.map_err(|e| status(&e))
    }
}

#[cfg(test)]
mod tests {
    use pcierc_protocol::encode_name;

    use super::*;
    use crate::topology::TopologySpec;

    fn name(s: &str) -> [u8; pcierc_protocol::NAME_LEN] {
        encode_name(s).expect("a valid name")
    }

    fn claim(id: &str, port: &str) -> FunctionClaim {
        FunctionClaim {
            port: name(port),
            id: name(id),
            driver: name("virtio-net-pci"),
            devfn: 0,
            flags: FunctionClaim::COLDPLUG,
            reserved: [0; 6],
        }
    }

    fn release(id: &str) -> FunctionRelease {
        FunctionRelease {
            id: name(id),
            flags: FunctionRelease::SURPRISE,
            ..Default::default()
        }
    }

    #[test]
    fn slot_rules_give_their_status() {
        let mut spec = TopologySpec::embedded_default().unwrap();
        spec.add_device_option("pcie-root-port,id=rp9,chassis=9,slot=9,addr=0x4,hotplug=off")
            .unwrap();
        let mut h = Hierarchy::new(spec).unwrap();
        let mut o = Ownership::default();
        let vmm = ConnectionId(1);
        o.identify(vmm, "vmm");
        let hot = |id: &str, port: &str| FunctionClaim {
            flags: 0,
            ..claim(id, port)
        };
        // A port without hot-plug takes cards present from power-on, not hot-added ones.
        assert_eq!(
            o.claim(&mut h, vmm, &hot("net0", "rp9")),
            Err(Status::Permission)
        );
        assert!(o.claim(&mut h, vmm, &claim("net0", "rp9")).is_ok());
        let orderly = FunctionRelease {
            flags: 0,
            ..release("net0")
        };
        assert_eq!(o.release(&mut h, vmm, &orderly), Err(Status::Permission));
        // The guest engages rp1's interlock (EIC toggles EIS): busy.
        h.pio_write(0xcf8, 4, 0x8000_0060).unwrap();
        h.pio_write(0xcfc, 4, 0xb000_0001).unwrap();
        h.mmio_write(0xb001_006c, 2, 0x0800).unwrap();
        assert_eq!(o.claim(&mut h, vmm, &hot("net1", "rp1")), Err(Status::Busy));
    }

    #[test]
    fn claims_below_a_bridge_fill_its_shpc_slots() {
        let mut spec = TopologySpec::embedded_default().unwrap();
        spec.add_device_option("pcie-pci-bridge,id=br1,bus=rp1")
            .unwrap();
        let mut h = Hierarchy::new(spec).unwrap();
        let mut o = Ownership::default();
        let vmm = ConnectionId(1);
        o.identify(vmm, "vmm");
        let at = |id: &str, devfn: u8, flags: u8| FunctionClaim {
            devfn,
            flags,
            ..claim(id, "br1")
        };
        // Device 0 has no SHPC slot; device 2 is free, then taken.
        assert_eq!(o.claim(&mut h, vmm, &at("n0", 0, 0)), Err(Status::Invalid));
        assert!(o.claim(&mut h, vmm, &at("n2", 0x10, 0)).is_ok());
        assert!(h.bridges()[0].slot_occupied(2));
        assert_eq!(o.claim(&mut h, vmm, &at("n3", 0x10, 0)), Err(Status::Busy));
        assert!(o
            .claim(&mut h, vmm, &at("n4", 0x20, FunctionClaim::COLDPLUG))
            .is_ok());
        // Cold-plugged: enabled with its power indicator on (SHPC state 2, LED 1).
        assert_eq!(h.bridges()[0].slot_status(4).map(|s| s & 0xf), Some(0x6));
        // The hot-added card's slot is still disabled with its indicator off: an orderly
        // release gives it up at once.
        let orderly = FunctionRelease {
            flags: 0,
            ..release("n2")
        };
        assert!(o.release(&mut h, vmm, &orderly).is_ok());
        assert!(h.endpoint("n2").is_none());
        assert!(o.release(&mut h, vmm, &release("n4")).is_ok());
        assert!(!h.bridges()[0].slot_occupied(4));
    }

    #[test]
    fn functions_belong_to_the_name_that_claimed_them() {
        let mut h = Hierarchy::new(TopologySpec::embedded_default().unwrap()).unwrap();
        let mut o = Ownership::default();
        let (vmm, other) = (ConnectionId(1), ConnectionId(2));
        // Unidentified: a protocol error (the session lets no such claim through).
        assert_eq!(
            o.claim(&mut h, vmm, &claim("net0", "rp1")),
            Err(Status::Protocol)
        );
        o.identify(vmm, "vmm");
        o.identify(other, "qemu");
        assert!(o.claim(&mut h, vmm, &claim("net0", "rp1")).is_ok());
        assert_eq!(h.endpoint("net0").map(|e| e.owner.as_str()), Some("vmm"));
        assert_eq!(o.connections_of("vmm"), [vmm]);
        assert!(o.is_owner(vmm, "vmm") && !o.is_owner(other, "vmm"));
        // Refusals carry the status that says why.
        assert_eq!(
            o.claim(&mut h, other, &claim("net0", "rp2")),
            Err(Status::Exists)
        );
        assert_eq!(
            o.claim(&mut h, other, &claim("net1", "rp1")),
            Err(Status::Busy)
        );
        assert_eq!(
            o.claim(&mut h, other, &claim("net1", "pcie.0")),
            Err(Status::NoDevice)
        );
        assert_eq!(
            o.release(&mut h, other, &release("net0")),
            Err(Status::Permission)
        );
        assert_eq!(
            o.release(&mut h, vmm, &release("net9")),
            Err(Status::NoDevice)
        );
        assert!(o.release(&mut h, vmm, &release("net0")).is_ok());
        assert!(h.endpoint("net0").is_none());
        assert_eq!(o.forget(vmm).as_deref(), Some("vmm"));
        assert!(o.connections_of("vmm").is_empty());
    }
}
