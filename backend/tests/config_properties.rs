//! Property tests of the configuration-space models under arbitrary guest accesses, through the
//! public API only: the function models ([`Mch`], [`RootPort`]) and the [`Hierarchy`] of the
//! embedded default topology through its configuration mechanism #1, ECAM and direct entry
//! points.
//!
//! Properties: no access panics, whatever its width (1, 2, 4 and invalid ones) or offset
//! (unaligned, past the space, past 4 KiB); reads fit their width; identity registers and
//! capability chains never change; a write changes exactly the bits the engine's masks allow
//! (`(old & !wmask) | (data & wmask)`, then write-1-to-clear), the masks read from the models'
//! saved state; W1C status registers clear on 1 and keep on 0 (with QEMU's Slot Status
//! work-around); the hierarchy answers with the documented statuses, routes mechanism #1 and
//! ECAM to the same registers and always describes a valid topology. Failing cases are persisted
//! in `tests/proptest-regressions/config_properties.txt`.

use pcierc_backend::devices::{Mch, PortFunction, RootPort, RootPortConfig};
use pcierc_backend::pci::caps::{aer, express, slot};
use pcierc_backend::pci::{AerError, ErrorSeverity, PciFunction};
use pcierc_backend::topology::{Hierarchy, Routed, TopologySpec};
use pcierc_protocol::{Status, Topology};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, TestCaseError};

/// Where proptest records failing cases (its default for a `tests/` file would be
/// `tests/config_properties.proptest-regressions`, since no `lib.rs` is beside or above it).
const REGRESSIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/proptest-regressions/config_properties.txt"
);

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    }
}

type CaseResult<T = ()> = Result<T, TestCaseError>;

fn fail<T>(why: impl std::fmt::Display) -> CaseResult<T> {
    Err(TestCaseError::fail(why.to_string()))
}

/// Does `v` fit in `width` bytes (at most 8)?
fn fits(v: u64, width: u8) -> bool {
    width >= 8 || v >> (8 * u32::from(width)) == 0
}

// ---------------------------------------------------------------------------------------------
// What a function must keep: identity, capability chains, capability registers.

/// `(offset, width, mask)` of the registers no guest write may change.
fn identity_map(f: &dyn PciFunction) -> Vec<(u16, u8, u32)> {
    // Vendor/Device ID, Revision/Class Code, Header Type, Capabilities Pointer, Interrupt Pin
    // (PCI Local Bus 3.0 §6.2).
    let mut map = vec![
        (0x00, 4, u32::MAX),
        (0x08, 4, u32::MAX),
        (0x0e, 1, 0xff),
        (0x34, 1, 0xff),
        (0x3d, 1, 0xff),
    ];
    let header_type = f.config_read(0x0e, 1) & 0x7f;
    if header_type == 0 {
        // Type 0: Subsystem Vendor ID and Subsystem ID.
        map.push((0x2c, 4, u32::MAX));
    }
    // Standard capabilities (PCI Local Bus 3.0 §6.7): ID and next pointer of each, and the
    // read-only capability registers of the ones pcierc builds.
    let mut at = f.config_read(0x34, 1) as u16;
    let mut seen = 0;
    while at != 0 && seen < 48 {
        map.push((at, 2, 0xffff));
        match f.config_read(at, 1) {
            // PCI Express (PCIe Base 6.0 §7.5.3): Capabilities, Device/Link/Slot/Root
            // Capabilities, Device/Link Capabilities 2.
            0x10 => map.extend([
                (at + 0x02, 2, 0xffff),
                (at + 0x04, 4, u32::MAX),
                (at + 0x0c, 4, u32::MAX),
                (at + 0x14, 4, u32::MAX),
                (at + 0x1e, 2, 0xffff),
                (at + 0x24, 4, u32::MAX),
                (at + 0x2c, 4, u32::MAX),
            ]),
            // MSI-X (PCIe Base 6.0 §7.7.2): Table Size, Table and PBA Offset/BIR.
            0x11 => map.extend([
                (at + 0x02, 2, 0x07ff),
                (at + 0x04, 4, u32::MAX),
                (at + 0x08, 4, u32::MAX),
            ]),
            // Bridge Subsystem Vendor ID (PCI-to-PCI Bridge 1.2 §3.2.5.13 ff.).
            0x0d => map.push((at + 0x04, 4, u32::MAX)),
            // Vendor specific (QEMU's resource reserve): every byte, as long as it says.
            0x09 => {
                let len = f.config_read(at + 2, 1) as u16;
                map.extend((2..len).map(|i| (at + i, 1, 0xff)));
            }
            _ => {}
        }
        at = f.config_read(at + 1, 1) as u16;
        seen += 1;
    }
    // Extended capabilities (PCIe Base 6.0 §7.6.3): every header.
    let mut at = 0x100u16;
    while at >= 0x100 && seen < 1024 {
        let h = f.config_read(at, 4);
        if h == 0 || h == u32::MAX {
            break;
        }
        map.push((at, 4, u32::MAX));
        at = (h >> 20) as u16 & 0xffc;
        seen += 1;
    }
    map
}

fn snapshot(f: &dyn PciFunction, map: &[(u16, u8, u32)]) -> Vec<u32> {
    map.iter()
        .map(|&(o, w, m)| f.config_read(o, w) & m)
        .collect()
}

/// The engine's planes, read from the model's saved state (the only public view of them).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Image {
    value: Vec<u8>,
    wmask: Vec<u8>,
    w1cmask: Vec<u8>,
}

fn image(f: &dyn PciFunction) -> CaseResult<Image> {
    let state = f.save();
    let space = state
        .get("space")
        .or_else(|| state.get("port").and_then(|p| p.get("space")));
    let plane = |name: &str| -> CaseResult<Vec<u8>> {
        let hex = space
            .and_then(|s| s.get(name))
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let bytes: Option<Vec<u8>> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
            .collect();
        match bytes {
            Some(b) if !b.is_empty() => Ok(b),
            _ => fail(format!("no '{name}' plane in the saved state {state}")),
        }
    };
    Ok(Image {
        value: plane("value")?,
        wmask: plane("wmask")?,
        w1cmask: plane("w1cmask")?,
    })
}

/// The value plane as the guest reads it (cheaper than a save), `size` bytes.
fn values(f: &dyn PciFunction, size: u16) -> Vec<u8> {
    (0..size)
        .step_by(4)
        .flat_map(|o| f.config_read(o, 4).to_le_bytes())
        .collect()
}

/// Check `writes` against the engine's rule, skipping (and re-synchronising after) the ones
/// that overlap `hooked` registers `(start, len)`, whose side effects are the model's own.
fn check_writes(
    f: &mut dyn PciFunction,
    size: u16,
    hooked: &[(u32, u32)],
    writes: &[(u16, u8, u32)],
) -> CaseResult {
    let mut model = image(f)?;
    for &(offset, width, value) in writes {
        let (a, b) = (u32::from(offset), u32::from(offset) + u32::from(width));
        let skip = hooked.iter().any(|&(s, n)| a < s + n && s < b);
        f.config_write(offset, width, value);
        if skip {
            model = image(f)?;
            continue;
        }
        model = engine_write(&model, offset, width, value);
        prop_assert_eq!(
            &values(f, size),
            &model.value,
            "write {:#x}/{} {:#x}",
            offset,
            width,
            value
        );
    }
    // The masks did not move either.
    prop_assert_eq!(image(f)?, model);
    Ok(())
}

/// Is this a valid configuration access (the models ignore writes that are not)?
fn valid_access(offset: u16, width: u8) -> bool {
    matches!(width, 1 | 2 | 4)
        && offset.is_multiple_of(u16::from(width))
        && u32::from(offset) + u32::from(width) <= 0x1000
}

/// The engine's write rule (QEMU's `pci_default_write_config()`) applied to `before`.
fn engine_write(before: &Image, offset: u16, width: u8, data: u32) -> Image {
    let mut after = before.clone();
    if !valid_access(offset, width) {
        return after;
    }
    for i in 0..usize::from(width) {
        let o = usize::from(offset) + i;
        let Some(v) = after.value.get_mut(o) else {
            break; // past the function's size: dropped
        };
        let d = (data >> (8 * i)) as u8;
        let (w, c) = (before.wmask[o], before.w1cmask[o]);
        *v = ((*v & !w) | (d & w)) & !(d & c);
    }
    after
}

// ---------------------------------------------------------------------------------------------
// Strategies.

fn offset() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => 0u16..0x40,
        3 => 0x40u16..0x100,
        2 => 0x100u16..0x1000,
        1 => 0xff0u16..=0x1010,
        1 => any::<u16>(),
    ]
}

fn width() -> impl Strategy<Value = u8> {
    prop_oneof![
        8 => prop::sample::select(vec![1u8, 2, 4]),
        1 => prop::sample::select(vec![0u8, 3, 5, 8, 16, 255]),
    ]
}

fn value() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0), Just(u32::MAX), any::<u32>()]
}

/// A root port's properties, any of them, including combinations QEMU refuses.
fn port_config() -> impl Strategy<Value = RootPortConfig> {
    let size = prop_oneof![Just(None), Just(Some(0)), any::<u64>().prop_map(Some)];
    (
        (any::<u8>(), any::<u16>(), any::<u8>(), any::<bool>()),
        (
            proptest::option::of(any::<u32>()),
            size.clone(),
            size.clone(),
        ),
        (size.clone(), size),
    )
        .prop_map(
            |((chassis, slot, port, multifunction), (bus, io, mem), (pref32, pref64))| {
                RootPortConfig {
                    id: "rp".into(),
                    chassis,
                    slot,
                    port,
                    multifunction,
                    bus_reserve: bus,
                    io_reserve: io,
                    mem_reserve: mem,
                    pref32_reserve: pref32,
                    pref64_reserve: pref64,
                }
            },
        )
}

fn aer_error() -> impl Strategy<Value = (AerError, bool)> {
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
enum Step<E, W> {
    Event(E),
    Write(W),
}

/// What happens to a function: guest accesses, and for root ports the platform's events.
#[derive(Clone, Debug)]
enum Op {
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

fn op(events: bool) -> impl Strategy<Value = Op> {
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
fn apply(f: &mut dyn PciFunction, op: &Op, size: u16) -> CaseResult {
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
fn event(p: &mut RootPort, op: &Op) -> CaseResult {
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

/// What `map` protects is declared read-only (neither writable nor W1C) in the engine's masks.
fn assert_read_only(f: &dyn PciFunction, map: &[(u16, u8, u32)]) -> CaseResult {
    let img = image(f)?;
    for &(o, w, m) in map {
        for i in 0..u16::from(w) {
            let (at, bits) = (usize::from(o + i), (m >> (8 * i)) as u8);
            prop_assert_eq!(img.wmask[at] & bits, 0, "writable identity byte {:#x}", at);
            prop_assert_eq!(img.w1cmask[at] & bits, 0, "W1C identity byte {:#x}", at);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Properties of the function models.

proptest! {
    #![proptest_config(config(128))]

    /// The MCH under any accesses: no panic, reads fit, identity kept, and after save/restore a
    /// fresh MCH reads the same everywhere.
    #[test]
    fn mch_survives_any_access(ops in vec(op(false), 1..64)) {
        let mut mch = Mch::new();
        let map = identity_map(&mch);
        assert_read_only(&mch, &map)?;
        let before = snapshot(&mch, &map);
        for op in &ops {
            apply(&mut mch, op, 0x100)?;
            prop_assert_eq!(&snapshot(&mch, &map), &before, "after {:?}", op);
        }
        let mut copy = Mch::new();
        prop_assert!(copy.restore(&mch.save()).is_ok());
        for o in (0..0x1000).step_by(4) {
            prop_assert_eq!(copy.config_read(o, 4), mch.config_read(o, 4), "{:#x}", o);
        }
    }

    /// A root port with any properties under any accesses and platform events (hot-plug, PME,
    /// AER): no panic, reads fit, identity and capability chains kept, save/restore faithful.
    #[test]
    fn root_port_survives_any_access(cfg in port_config(), ops in vec(op(true), 1..64)) {
        let mut port = RootPort::new(cfg.clone());
        let map = identity_map(&port);
        assert_read_only(&port, &map)?;
        let before = snapshot(&port, &map);
        for op in &ops {
            event(&mut port, op)?;
            prop_assert_eq!(&snapshot(&port, &map), &before, "after {:?}", op);
        }
        let mut copy = RootPort::new(cfg);
        prop_assert!(copy.restore(&port.save()).is_ok());
        for o in (0..0x1000).step_by(4) {
            prop_assert_eq!(copy.config_read(o, 4), port.config_read(o, 4), "{:#x}", o);
        }
        prop_assert_eq!(copy.save(), port.save());
    }

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

    /// The same for root ports, outside the registers with write hooks (MSI-X Message Control,
    /// Slot Control/Status, Root Control/Status): no platform events, so no hook fires.
    #[test]
    fn root_port_writes_follow_the_masks(
        cfg in port_config(),
        writes in vec((offset(), width(), value()), 1..48),
    ) {
        let mut port = RootPort::new(cfg);
        let exp = u32::from(pcierc_backend::devices::root_port::EXP_OFFSET);
        let msix = find_capability(&port, 0x11).map_or(0, u32::from);
        check_writes(&mut port, 0x1000, &[(msix + 2, 2), (exp + 0x18, 0x0c)], &writes)?;
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

    /// Saved state that was tampered with is restored whole or refused with nothing changed, and
    /// the function goes on serving accesses either way.
    #[test]
    fn tampered_state_is_all_or_nothing(
        ops in vec(op(true), 0..16),
        edits in vec((any::<prop::sample::Index>(), any::<char>()), 1..4),
        later in vec(op(true), 0..16),
        is_mch in any::<bool>(),
    ) {
        let cfg = RootPortConfig { id: "rp".into(), ..Default::default() };
        let (mut mch, mut port) = (Mch::new(), RootPort::new(cfg));
        let (f, size): (&mut dyn PciFunction, u16) = if is_mch {
            for op in &ops {
                apply(&mut mch, op, 0x100)?;
            }
            (&mut mch, 0x100)
        } else {
            for op in &ops {
                event(&mut port, op)?;
            }
            (&mut port, 0x1000)
        };
        let mut text: Vec<char> = f.save().to_string().chars().collect();
        for (at, c) in &edits {
            let i = at.index(text.len());
            text[i] = *c;
        }
        let text: String = text.into_iter().collect();
        if let Ok(tampered) = serde_json::from_str::<serde_json::Value>(&text) {
            let before = f.save();
            if f.restore(&tampered).is_err() {
                prop_assert_eq!(f.save(), before, "a refused state changed the function");
            }
        }
        // Serve on (guest accesses only: platform events need the concrete port).
        for op in &later {
            apply(f, op, size)?;
        }
    }
}

/// The offset of the first standard capability with `id`, following the chain from 0x34.
fn find_capability(f: &dyn PciFunction, id: u32) -> Option<u8> {
    let mut at = f.config_read(0x34, 1) as u8;
    for _ in 0..48 {
        if at == 0 {
            return None;
        }
        if f.config_read(at.into(), 1) == id {
            return Some(at);
        }
        at = f.config_read(u16::from(at) + 1, 1) as u8;
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Properties of the hierarchy (embedded default topology: MCH at 00:00.0, root ports at
// 00:02.0-3; optionally functions other emulators serve).

const CONFIG_ADDRESS: u64 = 0xcf8;
const CONFIG_DATA: u64 = 0xcfc;

/// A trapped access, as a VMM forwards it.
#[derive(Clone, Debug)]
enum Access {
    /// CONFIG_ADDRESS write (mechanism #1).
    Select(u32),
    PioRead(u64, u8),
    PioWrite(u64, u8, u64),
    /// An ECAM access: (bus, devfn, offset) inside the current window if there is one.
    EcamRead(u8, u8, u16, u8),
    EcamWrite(u8, u8, u16, u8, u64),
    MmioRead(u64, u8),
    MmioWrite(u64, u8, u64),
    ConfigRead(u8, u8, u16, u8),
    ConfigWrite(u8, u8, u16, u8, u32),
    /// PCIEXBAR: enable ECAM at one of a few bases (or whatever the value says).
    Pciexbar(u32),
    Reset,
}

fn devfn() -> impl Strategy<Value = u8> {
    prop_oneof![4 => prop::sample::select(vec![0u8, 0x10, 0x11, 0x12, 0x13]), 1 => any::<u8>()]
}

fn bus() -> impl Strategy<Value = u8> {
    prop_oneof![4 => Just(0u8), 1 => 0u8..4, 1 => any::<u8>()]
}

fn pio_width() -> impl Strategy<Value = u8> {
    prop_oneof![8 => prop::sample::select(vec![1u8, 2, 4]), 1 => prop::sample::select(vec![0u8, 3, 8, 255])]
}

fn mmio_width() -> impl Strategy<Value = u8> {
    prop_oneof![8 => prop::sample::select(vec![1u8, 2, 4, 8]), 1 => prop::sample::select(vec![0u8, 3, 16])]
}

fn access() -> impl Strategy<Value = Access> {
    let enable = prop_oneof![4 => Just(0x8000_0000u32), 1 => Just(0)];
    let select = (enable, bus(), devfn(), any::<u8>()).prop_map(|(en, b, d, r)| {
        Access::Select(en | u32::from(b) << 16 | u32::from(d) << 8 | u32::from(r))
    });
    let port = prop_oneof![8 => CONFIG_ADDRESS..=CONFIG_DATA + 4, 1 => any::<u64>()];
    let data_port = CONFIG_DATA..CONFIG_DATA + 4;
    prop_oneof![
        3 => select,
        3 => (data_port.clone(), pio_width()).prop_map(|(p, w)| Access::PioRead(p, w)),
        4 => (data_port, pio_width(), any::<u64>()).prop_map(|(p, w, v)| Access::PioWrite(p, w, v)),
        1 => (port.clone(), pio_width()).prop_map(|(p, w)| Access::PioRead(p, w)),
        1 => (port, pio_width(), any::<u64>()).prop_map(|(p, w, v)| Access::PioWrite(p, w, v)),
        3 => (bus(), devfn(), offset(), mmio_width()).prop_map(|(b, d, o, w)| Access::EcamRead(b, d, o, w)),
        4 => (bus(), devfn(), offset(), mmio_width(), any::<u64>())
            .prop_map(|(b, d, o, w, v)| Access::EcamWrite(b, d, o, w, v)),
        1 => (any::<u64>(), mmio_width()).prop_map(|(a, w)| Access::MmioRead(a, w)),
        1 => (any::<u64>(), mmio_width(), any::<u64>()).prop_map(|(a, w, v)| Access::MmioWrite(a, w, v)),
        2 => (bus(), devfn(), offset(), width()).prop_map(|(b, d, o, w)| Access::ConfigRead(b, d, o, w)),
        3 => (bus(), devfn(), offset(), width(), value())
            .prop_map(|(b, d, o, w, v)| Access::ConfigWrite(b, d, o, w, v)),
        2 => prop_oneof![
            Just(0xb000_0001u32),
            Just(0xe000_0001),
            Just(0xe000_0005),
            any::<u32>()
        ].prop_map(Access::Pciexbar),
        1 => Just(Access::Reset),
    ]
}

/// Accesses after ECAM was enabled at 0xb0000000 (a reset or PCIEXBAR write may change that).
fn accesses() -> impl Strategy<Value = Vec<Access>> {
    vec(access(), 1..64).prop_map(|mut v| {
        v.insert(0, Access::Pciexbar(0xb000_0001));
        v
    })
}

/// What a valid configuration access to (bus, devfn) must answer: `EREMOTE` for a function
/// another emulator serves, success otherwise (absent functions read as all ones).
fn routed(h: &Hierarchy, bus: u8, devfn: u8) -> Result<(), Status> {
    match h.route(bus, devfn) {
        Routed::Remote(_) => Err(Status::Remote),
        _ => Ok(()),
    }
}

/// Run one access and check the statuses section 9 documents, the widths of the values read,
/// and that mechanism #1 and ECAM reach the same registers as a direct configuration read.
fn run(h: &mut Hierarchy, a: &Access) -> CaseResult {
    let valid_pio = |w: u8| matches!(w, 1 | 2 | 4);
    let valid_mmio = |w: u8| matches!(w, 1 | 2 | 4 | 8);
    let in_range = |offset: u16, width: u8| usize::from(offset) + usize::from(width) <= 4096;
    let ca = h.config_address();
    let (ca_bus, ca_devfn, ca_reg) = ((ca >> 16) as u8, (ca >> 8) as u8, (ca & 0xfc) as u16);
    let ca_on = ca & 0x8000_0000 != 0;
    match *a {
        Access::Select(v) => {
            prop_assert_eq!(h.pio_write(CONFIG_ADDRESS, 4, v.into()).map(drop), Ok(()))
        }
        Access::Pciexbar(v) => {
            // Through mechanism #1 to 00:00.0 offset 0x60, as firmware does.
            prop_assert_eq!(
                h.pio_write(CONFIG_ADDRESS, 4, 0x8000_0060).map(drop),
                Ok(())
            );
            prop_assert_eq!(h.pio_write(CONFIG_DATA, 4, v.into()).map(drop), Ok(()));
        }
        Access::PioRead(port, width) => {
            // Expected: the latched address, or byte-wise direct reads; past 0xCFF floats high.
            let want = if !valid_pio(width) {
                Err(Status::Invalid)
            } else if port == CONFIG_ADDRESS && width == 4 {
                Ok(u64::from(ca))
            } else if !(CONFIG_DATA..CONFIG_DATA + 4).contains(&port) {
                Err(Status::NoDevice)
            } else {
                let first = (port - CONFIG_DATA) as u16;
                (0..u16::from(width)).try_fold(0u64, |v, i| {
                    let byte = if ca_on && first + i < 4 {
                        h.config_read(ca_bus, ca_devfn, ca_reg + first + i, 1)?
                    } else {
                        0xff
                    };
                    Ok(v | u64::from(byte) << (8 * i))
                })
            };
            let got = h.pio_read(port, width);
            prop_assert_eq!(
                got,
                want,
                "pio read {:#x}/{} (address {:#x})",
                port,
                width,
                ca
            );
        }
        Access::PioWrite(port, width, value) => {
            let want = if !valid_pio(width) {
                Err(Status::Invalid)
            } else if (CONFIG_DATA..CONFIG_DATA + 4).contains(&port) {
                if ca_on {
                    routed(h, ca_bus, ca_devfn)
                } else {
                    Ok(())
                }
            } else if port == CONFIG_ADDRESS && width == 4 {
                Ok(())
            } else {
                Err(Status::NoDevice)
            };
            let got = h.pio_write(port, width, value).map(drop);
            prop_assert_eq!(
                got,
                want,
                "pio write {:#x}/{} (address {:#x})",
                port,
                width,
                ca
            );
        }
        Access::EcamRead(bus, devfn, offset, width) => {
            let Some((base, _, last)) = h.ecam() else {
                return Ok(());
            };
            let (bus, offset) = (bus.min(last), offset & 0xfff);
            let addr = base + (u64::from(bus) << 20 | u64::from(devfn) << 12 | u64::from(offset));
            let want = if !valid_mmio(width) {
                Err(Status::Invalid)
            } else if !in_range(offset, width) {
                Err(Status::OutOfRange)
            } else {
                // A qword is two dword configuration reads.
                h.config_read(bus, devfn, offset, width.min(4))
                    .and_then(|lo| {
                        let hi = match width {
                            8 => h.config_read(bus, devfn, offset + 4, 4)?,
                            _ => 0,
                        };
                        Ok(u64::from(lo) | u64::from(hi) << 32)
                    })
            };
            prop_assert_eq!(
                h.mmio_read(addr, width),
                want,
                "ECAM read {:#x}/{}",
                addr,
                width
            );
        }
        Access::EcamWrite(bus, devfn, offset, width, value) => {
            let Some((base, _, last)) = h.ecam() else {
                return Ok(());
            };
            let (bus, offset) = (bus.min(last), offset & 0xfff);
            let addr = base + (u64::from(bus) << 20 | u64::from(devfn) << 12 | u64::from(offset));
            let want = if !valid_mmio(width) {
                Err(Status::Invalid)
            } else if !in_range(offset, width) {
                Err(Status::OutOfRange)
            } else {
                routed(h, bus, devfn)
            };
            let got = h.mmio_write(addr, width, value).map(drop);
            prop_assert_eq!(got, want, "ECAM write {:#x}/{}", addr, width);
        }
        Access::MmioRead(addr, width) => {
            let r = h.mmio_read(addr, width);
            if !valid_mmio(width) {
                prop_assert_eq!(r, Err(Status::Invalid));
            } else if let Ok(v) = r {
                prop_assert!(fits(v, width), "mmio read {addr:#x}/{width} = {v:#x}");
            }
        }
        Access::MmioWrite(addr, width, value) => {
            let r = h.mmio_write(addr, width, value);
            prop_assert!(valid_mmio(width) || r == Err(Status::Invalid), "{r:?}");
        }
        Access::ConfigRead(bus, devfn, offset, width) => {
            let r = h.config_read(bus, devfn, offset, width);
            if !matches!(width, 1 | 2 | 4) {
                prop_assert_eq!(r, Err(Status::Invalid));
            } else if !in_range(offset, width) {
                prop_assert_eq!(r, Err(Status::OutOfRange));
            } else if let Ok(v) = r {
                prop_assert!(fits(v.into(), width), "{v:#x}/{width}");
                if h.route(bus, devfn) == Routed::Absent {
                    let ones = (1u64 << (8 * u32::from(width))) - 1;
                    prop_assert_eq!(u64::from(v), ones, "absent functions read all ones");
                }
            } else {
                prop_assert_eq!(r.map(drop), routed(h, bus, devfn));
            }
        }
        Access::ConfigWrite(bus, devfn, offset, width, value) => {
            let want = if !matches!(width, 1 | 2 | 4) {
                Err(Status::Invalid)
            } else if !in_range(offset, width) {
                Err(Status::OutOfRange)
            } else {
                routed(h, bus, devfn)
            };
            let got = h.config_write(bus, devfn, offset, width, value).map(drop);
            prop_assert_eq!(got, want);
        }
        Access::Reset => {
            h.reset();
        }
    }
    Ok(())
}

/// The embedded default topology, with (`remote`) a function another emulator serves behind
/// rp2 and one on the root bus.
fn hierarchy(remote: bool) -> CaseResult<Hierarchy> {
    let mut spec = TopologySpec::embedded_default().or_else(fail)?;
    if remote {
        for d in [
            "virtio-net-pci,id=net0,bus=rp2,owner=qemu",
            "ich9-lpc,id=lpc,bus=pcie.0,addr=1f.0,owner=qemu",
        ] {
            spec.add_device_option(d).or_else(fail)?;
        }
    }
    Hierarchy::new(spec).or_else(fail)
}

proptest! {
    #![proptest_config(config(96))]

    /// The hierarchy under any trapped and direct accesses: documented statuses, values that
    /// fit, mechanism #1 and ECAM consistent with direct reads, a generation that never goes
    /// back, a topology description that always validates and round-trips, and identity
    /// registers of every function intact.
    #[test]
    fn hierarchy_survives_any_access(accesses in accesses(), remote in any::<bool>()) {
        let mut h = hierarchy(remote)?;
        let maps: Vec<_> = std::iter::once(identity_map(h.mch()))
            .chain(h.ports().iter().map(|p| identity_map(p)))
            .collect();
        let ids = |h: &Hierarchy| -> Vec<Vec<u32>> {
            std::iter::once(h.mch() as &dyn PciFunction)
                .chain(h.ports().iter().map(|p| p as &dyn PciFunction))
                .zip(&maps)
                .map(|(f, m)| snapshot(f, m))
                .collect()
        };
        let before = ids(&h);
        let mut generation = h.generation();
        for a in &accesses {
            run(&mut h, a)?;
            prop_assert!(h.generation() >= generation, "generation went back after {:?}", a);
            generation = h.generation();
            let topo = h.describe();
            if let Err(e) = topo.validate() {
                return fail(format!("after {a:?} the topology is invalid: {e}: {topo:?}"));
            }
            prop_assert_eq!(Topology::decode(&topo.encode()).ok(), Some(topo));
        }
        prop_assert_eq!(ids(&h), before);
    }
}
