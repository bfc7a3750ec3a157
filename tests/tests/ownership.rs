//! Several emulators, one hierarchy: emulators claim functions behind pcierc's root ports and
//! release them through the protocol; conflicting claims are refused with a status that says
//! why; every frontend hears of the layout change and only the owner may release.

use std::time::Duration;

use pcierc_protocol::{
    decode_name, BackendChannel, Frontend, FrontendOptions, LayoutChanges, Notification, Status,
};
use pcierc_tests::process::Backend;

const ECAM: u64 = 0xb000_0000;
const RP2: u64 = ECAM + (0x11 << 12); // 00:02.1
const RP3: u64 = ECAM + (0x12 << 12); // 00:02.2

fn next(ch: &mut BackendChannel, want: impl Fn(&Notification) -> bool) -> Notification {
    loop {
        match ch.recv_timeout(Duration::from_secs(5)) {
            Ok(Some(n)) if want(&n) => return n,
            Ok(Some(_)) => continue,
            other => panic!("expected a notification, got {other:?}"),
        }
    }
}

fn status(r: pcierc_protocol::Result<()>) -> Option<Status> {
    r.err().and_then(|e| e.status())
}

#[test]
fn emulators_claim_and_release_functions_behind_the_root_ports() {
    let b = Backend::start(&[]);
    let mut vmm = Frontend::connect(&b.socket, FrontendOptions::vmm("vmm")).unwrap();
    let mut layout = vmm.take_backend_channel().unwrap();
    let mut gpu = Frontend::connect(&b.socket, FrontendOptions::vmm("gpu-dm")).unwrap();
    let mut gpu_ch = gpu.take_backend_channel().unwrap();
    let mut qemu = Frontend::connect(&b.socket, FrontendOptions::vmm("qemu")).unwrap();
    vmm.pio_write(0xcf8, 4, 0x8000_0060).unwrap();
    vmm.pio_write(0xcfc, 4, ECAM | 1).unwrap();
    vmm.mmio_write(RP2 + 0x18, 4, 0x0002_0200).unwrap();
    vmm.mmio_write(RP3 + 0x18, 4, 0x0003_0300).unwrap();

    // The GPU's device model claims its function before the guest runs: present from power-on.
    gpu.claim_function("rp2", "gpu0", "vfio-pci", 0, true, false)
        .unwrap();
    let n = next(
        &mut layout,
        |n| matches!(n, Notification::LayoutChanged { changes, .. } if changes.contains(LayoutChanges::FUNCTIONS)),
    );
    let Notification::LayoutChanged { topology, .. } = n else {
        unreachable!()
    };
    let rec = topology
        .functions
        .iter()
        .find(|f| decode_name(&f.id) == Some("gpu0"))
        .expect("gpu0 in the layout");
    assert_eq!(decode_name(&rec.owner), Some("gpu-dm"));
    assert_eq!((rec.bus, rec.devfn), (2, 0));
    assert!(matches!(
        next(&mut gpu_ch, |n| matches!(n, Notification::FunctionAdded(_))),
        Notification::FunctionAdded(_)
    ));
    let sta = vmm.mmio_read(RP2 + 0x6e, 2).unwrap();
    assert_eq!(
        sta & 0x48,
        0x40,
        "present, no Presence Detect Changed: {sta:#x}"
    );
    assert_eq!(
        vmm.mmio_read(RP2 + 0x6c, 2).unwrap() & 0x0700,
        0x0100,
        "powered, power indicator on"
    );
    // Config accesses to it are "not mine": the VMM forwards them to gpu-dm.
    assert_eq!(
        vmm.mmio_read(ECAM + (2 << 20), 4).unwrap_err().status(),
        Some(Status::Remote)
    );

    // Conflicts are refused and change nothing.
    assert_eq!(
        status(qemu.claim_function("rp2", "net0", "e1000e", 0, false, false)),
        Some(Status::Busy),
        "rp2's slot is taken"
    );
    assert_eq!(
        status(qemu.claim_function("rp3", "gpu0", "e1000e", 0, false, false)),
        Some(Status::Exists),
        "the id is taken"
    );
    assert_eq!(
        status(qemu.claim_function("rp9", "net0", "e1000e", 0, false, false)),
        Some(Status::NoDevice)
    );
    assert_eq!(
        status(qemu.claim_function("rp3", "net0", "e1000e", 1, false, false)),
        Some(Status::Invalid),
        "function 1 before function 0"
    );
    assert_eq!(
        status(qemu.release_function("gpu0", true)),
        Some(Status::Permission),
        "only the owner releases"
    );

    // QEMU hot-adds its NIC behind rp3 while the guest runs: the guest sees the card arrive.
    qemu.claim_function("rp3", "net0", "e1000e", 0, false, false)
        .unwrap();
    assert_ne!(vmm.mmio_read(RP3 + 0x6e, 2).unwrap() & 0x08, 0, "PDC");
    // rp3's slot was empty at reset, so powered off (Power Controller Control set): the card
    // does not answer until the guest powers the slot on, as Linux's pciehp does (QEMU 7.2 in
    // the recorded Linux session of linux_replay.rs keeps Slot Control 0x7f1 after its hot-add).
    let sltctl = vmm.mmio_read(RP3 + 0x6c, 2).unwrap();
    assert_ne!(
        sltctl & 0x0400,
        0,
        "empty slot powered off at reset: {sltctl:#x}"
    );
    assert_eq!(vmm.mmio_read(ECAM + (3 << 20), 4).unwrap(), 0xffff_ffff);
    // PCIe Base 6.0 §7.5.3.10: Power Controller Control 0 (on), Power Indicator on.
    vmm.mmio_write(RP3 + 0x6c, 2, (sltctl & !0x0700) | 0x0100)
        .unwrap();
    assert_eq!(
        vmm.mmio_read(ECAM + (3 << 20), 4).unwrap_err().status(),
        Some(Status::Remote)
    );
    // Off again (Power Controller Control 1, the card left in): all ones, writes dropped;
    // pcierc's snapshot routing says the same (asked of QEMU 7.2 with qtest: a powered e1000e
    // below a port reads 0x10d38086, after Slot Control |= 0x400 0xffffffff).
    let on = vmm.mmio_read(RP3 + 0x6c, 2).unwrap();
    vmm.mmio_write(RP3 + 0x6c, 2, on | 0x0400).unwrap();
    assert_eq!(vmm.mmio_read(ECAM + (3 << 20), 4).unwrap(), 0xffff_ffff);
    vmm.mmio_write(RP3 + 0x6c, 2, on).unwrap();
    assert_eq!(
        vmm.mmio_read(ECAM + (3 << 20), 4).unwrap_err().status(),
        Some(Status::Remote)
    );

    // The GPU's model leaves at once (surprise): it is told, and the slot is empty.
    gpu.release_function("gpu0", true).unwrap();
    let Notification::FunctionRemoved(rec) = next(&mut gpu_ch, |n| {
        matches!(n, Notification::FunctionRemoved(_))
    }) else {
        unreachable!()
    };
    assert_eq!(decode_name(&rec.id), Some("gpu0"));
    assert_eq!(vmm.mmio_read(RP2 + 0x6e, 2).unwrap() & 0x40, 0);
    assert_eq!(vmm.mmio_read(ECAM + (2 << 20), 4).unwrap(), 0xffff_ffff);
    assert_eq!(
        status(gpu.release_function("gpu0", false)),
        Some(Status::NoDevice)
    );
}
