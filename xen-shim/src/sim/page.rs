//! The synchronous ioreq page in ordinary memory, and what Xen does with a slot
//! (xen/common/ioreq.c `ioreq_send()` and `wait_for_io()`): fields first, a write barrier,
//! then `state = READY`; after the device model's answer, `state = NONE` and `data` taken.

use core::cell::UnsafeCell;
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile, NonNull};
use core::sync::atomic::{AtomicU8, Ordering};

use crate::abi::ioreq::{ioreq_t, shared_iopage_t, IOREQS_PER_PAGE, IOREQ_STATE_MASK};
use crate::abi::XEN_PAGE_SIZE;
use crate::hypervisor::IoreqPage;

#[repr(C, align(4096))]
struct PageBytes([u8; XEN_PAGE_SIZE]);

/// One 4 KiB ioreq page shared by the simulated Xen and a device model.
pub(crate) struct SharedPage {
    bytes: Box<UnsafeCell<PageBytes>>,
}

// SAFETY: the page is shared memory between "Xen" and a device model, as the real page is;
// every access goes through raw pointers with the slot protocol (an atomic state byte with
// Acquire/Release fences ordering the volatile field accesses), never through references.
unsafe impl Send for SharedPage {}
// SAFETY: as above.
unsafe impl Sync for SharedPage {}

impl std::fmt::Debug for SharedPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedPage")
    }
}

impl SharedPage {
    pub(crate) fn new() -> Self {
        SharedPage {
            bytes: Box::new(UnsafeCell::new(PageBytes([0; XEN_PAGE_SIZE]))),
        }
    }

    pub(crate) fn base(&self) -> NonNull<shared_iopage_t> {
        // SAFETY: UnsafeCell::get never returns null.
        unsafe { NonNull::new_unchecked(self.bytes.get().cast()) }
    }

    /// Xen's view of vCPU `v`'s slot.
    pub(crate) fn slot(&self, v: usize) -> XenSlot<'_> {
        assert!(v < IOREQS_PER_PAGE, "vCPU {v} has no slot in one page");
        // SAFETY: in bounds of the 4 KiB page (checked above); aligned (the page is).
        let ptr = unsafe { self.base().cast::<ioreq_t>().add(v) };
        XenSlot { ptr, _page: self }
    }
}

/// Xen's side of one slot.
pub(crate) struct XenSlot<'a> {
    ptr: NonNull<ioreq_t>,
    _page: &'a SharedPage,
}

impl XenSlot<'_> {
    fn bits(&self) -> &AtomicU8 {
        // SAFETY: the byte lies in the live page; both sides access it only atomically.
        unsafe { AtomicU8::from_ptr(addr_of_mut!((*self.ptr.as_ptr()).bitfields)) }
    }

    pub(crate) fn state(&self) -> u8 {
        self.bits().load(Ordering::Acquire) & IOREQ_STATE_MASK
    }

    pub(crate) fn vp_eport(&self) -> u32 {
        // SAFETY: live page; volatile because the device model may access the slot.
        unsafe { read_volatile(addr_of!((*self.ptr.as_ptr()).vp_eport)) }
    }

    pub(crate) fn set_vp_eport(&self, port: u32) {
        // SAFETY: live page; Xen writes vp_eport only while the server is being enabled.
        unsafe { write_volatile(addr_of_mut!((*self.ptr.as_ptr()).vp_eport), port) }
    }

    /// `ioreq_send()`: every field but `vp_eport`, then (Release) the bitfields with READY.
    pub(crate) fn post(&self, req: &ioreq_t) {
        let p = self.ptr.as_ptr();
        // SAFETY: live page; the slot is NONE, so the device model does not touch it.
        unsafe {
            write_volatile(addr_of_mut!((*p).addr), req.addr);
            write_volatile(addr_of_mut!((*p).data), req.data);
            write_volatile(addr_of_mut!((*p).count), req.count);
            write_volatile(addr_of_mut!((*p).size), req.size);
            write_volatile(addr_of_mut!((*p).type_), req.type_);
        }
        let mut r = *req;
        r.set_state(crate::abi::ioreq::STATE_IOREQ_READY);
        self.bits().store(r.bitfields, Ordering::Release);
    }

    /// The slot as it is now (after an Acquire load of its state).
    pub(crate) fn read(&self) -> ioreq_t {
        let bits = self.bits().load(Ordering::Acquire);
        let p = self.ptr.as_ptr();
        // SAFETY: live page; read after the device model's Release store of IORESP_READY.
        unsafe {
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
        }
    }

    /// `wait_for_io()`'s IORESP_READY -> NONE.
    pub(crate) fn set_none(&self) {
        let b = self.bits().load(Ordering::Relaxed);
        self.bits()
            .store(ioreq_t::bitfields_with_state(b, 0), Ordering::Release);
    }
}

/// A device model's mapping of a simulated ioreq page.
#[derive(Debug)]
pub struct SimPage {
    pub(crate) page: std::sync::Arc<SharedPage>,
}

impl IoreqPage for SimPage {
    fn as_ptr(&self) -> NonNull<shared_iopage_t> {
        self.page.base()
    }
    fn len(&self) -> usize {
        XEN_PAGE_SIZE
    }
}
