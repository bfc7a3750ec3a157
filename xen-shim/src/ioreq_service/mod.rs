//! The pure part of the ioreq service loop (FLOW.md §2 steps 3-7, without the event-channel
//! I/O): take a READY slot, classify it, hand it to an [`IoHandler`], write the result back
//! and mark the slot IORESP_READY.
//!
//! Every synchronous request is answered, refused and failed ones included (reads then return
//! all-ones, like an unclaimed access), because the vCPU waits for the answer. After any
//! outcome but [`Serviced::Idle`] the caller must notify the vCPU's bound event-channel port
//! (`IOCTL_EVTCHN_NOTIFY`).

mod request;
mod slot;
#[cfg(test)]
mod tests;

pub use request::{classify, Access, IoRequest, Refusal};
pub use slot::{InFlight, IoreqSlot};

use crate::abi::dm_op::PciSbdf;
use crate::abi::ioreq::{ioreq_t, IOREQ_READ};
use request::size_mask;

/// The device side of the shim: what to do with each kind of access. For a write the returned
/// value is ignored; for a read only its low `size` bytes are used.
pub trait IoHandler {
    /// A failure (e.g. the connection to pcierc broke). The request is still answered, with
    /// all-ones for a read, and the error is returned to the loop in [`Serviced::Failed`].
    type Error;

    /// Port I/O (`IOREQ_TYPE_PIO`) of `size` 1, 2 or 4 bytes.
    fn pio(&mut self, port: u16, size: u8, access: Access) -> Result<u64, Self::Error>;

    /// MMIO (`IOREQ_TYPE_COPY`) of `size` 1, 2, 4 or 8 bytes at guest-physical `gpa`, e.g. in
    /// an ECAM window.
    fn mmio(&mut self, gpa: u64, size: u8, access: Access) -> Result<u64, Self::Error>;

    /// A configuration access Xen decoded from CF8/CFC (`IOREQ_TYPE_PCI_CONFIG`): `size` 1, 2
    /// or 4 bytes at register `reg` (possibly unaligned) of function `sbdf`.
    fn pci_config(
        &mut self,
        sbdf: PciSbdf,
        reg: u32,
        size: u8,
        access: Access,
    ) -> Result<u64, Self::Error>;

    /// `IOREQ_TYPE_INVALIDATE`: drop cached mappings of guest memory. None by default.
    fn invalidate(&mut self) {}
}

/// What [`service`] did with a slot.
#[derive(Debug, PartialEq, Eq)]
pub enum Serviced<E> {
    /// The slot was not READY (its state is given); nothing was touched. Do not notify.
    Idle(u8),
    /// The request was handled and answered.
    Answered(IoRequest),
    /// The request was refused and answered (reads with all-ones).
    Refused(Refusal),
    /// The handler failed; the request was answered (reads with all-ones).
    Failed(IoRequest, E),
}

impl<E> Serviced<E> {
    /// Whether the vCPU's port must now be notified (every outcome but `Idle`).
    pub fn must_notify(&self) -> bool {
        !matches!(self, Serviced::Idle(_))
    }
}

/// Services `slot` if it is READY (see the module docs).
pub fn service<H: IoHandler + ?Sized>(slot: &IoreqSlot<'_>, handler: &mut H) -> Serviced<H::Error> {
    let inflight = match slot.take() {
        Ok(inflight) => inflight,
        Err(state) => return Serviced::Idle(state),
    };
    let req = *inflight.request();
    // Xen copies `data` back for reads that are not data_is_ptr; when refusing or failing,
    // answer those like an unclaimed access: all-ones.
    let returns_data = req.dir() == IOREQ_READ && !req.data_is_ptr();
    let all_ones = returns_data.then(|| size_mask(req.size));
    let request = match classify(&req) {
        Ok(request) => request,
        Err(refusal) => {
            inflight.complete(all_ones);
            return Serviced::Refused(refusal);
        }
    };
    let result = match request {
        IoRequest::Pio { port, size, access } => handler.pio(port, size, access),
        IoRequest::Mmio { gpa, size, access } => handler.mmio(gpa, size, access),
        IoRequest::PciConfig {
            sbdf,
            reg,
            size,
            access,
        } => handler.pci_config(sbdf, reg, size, access),
        IoRequest::Invalidate => {
            handler.invalidate();
            inflight.complete(None);
            return Serviced::Answered(request);
        }
        IoRequest::TimeOffset => {
            inflight.complete(None);
            return Serviced::Answered(request);
        }
    };
    match result {
        Ok(value) => {
            inflight.complete(returns_data.then(|| value & size_mask(req.size)));
            Serviced::Answered(request)
        }
        Err(e) => {
            inflight.complete(all_ones);
            Serviced::Failed(request, e)
        }
    }
}

/// [`service`] on a slot held in ordinary memory.
pub fn service_ioreq<H: IoHandler + ?Sized>(
    req: &mut ioreq_t,
    handler: &mut H,
) -> Serviced<H::Error> {
    service(&IoreqSlot::from_mut(req), handler)
}
