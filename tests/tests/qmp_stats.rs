//! `x-pcierc-query-stats` end to end: the real `qemu.qmp` client reads the counters of a running
//! `pcierc --state-file` while a VMM frontend plays the guest and a frontend named "qemu" owns
//! the hot-plugged function; each step's traffic must move exactly the counters it should.

use std::time::Duration;

use pcierc_protocol::{Frontend, FrontendOptions, Notification};
use pcierc_tests::process::{Backend, ScratchDir};
use pcierc_tests::qmp::{qemu_qmp_available, QmpClient};
use serde_json::{json, Value};

const ECAM: u64 = 0xb000_0000;
const RP1: u64 = ECAM + (0x10 << 12); // 00:02.0
const SLTCTL: u64 = RP1 + 0x6c;
const TABLE: u64 = 0xfe00_0000;
// Slot Control: hot-plug interrupts on, power on (indicator on) or off (indicator off).
const SLTCTL_ON: u64 = 0x0039 | 0x00c0 | 0x0100;
const SLTCTL_OFF: u64 = 0x0039 | 0x00c0 | 0x0300 | 0x0400;

fn stats(qmp: &mut QmpClient) -> Value {
    qmp.ok("x-pcierc-query-stats", Value::Null)
}

/// The live frontend called `name`.
fn frontend<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["frontends"]
        .as_array()
        .and_then(|v| v.iter().find(|f| f["name"] == name))
        .unwrap_or_else(|| panic!("no frontend {name} in {s}"))
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a counter: {v}"))
}

/// Notifications of `kind` sent to `name` so far.
fn notes(s: &Value, name: &str, kind: &str) -> u64 {
    frontend(s, name)["notifications"][kind]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn counters_follow_requests_refusals_notifications_hotplug_state_writes_and_clients() {
    if !qemu_qmp_available() {
        return;
    }
    let dir = ScratchDir::new("stats");
    let state = dir.0.join("vm.state");
    let b = Backend::start_with_control(&["--state-file", state.to_str().expect("utf-8 path")]);
    let mut qmp = QmpClient::connect(b.control.as_deref().expect("control socket"));
    assert!(qmp
        .ok("query-commands", Value::Null)
        .as_array()
        .is_some_and(|c| c.contains(&json!({"name": "x-pcierc-query-stats"}))));
    let s0 = stats(&mut qmp);
    assert_eq!(s0["qmp-clients"]["current"], 1, "{s0}");
    assert_eq!(s0["frontends"], json!([]), "{s0}");
    assert_eq!(
        s0["hotplug"],
        json!({"device-add": 0, "device-del": 0, "surprise-removals": 0,
                                     "refused": 0, "device-deleted-events": 0})
    );
    let writes0 = n(&s0["state-file"]["writes"]);

    // Two frontends: the guest's VMM and the owner of what gets plugged.
    let mut vmm = Frontend::connect(&b.socket, FrontendOptions::vmm("vmm")).expect("vmm");
    let irqs = vmm.take_backend_channel().expect("vmm channel");
    let mut owner = Frontend::connect(&b.socket, FrontendOptions::vmm("qemu")).expect("owner");
    let mut owner_ch = owner.take_backend_channel().expect("owner channel");
    let s1 = stats(&mut qmp);
    assert_eq!(s1["frontends"].as_array().map(Vec::len), Some(2), "{s1}");
    assert_eq!(
        n(&s1["frontend-connections"]["accepted"]) - n(&s0["frontend-connections"]["accepted"]),
        2
    );
    assert_eq!(s1["frontend-connections"]["current"], 2);
    let vmm_requests = n(&frontend(&s1, "vmm")["requests"]);
    assert!(vmm_requests > 0, "the handshake's requests count: {s1}");
    assert_eq!(frontend(&s1, "vmm")["refused"], 0);

    // Firmware: ECAM on (a layout change for both), rp1's bus and MSI-X vector 0, hot-plug
    // interrupts on with the slot powered off: exactly 11 requests of the VMM.
    vmm.pio_write(0xcf8, 4, 0x8000_0060).unwrap();
    vmm.pio_write(0xcfc, 4, ECAM | 1).unwrap();
    for (addr, width, v) in [
        (RP1 + 0x18, 4, 0x0001_0100),
        (RP1 + 0x10, 4, TABLE),
        (RP1 + 4, 2, 0x6),
        (TABLE, 8, 0xfee0_4000),
        (TABLE + 8, 4, 0x4099),
        (TABLE + 12, 4, 0),
        (RP1 + 0x4a, 2, 0x8000),
        (SLTCTL, 2, SLTCTL_OFF),
    ] {
        vmm.mmio_write(addr, width, v).unwrap();
    }
    // Two refusals: an unknown request code, and a PME for a function the VMM does not own.
    let (st, _) = vmm.request(999, &[], &[]).expect("a reply");
    assert_ne!(st, pcierc_protocol::Status::Ok);
    let s2 = stats(&mut qmp);
    let v2 = frontend(&s2, "vmm");
    assert_eq!(n(&v2["requests"]) - vmm_requests, 11, "{s2}");
    assert_eq!(
        v2["refusals"],
        json!([{"request": "unknown(999)", "status": "ENOSYS", "count": 1}])
    );
    assert!(
        notes(&s2, "vmm", "layout-changed") >= 2,
        "ECAM and bus numbers: {s2}"
    );
    assert_eq!(
        notes(&s2, "qemu", "layout-changed"),
        notes(&s2, "vmm", "layout-changed"),
        "every frontend hears of layout changes"
    );
    assert!(
        n(&s2["state-file"]["writes"]) > writes0,
        "guest-visible changes are written: {s2}"
    );

    // pciehp acknowledges what it saw (else no new interrupt is signalled, as in QEMU).
    let events = vmm.mmio_read(RP1 + 0x6e, 2).unwrap() & 0x1f;
    vmm.mmio_write(RP1 + 0x6e, 2, events).unwrap();

    // Hot-add: the owner is told, the guest interrupted; a refused device_add counts apart.
    qmp.ok(
        "device_add",
        json!({"driver": "virtio-net-pci", "id": "net0", "bus": "rp1", "owner": "qemu"}),
    );
    qmp.err(
        "device_add",
        json!({"driver": "e1000e", "id": "x", "bus": "rp9"}),
    );
    loop {
        match owner_ch.recv_timeout(Duration::from_secs(5)) {
            Ok(Some(Notification::FunctionAdded(_))) => break,
            Ok(Some(_)) => continue, // layout changes
            other => panic!("owner: expected FunctionAdded, got {other:?}"),
        }
    }
    vmm.raise_pme(0, 1, 0)
        .expect_err("the VMM does not own 01:00.0");
    let msis_before = notes(&s2, "vmm", "msi");
    let s3 = stats(&mut qmp);
    assert_eq!(
        s3["hotplug"],
        json!({"device-add": 1, "device-del": 0, "surprise-removals": 0, "refused": 1,
               "device-deleted-events": 0})
    );
    assert_eq!(notes(&s3, "qemu", "function-added"), 1);
    assert_eq!(notes(&s3, "vmm", "function-added"), 0, "only the owner");
    assert_eq!(
        notes(&s3, "vmm", "msi") - msis_before,
        1,
        "Presence Detect Changed"
    );
    assert_eq!(
        notes(&s3, "qemu", "msi"),
        notes(&s3, "vmm", "msi"),
        "both connected as VMMs, so both are sent the interrupts"
    );
    assert_eq!(
        frontend(&s3, "vmm")["refusals"],
        json!([{"request": "RaisePme", "status": "EACCES", "count": 1},
               {"request": "unknown(999)", "status": "ENOSYS", "count": 1}])
    );

    // Orderly removal: device_del, the guest powers the slot off, DEVICE_DELETED.
    vmm.mmio_write(SLTCTL, 2, SLTCTL_ON).unwrap();
    qmp.ok("device_del", json!({"id": "net0"}));
    vmm.mmio_write(RP1 + 0x6e, 2, 0x1).unwrap(); // Attention Button Pressed, acknowledged
    vmm.mmio_write(SLTCTL, 2, SLTCTL_OFF).unwrap();
    qmp.event("DEVICE_DELETED", 5.0).expect("DEVICE_DELETED");
    // Re-added and surprise-removed.
    qmp.ok(
        "device_add",
        json!({"driver": "virtio-net-pci", "id": "net0", "bus": "rp1", "owner": "qemu"}),
    );
    qmp.ok("x-pcierc-surprise-remove", json!({"id": "net0"}));
    qmp.event("DEVICE_DELETED", 5.0).expect("DEVICE_DELETED");
    let s4 = stats(&mut qmp);
    assert_eq!(
        s4["hotplug"],
        json!({"device-add": 2, "device-del": 1, "surprise-removals": 1, "refused": 1,
               "device-deleted-events": 2})
    );
    assert_eq!(notes(&s4, "qemu", "function-removed"), 2);
    let sf = &s4["state-file"];
    assert_eq!(sf["failures"], 0);
    assert!(n(&sf["writes"]) > n(&s3["state-file"]["writes"]), "{sf}");
    assert!(
        n(&sf["max-us"]) >= n(&sf["mean-us"]) && n(&sf["mean-us"]) > 0,
        "{sf}"
    );
    assert!(n(&sf["total-us"]) >= n(&sf["max-us"]), "{sf}");

    // QMP: a second client; commands and errors counted on the control socket as a whole.
    let c0 = &s4["qmp-commands"];
    let mut qmp2 = QmpClient::connect(b.control.as_deref().expect("control socket"));
    qmp2.err("frobnicate", Value::Null);
    let s5 = stats(&mut qmp2);
    assert_eq!(s5["qmp-clients"]["current"], 2, "{s5}");
    assert_eq!(
        n(&s5["qmp-clients"]["accepted"]) - n(&s4["qmp-clients"]["accepted"]),
        1
    );
    // A command is counted once answered: s4's own query, then the new client's
    // qmp_capabilities and frobnicate (an error); this query is not in its own result.
    assert_eq!(
        n(&s5["qmp-commands"]["commands"]) - n(&c0["commands"]),
        3,
        "{s5}"
    );
    assert_eq!(n(&s5["qmp-commands"]["errors"]) - n(&c0["errors"]), 1);

    // A frontend that leaves is dropped from the list; its requests still count in the total.
    let total = n(&s5["requests"]);
    drop((owner_ch, owner, vmm, irqs));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let s6 = loop {
        let s = stats(&mut qmp2);
        if s["frontends"] == json!([]) || std::time::Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(s6["frontends"], json!([]), "{s6}");
    assert_eq!(s6["frontend-connections"]["current"], 0);
    assert_eq!(
        n(&s6["requests"]),
        total,
        "departed frontends' requests are kept"
    );
}
