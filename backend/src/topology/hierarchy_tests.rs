//! Routing tests: configuration mechanism #1, ECAM through PCIEXBAR, bus numbers, remote
//! functions and BARs, driven through the same entry points the service uses.

use super::*;
use crate::pci::{ErrorSeverity, SlotError};
use crate::topology::state;

fn hierarchy(devices: &[&str]) -> Hierarchy {
    let mut spec = TopologySpec::embedded_default().unwrap();
    for d in devices {
        spec.add_device_option(d).unwrap();
    }
    Hierarchy::new(spec).unwrap()
}

fn cf8(bus: u8, devfn: u8, reg: u8) -> u64 {
    0x8000_0000 | u64::from(bus) << 16 | u64::from(devfn) << 8 | u64::from(reg)
}

fn enable_ecam(h: &mut Hierarchy, base: u32) -> Effects {
    h.pio_write(0xcf8, 4, cf8(0, 0, 0x60)).unwrap();
    h.pio_write(0xcfc, 4, u64::from(base | 1)).unwrap()
}

#[test]
fn mechanism_1_reads_and_floats() {
    let mut h = hierarchy(&[]);
    h.pio_write(0xcf8, 4, cf8(0, 0x10, 0)).unwrap();
    assert_eq!(h.pio_read(0xcf8, 4), Ok(cf8(0, 0x10, 0)));
    assert_eq!(h.pio_read(0xcfc, 4), Ok(0x000c_1b36), "rp1 at 00:02.0");
    assert_eq!(h.pio_read(0xcfe, 2), Ok(0x000c));
    assert_eq!(h.pio_read(0xcfd, 2), Ok(0x0c1b), "unaligned: byte by byte");
    assert_eq!(
        h.pio_read(0xcfd, 4),
        Ok(0xff00_0c1b),
        "bytes past 0xCFF float high"
    );
    // Non-dword accesses to CONFIG_ADDRESS are not configuration cycles; 0xCF9 is ICH9's.
    assert_eq!(h.pio_read(0xcf9, 1), Err(Status::NoDevice));
    assert_eq!(h.pio_write(0xcf8, 1, 0), Err(Status::NoDevice));
    assert_eq!(
        h.pio_read(0xcf8, 4),
        Ok(cf8(0, 0x10, 0)),
        "byte write did not latch"
    );
    // Bit 31 clear: all ones, writes dropped.
    h.pio_write(0xcf8, 4, 0x0000_1000).unwrap();
    assert_eq!(h.pio_read(0xcfc, 4), Ok(0xffff_ffff));
    // Absent function.
    h.pio_write(0xcf8, 4, cf8(0, 0x18, 0)).unwrap();
    assert_eq!(h.pio_read(0xcfc, 4), Ok(0xffff_ffff));
    // Not ours at all.
    assert_eq!(h.pio_read(0x60, 1), Err(Status::NoDevice));
    assert_eq!(h.pio_read(0xcfc, 8), Err(Status::Invalid));
}

#[test]
fn pciexbar_enables_moves_and_disables_ecam() {
    let mut h = hierarchy(&[]);
    assert_eq!(h.ecam(), None);
    let g0 = h.generation();
    assert!(enable_ecam(&mut h, 0xb000_0000).contains(Effects::ECAM));
    assert_eq!(h.ecam(), Some((0xb000_0000, 256 << 20, 255)));
    assert!(h.generation() > g0);
    assert_eq!(h.mmio_read(0xb000_0000, 4), Ok(0x29c0_8086));
    assert_eq!(h.mmio_read(0xb001_0000, 4), Ok(0x000c_1b36), "00:02.0");
    assert_eq!(
        h.mmio_read(0xb001_0000, 8),
        Ok(0x0010_0000_000c_1b36),
        "qword = two dwords"
    );
    // 64 MiB at 0xe0000000 (length bits 2:1 = 10).
    h.pio_write(0xcfc, 4, 0xe000_0005).unwrap();
    assert_eq!(h.ecam(), Some((0xe000_0000, 64 << 20, 63)));
    assert_eq!(
        h.mmio_read(0xb000_0000, 4),
        Err(Status::NoDevice),
        "old window gone"
    );
    assert_eq!(h.mmio_read(0xe000_0000, 4), Ok(0x29c0_8086));
    // Disable.
    h.pio_write(0xcfc, 4, 0xe000_0004).unwrap();
    assert_eq!(h.ecam(), None);
}

#[test]
fn bus_numbers_route_to_the_function_behind_the_port() {
    let mut h = hierarchy(&[
        "virtio-net-pci,id=net0,bus=rp2,owner=qemu",
        "ich9-lpc,id=lpc,bus=pcie.0,addr=1f.0,owner=qemu",
    ]);
    enable_ecam(&mut h, 0xb000_0000);
    let at = |bus: u64, devfn: u64| 0xb000_0000 + (bus << 20) + (devfn << 12);
    assert_eq!(
        h.mmio_read(at(0, 0xf8), 4),
        Err(Status::Remote),
        "LPC is QEMU's"
    );
    assert_eq!(h.mmio_read(at(5, 0), 4), Ok(0xffff_ffff), "no bus 5 yet");
    // rp2 (00:02.1): primary 0, secondary 5, subordinate 7.
    let fx = h.mmio_write(at(0, 0x11) + 0x18, 4, 0x0007_0500).unwrap();
    assert!(fx.contains(Effects::BUS_NUMBERS));
    assert_eq!(h.route(5, 0), Routed::Remote(0));
    assert_eq!(h.mmio_read(at(5, 0), 4), Err(Status::Remote));
    assert_eq!(
        h.route(5, 0x08),
        Routed::Absent,
        "only device 0 below a root port"
    );
    assert_eq!(
        h.route(6, 0),
        Routed::Remote(0),
        "buses below belong to the owner of 05:00.0"
    );
    assert_eq!(h.route(8, 0), Routed::Absent);
    let t = h.describe();
    let net = t
        .functions
        .iter()
        .find(|f| f.kind == pcierc_protocol::FunctionKind::Endpoint as u8)
        .unwrap();
    assert_eq!((net.bus, net.parent), (5, 2));
    // Renumbering moves it.
    h.mmio_write(at(0, 0x11) + 0x19, 1, 9).unwrap();
    h.mmio_write(at(0, 0x11) + 0x1a, 1, 9).unwrap();
    assert_eq!(h.route(5, 0), Routed::Absent);
    assert_eq!(h.route(9, 0), Routed::Remote(0));
}

#[test]
fn msix_bar_is_routed_when_programmed_and_enabled() {
    let mut h = hierarchy(&[]);
    enable_ecam(&mut h, 0xb000_0000);
    let rp1 = 0xb000_0000u64 + (0x10 << 12);
    h.mmio_write(rp1 + 0x10, 4, 0xfe00_0000).unwrap();
    assert_eq!(
        h.mmio_read(0xfe00_0000, 4),
        Err(Status::NoDevice),
        "memory decode off"
    );
    let fx = h.mmio_write(rp1 + 4, 2, 0x2).unwrap();
    assert!(fx.contains(Effects::BARS));
    h.mmio_write(0xfe00_0000 + 8, 4, 0x4321).unwrap(); // vector 0 message data
    assert_eq!(h.mmio_read(0xfe00_0000 + 8, 4), Ok(0x4321));
    assert_eq!(
        h.mmio_read(0xfe00_0000 + 0x1000, 4),
        Err(Status::NoDevice),
        "past the 4 KiB BAR"
    );
}

#[test]
fn reset_and_state_round_trip() {
    let mut h = hierarchy(&[]);
    enable_ecam(&mut h, 0xb000_0000);
    h.mmio_write(0xb001_0018, 4, 0x0003_0300).unwrap();
    let blob = state::save(&h);
    let before: Vec<u32> = (0..1024)
        .map(|i| h.config_read(0, 0x10, i * 4, 4).unwrap())
        .collect();
    h.reset();
    assert_eq!(h.ecam(), None);
    assert_eq!(h.config_read(0, 0x10, 0x18, 4), Ok(0));
    state::load(&mut h, &blob).unwrap();
    let after: Vec<u32> = (0..1024)
        .map(|i| h.config_read(0, 0x10, i * 4, 4).unwrap())
        .collect();
    assert_eq!(before, after);
    assert_eq!(h.route(3, 0), Routed::Absent);
    assert_eq!(h.ecam(), Some((0xb000_0000, 256 << 20, 255)));
    // A blob for another topology is refused and changes nothing.
    let other = Hierarchy::new(TopologySpec::empty()).unwrap();
    let e = state::load(&mut h, &state::save(&other))
        .unwrap_err()
        .to_string();
    assert!(e.contains("this topology has"), "{e}");
    assert_eq!(h.config_read(0, 0x10, 0x18, 4), Ok(0x0003_0300));
}

#[test]
fn every_access_shape_is_answered_without_panicking() {
    let mut h = hierarchy(&["x,id=ep,bus=rp1,owner=qemu"]);
    enable_ecam(&mut h, 0xb000_0000);
    h.mmio_write(0xb001_0018, 4, 0x00ff_0100).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..200_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let width = [1u8, 2, 3, 4, 8, 0][(x % 6) as usize];
        let addr = 0xb000_0000 + (x >> 8) % (4 << 20);
        let port = 0xcf6 + (x >> 40) % 12;
        let _ = match (x >> 60) % 4 {
            0 => h.mmio_read(addr, width).map(drop),
            1 => h.mmio_write(addr, width, x).map(drop),
            2 => h.pio_read(port, width).map(drop),
            _ => h.pio_write(port, width, x >> 3).map(drop),
        };
        let _ = h.config_read(
            (x >> 16) as u8,
            (x >> 24) as u8,
            ((x >> 32) & 0x1fff) as u16,
            width,
        );
    }
    // The MCH identity never changes, whatever was written.
    assert_eq!(h.config_read(0, 0, 0, 4), Ok(0x29c0_8086));
}

mod hotplug {
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

    fn msis(h: &mut Hierarchy) -> usize {
        h.take_events()
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    HierarchyEvent::Interrupt {
                        devfn: 0x10,
                        interrupt: Interrupt::Msi {
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
        let ev = h.take_events();
        assert!(
            ev.contains(&HierarchyEvent::FunctionAdded {
                endpoint: net("net0")
            }),
            "{ev:?}"
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
        // The guest acknowledges PDC (W1C).
        h.mmio_write(SLTSTA, 2, 0x08).unwrap();
        assert_eq!(h.mmio_read(SLTSTA, 2).unwrap() & 0x08, 0);
        h.take_events();
        // Operator asks for removal: Attention Button Pressed, interrupt.
        h.request_removal("net0").unwrap();
        assert_eq!(msis(&mut h), 1);
        assert!(matches!(
            h.request_removal("net0"),
            Err(HotplugError::Slot {
                source: SlotError::RemovalPending,
                ..
            })
        ));
        // pciehp: clear ABP, then power the slot off (PCC=1, power indicator off).
        h.mmio_write(SLTSTA, 2, 0x01).unwrap();
        assert_eq!(
            h.endpoint("net0").map(|e| e.id.as_str()),
            Some("net0"),
            "still there until powered off"
        );
        h.mmio_write(SLTCTL, 2, 0x0029 | 0x0400 | 0x0300 | 0x00c0)
            .unwrap();
        let ev = h.take_events();
        assert!(
            ev.contains(&HierarchyEvent::FunctionRemoved {
                endpoint: net("net0"),
                surprise: false
            }),
            "{ev:?}"
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
        let ev = h.take_events();
        assert!(
            ev.contains(&HierarchyEvent::Interrupt {
                devfn: 0x10,
                interrupt: Interrupt::Intx { asserted: true }
            }),
            "{ev:?}"
        );
        h.mmio_write(SLTSTA, 2, 0x18).unwrap(); // clear PDC (and CC): INTx drops
        assert!(h.take_events().contains(&HierarchyEvent::Interrupt {
            devfn: 0x10,
            interrupt: Interrupt::Intx { asserted: false }
        }));
        h.surprise_remove("net0").unwrap();
        let ev = h.take_events();
        assert!(
            ev.contains(&HierarchyEvent::FunctionRemoved {
                endpoint: net("net0"),
                surprise: true
            }),
            "{ev:?}"
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
        let e = h.hot_add(dup).unwrap_err().to_string();
        assert!(e.contains("'rp2' is used twice"), "{e}");
        let f1 = EndpointSpec {
            addr: DevFn(1),
            ..net("x")
        };
        assert!(h
            .hot_add(f1)
            .unwrap_err()
            .to_string()
            .contains("add function 0"));
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
        let ev = h.take_events();
        assert!(
            ev.contains(&HierarchyEvent::Interrupt {
                devfn: 0x10,
                interrupt: Interrupt::Intx { asserted: true }
            }),
            "{ev:?}"
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
}
