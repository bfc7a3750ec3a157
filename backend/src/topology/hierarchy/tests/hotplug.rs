//! Hot-plug, interrupt, AER and PME tests: the pciehp, aerdrv and PME service sequences
//! driven through the hierarchy's guest and operator entry points.

use super::*;
use crate::pci::Interrupt;
use crate::topology::hierarchy::{HierarchyEvent, HotplugError};
use crate::topology::DevFn;

const RP1: u64 = 0xb000_0000 + (0x10 << 12);
// PCIe capability at 0x54: Slot Control 0x54+0x18, Slot Status 0x54+0x1a, Link Status 0x54+0x12.
const SLTCTL: u64 = RP1 + 0x6c;
const SLTSTA: u64 = RP1 + 0x6e;
const LNKSTA: u64 = RP1 + 0x66;

fn net(id: &str) -> EndpointSpec {
    EndpointSpec {
        id: id.into(),
        driver: "virtio-net-pci".into(),
        bus: "rp1".into(),
        addr: DevFn(0),
        owner: "qemu".into(),
        multifunction: false,
    }
}

/// Firmware and pciehp setup: ECAM, bus 1 behind rp1, MSI-X vector 0 programmed and
/// enabled, hot-plug interrupts enabled (HPIE, PDCE, ABPE; QEMU has no DLLSCE).
fn guest_ready() -> Hierarchy {
    let mut h = hierarchy(&[]);
    enable_ecam(&mut h, 0xb000_0000);
    h.mmio_write(RP1 + 0x18, 4, 0x0001_0100).unwrap();
    h.mmio_write(RP1 + 0x10, 4, 0xfe00_0000).unwrap();
    h.mmio_write(RP1 + 4, 2, 0x6).unwrap();
    h.mmio_write(0xfe00_0000, 8, 0xfee0_1000).unwrap();
    h.mmio_write(0xfe00_0008, 4, 0x4031).unwrap();
    h.mmio_write(0xfe00_000c, 4, 0).unwrap(); // unmask vector 0
    h.mmio_write(RP1 + 0x4a, 2, 0x8000).unwrap(); // MSI-X Enable
    h.mmio_write(SLTCTL, 2, 0x0029 | 0x03c0).unwrap(); // ABPE|PDCE|HPIE, indicators off
    h.mmio_write(SLTSTA, 2, 0x10).unwrap(); // clear Command Completed
    h.take_events();
    h
}

/// Take the queued events and assert that `want` is among them; all of them, for more checks.
#[track_caller]
fn assert_took(h: &mut Hierarchy, want: &HierarchyEvent) -> Vec<HierarchyEvent> {
    let ev = h.take_events();
    assert!(ev.contains(want), "{want:?} not in {ev:?}");
    ev
}

fn msis(h: &mut Hierarchy) -> usize {
    h.take_events()
        .iter()
        .filter(|e| {
            matches!(
                e,
                HierarchyEvent::Interrupt {
                    bus: 0,
                    devfn: 0x10,
                    interrupt: Interrupt::Msi {
                        vector: 0,
                        address: 0xfee0_1000,
                        data: 0x4031
                    }
                }
            )
        })
        .count()
}

#[test]
fn hot_add_then_orderly_removal_as_pciehp_does_it() {
    let mut h = guest_ready();
    h.hot_add(net("net0")).unwrap();
    let ev = assert_took(
        &mut h,
        &HierarchyEvent::FunctionAdded {
            endpoint: net("net0"),
        },
    );
    assert!(
        ev.iter().any(|e| matches!(
            e,
            HierarchyEvent::Interrupt {
                interrupt: Interrupt::Msi { data: 0x4031, .. },
                ..
            }
        )),
        "PDC with PDCE+HPIE raises MSI-X vector 0: {ev:?}"
    );
    let sta = h.mmio_read(SLTSTA, 2).unwrap();
    assert_eq!(
        sta & 0x48,
        0x48,
        "Presence Detect State and Presence Detect Changed"
    );
    assert_ne!(
        h.mmio_read(LNKSTA, 2).unwrap() & 0x2000,
        0,
        "Data Link Layer Link Active"
    );
    assert_eq!(
        h.route(1, 0),
        Routed::Remote(0),
        "the function answers behind rp1"
    );
    // Overlaps are refused and change nothing.
    assert!(matches!(
        h.hot_add(net("net1")),
        Err(HotplugError::Slot {
            source: SlotError::Occupied,
            ..
        })
    ));
    assert!(matches!(
        h.request_removal("nope"),
        Err(HotplugError::UnknownId(_))
    ));
    assert_ne!(
        h.mmio_read(SLTSTA, 2).unwrap() & 0x01,
        0,
        "Attention Button Pressed too, as QEMU sets it on hot-add"
    );
    // The guest acknowledges PDC and ABP (W1C).
    h.mmio_write(SLTSTA, 2, 0x09).unwrap();
    assert_eq!(h.mmio_read(SLTSTA, 2).unwrap() & 0x09, 0);
    h.take_events();
    // Operator asks for removal: Attention Button Pressed, interrupt.
    h.request_removal("net0").unwrap();
    assert_eq!(msis(&mut h), 1);
    // A second press before the guest cleared the first changes nothing.
    h.request_removal("net0").unwrap();
    assert_eq!(msis(&mut h), 0);
    // pciehp: clear ABP, then power the slot off (PCC=1, power indicator off).
    h.mmio_write(SLTSTA, 2, 0x01).unwrap();
    assert_eq!(
        h.endpoint("net0").map(|e| e.id.as_str()),
        Some("net0"),
        "still there until powered off"
    );
    h.mmio_write(SLTCTL, 2, 0x0029 | 0x0400 | 0x0300 | 0x00c0)
        .unwrap();
    assert_took(
        &mut h,
        &HierarchyEvent::FunctionRemoved {
            endpoint: net("net0"),
            surprise: false,
        },
    );
    assert_eq!(h.endpoint("net0"), None);
    assert_eq!(h.route(1, 0), Routed::Absent);
    assert_eq!(h.mmio_read(SLTSTA, 2).unwrap() & 0x40, 0, "presence gone");
    // The slot is usable again.
    h.hot_add(net("net2")).unwrap();
}

#[test]
fn surprise_removal_and_intx_when_msix_is_off() {
    let mut h = hierarchy(&[]);
    enable_ecam(&mut h, 0xb000_0000);
    h.mmio_write(SLTCTL, 2, 0x0028).unwrap(); // PDCE|HPIE, no MSI-X: INTx
    h.take_events();
    h.hot_add(net("net0")).unwrap();
    assert_took(
        &mut h,
        &HierarchyEvent::Interrupt {
            bus: 0,
            devfn: 0x10,
            interrupt: Interrupt::Intx { asserted: true },
        },
    );
    h.mmio_write(SLTSTA, 2, 0x18).unwrap(); // clear PDC (and CC): INTx drops
    assert_took(
        &mut h,
        &HierarchyEvent::Interrupt {
            bus: 0,
            devfn: 0x10,
            interrupt: Interrupt::Intx { asserted: false },
        },
    );
    h.surprise_remove("net0").unwrap();
    let ev = assert_took(
        &mut h,
        &HierarchyEvent::FunctionRemoved {
            endpoint: net("net0"),
            surprise: true,
        },
    );
    assert!(ev.iter().any(|e| matches!(
        e,
        HierarchyEvent::Interrupt {
            interrupt: Interrupt::Intx { asserted: true },
            ..
        }
    )));
    assert!(matches!(
        h.surprise_remove("net0"),
        Err(HotplugError::UnknownId(_))
    ));
    // INTx Disable: the pin is not driven, Interrupt Status still shows it.
    h.mmio_write(SLTSTA, 2, 0x08).unwrap();
    h.mmio_write(RP1 + 4, 2, 0x400).unwrap();
    h.take_events();
    h.hot_add(net("net1")).unwrap();
    assert!(!h
        .take_events()
        .iter()
        .any(|e| matches!(e, HierarchyEvent::Interrupt { .. })));
    assert_ne!(
        h.mmio_read(RP1 + 6, 2).unwrap() & 0x8,
        0,
        "Status.Interrupt Status"
    );
}

#[test]
fn refusals_name_the_problem() {
    let mut h = guest_ready();
    let on_root = EndpointSpec {
        bus: "pcie.0".into(),
        addr: DevFn(0x18),
        ..net("x")
    };
    assert!(matches!(
        h.hot_add(on_root),
        Err(HotplugError::NotHotpluggable(_))
    ));
    let dup = EndpointSpec {
        id: "rp2".into(),
        ..net("x")
    };
    assert_eq!(h.hot_add(dup), Err(HotplugError::Duplicate("rp2".into())));
    let f1 = EndpointSpec {
        addr: DevFn(1),
        ..net("x")
    };
    assert_eq!(
        h.hot_add(f1),
        Err(HotplugError::FunctionZeroFirst {
            id: "x".into(),
            function: 1
        })
    );
    assert!(matches!(
        h.request_removal("rp1"),
        Err(HotplugError::UnknownId(_))
    ));
    // A masked MSI-X vector keeps the message pending and delivers it on unmask.
    h.mmio_write(0xfe00_000c, 4, 1).unwrap();
    h.hot_add(net("net0")).unwrap();
    assert_eq!(msis(&mut h), 0);
    h.mmio_write(0xfe00_000c, 4, 0).unwrap();
    assert_eq!(msis(&mut h), 1, "pending vector fires on unmask");
}

// AER capability at 0x100 of rp1.
const UNCOR_STATUS: u64 = RP1 + 0x104;
const COR_STATUS: u64 = RP1 + 0x110;
const AER_CAP: u64 = RP1 + 0x118;
const ROOT_CMD: u64 = RP1 + 0x12c;
const ROOT_STATUS: u64 = RP1 + 0x130;
const ERR_SRC: u64 = RP1 + 0x134;
const DEVSTA: u64 = RP1 + 0x5e;

#[test]
fn aer_port_error_is_logged_and_signalled_without_serr() {
    let mut h = guest_ready();
    assert_eq!(
        h.mmio_read(RP1 + 0x3e, 2).unwrap() & 0x2,
        0,
        "Bridge Control SERR# Enable is off"
    );
    h.mmio_write(ROOT_CMD, 4, 0x2).unwrap(); // Non-Fatal Error Reporting Enable
    h.take_events();
    // Unsupported Request (bit 20): non-fatal by the default severity.
    h.inject_error("rp1", ErrorSeverity::NonFatal, 1 << 20)
        .unwrap();
    assert_eq!(
        msis(&mut h),
        1,
        "ERR_NONFATAL with its enable raises MSI-X vector 0"
    );
    assert_eq!(h.mmio_read(UNCOR_STATUS, 4).unwrap(), 1 << 20);
    assert_eq!(
        h.mmio_read(AER_CAP, 4).unwrap() & 0x1f,
        20,
        "First Error Pointer"
    );
    let rs = h.mmio_read(ROOT_STATUS, 4).unwrap();
    assert_eq!(
        rs & 0x7f,
        0x24,
        "ERR_FATAL/NONFATAL Received + Non-Fatal Error Messages Received"
    );
    assert_eq!(
        h.mmio_read(ERR_SRC, 4).unwrap() >> 16,
        0x0010,
        "source: the port 00:02.0"
    );
    assert_eq!(
        h.mmio_read(DEVSTA, 2).unwrap() & 0x7,
        0x2,
        "Device Status Non-Fatal Error Detected"
    );
    // A second one: Multiple received, no new MSI (the class was already set).
    h.inject_error("rp1", ErrorSeverity::NonFatal, 1 << 20)
        .unwrap();
    assert_eq!(msis(&mut h), 0);
    assert_ne!(
        h.mmio_read(ROOT_STATUS, 4).unwrap() & 0x8,
        0,
        "Multiple ERR_FATAL/NONFATAL"
    );
    // Data Link Protocol Error (bit 4) is fatal by default severity, whatever was asked.
    h.mmio_write(ROOT_STATUS, 4, 0x7f).unwrap();
    h.mmio_write(ROOT_CMD, 4, 0x4).unwrap();
    h.take_events();
    h.inject_error("rp1", ErrorSeverity::NonFatal, 1 << 4)
        .unwrap();
    assert_eq!(msis(&mut h), 1);
    assert_eq!(
        h.mmio_read(ROOT_STATUS, 4).unwrap() & 0x7f,
        0x54,
        "UE received, first fatal, fatal received"
    );
    assert!(
        h.inject_error("rp1", ErrorSeverity::Correctable, 1 << 31)
            .is_err(),
        "no such error bit"
    );
}

#[test]
fn aer_messages_from_below_set_only_the_root_registers() {
    let mut h = guest_ready();
    h.hot_add(net("net0")).unwrap();
    h.take_events();
    // Correctable from 01:00.0 with its enable off: recorded, no interrupt.
    h.inject_error("net0", ErrorSeverity::Correctable, 1)
        .unwrap();
    assert_eq!(msis(&mut h), 0);
    assert_eq!(h.mmio_read(ROOT_STATUS, 4).unwrap() & 0x3, 0x1);
    assert_eq!(
        h.mmio_read(ERR_SRC, 4).unwrap() & 0xffff,
        0x0100,
        "source 01:00.0"
    );
    assert_eq!(
        h.mmio_read(COR_STATUS, 4).unwrap(),
        0,
        "the function logs it, not the port"
    );
    h.inject_error("net0", ErrorSeverity::Correctable, 1)
        .unwrap();
    assert_eq!(
        h.mmio_read(ROOT_STATUS, 4).unwrap() & 0x3,
        0x3,
        "Multiple ERR_COR Received"
    );
    // Masked correctable error of the port itself (Advisory Non-Fatal is masked by default).
    h.inject_error("rp1", ErrorSeverity::Correctable, 1 << 13)
        .unwrap();
    assert_eq!(h.mmio_read(COR_STATUS, 4).unwrap(), 1 << 13, "recorded");
    // INTx when MSI-X is off and the class is enabled.
    h.mmio_write(RP1 + 0x4a, 2, 0).unwrap();
    h.take_events();
    h.mmio_write(ROOT_CMD, 4, 0x1).unwrap();
    assert_took(
        &mut h,
        &HierarchyEvent::Interrupt {
            bus: 0,
            devfn: 0x10,
            interrupt: Interrupt::Intx { asserted: true },
        },
    );
}

#[test]
fn hot_added_functions_survive_save_and_load() {
    let mut h = guest_ready();
    h.hot_add(net("net0")).unwrap();
    let blob = state::save(&h);
    let mut fresh = hierarchy(&[]);
    state::load(&mut fresh, &blob).unwrap();
    assert_eq!(fresh.endpoint("net0"), Some(&net("net0")));
    assert_eq!(fresh.route(1, 0), Routed::Remote(0));
}

// PCI Express capability at 0x54 of rp1: Root Control 0x70, Root Status 0x74.
const RTCTL: u64 = RP1 + 0x70;
const RTSTA: u64 = RP1 + 0x74;
const PME_STATUS: u64 = 1 << 16;
const PME_PENDING: u64 = 1 << 17;

#[test]
fn pme_is_presented_queued_and_signalled_as_the_pme_service_expects() {
    let mut h = guest_ready();
    h.hot_add(EndpointSpec {
        multifunction: true,
        ..net("net0")
    })
    .unwrap();
    h.hot_add(EndpointSpec {
        id: "net1".into(),
        addr: DevFn(1),
        ..net("net1")
    })
    .unwrap();
    h.take_events();
    // PME Interrupt Enable off: recorded with the requester, no interrupt.
    h.raise_pme("net0").unwrap();
    assert_eq!(msis(&mut h), 0);
    assert_eq!(h.mmio_read(RTSTA, 4).unwrap(), PME_STATUS | 0x0100);
    // §6.1.6: enabling the interrupt while PME Status is set interrupts.
    h.mmio_write(RTCTL, 2, 0x8).unwrap();
    assert_eq!(h.mmio_read(RTCTL, 2).unwrap(), 0x8);
    assert_eq!(msis(&mut h), 1, "enable-later raises the PME interrupt");
    // A second PME waits behind the first: PME Pending, no new interrupt.
    h.raise_pme("net1").unwrap();
    assert_eq!(msis(&mut h), 0);
    assert_eq!(
        h.mmio_read(RTSTA, 4).unwrap(),
        PME_STATUS | PME_PENDING | 0x0100
    );
    // PME Pending and the requester id are read-only; writing 0 to PME Status keeps it.
    h.mmio_write(RTSTA, 4, 0x2_ffff).unwrap();
    assert_eq!(
        h.mmio_read(RTSTA, 4).unwrap(),
        PME_STATUS | PME_PENDING | 0x0100
    );
    // Clearing PME Status presents the queued one and interrupts again.
    h.mmio_write(RTSTA, 4, PME_STATUS).unwrap();
    assert_eq!(h.mmio_read(RTSTA, 4).unwrap(), PME_STATUS | 0x0101);
    assert_eq!(msis(&mut h), 1);
    h.mmio_write(RTSTA, 4, PME_STATUS).unwrap();
    assert_eq!(
        h.mmio_read(RTSTA, 4).unwrap() & (PME_STATUS | PME_PENDING),
        0
    );
    assert_eq!(msis(&mut h), 0, "nothing left to present");
    assert!(matches!(
        h.raise_pme("nope"),
        Err(HotplugError::UnknownId(_))
    ));
}

#[test]
fn pme_queue_is_bounded_and_cleared_by_reset() {
    let mut h = guest_ready();
    h.hot_add(net("net0")).unwrap();
    for _ in 0..100 {
        h.raise_pme("net0").unwrap();
    }
    let mut presented = 0;
    while h.mmio_read(RTSTA, 4).unwrap() & PME_STATUS != 0 {
        presented += 1;
        assert!(presented <= 100, "PME Status never clears");
        h.mmio_write(RTSTA, 4, PME_STATUS).unwrap();
    }
    assert_eq!(presented, 1 + crate::pci::port::PME_QUEUE_MAX);
    h.raise_pme("net0").unwrap();
    h.raise_pme("net0").unwrap();
    h.reset();
    assert!(
        h.mmio_read(RTSTA, 4).is_err(),
        "ECAM decode is off after reset"
    );
    enable_ecam(&mut h, 0xb000_0000);
    assert_eq!(h.mmio_read(RTSTA, 4).unwrap(), 0, "Root Status cleared");
}

#[test]
fn pme_uses_intx_when_msix_is_off() {
    let mut h = guest_ready();
    h.hot_add(net("net0")).unwrap();
    h.mmio_write(RP1 + 0x4a, 2, 0).unwrap(); // MSI-X off
    h.mmio_write(RTCTL, 2, 0x8).unwrap();
    h.take_events();
    let intx = |h: &mut Hierarchy| -> Vec<bool> {
        h.take_events()
            .into_iter()
            .filter_map(|e| match e {
                HierarchyEvent::Interrupt {
                    interrupt: Interrupt::Intx { asserted },
                    ..
                } => Some(asserted),
                _ => None,
            })
            .collect()
    };
    h.raise_pme("net0").unwrap();
    assert_eq!(intx(&mut h), [true]);
    assert_ne!(
        h.mmio_read(RP1 + 6, 2).unwrap() & 0x8,
        0,
        "Interrupt Status"
    );
    h.mmio_write(RTSTA, 4, PME_STATUS).unwrap();
    assert_eq!(intx(&mut h), [false], "cleared PME Status deasserts");
}

const DLLSC: u64 = 1 << 8;

#[test]
fn link_changes_are_reported_as_dll_state_changed() {
    let mut h = guest_ready();
    // Only HPIE and DLLSCE: link changes alone must interrupt.
    h.mmio_write(SLTCTL, 2, 0x1020 | 0x03c0).unwrap();
    assert_eq!(
        h.mmio_read(SLTCTL, 2).unwrap() & 0x1000,
        0x1000,
        "DLLSCE is writable"
    );
    let sta = h.mmio_read(SLTSTA, 2).unwrap();
    h.mmio_write(SLTSTA, 2, sta & 0x11f).unwrap();
    h.take_events();
    h.hot_add(net("net0")).unwrap();
    assert_eq!(msis(&mut h), 1, "DLLSC with DLLSCE+HPIE");
    let sta = h.mmio_read(SLTSTA, 2).unwrap();
    assert_eq!(sta & DLLSC, DLLSC, "Slot Status {sta:#x}");
    h.mmio_write(SLTSTA, 2, sta & 0x11f).unwrap();
    assert_eq!(h.mmio_read(SLTSTA, 2).unwrap() & DLLSC, 0, "RW1C");
    // The guest powers the slot off: the link goes down.
    h.mmio_write(SLTCTL, 2, 0x1020 | 0x0400 | 0x03c0).unwrap();
    assert_ne!(
        h.mmio_read(SLTSTA, 2).unwrap() & DLLSC,
        0,
        "link down on power-off"
    );
    assert_eq!(h.mmio_read(LNKSTA, 2).unwrap() & 0x2000, 0);
    assert_eq!(msis(&mut h), 1);
    // Surprise removal of a new card reports the link too.
    let sta = h.mmio_read(SLTSTA, 2).unwrap();
    h.mmio_write(SLTSTA, 2, sta & 0x11f).unwrap();
    h.mmio_write(SLTCTL, 2, 0x1020 | 0x0100 | 0x00c0).unwrap();
    let sta = h.mmio_read(SLTSTA, 2).unwrap();
    h.mmio_write(SLTSTA, 2, sta & 0x11f).unwrap();
    h.hot_add(net("net1")).unwrap();
    let sta = h.mmio_read(SLTSTA, 2).unwrap();
    h.mmio_write(SLTSTA, 2, sta & 0x11f).unwrap();
    h.take_events();
    h.surprise_remove("net1").unwrap();
    assert_ne!(h.mmio_read(SLTSTA, 2).unwrap() & DLLSC, 0);
    assert_eq!(msis(&mut h), 1);
    h.reset();
    enable_ecam(&mut h, 0xb000_0000);
    assert_eq!(
        h.mmio_read(SLTSTA, 2).unwrap() & DLLSC,
        0,
        "reset clears DLLSC"
    );
    assert_eq!(h.mmio_read(SLTCTL, 2).unwrap() & 0x1000, 0, "and DLLSCE");
}

#[test]
fn a_pending_slot_event_interrupts_when_its_enable_comes_later() {
    let mut h = guest_ready();
    // Hot-plug interrupts off entirely: the add is recorded, nothing fires.
    h.mmio_write(SLTCTL, 2, 0x03c0).unwrap();
    let sta = h.mmio_read(SLTSTA, 2).unwrap();
    h.mmio_write(SLTSTA, 2, sta & 0x11f).unwrap();
    h.take_events();
    h.hot_add(net("net0")).unwrap();
    assert_eq!(msis(&mut h), 0);
    assert_ne!(h.mmio_read(SLTSTA, 2).unwrap() & 0x08, 0, "PDC recorded");
    // §6.7.3.4: enabling PDCE and HPIE with PDC still set interrupts.
    h.mmio_write(SLTCTL, 2, 0x0028 | 0x03c0).unwrap();
    assert_eq!(msis(&mut h), 1);
}

#[test]
fn overlapping_requests_never_wedge_the_slot() {
    let mut h = guest_ready();
    h.hot_add(net("net0")).unwrap();
    // Removal requested before the guest handled the add: accepted (the button is a latch).
    h.request_removal("net0").unwrap();
    // An add while the removal is pending: refused, nothing changed.
    assert!(matches!(
        h.hot_add(net("net1")),
        Err(HotplugError::Slot {
            source: SlotError::Occupied,
            ..
        })
    ));
    assert_eq!(h.endpoint("net1"), None);
    // The guest completes the removal; the slot takes a new card.
    let sta = h.mmio_read(SLTSTA, 2).unwrap();
    h.mmio_write(SLTSTA, 2, sta & 0x11f).unwrap();
    h.mmio_write(SLTCTL, 2, 0x0029 | 0x0400 | 0x03c0).unwrap();
    assert_eq!(h.endpoint("net0"), None);
    // Removing what is already gone names the problem.
    assert!(matches!(
        h.request_removal("net0"),
        Err(HotplugError::UnknownId(_))
    ));
    assert!(matches!(
        h.surprise_remove("net0"),
        Err(HotplugError::UnknownId(_))
    ));
    h.mmio_write(SLTCTL, 2, 0x0029 | 0x0100 | 0x00c0).unwrap();
    h.hot_add(net("net1")).unwrap();
    assert_eq!(h.route(1, 0), Routed::Remote(0));
}

/// The functions reset and why, from the queued events (other events dropped).
fn resets(h: &mut Hierarchy) -> Vec<(String, pcierc_protocol::ResetReason)> {
    h.take_events()
        .into_iter()
        .filter_map(|e| match e {
            HierarchyEvent::FunctionReset { endpoint, reason } => Some((endpoint.id, reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn secondary_bus_reset_slot_power_off_and_platform_reset_reset_the_functions_below() {
    use pcierc_protocol::ResetReason::*;
    let mut h = guest_ready();
    h.cold_plug(net("net0")).unwrap();
    h.cold_plug(EndpointSpec {
        bus: "rp2".into(),
        ..net("blk0")
    })
    .unwrap();
    h.take_events();
    // PCI-to-PCI Bridge 1.2 §3.2.5.18: the 0 -> 1 edge of Secondary Bus Reset, rp1 only.
    h.mmio_write(RP1 + 0x3e, 2, 0x0040).unwrap();
    assert_eq!(resets(&mut h), vec![("net0".into(), SecondaryBusReset)]);
    h.mmio_write(RP1 + 0x3e, 2, 0x0040).unwrap();
    assert_eq!(resets(&mut h), vec![], "SBR held: no edge");
    h.mmio_write(RP1 + 0x3e, 2, 0).unwrap();
    assert_eq!(resets(&mut h), vec![]);
    // Power off with the power indicator on: the card stays, reset (PCIe Base 6.0 §6.7.1.8).
    let base = 0x0029 | 0x00c0; // ABPE|PDCE|HPIE, attention indicator off
    h.mmio_write(SLTCTL, 2, base | 0x0100 | 0x0400).unwrap();
    let ev = h.take_events();
    assert!(
        ev.iter().any(|e| matches!(e,
            HierarchyEvent::FunctionReset { endpoint, reason: SlotPowerOff } if endpoint.id == "net0")),
        "{ev:?}"
    );
    assert!(!ev
        .iter()
        .any(|e| matches!(e, HierarchyEvent::FunctionRemoved { .. })));
    // Power indicator off too: the card is released, a removal and no reset.
    h.mmio_write(SLTCTL, 2, base | 0x0300 | 0x0400).unwrap();
    let ev = h.take_events();
    assert!(ev
        .iter()
        .any(|e| matches!(e, HierarchyEvent::FunctionRemoved { .. })));
    assert!(!ev
        .iter()
        .any(|e| matches!(e, HierarchyEvent::FunctionReset { .. })));
    // Platform reset: every function that is left, whatever its port.
    h.reset();
    assert_eq!(resets(&mut h), vec![("blk0".into(), PlatformReset)]);
}

/// QEMU 7.2's `pcie_cap_slot_pre_plug_cb()` and `pcie_cap_slot_unplug_request_cb()`, in its
/// order: hot-plug capability, interlock, blinking power indicator, then a slot the guest keeps
/// powered off gives the card up at once, else the attention button.
#[test]
fn removal_requests_follow_qemus_slot_rules() {
    let mut h = guest_ready();
    h.hot_add(net("net0")).unwrap();
    let sta = h.mmio_read(SLTSTA, 2).unwrap();
    h.mmio_write(SLTSTA, 2, sta & 0x1f).unwrap();
    // The guest blinks the power indicator while it works on the slot: refused, nothing set.
    h.mmio_write(SLTCTL, 2, 0x0029 | 0x0200 | 0x00c0).unwrap();
    h.mmio_write(SLTSTA, 2, 0x10).unwrap();
    assert_eq!(
        h.request_removal("net0"),
        Err(HotplugError::PowerIndicatorBlinking("rp1".into()))
    );
    assert_eq!(h.mmio_read(SLTSTA, 2).unwrap() & 0x01, 0, "no button press");
    // The interlock engaged (EIC toggles EIS): removal and hot-add refused, as QEMU's EBUSY.
    h.mmio_write(SLTCTL, 2, 0x0029 | 0x0100 | 0x00c0 | 0x0800)
        .unwrap();
    assert_ne!(h.mmio_read(SLTSTA, 2).unwrap() & 0x80, 0, "EIS");
    let locked = || HotplugError::Interlocked("rp1".into());
    assert_eq!(h.request_removal("net0"), Err(locked()));
    let mut f1 = net("net1");
    f1.addr = DevFn(1);
    assert_eq!(h.hot_add(f1), Err(locked()));
    assert_eq!(
        locked().to_string(),
        "slot is electromechanically locked: Device or resource busy"
    );
    h.mmio_write(SLTCTL, 2, 0x0029 | 0x0100 | 0x00c0 | 0x0800)
        .unwrap();
    h.take_events();
    // Released: the button is pressed; the function stays until the guest powers off.
    h.request_removal("net0").unwrap();
    assert_ne!(h.mmio_read(SLTSTA, 2).unwrap() & 0x01, 0, "ABP");
    assert!(h.endpoint("net0").is_some());
    h.mmio_write(SLTCTL, 2, 0x0029 | 0x0400 | 0x03c0).unwrap();
    assert_eq!(h.endpoint("net0"), None);
    h.mmio_write(SLTSTA, 2, 0x1f).unwrap();
    // A card added to the slot the guest left powered off (PCC set, indicator off) leaves at
    // once on request: presence and link down, Presence Detect Changed, no button press.
    h.hot_add(net("net2")).unwrap();
    h.take_events();
    h.request_removal("net2").unwrap();
    assert_eq!(h.endpoint("net2"), None);
    assert_took(
        &mut h,
        &HierarchyEvent::FunctionRemoved {
            endpoint: net("net2"),
            surprise: false,
        },
    );
    assert_eq!(h.mmio_read(SLTSTA, 2).unwrap() & 0x4f, 0x08, "PDC only");
    assert_eq!(h.mmio_read(LNKSTA, 2).unwrap() & 0x2000, 0, "DLLLA down");
}

#[test]
fn ports_without_hot_plug_refuse_add_and_removal() {
    for opt in ["hotplug=off", "x-native-hotplug=off"] {
        let mut h = hierarchy(&[
            &format!("pcie-root-port,id=rp9,chassis=9,slot=9,addr=0x4,{opt}"),
            "virtio-net-pci,id=cold,bus=rp9,owner=qemu",
        ]);
        let mut e = net("net0");
        e.bus = "rp9".into();
        assert_eq!(
            h.hot_add(e.clone()),
            Err(HotplugError::HotPlugUnsupported("rp9".into())),
            "{opt}"
        );
        assert_eq!(
            h.request_removal("cold"),
            Err(HotplugError::HotUnplugUnsupported("rp9".into())),
            "{opt}"
        );
        assert_eq!(
            HotplugError::HotUnplugUnsupported("rp9".into()).to_string(),
            "Hot-unplug failed: unsupported by the port device 'rp9'"
        );
        // An emulator claiming a function before the guest runs is not a hot-plug.
        e.id = "net1".into();
        e.bus = "rp9".into();
        let mut h2 = hierarchy(&[&format!(
            "pcie-root-port,id=rp9,chassis=9,slot=9,addr=0x4,{opt}"
        )]);
        assert!(h2.cold_plug(e).is_ok(), "{opt}");
    }
}

/// QEMU 10.0 (`pc-q35-10.0`) asks the bus first: `hotplug=off` refuses both with qdev's
/// message, before the id is looked at; `x-native-hotplug=off` (Hot-Plug Capable clear,
/// `hotplug` on) still gets the slot's messages. Cold plugs stay allowed.
#[test]
fn pc_q35_10_0_refuses_hot_plug_on_hotplug_off_ports_by_bus() {
    let on_10_0 = |devices: &[&str]| {
        let mut spec = TopologySpec::embedded_default().unwrap();
        spec.machine = crate::devices::MachineType::PcQ35V10_0;
        for d in devices {
            spec.add_device_option(d).unwrap();
        }
        Hierarchy::new(spec).unwrap()
    };
    let mut h = on_10_0(&[
        "pcie-root-port,id=rp9,chassis=9,slot=9,addr=0x4,hotplug=off",
        "virtio-net-pci,id=cold,bus=rp9,owner=qemu",
    ]);
    // The id is already taken: QEMU 10.0 refuses for the bus before it checks the id.
    let mut e = net("cold");
    e.bus = "rp9".into();
    assert_eq!(
        h.hot_add(e.clone()),
        Err(HotplugError::BusNoHotplug("rp9".into()))
    );
    assert_eq!(
        h.request_removal("cold"),
        Err(HotplugError::BusNoHotplug("rp9".into()))
    );
    assert_eq!(
        HotplugError::BusNoHotplug("rp9".into()).to_string(),
        "Bus 'rp9' does not support hotplugging"
    );
    e.id = "net1".into();
    let mut h2 = on_10_0(&["pcie-root-port,id=rp9,chassis=9,slot=9,addr=0x4,hotplug=off"]);
    assert!(h2.cold_plug(e.clone()).is_ok());

    let mut h3 = on_10_0(&[
        "pcie-root-port,id=rp9,chassis=9,slot=9,addr=0x4,x-native-hotplug=off",
        "virtio-net-pci,id=cold,bus=rp9,owner=qemu",
    ]);
    assert_eq!(
        h3.hot_add(e),
        Err(HotplugError::HotPlugUnsupported("rp9".into()))
    );
    assert_eq!(
        h3.request_removal("cold"),
        Err(HotplugError::HotUnplugUnsupported("rp9".into()))
    );
}

/// QEMU 7.2 sets Data Link Layer Link Active on a plug when the plugged device has
/// `x-pcie-lnksta-dllla` (its default) or the port reports link activity: a root port's own
/// `x-pcie-lnksta-dllla=off` changes nothing (compared with QEMU in `slot_rules_vs_qemu`).
#[test]
fn link_comes_up_on_plug_whatever_the_ports_lnksta_dllla() {
    const RP9: u64 = 0xb000_0000 + (0x20 << 12);
    for opts in [
        "x-speed=2_5,x-pcie-lnksta-dllla=off",
        "x-speed=2_5",
        "x-pcie-lnksta-dllla=off",
    ] {
        let mut h = hierarchy(&[&format!(
            "pcie-root-port,id=rp9,chassis=9,slot=9,addr=0x4,{opts}"
        )]);
        enable_ecam(&mut h, 0xb000_0000);
        let mut e = net("net0");
        e.bus = "rp9".into();
        h.hot_add(e).unwrap();
        assert_eq!(
            h.mmio_read(RP9 + 0x66, 2).unwrap() & 0x2000,
            0x2000,
            "{opts}"
        );
    }
}
