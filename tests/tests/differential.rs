//! The whole stack against QEMU: QEMU 7.2's `q35` (and QEMU 10.0's `pc-q35-10.0`) on one side; on
//! the other, the real `pcierc` process with the same root ports (and `--machine`), driven through
//! its unix socket by `pcierc qtest` with the same qtest lines. Every read is compared (see
//! `pcierc_tests::differential`); only the documented deviations (docs/qemu-compat.md) may differ.

use std::process::Command;
use std::time::Instant;

use pcierc_tests::differential::{Differential, Function, Kind, QtestTarget, DEVIATIONS};
use pcierc_tests::process::{pcierc_bin, Backend};
use pcierc_tests::qtest::{qemu_machine, qemu_q35, Qemu, Qtest};

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
    compare(qemu, &[], "pcierc (socket) vs QEMU");
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
    compare(qemu, &[], "pcierc (socket) vs QEMU 10.0 pc-q35-7.2");
}

fn compare(qemu: Qtest, machine: &[&str], what: &str) {
    let mut args = machine.to_vec();
    args.push("-n");
    for (_, d) in PORTS {
        args.extend(["--device", d]);
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
        devfn: 0,
    }];
    for (devfn, d) in PORTS {
        let id = d
            .split(',')
            .find_map(|kv| kv.strip_prefix("id="))
            .unwrap_or("?");
        functions.push(Function {
            name: format!("00:{:02x}.{} {id}", devfn >> 3, devfn & 7),
            kind: Kind::of_device(d).expect("a root port model"),
            devfn,
        });
    }
    let mut diff = Differential::new(&mut qemu, &mut ours, functions, DEVIATIONS);
    diff.run_all_and_check(what, started);
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
