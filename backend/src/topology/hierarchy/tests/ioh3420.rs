//! An `ioh3420` root port in the hierarchy: routing behind it, hot-plug into its slot, and its
//! interrupts over MSI (its capability at 0x60), as the guest's pciehp, aerdrv and PME service
//! drivers see them.

use super::*;
use crate::control::query_pci;
use crate::pci::Interrupt;
use crate::topology::hierarchy::HierarchyEvent;
use crate::topology::DevFn;

/// The port at 00:03.0.
const DEVFN: u8 = 0x18;
const RP: u64 = 0xb000_0000 + ((DEVFN as u64) << 12);
// MSI at 0x60: flags 0x62, address 0x64, data 0x68, mask bits 0x6c, pending bits 0x70.
const MSI_FLAGS: u64 = RP + 0x62;
const MSI_MASK: u64 = RP + 0x6c;
const MSI_PENDING: u64 = RP + 0x70;
// PCI Express capability at 0x90: Slot Control 0x90+0x18, Slot Status 0x90+0x1a, Root Control
// 0x90+0x1c. AER at 0x100: Root Error Command 0x12c, Root Error Status 0x130.
const SLTCTL: u64 = RP + 0xa8;
const SLTSTA: u64 = RP + 0xaa;
const RTCTL: u64 = RP + 0xac;
const ROOT_CMD: u64 = RP + 0x12c;
const ROOT_STATUS: u64 = RP + 0x130;

fn net(id: &str) -> EndpointSpec {
    EndpointSpec {
        id: id.into(),
        driver: "virtio-net-pci".into(),
        bus: "rp5".into(),
        addr: DevFn(0),
        owner: "qemu".into(),
        multifunction: false,
    }
}

/// Firmware and pciehp setup: ECAM, bus 5 behind the port, MSI with two vectors programmed and
/// enabled, hot-plug interrupts enabled (HPIE, PDCE, ABPE).
fn guest_ready() -> Hierarchy {
    let mut h = hierarchy(&["ioh3420,id=rp5,chassis=5,slot=5,addr=0x3.0"]);
    enable_ecam(&mut h, 0xb000_0000);
    h.mmio_write(RP + 0x18, 4, 0x0005_0500).unwrap();
    h.mmio_write(RP + 4, 2, 0x4).unwrap();
    h.mmio_write(RP + 0x64, 4, 0xfee0_1000).unwrap();
    h.mmio_write(RP + 0x68, 2, 0x4030).unwrap();
    h.mmio_write(MSI_FLAGS, 2, 0x0011).unwrap(); // Enable, two vectors
    h.mmio_write(SLTCTL, 2, 0x0029 | 0x03c0).unwrap();
    h.mmio_write(SLTSTA, 2, 0x10).unwrap();
    h.take_events();
    h
}

fn msis(h: &mut Hierarchy) -> Vec<(u16, u32)> {
    h.take_events()
        .iter()
        .filter_map(|e| match e {
            HierarchyEvent::Interrupt {
                bus: 0,
                devfn: DEVFN,
                interrupt:
                    Interrupt::Msi {
                        vector,
                        address: 0xfee0_1000,
                        data,
                    },
            } => Some((*vector, *data)),
            _ => None,
        })
        .collect()
}

#[test]
fn the_port_is_an_ioh3420_at_its_address() {
    let mut h = guest_ready();
    assert_eq!(h.mmio_read(RP, 4), Ok(0x3420_8086));
    assert_eq!(h.config_read(0, DEVFN, 0x08, 4), Ok(0x0604_0002));
    assert!(h.ports()[4].bars().is_empty(), "no MSI-X BAR");
    let info = query_pci::from_hierarchy(&h);
    let json = query_pci::to_json(&info).to_string();
    assert!(json.contains("\"qdev_id\":\"rp5\""), "{json}");
    assert!(
        json.contains("\"vendor\":32902"),
        "8086 in query-pci: {json}"
    );
}

#[test]
fn hot_add_signals_msi_and_routes_behind_the_port() {
    let mut h = guest_ready();
    assert_eq!(h.route(5, 0), Routed::Absent, "empty slot");
    h.hot_add(net("net0")).unwrap();
    assert_eq!(msis(&mut h), vec![(0, 0x4030)], "PDC: vector 0");
    assert_eq!(h.mmio_read(SLTSTA, 2).unwrap() & 0x48, 0x48);
    assert_eq!(
        h.route(5, 0),
        Routed::Remote(0),
        "the function answers behind rp5"
    );
    // Masked: the event pends in the pending bits and is sent when unmasked.
    h.mmio_write(MSI_MASK, 4, 1).unwrap();
    h.mmio_write(SLTSTA, 2, 0x0109).unwrap(); // clear DLLSC, PDC, ABP
    h.take_events();
    h.request_removal("net0").unwrap(); // the attention button
    assert_eq!(msis(&mut h), vec![]);
    assert_eq!(h.mmio_read(MSI_PENDING, 4), Ok(1));
    assert_eq!(h.msi_route(0, DEVFN, 0), Some((0xfee0_1000, 0x4030, true)));
    h.mmio_write(MSI_MASK, 4, 0).unwrap();
    assert_eq!(msis(&mut h), vec![(0, 0x4030)]);
    assert_eq!(h.mmio_read(MSI_PENDING, 4), Ok(0));
    assert_eq!(h.msi_route(0, DEVFN, 1), Some((0xfee0_1000, 0x4031, false)));
    assert_eq!(h.msi_route(0, DEVFN, 2), None);
}

#[test]
fn aer_uses_the_second_vector_and_pme_the_first() {
    let mut h = guest_ready();
    h.hot_add(net("net0")).unwrap();
    h.take_events();
    assert_eq!(h.mmio_read(ROOT_STATUS, 4).unwrap() >> 27, 1);
    h.mmio_write(ROOT_CMD, 4, 0x1).unwrap();
    h.take_events();
    h.report_error(
        5,
        0,
        crate::pci::AerError {
            severity: crate::pci::ErrorSeverity::Correctable,
            status: 1,
            requester: 0,
            header_log: [0; 4],
        },
    )
    .unwrap();
    assert_eq!(msis(&mut h), vec![(1, 0x4031)], "AER: vector 1 of 2");
    assert_eq!(h.mmio_read(ROOT_STATUS, 4).unwrap() & 0x1, 1);
    h.mmio_write(RTCTL, 2, 0x8).unwrap(); // PME Interrupt Enable
    h.raise_pme("net0").unwrap();
    assert_eq!(msis(&mut h), vec![(0, 0x4030)], "PME: vector 0");
}
