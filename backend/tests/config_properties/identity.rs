//! What a function must keep: identity registers, capability chains and the read-only
//! capability registers, declared read-only in the engine's masks.

use pcierc_backend::pci::PciFunction;
use proptest::prelude::*;

use crate::{masks::image, CaseResult};

/// `(offset, width, mask)` of the registers no guest write may change.
pub(crate) fn identity_map(f: &dyn PciFunction) -> Vec<(u16, u8, u32)> {
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

pub(crate) fn snapshot(f: &dyn PciFunction, map: &[(u16, u8, u32)]) -> Vec<u32> {
    map.iter()
        .map(|&(o, w, m)| f.config_read(o, w) & m)
        .collect()
}

/// What `map` protects is declared read-only (neither writable nor W1C) in the engine's masks.
pub(crate) fn assert_read_only(f: &dyn PciFunction, map: &[(u16, u8, u32)]) -> CaseResult {
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

/// The offset of the first standard capability with `id`, following the chain from 0x34.
pub(crate) fn find_capability(f: &dyn PciFunction, id: u32) -> Option<u8> {
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
