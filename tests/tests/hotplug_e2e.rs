//! Hot-plug and interrupts end to end through the real `pcierc` process: a VMM frontend plays
//! the guest's firmware and pciehp driver with forwarded ECAM accesses, and gets the port's
//! MSI-X messages on its backend channel; the owner of the function behind the port (a frontend
//! named "qemu") is told when the guest releases the slot, and reports errors and PMEs for it.

use std::time::Duration;

use pcierc_protocol::{
    decode_name, Frontend, FrontendOptions, FunctionKind, LayoutChanges, MsiMessage, Notification,
};
use pcierc_tests::process::Backend;

const ECAM: u64 = 0xb000_0000;
const RP1: u64 = ECAM + (0x10 << 12); // 00:02.0
const SLTCTL: u64 = RP1 + 0x6c;
const SLTSTA: u64 = RP1 + 0x6e;
const TABLE: u64 = 0xfe00_0000;

fn next(
    ch: &mut pcierc_protocol::BackendChannel,
    want: impl Fn(&Notification) -> bool,
) -> Notification {
    loop {
        match ch.recv_timeout(Duration::from_secs(5)) {
            Ok(Some(n)) if want(&n) => return n,
            Ok(Some(_)) => continue,
            other => panic!("expected a notification, got {other:?}"),
        }
    }
}

/// Firmware: ECAM, bus 1 behind rp1, rp1's MSI-X BAR, memory decode.
fn firmware(vmm: &mut Frontend) {
    vmm.pio_write(0xcf8, 4, 0x8000_0060).unwrap();
    vmm.pio_write(0xcfc, 4, ECAM | 1).unwrap();
    vmm.mmio_write(RP1 + 0x18, 4, 0x0001_0100).unwrap();
    vmm.mmio_write(RP1 + 0x10, 4, TABLE).unwrap();
    vmm.mmio_write(RP1 + 4, 2, 0x6).unwrap();
}

#[test]
fn msi_reaches_the_vmm_and_slot_power_off_releases_the_function_to_its_owner() {
    let b = Backend::start(&["--device", "virtio-net-pci,id=net0,bus=rp1,owner=qemu"]);
    let mut owner = Frontend::connect(&b.socket, FrontendOptions::vmm("qemu")).expect("owner");
    let mut owner_ch = owner.take_backend_channel().expect("owner channel");
    let mut vmm = Frontend::connect(&b.socket, FrontendOptions::vmm("vmm")).expect("vmm");
    let mut irqs = vmm.take_backend_channel().expect("vmm channel");

    firmware(&mut vmm);
    // The declared function is present from power-on.
    assert_ne!(
        vmm.mmio_read(SLTSTA, 2).unwrap() & 0x40,
        0,
        "Presence Detect State"
    );
    // pciehp: MSI-X vector 0, then Command Completed and hot-plug interrupts enabled.
    vmm.mmio_write(TABLE, 8, 0xfee0_2000).unwrap();
    vmm.mmio_write(TABLE + 8, 4, 0x4055).unwrap();
    vmm.mmio_write(TABLE + 12, 4, 0).unwrap();
    vmm.mmio_write(RP1 + 0x4a, 2, 0x8000).unwrap();
    vmm.mmio_write(SLTCTL, 2, 0x0039).unwrap(); // ABPE|PDCE|CCIE|HPIE, power on
    let msi = next(&mut irqs, |n| matches!(n, Notification::Msi(_)));
    assert_eq!(
        msi,
        Notification::Msi(MsiMessage {
            address: 0xfee0_2000,
            data: 0x4055,
            segment: 0,
            bus: 0,
            devfn: 0x10
        }),
        "Command Completed with CCIE+HPIE sends vector 0 as programmed"
    );
    vmm.mmio_write(SLTSTA, 2, 0x10).unwrap();
    // The guest powers the slot off (PCC=1, power indicator off): the owner loses net0.
    vmm.mmio_write(SLTCTL, 2, 0x0039 | 0x0400 | 0x0300).unwrap();
    let gone = next(&mut owner_ch, |n| {
        matches!(n, Notification::FunctionRemoved(_))
    });
    let Notification::FunctionRemoved(rec) = gone else {
        unreachable!()
    };
    assert_eq!(decode_name(&rec.id), Some("net0"));
    assert_eq!(
        (rec.kind, rec.bus, rec.devfn),
        (FunctionKind::Endpoint as u8, 1, 0)
    );
    // Everyone sees the layout change; net0 is no longer in the topology.
    let lc = next(
        &mut irqs,
        |n| matches!(n, Notification::LayoutChanged { changes, .. } if changes.contains(LayoutChanges::FUNCTIONS)),
    );
    let Notification::LayoutChanged { topology, .. } = lc else {
        unreachable!()
    };
    assert!(topology
        .functions
        .iter()
        .all(|f| f.kind != FunctionKind::Endpoint as u8));
    assert_eq!(
        vmm.mmio_read(ECAM + (1 << 20), 4).unwrap(),
        0xffff_ffff,
        "01:00.0 is gone"
    );
    // The VMM is not the owner: it got no FunctionRemoved.
    while let Ok(Some(n)) = irqs.recv_timeout(Duration::from_millis(200)) {
        assert!(!matches!(n, Notification::FunctionRemoved(_)), "{n:?}");
    }
}

#[test]
fn owner_reports_an_error_and_a_pme_and_the_vmm_gets_the_root_port_interrupts() {
    use pcierc_protocol::{ErrorReport, Status};
    let b = Backend::start(&["--device", "virtio-net-pci,id=net0,bus=rp1,owner=qemu"]);
    let mut owner = Frontend::connect(&b.socket, FrontendOptions::vmm("qemu")).expect("owner");
    let mut vmm = Frontend::connect(&b.socket, FrontendOptions::vmm("vmm")).expect("vmm");
    let mut irqs = vmm.take_backend_channel().expect("vmm channel");
    firmware(&mut vmm);
    vmm.mmio_write(TABLE, 8, 0xfee0_3000).unwrap();
    vmm.mmio_write(TABLE + 8, 4, 0x4077).unwrap();
    vmm.mmio_write(TABLE + 12, 4, 0).unwrap();
    vmm.mmio_write(RP1 + 0x4a, 2, 0x8000).unwrap();
    // Root Error Command: all classes. Then a fatal error detected by 01:00.0 (Completion
    // Timeout, bit 14).
    vmm.mmio_write(RP1 + 0x12c, 4, 0x7).unwrap();
    let report = ErrorReport {
        bus: 1,
        devfn: 0,
        severity: 2,
        status: 1 << 14,
        ..Default::default()
    };
    // Only the owner may report it.
    assert_eq!(
        vmm.report_error(&report).unwrap_err().status(),
        Some(Status::Permission)
    );
    owner.report_error(&report).unwrap();
    let msi = next(&mut irqs, |n| matches!(n, Notification::Msi(_)));
    assert_eq!(
        msi,
        Notification::Msi(MsiMessage {
            address: 0xfee0_3000,
            data: 0x4077,
            segment: 0,
            bus: 0,
            devfn: 0x10
        })
    );
    let rs = vmm.mmio_read(RP1 + 0x130, 4).unwrap();
    assert_eq!(
        rs & 0x7f,
        0x54,
        "UE received, first uncorrectable fatal, fatal received"
    );
    assert_eq!(
        vmm.mmio_read(RP1 + 0x134, 4).unwrap() >> 16,
        0x0100,
        "source 01:00.0"
    );
    // Nothing lives at 02:00.0: refused.
    let nobody = ErrorReport { bus: 2, ..report };
    assert_eq!(
        owner.report_error(&nobody).unwrap_err().status(),
        Some(Status::NoDevice)
    );
    // PME from 01:00.0 with Root Control PME Interrupt Enable: Root Status and vector 0.
    vmm.mmio_write(RP1 + 0x70, 2, 0x8).unwrap();
    assert_eq!(
        vmm.raise_pme(0, 1, 0).unwrap_err().status(),
        Some(Status::Permission)
    );
    owner.raise_pme(0, 1, 0).unwrap();
    assert!(matches!(
        next(&mut irqs, |n| matches!(n, Notification::Msi(_))),
        Notification::Msi(MsiMessage { data: 0x4077, .. })
    ));
    assert_eq!(
        vmm.mmio_read(RP1 + 0x74, 4).unwrap(),
        0x0001_0100,
        "PME Status, requester 01:00.0"
    );
}

#[test]
fn an_interrupt_eventfd_replaces_the_msi_message_and_routes_follow_the_table() {
    use pcierc_protocol::{MsiRoute, Status};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
    let b = Backend::start(&[]);
    let mut vmm = Frontend::connect(&b.socket, FrontendOptions::vmm("vmm")).expect("vmm");
    let mut ch = vmm.take_backend_channel().expect("vmm channel");
    let efd = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    // rp1 (00:02.0) has one MSI-X vector, as QEMU's root ports.
    for (bus, devfn, vector) in [(0, 0x10, 1), (1, 0, 0), (0, 0x00, 0)] {
        assert_eq!(
            vmm.set_interrupt_fd(0, bus, devfn, vector, Some(&efd))
                .unwrap_err()
                .status(),
            Some(Status::NoDevice),
            "{bus:02x}:{devfn:02x} vector {vector}"
        );
    }
    vmm.set_interrupt_fd(0, 0, 0x10, 0, Some(&efd)).unwrap();
    let route = |ch: &mut pcierc_protocol::BackendChannel| match next(ch, |n| {
        matches!(n, Notification::MsiRoute(_))
    }) {
        Notification::MsiRoute(r) => r,
        _ => unreachable!(),
    };
    let r = route(&mut ch);
    assert_eq!(
        (r.devfn, r.vector, r.masked),
        (0x10, 0, 1),
        "at registration: MSI-X is off"
    );
    vmm.pio_write(0xcf8, 4, 0x8000_0060).unwrap();
    vmm.pio_write(0xcfc, 4, ECAM | 1).unwrap();
    vmm.mmio_write(RP1 + 0x10, 4, TABLE).unwrap();
    vmm.mmio_write(RP1 + 4, 2, 0x6).unwrap();
    vmm.mmio_write(TABLE, 8, 0xfee0_5000).unwrap();
    assert_eq!(
        route(&mut ch).address,
        0xfee0_5000,
        "the guest wrote the address"
    );
    vmm.mmio_write(TABLE + 8, 4, 0x40aa).unwrap();
    assert_eq!(route(&mut ch).data, 0x40aa);
    vmm.mmio_write(TABLE + 12, 4, 0).unwrap();
    vmm.mmio_write(RP1 + 0x4a, 2, 0x8000).unwrap();
    assert_eq!(
        route(&mut ch),
        MsiRoute {
            address: 0xfee0_5000,
            data: 0x40aa,
            segment: 0,
            bus: 0,
            devfn: 0x10,
            vector: 0,
            masked: 0,
            reserved: [0; 5]
        },
        "unmasked once MSI-X is enabled"
    );
    // Command Completed with CCIE|HPIE: the eventfd fires, no Msi message is sent.
    vmm.mmio_write(SLTCTL, 2, 0x0030).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let count = loop {
        match efd.read() {
            Ok(n) => break n,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("the eventfd never fired: {e}"),
        }
    };
    assert_eq!(count, 1);
    while let Ok(Some(n)) = ch.recv_timeout(Duration::from_millis(200)) {
        assert!(!matches!(n, Notification::Msi(_)), "{n:?}");
    }
    // Unregistered: the next one is a message again.
    vmm.set_interrupt_fd(0, 0, 0x10, 0, None).unwrap();
    vmm.mmio_write(SLTSTA, 2, 0x10).unwrap();
    vmm.mmio_write(SLTCTL, 2, 0x0030).unwrap();
    assert!(matches!(
        next(&mut ch, |n| matches!(n, Notification::Msi(_))),
        Notification::Msi(MsiMessage { data: 0x40aa, .. })
    ));
    assert!(efd.read().is_err(), "nothing more on the eventfd");
}
