//! Coalesced port I/O (`KVM_CAP_COALESCED_PIO`): writes to CONFIG_ADDRESS (0xCF8) and to the
//! CMOS index port (0x70) are recorded by KVM in a ring page shared with the VMM instead of
//! exiting (QEMU's `mc146818rtc` coalesces the CMOS index likewise). A port write in such a zone
//! only sets a register (the VMM's CONFIG_ADDRESS latch, PCI Local Bus 3.0 §3.2.2.3.2; the
//! MC146818A's address register), whose value matters at the next access that exits, so
//! the VMM applies the ring's entries, in the order the guest wrote them, before it handles any
//! exit (Linux `Documentation/virt/kvm/api.rst`, `KVM_REGISTER_COALESCED_MMIO`).
//!
//! A zone is a port range, and KVM records every write that falls wholly inside it, whatever its
//! width. The CONFIG_ADDRESS zone has to be 0xCF8-0xCFB to take a dword write, so it also takes
//! byte and word writes to 0xCF8-0xCFB, among them ICH9's Reset Control at 0xCF9 (ICH9
//! datasheet §13.7.5 RST_CNT): each entry is
//! handled exactly as the exit would have been (`Machine::pio_out`: a dword at 0xCF8 latches,
//! anything else goes where it always went), so a reset request is a reset, only later. How
//! much later is bounded: a guest that writes 0xCF9 and then spins or halts without another
//! exit would never return to the VMM, so a watcher thread applies entries that have waited in
//! the ring for a whole period ([`WATCH_PERIOD`]) and, for a reset, reports it to the session as
//! a vCPU would.

use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use kvm_bindings::{kvm_coalesced_mmio, kvm_coalesced_mmio_ring, KVM_COALESCED_MMIO_PAGE_OFFSET};
use kvm_ioctls::{Cap, IoEventAddress, VcpuFd, VmFd};

use super::machine::Stop;
use super::Error;

/// CONFIG_ADDRESS and the three bytes behind it (the smallest zone that takes a dword write).
pub const CONFIG_ADDRESS_ZONE: (u16, u32) = (0xcf8, 4);
/// The CMOS index port alone (a write to 0x71 reads or changes the clock: it exits).
pub const CMOS_INDEX_ZONE: (u16, u32) = (super::cmos::CMOS_INDEX, 1);
/// How long an entry may wait in the ring before the watcher applies it.
pub const WATCH_PERIOD: Duration = Duration::from_millis(10);

/// KVM's ring of coalesced writes, mapped from a vCPU's descriptor (one ring per VM), and the
/// lock under which entries are taken out and applied.
pub struct CoalescedPio {
    ring: NonNull<kvm_coalesced_mmio_ring>,
    page_size: usize,
    zones: Vec<(u16, u32)>,
    /// Held while entries are taken and applied, so that two threads never apply them out of
    /// order; holds the `first` index the watcher saw last.
    drain: Mutex<u32>,
}

// SAFETY: the ring page is shared with KVM; this type only touches it through atomics on
// `first`/`last` and reads of entries KVM has published (after an acquire load of `last`), and
// entries are consumed under `drain`.
unsafe impl Send for CoalescedPio {}
// SAFETY: as above.
unsafe impl Sync for CoalescedPio {}

impl CoalescedPio {
    /// Map the ring through `vcpu` and register `zones` (port, size), when KVM offers coalesced
    /// port I/O; `None` (every write exits, as before) without it, said once in the log.
    pub fn open(vm: &VmFd, vcpu: &VcpuFd, zones: &[(u16, u32)]) -> Result<Option<Self>, Error> {
        if zones.is_empty() {
            return Ok(None);
        }
        if !vm.check_extension(Cap::CoalescedPio) {
            log::info!("KVM has no KVM_CAP_COALESCED_PIO: port writes to 0xCF8 and 0x70 exit");
            return Ok(None);
        }
        // SAFETY: sysconf has no memory-safety preconditions.
        let page_size = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            n if n > 0 => n as usize,
            _ => return Err(io_error("sysconf(_SC_PAGESIZE)")),
        };
        let offset = libc::off_t::from(KVM_COALESCED_MMIO_PAGE_OFFSET) * page_size as libc::off_t;
        // SAFETY: a new shared mapping of one page of the vCPU descriptor at the offset KVM
        // documents for the coalesced ring; nothing else lives at the address the kernel picks.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                offset,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io_error("mapping KVM's coalesced I/O ring"));
        }
        let ring = NonNull::new(addr.cast()).ok_or_else(|| io_error("mmap returned null"))?;
        let mut this = CoalescedPio {
            ring,
            page_size,
            zones: Vec::new(),
            drain: Mutex::new(u32::MAX),
        };
        for &(port, size) in zones {
            vm.register_coalesced_mmio(IoEventAddress::Pio(u64::from(port)), size)
                .map_err(|source| Error::Kvm {
                    what: "KVM_REGISTER_COALESCED_MMIO",
                    source,
                })?;
            this.zones.push((port, size));
        }
        Ok(Some(this))
    }

    /// The zones registered (port, size).
    pub fn zones(&self) -> &[(u16, u32)] {
        &self.zones
    }

    /// Entries the ring holds (`KVM_COALESCED_MMIO_MAX`).
    fn capacity(&self) -> u32 {
        ((self.page_size - std::mem::size_of::<kvm_coalesced_mmio_ring>())
            / std::mem::size_of::<kvm_coalesced_mmio>()) as u32
    }

    fn index(&self, field: usize) -> &AtomicU32 {
        // SAFETY: `first` (offset 0) and `last` (offset 4) are naturally aligned u32s inside
        // the mapped page, which lives as long as `self`; KVM and this type access them as
        // 32-bit values only.
        unsafe { &*self.ring.as_ptr().cast::<AtomicU32>().add(field) }
    }

    fn first(&self) -> &AtomicU32 {
        self.index(0)
    }

    fn last(&self) -> &AtomicU32 {
        self.index(1)
    }

    /// Apply every entry waiting, in order, with `apply(port, data)`, holding the drain lock.
    /// Stops at the first entry `apply` answers with a [`Stop`] (a reset request): the entries
    /// after it are dropped, as the machine resets. `Err` when `apply` fails or KVM's indices
    /// are out of range.
    pub fn drain(
        &self,
        mut apply: impl FnMut(u16, &[u8]) -> Result<Option<Stop>, Error>,
    ) -> Result<Option<Stop>, Error> {
        // Cheap when empty (the common case on every exit): two loads, no lock.
        if self.first().load(Ordering::Relaxed) == self.last().load(Ordering::Relaxed) {
            return Ok(None);
        }
        let _guard = self.drain.lock().unwrap_or_else(PoisonError::into_inner);
        self.drain_locked(&mut apply)
    }

    fn drain_locked(
        &self,
        apply: &mut impl FnMut(u16, &[u8]) -> Result<Option<Stop>, Error>,
    ) -> Result<Option<Stop>, Error> {
        let max = self.capacity();
        loop {
            let first = self.first().load(Ordering::Relaxed);
            // Acquire: the entry KVM wrote before publishing `last` (its smp_wmb) is visible.
            let last = self.last().load(Ordering::Acquire);
            if first == last {
                return Ok(None);
            }
            if first >= max || last >= max {
                return Err(Error::Config(format!(
                    "KVM's coalesced I/O ring has indices {first}/{last} of {max}"
                )));
            }
            // SAFETY: `first < max`, so the entry lies inside the mapped page; KVM does not
            // write it again until `first` moves past it.
            let entry = unsafe {
                std::ptr::read_volatile(
                    self.ring
                        .as_ptr()
                        .cast::<u8>()
                        .add(std::mem::size_of::<kvm_coalesced_mmio_ring>())
                        .cast::<kvm_coalesced_mmio>()
                        .add(first as usize),
                )
            };
            let len = (entry.len as usize).min(entry.data.len());
            let stop = match u16::try_from(entry.phys_addr) {
                Ok(port) => apply(port, &entry.data[..len])?,
                Err(_) => {
                    log::warn!("coalesced write to port {:#x} ignored", entry.phys_addr);
                    None
                }
            };
            // Only now, after the write took effect: a vCPU that finds the ring empty without
            // the lock ([`CoalescedPio::drain`]) must find the write applied. Release: the entry
            // was read before KVM may reuse its slot.
            self.first().store((first + 1) % max, Ordering::Release);
            if let Some(stop) = stop {
                self.discard_locked();
                return Ok(Some(stop));
            }
        }
    }

    fn discard_locked(&self) {
        let last = self.last().load(Ordering::Acquire);
        self.first().store(last, Ordering::Release);
    }

    /// Drop every entry waiting (a platform reset: writes the guest made before it are gone
    /// with the machine's state).
    pub fn discard(&self) {
        let _guard = self.drain.lock().unwrap_or_else(PoisonError::into_inner);
        self.discard_locked();
    }

    /// The watcher's check, called every [`WATCH_PERIOD`]: apply the ring's entries if the
    /// oldest one is the one seen at the previous call (no exit has drained it meanwhile).
    pub fn drain_if_stale(
        &self,
        mut apply: impl FnMut(u16, &[u8]) -> Result<Option<Stop>, Error>,
    ) -> Result<Option<Stop>, Error> {
        let mut seen = self.drain.lock().unwrap_or_else(PoisonError::into_inner);
        let first = self.first().load(Ordering::Relaxed);
        if first == self.last().load(Ordering::Relaxed) {
            *seen = u32::MAX;
            return Ok(None);
        }
        if *seen != first {
            *seen = first;
            return Ok(None);
        }
        *seen = u32::MAX;
        self.drain_locked(&mut apply)
    }
}

impl Drop for CoalescedPio {
    fn drop(&mut self) {
        // SAFETY: the page was mapped by `open` and is not used after this.
        unsafe { libc::munmap(self.ring.as_ptr().cast(), self.page_size) };
    }
}

fn io_error(what: &str) -> Error {
    Error::Io {
        what: what.into(),
        source: std::io::Error::last_os_error(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring on an anonymous page, as KVM lays it out.
    fn ring() -> CoalescedPio {
        // SAFETY: sysconf has no memory-safety preconditions.
        let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        // SAFETY: a new anonymous mapping of one page.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        CoalescedPio {
            ring: NonNull::new(addr.cast()).expect("mapped"),
            page_size,
            zones: Vec::new(),
            drain: Mutex::new(u32::MAX),
        }
    }

    /// What KVM's `coalesced_mmio_write` does: the entry, then `last`.
    fn push(r: &CoalescedPio, port: u16, data: &[u8]) {
        let last = r.last().load(Ordering::Relaxed);
        let mut e = kvm_coalesced_mmio {
            phys_addr: u64::from(port),
            len: data.len() as u32,
            ..Default::default()
        };
        e.data[..data.len()].copy_from_slice(data);
        e.__bindgen_anon_1.pio = 1;
        // SAFETY: `last` < capacity, inside the page.
        unsafe {
            r.ring
                .as_ptr()
                .cast::<u8>()
                .add(std::mem::size_of::<kvm_coalesced_mmio_ring>())
                .cast::<kvm_coalesced_mmio>()
                .add(last as usize)
                .write_volatile(e)
        };
        r.last().store((last + 1) % r.capacity(), Ordering::Release);
    }

    fn collect(r: &CoalescedPio) -> (Vec<(u16, Vec<u8>)>, Option<Stop>) {
        let mut seen = Vec::new();
        let stop = r
            .drain(|port, data| {
                seen.push((port, data.to_vec()));
                Ok(None)
            })
            .expect("drain");
        (seen, stop)
    }

    #[test]
    fn entries_are_applied_in_order_across_the_wrap() {
        let r = ring();
        assert_eq!(r.capacity(), ((r.page_size - 8) / 24) as u32);
        let mut expected = Vec::new();
        // Three times round the ring, draining every 50 entries.
        for i in 0..(3 * r.capacity() as usize) {
            let v = (i as u32).to_le_bytes();
            push(&r, 0xcf8, &v);
            expected.push((0xcf8u16, v.to_vec()));
            if i % 50 == 49 {
                let (seen, stop) = collect(&r);
                assert_eq!(stop, None);
                assert_eq!(seen, std::mem::take(&mut expected));
            }
        }
        let (seen, _) = collect(&r);
        assert_eq!(seen, expected);
        assert_eq!(collect(&r).0, Vec::new(), "the ring is empty afterwards");
    }

    #[test]
    fn a_reset_request_drops_the_entries_after_it() {
        let r = ring();
        push(&r, 0xcf8, &0x8000_0000u32.to_le_bytes());
        push(&r, 0xcf9, &[0x06]);
        push(&r, 0x70, &[0x0f]);
        let mut seen = Vec::new();
        let stop = r
            .drain(|port, data| {
                seen.push(port);
                Ok((port == 0xcf9 && data == [0x06]).then_some(Stop::Reset))
            })
            .expect("drain");
        assert_eq!(stop, Some(Stop::Reset));
        assert_eq!(seen, [0xcf8, 0xcf9]);
        assert_eq!(collect(&r).0, Vec::new());
    }

    #[test]
    fn the_watcher_takes_only_entries_that_waited_a_whole_period() {
        let r = ring();
        let apply = |_: u16, _: &[u8]| Ok(None);
        push(&r, 0x70, &[0x10]);
        // First look: the entry is new.
        assert_eq!(r.drain_if_stale(apply).expect("watch"), None);
        assert_ne!(
            r.first().load(Ordering::Relaxed),
            r.last().load(Ordering::Relaxed)
        );
        // A vCPU drains it and a new one arrives: still not stale.
        collect(&r);
        push(&r, 0x70, &[0x11]);
        assert_eq!(r.drain_if_stale(apply).expect("watch"), None);
        assert_ne!(
            r.first().load(Ordering::Relaxed),
            r.last().load(Ordering::Relaxed)
        );
        // Nobody drained it in a whole period: the watcher applies it.
        let mut seen = Vec::new();
        r.drain_if_stale(|port, data| {
            seen.push((port, data.to_vec()));
            Ok(None)
        })
        .expect("watch");
        assert_eq!(seen, [(0x70, vec![0x11])]);
        r.discard();
        push(&r, 0xcf9, &[0x06]);
        r.discard();
        assert_eq!(collect(&r).0, Vec::new(), "discarded");
    }
}
