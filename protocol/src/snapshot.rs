//! The configuration snapshot: a shared memory region (a sealed memfd the frontend creates and
//! passes with `SetConfigSnapshot`) in which the backend keeps a copy of every configuration
//! register of the functions it emulates, the routing of every (bus, devfn), the ECAM window and
//! CONFIG_ADDRESS. A frontend answers configuration reads from it with no message; writes and
//! everything else still go over the socket. Consistency is a sequence counter (seqlock): the
//! backend makes it odd while it updates and even when done, and a reader retries when it saw
//! an odd value or a change across its read. Layout: `docs/protocol.md` §9 `SetConfigSnapshot`.
//!
//! Configuration reads of the functions pcierc emulates have no side effects, so every register
//! may be served from the copy; the MSI-X table and PBA live in BAR space and are never in it.
//! Function images are page-aligned in the memfd, so a frontend may also map them read-only
//! into its guest's ECAM window ([`pages`]); `routing_epoch` (version 2) tells it when to remap.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{fence, AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};

use vm_memory::{FileOffset, MmapRegion, VolatileMemory};

use crate::messages::AccessKind;
use crate::wire::Status;

pub mod pages;

/// `magic` of the header: "PCIERCSN" little-endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"PCIERCSN");
/// Layout version. Version 2 added `routing_epoch` (header offset 56, zero in version 1), so a
/// frontend that maps the images into a guest ([`pages`]) learns when to remap; readers of
/// version 1 regions are unaffected (the field was reserved).
pub const VERSION: u32 = 2;
/// The routing table: 256 buses x 256 devfns of `u16`.
pub const ROUTES_OFFSET: usize = 64;
/// First function image (4 KiB each).
pub const IMAGES_OFFSET: usize = 0x21000;
/// Bytes per function image.
pub const IMAGE_SIZE: usize = 4096;
/// Route entry: no function answers (reads all ones).
pub const ROUTE_ABSENT: u16 = 0;
/// Route entry: another emulator serves the function (`EREMOTE`).
pub const ROUTE_REMOTE: u16 = 0xffff;

// Header fields (byte offsets).
const H_MAGIC: usize = 0;
const H_VERSION: usize = 8;
const H_FUNCTIONS: usize = 12;
const H_SEQ: usize = 16;
const H_GENERATION: usize = 24;
const H_ECAM_BASE: usize = 32;
const H_ECAM_SIZE: usize = 40;
const H_CONFIG_ADDRESS: usize = 48;
const H_SEGMENT: usize = 52;
const H_ECAM_BUSES: usize = 54;
const H_ROUTING_EPOCH: usize = 56;

/// Tries before a reader gives up on a region the backend keeps rewriting.
const READ_TRIES: usize = 64;

/// Bytes needed for `functions` emulated functions.
pub fn size_for(functions: usize) -> usize {
    IMAGES_OFFSET + functions * IMAGE_SIZE
}

/// What the header says about routing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// Layout generation.
    pub generation: u64,
    /// ECAM window base (0 with `ecam_size` 0: no ECAM decode).
    pub ecam_base: u64,
    /// ECAM window size in bytes.
    pub ecam_size: u64,
    /// First and last bus of the ECAM window.
    pub ecam_buses: (u8, u8),
    /// CONFIG_ADDRESS (port 0xCF8) latch.
    pub config_address: u32,
    /// The segment the backend serves.
    pub segment: u16,
}

fn map(file: &File, size: usize, prot: i32) -> std::io::Result<MmapRegion> {
    let dup = file.try_clone()?;
    MmapRegion::build(Some(FileOffset::new(dup, 0)), size, prot, libc::MAP_SHARED)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

fn atomic<T: vm_memory::AtomicInteger>(r: &MmapRegion, off: usize) -> &T {
    // Offsets are constants inside the header (checked by the size checks at creation), and
    // naturally aligned.
    r.get_atomic_ref::<T>(off)
        .expect("header field inside the mapped snapshot")
}

/// The backend's side: writes the region.
pub struct SnapshotWriter {
    region: MmapRegion,
    functions: usize,
    /// A routing entry or the ECAM window changed in this update: [`Self::end`] moves
    /// `routing_epoch` on.
    routing_changed: AtomicBool,
}

impl SnapshotWriter {
    /// Adopt a memfd from a frontend for `functions` functions: it must be sealed against
    /// shrinking and growing (so it cannot vanish under the mapping: `EINVAL` otherwise) and
    /// large enough (`ERANGE`).
    pub fn new(file: File, functions: usize) -> Result<Self, Status> {
        // SAFETY: F_GET_SEALS on an fd we own; no memory is passed.
        let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
        let needed = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
        if seals < 0 || seals & needed != needed {
            return Err(Status::Invalid);
        }
        let size = file.metadata().map_err(|_| Status::Invalid)?.len();
        let want = size_for(functions);
        if size < want as u64 {
            return Err(Status::OutOfRange);
        }
        let region =
            map(&file, want, libc::PROT_READ | libc::PROT_WRITE).map_err(|_| Status::Io)?;
        let w = SnapshotWriter {
            region,
            functions,
            routing_changed: AtomicBool::new(true),
        };
        atomic::<AtomicU64>(&w.region, H_MAGIC).store(MAGIC, Ordering::Relaxed);
        atomic::<AtomicU32>(&w.region, H_VERSION).store(VERSION, Ordering::Relaxed);
        atomic::<AtomicU32>(&w.region, H_FUNCTIONS).store(functions as u32, Ordering::Relaxed);
        Ok(w)
    }

    /// Start an update: readers retry until [`Self::end`].
    pub fn begin(&self) {
        atomic::<AtomicU64>(&self.region, H_SEQ).fetch_add(1, Ordering::Relaxed);
        fence(Ordering::Release);
    }

    /// Finish an update; `routing_epoch` moves on first if a routing entry or the ECAM window
    /// changed.
    pub fn end(&self) {
        if self.routing_changed.swap(false, Ordering::Relaxed) {
            atomic::<AtomicU64>(&self.region, H_ROUTING_EPOCH).fetch_add(1, Ordering::Relaxed);
        }
        atomic::<AtomicU64>(&self.region, H_SEQ).fetch_add(1, Ordering::Release);
    }

    /// Copy function `slot`'s configuration space (at most 4 KiB).
    pub fn set_image(&self, slot: usize, image: &[u8]) {
        if slot >= self.functions {
            return;
        }
        let n = image.len().min(IMAGE_SIZE);
        if let Ok(s) = self.region.get_slice(IMAGES_OFFSET + slot * IMAGE_SIZE, n) {
            s.copy_from(&image[..n]);
        }
    }

    /// Routing may have changed in ways the table does not show (a bridge's bus numbers, which
    /// decide the pages [`pages`] leaves to trap): [`Self::end`] moves `routing_epoch` on.
    pub fn mark_routing_changed(&self) {
        self.routing_changed.store(true, Ordering::Relaxed);
    }

    /// Set the whole routing table (`routes[bus * 256 + devfn]`).
    pub fn set_routes(&self, routes: &[u16; 65536]) {
        for (i, r) in routes.iter().enumerate() {
            self.set_route(i, *r);
        }
    }

    /// Set one routing entry (`bus * 256 + devfn`).
    pub fn set_route(&self, i: usize, route: u16) {
        if i < 65536 {
            let entry = atomic::<AtomicU16>(&self.region, ROUTES_OFFSET + 2 * i);
            if entry.swap(route, Ordering::Relaxed) != route {
                self.routing_changed.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Set the header's routing fields.
    pub fn set_header(&self, h: &SnapshotHeader) {
        let r = &self.region;
        atomic::<AtomicU64>(r, H_GENERATION).store(h.generation, Ordering::Relaxed);
        let buses = u16::from(h.ecam_buses.0) | u16::from(h.ecam_buses.1) << 8;
        // Every field is written (no short circuit); any change moves the epoch.
        let base = atomic::<AtomicU64>(r, H_ECAM_BASE).swap(h.ecam_base, Ordering::Relaxed);
        let size = atomic::<AtomicU64>(r, H_ECAM_SIZE).swap(h.ecam_size, Ordering::Relaxed);
        let old_buses = atomic::<AtomicU16>(r, H_ECAM_BUSES).swap(buses, Ordering::Relaxed);
        if (base, size, old_buses) != (h.ecam_base, h.ecam_size, buses) {
            self.routing_changed.store(true, Ordering::Relaxed);
        }
        atomic::<AtomicU32>(r, H_CONFIG_ADDRESS).store(h.config_address, Ordering::Relaxed);
        atomic::<AtomicU16>(r, H_SEGMENT).store(h.segment, Ordering::Relaxed);
    }
}

/// The frontend's side: creates the memfd and reads the region.
pub struct SnapshotReader {
    region: MmapRegion,
    functions: usize,
    /// The memfd itself, for a frontend that maps its pages elsewhere ([`pages`]).
    file: File,
}

impl std::fmt::Debug for SnapshotReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotReader")
            .field("functions", &self.functions)
            .field("size", &self.region.size())
            .finish()
    }
}

/// The answer to a configuration read, as the backend would give it.
pub type ReadResult = Result<u32, Status>;

impl SnapshotReader {
    /// Create a sealed memfd for `functions` functions and map it read-only; the file is what
    /// `SetConfigSnapshot` sends.
    pub fn create(functions: usize) -> std::io::Result<(Self, File)> {
        let size = size_for(functions);
        // SAFETY: memfd_create with a NUL-terminated name; the result is checked.
        let fd = unsafe {
            libc::memfd_create(
                c"pcierc-config-snapshot".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size as u64)?;
        // SAFETY: F_ADD_SEALS on an fd we own.
        let r = unsafe {
            libc::fcntl(
                file.as_raw_fd(),
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let region = map(&file, size, libc::PROT_READ)?;
        let own = file.try_clone()?;
        Ok((
            SnapshotReader {
                region,
                functions,
                file: own,
            },
            file,
        ))
    }

    /// Another reader of the same region (its own read-only mapping), e.g. for a thread that
    /// must not wait for the frontend's lock.
    pub fn try_clone(&self) -> std::io::Result<SnapshotReader> {
        let file = self.file.try_clone()?;
        let region = map(&file, size_for(self.functions), libc::PROT_READ)?;
        Ok(SnapshotReader {
            region,
            functions: self.functions,
            file,
        })
    }

    /// The shared memfd (to map function images elsewhere read-only; [`pages`]).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The layout version the backend wrote (0 before it wrote anything).
    pub fn version(&self) -> u32 {
        if atomic::<AtomicU64>(&self.region, H_MAGIC).load(Ordering::Relaxed) != MAGIC {
            return 0;
        }
        atomic::<AtomicU32>(&self.region, H_VERSION).load(Ordering::Relaxed)
    }

    /// `routing_epoch`: moves on whenever a routing entry or the ECAM window changes (version
    /// 2; always 0 in version 1). One load, no seqlock: a change is what matters.
    pub fn routing_epoch(&self) -> u64 {
        atomic::<AtomicU64>(&self.region, H_ROUTING_EPOCH).load(Ordering::Acquire)
    }

    fn seq(&self) -> &AtomicU64 {
        atomic::<AtomicU64>(&self.region, H_SEQ)
    }

    /// Run `f` under the seqlock; `None` if the backend never held still or never wrote.
    fn consistent<T>(&self, f: impl Fn() -> Option<T>) -> Option<T> {
        if atomic::<AtomicU64>(&self.region, H_MAGIC).load(Ordering::Relaxed) != MAGIC {
            return None;
        }
        for _ in 0..READ_TRIES {
            let s1 = self.seq().load(Ordering::Acquire);
            if s1 & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let v = f();
            fence(Ordering::Acquire);
            if self.seq().load(Ordering::Relaxed) == s1 {
                return v;
            }
        }
        None
    }

    /// The header's routing fields, consistently.
    pub fn header(&self) -> Option<SnapshotHeader> {
        self.consistent(|| Some(self.header_unlocked()))
    }

    fn header_unlocked(&self) -> SnapshotHeader {
        let r = &self.region;
        let buses = atomic::<AtomicU16>(r, H_ECAM_BUSES).load(Ordering::Relaxed);
        SnapshotHeader {
            generation: atomic::<AtomicU64>(r, H_GENERATION).load(Ordering::Relaxed),
            ecam_base: atomic::<AtomicU64>(r, H_ECAM_BASE).load(Ordering::Relaxed),
            ecam_size: atomic::<AtomicU64>(r, H_ECAM_SIZE).load(Ordering::Relaxed),
            config_address: atomic::<AtomicU32>(r, H_CONFIG_ADDRESS).load(Ordering::Relaxed),
            segment: atomic::<AtomicU16>(r, H_SEGMENT).load(Ordering::Relaxed),
            ecam_buses: (buses as u8, (buses >> 8) as u8),
        }
    }

    /// The configuration read the backend would answer for (segment, bus, devfn, offset,
    /// width), or `None` when the snapshot cannot say (another segment, an access the backend
    /// must judge, or a backend that kept writing): then ask the backend.
    pub fn config_read(
        &self,
        segment: u16,
        bus: u8,
        devfn: u8,
        offset: u16,
        width: u8,
    ) -> Option<ReadResult> {
        // The backend's own checks (misaligned or too wide: EINVAL, past 4 KiB: ERANGE) stay
        // with the backend.
        if AccessKind::Config.check_width(width).is_err()
            || !offset.is_multiple_of(u16::from(width))
            || usize::from(offset) + usize::from(width) > IMAGE_SIZE
        {
            return None;
        }
        self.consistent(|| {
            let h = self.header_unlocked();
            if h.segment != segment {
                return None;
            }
            self.read_routed(bus, devfn, offset, width)
        })
    }

    /// An ECAM read at guest-physical `addr` (PCIe Base 6.0 §7.2.2): the value, or `EREMOTE`
    /// for a function another emulator serves; `None` outside the window or when the backend
    /// must answer.
    pub fn ecam_read(&self, addr: u64, width: u8) -> Option<Result<u64, Status>> {
        if AccessKind::Config.check_width(width).is_err() || !addr.is_multiple_of(u64::from(width))
        {
            return None;
        }
        self.consistent(|| {
            let h = self.header_unlocked();
            let off = addr.checked_sub(h.ecam_base)?;
            if off >= h.ecam_size {
                return None;
            }
            let bus = h.ecam_buses.0.checked_add((off >> 20) as u8)?;
            let (devfn, reg) = ((off >> 12) as u8, (off & 0xfff) as u16);
            Some(self.read_routed(bus, devfn, reg, width)?.map(u64::from))
        })
    }

    /// A read of CONFIG_DATA (0xCFC-0xCFF) with the latched CONFIG_ADDRESS (PCI Local Bus 3.0
    /// §3.2.2.3.2): the value, or `EREMOTE`; `None` when the backend must answer (mechanism
    /// disabled, unaligned).
    pub fn config_data_read(&self, port: u64, width: u8) -> Option<Result<u64, Status>> {
        let byte = port.checked_sub(0xcfc)?;
        if byte >= 4 || AccessKind::Pio.check_width(width).is_err() || byte + u64::from(width) > 4 {
            return None;
        }
        self.consistent(|| {
            let h = self.header_unlocked();
            let ca = h.config_address;
            if ca & 1 << 31 == 0 {
                return None;
            }
            let (bus, devfn) = ((ca >> 16) as u8, (ca >> 8) as u8);
            let reg = (ca & 0xfc) as u16 + byte as u16;
            Some(self.read_routed(bus, devfn, reg, width)?.map(u64::from))
        })
    }

    fn read_routed(&self, bus: u8, devfn: u8, offset: u16, width: u8) -> Option<ReadResult> {
        let i = usize::from(bus) << 8 | usize::from(devfn);
        let route =
            atomic::<AtomicU16>(&self.region, ROUTES_OFFSET + 2 * i).load(Ordering::Relaxed);
        match route {
            ROUTE_ABSENT => Some(Ok(match width {
                1 => 0xff,
                2 => 0xffff,
                _ => u32::MAX,
            })),
            ROUTE_REMOTE => Some(Err(Status::Remote)),
            n => {
                let slot = usize::from(n - 1);
                if slot >= self.functions {
                    return None;
                }
                let mut bytes = [0u8; 4];
                let s = self
                    .region
                    .get_slice(
                        IMAGES_OFFSET + slot * IMAGE_SIZE + usize::from(offset),
                        usize::from(width),
                    )
                    .ok()?;
                s.copy_to(&mut bytes[..usize::from(width)]);
                Some(Ok(u32::from_le_bytes(bytes)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_sees_what_the_writer_wrote_and_nothing_half_written() {
        let (r, file) = SnapshotReader::create(2).unwrap();
        assert_eq!(r.config_read(0, 0, 0, 0, 4), None, "nothing written yet");
        let w = SnapshotWriter::new(file.try_clone().unwrap(), 2).unwrap();
        let mut image = vec![0u8; 4096];
        image[..4].copy_from_slice(&0x29c0_8086u32.to_le_bytes());
        let mut routes = Box::new([ROUTE_ABSENT; 65536]);
        routes[0] = 1;
        routes[0x10] = 2;
        routes[0x0100] = ROUTE_REMOTE;
        w.begin();
        w.set_image(0, &image);
        w.set_routes(&routes);
        w.set_header(&SnapshotHeader {
            ecam_base: 0xb000_0000,
            ecam_size: 256 << 20,
            ecam_buses: (0, 255),
            config_address: 0x8000_0000,
            ..Default::default()
        });
        // Mid-update: readers do not trust it.
        assert_eq!(r.config_read(0, 0, 0, 0, 4), None);
        w.end();
        assert_eq!(r.config_read(0, 0, 0, 0, 4), Some(Ok(0x29c0_8086)));
        assert_eq!(r.config_read(0, 0, 0, 2, 2), Some(Ok(0x29c0)));
        assert_eq!(
            r.config_read(0, 0, 0x08, 0, 4),
            Some(Ok(u32::MAX)),
            "absent"
        );
        assert_eq!(r.config_read(0, 1, 0, 0, 2), Some(Err(Status::Remote)));
        assert_eq!(r.config_read(1, 0, 0, 0, 4), None, "another segment");
        assert_eq!(r.config_read(0, 0, 0, 4094, 4), None, "past the end");
        assert_eq!(
            r.config_read(0, 0, 0, 2, 4),
            None,
            "misaligned: the backend says EINVAL"
        );
        assert_eq!(r.config_read(0, 0, 0, 0, 3), None);
        assert_eq!(r.ecam_read(0xb000_0000, 4), Some(Ok(0x29c0_8086)));
        assert_eq!(r.ecam_read(0xb000_0001, 2), None, "unaligned");
        assert_eq!(
            r.ecam_read(0xb010_0000, 4),
            Some(Err(Status::Remote)),
            "another emulator's: EREMOTE with no message"
        );
        assert_eq!(r.config_data_read(0xcfe, 2), Some(Ok(0x29c0)));
        assert_eq!(r.config_data_read(0xcff, 2), None, "crosses the dword");
    }

    #[test]
    fn the_writer_refuses_unsealed_or_short_files() {
        let (_, file) = SnapshotReader::create(1).unwrap();
        assert_eq!(SnapshotWriter::new(file, 2).err(), Some(Status::OutOfRange));
        let tmp = std::env::temp_dir().join(format!("pcierc-snap-{}", std::process::id()));
        let f = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&tmp)
            .unwrap();
        f.set_len(size_for(1) as u64).unwrap();
        let _ = std::fs::remove_file(&tmp);
        assert_eq!(
            SnapshotWriter::new(f, 1).err(),
            Some(Status::Invalid),
            "not sealed"
        );
    }
}
