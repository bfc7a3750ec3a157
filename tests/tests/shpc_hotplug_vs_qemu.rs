//! The `pcie-pci-bridge`'s SHPC hot-plug against QEMU 7.2 (`q35`, the model built for
//! `pc-q35-7.2`) and QEMU 10.0 (`pc-q35-10.0`, the model built for it): the same QMP `device_add` /
//! `device_del` commands and the same guest writes to the SHPC BAR and the MSI capability, on
//! QEMU (`-qtest stdio` for the guest, `-qmp` for the commands) and on pcierc, twice:
//!
//! - `shpc_hot_plug_matches_qemu_*`: pcierc's model in-process (`hot_add`, `unplug_request`,
//!   `bar_write`, `config_write`);
//! - `shpc_hot_plug_through_qmp_matches_qemu_*`: the real `pcierc` process, the commands on its
//!   control socket (`device_add bus=br1`, `device_del`) and the guest's writes through
//!   `pcierc qtest --connect`, with a few more commands (no `addr`, an unknown bus, the bridge
//!   itself, an unknown id).
//!
//! After every step: the reply (the in-process test: whether the command succeeded, and QEMU's
//! message where the model has one; through QMP: QEMU's error class and message exactly), the
//! devices each side removed, every SHPC register, Status (Interrupt Status) and the MSI mask
//! and pending bits.
//!
//! QEMU runs with ACPI PCI hot-plug off for bridges
//! (`ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off`): QEMU 7.2's q35 otherwise hot-plugs
//! below bridges through ACPI and the SHPC sees nothing (docs/qemu-compat.md). Which devices a
//! step removed is read on QEMU from `/machine/peripheral` (`qom-list`), as in
//! `slot_rules_vs_qemu.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pcierc_backend::devices::machine::MachineType;
use pcierc_backend::devices::{PciePciBridge, PciePciBridgeConfig};
use pcierc_backend::pci::caps::shpc::{ShpcError, ShpcUnplug};
use pcierc_backend::pci::PciFunction;
use pcierc_tests::differential::{assert_no_mismatches, ConfigTarget};
use pcierc_tests::qmp_pair::{pcierc_with_qmp, peripherals, qemu_with_qmp, QmpSide};
use pcierc_tests::qtest::Qemu;
use serde_json::{json, Value};

/// The bridge at 00:02.0 with an e1000 from power-on at device 3 of its secondary bus.
const BRIDGE: &str = "pcie-pci-bridge,id=br1,bus=pcie.0,addr=0x2";
const COLD: &str = "e1000,id=cold,bus=br1,addr=3,romfile=";
const DEVFN: u8 = 0x10;
/// Where both sides put BAR0.
const BAR: u64 = 0xfe00_0000;

enum Step {
    /// `device_add` of an e1000 with this id at this device number.
    Add(&'static str, u8),
    /// `device_del` of this id.
    Del(&'static str),
    /// A guest write to the SHPC BAR: (offset, width, value).
    Bar(u64, u8, u64),
    /// A guest configuration write: (offset, width, value).
    Config(u16, u8, u32),
    /// Any other QMP command (only in [`qmp_steps`]: the in-process test has no control plane).
    Qmp(&'static str, Value),
}

#[rustfmt::skip]
fn steps() -> Vec<(&'static str, Step)> {
    use Step::*;
    vec![
        ("unmask the controller", Bar(0x20, 4, 0)),
        ("unmask slots 1, 3, 5", Bar(0x27, 1, 0)),
        ("", Bar(0x2f, 1, 0)),
        ("", Bar(0x37, 1, 0)),
        ("clear command detected", Bar(0x20, 4, 0x1_0000)),
        ("hot-add at 1", Add("h1", 1)),
        ("hot-add at 0", Add("h0", 0)),
        ("hot-add at 3 (occupied)", Add("h3", 3)),
        ("clear slot 1 events", Bar(0x26, 1, 0x1f)),
        ("enable slot 1, power on", Bar(0x14, 2, 0x0106)),
        ("clear command detected", Bar(0x20, 4, 0x1_0000)),
        ("device_del h1 (enabled)", Del("h1")),
        ("blink slot 1", Bar(0x14, 2, 0x0108)),
        ("device_del h1 while blinking", Del("h1")),
        ("clear slot 1 events", Bar(0x26, 1, 0x1f)),
        ("disable slot 1, power off", Bar(0x14, 2, 0x010f)),
        ("hot-add at 1 again", Add("h2", 1)),
        ("device_del h2 (disabled, off)", Del("h2")),
        ("device_del cold", Del("cold")),
        ("clear everything", Bar(0x24, 4, 0x001f_0000)),
        ("", Bar(0x2c, 4, 0x001f_0000)),
        ("", Bar(0x20, 4, 0x1_0000)),
        ("msi address", Config(0x90, 4, 0xfee0_0000)),
        ("msi data", Config(0x98, 2, 0x4041)),
        ("msi on", Config(0x8e, 2, 1)),
        ("hot-add at 5 with msi", Add("h5", 5)),
        ("msi masked", Config(0x9c, 4, 1)),
        ("power-only all while 3 and 5 are not enabled", Bar(0x14, 2, 0x0048)),
        ("enable all", Bar(0x14, 2, 0x0049)),
        ("msi unmasked", Config(0x9c, 4, 0)),
        ("slot 3 off and disabled", Bar(0x14, 2, 0x030f)),
        ("msi off", Config(0x8e, 2, 0)),
        ("device_del h5", Del("h5")),
        ("slot 5 off and disabled", Bar(0x14, 2, 0x050f)),
        ("hot-add at 7", Add("h7", 7)),
        ("slot 7 power-only, power on", Bar(0x14, 2, 0x0705)),
        ("slot 7 power-only to enabled", Bar(0x14, 2, 0x0706)),
        ("slot 7 disabled, power indicator on", Bar(0x14, 2, 0x0707)),
        ("slot 7 power indicator off", Bar(0x14, 2, 0x070c)),
        ("device_del h7", Del("h7")),
    ]
}

/// [`steps`], then commands QEMU answers before or outside the SHPC, and a hot-plug into a slot
/// the guest released, cancelled by the guest enabling it.
#[rustfmt::skip]
fn qmp_steps() -> Vec<(&'static str, Step)> {
    use Step::*;
    let mut v = steps();
    v.extend([
        ("device_add without addr (devfn 0)",
         Qmp("device_add", json!({"driver": "e1000", "id": "h9", "bus": "br1"}))),
        ("device_add to an unknown bus",
         Qmp("device_add", json!({"driver": "e1000", "id": "h9", "bus": "br9", "addr": "9"}))),
        ("device_del of the bridge", Qmp("device_del", json!({"id": "br1"}))),
        ("device_del of an unknown id", Qmp("device_del", json!({"id": "h9"}))),
        ("device_add addr=31 (hexadecimal: no device 0x31)",
         Qmp("device_add", json!({"driver": "e1000", "id": "h9", "bus": "br1", "addr": "31"}))),
        ("hot-add at 31", Add("h31", 31)),
        ("unmask slot 31", Bar(0x9f, 1, 0)),
        ("enable slot 31, power on, attention on", Bar(0x14, 2, 0x1f16)),
        ("device_del h31", Del("h31")),
        ("clear slot 31 events", Bar(0x9e, 1, 0x1f)),
        ("device_del h31 again", Del("h31")),
        ("slot 31 off and disabled", Bar(0x14, 2, 0x1f0f)),
        ("device_del h31 once gone", Del("h31")),
        ("hot-add at 3 again", Add("h3", 3)),
    ]);
    v
}

/// What a step shows: the reply, the removed devices, the registers.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    reply: Result<(), Option<String>>,
    removed: BTreeSet<String>,
    regs: Vec<u32>,
}

/// A register read after every step.
#[derive(Copy, Clone)]
enum At {
    /// Guest memory (the SHPC BAR).
    Mem(u64),
    /// Configuration space.
    Config(u16),
}

/// The registers compared after every step: the SHPC register set, Status, MSI mask/pending.
fn regs(read: &mut dyn FnMut(At) -> u32) -> Vec<u32> {
    let mut v: Vec<u32> = (0..0xa0u64)
        .step_by(4)
        .map(|o| read(At::Mem(BAR + o)))
        .collect();
    v.extend([0x04u16, 0x8c, 0x9c, 0xa0].map(|o| read(At::Config(o))));
    v
}

#[test]
fn shpc_hot_plug_matches_qemu_7_2() {
    let Some(q7) = Qemu::v7_2() else {
        return;
    };
    compare(&q7, "q35", MachineType::PcQ35V7_2);
}

/// QEMU 10.0's SHPC rules (`pc-q35-10.0`): `device_del` refused while the power indicator
/// blinks, every commanded slot state set, a card released when its slot turns disabled and off.
#[test]
fn shpc_hot_plug_matches_qemu_10_0() {
    let Some(q10) = Qemu::v10_0() else {
        return;
    };
    compare(&q10, "pc-q35-10.0", MachineType::PcQ35V10_0);
}

/// The steps on `qemu -M qemu_machine` and on the model built for `machine`.
fn compare(qemu_bin: &Qemu, qemu_machine: &str, machine: MachineType) {
    let mut side = qemu_with_qmp(qemu_bin, qemu_machine, &[BRIDGE, COLD], "shpc-hotplug");
    let (qemu, qmp) = (&mut side.guest, &mut side.qmp);
    let config = PciePciBridgeConfig {
        id: "br1".into(),
        ..Default::default()
    };
    let mut model = PciePciBridge::on_machine(config, machine);
    model.set_present(3).expect("device 3 has a slot");
    qemu.write(0, DEVFN, 0x10, 4, BAR as u32);
    qemu.write(0, DEVFN, 0x04, 2, 0x2);
    model.config_write(0x10, 4, BAR as u32);
    model.config_write(0x04, 2, 0x2);

    let mut devices: BTreeMap<&str, u8> = BTreeMap::from([("cold", 3)]);
    let mut present = peripherals(qmp);
    let mut model_present = present.clone();
    let mut mismatches = Vec::new();
    for (name, step) in steps() {
        // QEMU.
        let reply = match &step {
            Step::Add(id, dev) => {
                let r = qmp
                    .execute(
                        "device_add",
                        json!({"driver": "e1000", "id": id, "bus": "br1",
                               "addr": dev.to_string(), "romfile": ""}),
                    )
                    .expect("QMP");
                r.map(|_| ())
                    .map_err(|e: Value| e["desc"].as_str().map(str::to_string))
            }
            Step::Del(id) => qmp
                .execute("device_del", json!({"id": id}))
                .expect("QMP")
                .map(|_| ())
                .map_err(|e: Value| e["desc"].as_str().map(str::to_string)),
            Step::Bar(off, width, value) => {
                qemu.mem_write(BAR + off, *width, *value);
                Ok(())
            }
            Step::Config(off, width, value) => {
                qemu.write(0, DEVFN, *off, *width, *value);
                Ok(())
            }
            Step::Qmp(..) => panic!("the in-process comparison takes no raw QMP steps"),
        };
        let now = peripherals(qmp);
        let removed: BTreeSet<String> = present.difference(&now).cloned().collect();
        present = now;
        let q = Seen {
            reply,
            removed,
            regs: regs(&mut |at| match at {
                At::Mem(a) => qemu.mem_read(a, 4) as u32,
                At::Config(o) => qemu.read(0, DEVFN, o, 4),
            }),
        };

        // The model.
        let mut removed_devs: Vec<u8> = Vec::new();
        let reply = match &step {
            Step::Add(id, dev) => match model.hot_add(*dev) {
                Ok(_) => {
                    devices.insert(id, *dev);
                    model_present.insert(id.to_string());
                    Ok(())
                }
                // QEMU's own message for a slot the SHPC does not have; for an occupied devfn
                // QEMU's PCI core answers first with its message (not the model's business).
                Err(e @ ShpcError::NoSlot(_)) => Err(Some(e.to_string())),
                Err(_) => Err(None),
            },
            Step::Del(id) => {
                let dev = devices[id];
                match model.unplug_request(dev) {
                    Ok((ShpcUnplug::Now, _)) => {
                        removed_devs.push(dev);
                        Ok(())
                    }
                    Ok(_) => Ok(()),
                    // QEMU 10.0's refusal while the power indicator blinks.
                    Err(e @ ShpcError::PowerIndicatorBlinking(_)) => Err(Some(e.to_string())),
                    Err(_) => Err(None),
                }
            }
            Step::Bar(off, width, value) => {
                model.bar_write(0, *off, *width, *value);
                Ok(())
            }
            Step::Config(off, width, value) => {
                model.config_write(*off, *width, *value);
                Ok(())
            }
            Step::Qmp(..) => panic!("the in-process comparison takes no raw QMP steps"),
        };
        removed_devs.extend(model.take_released());
        let removed: BTreeSet<String> = devices
            .iter()
            .filter(|(_, d)| removed_devs.contains(d))
            .map(|(id, _)| id.to_string())
            .filter(|id| model_present.contains(id))
            .collect();
        for id in &removed {
            model_present.remove(id);
        }
        let ours = Seen {
            reply,
            removed,
            regs: regs(&mut |at| match at {
                At::Mem(a) => model.bar_read(0, a - BAR, 4) as u32,
                At::Config(o) => model.config_read(o, 4),
            }),
        };
        // QEMU's message for an occupied devfn is its PCI core's: compare failure only.
        let q = match (&q.reply, &ours.reply) {
            (Err(_), Err(None)) => Seen {
                reply: Err(None),
                ..q
            },
            _ => q,
        };
        if q != ours {
            mismatches.push(format!("{name}: qemu {q:x?}\n    pcierc {ours:x?}"));
        }
    }
    assert_no_mismatches(&mismatches, || {
        format!(
            "{} SHPC hot-plug steps differ from {qemu_bin:?} -M {qemu_machine}",
            mismatches.len()
        )
    });
}

/// One side of the QMP comparison: its guest (qtest) and its QMP socket.
struct Side {
    io: QmpSide,
    /// QEMU only: its peripheral devices before the step (`None` for pcierc, whose
    /// `DEVICE_DELETED` events say what left).
    peripherals: Option<BTreeSet<String>>,
}

/// What a step shows through QMP: the reply (`{"return": ..}` or the error's class and
/// message), the removed devices, the registers.
#[derive(Debug, PartialEq)]
struct SeenQmp {
    reply: Value,
    removed: BTreeSet<String>,
    regs: Vec<u32>,
}

impl Side {
    fn run(&mut self, step: &Step, qemu: bool) -> SeenQmp {
        let command = |cmd: &'static str, args: Value| Some((cmd, args));
        let cmd = match step {
            Step::Add(id, dev) => {
                // QEMU's addr strings are hexadecimal ("SLOT[.FN]").
                let mut args = json!({"driver": "e1000", "id": id, "bus": "br1",
                                      "addr": format!("{dev:x}")});
                // QEMU's e1000 without its option ROM; pcierc instantiates nothing.
                if qemu {
                    args["romfile"] = json!("");
                }
                command("device_add", args)
            }
            Step::Del(id) => command("device_del", json!({ "id": id })),
            Step::Qmp(cmd, args) => command(cmd, args.clone()),
            Step::Bar(off, width, value) => {
                self.io.guest.mem_write(BAR + off, *width, *value);
                None
            }
            Step::Config(off, width, value) => {
                self.io.guest.write(0, DEVFN, *off, *width, *value);
                None
            }
        };
        let reply = match cmd {
            None => Value::Null,
            Some((cmd, args)) => match self.io.qmp.execute(cmd, args).expect(cmd) {
                Ok(r) => json!({ "return": r }),
                Err(e) => json!({"class": e["class"], "desc": e["desc"]}),
            },
        };
        let events = self
            .io
            .qmp
            .drain_events(Duration::from_millis(if qemu { 20 } else { 150 }))
            .expect("QMP events");
        let removed = match &mut self.peripherals {
            None => events
                .iter()
                .filter(|e| e["event"] == "DEVICE_DELETED")
                .filter_map(|e| e["data"]["device"].as_str().map(str::to_string))
                .collect(),
            Some(before) => {
                let now = peripherals(&mut self.io.qmp);
                let removed = before.difference(&now).cloned().collect();
                *before = now;
                removed
            }
        };
        let guest = &mut self.io.guest;
        SeenQmp {
            reply,
            removed,
            regs: regs(&mut |at| match at {
                At::Mem(a) => guest.mem_read(a, 4) as u32,
                At::Config(o) => guest.read(0, DEVFN, o, 4),
            }),
        }
    }
}

#[test]
fn shpc_hot_plug_through_qmp_matches_qemu_7_2() {
    let Some(q7) = Qemu::v7_2() else {
        return;
    };
    compare_qmp(&q7, "q35", "pc-q35-7.2");
}

#[test]
fn shpc_hot_plug_through_qmp_matches_qemu_10_0() {
    let Some(q10) = Qemu::v10_0() else {
        return;
    };
    compare_qmp(&q10, "pc-q35-10.0", "pc-q35-10.0");
}

/// [`qmp_steps`] on `qemu -M qemu_machine` and on `pcierc --machine machine`, both through QMP.
fn compare_qmp(qemu_bin: &Qemu, qemu_machine: &str, machine: &str) {
    let mut qemu = Side {
        io: qemu_with_qmp(qemu_bin, qemu_machine, &[BRIDGE, COLD], "shpc-qmp"),
        peripherals: None,
    };
    qemu.peripherals = Some(peripherals(&mut qemu.io.qmp));
    let mut ours = Side {
        io: pcierc_with_qmp(&[
            "-n",
            "--machine",
            machine,
            "--device",
            BRIDGE,
            "--device",
            "e1000,id=cold,bus=br1,addr=3",
        ]),
        peripherals: None,
    };
    for side in [&mut qemu, &mut ours] {
        side.io.guest.write(0, DEVFN, 0x10, 4, BAR as u32);
        side.io.guest.write(0, DEVFN, 0x04, 2, 0x2);
    }

    let mut mismatches = Vec::new();
    let mut all = vec![(
        "power-on state (a write to read-only Base Offset)",
        Step::Bar(0, 4, 0),
    )];
    all.extend(qmp_steps());
    let n = all.len();
    for (name, step) in &all {
        let q = qemu.run(step, true);
        let o = ours.run(step, false);
        if q != o {
            mismatches.push(format!("{name}:\n    qemu   {q:x?}\n    pcierc {o:x?}"));
        }
    }
    eprintln!(
        "{n} steps through QMP against {qemu_bin:?} -M {qemu_machine}: {} differ",
        mismatches.len()
    );
    assert_no_mismatches(&mismatches, || {
        format!(
            "{} of {n} SHPC hot-plug steps through QMP differ from {qemu_bin:?} -M {qemu_machine}",
            mismatches.len()
        )
    });
}
