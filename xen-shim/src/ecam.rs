//! ECAM (MMCONFIG) addresses in PCIe terms (PCIe Base 6.0 §7.2.2: bus in bits 27:20, device
//! 19:15, function 14:12, register 11:0 of the offset into the window), for the [`EcamWindow`]
//! pcierc reports. Xen 4.17 does not decode ECAM for HVM guests: an ECAM access reaches an
//! ioreq server as MMIO at the guest-physical address, and the shim decodes it here.

use pcierc_protocol::EcamWindow;

use crate::abi::dm_op::IoRange;

/// Bytes of configuration space per function in ECAM.
pub const ECAM_FUNCTION_SIZE: u64 = 4096;

/// A decoded ECAM address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EcamTarget {
    /// PCI segment group.
    pub segment: u16,
    /// Bus number.
    pub bus: u8,
    /// Device and function.
    pub devfn: u8,
    /// Register offset, 0..4096.
    pub reg: u32,
}

/// The function and register `gpa` addresses in `window`, if it lies inside.
pub fn decode(window: &EcamWindow, gpa: u64) -> Option<EcamTarget> {
    let off = gpa.checked_sub(window.base).filter(|&o| o < window.size)?;
    let bus = u64::from(window.start_bus) + (off >> 20);
    Some(EcamTarget {
        segment: window.segment,
        bus: u8::try_from(bus).ok().filter(|&b| b <= window.end_bus)?,
        devfn: (off >> 12) as u8,
        reg: (off & 0xfff) as u32,
    })
}

/// The 4 KiB slice of `window` holding function `bus:devfn`'s configuration space, as a
/// MEMORY range, if the window decodes that bus.
pub fn slice(window: &EcamWindow, bus: u8, devfn: u8) -> Option<IoRange> {
    if bus < window.start_bus || bus > window.end_bus {
        return None;
    }
    let first = window
        .base
        .checked_add((u64::from(bus - window.start_bus) << 20) | (u64::from(devfn) << 12))?;
    Some(IoRange::Memory {
        first,
        last: first.checked_add(ECAM_FUNCTION_SIZE - 1)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(base: u64, start_bus: u8, end_bus: u8) -> EcamWindow {
        EcamWindow {
            base,
            size: (u64::from(end_bus - start_bus) + 1) << 20,
            segment: 0,
            start_bus,
            end_bus,
            reserved: 0,
        }
    }

    #[test]
    fn decode_and_slice_agree() {
        let w = window(0xb000_0000, 0, 0xff);
        let t = decode(&w, 0xb000_0000 + (3 << 20) + (0x11 << 12) + 0x6e).unwrap();
        assert_eq!((t.bus, t.devfn, t.reg), (3, 0x11, 0x6e));
        assert_eq!(
            slice(&w, 3, 0x11),
            Some(IoRange::Memory {
                first: 0xb031_1000,
                last: 0xb031_1fff
            })
        );
        assert_eq!(decode(&w, 0xaff_ffff), None);
        assert_eq!(decode(&w, 0xc000_0000), None);
    }

    #[test]
    fn windows_starting_past_bus_0() {
        let w = window(0xe000_0000, 0x10, 0x1f);
        let t = decode(&w, 0xe000_0000 + (1 << 20)).unwrap();
        assert_eq!(t.bus, 0x11);
        assert_eq!(slice(&w, 0x0f, 0), None);
        assert_eq!(
            slice(&w, 0x11, 0),
            Some(IoRange::Memory {
                first: 0xe010_0000,
                last: 0xe010_0fff
            })
        );
    }
}
