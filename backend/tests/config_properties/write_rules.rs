//! Properties of writes: every write changes exactly the bits the engine's masks allow, and the
//! W1C status registers (AER, Device Status, Slot Status with QEMU's work-around) clear on 1
//! and keep on 0.

use pcierc_backend::devices::{Mch, PortFunction, RootPort, RootPortConfig};
use pcierc_backend::pci::caps::{aer, express, slot};
use pcierc_backend::pci::PciFunction;
use proptest::collection::vec;
use proptest::prelude::*;

use crate::{
    config,
    identity::find_capability,
    masks::{check_writes, image},
    ops::{aer_error, event, offset, port_config, value, width, Op, Step},
};

proptest! {
    #![proptest_config(config(128))]

    /// Every MCH write outside the registers QEMU gives side effects (extended TSEG at 0x50,
    /// F_SMBASE/SMRAM/ESMRAMC at 0x9c-0x9e) changes exactly what the masks allow: read-only
    /// bits never change, W1C bits clear on 1, nothing else moves.
    #[test]
    fn mch_writes_follow_the_masks(
        writes in vec((offset(), width(), value()), 1..48),
        locked in any::<bool>(),
    ) {
        let mut mch = Mch::new();
        if locked {
            // SMRAM D_LCK: fewer writable bits from now on.
            mch.config_write(0x9d, 1, 0x1a);
        }
        check_writes(&mut mch, 0x100, &[(0x50, 2), (0x9c, 3)], &writes)?;
    }

    /// The same for root ports of either model, outside the registers with write hooks (MSI-X or
    /// MSI Message Control, Slot Control/Status, Root Control/Status): no platform events, so no
    /// hook fires.
    #[test]
    fn root_port_writes_follow_the_masks(
        cfg in port_config(),
        writes in vec((offset(), width(), value()), 1..48),
    ) {
        let mut port = RootPort::new(cfg);
        let exp = find_capability(&port, 0x10).map_or(0, u32::from);
        let msix = find_capability(&port, 0x11).map_or(0, u32::from);
        let msi = find_capability(&port, 0x05).map_or(0, u32::from);
        // A switch port's Device Control (exp + 8) has Initiate Function Level Reset, which
        // resets the port (PCIe Base 6.0 §7.5.3.4): a hook too.
        let flr = port.config_read(exp as u16 + 4, 4) & express::DEVCAP_FLR != 0;
        let devctl = if flr { (exp + 0x08, 2) } else { (0, 0) };
        let hooked = [(msix + 2, 2), (msi + 2, 2), (exp + 0x18, 0x0c), devctl];
        check_writes(&mut port, 0x1000, &hooked, &writes)?;
    }

    /// AER Uncorrectable/Correctable/Root Error Status and Device Status error bits, with
    /// errors injected in between: a write clears exactly the set bits it writes 1 to (RW1C),
    /// keeps every bit it writes 0 to, and changes no read-only bit.
    #[test]
    fn error_status_bits_are_write_1_to_clear(
        steps in vec(prop_oneof![
            1 => aer_error().prop_map(Step::Event),
            3 => (0usize..4, 0u16..4, prop::sample::select(vec![1u8, 2, 4]), value(), any::<bool>())
                .prop_map(Step::Write),
        ], 1..32),
    ) {
        let mut port = RootPort::new(RootPortConfig { id: "rp".into(), ..Default::default() });
        let exp = u16::from(pcierc_backend::devices::root_port::EXP_OFFSET);
        let at = pcierc_backend::devices::root_port::AER_OFFSET;
        // (register, its size, the W1C bits the spec gives it).
        let regs = [
            (at + aer::UNCOR_STATUS, 4u8, aer::UNC_SUPPORTED),
            (at + aer::COR_STATUS, 4, aer::COR_SUPPORTED),
            (at + aer::ROOT_STATUS, 4, 0x7f),
            (exp + express::DEVSTA, 2, 0x0f),
        ];
        let img = image(&port)?;
        for &(base, size, w1c) in &regs {
            let declared = (0..u16::from(size))
                .fold(0u32, |acc, i| acc | u32::from(img.w1cmask[usize::from(base + i)]) << (8 * i));
            prop_assert_eq!(declared, w1c, "W1C mask of {:#x}", base);
        }
        for step in &steps {
            let &(reg, part, width, value, subset) = match step {
                Step::Event((e, own)) => {
                    let _refused = port.inject_error(e, *own);
                    port.take_interrupts();
                    continue;
                }
                Step::Write(w) => w,
            };
            let (base, size, w1c) = regs[reg];
            let width = width.min(size);
            let offset = base + (part * u16::from(width)) % u16::from(size);
            let old = port.config_read(base, size);
            // Half the time write a subset of what is set, so bits do get cleared.
            let shift = 8 * u32::from(offset - base);
            let data = if subset { (old >> shift) & value } else { value };
            let data = if width == 4 { data } else { data & ((1 << (8 * u32::from(width))) - 1) };
            port.config_write(offset, width, data);
            let want = old & !((data << shift) & w1c);
            prop_assert_eq!(
                port.config_read(base, size), want,
                "write {:#x}/{} {:#x} to {:#x}", offset, width, data, old
            );
        }
    }

    /// Slot Status with hot-plug events in between: W1C, with QEMU's work-around (a write that
    /// would clear an event bit that is not set restores every event bit; it tests the raw
    /// written value, unshifted); Presence Detect State and the interlock status are read-only.
    #[test]
    fn slot_status_is_write_1_to_clear(
        steps in vec(prop_oneof![
            1 => prop::sample::select(vec![Op::HotAdd, Op::Button, Op::Removed]).prop_map(Step::Event),
            3 => (any::<bool>(), any::<bool>(), any::<u16>(), any::<bool>()).prop_map(Step::Write),
        ], 1..32),
    ) {
        const SLOT_EVENTS: u16 = slot::SLTSTA_ABP
            | slot::SLTSTA_PFD
            | slot::SLTSTA_MRLSC
            | slot::SLTSTA_PDC
            | slot::SLTSTA_CC;
        let mut port = RootPort::new(RootPortConfig { id: "rp".into(), ..Default::default() });
        event(&mut port, &Op::HotAdd)?;
        let sta = u16::from(pcierc_backend::devices::root_port::EXP_OFFSET) + slot::SLTSTA;
        let img = image(&port)?;
        let w1c = u16::from(img.w1cmask[usize::from(sta)])
            | u16::from(img.w1cmask[usize::from(sta) + 1]) << 8;
        prop_assert_eq!(
            w1c,
            slot::SLTSTA_ABP | slot::SLTSTA_PDC | slot::SLTSTA_CC | slot::SLTSTA_DLLSC
        );
        for step in &steps {
            let &(byte, high, value, subset) = match step {
                Step::Event(e) => {
                    event(&mut port, e)?;
                    continue;
                }
                Step::Write(w) => w,
            };
            let old = port.slot_status();
            let (offset, width, data) = match (byte, high) {
                (false, _) => (sta, 2, if subset { old & value } else { value }),
                (true, false) => (sta, 1, if subset { old & value & 0xff } else { value & 0xff }),
                (true, true) => (sta + 1, 1, if subset { old >> 8 & value & 0xff } else { value & 0xff }),
            };
            let shifted = if offset == sta { data } else { data << 8 };
            port.config_write(offset, width, data.into());
            let mut want = old & !(shifted & w1c);
            if data & !old & SLOT_EVENTS != 0 {
                want = (want & !SLOT_EVENTS) | (old & SLOT_EVENTS);
            }
            prop_assert_eq!(
                port.slot_status(), want,
                "write {:#x}/{} {:#x} to {:#x}", offset, width, data, old
            );
        }
    }
}
