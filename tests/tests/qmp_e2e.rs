//! The control socket end to end: the real `qemu.qmp` client drives a running `pcierc` while a
//! VMM frontend plays the guest's firmware and pciehp/aerdrv/PME drivers through the protocol
//! (forwarded ECAM accesses, MSI-X messages on its backend channel) and the owner of the
//! hot-plugged function (a frontend named "qemu") is told when it arrives and leaves.

use std::time::Duration;

use pcierc_protocol::{
    decode_name, BackendChannel, Frontend, FrontendOptions, MsiMessage, Notification,
};
use pcierc_tests::process::Backend;
use pcierc_tests::qmp::{qemu_qmp_available, QmpClient};
use serde_json::{json, Value};

const ECAM: u64 = 0xb000_0000;
const RP1: u64 = ECAM + (0x10 << 12); // 00:02.0
const SLTCTL: u64 = RP1 + 0x6c;
const SLTSTA: u64 = RP1 + 0x6e;
const ROOT_ERR_CMD: u64 = RP1 + 0x12c;
const ROOT_ERR_STATUS: u64 = RP1 + 0x130;
const ERR_SRC: u64 = RP1 + 0x134;
const RTCTL: u64 = RP1 + 0x70;
const RTSTA: u64 = RP1 + 0x74;
const TABLE: u64 = 0xfe00_0000;
// Slot Status bits (PCIe Base 6.0 §7.5.3.11).
const ABP: u64 = 1 << 0;
const PDC: u64 = 1 << 3;
const CC: u64 = 1 << 4;
const PDS: u64 = 1 << 6;
// Slot Control: ABPE|PDCE|CCIE|HPIE, attention indicator off, power indicator on and power
// on, or power indicator off and power off.
const SLTCTL_ON: u64 = 0x0039 | 0x00c0 | 0x0100;
const SLTCTL_OFF: u64 = 0x0039 | 0x00c0 | 0x0300 | 0x0400;

/// The guest side: a VMM frontend that forwards ECAM accesses and injects MSIs.
struct Guest {
    vmm: Frontend,
    irqs: BackendChannel,
}

impl Guest {
    /// Firmware and driver setup of rp1: ECAM, bus 1, MSI-X vector 0, hot-plug interrupts.
    fn boot(b: &Backend) -> Guest {
        let mut vmm = Frontend::connect(&b.socket, FrontendOptions::vmm("vmm")).expect("vmm");
        let irqs = vmm.take_backend_channel().expect("vmm channel");
        let mut g = Guest { vmm, irqs };
        g.vmm.pio_write(0xcf8, 4, 0x8000_0060).unwrap();
        g.vmm.pio_write(0xcfc, 4, ECAM | 1).unwrap();
        g.w(RP1 + 0x18, 4, 0x0001_0100);
        g.w(RP1 + 0x10, 4, TABLE);
        g.w(RP1 + 4, 2, 0x6);
        g.w(TABLE, 8, 0xfee0_4000);
        g.w(TABLE + 8, 4, 0x4099);
        g.w(TABLE + 12, 4, 0);
        g.w(RP1 + 0x4a, 2, 0x8000);
        g.w(SLTCTL, 2, SLTCTL_OFF);
        g.ack();
        g.msis(Duration::from_millis(200));
        g
    }

    /// pciehp's interrupt handler: write back the event bits it read (QEMU reverts a write that
    /// clears bits that were not set, a work-around for guests that clear everything).
    fn ack(&mut self) {
        let events = self.r(SLTSTA, 2) & 0x1f;
        if events != 0 {
            self.w(SLTSTA, 2, events);
        }
    }

    fn w(&mut self, addr: u64, width: u8, v: u64) {
        self.vmm.mmio_write(addr, width, v).unwrap();
    }

    fn r(&mut self, addr: u64, width: u8) -> u64 {
        self.vmm.mmio_read(addr, width).unwrap()
    }

    /// MSIs that arrive within `wait` (vector 0 of rp1, as programmed).
    fn msis(&mut self, wait: Duration) -> usize {
        let mut n = 0;
        while let Ok(Some(m)) = self.irqs.recv_timeout(wait) {
            if let Notification::Msi(m) = m {
                assert_eq!(
                    m,
                    MsiMessage {
                        address: 0xfee0_4000,
                        data: 0x4099,
                        segment: 0,
                        bus: 0,
                        devfn: 0x10
                    }
                );
                n += 1;
            }
        }
        n
    }
}

/// The owner frontend's next FunctionAdded/FunctionRemoved, as (added, id, bus, devfn).
fn owner_event(ch: &mut BackendChannel) -> (bool, String, u8, u8) {
    loop {
        match ch.recv_timeout(Duration::from_secs(5)) {
            Ok(Some(Notification::FunctionAdded(r))) => {
                return (
                    true,
                    decode_name(&r.id).unwrap_or("?").into(),
                    r.bus,
                    r.devfn,
                )
            }
            Ok(Some(Notification::FunctionRemoved(r))) => {
                return (
                    false,
                    decode_name(&r.id).unwrap_or("?").into(),
                    r.bus,
                    r.devfn,
                )
            }
            Ok(Some(_)) => continue,
            other => panic!("owner: expected a function notification, got {other:?}"),
        }
    }
}

fn setup() -> Option<(Backend, QmpClient, Guest, Frontend, BackendChannel)> {
    if !qemu_qmp_available() {
        return None;
    }
    let b = Backend::start_with_control(&[]);
    let mut owner = Frontend::connect(&b.socket, FrontendOptions::vmm("qemu")).expect("owner");
    let owner_ch = owner.take_backend_channel().expect("owner channel");
    let guest = Guest::boot(&b);
    let qmp = QmpClient::connect(b.control.as_deref().expect("control socket"));
    Some((b, qmp, guest, owner, owner_ch))
}

fn net0() -> Value {
    json!({"driver": "virtio-net-pci", "id": "net0", "bus": "rp1", "owner": "qemu"})
}

#[test]
fn hot_add_and_orderly_removal_through_qmp() {
    let Some((_b, mut qmp, mut g, _owner, mut owner_ch)) = setup() else {
        return;
    };
    assert_eq!(qmp.greeting["QMP"]["capabilities"], json!([]));
    assert!(qmp.greeting["QMP"]["version"]["qemu"]["major"].is_u64());

    // Hot-add: presence and Presence Detect Changed, the interrupt, the owner told.
    assert_eq!(qmp.ok("device_add", net0()), json!({}));
    assert_eq!(g.msis(Duration::from_millis(300)), 1, "PDC with PDCE+HPIE");
    let sta = g.r(SLTSTA, 2);
    assert_eq!(
        sta & (PDS | PDC | ABP),
        PDS | PDC | ABP,
        "Slot Status {sta:#x}: presence, its change, and the button as QEMU sets it"
    );
    assert_eq!(owner_event(&mut owner_ch), (true, "net0".into(), 1, 0));
    let ev = qmp
        .event("X_PCIERC_SLOT_CHANGED", 5.0)
        .expect("slot event on hot-add");
    assert_eq!(
        ev["data"],
        json!({"port": "rp1", "power": "off", "power-indicator": "off",
               "attention-indicator": "off", "present": true})
    );
    // pciehp: clear what it saw, power the slot on, Command Completed.
    g.ack();
    g.w(SLTCTL, 2, SLTCTL_ON);
    let ev = qmp
        .event("X_PCIERC_SLOT_CHANGED", 5.0)
        .expect("slot event on power-on");
    assert_eq!(
        (&ev["data"]["power"], &ev["data"]["power-indicator"]),
        (&json!("on"), &json!("on"))
    );
    assert_eq!(g.msis(Duration::from_millis(300)), 1, "Command Completed");
    assert_ne!(g.r(SLTSTA, 2) & CC, 0);
    g.w(SLTSTA, 2, CC);
    let pci = qmp.ok("query-pci", Value::Null);
    let rp1 = &pci[0]["devices"][1];
    assert_eq!(rp1["qdev_id"], "rp1");
    assert_eq!(rp1["pci_bridge"]["bus"]["secondary"], 1);
    assert_eq!(rp1["pci_bridge"]["devices"][0]["qdev_id"], "net0");
    let slots = qmp.ok("x-pcierc-query-slots", Value::Null);
    assert_eq!(slots[0]["port"], "rp1");
    assert_eq!(slots[0]["powered"], true);
    assert_eq!(slots[0]["bus"], 1);
    assert_eq!(slots[0]["devices"][0]["id"], "net0");
    assert_eq!(slots[0]["devices"][0]["state"], "present");
    // Refusals name the problem and leave the connection usable.
    let (_, desc) = qmp.err("device_add", net0());
    assert_eq!(desc, "id 'net0' is already in use");
    let (_, desc) = qmp.err(
        "device_add",
        json!({"driver": "e1000e", "id": "net9", "bus": "rp1"}),
    );
    assert!(desc.contains("occupied"), "{desc}");
    let (class, desc) = qmp.err(
        "device_add",
        json!({"driver": "e1000e", "id": "x", "bus": "pcie.0"}),
    );
    assert_eq!(
        (class.as_str(), desc.as_str()),
        ("GenericError", "Bus 'pcie.0' does not support hotplugging")
    );
    let (_, desc) = qmp.err(
        "device_add",
        json!({"driver": "e1000e", "id": "x", "bus": "rp9"}),
    );
    assert_eq!(desc, "Bus 'rp9' not found");
    let (class, _) = qmp.err("device_del", json!({"id": "nope"}));
    assert_eq!(class, "DeviceNotFound");
    let (class, _) = qmp.err("frobnicate", Value::Null);
    assert_eq!(class, "CommandNotFound");

    // device_del answers at once; DEVICE_DELETED waits for the guest to power the slot off.
    assert_eq!(qmp.ok("device_del", json!({"id": "net0"})), json!({}));
    assert_eq!(
        g.msis(Duration::from_millis(300)),
        1,
        "Attention Button Pressed"
    );
    assert_ne!(g.r(SLTSTA, 2) & ABP, 0);
    assert!(
        qmp.event("DEVICE_DELETED", 0.3).is_none(),
        "not before the guest agrees"
    );
    let (_, desc) = qmp.err("device_del", json!({"id": "net0"}));
    assert_eq!(desc, "Device net0 is already in the process of unplug");
    assert_eq!(
        qmp.ok("x-pcierc-query-slots", Value::Null)[0]["devices"][0]["state"],
        "unplug-pending"
    );
    g.w(SLTSTA, 2, ABP);
    g.w(SLTCTL, 2, SLTCTL_OFF);
    let ev = qmp.event("DEVICE_DELETED", 5.0).expect("DEVICE_DELETED");
    assert_eq!(
        ev["data"],
        json!({"device": "net0", "path": "/machine/peripheral/net0"})
    );
    assert_eq!(owner_event(&mut owner_ch), (false, "net0".into(), 1, 0));
    assert_eq!(g.r(ECAM + (1 << 20), 4), 0xffff_ffff, "01:00.0 is gone");
    assert_eq!(
        qmp.ok("x-pcierc-query-slots", Value::Null)[0]["devices"],
        json!([])
    );
}

#[test]
fn surprise_removal_aer_and_pme_through_qmp() {
    let Some((mut b, mut qmp, mut g, _owner, mut owner_ch)) = setup() else {
        return;
    };
    qmp.ok("device_add", net0());
    owner_event(&mut owner_ch);
    g.ack();
    g.w(SLTCTL, 2, SLTCTL_ON);
    g.ack();
    g.msis(Duration::from_millis(200));

    // AER on the port itself: Unsupported Request, non-fatal by default severity.
    g.w(ROOT_ERR_CMD, 4, 0x7);
    qmp.ok(
        "pcie-aer-inject-error",
        json!({"id": "rp1", "error": "UNSUP"}),
    );
    assert_eq!(
        g.msis(Duration::from_millis(300)),
        1,
        "ERR_NONFATAL interrupt"
    );
    assert_eq!(g.r(RP1 + 0x104, 4), 1 << 20, "Uncorrectable Error Status");
    assert_eq!(g.r(ROOT_ERR_STATUS, 4) & 0x7f, 0x24);
    assert_eq!(g.r(ERR_SRC, 4) >> 16, 0x0010, "source: the port itself");
    // From the device behind it, as a raw status with a header: received by the port.
    g.w(ROOT_ERR_STATUS, 4, 0x7f);
    qmp.ok(
        "pcie-aer-inject-error",
        json!({"id": "net0", "error": "0x1", "correctable": true}),
    );
    assert_eq!(g.msis(Duration::from_millis(300)), 1, "ERR_COR interrupt");
    assert_eq!(g.r(ROOT_ERR_STATUS, 4) & 0x3, 0x1);
    assert_eq!(g.r(ERR_SRC, 4) & 0xffff, 0x0100, "source 01:00.0");
    let (_, desc) = qmp.err(
        "pcie-aer-inject-error",
        json!({"id": "rp1", "error": "BOGUS"}),
    );
    assert!(
        desc.starts_with("invalid error status value 'BOGUS'"),
        "{desc}"
    );
    let (class, _) = qmp.err(
        "pcie-aer-inject-error",
        json!({"id": "nope", "error": "UNSUP"}),
    );
    assert_eq!(class, "DeviceNotFound");

    // PME from net0.
    g.w(RTCTL, 2, 0x8);
    qmp.ok("x-pcierc-inject-pme", json!({"id": "net0"}));
    assert_eq!(g.msis(Duration::from_millis(300)), 1, "PME interrupt");
    assert_eq!(g.r(RTSTA, 4), 0x0001_0100, "PME Status, requester 01:00.0");

    // Surprise removal: gone at once, DEVICE_DELETED without the guest's consent.
    qmp.ok("x-pcierc-surprise-remove", json!({"id": "net0"}));
    let ev = qmp.event("DEVICE_DELETED", 5.0).expect("DEVICE_DELETED");
    assert_eq!(ev["data"]["device"], "net0");
    assert_eq!(owner_event(&mut owner_ch), (false, "net0".into(), 1, 0));
    let sta = g.r(SLTSTA, 2);
    assert_eq!(
        sta & (PDS | PDC),
        PDC,
        "Presence Detect State clear, changed: {sta:#x}"
    );
    let (class, _) = qmp.err("x-pcierc-surprise-remove", json!({"id": "net0"}));
    assert_eq!(class, "DeviceNotFound");

    // quit: the reply, SHUTDOWN, and the process exits.
    assert_eq!(qmp.ok("quit", Value::Null), json!({}));
    let ev = qmp.event("SHUTDOWN", 5.0).expect("SHUTDOWN");
    assert_eq!(ev["data"]["reason"], "host-qmp-quit");
    let st = b
        .wait_exit(Duration::from_secs(5))
        .expect("pcierc exits on quit");
    assert!(st.success(), "{st}");
}

#[test]
fn query_pci_of_the_default_topology_is_qemus() {
    if !qemu_qmp_available() {
        return;
    }
    let b = Backend::start_with_control(&[]);
    let mut qmp = QmpClient::connect(b.control.as_deref().expect("control socket"));
    let ours = qmp.ok("query-pci", Value::Null);
    let fixture: Value = serde_json::from_str(include_str!(
        "../qmp/fixtures/qemu-7.2-query-pci-default.json"
    ))
    .expect("fixture");
    // QEMU's machine also has ICH9's functions at slot 31 (and nothing else pcierc emulates):
    // compare the MCH and the root ports, value for value.
    let mut qemu = fixture.clone();
    if let Some(devs) = qemu[0]["devices"].as_array_mut() {
        devs.retain(|d| d["slot"] == 0 || d["slot"] == 2);
    }
    assert_eq!(qemu[0]["devices"].as_array().map(Vec::len), Some(5));
    assert_eq!(ours, qemu);
}

/// A switch behind rp1 (up1, its downstream ports dp1 and dp2), numbered by the guest: rp1
/// 1-4, up1 2-4, dp1 3, dp2 4.
const SWITCH: [&str; 6] = [
    "--device",
    "x3130-upstream,id=up1,bus=rp1",
    "--device",
    "xio3130-downstream,id=dp1,bus=up1,chassis=5,slot=1",
    "--device",
    "xio3130-downstream,id=dp2,bus=up1,chassis=5,slot=2",
];
const UP1: u64 = ECAM + (1 << 20);
const DP1: u64 = ECAM + (2 << 20);

/// Hot-add below a switch's downstream port through QMP: dp1's slot sees the card (its MSI,
/// from 02:00.0), the owner is told where the function is (03:00.0), `query-pci` nests it below
/// rp1 -> up1 -> dp1, and `device_del` completes when the guest powers dp1's slot off.
#[test]
fn hot_add_below_a_switch_downstream_port_through_qmp() {
    if !qemu_qmp_available() {
        return;
    }
    let b = Backend::start_with_control(&SWITCH);
    let mut owner = Frontend::connect(&b.socket, FrontendOptions::vmm("qemu")).expect("owner");
    let mut owner_ch = owner.take_backend_channel().expect("owner channel");
    let mut vmm = Frontend::connect(&b.socket, FrontendOptions::vmm("vmm")).expect("vmm");
    let mut irqs = vmm.take_backend_channel().expect("vmm channel");
    vmm.pio_write(0xcf8, 4, 0x8000_0060).unwrap();
    vmm.pio_write(0xcfc, 4, ECAM | 1).unwrap();
    let mut w = |addr: u64, width: u8, v: u64| vmm.mmio_write(addr, width, v).unwrap();
    w(RP1 + 0x18, 4, 0x0004_0100);
    w(UP1 + 0x18, 4, 0x0004_0201);
    w(DP1 + 0x18, 4, 0x0003_0302);
    // dp1's MSI (0x70: address 0x74, data 0x7c, enable in 0x72), hot-plug interrupts on, its
    // empty slot powered off (Slot Control at 0x90 + 0x18).
    w(DP1 + 0x74, 4, 0xfee0_4000);
    w(DP1 + 0x7c, 2, 0x4099);
    w(DP1 + 0x72, 2, 1);
    w(DP1 + 0xa8, 2, SLTCTL_OFF);
    // pciehp acknowledges the Command Completed it saw (writing bits that are not set would be
    // reverted, as QEMU does).
    let events = vmm.mmio_read(DP1 + 0xaa, 2).unwrap() & 0x1f;
    assert_eq!(events, CC);
    vmm.mmio_write(DP1 + 0xaa, 2, events).unwrap();
    while let Ok(Some(_)) = irqs.recv_timeout(Duration::from_millis(200)) {}
    assert_eq!(vmm.mmio_read(UP1, 4).unwrap(), 0x8232_104c);

    let mut qmp = QmpClient::connect(b.control.as_deref().expect("control socket"));
    let net = json!({"driver": "virtio-net-pci", "id": "net0", "bus": "dp1", "owner": "qemu"});
    assert_eq!(qmp.ok("device_add", net), json!({}));
    let msi = loop {
        match irqs.recv_timeout(Duration::from_secs(5)) {
            Ok(Some(Notification::Msi(m))) => break m,
            Ok(Some(_)) => continue,
            other => panic!("expected dp1's MSI, got {other:?}"),
        }
    };
    assert_eq!(
        msi,
        MsiMessage {
            address: 0xfee0_4000,
            data: 0x4099,
            segment: 0,
            bus: 2,
            devfn: 0
        }
    );
    let sta = vmm.mmio_read(DP1 + 0xaa, 2).unwrap();
    assert_eq!(sta & (PDS | PDC), PDS | PDC, "dp1's Slot Status {sta:#x}");
    assert_eq!(owner_event(&mut owner_ch), (true, "net0".into(), 3, 0));
    let ev = qmp
        .event("X_PCIERC_SLOT_CHANGED", 5.0)
        .expect("slot event on hot-add");
    assert_eq!(ev["data"]["port"], "dp1");
    assert_eq!(ev["data"]["present"], true);
    let pci = qmp.ok("query-pci", Value::Null);
    let up1 = &pci[0]["devices"][1]["pci_bridge"]["devices"][0];
    assert_eq!(up1["qdev_id"], "up1");
    let dp1 = &up1["pci_bridge"]["devices"][0];
    assert_eq!((&dp1["qdev_id"], &dp1["bus"]), (&json!("dp1"), &json!(2)));
    assert_eq!(dp1["pci_bridge"]["devices"][0]["qdev_id"], "net0");
    let slots = qmp.ok("x-pcierc-query-slots", Value::Null);
    let ports: Vec<&str> = slots
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["port"].as_str())
        .collect();
    assert_eq!(
        ports,
        ["rp1", "rp2", "rp3", "rp4", "dp1", "dp2"],
        "no slot on up1"
    );

    // pciehp powers the slot on; orderly removal: the attention button, then the guest powers
    // dp1's slot off.
    vmm.mmio_write(DP1 + 0xa8, 2, SLTCTL_ON).unwrap();
    assert_eq!(qmp.ok("device_del", json!({"id": "net0"})), json!({}));
    assert_ne!(vmm.mmio_read(DP1 + 0xaa, 2).unwrap() & ABP, 0);
    vmm.mmio_write(DP1 + 0xa8, 2, SLTCTL_OFF).unwrap();
    assert_eq!(owner_event(&mut owner_ch), (false, "net0".into(), 3, 0));
    let ev = qmp.event("DEVICE_DELETED", 5.0).expect("DEVICE_DELETED");
    assert_eq!(ev["data"]["device"], "net0");
}
