//! The whole stack against QEMU: QEMU 7.2's `q35` (and QEMU 10.0's `pc-q35-10.0`) on one side; on
//! the other, the real `pcierc` process with the same root ports (and `--machine`), driven through
//! its unix socket by `pcierc qtest` with the same qtest lines. Every read is compared (see
//! `pcierc_tests::differential`); only the documented deviations (docs/qemu-compat.md) may differ.
//! Two hierarchies: libvirt's usual ports (under every machine type), and one port per value of
//! every register-changing root port property.

use std::process::Command;
use std::time::Instant;

use pcierc_tests::differential::{Differential, Function, Kind, QtestTarget, DEVIATIONS};
use pcierc_tests::process::{pcierc_bin, Backend};
use pcierc_tests::qtest::{qemu_machine, qemu_machine_with, qemu_q35, qemu_q35_with, Qemu, Qtest};

/// (devfn, the `-device` option, used verbatim by QEMU and by pcierc).
const PORTS: [(u8, &str); 3] = [
    (0xe0, "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1,addr=0x1c.0,multifunction=on"),
    (0xe1, "pcie-root-port,id=rp2,bus=pcie.0,chassis=2,slot=2,addr=0x1c.1,bus-reserve=2,mem-reserve=1M"),
    (0xe8, "ioh3420,id=rp3,bus=pcie.0,chassis=3,slot=3,addr=0x1d.0,port=3"),
];

#[test]
fn pcierc_through_its_socket_matches_qemu() {
    let Some(qemu) = qemu_q35(&PORTS.map(|p| p.1)) else {
        return;
    };
    compare(qemu, &[], &default_ports(), "pcierc (socket) vs QEMU");
}

/// [`PORTS`] as owned options.
fn default_ports() -> Vec<(u8, String)> {
    PORTS.iter().map(|(f, d)| (*f, d.to_string())).collect()
}

/// QEMU 10.0's newest machine type against `pcierc --machine pc-q35-10.0`: the compat-property
/// changes since 7.2 (docs/qemu-compat.md, "Machine types") with the same documented deviations.
#[test]
fn pcierc_pc_q35_10_0_matches_qemu_10_0() {
    let Some(q10) = Qemu::v10_0() else {
        return;
    };
    let qemu = qemu_machine(&q10, "pc-q35-10.0", &PORTS.map(|p| p.1));
    compare(
        qemu,
        &["--machine", "pc-q35-10.0"],
        &default_ports(),
        "pcierc --machine pc-q35-10.0 (socket) vs QEMU 10.0 pc-q35-10.0",
    );
}

/// QEMU 10.0 running the old machine type reads as QEMU 7.2 does: its compat properties restore
/// 7.2's registers, and pcierc's default machine type matches it too.
#[test]
fn pcierc_pc_q35_7_2_matches_qemu_10_0_running_pc_q35_7_2() {
    let Some(q10) = Qemu::v10_0() else {
        return;
    };
    let qemu = qemu_machine(&q10, "pc-q35-7.2", &PORTS.map(|p| p.1));
    compare(
        qemu,
        &[],
        &default_ports(),
        "pcierc (socket) vs QEMU 10.0 pc-q35-7.2",
    );
}

/// One port per value of every `pcie-root-port` property QEMU 7.2 has that changes registers,
/// and one with all those that do not (accepted, stored, no register effect); then the ones
/// `ioh3420` shares. At most 12 `pcie-root-port`s: the engine puts their MSI-X BARs one MiB
/// apart below QEMU's IOAPIC (an `ioh3420` has no BAR).
const PROPERTY_VARIANTS: [(&str, &str); 13] = [
    ("pcie-root-port", "hotplug=off"),
    ("pcie-root-port", "x-native-hotplug=off"),
    ("pcie-root-port", "power_controller_present=off"),
    ("pcie-root-port", "disable-acs=on"),
    ("pcie-root-port", "aer_log_max=0"),
    ("pcie-root-port", "x-speed=2_5,x-pcie-lnksta-dllla=off,x-width=16"),
    ("pcie-root-port", "x-speed=5,x-width=1"),
    ("pcie-root-port", "x-speed=8,x-width=12"),
    ("pcie-root-port", "hotplug=off,power_controller_present=off,x-width=2,aer_log_max=128,x-speed=16"),
    ("pcie-root-port", "x-native-hotplug=off,io-reserve=0,x-width=4"),
    ("pcie-root-port", "acpi-index=3,rombar=0,romsize=65536,romfile=,x-migrate-msix=off,x-pcie-extcap-init=off,x-width=8"),
    ("ioh3420", "hotplug=off,aer_log_max=0,disable-acs=on"),
    ("ioh3420", "power_controller_present=off,x-native-hotplug=off,acpi-index=7"),
];

/// [`PROPERTY_VARIANTS`] as (devfn, `-device` option), one port per device number from 3.
fn property_variant_devices() -> Vec<(u8, String)> {
    PROPERTY_VARIANTS
        .iter()
        .enumerate()
        .map(|(i, (driver, props))| {
            let n = i + 3;
            let d =
                format!("{driver},id=p{n},bus=pcie.0,chassis={n},slot={n},addr={n:#x}.0,{props}");
            ((n as u8) << 3, d)
        })
        .collect()
}

/// Every register-changing root port property against QEMU 7.2, in one QEMU process and one
/// pcierc process: the same `-device` options on both sides, every read compared.
#[test]
fn root_port_properties_match_qemu() {
    let devices = property_variant_devices();
    let options: Vec<&str> = devices.iter().map(|(_, d)| d.as_str()).collect();
    let Some(qemu) = qemu_q35(&options) else {
        return;
    };
    compare(qemu, &[], &devices, "root port properties vs QEMU");
}

/// The same ports against QEMU 10.0's `pc-q35-10.0` and `pcierc --machine pc-q35-10.0`: the
/// slot registers of ports without a power controller (Power Indicator Off after a reset,
/// `PortCompat::power_indicator_off_at_reset`) among the rest. QEMU 10.0 has no
/// `x-native-hotplug`; its `x-do-not-expose-native-hotplug-cap=on` is the same (Hot-Plug
/// Capable clear, I/O reserved without `io-reserve`), so QEMU gets that where pcierc gets
/// `x-native-hotplug=off` (docs/qemu-compat.md, "Hot-plug rules between QEMU 7.2 and 10.0").
#[test]
fn root_port_properties_match_qemu_10_0() {
    let Some(q10) = Qemu::v10_0() else {
        return;
    };
    let devices = property_variant_devices();
    let options: Vec<String> = devices
        .iter()
        .map(|(_, d)| {
            d.replace(
                "x-native-hotplug=off",
                "x-do-not-expose-native-hotplug-cap=on",
            )
        })
        .collect();
    let options: Vec<&str> = options.iter().map(String::as_str).collect();
    let qemu = qemu_machine(&q10, "pc-q35-10.0", &options);
    compare(
        qemu,
        &["--machine", "pc-q35-10.0"],
        &devices,
        "root port properties vs QEMU 10.0 pc-q35-10.0",
    );
}

/// Start pcierc with `machine` arguments and the same root port `-device` options as the QEMU
/// given, and compare everything.
fn compare(qemu: Qtest, machine: &[&str], ports: &[(u8, String)], what: &str) {
    let mut args = machine.to_vec();
    args.push("-n");
    for (_, d) in ports {
        args.extend(["--device", d.as_str()]);
    }
    let backend = Backend::start(&args);
    let mut cmd = Command::new(pcierc_bin());
    cmd.arg("qtest")
        .arg("--connect")
        .arg(&backend.socket)
        .env("RUST_LOG", "warn");
    let ours = Qtest::spawn(cmd).expect("starting pcierc qtest");
    let started = Instant::now();
    let mut qemu = QtestTarget::new(qemu).expect("enabling ECAM in QEMU");
    let mut ours = QtestTarget::new(ours).expect("enabling ECAM through pcierc");
    let mut functions = vec![Function {
        name: "00:00.0 mch".into(),
        kind: Kind::Mch,
        bus: 0,
        devfn: 0,
    }];
    for (devfn, d) in ports {
        let props = d.split_once("addr=").map_or("", |(_, rest)| rest);
        functions.push(Function {
            name: format!("00:{:02x}.{} {props}", devfn >> 3, devfn & 7),
            kind: Kind::of_device(d).expect("a root port model"),
            bus: 0,
            devfn: *devfn,
        });
    }
    let mut diff = Differential::new(&mut qemu, &mut ours, functions, DEVIATIONS);
    diff.run_all_and_check(what, started);
}

/// A PCI Express switch behind a root port: (bus, devfn once numbered, `-device` option).
const SWITCH: [(u8, u8, &str); 4] = [
    (
        0,
        0xe0,
        "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1,addr=0x1c.0",
    ),
    (1, 0x00, "x3130-upstream,id=up1,bus=rp1"),
    (
        2,
        0x00,
        "xio3130-downstream,id=dp1,bus=up1,chassis=5,slot=1,addr=0.0",
    ),
    (
        2,
        0x08,
        "xio3130-downstream,id=dp2,bus=up1,chassis=5,slot=2,addr=1.0,port=7",
    ),
];
/// The bus numbers firmware would give it: rp1 1-4, up1 2-4, dp1 3, dp2 4.
const SWITCH_NUMBERING: [(u8, u8, u32); 4] = [
    (0, 0xe0, 0x04_0100),
    (1, 0x00, 0x04_0201),
    (2, 0x00, 0x03_0302),
    (2, 0x08, 0x04_0402),
];

/// A root port -> `x3130-upstream` -> two `xio3130-downstream` against QEMU 7.2, register for
/// register (every pattern, mechanism #1, resets) with the buses numbered so the switch is
/// reachable; Secondary Bus Reset of a port and Function Level Reset of a switch port reset
/// what is below on both sides. QEMU runs with native PCIe hot-plug (q35's ACPI hot-plug off),
/// as pcierc models every slot, so the root port shows the switch present in its slot.
#[test]
fn switch_matches_qemu() {
    tree_matches_qemu(&SWITCH, &SWITCH_NUMBERING, &[0xe0], "switch vs QEMU");
}

/// The same switch against QEMU 10.0's `pc-q35-10.0` and `pcierc --machine pc-q35-10.0` (the
/// machine type's compat properties reach switch ports as they reach root ports).
#[test]
fn switch_on_pc_q35_10_0_matches_qemu_10_0() {
    let Some(q10) = Qemu::v10_0() else {
        return;
    };
    tree_matches_qemu_on(
        Some((&q10, "pc-q35-10.0")),
        &SWITCH,
        &SWITCH_NUMBERING,
        &[(0, 0xe0)],
        "switch vs QEMU 10.0 pc-q35-10.0",
    );
}

/// A `pcie-pci-bridge` in a root port's slot and one on the root bus (the hierarchy holds
/// them: docs/topology.md), each with its bus numbered as firmware would: rp1 1-2, br1 2, br0 3.
const BRIDGES: [(u8, u8, &str); 3] = [
    (
        0,
        0xe0,
        "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1,addr=0x1c.0",
    ),
    (1, 0x00, "pcie-pci-bridge,id=br1,bus=rp1"),
    (0, 0x28, "pcie-pci-bridge,id=br0,bus=pcie.0,addr=5.0"),
];
const BRIDGE_NUMBERING: [(u8, u8, u32); 3] = [
    (0, 0xe0, 0x02_0100),
    (1, 0x00, 0x02_0201),
    (0, 0x28, 0x03_0300),
];

/// The bridges through the real pcierc process against QEMU 7.2, register for register (every
/// pattern, mechanism #1, the SHPC's BAR, resets): the bridge below rp1 is reached through
/// rp1's secondary bus once numbered, and a Secondary Bus Reset of rp1 resets it on both sides.
/// rp1's Slot Control is left alone (QEMU 7.2 deletes what is in a slot the guest powers off).
#[test]
fn pcie_pci_bridges_match_qemu() {
    tree_matches_qemu(
        &BRIDGES,
        &BRIDGE_NUMBERING,
        &[0xe0],
        "pcie-pci-bridges vs QEMU",
    );
}

/// The same bridges against QEMU 10.0's `pc-q35-10.0` and `pcierc --machine pc-q35-10.0`
/// (QEMU 10.0 made a bridge's Secondary Latency Timer read-only).
#[test]
fn pcie_pci_bridges_on_pc_q35_10_0_match_qemu_10_0() {
    let Some(q10) = Qemu::v10_0() else {
        return;
    };
    tree_matches_qemu_on(
        Some((&q10, "pc-q35-10.0")),
        &BRIDGES,
        &BRIDGE_NUMBERING,
        &[(0, 0xe0)],
        "pcie-pci-bridges vs QEMU 10.0 pc-q35-10.0",
    );
}

/// Two `pxb-pcie` expanders on pcie.0 and a root port beside them: on pxb1's root bus 0x80 a
/// `pcie-root-port` (a switch in its slot) and an `ioh3420`, on pxb2's bus 0x40 a
/// `pcie-root-port`. The buses below are numbered as firmware would: rp9 81-83 (up1 82-83, dp1
/// 83), rp10 84, rp11 41, rp1 1.
const EXPANDERS: [(u8, u8, &str); 8] = [
    (0, 0x28, "pxb-pcie,id=pxb1,bus_nr=0x80,bus=pcie.0,addr=0x5"),
    (
        0x80,
        0x00,
        "pcie-root-port,id=rp9,bus=pxb1,chassis=9,slot=9,addr=0",
    ),
    (
        0x80,
        0x08,
        "ioh3420,id=rp10,bus=pxb1,chassis=10,slot=10,addr=1",
    ),
    (0x81, 0x00, "x3130-upstream,id=up1,bus=rp9"),
    (
        0x82,
        0x00,
        "xio3130-downstream,id=dp1,bus=up1,chassis=11,slot=1,addr=0.0",
    ),
    (0, 0x30, "pxb-pcie,id=pxb2,bus_nr=64,bus=pcie.0,addr=0x6"),
    (
        0x40,
        0x00,
        "pcie-root-port,id=rp11,bus=pxb2,chassis=12,slot=12,addr=0",
    ),
    (
        0,
        0xe0,
        "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1,addr=0x1c.0",
    ),
];
const EXPANDER_NUMBERING: [(u8, u8, u32); 6] = [
    (0x80, 0x00, 0x83_8180),
    (0x81, 0x00, 0x83_8281),
    (0x82, 0x00, 0x83_8382),
    (0x80, 0x08, 0x84_8480),
    (0x40, 0x00, 0x41_4140),
    (0, 0xe0, 0x01_0100),
];

/// The expanders through the real pcierc process against QEMU 7.2, register for register: the
/// expanders' functions, the root ports on their root buses (reachable from power-on: an
/// expander's bus number is its `bus_nr`, no register's), the switch below rp9 once numbered,
/// every pattern, mechanism #1, MSI-X and MSI, resets. rp9's Slot Control is left alone (QEMU
/// 7.2 deletes what is in a slot the guest powers off).
#[test]
fn pxb_pcie_expanders_match_qemu() {
    tree_matches_qemu_on(
        None,
        &EXPANDERS,
        &EXPANDER_NUMBERING,
        &[(0x80, 0x00)],
        "pxb-pcie expanders vs QEMU",
    );
}

/// The same expanders against QEMU 10.0's `pc-q35-10.0` and `pcierc --machine pc-q35-10.0`.
#[test]
fn pxb_pcie_expanders_on_pc_q35_10_0_match_qemu_10_0() {
    let Some(q10) = Qemu::v10_0() else {
        return;
    };
    tree_matches_qemu_on(
        Some((&q10, "pc-q35-10.0")),
        &EXPANDERS,
        &EXPANDER_NUMBERING,
        &[(0x80, 0x00)],
        "pxb-pcie expanders vs QEMU 10.0 pc-q35-10.0",
    );
}

/// `devices` (bus, devfn, the `-device` option used verbatim by QEMU and by pcierc, no default
/// ports) against QEMU 7.2 with native PCIe hot-plug (q35's ACPI hot-plug off, as pcierc models
/// every slot, so a root port shows what is in its slot present), numbered by `numbering`.
fn tree_matches_qemu(
    devices: &[(u8, u8, &str)],
    numbering: &[(u8, u8, u32)],
    switch_slots: &[u8],
    label: &str,
) {
    let slots: Vec<(u8, u8)> = switch_slots.iter().map(|&d| (0, d)).collect();
    tree_matches_qemu_on(None, devices, numbering, &slots, label);
}

/// [`tree_matches_qemu`] on QEMU 7.2's `q35` (`machine` `None`) or on the given QEMU and
/// machine type (pcierc started with `--machine` of that name); `held_slots` are the (bus,
/// devfn) of the ports whose slot holds a switch.
fn tree_matches_qemu_on(
    machine: Option<(&Qemu, &str)>,
    devices: &[(u8, u8, &str)],
    numbering: &[(u8, u8, u32)],
    held_slots: &[(u8, u8)],
    label: &str,
) {
    let mut args = vec![
        "-global",
        "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off",
    ];
    args.extend(devices.iter().flat_map(|(_, _, d)| ["-device", *d]));
    let qemu = match machine {
        None => match qemu_q35_with(&args) {
            Some(q) => q,
            None => return,
        },
        Some((q, name)) => qemu_machine_with(q, name, &args),
    };
    let mut pcierc_args = vec!["-n"];
    if let Some((_, name)) = machine {
        pcierc_args.extend(["--machine", name]);
    }
    pcierc_args.extend(devices.iter().flat_map(|(_, _, d)| ["--device", *d]));
    let backend = Backend::start(&pcierc_args);
    let mut cmd = Command::new(pcierc_bin());
    cmd.arg("qtest")
        .arg("--connect")
        .arg(&backend.socket)
        .env("RUST_LOG", "warn");
    let ours = Qtest::spawn(cmd).expect("starting pcierc qtest");
    let started = Instant::now();
    let mut qemu = QtestTarget::new(qemu).expect("enabling ECAM in QEMU");
    let mut ours = QtestTarget::new(ours).expect("enabling ECAM through pcierc");
    let mut functions = vec![Function {
        name: "00:00.0 mch".into(),
        kind: Kind::Mch,
        bus: 0,
        devfn: 0,
    }];
    for &(bus, devfn, d) in devices {
        let id = d.split("id=").nth(1).and_then(|r| r.split(',').next());
        functions.push(Function {
            name: format!(
                "{bus:02x}:{:02x}.{} {}",
                devfn >> 3,
                devfn & 7,
                id.unwrap_or(d)
            ),
            kind: Kind::of_device(d).expect("a port model"),
            bus,
            devfn,
        });
    }
    let mut diff = Differential::new(&mut qemu, &mut ours, functions, DEVIATIONS)
        .with_bus_numbers(numbering, &[])
        .with_held_slots(held_slots);
    diff.run_all_and_check(label, started);
}

#[test]
fn qtest_frontend_survives_malformed_lines() {
    let backend = Backend::start(&[]);
    let mut cmd = Command::new(pcierc_bin());
    cmd.arg("qtest")
        .arg("--connect")
        .arg(&backend.socket)
        .env("RUST_LOG", "off");
    let mut q = Qtest::spawn(cmd).expect("starting pcierc qtest");
    for bad in [
        "frobnicate 1",
        "inl",
        "inl zz",
        "outl 0xcf8",
        "writel 0x10 0x1 0x2",
        "inb 0x10000",
    ] {
        let r = q.command(bad).expect("an answer");
        assert!(r.starts_with("FAIL"), "{bad}: {r}");
    }
    assert_eq!(q.command("outl 0xcf8 0x80000000").unwrap(), "OK");
    assert_eq!(q.command("inl 0xcfc").unwrap(), "OK 0x29c08086");
    assert_eq!(
        q.command("readl 0xb0000000").unwrap(),
        "OK 0x0000000000000000",
        "ECAM still off: unassigned"
    );
    assert_eq!(
        q.command("inb 0x80").unwrap(),
        "OK 0x00ff",
        "unclaimed port floats"
    );
}
