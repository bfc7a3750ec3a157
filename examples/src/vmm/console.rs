//! COM1's ends on the host: the guest's output on stdout, stdin as its input, and the watchdog
//! that keeps the guest's driver from waiting on COM1 for ever.

use std::io::Write;
use std::time::Duration;

use super::machine::{ConsoleState, Machine};

/// stdout, flushed after every byte the guest sends (it may print prompts without newlines).
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = std::io::stdout().lock();
        out.write_all(buf)?;
        out.flush()?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

/// Feed what arrives on stdin to COM1's receiver, as QEMU's `-serial stdio` does (bytes wait
/// while the guest has not drained the 64-byte receive FIFO; stdin is read unbuffered, as it
/// comes: a terminal stays in its own line mode), and see that the guest's driver does not
/// wait on COM1 for ever.
///
/// COM1's interrupt is an edge (an irqfd) that vm-superio raises when a condition appears. In
/// the nested tests (L2 with the root ports on INTx) a guest's shell was seen to wait with the
/// end of a command line undelivered until the next input byte came, every time, and raising
/// COM1's interrupt again cured it; where the edge goes is not established. So when the driver
/// has waited `CONSOLE_STALL` with its receive interrupt enabled and input unread, or its
/// transmit interrupt enabled and nothing sent, the interrupt is raised again (at most
/// `CONSOLE_KICKS` times for unread input until something moves: a guest that never reads
/// is left alone; pending output, every `CONSOLE_STALL` until it moves).
pub fn input_loop(machine: &Machine) {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    let mut buf = [0u8; 256];
    // Unbuffered: `poll` below must see every byte not yet taken (std's stdin would keep what
    // it read ahead in its own buffer, out of poll's sight).
    // SAFETY: fd 0 is open for the process's life; ManuallyDrop never closes it.
    let mut stdin = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(0) });
    let mut pending: Vec<u8> = Vec::new();
    let mut open = true;
    // The state at the last change, when it was seen, and the kicks since.
    let mut last: Option<(ConsoleState, std::time::Instant, u32)> = None;
    loop {
        if !pending.is_empty() {
            let taken = machine.console_input(&pending);
            pending.drain(..taken);
        }
        let state = machine.console_state();
        let waiting = state.filter(|s| s.unread.is_some() || s.sent.is_some());
        last = match (waiting, last) {
            (Some(s), Some((was, since, kicks))) if s == was => {
                // Output pending is always worth a kick (the driver enables the transmit
                // interrupt only while it has bytes to send); unread input only a few times.
                let allowed = s.sent.is_some() || kicks < CONSOLE_KICKS;
                if since.elapsed() >= CONSOLE_STALL && allowed {
                    log::debug!("COM1: the guest waits ({s:?}); raising its interrupt again");
                    machine.console_kick();
                    Some((s, std::time::Instant::now(), kicks + 1))
                } else {
                    Some((was, since, kicks))
                }
            }
            (Some(s), _) => Some((s, std::time::Instant::now(), 0)),
            (None, _) => None,
        };
        let busy = !pending.is_empty() || waiting.is_some();
        let wait_ms: libc::c_int = if busy { 5 } else { 100 };
        if !open {
            std::thread::sleep(Duration::from_millis(wait_ms as u64));
            continue;
        }
        let mut pfd = libc::pollfd {
            fd: libc::STDIN_FILENO,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, wait_ms) };
        if r <= 0 || pending.len() >= 4096 {
            continue;
        }
        match stdin.read(&mut buf) {
            Ok(0) => open = false,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("console input: {e}");
                open = false;
            }
        }
    }
}

/// How long COM1's driver may wait on its interrupt before it is raised again.
const CONSOLE_STALL: Duration = Duration::from_millis(50);
/// How many times, while nothing moves.
const CONSOLE_KICKS: u32 = 5;
