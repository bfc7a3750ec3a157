//! Functions emulators plug in and take out themselves (`ClaimFunction` / `ReleaseFunction`):
//! each function has one owner, the frontend whose name claimed it; conflicting claims are
//! refused with a status that says why.

use log::info;
use pcierc_protocol::{decode_name, ConnectionId, FunctionClaim, FunctionRelease, Status};

use super::RootComplex;
use crate::pci::SlotError;
use crate::topology::hierarchy::HotplugError;
use crate::topology::spec::EndpointSpec;
use crate::topology::DevFn;

/// The protocol status for a refused hot-plug operation.
fn status(e: &HotplugError) -> Status {
    match e {
        HotplugError::UnknownId(_) | HotplugError::NotHotpluggable(_) => Status::NoDevice,
        HotplugError::Duplicate(_) => Status::Exists,
        HotplugError::Slot {
            source: SlotError::Occupied,
            ..
        } => Status::Busy,
        HotplugError::Slot { .. }
        | HotplugError::InvalidOwner(_)
        | HotplugError::FunctionZeroFirst { .. }
        | HotplugError::Topology(_)
        | HotplugError::NoFunction { .. }
        | HotplugError::Inject(_) => Status::Invalid,
    }
}

impl RootComplex {
    /// `ClaimFunction` from frontend `conn` (identified: the session checked it).
    pub(super) fn claim(&mut self, conn: ConnectionId, c: &FunctionClaim) -> Result<(), Status> {
        let owner = self.frontends.get(&conn).cloned().ok_or(Status::Protocol)?;
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
            self.hierarchy.cold_plug(endpoint)
        } else {
            self.hierarchy.hot_add(endpoint)
        };
        match r {
            Ok(fx) => {
                self.report(fx);
                Ok(())
            }
            Err(e) => {
                info!("claim refused: {e}");
                Err(status(&e))
            }
        }
    }

    /// `ReleaseFunction` from frontend `conn`: only the owner may release a function.
    pub(super) fn release(
        &mut self,
        conn: ConnectionId,
        r: &FunctionRelease,
    ) -> Result<(), Status> {
        let id = decode_name(&r.id).ok_or(Status::Invalid)?.to_string();
        let e = self.hierarchy.endpoint(&id).ok_or(Status::NoDevice)?;
        if self.frontends.get(&conn) != Some(&e.owner) {
            return Err(Status::Permission);
        }
        let surprise = r.flags & FunctionRelease::SURPRISE != 0;
        info!(
            "{} releases {id}{}",
            e.owner,
            if surprise { " at once" } else { "" }
        );
        let res = if surprise {
            self.hierarchy.surprise_remove(&id)
        } else {
            self.hierarchy.request_removal(&id)
        };
        let fx = res.map_err(|e| status(&e))?;
        self.report(fx);
        Ok(())
    }
}
