//! The baseline of the socket figures: a raw blocking unix-socket round trip of exactly the bytes a
//! protocol request and its reply carry, with a peer that does nothing but echo.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pcierc_protocol::{ConfigAccess, GuestAccess, HEADER_SIZE};

use crate::backend::ScratchDir;
use crate::error::{Context, Error, Result};

/// Bytes of a `ConfigRead` or `ConfigWrite` request: header + `ConfigAccess`.
pub const CONFIG_REQUEST: usize = HEADER_SIZE + std::mem::size_of::<ConfigAccess>();
/// Bytes of a `ConfigRead` reply: header + `ConfigAccess`.
pub const CONFIG_READ_REPLY: usize = HEADER_SIZE + std::mem::size_of::<ConfigAccess>();
/// Bytes of a `ConfigWrite` reply: the header alone.
pub const CONFIG_WRITE_REPLY: usize = HEADER_SIZE;

/// Bytes of an `MmioRead`/`MmioWrite` (or `PioRead`/`PioWrite`) request: header + `GuestAccess`.
pub const GUEST_REQUEST: usize = HEADER_SIZE + std::mem::size_of::<GuestAccess>();
/// Bytes of an `MmioRead` reply: header + `GuestAccess`.
pub const GUEST_READ_REPLY: usize = HEADER_SIZE + std::mem::size_of::<GuestAccess>();
/// Bytes of an `MmioWrite` reply: the header alone.
pub const GUEST_WRITE_REPLY: usize = HEADER_SIZE;

/// How long the echo process may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A child process (this executable with `--echo-peer`) that answers every `request`-byte
/// message with `reply` bytes on a blocking unix stream socket. Killed on drop.
#[derive(Debug)]
pub struct EchoPeer {
    child: Child,
    stream: UnixStream,
    request: Vec<u8>,
    reply: Vec<u8>,
    _dir: ScratchDir,
}

impl EchoPeer {
    /// Start the echo process and connect to it.
    pub fn spawn(request: usize, reply: usize) -> Result<Self> {
        let dir = ScratchDir::new("echo")?;
        let path = dir.path().join("echo.sock");
        let listener = UnixListener::bind(&path).context(format!("binding {}", path.display()))?;
        listener
            .set_nonblocking(true)
            .context("making the echo listener non-blocking")?;
        let exe = std::env::current_exe().context("locating the pcierc-bench executable")?;
        let mut child = Command::new(exe)
            .arg("--echo-peer")
            .arg(&path)
            .arg("--echo-sizes")
            .arg(format!("{request},{reply}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning the echo process")?;
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e).context("accepting the echo process"),
            }
            if let Some(st) = child.try_wait().context("waiting for the echo process")? {
                return Err(Error::Other(format!("the echo process exited early: {st}")));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Other("the echo process did not connect".into()));
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        stream
            .set_nonblocking(false)
            .context("making the echo socket blocking")?;
        Ok(EchoPeer {
            child,
            stream,
            request: vec![0x5a; request],
            reply: vec![0; reply],
            _dir: dir,
        })
    }

    /// One round trip: send the request, wait for the whole reply.
    pub fn round_trip(&mut self) -> Result<()> {
        self.stream
            .write_all(&self.request)
            .context("sending to the echo process")?;
        self.stream
            .read_exact(&mut self.reply)
            .context("receiving from the echo process")
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        // Closing our end makes the peer's read return 0 and the peer exit.
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(10));
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The echo process's body: connect to `path`, then answer every `request`-byte message with
/// `reply` bytes until the other end closes.
pub fn serve_echo(path: &Path, request: usize, reply: usize) -> Result<()> {
    let mut s = UnixStream::connect(path).context(format!("connecting to {}", path.display()))?;
    let mut req = vec![0; request];
    let answer = vec![0xa5; reply];
    loop {
        match s.read_exact(&mut req) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e).context("echo: receiving"),
        }
        s.write_all(&answer).context("echo: sending")?;
    }
}

/// Parse `--echo-sizes REQUEST,REPLY`.
pub fn parse_sizes(s: &str) -> std::result::Result<(usize, usize), String> {
    let (a, b) = s
        .split_once(',')
        .ok_or_else(|| format!("'{s}' is not REQUEST,REPLY"))?;
    let n = |v: &str| {
        v.trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0 && n <= 1 << 20)
            .ok_or_else(|| format!("'{v}' is not a size from 1 to 1048576"))
    };
    Ok((n(a)?, n(b)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_protocol() {
        assert_eq!(
            (CONFIG_REQUEST, CONFIG_READ_REPLY, CONFIG_WRITE_REPLY),
            (40, 40, 24)
        );
        assert_eq!(
            (GUEST_REQUEST, GUEST_READ_REPLY, GUEST_WRITE_REPLY),
            (48, 48, 24)
        );
    }

    #[test]
    fn parse() {
        assert_eq!(parse_sizes("40,24"), Ok((40, 24)));
        assert!(parse_sizes("40").is_err());
        assert!(parse_sizes("0,1").is_err());
    }
}
