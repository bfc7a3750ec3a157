//! The bridge against QEMU 7.2's dumps (fixtures/qemu-7.2, made by dump_q35.py) and the SHPC
//! slot state machine against what QEMU 7.2 showed through qtest and QMP (values named with the
//! sequence that produced them; `-global ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off` so
//! that QEMU hot-plugs through the SHPC rather than ACPI).

use super::*;
use crate::pci::caps::shpc::{CMD_CODE, INT_LOCATOR, SERR_INT, SLOT_REGS};
use crate::pci::reference::{first_difference, load_dump, load_dump_from, read_all};

fn bridge(msi: OnOffAuto) -> PciePciBridge {
    PciePciBridge::new(PciePciBridgeConfig {
        id: "br1".into(),
        msi,
        ..Default::default()
    })
}

/// The SHPC BAR dump: `offset: 16 bytes` lines after a title.
fn load_bar_dump(name: &str) -> Vec<u8> {
    load_dump(name)[..256].to_vec()
}

fn slot(b: &mut PciePciBridge, device: u8) -> u32 {
    b.bar_read(0, u64::from(SLOT_REGS) + 4 * u64::from(device - 1), 4) as u32
}

fn command(b: &mut PciePciBridge, target: u8, code: u8) -> Effects {
    b.bar_write(
        0,
        CMD_CODE.into(),
        2,
        u64::from(target) << 8 | u64::from(code),
    )
}

#[test]
fn reset_state_matches_qemu_dumps() {
    for (b, dump) in [
        (bridge(OnOffAuto::Auto), "pcie_pci_bridge_00_02.0.xxxx"),
        (bridge(OnOffAuto::On), "pcie_pci_bridge_01_00.0.xxxx"),
        (
            bridge(OnOffAuto::Off),
            "pcie_pci_bridge_msi_off_00_02.0.xxxx",
        ),
    ] {
        let want = load_dump(dump);
        assert_eq!(first_difference(&read_all(&b), &want), None, "{dump}");
    }
}

#[test]
fn pc_q35_10_0_reset_state_matches_qemu_10_0_dumps() {
    for (msi, dump) in [
        (OnOffAuto::Auto, "pcie_pci_bridge_00_02.0.xxxx"),
        (OnOffAuto::On, "pcie_pci_bridge_01_00.0.xxxx"),
        (OnOffAuto::Off, "pcie_pci_bridge_msi_off_00_02.0.xxxx"),
    ] {
        let b = PciePciBridge::on_machine(bridge(msi).config().clone(), MachineType::PcQ35V10_0);
        let want = load_dump_from("qemu-10.0", dump);
        assert_eq!(first_difference(&read_all(&b), &want), None, "{dump}");
    }
    let mut b = PciePciBridge::on_machine(
        bridge(OnOffAuto::Auto).config().clone(),
        MachineType::PcQ35V10_0,
    );
    b.set_present(3).unwrap();
    b.reset();
    let got: Vec<u8> = (0..256u64)
        .step_by(4)
        .flat_map(|o| (b.bar_read(0, o, 4) as u32).to_le_bytes())
        .collect();
    let want = load_dump_from("qemu-10.0", "pcie_pci_bridge_00_02.0.shpc")[..256].to_vec();
    assert_eq!(first_difference(&got, &want), None);
}

#[test]
fn shpc_bar_matches_the_qemu_dump() {
    let mut b = bridge(OnOffAuto::Auto);
    b.set_present(3).unwrap();
    let got: Vec<u8> = (0..256u64)
        .step_by(4)
        .flat_map(|o| (b.bar_read(0, o, 4) as u32).to_le_bytes())
        .collect();
    assert_eq!(
        first_difference(&got, &load_bar_dump("pcie_pci_bridge_00_02.0.shpc")),
        None
    );
    assert_eq!(b.bar_read(1, 0, 4), u64::MAX, "no BAR1 of its own");
}

#[test]
fn capability_chains_are_qemus() {
    let b = bridge(OnOffAuto::Auto);
    assert_eq!(
        b.space().capabilities(),
        vec![(0x05, 0x8c), (0x01, 0x84), (0x10, 0x48), (0x0c, 0x40)]
    );
    assert_eq!(b.space().ext_capabilities(), vec![(0x1, 2, 0x100)]);
    let b = bridge(OnOffAuto::Off);
    assert_eq!(b.space().capabilities()[0], (0x01, 0x84));
}

#[test]
fn bar0_is_a_64_bit_256_byte_bar() {
    let mut b = bridge(OnOffAuto::Auto);
    b.config_write(0x10, 4, u32::MAX);
    b.config_write(0x14, 4, u32::MAX);
    assert_eq!(b.config_read(0x10, 4), 0xffff_ff04);
    assert_eq!(b.config_read(0x14, 4), 0xffff_ffff);
    b.config_write(0x10, 4, 0xfe00_0000);
    b.config_write(0x14, 4, 0);
    assert!(b.bars().is_empty(), "memory decode off");
    assert_eq!(
        b.config_write(0x04, 2, 0x2),
        Effects::BARS | Effects::WINDOWS
    );
    assert_eq!(
        b.bars(),
        vec![BarMapping {
            index: 0,
            base: 0xfe00_0000,
            size: 256
        }]
    );
    b.reset();
    assert_eq!(b.config_read(0x10, 4), 0x4, "type bits survive the reset");
    assert!(b.bars().is_empty());
}

/// The QMP sequence run against QEMU 7.2: hot-add at device 1, power indicator blink,
/// `device_del` (no refusal in 7.2), indicator off, `device_del` again (the slot is disabled with
/// the indicator off: removed at once).
#[test]
fn hot_plug_sequence_as_qemu_7_2() {
    let mut b = bridge(OnOffAuto::Auto);
    b.set_present(3).unwrap();
    assert_eq!(slot(&mut b, 1), 0x7f00_0d0f);
    assert!(b.hot_add(1).unwrap().contains(Effects::SLOT));
    assert_eq!(
        slot(&mut b, 1),
        0x7f0d_000f,
        "button, MRL and presence latched"
    );
    assert_eq!(
        b.bar_read(0, INT_LOCATOR.into(), 4),
        0,
        "every event masked at reset"
    );
    command(&mut b, 1, 0x08);
    assert_eq!(b.bar_read(0, CMD_CODE.into(), 4), 0x108, "no error status");
    assert_eq!(slot(&mut b, 1), 0x7f0d_000b, "power indicator blinking");
    assert_eq!(
        b.unplug_request(1).unwrap().0,
        ShpcUnplug::AttentionButton,
        "QEMU 7.2 does not refuse while blinking"
    );
    assert_eq!(slot(&mut b, 1), 0x7f0d_000b);
    command(&mut b, 1, 0x0c);
    assert_eq!(slot(&mut b, 1), 0x7f0d_000f);
    assert_eq!(b.unplug_request(1).unwrap().0, ShpcUnplug::Now);
    assert_eq!(slot(&mut b, 1), 0x7f0d_0d0f, "MRL open, empty");
    assert!(!b.slot_occupied(1));
    // The cold-plugged card at device 3: the guest turns the indicator off and disables the
    // slot (code 0x0f); QEMU unplugs the card.
    let fx = command(&mut b, 3, 0x0f);
    assert!(fx.contains(Effects::SLOT), "{fx:?}");
    assert_eq!(b.take_released(), vec![3]);
    assert_eq!(slot(&mut b, 3), 0x7f09_0d0f, "MRL and presence latched");
    assert_eq!(b.hot_add(0), Err(ShpcError::NoSlot(0)));
    assert_eq!(
        ShpcError::NoSlot(0).to_string(),
        "Unsupported PCI slot 0 for standard hotplug controller. Valid slots are between 1 and 31."
    );
}

#[test]
fn slot_commands_and_invalid_ones() {
    let mut b = bridge(OnOffAuto::Auto);
    b.set_present(2).unwrap();
    let status = |b: &mut PciePciBridge| (b.bar_read(0, 0x16, 2) as u16, b.bar_read(0, 0x20, 4));
    command(&mut b, 2, 0x01);
    assert_eq!(
        status(&mut b),
        (0x4, 0x1_000f),
        "enabled -> power-only is invalid"
    );
    command(&mut b, 0, 0x03);
    assert_eq!(status(&mut b).0, 0x4, "target 0 is invalid");
    command(&mut b, 2, 0x41);
    assert_eq!(status(&mut b).0, 0x8, "only 33 MHz conventional");
    command(&mut b, 2, 0x40);
    assert_eq!(status(&mut b).0, 0, "the next command clears the status");
    command(&mut b, 2, 0x49);
    assert_eq!(status(&mut b).0, 0x4, "enable-all with a slot enabled");
    command(&mut b, 2, 0x37);
    assert_eq!(
        slot(&mut b, 2) & 0x3f,
        0x37,
        "attention off, power blink, disabled"
    );
    assert!(
        b.take_released().is_empty(),
        "indicator not off: the card stays"
    );
    command(&mut b, 2, 0x49);
    assert_eq!(
        slot(&mut b, 2) & 0x0f,
        0x06,
        "enable-all enables the MRL-closed slot"
    );
    assert_eq!(
        slot(&mut b, 1) & 0x0f,
        0x0f,
        "and turns the empty slots' indicator off"
    );
    command(&mut b, 2, 0x50);
    assert_eq!(status(&mut b).0, 0x4, "unknown code");
    b.bar_write(0, 0x20, 4, 0x1_000f);
    assert_eq!(status(&mut b).1, 0xf, "Command Completed Detected is RW1C");
}

#[test]
fn events_interrupt_by_intx_without_msi() {
    let mut b = bridge(OnOffAuto::Off);
    b.hot_add(5).unwrap();
    assert!(!b.intx_asserted(), "masked");
    // Unmask slot 5's presence event and the global interrupt.
    b.bar_write(0, u64::from(SLOT_REGS) + 4 * 4 + 3, 1, 0x7e);
    assert!(!b.intx_asserted(), "the global mask is still set");
    let fx = b.bar_write(0, SERR_INT.into(), 4, 0xe);
    assert!(fx.contains(Effects::INTERRUPT));
    assert_eq!(
        b.take_interrupts(),
        vec![Interrupt::Intx { asserted: true }]
    );
    assert_eq!(b.bar_read(0, INT_LOCATOR.into(), 4), 1 << 5);
    assert_eq!(
        b.config_read(0x04, 4) >> 16 & 0x8,
        0x8,
        "Status.Interrupt Status"
    );
    // Commands complete: with the command interrupt unmasked the locator shows bit 0.
    b.bar_write(0, SERR_INT.into(), 4, 0xa);
    command(&mut b, 1, 0x0c);
    assert_eq!(b.bar_read(0, INT_LOCATOR.into(), 4), 1 << 5 | 1);
    // Clearing the latched events drops the level.
    b.bar_write(0, u64::from(SLOT_REGS) + 4 * 4 + 2, 1, 0x1f);
    b.bar_write(0, SERR_INT.into(), 4, 0x1_000a);
    assert!(!b.intx_asserted());
    assert_eq!(
        b.take_interrupts(),
        vec![Interrupt::Intx { asserted: false }]
    );
}

#[test]
fn events_send_msi_on_both_edges_as_qemu() {
    let mut b = bridge(OnOffAuto::Auto);
    b.config_write(0x90, 4, 0xfee0_0000);
    b.config_write(0x98, 2, 0x4041);
    b.config_write(0x8e, 2, 0x1);
    b.bar_write(0, SERR_INT.into(), 4, 0xa);
    let fx = command(&mut b, 1, 0x0c);
    assert!(fx.contains(Effects::INTERRUPT));
    let msg = Interrupt::Msi {
        vector: 0,
        address: 0xfee0_0000,
        data: 0x4041,
    };
    assert_eq!(b.take_interrupts(), vec![msg]);
    // Same level again: QEMU drives INTx (Status bit 3) although MSI is enabled.
    command(&mut b, 1, 0x0c);
    assert!(b.intx_asserted());
    assert_eq!(
        b.take_interrupts(),
        vec![Interrupt::Intx { asserted: true }]
    );
    // Falling edge: another message.
    b.bar_write(0, SERR_INT.into(), 4, 0x1_000a);
    assert_eq!(b.take_interrupts(), vec![msg]);
    // Masked: pending, sent on unmask.
    b.config_write(0x9c, 4, 1);
    command(&mut b, 1, 0x0c);
    assert_eq!(b.config_read(0xa0, 4), 1);
    assert_eq!(
        b.take_interrupts(),
        vec![Interrupt::Intx { asserted: false }],
        "writing the MSI capability deasserts INTx (msi_write_config())"
    );
    b.config_write(0x9c, 4, 0);
    assert_eq!(b.config_read(0xa0, 4), 0);
    assert_eq!(b.take_interrupts(), vec![msg]);
}

#[test]
fn dword_data_writes_the_register_set_with_qemus_quirk() {
    let mut b = bridge(OnOffAuto::Auto);
    // Select the Command dword (0x14) and write DWORD Data: QEMU writes the register set's own
    // dword at 0x44 (slot 9's register, 0x7f000d0f) instead of the guest's value.
    b.config_write(0x42, 1, 0x14 / 4);
    assert_eq!(b.config_read(0x44, 4), 0, "Command reads 0 at reset");
    b.config_write(0x44, 4, 0x0201_0203);
    assert_eq!(b.config_read(0x44, 4), 0x0000_0d0f, "code 0x0f to slot 13");
    assert_eq!(
        slot(&mut b, 13) & 0x3f,
        0x0f,
        "attention indicator unchanged"
    );
    b.config_write(0x42, 1, 0x20 / 4);
    assert_eq!(
        b.config_read(0x44, 4),
        0x1_000f,
        "Command Completed Detected"
    );
    b.config_write(0x42, 1, 0xff);
    assert_eq!(b.config_read(0x44, 4), 0, "past the register set");
}

#[test]
fn reset_keeps_what_qemu_keeps() {
    let mut b = bridge(OnOffAuto::Auto);
    b.config_write(0x50, 2, 0xf);
    b.config_write(0x70, 2, 0x8020);
    b.config_write(0x42, 1, 3);
    b.config_write(0x1c, 2, 0xf0f0);
    b.config_write(0x18, 4, 0xffff_ffff);
    b.config_write(0x3c, 4, 0xffff_ffff);
    b.reset();
    assert_eq!(b.config_read(0x50, 2), 0xf, "Device Control is not reset");
    assert_eq!(b.config_read(0x70, 2), 0x8020);
    assert_eq!(b.config_read(0x40, 4), 0x0003_000c);
    assert_eq!(b.config_read(0x1c, 2), 0, "windows zeroed, not closed");
    assert_eq!(b.config_read(0x18, 4), 0);
    assert_eq!(b.config_read(0x3c, 4), 0x0000_0100);
}

#[test]
fn save_restore_round_trips() {
    let mut b = bridge(OnOffAuto::Auto);
    b.set_present(4).unwrap();
    b.config_write(0x8e, 2, 1);
    b.bar_write(0, SERR_INT.into(), 4, 0xa);
    command(&mut b, 4, 0x0c);
    b.take_interrupts();
    let saved = b.save();
    let mut c = bridge(OnOffAuto::Auto);
    c.restore(&saved).unwrap();
    assert_eq!(c, b);
    assert!(
        bridge(OnOffAuto::Off).restore(&saved).is_err(),
        "other properties"
    );
    let mut broken = saved.clone();
    broken["shpc"]["regs"] = "zz".into();
    assert!(c.restore(&broken).is_err());
    assert_eq!(c, b, "a failed restore changes nothing");
}

#[test]
fn arbitrary_accesses_never_panic() {
    let mut b = bridge(OnOffAuto::Auto);
    let mut x = 0x9e37_79b9u32;
    for _ in 0..20000 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let width = [1u8, 2, 4][(x % 3) as usize];
        let offset = ((x >> 4) % 4096) as u16 & !(u16::from(width) - 1);
        b.config_write(offset, width, x.rotate_left(11));
        b.config_read(offset, width);
        let bw = [1u8, 2, 4, 8][(x >> 20) as usize % 4];
        b.bar_write(0, u64::from(x >> 8) % 257, bw, u64::from(x) << 3);
        b.bar_read(0, u64::from(x >> 9) % 257, bw);
        let _ = b.hot_add((x >> 3) as u8 % 40);
        let _ = b.unplug_request((x >> 5) as u8 % 40);
    }
    b.bar_read(0, u64::MAX - 2, 8);
    b.bar_write(0, u64::MAX - 2, 8, 0);
}

#[test]
fn interrupt_disable_moves_the_pin_but_not_the_status() {
    let mut b = bridge(OnOffAuto::Off);
    b.bar_write(0, SERR_INT.into(), 4, 0xa);
    command(&mut b, 1, 0x0c);
    assert_eq!(
        b.take_interrupts(),
        vec![Interrupt::Intx { asserted: true }]
    );
    // PCI Local Bus 3.0 §6.2.2: Interrupt Disable deasserts the pin; Interrupt Status stays.
    b.config_write(0x04, 2, 0x0400);
    assert_eq!(
        b.take_interrupts(),
        vec![Interrupt::Intx { asserted: false }]
    );
    assert_eq!(b.config_read(0x06, 2) & 0x8, 0x8);
    b.config_write(0x04, 2, 0);
    assert_eq!(
        b.take_interrupts(),
        vec![Interrupt::Intx { asserted: true }]
    );
}
