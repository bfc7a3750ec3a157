//! The system calls [`super::linux::LinuxXen`] makes, behind a trait: [`Libc`] makes them; a
//! test can put a stand-in for `/dev/xen/*` in their place (as `fakexen.c` does with
//! LD_PRELOAD in the reference trace) and see the exact bytes each ioctl carries.

use core::ffi::{c_int, c_ulong, c_void};
use core::ptr::NonNull;
use std::ffi::CStr;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// open/ioctl/mmap/munmap/read/write on device nodes.
pub trait Sys: Send + Sync {
    /// `open(2)`.
    fn open(&self, path: &CStr, flags: c_int) -> io::Result<OwnedFd>;

    /// `ioctl(2)`; its non-negative return value.
    ///
    /// # Safety
    /// `arg` must point at a live value of the type `req` takes, valid for the reads and writes
    /// the ioctl makes (including through pointers inside it).
    unsafe fn ioctl(&self, fd: RawFd, req: c_ulong, arg: *mut c_void) -> io::Result<c_int>;

    /// `mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)`.
    fn mmap_shared(&self, fd: RawFd, len: usize) -> io::Result<NonNull<c_void>>;

    /// `munmap(2)`.
    ///
    /// # Safety
    /// `addr` and `len` must be a mapping [`Sys::mmap_shared`] returned, not used afterwards.
    unsafe fn munmap(&self, addr: NonNull<c_void>, len: usize);

    /// `read(2)`.
    fn read(&self, fd: RawFd, buf: &mut [u8]) -> io::Result<usize>;

    /// `write(2)`.
    fn write(&self, fd: RawFd, buf: &[u8]) -> io::Result<usize>;
}

/// The real system calls.
#[derive(Clone, Copy, Debug, Default)]
pub struct Libc;

fn check(r: c_int) -> io::Result<c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl Sys for Libc {
    fn open(&self, path: &CStr, flags: c_int) -> io::Result<OwnedFd> {
        // SAFETY: `path` is NUL-terminated; the returned fd is new and owned by nobody else.
        let fd = check(unsafe { libc::open(path.as_ptr(), flags) })?;
        // SAFETY: `fd` was just opened and is not owned elsewhere.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    unsafe fn ioctl(&self, fd: RawFd, req: c_ulong, arg: *mut c_void) -> io::Result<c_int> {
        // SAFETY: forwarded to the caller (the trait method's contract).
        check(unsafe { libc::ioctl(fd, req, arg) })
    }

    fn mmap_shared(&self, fd: RawFd, len: usize) -> io::Result<NonNull<c_void>> {
        // SAFETY: a new mapping chosen by the kernel; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(p).ok_or_else(|| io::Error::other("mmap returned NULL"))
    }

    unsafe fn munmap(&self, addr: NonNull<c_void>, len: usize) {
        // SAFETY: the caller passes a mapping of ours that is no longer used.
        unsafe { libc::munmap(addr.as_ptr(), len) };
    }

    fn read(&self, fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for `buf.len()` bytes of writes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    fn write(&self, fd: RawFd, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for `buf.len()` bytes of reads.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }
}
