//! Errors a `pcie-pci-bridge` detects itself, against QEMU 7.2 (`q35`, pcierc's default) and
//! QEMU 10.0 (`pc-q35-10.0`, `pcierc --machine pc-q35-10.0`): the same guest writes and the same
//! injections on both sides (QEMU: HMP `pcie_aer_inject_error br1 ...` through
//! `human-monitor-command`; pcierc: `pcie-aer-inject-error` on its control socket), with the
//! bridge below a root port, below a switch's downstream port and on the root bus. QEMU must
//! answer "OK id: br1 ..." with the bridge's address and pcierc `{}`. After every step,
//! compared: the bridge's Status, Secondary Status, Device Control/Status and AER capability
//! (status, mask, severity, First Error Pointer, Header Log), and the root port's Status
//! (Interrupt Status: its INTx), Secondary Status, Device Control/Status and AER capability
//! (Root Error Command/Status, Error Source Identification). The switch ports in between are
//! not compared (pcierc leaves their Status bits alone, docs/qemu-compat.md).
//!
//! The guest enables everything QEMU's `pcie_aer_msg()` asks before an uncorrectable error
//! reaches the root port (SERR# Enable in Command of every function, in Bridge Control of the
//! ports, the Device Control reporting enables), as SeaBIOS does; the root port uses INTx (MSI-X off).
//! A correctable error against QEMU 7.2 is the documented deviation (docs/qemu-compat.md): QEMU
//! 7.2 never forwards one (`pcie_aer_msg_alldev()` passes only uncorrectable messages), pcierc
//! does (PCIe Base 6.0 §6.2.6). For those steps the bridge is compared as for the others, QEMU's
//! root port must not change, and pcierc's must show exactly the ERR_COR reception from
//! 01:00.0 (Root Error Status bits 0-1, Error Source Identification, its INTx) and nothing else.
//! QEMU 10.0 forwards them (Correctable Error Reporting Enable): compared as the others.
//!
//! Not compared: the bridge's Link Capabilities after an uncorrectable error (QEMU's
//! `pcie_aer_inject_uncor_error()` stores the 16-bit Device Status with `pci_set_long()`, zeroing
//! it; a QEMU bug not copied, docs/qemu-compat.md).

use pcierc_tests::differential::{assert_no_mismatches, ConfigTarget};
use pcierc_tests::qmp_pair::{pcierc_with_qmp, qemu_with_qmp, QmpSide};
use pcierc_tests::qtest::Qemu;
use serde_json::{json, Value};

/// A function the steps write to: the root port, the bridge, and (in [`SWITCH`]) the switch's
/// upstream and downstream ports.
#[derive(Copy, Clone)]
enum F {
    Rp,
    Br,
    Up,
    Dp,
}

/// Where the bridge sits: QEMU's `-device` list (pcierc's `--device` too), the bus numbers the
/// guest gives (bus, devfn, Primary/Secondary/Subordinate Bus Number) and where each function is.
struct Topo {
    devices: &'static [&'static str],
    /// Below rp1 (else on the root bus, where no root port receives the bridge's messages).
    below_rp1: bool,
    buses: &'static [((u8, u8), u32)],
    br: (u8, u8),
    up: (u8, u8),
    dp: (u8, u8),
}

impl Topo {
    fn at(&self, f: F) -> (u8, u8) {
        match f {
            F::Rp => RP,
            F::Br => self.br,
            F::Up => self.up,
            F::Dp => self.dp,
        }
    }

    /// The bridge's requester id.
    fn br_id(&self) -> u32 {
        u32::from(self.br.0) << 8 | u32::from(self.br.1)
    }
}

/// rp1 at 00:02.0 (secondary bus 1, as the guest numbers it), br1 at 01:00.0. The steps'
/// writes to `Up` and `Dp` go to buses no bridge forwards (nothing answers them).
const ROOT_PORT: Topo = Topo {
    devices: &[
        "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1,addr=0x2.0",
        "pcie-pci-bridge,id=br1,bus=rp1",
    ],
    below_rp1: true,
    buses: &[(RP, 0x0001_0100)],
    br: (1, 0),
    up: (5, 0),
    dp: (6, 0),
};

/// rp1 at 00:02.0 -> up1 (01:00.0) -> dp1 (02:00.0) -> br1 (03:00.0).
const SWITCH: Topo = Topo {
    devices: &[
        "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1,addr=0x2.0",
        "x3130-upstream,id=up1,bus=rp1",
        "xio3130-downstream,id=dp1,bus=up1,chassis=5,slot=1",
        "pcie-pci-bridge,id=br1,bus=dp1",
    ],
    below_rp1: true,
    buses: &[
        (RP, 0x0003_0100),
        ((1, 0), 0x0003_0201),
        ((2, 0), 0x0003_0302),
    ],
    br: (3, 0),
    up: (1, 0),
    dp: (2, 0),
};
/// br1 on the root bus at 00:03.0: its errors are logged only (QEMU's `pcie_aer_msg()` finds no
/// bridge above it); rp1 must not change.
const ROOT_BUS: Topo = Topo {
    devices: &[
        "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1,addr=0x2.0",
        "pcie-pci-bridge,id=br1,bus=pcie.0,addr=0x3.0",
    ],
    below_rp1: false,
    buses: &[(RP, 0x0001_0100)],
    br: (0, 0x18),
    up: (5, 0),
    dp: (6, 0),
};
/// The root port's (bus, devfn).
const RP: (u8, u8) = (0, 0x10);
/// The root port's registers compared: Command/Status, Secondary Status, Bridge Control,
/// Device Control/Status (PCI Express capability at 0x54), AER 0x100-0x137.
const RP_REGS: [u16; 18] = [
    0x04, 0x1c, 0x3c, 0x5c, 0x100, 0x104, 0x108, 0x10c, 0x110, 0x114, 0x118, 0x11c, 0x120, 0x124,
    0x128, 0x12c, 0x130, 0x134,
];
/// The bridge's: Command/Status, Secondary Status, Bridge Control, Device Control/Status
/// (PCI Express capability at 0x48), AER 0x100-0x147 (with the TLP Prefix Log).
const BR_REGS: [u16; 22] = [
    0x04, 0x1c, 0x3c, 0x50, 0x100, 0x104, 0x108, 0x10c, 0x110, 0x114, 0x118, 0x11c, 0x120, 0x124,
    0x128, 0x12c, 0x130, 0x134, 0x138, 0x13c, 0x140, 0x144,
];
/// Where in [`RP_REGS`] Status, Root Error Status and Error Source Identification are.
const RP_STATUS: usize = 0;
const RP_ROOT_STATUS: usize = 16;
const RP_ERR_SRC: usize = 17;
/// Status Interrupt Status (bit 3 of the Status word, bit 19 of the dword at 0x04).
const INTX: u32 = 1 << 19;

enum Step {
    /// Guest writes: (root port or bridge, offset, width, value).
    Guest(&'static [(F, u16, u8, u32)]),
    /// An error injected at br1: QEMU's name and an optional TLP header to log.
    Inject(&'static str, Option<[u32; 4]>),
    /// A correctable error injected at br1 (QEMU does not forward it), and whether it is
    /// unmasked (pcierc's root port then receives ERR_COR).
    Correctable(&'static str, bool),
}

/// Write 1 to clear every error bit of both functions.
const CLEAR: &[(F, u16, u8, u32)] = &[
    (F::Rp, 0x130, 4, 0x7f),
    (F::Rp, 0x06, 2, 0xf900),
    (F::Rp, 0x1e, 2, 0xf900),
    (F::Rp, 0x5e, 2, 0xf),
    (F::Br, 0x104, 4, 0xffff_ffff),
    (F::Br, 0x110, 4, 0xffff_ffff),
    (F::Br, 0x06, 2, 0xf900),
    (F::Br, 0x1e, 2, 0xf900),
    (F::Br, 0x52, 2, 0xf),
];

#[rustfmt::skip]
fn steps() -> Vec<(&'static str, Step)> {
    use Step::*;
    vec![
        ("SERR# in Command and Bridge Control, Device Control reporting enables, Root Error \
          Command", Guest(&[
            (F::Rp, 0x04, 2, 0x0100),
            (F::Rp, 0x3e, 2, 0x0002),
            (F::Rp, 0x5c, 2, 0x000f),
            (F::Rp, 0x12c, 4, 0x7),
            (F::Up, 0x04, 2, 0x0100),
            (F::Up, 0x3e, 2, 0x0002),
            (F::Up, 0x98, 2, 0x000f),
            (F::Dp, 0x04, 2, 0x0100),
            (F::Dp, 0x3e, 2, 0x0002),
            (F::Dp, 0x98, 2, 0x000f),
            (F::Br, 0x04, 2, 0x0100),
            (F::Br, 0x50, 2, 0x000f),
        ])),
        ("non-fatal UNSUP", Inject("UNSUP", None)),
        ("clear", Guest(CLEAR)),
        ("fatal SDN with a header",
         Inject("SDN", Some([0x4000_0001, 0x0100_000f, 0xfe00_0000, 0x1234_5678]))),
        ("then non-fatal COMP_TIME (second uncorrectable)", Inject("COMP_TIME", None)),
        ("clear", Guest(CLEAR)),
        ("POISON_TLP made fatal by the severity register",
         Guest(&[(F::Br, 0x10c, 4, 0x0046_3030)])),
        ("fatal POISON_TLP", Inject("POISON_TLP", None)),
        ("clear", Guest(CLEAR)),
        ("mask DLP (writable under pc-q35-10.0 only)", Guest(&[(F::Br, 0x108, 4, 0x10)])),
        ("DLP", Inject("DLP", None)),
        ("clear", Guest(CLEAR)),
        ("correctable RCVR", Correctable("RCVR", true)),
        ("clear", Guest(CLEAR)),
        ("correctable INTERNAL (masked by default)", Correctable("INTERNAL", false)),
        ("clear", Guest(CLEAR)),
        ("mask BAD_TLP", Guest(&[(F::Br, 0x114, 4, 0xe040)])),
        ("correctable BAD_TLP, masked", Correctable("BAD_TLP", false)),
        ("clear", Guest(CLEAR)),
        ("correctable RCVR, then BAD_DLLP (Multiple ERR_COR Received)", Correctable("RCVR", true)),
        ("", Correctable("BAD_DLLP", true)),
        ("clear", Guest(CLEAR)),
        ("uncorrectable after them", Inject("UNSUP", None)),
        ("clear", Guest(CLEAR)),
    ]
}

/// One side's reading after a step: the reply, the root port's and the bridge's registers.
#[derive(Debug, PartialEq, Clone)]
struct Seen {
    /// `Some(true)` when the injection was accepted; `None` for guest writes.
    ok: Option<bool>,
    rp: Vec<u32>,
    br: Vec<u32>,
}

fn read(t: &Topo, side: &mut QmpSide, ok: Option<bool>) -> Seen {
    let g = &mut side.guest;
    let (br_bus, br_devfn) = t.br;
    Seen {
        ok,
        rp: RP_REGS.iter().map(|&o| g.read(RP.0, RP.1, o, 4)).collect(),
        br: BR_REGS
            .iter()
            .map(|&o| g.read(br_bus, br_devfn, o, 4))
            .collect(),
    }
}

fn guest(t: &Topo, side: &mut QmpSide, writes: &[(F, u16, u8, u32)]) {
    for &(f, offset, width, value) in writes {
        let (bus, devfn) = t.at(f);
        side.guest.write(bus, devfn, offset, width, value);
    }
}

/// QEMU: HMP `pcie_aer_inject_error br1 NAME [header0..3]`; accepted when it answers
/// "OK id: br1 ..." with the bridge's address (QEMU 7.2 with the bridge at 01:00.0: "OK id: br1
/// root bus: 0000:00, bus: 1 devfn: 0.0").
fn inject_qemu(t: &Topo, side: &mut QmpSide, name: &str, header: Option<[u32; 4]>) -> bool {
    let mut line = format!("pcie_aer_inject_error br1 {name}");
    for dw in header.iter().flatten() {
        line += &format!(" {dw:#x}");
    }
    let out = side.qmp.hmp(&line).expect("human-monitor-command");
    eprintln!("qemu: {line}: {}", out.trim_end());
    let (bus, devfn) = t.br;
    let ok = format!(
        "OK id: br1 root bus: 0000:00, bus: {bus:x} devfn: {:x}.{:x}",
        devfn >> 3,
        devfn & 7
    );
    out.starts_with(&ok)
}

/// pcierc: `pcie-aer-inject-error`; accepted when it answers `{}`. Its `header` dwords are the
/// Header Log register values (PCIe Base 6.0 §7.8.4.8: TLP byte 0 in bits 31:24 of the first);
/// QEMU stores HMP's header dwords big-endian (`stl_be_p()` in `pcie_aer_update_log()`), so
/// pcierc is given them byte-swapped (docs/qemu-compat.md).
fn inject_pcierc(side: &mut QmpSide, name: &str, header: Option<[u32; 4]>) -> bool {
    let mut args = json!({"id": "br1", "error": name});
    if let Some(h) = header {
        args["header"] = json!(h.map(u32::swap_bytes));
    }
    let r = side
        .qmp
        .execute("pcie-aer-inject-error", args)
        .expect("pcierc's QMP");
    if let Err(e) = &r {
        eprintln!("pcierc: pcie-aer-inject-error {name}: {e}");
    }
    r == Ok(Value::Object(Default::default()))
}

#[test]
fn bridge_errors_match_qemu_7_2() {
    let Some(q7) = Qemu::v7_2() else {
        return;
    };
    compare(&ROOT_PORT, &q7, "q35", "pc-q35-7.2", false);
}

/// The bridge on the root bus: errors logged in its registers only.
#[test]
fn bridge_errors_on_the_root_bus_match_qemu_7_2() {
    let Some(q7) = Qemu::v7_2() else {
        return;
    };
    compare(&ROOT_BUS, &q7, "q35", "pc-q35-7.2", false);
}

#[test]
fn bridge_errors_on_the_root_bus_match_qemu_10_0() {
    let Some(q10) = Qemu::v10_0() else {
        return;
    };
    compare(&ROOT_BUS, &q10, "pc-q35-10.0", "pc-q35-10.0", true);
}

#[test]
fn bridge_errors_match_qemu_10_0() {
    let Some(q10) = Qemu::v10_0() else {
        return;
    };
    compare(&ROOT_PORT, &q10, "pc-q35-10.0", "pc-q35-10.0", true);
}

/// The bridge below a switch's downstream port: the message reaches the root port through
/// both switch ports (whose own registers are not compared: pcierc leaves their Status bits
/// alone, docs/qemu-compat.md).
#[test]
fn bridge_errors_below_a_switch_match_qemu_7_2() {
    let Some(q7) = Qemu::v7_2() else {
        return;
    };
    compare(&SWITCH, &q7, "q35", "pc-q35-7.2", false);
}

#[test]
fn bridge_errors_below_a_switch_match_qemu_10_0() {
    let Some(q10) = Qemu::v10_0() else {
        return;
    };
    compare(&SWITCH, &q10, "pc-q35-10.0", "pc-q35-10.0", true);
}

/// [`steps`] on `qemu -M qemu_machine` and on `pcierc --machine machine`.
/// `qemu_forwards_correctable`: QEMU 8.0 and later send ERR_COR up with Correctable Error
/// Reporting Enable set ("hw/pci/aer: Add missing routing for AER errors"); QEMU 7.2 never does.
fn compare(
    t: &Topo,
    qemu_bin: &Qemu,
    qemu_machine: &str,
    machine: &str,
    qemu_forwards_correctable: bool,
) {
    let mut qemu = qemu_with_qmp(qemu_bin, qemu_machine, t.devices, "bridge-aer");
    let mut args = vec!["-n", "--machine", machine];
    for d in t.devices {
        args.extend(["--device", d]);
    }
    let mut ours = pcierc_with_qmp(&args);
    for side in [&mut qemu, &mut ours] {
        for &((bus, devfn), numbers) in t.buses {
            side.guest.write(bus, devfn, 0x18, 4, numbers);
        }
    }

    let mut mismatches = Vec::new();
    let mut all = vec![("power-on state", Step::Guest(&[]))];
    all.extend(steps());
    let n = all.len();
    let mut cor_src_differs = false;
    let mut received = 0;
    for (name, step) in &all {
        let q_before = read(t, &mut qemu, None);
        let (q, mut o) = match step {
            Step::Guest(writes) => {
                guest(t, &mut qemu, writes);
                guest(t, &mut ours, writes);
                (read(t, &mut qemu, None), read(t, &mut ours, None))
            }
            Step::Inject(e, header) => {
                let q = inject_qemu(t, &mut qemu, e, *header);
                let o = inject_pcierc(&mut ours, e, *header);
                (read(t, &mut qemu, Some(q)), read(t, &mut ours, Some(o)))
            }
            Step::Correctable(e, unmasked) => {
                let o_before = read(t, &mut ours, None);
                let q = inject_qemu(t, &mut qemu, e, None);
                let o = inject_pcierc(&mut ours, e, None);
                let (q, mut o) = (read(t, &mut qemu, Some(q)), read(t, &mut ours, Some(o)));
                if !qemu_forwards_correctable {
                    if q.rp != q_before.rp {
                        mismatches.push(format!(
                            "{name}: QEMU's root port changed on a correctable error\n    \
                             before {:x?}\n    after  {:x?}",
                            q_before.rp, q.rp
                        ));
                    }
                    // pcierc's ERR_COR reception (PCIe Base 6.0 §7.8.4.10-11): Correctable
                    // Error Received (Multiple ERR_COR Received when already set, else the
                    // bridge as the correctable source), the INTx its Root Error Command
                    // enables; nothing else changes.
                    let mut want = o_before.rp.clone();
                    if *unmasked && t.below_rp1 {
                        if want[RP_ROOT_STATUS] & 1 != 0 {
                            want[RP_ROOT_STATUS] |= 2;
                        } else {
                            want[RP_ERR_SRC] = (want[RP_ERR_SRC] & !0xffff) | t.br_id();
                        }
                        want[RP_ROOT_STATUS] |= 1;
                        want[RP_STATUS] |= INTX;
                        cor_src_differs = true;
                    }
                    if o.rp != want {
                        mismatches.push(format!(
                            "{name}: pcierc's root port\n    want {want:x?}\n    read {:x?}",
                            o.rp
                        ));
                    }
                    o.rp = q.rp.clone();
                }
                (q, o)
            }
        };
        // Without QEMU forwarding ERR_COR, pcierc's correctable source stays in Error Source
        // Identification (read-only, §7.8.4.11) where QEMU's keeps 0.
        if cor_src_differs
            && q.rp[RP_ERR_SRC] & 0xffff == 0
            && o.rp[RP_ERR_SRC] & 0xffff == t.br_id()
        {
            o.rp[RP_ERR_SRC] &= !0xffff;
        }
        if q.ok == Some(false) {
            mismatches.push(format!("{name}: QEMU refused the injection"));
        }
        // ERR_NONFATAL / ERR_FATAL Received in QEMU's Root Error Status, from the bridge.
        if q.rp[RP_ROOT_STATUS] & 0x60 != 0 && q.rp[RP_ERR_SRC] >> 16 == t.br_id() {
            received += 1;
        }
        if q != o {
            mismatches.push(format!("{name}:\n    qemu   {q:x?}\n    pcierc {o:x?}"));
        }
    }
    assert!(
        if t.below_rp1 {
            received >= 5
        } else {
            received == 0
        },
        "QEMU's root port received {received} uncorrectable errors from br1"
    );
    eprintln!(
        "{n} steps against {qemu_bin:?} -M {qemu_machine}: {} differences",
        mismatches.len()
    );
    assert_no_mismatches(&mismatches, || {
        format!(
            "{} differences from {qemu_bin:?} -M {qemu_machine} in {n} bridge AER steps",
            mismatches.len()
        )
    });
}
