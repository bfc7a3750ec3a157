//! SIGTERM and SIGINT as events: both are blocked in the calling thread (threads started later
//! inherit the mask) and delivered through a signalfd that the event loop watches, so a signal
//! never interrupts work half done. Nothing runs in a signal handler.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The signals that end the process cleanly.
pub const SHUTDOWN_SIGNALS: [libc::c_int; 2] = [libc::SIGTERM, libc::SIGINT];

/// A signalfd for [`SHUTDOWN_SIGNALS`], which stay blocked while it lives (and after: the
/// process is about to exit).
#[derive(Debug)]
pub struct ShutdownSignals {
    fd: OwnedFd,
}

fn shutdown_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the zeroed set; sigaddset adds valid signal numbers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in SHUTDOWN_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

impl ShutdownSignals {
    /// Block SIGTERM and SIGINT in this thread and open a non-blocking signalfd for them. Call
    /// it before starting threads (they inherit the mask, so the signals cannot kill the process
    /// through one of them) and as early as possible: a signal that arrives from now on waits
    /// for [`ShutdownSignals::take`] instead of killing the process.
    pub fn block() -> io::Result<Self> {
        let set = shutdown_set();
        // SAFETY: `set` is an initialised sigset; the old mask is not asked for.
        let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        // SAFETY: -1 asks for a new signalfd for `set`, which lives for the call.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: signalfd just returned this descriptor; nothing else owns it.
        Ok(ShutdownSignals {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The next pending shutdown signal, if one arrived (without waiting).
    pub fn take(&self) -> Option<libc::c_int> {
        // SAFETY: signalfd_siginfo is plain data; all-zeroes is a valid value.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reading at most `size` bytes into `info`, which lives for the call.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        (n == size as isize).then_some(info.ssi_signo as libc::c_int)
    }
}

impl AsRawFd for ShutdownSignals {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The name of a shutdown signal, for logs.
pub fn name(signo: libc::c_int) -> &'static str {
    match signo {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        _ => "a signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_sent_to_the_blocking_thread_is_read_from_the_signalfd() {
        // On a thread of its own: the mask is per thread, and the signal is sent to that
        // thread only (the test harness's other threads do not block it).
        std::thread::spawn(|| {
            let s = ShutdownSignals::block().unwrap();
            assert_eq!(s.take(), None, "nothing pending yet");
            for signo in SHUTDOWN_SIGNALS {
                // SAFETY: gettid/tgkill on this very thread, with a blocked signal.
                let r = unsafe { libc::tgkill(libc::getpid(), libc::gettid(), signo) };
                assert_eq!(r, 0);
                assert_eq!(s.take(), Some(signo));
                assert_eq!(s.take(), None);
            }
            assert_eq!(name(libc::SIGTERM), "SIGTERM");
        })
        .join()
        .unwrap();
    }
}
