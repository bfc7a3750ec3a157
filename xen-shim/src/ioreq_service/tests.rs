//! The service driven with ioreq slots in memory, as Xen would fill them.

use super::*;
use crate::abi::ioreq::*;
use core::ptr::NonNull;

/// Records every call and answers reads with `reply`.
#[derive(Default)]
struct Recorder {
    calls: Vec<IoRequest>,
    invalidations: u32,
    reply: u64,
    fail: bool,
}

impl Recorder {
    fn answer(&mut self, call: IoRequest) -> Result<u64, &'static str> {
        self.calls.push(call);
        if self.fail {
            Err("pcierc went away")
        } else {
            Ok(self.reply)
        }
    }
}

impl IoHandler for Recorder {
    type Error = &'static str;
    fn pio(&mut self, port: u16, size: u8, access: Access) -> Result<u64, Self::Error> {
        self.answer(IoRequest::Pio { port, size, access })
    }
    fn mmio(&mut self, gpa: u64, size: u8, access: Access) -> Result<u64, Self::Error> {
        self.answer(IoRequest::Mmio { gpa, size, access })
    }
    fn pci_config(
        &mut self,
        sbdf: PciSbdf,
        reg: u32,
        size: u8,
        access: Access,
    ) -> Result<u64, Self::Error> {
        self.answer(IoRequest::PciConfig {
            sbdf,
            reg,
            size,
            access,
        })
    }
    fn invalidate(&mut self) {
        self.invalidations += 1;
    }
}

/// A slot as Xen leaves it for the device model: fields, then state READY; vp_eport 100.
fn ready(ty: u8, addr: u64, size: u32, dir: u8, data: u64) -> ioreq_t {
    let mut r = ioreq_t {
        addr,
        data,
        count: 1,
        size,
        vp_eport: 100,
        type_: ty,
        ..Default::default()
    };
    r.set_dir(dir);
    r.set_state(STATE_IOREQ_READY);
    r
}

const DEV3: PciSbdf = PciSbdf {
    segment: 0,
    bus: 0,
    devfn: 0x18,
};

#[test]
fn pci_config_read_from_the_recorded_flow() {
    // flow.stdout: a CFC read of 0000:00:03.0 reg 0, 4 bytes, answered with 0x12348086.
    let mut r = ready(
        IOREQ_TYPE_PCI_CONFIG,
        0x0000_0018_0000_0000,
        4,
        IOREQ_READ,
        0,
    );
    let mut h = Recorder {
        reply: 0x1_1234_8086,
        ..Default::default()
    };
    let out = service_ioreq(&mut r, &mut h);
    let want = IoRequest::PciConfig {
        sbdf: DEV3,
        reg: 0,
        size: 4,
        access: Access::Read,
    };
    assert_eq!(out, Serviced::Answered(want));
    assert!(out.must_notify());
    assert_eq!(h.calls, [want]);
    assert_eq!(r.data, 0x1234_8086, "read result masked to size");
    assert_eq!(r.state(), STATE_IORESP_READY);
    assert_eq!(r.bitfields, 0x23, "dir=READ kept, state=IORESP_READY");
    assert_eq!(
        (r.vp_eport, r.type_, r.addr),
        (100, IOREQ_TYPE_PCI_CONFIG, 0x18_0000_0000)
    );
}

#[test]
fn writes_leave_data_alone() {
    let mut r = ready(
        IOREQ_TYPE_PCI_CONFIG,
        0x0000_0018_0000_0006,
        2,
        IOREQ_WRITE,
        0xdead_cafe,
    );
    let mut h = Recorder {
        reply: 0x5555,
        ..Default::default()
    };
    let want = IoRequest::PciConfig {
        sbdf: DEV3,
        reg: 6,
        size: 2,
        access: Access::Write(0xcafe),
    };
    assert_eq!(service_ioreq(&mut r, &mut h), Serviced::Answered(want));
    assert_eq!((r.data, r.state()), (0xdead_cafe, STATE_IORESP_READY));
}

#[test]
fn pio_and_mmio_reach_their_methods() {
    let mut r = ready(IOREQ_TYPE_PIO, 0xcf9, 1, IOREQ_READ, 0);
    let mut h = Recorder {
        reply: 0xabcd,
        ..Default::default()
    };
    service_ioreq(&mut r, &mut h);
    assert_eq!(r.data, 0xcd);
    let mut r = ready(IOREQ_TYPE_COPY, 0xe001_8000, 8, IOREQ_READ, 0);
    h.reply = u64::MAX - 1;
    service_ioreq(&mut r, &mut h);
    assert_eq!(r.data, u64::MAX - 1);
    assert_eq!(
        h.calls,
        [
            IoRequest::Pio {
                port: 0xcf9,
                size: 1,
                access: Access::Read
            },
            IoRequest::Mmio {
                gpa: 0xe001_8000,
                size: 8,
                access: Access::Read
            },
        ]
    );
}

#[test]
fn slots_not_ready_are_left_alone() {
    let mut h = Recorder::default();
    for state in [
        STATE_IOREQ_NONE,
        STATE_IOREQ_INPROCESS,
        STATE_IORESP_READY,
        0xf,
    ] {
        let mut r = ready(IOREQ_TYPE_PIO, 0x60, 1, IOREQ_READ, 7);
        r.set_state(state);
        let before = r;
        let out = service_ioreq(&mut r, &mut h);
        assert_eq!(out, Serviced::Idle(state));
        assert!(!out.must_notify());
        assert_eq!(r, before);
    }
    assert!(h.calls.is_empty());
}

#[test]
fn pointer_requests_are_refused_but_answered() {
    let mut r = ready(IOREQ_TYPE_PIO, 0xcfc, 4, IOREQ_READ, 0x1000);
    r.set_data_is_ptr(true);
    r.count = 16;
    let mut h = Recorder::default();
    assert_eq!(
        service_ioreq(&mut r, &mut h),
        Serviced::Refused(Refusal::DataIsPtr { ty: IOREQ_TYPE_PIO })
    );
    assert!(h.calls.is_empty());
    assert_eq!(r.state(), STATE_IORESP_READY);
    assert_eq!(
        r.data, 0x1000,
        "data is a guest address here: not overwritten"
    );
}

#[test]
fn rep_and_bad_size_reads_get_all_ones() {
    let mut h = Recorder::default();
    let mut r = ready(IOREQ_TYPE_COPY, 0xe000_0000, 2, IOREQ_READ, 0);
    r.count = 2;
    assert_eq!(
        service_ioreq(&mut r, &mut h),
        Serviced::Refused(Refusal::Repeated { ty: 1, count: 2 })
    );
    assert_eq!((r.data, r.state()), (0xffff, STATE_IORESP_READY));
    let mut r = ready(IOREQ_TYPE_PCI_CONFIG, 0, 8, IOREQ_READ, 0);
    assert_eq!(
        service_ioreq(&mut r, &mut h),
        Serviced::Refused(Refusal::BadSize { ty: 2, size: 8 })
    );
    assert_eq!(r.data, u64::MAX);
    let mut r = ready(9, 0, 4, IOREQ_READ, 0);
    assert_eq!(
        service_ioreq(&mut r, &mut h),
        Serviced::Refused(Refusal::UnknownType(9))
    );
    assert_eq!((r.data, r.state()), (0xffff_ffff, STATE_IORESP_READY));
    assert!(h.calls.is_empty());
}

#[test]
fn handler_failure_answers_all_ones() {
    let mut h = Recorder {
        fail: true,
        ..Default::default()
    };
    let mut r = ready(IOREQ_TYPE_PCI_CONFIG, 0x18_0000_0004, 2, IOREQ_READ, 0);
    let out = service_ioreq(&mut r, &mut h);
    let want = IoRequest::PciConfig {
        sbdf: DEV3,
        reg: 4,
        size: 2,
        access: Access::Read,
    };
    assert_eq!(out, Serviced::Failed(want, "pcierc went away"));
    assert!(out.must_notify());
    assert_eq!((r.data, r.state()), (0xffff, STATE_IORESP_READY));
}

#[test]
fn invalidate_and_timeoffset_are_completed() {
    let mut h = Recorder::default();
    let mut r = ready(IOREQ_TYPE_INVALIDATE, 0, 0, IOREQ_WRITE, 42);
    assert_eq!(
        service_ioreq(&mut r, &mut h),
        Serviced::Answered(IoRequest::Invalidate)
    );
    assert_eq!(
        (h.invalidations, r.state(), r.data),
        (1, STATE_IORESP_READY, 42)
    );
    let mut r = ready(IOREQ_TYPE_TIMEOFFSET, 0, 8, IOREQ_WRITE, 3600);
    assert_eq!(
        service_ioreq(&mut r, &mut h),
        Serviced::Answered(IoRequest::TimeOffset)
    );
    assert_eq!(r.state(), STATE_IORESP_READY);
    assert!(h.calls.is_empty());
}

#[test]
fn completion_keeps_the_other_bitfields() {
    let mut r = ready(IOREQ_TYPE_COPY, 0xe000_0000, 4, IOREQ_WRITE, 1);
    r.set_df(true);
    service_ioreq(&mut r, &mut Recorder::default());
    assert_eq!(r.bitfields, 0x43, "df kept, dir=WRITE, state=IORESP_READY");
}

#[test]
fn slots_in_a_shared_page_are_independent() {
    // vCPU 2 of a 4-vCPU page; its neighbours must not change.
    let mut page = [ioreq_t::default(); 4];
    page[2] = ready(IOREQ_TYPE_PCI_CONFIG, 0x18_0000_0000, 4, IOREQ_READ, 0);
    page[3] = ready(IOREQ_TYPE_PIO, 0x60, 1, IOREQ_READ, 0);
    let untouched = (page[0], page[1], page[3]);
    {
        let base = NonNull::from(&mut page).cast::<shared_iopage_t>();
        // SAFETY: `page` outlives the slot (this block), holds 4 slots (vCPU 2 is inside) and
        // is not accessed otherwise while the slot exists.
        let slot = unsafe { IoreqSlot::in_page(base, 2) };
        let mut h = Recorder {
            reply: 0x8086,
            ..Default::default()
        };
        assert!(service(&slot, &mut h).must_notify());
        assert_eq!(slot.state(), STATE_IORESP_READY);
        assert!(matches!(
            service(&slot, &mut h),
            Serviced::Idle(STATE_IORESP_READY)
        ));
    }
    assert_eq!((page[0], page[1], page[3]), untouched);
    assert_eq!((page[2].data, page[2].vp_eport), (0x8086, 100));
}

#[test]
fn take_marks_inprocess_until_completed() {
    let mut r = ready(IOREQ_TYPE_PIO, 0x70, 1, IOREQ_WRITE, 5);
    let slot = IoreqSlot::from_mut(&mut r);
    let inflight = slot.take().expect("ready");
    assert_eq!(slot.state(), STATE_IOREQ_INPROCESS);
    assert_eq!(inflight.request().state(), STATE_IOREQ_READY);
    assert!(slot.take().is_err(), "an in-flight slot is not taken twice");
    inflight.complete(None);
    assert_eq!(slot.state(), STATE_IORESP_READY);
}
