//! The type 1 (PCI-to-PCI bridge) header: bus numbers, forwarding windows and Bridge Control
//! (PCI-to-PCI Bridge 1.2 §3.2), as QEMU sets them up and resets them (`pci_init_mask_bridge()`
//! in `hw/pci/pci.c`, `pci_bridge_initfn()`, `pci_bridge_reset()`,
//! `pci_bridge_disable_base_limit()` and the window decode in `hw/pci/pci_bridge.c`).

use super::config_space::ConfigSpace;
use super::header::{self, Identity};
use super::Effects;

// PCI-to-PCI Bridge 1.2 §3.2.5.2 Primary, Secondary and Subordinate Bus Number registers.
/// Primary Bus Number.
pub const PRIMARY_BUS: u16 = 0x18;
/// Secondary Bus Number.
pub const SECONDARY_BUS: u16 = 0x19;
/// Subordinate Bus Number.
pub const SUBORDINATE_BUS: u16 = 0x1a;
// PCI-to-PCI Bridge 1.2 §3.2.5.4 Secondary Latency Timer.
/// Secondary Latency Timer.
pub const SEC_LATENCY_TIMER: u16 = 0x1b;
// PCI-to-PCI Bridge 1.2 §3.2.5.6 I/O Base and I/O Limit.
/// I/O Base.
pub const IO_BASE: u16 = 0x1c;
/// I/O Limit.
pub const IO_LIMIT: u16 = 0x1d;
// PCI-to-PCI Bridge 1.2 §3.2.5.7 Secondary Status.
/// Secondary Status.
pub const SEC_STATUS: u16 = 0x1e;
// PCI-to-PCI Bridge 1.2 §3.2.5.8 Memory Base and Memory Limit.
/// Memory Base.
pub const MEMORY_BASE: u16 = 0x20;
/// Memory Limit.
pub const MEMORY_LIMIT: u16 = 0x22;
// PCI-to-PCI Bridge 1.2 §3.2.5.9 Prefetchable Memory Base and Limit (+ upper 32 bits).
/// Prefetchable Memory Base.
pub const PREF_MEMORY_BASE: u16 = 0x24;
/// Prefetchable Memory Limit.
pub const PREF_MEMORY_LIMIT: u16 = 0x26;
/// Prefetchable Base Upper 32 Bits.
pub const PREF_BASE_UPPER32: u16 = 0x28;
/// Prefetchable Limit Upper 32 Bits.
pub const PREF_LIMIT_UPPER32: u16 = 0x2c;
// PCI-to-PCI Bridge 1.2 §3.2.5.10 I/O Base and Limit Upper 16 Bits.
/// I/O Base Upper 16 Bits.
pub const IO_BASE_UPPER16: u16 = 0x30;
/// I/O Limit Upper 16 Bits.
pub const IO_LIMIT_UPPER16: u16 = 0x32;
// PCI-to-PCI Bridge 1.2 §3.2.5.18 Bridge Control.
/// Bridge Control.
pub const BRIDGE_CONTROL: u16 = 0x3e;

// PCI-to-PCI Bridge 1.2 §3.2.5.18 Bridge Control bits.
/// Parity Error Response Enable.
pub const BRIDGE_CTL_PARITY: u16 = 1 << 0;
/// SERR# Enable.
pub const BRIDGE_CTL_SERR: u16 = 1 << 1;
/// ISA Enable.
pub const BRIDGE_CTL_ISA: u16 = 1 << 2;
/// VGA Enable.
pub const BRIDGE_CTL_VGA: u16 = 1 << 3;
/// VGA 16-bit decode.
pub const BRIDGE_CTL_VGA_16BIT: u16 = 1 << 4;
/// Master-Abort Mode.
pub const BRIDGE_CTL_MASTER_ABORT: u16 = 1 << 5;
/// Secondary Bus Reset.
pub const BRIDGE_CTL_BUS_RESET: u16 = 1 << 6;
/// Fast Back-to-Back Enable.
pub const BRIDGE_CTL_FAST_BACK: u16 = 1 << 7;
/// Primary Discard Timeout.
pub const BRIDGE_CTL_DISCARD: u16 = 1 << 8;
/// Secondary Discard Timeout.
pub const BRIDGE_CTL_SEC_DISCARD: u16 = 1 << 9;
/// Discard Timer Status.
pub const BRIDGE_CTL_DISCARD_STATUS: u16 = 1 << 10;
/// Discard Timer SERR# Enable.
pub const BRIDGE_CTL_DISCARD_SERR: u16 = 1 << 11;

// PCI-to-PCI Bridge 1.2 §3.2.5.6/§3.2.5.8/§3.2.5.9: address bits of the base/limit registers,
// and the addressing-capability bits in their low nibble.
const IO_RANGE_MASK: u8 = 0xf0;
const IO_RANGE_TYPE_32: u8 = 0x01;
const MEMORY_RANGE_MASK: u16 = 0xfff0;
const PREF_RANGE_MASK: u16 = 0xfff0;
const PREF_RANGE_TYPE_64: u16 = 0x0001;

/// QEMU's class code for a PCI-to-PCI bridge (base 0x06, sub-class 0x04).
pub const CLASS_BRIDGE_PCI: u32 = 0x060400;

/// The windows a bridge forwards from its primary to its secondary side, each as
/// (base, size), `None` when the window is empty (base > limit) or its decode is disabled
/// in Command (I/O Space for `io`, Memory Space for `mem` and `pref`).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct BridgeWindows {
    /// I/O window.
    pub io: Option<(u64, u64)>,
    /// Non-prefetchable memory window.
    pub mem: Option<(u64, u64)>,
    /// Prefetchable memory window.
    pub pref: Option<(u64, u64)>,
}

/// The type 1 header as QEMU's `do_pci_register_device()` + `pci_init_mask_bridge()` +
/// `pci_bridge_initfn()` leave it: identity, bridge header type, generic masks, writable bus
/// numbers, windows and Bridge Control, 16-bit I/O and 64-bit prefetchable decode.
pub fn init_type1(cs: &mut ConfigSpace, id: Identity, multifunction: bool) {
    header::init_identity(
        cs,
        Identity {
            class_code: CLASS_BRIDGE_PCI,
            ..id
        },
        multifunction,
    );
    header::init_masks(cs);
    // pci_init_mask_bridge()
    cs.set_wmask(PRIMARY_BUS, 4, 0xffff_ffff);
    cs.set_wmask(IO_BASE, 1, IO_RANGE_MASK.into());
    cs.set_wmask(IO_LIMIT, 1, IO_RANGE_MASK.into());
    cs.set_wmask(MEMORY_BASE, 2, MEMORY_RANGE_MASK.into());
    cs.set_wmask(MEMORY_LIMIT, 2, MEMORY_RANGE_MASK.into());
    cs.set_wmask(PREF_MEMORY_BASE, 2, PREF_RANGE_MASK.into());
    cs.set_wmask(PREF_MEMORY_LIMIT, 2, PREF_RANGE_MASK.into());
    cs.set_wmask(PREF_BASE_UPPER32, 8, u64::MAX);
    cs.set_bits(PREF_MEMORY_BASE, 2, PREF_RANGE_TYPE_64.into());
    cs.set_bits(PREF_MEMORY_LIMIT, 2, PREF_RANGE_TYPE_64.into());
    cs.set_wmask(
        BRIDGE_CONTROL,
        2,
        (BRIDGE_CTL_PARITY
            | BRIDGE_CTL_SERR
            | BRIDGE_CTL_ISA
            | BRIDGE_CTL_VGA
            | BRIDGE_CTL_VGA_16BIT
            | BRIDGE_CTL_MASTER_ABORT
            | BRIDGE_CTL_BUS_RESET
            | BRIDGE_CTL_FAST_BACK
            | BRIDGE_CTL_DISCARD
            | BRIDGE_CTL_SEC_DISCARD
            | BRIDGE_CTL_DISCARD_SERR)
            .into(),
    );
    cs.set_w1cmask(BRIDGE_CONTROL, 2, BRIDGE_CTL_DISCARD_STATUS.into());
    // pci_bridge_initfn()
    cs.set_bits(
        header::STATUS,
        2,
        (header::STATUS_66MHZ | header::STATUS_FAST_BACK).into(),
    );
    let mf = cs.byte(header::HEADER_TYPE) & header::HEADER_TYPE_MULTI_FUNCTION;
    cs.set_byte(header::HEADER_TYPE, mf | header::HEADER_TYPE_BRIDGE);
    cs.set_word(SEC_STATUS, header::STATUS_66MHZ | header::STATUS_FAST_BACK);
}

/// QEMU's `pci_bridge_reset()` alone (`pcie-pci-bridge`): bus numbers, Secondary Latency
/// Timer and Bridge Control cleared, and the base and limit address bits of every window zeroed,
/// which leaves the bottom 4 KiB of I/O and 1 MiB of each memory window open (PCI-to-PCI Bridge
/// 1.2 §3.2.5.6-§3.2.5.9 leave their reset values to the implementation).
pub fn reset_zeroed(cs: &mut ConfigSpace) {
    cs.set_dword(PRIMARY_BUS, 0);
    cs.clear_bits(IO_BASE, 1, IO_RANGE_MASK.into());
    cs.clear_bits(IO_LIMIT, 1, IO_RANGE_MASK.into());
    cs.clear_bits(MEMORY_BASE, 2, MEMORY_RANGE_MASK.into());
    cs.clear_bits(MEMORY_LIMIT, 2, MEMORY_RANGE_MASK.into());
    cs.clear_bits(PREF_MEMORY_BASE, 2, PREF_RANGE_MASK.into());
    cs.clear_bits(PREF_MEMORY_LIMIT, 2, PREF_RANGE_MASK.into());
    cs.set_qword(PREF_BASE_UPPER32, 0);
    cs.set_word(BRIDGE_CONTROL, 0);
}

/// QEMU's `pci_bridge_reset()` followed by `pci_bridge_disable_base_limit()`: bus numbers and
/// Bridge Control cleared, every window closed (base above limit).
pub fn reset(cs: &mut ConfigSpace) {
    cs.set_dword(PRIMARY_BUS, 0);
    cs.set_bits(IO_BASE, 1, IO_RANGE_MASK.into());
    cs.clear_bits(IO_LIMIT, 1, IO_RANGE_MASK.into());
    cs.set_bits(MEMORY_BASE, 2, MEMORY_RANGE_MASK.into());
    cs.clear_bits(MEMORY_LIMIT, 2, MEMORY_RANGE_MASK.into());
    cs.set_bits(PREF_MEMORY_BASE, 2, PREF_RANGE_MASK.into());
    cs.clear_bits(PREF_MEMORY_LIMIT, 2, PREF_RANGE_MASK.into());
    cs.set_qword(PREF_BASE_UPPER32, 0);
    cs.set_word(BRIDGE_CONTROL, 0);
}

/// QEMU's `pci_bridge_reset()` without the root ports' `pci_bridge_disable_base_limit()`: the
/// base and limit fields of the three windows zeroed (PCI-to-PCI Bridge 1.2 §3.2.5.6, §3.2.5.8
/// and §3.2.5.9 leave their reset values to the implementation; QEMU's switch ports zero them).
pub fn zero_base_limit(cs: &mut ConfigSpace) {
    cs.clear_bits(IO_BASE, 1, IO_RANGE_MASK.into());
    cs.clear_bits(IO_LIMIT, 1, IO_RANGE_MASK.into());
    cs.clear_bits(MEMORY_BASE, 2, MEMORY_RANGE_MASK.into());
    cs.clear_bits(MEMORY_LIMIT, 2, MEMORY_RANGE_MASK.into());
    cs.clear_bits(PREF_MEMORY_BASE, 2, PREF_RANGE_MASK.into());
    cs.clear_bits(PREF_MEMORY_LIMIT, 2, PREF_RANGE_MASK.into());
}

/// The I/O window as QEMU decodes it (`pci_config_get_io_base()`): (base, limit).
fn io_range(cs: &ConfigSpace) -> (u64, u64) {
    let part = |reg: u16, upper: u16| {
        let r = cs.byte(reg);
        let mut v = u64::from(r & IO_RANGE_MASK) << 8;
        if r & IO_RANGE_TYPE_32 != 0 {
            v |= u64::from(cs.word(upper)) << 16;
        }
        v
    };
    (
        part(IO_BASE, IO_BASE_UPPER16),
        part(IO_LIMIT, IO_LIMIT_UPPER16) | 0xfff,
    )
}

/// The non-prefetchable memory window: (base, limit).
fn mem_range(cs: &ConfigSpace) -> (u64, u64) {
    let part = |reg: u16| u64::from(cs.word(reg) & MEMORY_RANGE_MASK) << 16;
    (part(MEMORY_BASE), part(MEMORY_LIMIT) | 0xf_ffff)
}

/// The prefetchable memory window: (base, limit), 64-bit when the type bit says so.
fn pref_range(cs: &ConfigSpace) -> (u64, u64) {
    let part = |reg: u16, upper: u16| {
        let r = cs.word(reg);
        let mut v = u64::from(r & PREF_RANGE_MASK) << 16;
        if r & PREF_RANGE_TYPE_64 != 0 {
            v |= u64::from(cs.dword(upper)) << 32;
        }
        v
    };
    (
        part(PREF_MEMORY_BASE, PREF_BASE_UPPER32),
        part(PREF_MEMORY_LIMIT, PREF_LIMIT_UPPER32) | 0xf_ffff,
    )
}

/// The windows the bridge forwards now (QEMU's `pci_bridge_init_alias()` sizes).
pub fn windows(cs: &ConfigSpace) -> BridgeWindows {
    let cmd = cs.word(header::COMMAND);
    let open = |enabled: bool, (base, limit): (u64, u64)| {
        // A window covering all 64 bits would have size 2^64: QEMU cannot map it either.
        let size = (limit.wrapping_sub(base)).wrapping_add(1);
        (enabled && limit >= base && size != 0).then_some((base, size))
    };
    BridgeWindows {
        io: open(cmd & header::COMMAND_IO != 0, io_range(cs)),
        mem: open(cmd & header::COMMAND_MEMORY != 0, mem_range(cs)),
        pref: open(cmd & header::COMMAND_MEMORY != 0, pref_range(cs)),
    }
}

/// The BAR whose moves a [`Watched`] reports.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Bar {
    /// A 32-bit BAR at this index.
    Bits32(u8),
    /// A 64-bit BAR at this index and the next.
    Bits64(u8),
}

/// The registers of a type 1 function whose change a configuration write reports as
/// [`Effects`]: bus numbers, windows, decode enables, one BAR and Bridge Control's Secondary
/// Bus Reset edge. Taken before the write, compared after it.
pub struct Watched {
    bus: u32,
    windows: [u32; 6],
    command: u16,
    bar: u64,
    bridge_control: u16,
}

impl Watched {
    /// The watched registers now.
    pub fn of(cs: &ConfigSpace, bar: Bar) -> Self {
        Watched {
            bus: cs.dword(PRIMARY_BUS) & 0x00ff_ffff,
            windows: [
                cs.word(IO_BASE).into(),
                cs.dword(MEMORY_BASE),
                cs.dword(PREF_MEMORY_BASE),
                cs.dword(PREF_BASE_UPPER32),
                cs.dword(PREF_LIMIT_UPPER32),
                cs.dword(IO_BASE_UPPER16),
            ],
            command: cs.word(header::COMMAND),
            bar: match bar {
                Bar::Bits32(i) => cs.dword(header::BAR0 + 4 * u16::from(i)).into(),
                Bar::Bits64(i) => cs.qword(header::BAR0 + 4 * u16::from(i)),
            },
            bridge_control: cs.word(BRIDGE_CONTROL),
        }
    }

    /// What changed between `self` and `cs` now.
    pub fn effects(&self, cs: &ConfigSpace, bar: Bar) -> Effects {
        let now = Watched::of(cs, bar);
        let mut e = Effects::empty();
        if now.bus != self.bus {
            e |= Effects::BUS_NUMBERS;
        }
        let decode = |c: u16| c & (header::COMMAND_IO | header::COMMAND_MEMORY);
        if now.windows != self.windows || decode(now.command) != decode(self.command) {
            e |= Effects::WINDOWS;
        }
        let mem = |c: u16| c & header::COMMAND_MEMORY;
        if now.bar != self.bar || mem(now.command) != mem(self.command) {
            e |= Effects::BARS;
        }
        // PCI-to-PCI Bridge 1.2 §3.2.5.18: Secondary Bus Reset 0 -> 1 resets the secondary bus.
        if !self.bridge_control & now.bridge_control & BRIDGE_CTL_BUS_RESET != 0 {
            e |= Effects::SECONDARY_BUS_RESET;
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config_space::PCIE_CONFIG_SPACE_SIZE;

    fn bridge() -> ConfigSpace {
        let mut cs = ConfigSpace::new(PCIE_CONFIG_SPACE_SIZE);
        init_type1(
            &mut cs,
            Identity {
                vendor_id: 0x1b36,
                device_id: 0xc,
                revision: 0,
                class_code: 0,
            },
            true,
        );
        reset(&mut cs);
        cs
    }

    #[test]
    fn reset_closes_every_window_as_qemu() {
        let cs = bridge();
        assert_eq!(cs.byte(header::HEADER_TYPE), 0x81);
        assert_eq!(cs.read(0x1c, 2), 0x00f0);
        assert_eq!(
            cs.read(0x1e, 2),
            0x00a0,
            "66 MHz and fast back-to-back, as pci_bridge_initfn()"
        );
        assert_eq!(cs.read(0x20, 4), 0x0000_fff0);
        assert_eq!(cs.read(0x24, 4), 0x0001_fff1);
        assert_eq!(windows(&cs), BridgeWindows::default());
    }

    #[test]
    fn windows_decode_per_bridge_spec() {
        let mut cs = bridge();
        cs.write(IO_BASE, 2, 0x2010);
        cs.write(MEMORY_BASE, 4, 0xfe10_fe00);
        cs.write(PREF_MEMORY_BASE, 4, 0x0010_0000);
        cs.write(PREF_BASE_UPPER32, 4, 0x8);
        cs.write(PREF_LIMIT_UPPER32, 4, 0x8);
        assert_eq!(
            windows(&cs),
            BridgeWindows::default(),
            "decode disabled in Command"
        );
        cs.write(header::COMMAND, 2, 0x3);
        let w = windows(&cs);
        assert_eq!(w.io, Some((0x1000, 0x2000)));
        assert_eq!(w.mem, Some((0xfe00_0000, 0x20_0000)));
        assert_eq!(w.pref, Some((0x8_0000_0000, 0x20_0000)));
        cs.write(header::COMMAND, 2, 0x2);
        assert_eq!(windows(&cs).io, None);
        cs.write(MEMORY_BASE, 2, 0xfe20);
        assert_eq!(windows(&cs).mem, None, "base above limit");
    }
}
