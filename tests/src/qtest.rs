//! A driver for QEMU's qtest line protocol (`docs/devel/qtest.rst`): one command per line on the
//! child's stdin, one `OK`/`FAIL`/`ERR` line back per command on its stdout (asynchronous `IRQ`
//! lines are skipped). It drives any child that speaks the protocol: `qemu-system-x86_64 -qtest
//! stdio`, or `pcierc qtest --connect PATH`.

use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};

/// The QEMU binary the differential tests compare against.
pub const QEMU: &str = "qemu-system-x86_64";

/// Commands sent before their answers are read. Small enough that neither pipe fills up
/// (about 30 bytes per command and per answer against 64 KiB pipes).
const PIPELINE_DEPTH: usize = 1024;

/// A running qtest peer, killed on drop.
pub struct Qtest {
    child: Child,
    stdin: BufWriter<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    stderr: Arc<Mutex<String>>,
    name: String,
}

impl Qtest {
    /// Start `cmd` with piped stdin/stdout; its stderr is collected for error messages.
    pub fn spawn(mut cmd: Command) -> io::Result<Qtest> {
        let name = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (Some(stdin), Some(stdout), Some(mut err)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            return Err(io::Error::other("child without pipes"));
        };
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = err.read(&mut buf) {
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        Ok(Qtest {
            child,
            stdin: BufWriter::new(stdin),
            stdout: BufReader::new(stdout),
            stderr,
            name,
        })
    }

    /// What the child wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn closed(&self, line: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "{} closed the qtest stream at '{line}'; stderr:\n{}",
                self.name,
                self.stderr()
            ),
        )
    }

    fn answer(&mut self, line: &str) -> io::Result<String> {
        let mut r = String::new();
        loop {
            r.clear();
            if self.stdout.read_line(&mut r)? == 0 {
                return Err(self.closed(line));
            }
            if r.starts_with("OK") || r.starts_with("FAIL") || r.starts_with("ERR") {
                return Ok(r.trim_end().to_string());
            }
        }
    }

    /// Send one command and return its answer line (`OK ...`, `FAIL ...` or `ERR ...`).
    pub fn command(&mut self, line: &str) -> io::Result<String> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        self.answer(line)
    }

    /// Send many commands, pipelined, and return their answers in order.
    pub fn batch(&mut self, lines: &[String]) -> io::Result<Vec<String>> {
        let mut out = Vec::with_capacity(lines.len());
        for chunk in lines.chunks(PIPELINE_DEPTH) {
            for l in chunk {
                writeln!(self.stdin, "{l}")?;
            }
            self.stdin.flush()?;
            for l in chunk {
                out.push(self.answer(l)?);
            }
        }
        Ok(out)
    }

    /// Send one command that must answer `OK [value]`; returns the value (0 if none).
    pub fn value(&mut self, line: &str) -> io::Result<u64> {
        let r = self.command(line)?;
        parse_value(&r).ok_or_else(|| io::Error::other(format!("'{line}' answered '{r}'")))
    }

    /// `read{b,w,l,q}` of guest memory at `addr`.
    pub fn read(&mut self, addr: u64, width: u8) -> io::Result<u64> {
        self.value(&mem_read(addr, width))
    }

    /// `write{b,w,l,q}` of guest memory at `addr`.
    pub fn write(&mut self, addr: u64, width: u8, value: u64) -> io::Result<()> {
        self.value(&mem_write(addr, width, value)).map(|_| ())
    }

    /// `in{b,w,l}` of an I/O port.
    pub fn io_read(&mut self, port: u16, width: u8) -> io::Result<u32> {
        self.value(&io_read(port, width)).map(|v| v as u32)
    }

    /// `out{b,w,l}` to an I/O port.
    pub fn io_write(&mut self, port: u16, width: u8, value: u32) -> io::Result<()> {
        self.value(&io_write(port, width, value)).map(|_| ())
    }
}

impl Drop for Qtest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn suffix(width: u8) -> char {
    match width {
        1 => 'b',
        2 => 'w',
        8 => 'q',
        _ => 'l',
    }
}

/// The command reading `width` bytes of guest memory.
pub fn mem_read(addr: u64, width: u8) -> String {
    format!("read{} {addr:#x}", suffix(width))
}

/// The command writing `width` bytes of guest memory.
pub fn mem_write(addr: u64, width: u8, value: u64) -> String {
    format!("write{} {addr:#x} {value:#x}", suffix(width))
}

/// The command reading an I/O port (width 1, 2 or 4).
pub fn io_read(port: u16, width: u8) -> String {
    format!("in{} {port:#x}", suffix(width.min(4)))
}

/// The command writing an I/O port (width 1, 2 or 4).
pub fn io_write(port: u16, width: u8, value: u32) -> String {
    format!("out{} {port:#x} {value:#x}", suffix(width.min(4)))
}

/// The value of an `OK [0x...]` answer (0 when there is none); `None` for `FAIL`/`ERR`.
pub fn parse_value(answer: &str) -> Option<u64> {
    let mut parts = answer.split_whitespace();
    if parts.next() != Some("OK") {
        return None;
    }
    match parts.next() {
        None => Some(0),
        Some(v) => u64::from_str_radix(v.trim_start_matches("0x"), 16).ok(),
    }
}

/// Is `name` on `PATH`? When it is not and `PCIERC_REQUIRE_TOOLS` is set (CI), that is a test
/// failure; otherwise the caller skips, and this says so loudly.
fn require(name: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()));
    if !found {
        assert!(
            std::env::var_os("PCIERC_REQUIRE_TOOLS").is_none(),
            "{name} is required (PCIERC_REQUIRE_TOOLS is set) but not installed"
        );
        eprintln!("\n*** SKIP: {name} is not installed; this test did not run ***\n");
    }
    found
}

/// Where the tests look for QEMU 10.0 (`fixtures/qemu-10.0/install.sh` unpacks it there):
/// `$PCIERC_QEMU10_DIR`, else this directory. Its `run` wrapper sets the libraries, modules and
/// firmware paths.
pub const QEMU10_DIR: &str = "/opt/qemu-10.0";

/// A QEMU binary the differential tests can compare against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Qemu {
    /// `qemu-system-x86_64` on `PATH` (Debian bookworm's 7.2).
    System,
    /// QEMU 10.0 unpacked beside it: the path of its `run` wrapper.
    V10_0(std::path::PathBuf),
}

impl Qemu {
    /// QEMU 7.2 (`qemu-system-x86_64` on `PATH`), if installed. When it is not and
    /// `PCIERC_REQUIRE_TOOLS` is set (CI), that is a test failure; otherwise the caller skips,
    /// and this says so loudly.
    pub fn v7_2() -> Option<Qemu> {
        require(QEMU).then_some(Qemu::System)
    }

    /// QEMU 10.0, if unpacked (see [`QEMU10_DIR`]). When it is not and `PCIERC_REQUIRE_TOOLS` is
    /// set (CI), that is a test failure; otherwise the caller skips, and this says so loudly.
    pub fn v10_0() -> Option<Qemu> {
        let dir = std::env::var_os("PCIERC_QEMU10_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| QEMU10_DIR.into());
        let run = dir.join("run");
        if run.is_file() {
            return Some(Qemu::V10_0(run));
        }
        assert!(
            std::env::var_os("PCIERC_REQUIRE_TOOLS").is_none(),
            "QEMU 10.0 is required (PCIERC_REQUIRE_TOOLS is set) but {} is missing: run \
             fixtures/qemu-10.0/install.sh as root",
            run.display()
        );
        eprintln!(
            "\n*** SKIP: QEMU 10.0 is not unpacked at {} (fixtures/qemu-10.0/install.sh); this \
             test did not run ***\n",
            dir.display()
        );
        None
    }

    fn command(&self) -> Command {
        match self {
            Qemu::System => Command::new(QEMU),
            Qemu::V10_0(run) => Command::new(run),
        }
    }
}

/// QEMU 7.2's `q35` machine, stopped (`-S`), with one `-device` per entry of `root_ports`
/// (e.g. `pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1,addr=0x1c.0`). `None` only when
/// qemu-system-x86_64 is not installed; any other failure to start is a panic (a test failure).
pub fn qemu_q35(root_ports: &[&str]) -> Option<Qtest> {
    let args: Vec<&str> = root_ports.iter().flat_map(|d| ["-device", d]).collect();
    qemu_q35_with(&args)
}

/// [`qemu_q35`] with arbitrary extra arguments (`-device` options, `-qmp`, `-global`).
pub fn qemu_q35_with(extra: &[&str]) -> Option<Qtest> {
    if !require(QEMU) {
        return None;
    }
    Some(qemu_machine_with(&Qemu::System, "q35", extra))
}

/// `qemu`'s machine type `machine` (e.g. `pc-q35-10.0`), stopped, with `root_ports` as in
/// [`qemu_q35`]. A failure to start is a panic (a test failure).
pub fn qemu_machine(qemu: &Qemu, machine: &str, root_ports: &[&str]) -> Qtest {
    let args: Vec<&str> = root_ports.iter().flat_map(|d| ["-device", d]).collect();
    qemu_machine_with(qemu, machine, &args)
}

/// [`qemu_machine`] with arbitrary extra arguments.
pub fn qemu_machine_with(qemu: &Qemu, machine: &str, extra: &[&str]) -> Qtest {
    let mut cmd = qemu.command();
    cmd.args([
        "-M",
        machine,
        "-nodefaults",
        "-display",
        "none",
        "-qtest",
        "stdio",
        "-S",
    ]);
    cmd.args(extra);
    let mut q = match Qtest::spawn(cmd) {
        Ok(q) => q,
        Err(e) => panic!("starting {qemu:?}: {e}"),
    };
    match q.command("endianness") {
        Ok(r) if r.starts_with("OK") => q,
        Ok(r) => panic!(
            "{qemu:?} answered '{r}' to the handshake; stderr:\n{}",
            q.stderr()
        ),
        Err(e) => panic!("{qemu:?} did not start: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        assert_eq!(parse_value("OK"), Some(0));
        assert_eq!(parse_value("OK 0x0000000029c08086"), Some(0x29c0_8086));
        assert_eq!(parse_value("FAIL Unknown command 'x'"), None);
        assert_eq!(parse_value("ERR"), None);
        assert_eq!(mem_read(0xb000_0000, 4), "readl 0xb0000000");
        assert_eq!(mem_write(0x10, 8, 1), "writeq 0x10 0x1");
        assert_eq!(io_write(0xcf8, 4, 0x8000_0060), "outl 0xcf8 0x80000060");
        assert_eq!(io_read(0xcfe, 2), "inw 0xcfe");
    }

    #[test]
    fn drives_any_child_that_speaks_the_protocol() {
        // A shell stand-in: answers every line with OK and an IRQ line before some.
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "n=0; while read l; do n=$((n+1)); echo 'IRQ raise 1'; echo \"OK 0x$n\"; done",
        ]);
        let mut q = Qtest::spawn(cmd).unwrap();
        assert_eq!(q.value("readl 0x0").unwrap(), 1);
        let lines: Vec<String> = (0..3000).map(|i| format!("readb {i:#x}")).collect();
        let answers = q.batch(&lines).unwrap();
        assert_eq!(answers.len(), 3000);
        assert_eq!(answers[2999], "OK 0x3001");
    }
}
