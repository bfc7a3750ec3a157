//! Trapped accesses to the hierarchy (mechanism #1, ECAM, MMIO and direct configuration
//! accesses), and the statuses and values each must get.

use pcierc_backend::topology::{Hierarchy, Routed};
use pcierc_protocol::Status;
use proptest::collection::vec;
use proptest::prelude::*;

use crate::{
    fits,
    ops::{offset, value, width},
    CaseResult,
};

const CONFIG_ADDRESS: u64 = 0xcf8;
const CONFIG_DATA: u64 = 0xcfc;

/// A trapped access, as a VMM forwards it.
#[derive(Clone, Debug)]
pub(crate) enum Access {
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

pub(crate) fn bus() -> impl Strategy<Value = u8> {
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
pub(crate) fn accesses() -> impl Strategy<Value = Vec<Access>> {
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
pub(crate) fn run(h: &mut Hierarchy, a: &Access) -> CaseResult {
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
