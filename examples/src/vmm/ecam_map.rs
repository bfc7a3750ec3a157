//! ECAM reads without a VM exit (`--ecam-map`, docs/vmm.md "ECAM reads from memory"): pcierc's
//! configuration snapshot mapped read-only into the guest's ECAM window. The window is a host
//! reservation the size of the ECAM window in which each page is the snapshot's image of the
//! function at that ECAM offset (PCIe Base 6.0 §7.2.2: bus << 20 | device << 15 | function <<
//! 12), or a page of all ones for an absent function; KVM read-only memory slots
//! (`KVM_MEM_READONLY`) cover it except the pages the snapshot says must trap (another emulator's
//! functions, and the device-0 pages below bridges where one may arrive: see
//! `pcierc_protocol::snapshot::pages`). Reads then complete from memory; writes to a read-only
//! slot exit as MMIO and are forwarded to pcierc as before.
//!
//! Following changes: the snapshot's `routing_epoch` moves whenever a route or the ECAM window
//! changes. [`EcamMap::sync`] runs after every forwarded write (before the vCPU that made it
//! resumes), after a platform reset and after every batch of backend-channel notifications, and
//! rebuilds the mapping when the epoch moved: slots removed (accesses meanwhile exit and are
//! forwarded, which is always right), pages remapped, slots added.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_READONLY};
use kvm_ioctls::{Cap, VmFd};
use pcierc_protocol::snapshot::pages::{EcamLayout, EcamPage, MAX_WINDOW, PAGE_SIZE};
use pcierc_protocol::snapshot::SnapshotReader;

use super::Error;

/// The first KVM slot number the map uses (guest RAM uses 0 and 1).
const FIRST_SLOT: u32 = 8;
/// Pages of the all-ones memfd (1 MiB: one bus), mapped repeatedly over runs of absent
/// functions so that a run is one host mapping.
const ONES_PAGES: usize = 256;
/// `routing_epoch` value meaning "nothing installed yet".
const NONE_INSTALLED: u64 = u64::MAX;

/// What the map holds now, for `--stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EcamMapStats {
    /// Pages holding a function image of pcierc's (reads from memory).
    pub images: usize,
    /// Pages of all ones (absent functions, reads from memory).
    pub all_ones: usize,
    /// Pages left to trap (another emulator's functions, device 0 below bridges).
    pub trapped: usize,
    /// KVM slots in use.
    pub slots: usize,
    /// Layouts installed so far.
    pub rebuilds: u64,
}

struct State {
    /// The host reservation: (address, length).
    host: Option<(usize, usize)>,
    /// The layout the slots were added for (`None`: no slot).
    layout: Option<EcamLayout>,
    /// KVM slots installed.
    slots: Vec<u32>,
    stats: EcamMapStats,
}

/// pcierc's configuration pages mapped into the guest's ECAM window.
pub struct EcamMap {
    reader: SnapshotReader,
    /// 1 MiB of 0xff.
    ones: File,
    /// `routing_epoch` of the layout installed (or judged unmappable).
    installed: AtomicU64,
    /// KVM slots available to the map.
    max_slots: usize,
    /// Guest-physical ranges the window must not cover (RAM, IOAPIC to 4 GiB): KVM would refuse
    /// the overlap with RAM, and a slot over the in-kernel IOAPIC or LAPIC would hide them.
    forbidden: Vec<(u64, u64)>,
    state: Mutex<State>,
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        what: what.to_string(),
        source,
    }
}

impl EcamMap {
    /// A map for `vm` serving the pages of `reader`, or `None` (with one info log line) when
    /// KVM lacks read-only slots (KVM_CAP_READONLY_MEM) or has too few slots, or the snapshot
    /// is of a backend that does not say when routes change (version 1).
    pub fn new(
        vm: &VmFd,
        reader: SnapshotReader,
        forbidden: Vec<(u64, u64)>,
    ) -> Result<Option<EcamMap>, Error> {
        if !vm.check_extension(Cap::ReadonlyMem) {
            log::info!("--ecam-map: KVM lacks KVM_CAP_READONLY_MEM; ECAM reads exit as before");
            return Ok(None);
        }
        let nr = usize::try_from(vm.check_extension_int(Cap::NrMemslots)).unwrap_or(0);
        let max_slots = nr.saturating_sub(FIRST_SLOT as usize);
        if max_slots == 0 {
            log::info!("--ecam-map: KVM offers {nr} memory slots; ECAM reads exit as before");
            return Ok(None);
        }
        if reader.version() < 2 {
            log::info!(
                "--ecam-map: pcierc's snapshot is version {} (no routing_epoch); ECAM reads \
                 exit as before",
                reader.version()
            );
            return Ok(None);
        }
        // SAFETY: memfd_create with a NUL-terminated name; the result is checked.
        let fd = unsafe { libc::memfd_create(c"pcierc-ecam-ones".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io("memfd_create")(std::io::Error::last_os_error()));
        }
        // SAFETY: a fresh fd we own.
        let ones = unsafe { File::from_raw_fd(fd) };
        std::io::Write::write_all(&mut &ones, &[0xff; ONES_PAGES * PAGE_SIZE as usize])
            .map_err(io("filling the all-ones page"))?;
        Ok(Some(EcamMap {
            reader,
            ones,
            installed: AtomicU64::new(NONE_INSTALLED),
            max_slots,
            forbidden,
            state: Mutex::new(State {
                host: None,
                layout: None,
                slots: Vec::new(),
                stats: EcamMapStats::default(),
            }),
        }))
    }

    /// What the map holds now.
    pub fn stats(&self) -> EcamMapStats {
        self.lock().stats
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bring the mapping up to date with the snapshot's routing: one atomic load when nothing
    /// changed. `Err` only when a slot could not be removed (the guest would read stale pages).
    pub fn sync(&self, vm: &VmFd) -> Result<(), Error> {
        if self.reader.routing_epoch() == self.installed.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut st = self.lock();
        let epoch = self.reader.routing_epoch();
        if epoch == self.installed.load(Ordering::Acquire) {
            return Ok(());
        }
        let layout = self.reader.ecam_layout();
        let st = &mut *st;
        if let (Some(new), Some(old), Some((host, _))) = (&layout, &st.layout, st.host) {
            if new.base == old.base && new.mapped_runs() == old.mapped_runs() {
                // The same slots: only pages whose contents moved are replaced (KVM's MMU
                // notifier drops the old pages from the guest's page tables).
                match self.remap_changed(host, old, new) {
                    Ok(()) => {
                        count_pages(&mut st.stats, new);
                        st.layout = Some(new.clone());
                        st.stats.rebuilds += 1;
                        self.installed.store(epoch, Ordering::Release);
                        return Ok(());
                    }
                    Err(e) => log::warn!("--ecam-map: {e}; rebuilding the window"),
                }
            }
        }
        remove_slots(vm, st)?;
        match layout {
            Some(layout) => match self.install(vm, st, &layout) {
                Ok(()) => {}
                Err(e @ Error::Kvm { .. }) => return Err(e),
                // A host mapping failed (e.g. vm.max_map_count): no slot was added for it.
                Err(e) => {
                    log::warn!("--ecam-map: {e}; the window's reads exit");
                    remove_slots(vm, st)?;
                }
            },
            None => log::debug!("--ecam-map: no consistent layout at epoch {epoch}; reads exit"),
        }
        st.stats.rebuilds += 1;
        self.installed.store(epoch, Ordering::Release);
        Ok(())
    }

    fn install(&self, vm: &VmFd, st: &mut State, layout: &EcamLayout) -> Result<(), Error> {
        let len = layout.pages.len() * PAGE_SIZE as usize;
        st.stats = EcamMapStats {
            rebuilds: st.stats.rebuilds,
            ..Default::default()
        };
        if len == 0 || len as u64 > MAX_WINDOW {
            return Ok(());
        }
        let end = layout.base.saturating_add(len as u64);
        if let Some(&(b, s)) = self
            .forbidden
            .iter()
            .find(|&&(b, s)| layout.base < b.saturating_add(s) && b < end)
        {
            log::debug!(
                "--ecam-map: ECAM window {:#x}+{len:#x} overlaps {b:#x}+{s:#x}; its reads exit",
                layout.base
            );
            return Ok(());
        }
        let runs = layout.mapped_runs();
        if runs.len() > self.max_slots {
            log::warn!(
                "--ecam-map: the window needs {} memory slots, KVM leaves {}; its reads exit",
                runs.len(),
                self.max_slots
            );
            return Ok(());
        }
        let host = self.reserve(st, len)?;
        self.map_pages(host, layout)?;
        for (i, &(start, n)) in runs.iter().enumerate() {
            let slot = FIRST_SLOT + i as u32;
            let r = kvm_userspace_memory_region {
                slot,
                flags: KVM_MEM_READONLY,
                guest_phys_addr: layout.base + start as u64 * PAGE_SIZE,
                memory_size: n as u64 * PAGE_SIZE,
                userspace_addr: (host + start * PAGE_SIZE as usize) as u64,
            };
            // SAFETY: the host range lies inside the reservation this map owns and keeps mapped
            // (pages are only ever replaced, never unmapped, while a slot covers them: slots
            // are removed first).
            if let Err(e) = unsafe { vm.set_user_memory_region(r) } {
                log::warn!(
                    "--ecam-map: KVM refused a slot at {:#x}+{:#x}: {e}; the window's reads exit",
                    r.guest_phys_addr,
                    r.memory_size
                );
                return remove_slots(vm, st);
            }
            st.slots.push(slot);
        }
        count_pages(&mut st.stats, layout);
        st.stats.slots = st.slots.len();
        st.layout = (!st.slots.is_empty()).then(|| layout.clone());
        log::debug!(
            "--ecam-map: epoch {}: window {:#x}+{len:#x}, {:?}",
            layout.routing_epoch,
            layout.base,
            st.stats
        );
        Ok(())
    }

    /// The host reservation, `len` bytes (a new one when the window's size changed).
    fn reserve(&self, st: &mut State, len: usize) -> Result<usize, Error> {
        if let Some((addr, l)) = st.host {
            if l == len {
                return Ok(addr);
            }
            // SAFETY: our own reservation; no slot covers it any more (removed first).
            unsafe { libc::munmap(addr as *mut libc::c_void, l) };
            st.host = None;
        }
        // SAFETY: a fresh anonymous reservation; nothing is passed.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io("reserving the ECAM window")(
                std::io::Error::last_os_error(),
            ));
        }
        st.host = Some((addr as usize, len));
        Ok(addr as usize)
    }

    /// Replace the pages of `old` whose backing differs in `new` (same size).
    fn remap_changed(&self, host: usize, old: &EcamLayout, new: &EcamLayout) -> Result<(), Error> {
        for (i, (a, b)) in old.pages.iter().zip(&new.pages).enumerate() {
            if a != b {
                self.map_pages_from(host, new, i, i + 1)?;
            }
        }
        Ok(())
    }

    /// Map every page of `layout` at `host`: images from the snapshot, the rest all ones.
    fn map_pages(&self, host: usize, layout: &EcamLayout) -> Result<(), Error> {
        self.map_pages_from(host, layout, 0, layout.pages.len())
    }

    /// Map pages `from..to` of `layout` at `host`.
    fn map_pages_from(
        &self,
        host: usize,
        layout: &EcamLayout,
        from: usize,
        to: usize,
    ) -> Result<(), Error> {
        let page = PAGE_SIZE as usize;
        let mut i = from;
        while i < to {
            let (fd, offset, n) = match layout.pages[i] {
                EcamPage::Image(off) => (self.reader.file().as_raw_fd(), off, 1),
                _ => {
                    let n = layout.pages[i..to]
                        .iter()
                        .take(ONES_PAGES)
                        .take_while(|p| !matches!(p, EcamPage::Image(_)))
                        .count();
                    (self.ones.as_raw_fd(), 0, n)
                }
            };
            // SAFETY: MAP_FIXED inside our own reservation (host + i pages, n pages, within
            // `len`), read-only and shared from a file we hold open.
            let r = unsafe {
                libc::mmap(
                    (host + i * page) as *mut libc::c_void,
                    n * page,
                    libc::PROT_READ,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    fd,
                    offset as libc::off_t,
                )
            };
            if r == libc::MAP_FAILED {
                return Err(io("mapping ECAM pages")(std::io::Error::last_os_error()));
            }
            i += n;
        }
        Ok(())
    }
}

/// Count `layout`'s pages of each kind into `stats`.
fn count_pages(stats: &mut EcamMapStats, layout: &EcamLayout) {
    let kind = |k: fn(&EcamPage) -> bool| layout.pages.iter().filter(|p| k(p)).count();
    stats.images = kind(|p| matches!(p, EcamPage::Image(_)));
    stats.all_ones = kind(|p| *p == EcamPage::AllOnes);
    stats.trapped = kind(|p| *p == EcamPage::Trap);
}

/// Remove every slot of the map (memory_size 0 deletes a slot).
fn remove_slots(vm: &VmFd, st: &mut State) -> Result<(), Error> {
    for slot in st.slots.drain(..) {
        let r = kvm_userspace_memory_region {
            slot,
            ..Default::default()
        };
        // SAFETY: deleting a slot passes no memory.
        unsafe { vm.set_user_memory_region(r) }.map_err(|source| Error::Kvm {
            what: "KVM_SET_USER_MEMORY_REGION (removing an ECAM slot)",
            source,
        })?;
    }
    st.stats.slots = 0;
    st.layout = None;
    Ok(())
}
