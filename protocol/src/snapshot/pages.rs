//! The ECAM window as pages a frontend may map into its guest (docs/protocol.md §9
//! `SetConfigSnapshot`, "Mapping the snapshot into the guest"): every 4 KiB page of the window
//! is one function's configuration space (PCIe Base 6.0 §7.2.2: bus << 20 | device << 15 |
//! function << 12), so a read-only mapping of the snapshot's function images at their ECAM
//! offsets, all-ones pages for absent functions and no mapping for the rest lets guest reads
//! complete from memory while writes still trap.
//!
//! A page is [`EcamPage::Trap`] (left unmapped: its accesses trap and are forwarded) when
//! another emulator serves the function (`EREMOTE`), and, while absent, when a function may
//! appear there without a guest write: device 0 (functions 0-7) on the secondary bus of every
//! bridge pcierc emulates, and every device on the conventional secondary bus of a PCI
//! Express to PCI bridge (a `pcie-pci-bridge`, whose SHPC slots are devices 1-31), where an
//! emulator's function arrives by hot-plug or `ClaimFunction`.
//! Those changes reach a frontend after the backend raised the interrupt that announces them,
//! so a mapped all-ones page could still answer the guest's first read of the new function.

use std::sync::atomic::{AtomicU16, Ordering};

use vm_memory::VolatileMemory;

use super::{
    atomic, SnapshotReader, IMAGES_OFFSET, IMAGE_SIZE, ROUTES_OFFSET, ROUTE_ABSENT, ROUTE_REMOTE,
};

/// Bytes per page of the ECAM window (one function).
pub const PAGE_SIZE: u64 = 4096;
/// The largest ECAM window: 256 buses of 1 MiB.
pub const MAX_WINDOW: u64 = 256 << 20;

/// What backs one page of the ECAM window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EcamPage {
    /// The function image at this offset of the snapshot memfd (read-only).
    Image(u64),
    /// No function answers: a page of all ones.
    AllOnes,
    /// Not mapped: accesses trap and are forwarded as today.
    Trap,
}

/// The pages of the ECAM window as the snapshot routes them now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EcamLayout {
    /// `routing_epoch` this layout was read at.
    pub routing_epoch: u64,
    /// Guest-physical base of the window (0 with no pages: no ECAM decode).
    pub base: u64,
    /// One entry per 4 KiB page, from the window's first bus.
    pub pages: Vec<EcamPage>,
}

impl EcamLayout {
    /// Runs of consecutive pages that are mapped ([`EcamPage::Trap`] excluded): (first page,
    /// number of pages). A frontend needs one memory slot per run.
    pub fn mapped_runs(&self) -> Vec<(usize, usize)> {
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for (i, p) in self.pages.iter().enumerate() {
            if *p == EcamPage::Trap {
                continue;
            }
            match runs.last_mut() {
                Some((start, n)) if *start + *n == i => *n += 1,
                _ => runs.push((i, 1)),
            }
        }
        runs
    }
}

/// Header type register (PCI Local Bus 3.0 §6.2.1): bits 6:0 = 1 for a PCI-to-PCI bridge.
const HEADER_TYPE: usize = 0x0e;
/// Secondary Bus Number (PCI-to-PCI Bridge 1.2 §3.2.5.3).
const SECONDARY_BUS: usize = 0x19;
/// Status register; bit 4 Capabilities List (PCI Local Bus 3.0 §6.2.3).
const STATUS: usize = 0x06;
const STATUS_CAP_LIST: u8 = 0x10;
/// Capabilities Pointer (PCI Local Bus 3.0 §6.7).
const CAP_PTR: usize = 0x34;
/// Capability IDs: Standard Hot-Plug Controller (PCI Local Bus 3.0 Appendix H), PCI Express.
const CAP_ID_SHPC: u8 = 0x0c;
const CAP_ID_EXP: u8 = 0x10;
/// PCI Express Capabilities Register Device/Port Type (bits 7:4) of a PCI Express to
/// PCI/PCI-X Bridge (PCIe Base 6.0 §7.5.3.2).
const TYPE_PCIE_TO_PCI: u8 = 0x7;

/// Which devices of a bridge's secondary bus may get a function without a guest write.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HotBus {
    /// Not a bridge's secondary bus.
    No,
    /// Device 0 only: below a PCI Express port (PCIe Base 6.0 §7.3.1).
    Device0,
    /// Every device: a conventional bus with hot-plug slots at any device number.
    Whole,
}

/// Does the type 1 image `byte` reads hold a conventional bus whose hot-plug slots are at
/// every device number: an SHPC capability, or a PCI Express to PCI bridge?
fn conventional_hotplug(byte: &dyn Fn(usize) -> Option<u8>) -> Option<bool> {
    if byte(STATUS)? & STATUS_CAP_LIST == 0 {
        return Some(false);
    }
    let mut at = byte(CAP_PTR)? & 0xfc;
    // At most 48 capabilities fit in the 192 bytes after the header: a loop ends there.
    for _ in 0..48 {
        if at < 0x40 {
            break;
        }
        let id = byte(usize::from(at))?;
        if id == CAP_ID_SHPC
            || id == CAP_ID_EXP && byte(usize::from(at) + 2)? >> 4 == TYPE_PCIE_TO_PCI
        {
            return Some(true);
        }
        at = byte(usize::from(at) + 1)? & 0xfc;
    }
    Some(false)
}

impl SnapshotReader {
    /// The ECAM window's pages as the snapshot routes them now, consistently; `None` when the
    /// region cannot say (a version 1 backend, which never moves `routing_epoch`, a window that
    /// is not whole buses of whole pages, or a backend that kept writing).
    pub fn ecam_layout(&self) -> Option<EcamLayout> {
        if self.version() < 2 {
            return None;
        }
        self.consistent(|| {
            let routing_epoch = self.routing_epoch();
            let h = self.header_unlocked();
            if h.ecam_size == 0 {
                return Some(EcamLayout {
                    routing_epoch,
                    base: 0,
                    pages: Vec::new(),
                });
            }
            let buses = h.ecam_size >> 20;
            if !h.ecam_base.is_multiple_of(PAGE_SIZE)
                || !h.ecam_size.is_multiple_of(1 << 20)
                || h.ecam_size > MAX_WINDOW
                || u64::from(h.ecam_buses.0) + buses > 256
            {
                return None;
            }
            let mut hot = [HotBus::No; 256];
            for n in 0..self.functions {
                let image = IMAGES_OFFSET + n * IMAGE_SIZE;
                let byte = |off: usize| {
                    self.region
                        .get_ref::<u8>(image + off)
                        .ok()
                        .map(|b| b.load())
                };
                if byte(HEADER_TYPE)? & 0x7f == 1 {
                    let sec = byte(SECONDARY_BUS)?;
                    if sec != 0 {
                        hot[usize::from(sec)] = if conventional_hotplug(&byte)? {
                            HotBus::Whole
                        } else {
                            HotBus::Device0
                        };
                    }
                }
            }
            let pages = (0..(h.ecam_size / PAGE_SIZE) as usize)
                .map(|page| {
                    let bus = usize::from(h.ecam_buses.0) + (page >> 8);
                    let devfn = page & 0xff;
                    let route =
                        atomic::<AtomicU16>(&self.region, ROUTES_OFFSET + 2 * (bus << 8 | devfn))
                            .load(Ordering::Relaxed);
                    match route {
                        ROUTE_ABSENT if hot[bus] == HotBus::Whole => EcamPage::Trap,
                        ROUTE_ABSENT if hot[bus] == HotBus::Device0 && devfn < 8 => EcamPage::Trap,
                        ROUTE_ABSENT => EcamPage::AllOnes,
                        ROUTE_REMOTE => EcamPage::Trap,
                        n if usize::from(n - 1) < self.functions => EcamPage::Image(
                            (IMAGES_OFFSET + usize::from(n - 1) * IMAGE_SIZE) as u64,
                        ),
                        _ => EcamPage::Trap,
                    }
                })
                .collect();
            Some(EcamLayout {
                routing_epoch,
                base: h.ecam_base,
                pages,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{SnapshotHeader, SnapshotWriter};
    use super::*;

    #[test]
    fn pages_follow_routes_and_bridges_and_the_epoch_moves_with_them() {
        let (r, file) = SnapshotReader::create(2).unwrap();
        assert_eq!(r.ecam_layout(), None, "nothing written yet");
        let w = SnapshotWriter::new(file.try_clone().unwrap(), 2).unwrap();
        let mut bridge = vec![0u8; 4096];
        bridge[HEADER_TYPE] = 1;
        bridge[SECONDARY_BUS] = 1;
        let mut routes = Box::new([ROUTE_ABSENT; 65536]);
        routes[0] = 1;
        routes[0x10] = 2;
        let header = SnapshotHeader {
            ecam_base: 0xb000_0000,
            ecam_size: 2 << 20,
            ecam_buses: (0, 1),
            ..Default::default()
        };
        w.begin();
        w.set_image(0, &[0x86, 0x80, 0xc0, 0x29]);
        w.set_image(1, &bridge);
        w.set_routes(&routes);
        w.set_header(&header);
        w.end();
        let l = r.ecam_layout().expect("a consistent layout");
        assert_eq!(l.base, 0xb000_0000);
        assert_eq!(l.pages.len(), 512);
        assert_eq!(l.pages[0], EcamPage::Image(IMAGES_OFFSET as u64));
        assert_eq!(
            l.pages[0x10],
            EcamPage::Image((IMAGES_OFFSET + 4096) as u64)
        );
        assert_eq!(l.pages[0x08], EcamPage::AllOnes);
        assert_eq!(
            l.pages[256],
            EcamPage::Trap,
            "device 0 below a bridge: a function may arrive without a guest write"
        );
        assert_eq!(l.pages[256 + 7], EcamPage::Trap);
        assert_eq!(l.pages[256 + 8], EcamPage::AllOnes);
        assert_eq!(l.mapped_runs(), vec![(0, 256), (264, 248)]);
        let epoch = r.routing_epoch();

        // The same values again: no routing change, the epoch stays.
        w.begin();
        w.set_route(0x10, 2);
        w.set_header(&header);
        w.end();
        assert_eq!(r.routing_epoch(), epoch);

        // Another emulator's function on bus 0; then the window moves.
        w.begin();
        w.set_route(0x18, ROUTE_REMOTE);
        w.end();
        assert_eq!(r.routing_epoch(), epoch + 1);
        assert_eq!(r.ecam_layout().unwrap().pages[0x18], EcamPage::Trap);
        w.begin();
        w.set_header(&SnapshotHeader {
            ecam_base: 0xe000_0000,
            ..header
        });
        w.end();
        assert_eq!(r.routing_epoch(), epoch + 2);
        assert_eq!(r.ecam_layout().unwrap().base, 0xe000_0000);
        assert_eq!(r.try_clone().unwrap().ecam_layout(), r.ecam_layout());

        // A pcie-pci-bridge (PCI Express to PCI bridge with an SHPC) renumbered to bus 1: every
        // absent device of its conventional bus traps (SHPC slots 1-31), not device 0 only.
        let mut pcie_pci = vec![0u8; 4096];
        pcie_pci[HEADER_TYPE] = 1;
        pcie_pci[SECONDARY_BUS] = 1;
        pcie_pci[STATUS] = STATUS_CAP_LIST;
        pcie_pci[CAP_PTR] = 0x40;
        pcie_pci[0x40] = CAP_ID_SHPC;
        pcie_pci[0x41] = 0x48;
        pcie_pci[0x48] = CAP_ID_EXP;
        pcie_pci[0x4a] = 0x72;
        for (with_shpc, with_type) in [(true, true), (true, false), (false, true)] {
            let mut image = pcie_pci.clone();
            if !with_shpc {
                image[CAP_PTR] = 0x48;
            }
            if !with_type {
                image[0x4a] = 0x42;
            }
            w.begin();
            w.set_image(1, &image);
            w.set_header(&header);
            w.end();
            let l = r.ecam_layout().unwrap();
            assert_eq!(l.pages[256], EcamPage::Trap);
            assert_eq!(l.pages[256 + 8], EcamPage::Trap, "device 1");
            assert_eq!(l.pages[256 + 255], EcamPage::Trap, "device 31");
            assert_eq!(l.pages[0x08], EcamPage::AllOnes, "bus 0 unchanged");
        }
        // A root port (PCI Express capability, type 4, no SHPC): device 0 only.
        let mut image = pcie_pci.clone();
        image[CAP_PTR] = 0x48;
        image[0x4a] = 0x42;
        // A capability list that loops on itself ends.
        let mut looping = image.clone();
        looping[0x49] = 0x48;
        for image in [image, looping] {
            w.begin();
            w.set_image(1, &image);
            w.end();
            let l = r.ecam_layout().unwrap();
            assert_eq!(l.pages[256], EcamPage::Trap);
            assert_eq!(l.pages[256 + 8], EcamPage::AllOnes);
        }

        // ECAM off: no pages.
        w.begin();
        w.set_header(&SnapshotHeader::default());
        w.end();
        assert_eq!(r.ecam_layout().unwrap().pages, vec![]);
    }
}
