//! `pxb-pcie` expanders beyond their registers (those are compared in `differential.rs`):
//! `query-pci` of QEMU 7.2 and of the real pcierc process with the same `-device` options, at
//! power-on and after the guest numbered the buses below the expanders, compared value for
//! value (QEMU lists each expander's root bus as a `PciInfo` of its own, newest first, before
//! `pcie.0`); the options QEMU refuses, refused by pcierc with QEMU's message; and the
//! firmware-style enumerator scanning the expanders' root buses through pcierc's socket.

use std::process::Command;

use pcierc_examples::firmware::{enumerate_topology, extra_root_buses, Layout};
use pcierc_examples::socket_bus::SocketBus;
use pcierc_protocol::{Frontend, FrontendOptions};
use pcierc_tests::differential::ConfigTarget;
use pcierc_tests::process::{pcierc_bin, Backend};
use pcierc_tests::qmp_pair::{pcierc_with_qmp, qemu_with_qmp, QmpSide};
use pcierc_tests::qmp_socket::QmpSocket;
use pcierc_tests::qtest::Qemu;
use serde_json::{json, Value};

/// Two expanders, root ports on both and a switch below one, a root port on pcie.0.
const DEVICES: [&str; 7] = [
    "pxb-pcie,id=pxb1,bus_nr=0x80,bus=pcie.0,addr=0x5",
    "pcie-root-port,id=rp9,bus=pxb1,chassis=9,slot=9,addr=0",
    "ioh3420,id=rp10,bus=pxb1,chassis=10,slot=10,addr=1",
    "x3130-upstream,id=up1,bus=rp9",
    "pxb-pcie,id=pxb2,bus_nr=64,bus=pcie.0,addr=0x6",
    "pcie-root-port,id=rp11,bus=pxb2,chassis=12,slot=12,addr=0",
    "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1,addr=0x1c.0",
];

/// Firmware's numbering: rp9 81-82 (up1 82), rp10 83, rp11 41, rp1 1.
const NUMBERING: [(u8, u8, u32); 5] = [
    (0x80, 0x00, 0x82_8180),
    (0x81, 0x00, 0x82_8281),
    (0x80, 0x08, 0x83_8380),
    (0x40, 0x00, 0x41_4140),
    (0, 0xe0, 0x01_0100),
];

/// QEMU's `query-pci` without the ICH9 functions at 00:1f (pcierc does not emulate them).
fn without_ich9(mut v: Value) -> Value {
    for bus in v.as_array_mut().into_iter().flatten() {
        if bus["bus"] == 0 {
            if let Some(devs) = bus["devices"].as_array_mut() {
                devs.retain(|d| d["slot"] != 31);
            }
        }
    }
    v
}

#[test]
fn query_pci_with_expanders_is_qemus() {
    let Some(q7) = Qemu::v7_2() else {
        return;
    };
    let QmpSide {
        guest: qemu, qmp, ..
    } = &mut qemu_with_qmp(&q7, "q35", &DEVICES, "pxb-query-pci");
    let mut pcierc_args = vec!["-n"];
    pcierc_args.extend(DEVICES.iter().flat_map(|d| ["--device", *d]));
    let QmpSide {
        guest: ours,
        qmp: control,
        ..
    } = &mut pcierc_with_qmp(&pcierc_args);

    let query = |q: &mut QmpSocket| q.ok("query-pci", json!({})).expect("query-pci");
    for step in ["power-on", "numbered"] {
        if step == "numbered" {
            for (bus, devfn, v) in NUMBERING {
                qemu.write(bus, devfn, 0x18, 4, v);
                ours.write(bus, devfn, 0x18, 4, v);
            }
        }
        let theirs = without_ich9(query(qmp));
        let mine = query(control);
        let buses: Vec<&Value> = theirs
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| &b["bus"])
            .collect();
        assert_eq!(
            buses,
            [&json!(64), &json!(128), &json!(0)],
            "{step}: {theirs}"
        );
        assert_eq!(mine, theirs, "{step}");
    }
}

/// What QEMU 7.2 refuses (its message on stderr) pcierc refuses with the same message.
#[test]
fn bad_expanders_are_refused_as_qemu_refuses_them() {
    let base = "pxb-pcie,id=pxb1,bus_nr=0x80,bus=pcie.0,addr=0x5";
    let cases: [(&[&str], &str); 4] = [
        (
            &[base, "pxb-pcie,id=pxb2,bus_nr=128,bus=pcie.0,addr=0x6"],
            "Bus 128 is already in use",
        ),
        (
            &[base, "e1000,id=n1,bus=pxb1,addr=0x3"],
            "PCI: Only PCI/PCIe bridges can be plugged into pxb-pcie",
        ),
        (
            &[
                "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1,addr=0x1c",
                "pxb-pcie,id=pxb1,bus_nr=0x80,bus=rp1,addr=0",
            ],
            "PXB devices can be attached only to root bus",
        ),
        (
            &["pxb-pcie,id=pxb1,bus_nr=0x80,bus=pcie.0,addr=0x5,numa_node=129"],
            "Illegal numa node 129",
        ),
    ];
    for (devices, message) in cases {
        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args(["-M", "q35", "-nodefaults", "-display", "none", "-S"]);
        qemu.args(["-qtest", "stdio"]);
        for d in devices {
            qemu.args(["-device", d]);
        }
        let out = match qemu.stdin(std::process::Stdio::null()).output() {
            Ok(o) => o,
            Err(_) if std::env::var_os("PCIERC_REQUIRE_TOOLS").is_none() => {
                eprintln!("\n*** SKIP: qemu-system-x86_64 not found ***\n");
                return;
            }
            Err(e) => panic!("qemu-system-x86_64: {e}"),
        };
        let theirs = String::from_utf8_lossy(&out.stderr);
        assert!(theirs.contains(message), "QEMU: {theirs}");
        let mut ours = Command::new(pcierc_bin());
        // `dump` builds the topology as the service does, and prints nothing but the refusal.
        ours.args(["dump", "-n"]);
        for d in devices {
            ours.args(["--device", d]);
        }
        let out = ours.output().expect("pcierc");
        let mine = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{devices:?} accepted");
        assert!(mine.contains(message), "pcierc: {mine}");
    }
}

/// A bridge's (primary, secondary, subordinate) bus numbers as the enumerator read them back.
type Buses = (u8, u8, u8);

/// The example VMM's firmware-style enumerator finds the expanders' root buses in pcierc's
/// topology and numbers the buses below their root ports from each root bus's number + 1, as
/// SeaBIOS does; pcierc routes every cycle there.
#[test]
fn firmware_enumeration_scans_the_expanders_root_buses() {
    let mut args = vec!["-n"];
    args.extend(DEVICES.iter().flat_map(|d| ["--device", *d]));
    let backend = Backend::start(&args);
    let mut fe =
        Frontend::connect(&backend.socket, FrontendOptions::vmm("t-pxb")).expect("handshake");
    // Reads come from the configuration snapshot, whose functions are the topology's records
    // (the expanders after the ports): the scan below checks its routes and images.
    assert!(fe.snapshot_active(), "pcierc took the snapshot region");
    let t = fe.topology().expect("topology");
    let roots = extra_root_buses(&t);
    assert_eq!(roots, [0x40, 0x80]);
    let mut bus = SocketBus(fe);
    let found = enumerate_topology(&mut bus, Layout::default(), &t.ecam, &roots).expect("scan");
    let e = &found[0].1;
    let buses: Vec<(u8, u8, Option<Buses>)> = e
        .functions
        .iter()
        .filter(|f| f.header_type == 1)
        .map(|f| (f.bus, f.devfn, f.buses))
        .collect();
    assert_eq!(
        buses,
        [
            (0, 0xe0, Some((0, 1, 1))),
            (0x40, 0, Some((0x40, 0x41, 0x41))),
            // A bridge is recorded once the buses below it are numbered: up1 before rp9.
            (0x81, 0, Some((0x81, 0x82, 0x82))),
            (0x80, 0, Some((0x80, 0x81, 0x82))),
            (0x80, 0x08, Some((0x80, 0x83, 0x83))),
        ]
    );
    let pxbs: Vec<(u8, u16)> = e
        .functions
        .iter()
        .filter(|f| f.class == 0x060000 && f.devfn != 0)
        .map(|f| (f.devfn, f.device))
        .collect();
    assert_eq!(pxbs, [(0x28, 0x000b), (0x30, 0x000b)]);
    assert_eq!(e.last_bus, 0x83);
}
