//! Access to one vCPU's [`ioreq_t`] in the page shared with Xen, with the barrier discipline
//! of FLOW.md §2 (QEMU's `xen_rmb()` / `xen_wmb()`).
//!
//! Xen writes a slot's fields, then `state = READY`, then notifies; the vCPU then waits until
//! the device model sets `state = IORESP_READY`. Between those two states the slot belongs to
//! the device model, so the shim may copy it, but the state byte itself is read and written
//! with atomics, and the other fields with volatile accesses, since the memory is shared with
//! another agent the compiler cannot see.

use crate::abi::ioreq::{
    ioreq_t, shared_iopage_t, IOREQ_STATE_MASK, STATE_IOREQ_INPROCESS, STATE_IOREQ_READY,
    STATE_IORESP_READY,
};
use core::marker::PhantomData;
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile, NonNull};
use core::sync::atomic::{fence, AtomicU8, Ordering};

/// One vCPU's request slot.
#[derive(Debug)]
pub struct IoreqSlot<'a> {
    ptr: NonNull<ioreq_t>,
    _slot: PhantomData<&'a mut ioreq_t>,
}

impl<'a> IoreqSlot<'a> {
    /// A slot in ordinary memory (tests, or a copy made elsewhere).
    pub fn from_mut(req: &'a mut ioreq_t) -> Self {
        Self {
            ptr: NonNull::from(req),
            _slot: PhantomData,
        }
    }

    /// The slot at `ptr`, e.g. inside the mapped ioreq page.
    ///
    /// # Safety
    /// `ptr` must be aligned and valid for reads and writes of an [`ioreq_t`] for `'a`, and
    /// nothing but Xen and this `IoreqSlot` may access it during `'a`.
    pub unsafe fn from_raw(ptr: NonNull<ioreq_t>) -> Self {
        Self {
            ptr,
            _slot: PhantomData,
        }
    }

    /// vCPU `vcpu`'s slot in the ioreq page at `page` (byte offset `32 * vcpu`).
    ///
    /// # Safety
    /// `page` must be a mapping of the ioreq page(s) that stays valid for `'a` and covers slot
    /// `vcpu` (`vcpu < IOREQS_PER_PAGE` for the one page Xen 4.17 provides), and nothing but
    /// Xen and this `IoreqSlot` may access that slot during `'a`.
    pub unsafe fn in_page(page: NonNull<shared_iopage_t>, vcpu: usize) -> Self {
        // SAFETY: the caller guarantees the mapping covers slot `vcpu`, so the offset stays in
        // bounds; `shared_iopage_t` starts with an array of `ioreq_t`.
        let ptr = unsafe { page.cast::<ioreq_t>().add(vcpu) };
        // SAFETY: forwarded to the caller (see above).
        unsafe { Self::from_raw(ptr) }
    }

    fn bitfields(&self) -> &AtomicU8 {
        // SAFETY: `ptr` is valid and aligned for `'a` (constructor contract); `bitfields` is a
        // `u8` inside it and `AtomicU8` has the size and alignment of `u8`. In this process
        // the byte is only accessed through this atomic once the slot exists.
        unsafe { AtomicU8::from_ptr(addr_of_mut!((*self.ptr.as_ptr()).bitfields)) }
    }

    /// The current `state:4` (one `STATE_*` value).
    pub fn state(&self) -> u8 {
        self.bitfields().load(Ordering::Relaxed) & IOREQ_STATE_MASK
    }

    /// `vp_eport`: the guest-side event channel Xen wrote into the slot when the server was
    /// enabled (0 before). Read only; the device model never writes it.
    pub fn vp_eport(&self) -> crate::abi::evtchn_port_t {
        // SAFETY: `ptr` is valid and aligned for reads (constructor contract); volatile because
        // Xen writes the field.
        unsafe { read_volatile(addr_of!((*self.ptr.as_ptr()).vp_eport)) }
    }

    /// If the slot is READY: an Acquire fence, a copy of the slot, and `state = INPROCESS`
    /// (as QEMU does). Otherwise `Err(state)` and nothing is touched.
    pub fn take(&self) -> Result<InFlight<'_, 'a>, u8> {
        let bits = self.bitfields().load(Ordering::Relaxed);
        if bits & IOREQ_STATE_MASK != STATE_IOREQ_READY {
            return Err(bits & IOREQ_STATE_MASK);
        }
        // xen_rmb(): the fields Xen wrote before setting READY are read after seeing READY.
        fence(Ordering::Acquire);
        let p = self.ptr.as_ptr();
        // SAFETY: `p` is valid and aligned for reads (constructor contract); volatile because
        // the page is shared with Xen. The state byte is not read here (it is `bits`).
        let req = unsafe {
            ioreq_t {
                addr: read_volatile(addr_of!((*p).addr)),
                data: read_volatile(addr_of!((*p).data)),
                count: read_volatile(addr_of!((*p).count)),
                size: read_volatile(addr_of!((*p).size)),
                vp_eport: read_volatile(addr_of!((*p).vp_eport)),
                _pad0: read_volatile(addr_of!((*p)._pad0)),
                bitfields: bits,
                type_: read_volatile(addr_of!((*p).type_)),
            }
        };
        self.set_state(STATE_IOREQ_INPROCESS);
        Ok(InFlight { slot: self, req })
    }

    /// Read-modify-write of the low nibble of byte 30; the other bits are kept.
    fn set_state(&self, state: u8) {
        let byte = self.bitfields();
        byte.store(
            ioreq_t::bitfields_with_state(byte.load(Ordering::Relaxed), state),
            Ordering::Relaxed,
        );
    }
}

/// A request taken from its slot (state INPROCESS). It must be [`complete`](Self::complete)d:
/// the vCPU is blocked until then.
#[derive(Debug)]
#[must_use = "the vCPU stays blocked until the request is completed"]
pub struct InFlight<'s, 'a> {
    slot: &'s IoreqSlot<'a>,
    req: ioreq_t,
}

impl InFlight<'_, '_> {
    /// The copy of the slot taken after the Acquire fence (its `state` is READY).
    pub fn request(&self) -> &ioreq_t {
        &self.req
    }

    /// Answers the request: stores `read_data` (if any) in `data`, then a Release fence, then
    /// `state = IORESP_READY`. Never touches `vp_eport`. The caller then notifies the vCPU's
    /// event channel.
    pub fn complete(self, read_data: Option<u64>) {
        if let Some(value) = read_data {
            // SAFETY: the slot pointer is valid and aligned for writes (constructor contract),
            // and Xen does not access `data` while the state is INPROCESS.
            unsafe { write_volatile(addr_of_mut!((*self.slot.ptr.as_ptr()).data), value) };
        }
        // xen_wmb(): `data` must be visible before the state says IORESP_READY.
        fence(Ordering::Release);
        self.slot.set_state(STATE_IORESP_READY);
    }
}
