//! What happens to a function: strategies for guest accesses, root port properties and
//! platform events (hot-plug, PME, AER), and applying them with the checks a single access
//! promises.

use pcierc_backend::devices::root_port::LINK_WIDTHS;
use pcierc_backend::devices::{PortFunction, RootPort, RootPortConfig, RootPortModel};
use pcierc_backend::pci::caps::aer;
use pcierc_backend::pci::caps::express::LinkSpeed;
use pcierc_backend::pci::{AerError, ErrorSeverity, PciFunction};
use proptest::prelude::*;

use crate::{fits, CaseResult};

pub(crate) fn offset() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => 0u16..0x40,
        3 => 0x40u16..0x100,
        2 => 0x100u16..0x1000,
        1 => 0xff0u16..=0x1010,
        1 => any::<u16>(),
    ]
}

pub(crate) fn width() -> impl Strategy<Value = u8> {
    prop_oneof![
        8 => prop::sample::select(vec![1u8, 2, 4]),
        1 => prop::sample::select(vec![0u8, 3, 5, 8, 16, 255]),
    ]
}

pub(crate) fn value() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0), Just(u32::MAX), any::<u32>()]
}

/// A root port's properties, any of them (either model), including combinations QEMU refuses.
pub(crate) fn port_config() -> impl Strategy<Value = RootPortConfig> {
    let size = prop_oneof![Just(None), Just(Some(0)), any::<u64>().prop_map(Some)];
    (
        (
            any::<u8>(),
            any::<u16>(),
            any::<u8>(),
            any::<bool>(),
            prop::sample::select(RootPortModel::ALL.to_vec()),
        ),
        (
            proptest::option::of(any::<u32>()),
            size.clone(),
            size.clone(),
        ),
        (size.clone(), size),
        (
            any::<[bool; 5]>(),
            any::<u16>(),
            prop::sample::select(vec![
                LinkSpeed::Gt2_5,
                LinkSpeed::Gt5,
                LinkSpeed::Gt8,
                LinkSpeed::Gt16,
            ]),
            prop::sample::select(LINK_WIDTHS.to_vec()),
        ),
    )
        .prop_map(
            |(
                (chassis, slot, port, multifunction, model),
                (bus, io, mem),
                (pref32, pref64),
                (flags, aer_log_max, speed, width),
            )| {
                RootPortConfig {
                    id: "rp".into(),
                    model,
                    chassis,
                    slot,
                    port,
                    multifunction,
                    bus_reserve: bus,
                    io_reserve: io,
                    mem_reserve: mem,
                    pref32_reserve: pref32,
                    pref64_reserve: pref64,
                    hotplug: flags[0],
                    native_hotplug: flags[1],
                    power_controller_present: flags[2],
                    disable_acs: flags[3],
                    lnksta_dllla: flags[4],
                    aer_log_max,
                    speed,
                    width,
                    ..Default::default()
                }
            },
        )
}

pub(crate) fn aer_error() -> impl Strategy<Value = (AerError, bool)> {
    let severity = prop::sample::select(vec![
        ErrorSeverity::Correctable,
        ErrorSeverity::NonFatal,
        ErrorSeverity::Fatal,
    ]);
    let status = prop_oneof![
        2 => (0u32..32).prop_map(|b| 1 << b),
        2 => any::<u32>().prop_map(|v| v & (aer::UNC_SUPPORTED | aer::COR_SUPPORTED)),
        1 => any::<u32>(),
    ];
    (
        severity,
        status,
        any::<u16>(),
        any::<[u32; 4]>(),
        any::<bool>(),
    )
        .prop_map(|(severity, status, requester, header_log, own)| {
            let e = AerError {
                severity,
                status,
                requester,
                header_log,
            };
            (e, own)
        })
}

/// A platform event or a register write, interleaved.
#[derive(Clone, Debug)]
pub(crate) enum Step<E, W> {
    Event(E),
    Write(W),
}

/// What happens to a function: guest accesses, and for root ports the platform's events.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    Read(u16, u8),
    Write(u16, u8, u32),
    BarRead(u8, u64, u8),
    BarWrite(u8, u64, u8, u64),
    Reset,
    HotAdd,
    Button,
    Removed,
    Pme(u16),
    Error(AerError, bool),
}

fn bar_offset() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0u64..0x1010, 1 => any::<u64>()]
}

pub(crate) fn op(events: bool) -> impl Strategy<Value = Op> {
    let guest = prop_oneof![
        8 => (offset(), width()).prop_map(|(o, w)| Op::Read(o, w)),
        12 => (offset(), width(), value()).prop_map(|(o, w, v)| Op::Write(o, w, v)),
        1 => (0u8..8, bar_offset(), width()).prop_map(|(b, o, w)| Op::BarRead(b, o, w)),
        2 => (0u8..8, bar_offset(), width(), any::<u64>())
            .prop_map(|(b, o, w, v)| Op::BarWrite(b, o, w, v)),
        1 => Just(Op::Reset),
    ];
    let platform = prop_oneof![
        Just(Op::HotAdd),
        Just(Op::Button),
        Just(Op::Removed),
        any::<u16>().prop_map(Op::Pme),
        aer_error().prop_map(|(e, own)| Op::Error(e, own)),
    ];
    let w = if events { 3 } else { 0 };
    prop_oneof![20 => guest, w => platform]
}

/// Apply a guest access (or reset) to `f`, checking what a single access promises; `size` is the
/// function's configuration space size. Platform events are ignored here (see [`event`]).
pub(crate) fn apply(f: &mut dyn PciFunction, op: &Op, size: u16) -> CaseResult {
    match *op {
        Op::Read(offset, width) => {
            let v = f.config_read(offset, width);
            prop_assert!(fits(v.into(), width), "read {offset:#x}/{width} = {v:#x}");
            // Bytes past the function's configuration space read as all ones.
            for i in 0..u16::from(width.min(4)) {
                if u32::from(offset) + u32::from(i) >= u32::from(size) {
                    prop_assert_eq!(v >> (8 * i) & 0xff, 0xff, "{:#x}/{}", offset, width);
                }
            }
        }
        Op::Write(offset, width, value) => {
            f.config_write(offset, width, value);
        }
        Op::BarRead(bar, offset, width) => {
            let v = f.bar_read(bar, offset, width);
            // All ones is what a BAR the function does not have reads as.
            prop_assert!(
                fits(v, width) || v == u64::MAX,
                "BAR{bar} read {offset:#x}/{width} = {v:#x}"
            );
        }
        Op::BarWrite(bar, offset, width, value) => {
            f.bar_write(bar, offset, width, value);
        }
        Op::Reset => f.reset(),
        _ => {}
    }
    Ok(())
}

/// Apply a platform event to a root port (refusals such as "slot occupied" are fine), then drain
/// what it queued; guest accesses go to [`apply`].
pub(crate) fn event(p: &mut RootPort, op: &Op) -> CaseResult {
    let _accepted_or_refused = match *op {
        Op::HotAdd => p.hot_add().map_err(drop),
        Op::Button => p.attention_button().map_err(drop),
        Op::Removed => p.removed().map_err(drop),
        Op::Pme(requester) => Ok(p.raise_pme(requester)),
        Op::Error(e, own) => p.inject_error(&e, own).map_err(drop),
        _ => return apply(p, op, 0x1000),
    };
    p.take_interrupts();
    p.slot_events();
    Ok(())
}
