//! `pcierc qtest`: QEMU's qtest line protocol on stdin/stdout, each access performed through the
//! socket protocol, so the same qtest scripts run against QEMU and against pcierc.
//!
//! Supported: `inb/inw/inl PORT`, `outb/outw/outl PORT VALUE`, `readb/readw/readl/readq ADDR`,
//! `writeb/writew/writel/writeq ADDR VALUE`, answered in QEMU's format (`OK 0x%04x` for port
//! reads, `OK 0x%016x` for memory reads, `OK` for writes). Anything else gets `FAIL ...` and the
//! session goes on (QEMU asserts on malformed numbers; we do not).
//!
//! Like a VMM, the tool plays the rest of the machine for what pcierc does not own: unclaimed
//! ports float high, unclaimed memory reads zero, and ICH9's Reset Control register at 0xCF9
//! (ICH9 datasheet §13.7.5, as QEMU's `ich9_rst_cnt_write`) keeps bits 1 and 3 and turns a write
//! with bit 2 (RST_CPU) into a platform reset of the hierarchy (`Reset` request).

use std::io::{BufRead, Write};
use std::path::Path;

use pcierc_protocol::{Frontend, FrontendOptions, Status};

use crate::{Error, Result};

/// What the platform answers for an access no emulator claims, as QEMU's q35 does: unassigned
/// I/O ports float high, unassigned memory reads as zero.
fn unclaimed(is_pio: bool, width: u8) -> u64 {
    if is_pio {
        if width >= 8 {
            u64::MAX
        } else {
            (1u64 << (8 * u32::from(width))) - 1
        }
    } else {
        0
    }
}

/// Parse a number as QEMU's qtest does (`strtoull` base 0: decimal, 0x hex, 0 octal).
fn number(s: &str) -> Option<u64> {
    crate::topology::addr::parse_uint(s).ok()
}

/// ICH9 Reset Control register port.
const RST_CNT: u64 = 0xcf9;

/// The machine around the backend as one qtest session sees it.
pub struct Machine {
    fe: Frontend,
    rst_cnt: u8,
}

impl Machine {
    /// A machine whose root complex is reached through `fe`.
    pub fn new(fe: Frontend) -> Self {
        Machine { fe, rst_cnt: 0 }
    }

    /// One qtest line -> one response line (without the newline).
    pub fn answer(&mut self, line: &str) -> String {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let (Some(&cmd), Some(port)) = (words.first(), words.get(1).and_then(|w| number(w))) {
            if port == RST_CNT && cmd == "inb" && words.len() == 2 {
                return format!("OK 0x{:04x}", self.rst_cnt);
            }
            if port == RST_CNT && cmd == "outb" && words.len() == 3 {
                let Some(v) = number(words[2]) else {
                    return format!("FAIL bad value '{}'", words[2]);
                };
                self.rst_cnt = (v & 0xa) as u8;
                if v & 4 != 0 {
                    self.rst_cnt = 0;
                    if let Err(e) = self.fe.reset() {
                        return format!("FAIL reset: {e}");
                    }
                }
                return "OK".into();
            }
        }
        answer(&mut self.fe, line)
    }
}

/// One qtest line -> one response line (without the newline), everything through `fe`.
pub fn answer(fe: &mut Frontend, line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some(&cmd) = words.first() else {
        return "FAIL empty command".into();
    };
    let (is_pio, is_read, width) = match cmd {
        "inb" => (true, true, 1),
        "inw" => (true, true, 2),
        "inl" => (true, true, 4),
        "outb" => (true, false, 1),
        "outw" => (true, false, 2),
        "outl" => (true, false, 4),
        "readb" => (false, true, 1),
        "readw" => (false, true, 2),
        "readl" => (false, true, 4),
        "readq" => (false, true, 8),
        "writeb" => (false, false, 1),
        "writew" => (false, false, 2),
        "writel" => (false, false, 4),
        "writeq" => (false, false, 8),
        "endianness" if words.len() == 1 => return "OK little".into(),
        other => return format!("FAIL Unknown command '{other}'"),
    };
    let want = if is_read { 2 } else { 3 };
    if words.len() != want {
        return format!("FAIL {cmd} takes {} argument(s)", want - 1);
    }
    let Some(addr) = number(words[1]) else {
        return format!("FAIL bad address '{}'", words[1]);
    };
    if is_pio && addr > 0xffff {
        return format!("FAIL port {addr:#x} out of range");
    }
    let mask = unclaimed(true, width);
    if is_read {
        let r = if is_pio {
            fe.pio_read(addr, width)
        } else {
            fe.mmio_read(addr, width)
        };
        let v = match r {
            Ok(v) => v,
            Err(e) if matches!(e.status(), Some(Status::NoDevice | Status::Remote)) => {
                unclaimed(is_pio, width)
            }
            Err(e) => return format!("FAIL {e}"),
        };
        if is_pio {
            format!("OK 0x{:04x}", v & mask)
        } else {
            format!("OK 0x{:016x}", v & mask)
        }
    } else {
        let Some(value) = number(words[2]) else {
            return format!("FAIL bad value '{}'", words[2]);
        };
        let r = if is_pio {
            fe.pio_write(addr, width, value & mask)
        } else {
            fe.mmio_write(addr, width, value & mask)
        };
        match r {
            Ok(()) => "OK".into(),
            Err(e) if matches!(e.status(), Some(Status::NoDevice | Status::Remote)) => "OK".into(),
            Err(e) => format!("FAIL {e}"),
        }
    }
}

/// Serve qtest lines from `input` until EOF.
pub fn run(path: &Path, input: impl BufRead, mut output: impl Write) -> Result<()> {
    let fe = Frontend::connect(path, FrontendOptions::tool("pcierc-qtest")).map_err(|source| {
        Error::Connect {
            path: path.to_path_buf(),
            source,
        }
    })?;
    let mut machine = Machine::new(fe);
    let io = |source| Error::Io {
        context: "qtest stdio".into(),
        source,
    };
    for line in input.lines() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        let reply = machine.answer(&line);
        writeln!(output, "{reply}").map_err(io)?;
        output.flush().map_err(io)?;
    }
    Ok(())
}
