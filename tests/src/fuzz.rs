//! Randomized robustness targets on stable Rust: each takes arbitrary bytes, drives a parser or
//! state machine that faces hostile input, and checks its invariants (a panic is a finding).
//! `pcierc-fuzz` (src/bin/pcierc-fuzz.rs) runs them for a count or a time and stores any input
//! that fails under `tests/fuzz-regressions/<target>/`; `tests/fuzz.rs` replays every stored
//! input and runs a short bounded pass of each target in the normal test suite.
//!
//! Targets:
//! - `decoder`: bytes on a socket into the backend's frame reader and [`Session`], dispatched to
//!   the real [`RootComplex`] (header validation, payload sizes, every request code);
//! - `config`: an access sequence on the whole hierarchy through CF8/CFC, ECAM and the MSI-X
//!   BARs (any width and offset): reads fit their width, identity registers never change;
//! - `qmp`: bytes into a QMP session whose commands run on the real [`RootComplex`]: every
//!   reply line is JSON;
//! - `qtest`: lines for `pcierc qtest` (QEMU's qtest protocol) against the real
//!   [`RootComplex`] served on a socket pair: one `OK`/`FAIL` line per line;
//! - `xen`: Xen ioreq slots as a hostile hypervisor page could hold them, through the shim's
//!   classification and PCI_CONFIG translation;
//! - `state_file`: a real state file (a journal: base and records, or the whole state of
//!   version 1) damaged as the input says (bits flipped, cut short, bytes spliced in, or
//!   replaced whole) through what `pcierc --state-file` does at start: a flipped bit or a cut
//!   loads only the state after some whole records (only a cut last record is dropped), a
//!   damaged version 1 file is refused, and a refused load leaves the hierarchy as it was.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use pcierc_backend::control::QmpSession;
use pcierc_backend::service::{state_file, RootComplex};
use pcierc_backend::topology::{Hierarchy, Segments, TopologySpec};
use pcierc_protocol::{ConnectionId, FrameReader, MessageKind, Session};
use pcierc_xen_shim::abi::ioreq::ioreq_t;
use pcierc_xen_shim::ioreq_service::classify;
use pcierc_xen_shim::pci_config::translate;

/// A fuzz target: `Err` describes a broken invariant; a panic is caught by [`run_one`].
pub type Target = fn(&[u8]) -> Result<(), String>;

/// Every target by name.
pub const TARGETS: &[(&str, Target)] = &[
    ("decoder", decoder),
    ("config", config),
    ("qmp", qmp),
    ("qtest", qtest),
    ("xen", xen),
    ("state_file", state_file),
];

/// Where failing inputs are kept (and replayed from).
pub fn regression_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz-regressions")
        .join(target)
}

/// Run `target` on `input`; a panic becomes an `Err` with its message.
pub fn run_one(target: Target, input: &[u8]) -> Result<(), String> {
    match catch_unwind(AssertUnwindSafe(|| target(input))) {
        Ok(r) => r,
        Err(p) => Err(p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())),
    }
}

/// A deterministic generator: random bytes mixed with fragments of valid input, so targets get
/// past their first checks.
pub struct Inputs {
    x: u64,
}

impl Inputs {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Inputs { x: seed | 1 }
    }

    fn next(&mut self) -> u64 {
        self.x ^= self.x << 13;
        self.x ^= self.x >> 7;
        self.x ^= self.x << 17;
        self.x
    }

    /// The next input for `target`.
    pub fn input(&mut self, target: &str) -> Vec<u8> {
        let len = (self.next() % 512) as usize;
        let mut v: Vec<u8> = (0..len).map(|_| self.next() as u8).collect();
        // Splice in a valid-looking prefix half the time.
        if self.next() & 1 == 0 {
            let seed: Vec<u8> = match target {
                "decoder" => {
                    let code = (self.next() % 24) as u32;
                    let size = (self.next() % 40) as u32;
                    let mut h = Vec::new();
                    h.extend_from_slice(&code.to_le_bytes());
                    h.extend_from_slice(&0u32.to_le_bytes());
                    h.extend_from_slice(&size.to_le_bytes());
                    h.extend_from_slice(&[0; 12]);
                    h
                }
                "qmp" => br#"{"execute":"qmp_capabilities"}{"execute":""#.to_vec(),
                // A damage kind (see `state_file`), then its parameters.
                "state_file" => vec![(self.next() % 8) as u8],
                "qtest" => {
                    let cmds: [&[u8]; 6] = [
                        b"outl 0xcf8 ",
                        b"inl 0xcfc",
                        b"readl 0xb0",
                        b"writew 0x",
                        b"inb ",
                        b"readq ",
                    ];
                    cmds[(self.next() % 6) as usize].to_vec()
                }
                _ => Vec::new(),
            };
            v.splice(0..0, seed);
        }
        v
    }
}

/// Save a failing input; returns its path.
pub fn save_regression(target: &str, input: &[u8]) -> std::io::Result<PathBuf> {
    let dir = regression_dir(target);
    std::fs::create_dir_all(&dir)?;
    let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    let path = dir.join(format!("{hash:016x}.bin"));
    std::fs::File::create(&path)?.write_all(input)?;
    Ok(path)
}

fn root_complex() -> RootComplex {
    let spec = TopologySpec::embedded_default().expect("embedded topology");
    RootComplex::new(Hierarchy::new(spec).expect("embedded hierarchy"))
}

/// Bytes from a peer: framed, validated, dispatched; every reply is well formed.
pub fn decoder(input: &[u8]) -> Result<(), String> {
    let (mut tx, rx) = UnixStream::pair().map_err(|e| e.to_string())?;
    rx.set_nonblocking(true).map_err(|e| e.to_string())?;
    tx.write_all(input).map_err(|e| e.to_string())?;
    drop(tx);
    let mut reader = FrameReader::new(MessageKind::Request);
    let mut session = Session::new(ConnectionId(1));
    let mut rc = root_complex();
    for _ in 0..input.len() + 1 {
        let msg = match reader.poll_message(&rx) {
            Ok(Some(m)) => m,
            Ok(None) | Err(_) => return Ok(()),
        };
        let request = msg.header.request;
        match session.handle(&mut rc, msg) {
            Ok(reply) => {
                if reply.header.request != request || !reply.header.is_reply() {
                    return Err(format!("reply {:?} to request {request}", reply.header));
                }
                if reply.header.payload_len() != reply.payload.len() {
                    return Err("reply size field differs from its payload".into());
                }
            }
            Err(e) if e.should_disconnect() => return Ok(()),
            Err(e) => return Err(format!("non-fatal error escaped the session: {e}")),
        }
    }
    Ok(())
}

/// An access sequence on the whole hierarchy; 10 bytes per access.
pub fn config(input: &[u8]) -> Result<(), String> {
    let mut h = Hierarchy::new(TopologySpec::embedded_default().map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    // ECAM on, so the sequence reaches every function.
    h.pio_write(0xcf8, 4, 0x8000_0060)
        .map_err(|e| format!("{e:?}"))?;
    h.pio_write(0xcfc, 4, 0xb000_0001)
        .map_err(|e| format!("{e:?}"))?;
    let ids: Vec<u32> = [0u8, 0x10, 0x11, 0x12, 0x13]
        .iter()
        .map(|&d| h.config_read(0, d, 0, 4).unwrap_or(0))
        .collect();
    for a in input.chunks(10) {
        let b = |i: usize| a.get(i).copied().unwrap_or(0);
        let width = [1u8, 2, 4, 8, 0, 3][usize::from(b(0)) % 6];
        let value = u64::from_le_bytes([b(1), b(2), b(3), b(4), b(5), b(6), b(7), b(8)]);
        let off = u64::from(b(2)) << 4 | u64::from(b(3));
        let (addr, kind) = match b(9) % 4 {
            0 => (0xcf8 + off % 8, "pio"),
            1 => (0xb000_0000 + (value >> 16) % (1 << 28), "ecam"),
            2 => (0xfe00_0000 + off % 0x2000, "bar"),
            _ => (off, "config"),
        };
        let write = b(0) & 0x80 != 0;
        let read = match kind {
            "pio" if write => h.pio_write(addr, width, value).map(|_| None),
            "pio" => h.pio_read(addr, width).map(Some),
            "config" => {
                let (bus, devfn) = (b(1) % 4, b(4));
                let off = (value % 4096) as u16;
                if write {
                    h.config_write(bus, devfn, off, width, value as u32)
                        .map(|_| None)
                } else {
                    h.config_read(bus, devfn, off, width)
                        .map(|v| Some(u64::from(v)))
                }
            }
            _ if write => h.mmio_write(addr, width, value).map(|_| None),
            _ => h.mmio_read(addr, width).map(Some),
        };
        if let Ok(Some(v)) = read {
            if width < 8 && v >> (8 * u32::from(width.min(7))) != 0 && width != 0 {
                return Err(format!(
                    "{kind} read {width} bytes at {addr:#x} gave {v:#x}"
                ));
            }
        }
    }
    let after: Vec<u32> = [0u8, 0x10, 0x11, 0x12, 0x13]
        .iter()
        .map(|&d| h.config_read(0, d, 0, 4).unwrap_or(0))
        .collect();
    if ids != after {
        return Err(format!("identity changed: {ids:x?} -> {after:x?}"));
    }
    Ok(())
}

/// Bytes from a control-socket client: every reply is one JSON value.
pub fn qmp(input: &[u8]) -> Result<(), String> {
    let mut rc = root_complex();
    let (mut s, _) = QmpSession::new();
    for chunk in input.chunks(7) {
        for line in s.input(&mut rc, chunk) {
            serde_json::from_str::<serde_json::Value>(&line)
                .map_err(|e| format!("reply is not JSON ({e}): {line}"))?;
        }
    }
    Ok(())
}

/// Lines from a qtest client: each gets exactly one answer, `OK...` or `FAIL...`.
pub fn qtest(input: &[u8]) -> Result<(), String> {
    use pcierc_backend::cli::qtest::Machine;
    use pcierc_protocol::{Connection, Frontend, FrontendOptions};
    let (a, b) = UnixStream::pair().map_err(|e| e.to_string())?;
    let server = std::thread::spawn(move || {
        let mut rc = root_complex();
        if let Ok(c) = Connection::new(b, ConnectionId(1)) {
            let _ = c.serve(&mut rc);
        }
    });
    let fe = Frontend::from_stream(a, FrontendOptions::tool("fuzz")).map_err(|e| e.to_string())?;
    let mut m = Machine::new(fe);
    let text = String::from_utf8_lossy(input);
    let mut result = Ok(());
    for line in text.lines().take(64) {
        let out = m.answer(line);
        if !(out.starts_with("OK") || out.starts_with("FAIL")) || out.contains('\n') {
            result = Err(format!("{line:?} answered {out:?}"));
            break;
        }
    }
    drop(m);
    server
        .join()
        .map_err(|_| "the backend thread panicked".to_string())?;
    result
}

/// An ioreq slot with arbitrary contents: classified, and PCI_CONFIG ones translated into
/// accesses that stay inside configuration space.
pub fn xen(input: &[u8]) -> Result<(), String> {
    for a in input.chunks(24) {
        let b = |i: usize| a.get(i).copied().unwrap_or(0);
        let q = |i: usize| u64::from_le_bytes(std::array::from_fn(|k| b(i + k)));
        let mut req = ioreq_t {
            addr: q(0),
            data: q(8),
            count: u32::from(b(16)) % 3,
            size: [1, 2, 4, 8, 0, 3, 16][usize::from(b(17)) % 7],
            ..Default::default()
        };
        req.bitfields = b(18);
        req.type_ = b(19) % 10;
        let _ = classify(&req);
        if let Ok(accesses) = translate(req.addr, req.size, req.data) {
            for acc in &accesses {
                if u32::from(acc.offset) + u32::from(acc.width) > 4096 {
                    return Err(format!("translated access leaves config space: {acc:?}"));
                }
            }
        }
    }
    Ok(())
}

/// State files as pcierc writes them, of a hierarchy a guest has programmed a little.
struct ValidStateFiles {
    /// Version 2: a base, then records.
    journal: Vec<u8>,
    /// Where each record of `journal` starts, and its end.
    bounds: Vec<usize>,
    /// `state::save` of a power-on hierarchy loaded from the journal's base and its first k
    /// records, for each k.
    states: Vec<Vec<u8>>,
    /// Version 1: the whole state.
    whole: Vec<u8>,
}

fn fresh_hierarchy() -> Hierarchy {
    let spec = TopologySpec::embedded_default().expect("embedded topology");
    Hierarchy::new(spec).expect("embedded hierarchy")
}

fn valid_state_files() -> &'static ValidStateFiles {
    use pcierc_backend::topology::state;
    use state_file::{format, patch};
    static FILES: std::sync::OnceLock<ValidStateFiles> = std::sync::OnceLock::new();
    FILES.get_or_init(|| {
        let mut h = fresh_hierarchy();
        let power_on = state::save_value(&h);
        let power_on_crc = format::crc32(&serde_json::to_vec(&power_on).expect("JSON"));
        let _ = h.pio_write(0xcf8, 4, 0x8000_0060);
        let _ = h.pio_write(0xcfc, 4, 0xb000_0001);
        let _ = h.mmio_write(0xb000_0000 + (0x10 << 12) + 0x18, 4, 0x0001_0100);
        let mut last = state::save_value(&h);
        let base = patch::diff(&power_on, &last).expect("a programmed hierarchy");
        let mut journal =
            format::encode_base(power_on_crc, &serde_json::to_vec(&base).expect("JSON"));
        let mut bounds = vec![journal.len()];
        for (off, v) in [(0x204, 0x1234_5678), (0x3c, 0x0b), (0x204, 0x5678)] {
            let _ = h.mmio_write(0xb000_0000 + (0x10 << 12) + off, 4, v);
            let now = state::save_value(&h);
            let change = patch::diff(&last, &now).expect("a change");
            journal.extend(format::encode_record(
                &serde_json::to_vec(&change).expect("JSON"),
            ));
            bounds.push(journal.len());
            last = now;
        }
        let states = bounds
            .iter()
            .map(|&end| {
                let mut h = Segments::from(fresh_hierarchy());
                state_file::load_bytes(&mut h, &journal[..end]).expect("a valid prefix");
                state::save_segments(&h)
            })
            .collect();
        ValidStateFiles {
            journal,
            bounds,
            states,
            whole: format::encode_whole(&state::save(&h)),
        }
    })
}

/// `state_file` target: byte 0 picks the file (bit 2: version 1, else the journal) and the
/// damage (bits 1-0; 0: flip one or two bits the following bytes name, 1: cut at an offset, 2:
/// splice the rest in at an offset, 3: the rest is the whole file).
pub fn state_file(input: &[u8]) -> Result<(), String> {
    use pcierc_backend::topology::state;
    let files = valid_state_files();
    let (&kind, rest) = input.split_first().unwrap_or((&3, &[]));
    let whole = kind & 4 != 0;
    let good: &[u8] = if whole { &files.whole } else { &files.journal };
    let at = |b: &[u8]| -> usize {
        let v = b
            .iter()
            .take(3)
            .fold(0usize, |v, &x| (v << 8) | usize::from(x));
        v % (good.len() + 1)
    };
    let damage = kind % 4;
    let file: Vec<u8> = match damage {
        0 => {
            // One or two single-bit flips: the damage most likely to leave valid JSON.
            let mut f = good.to_vec();
            for pair in rest.chunks(4).take(2) {
                let i = at(pair) % good.len();
                f[i] ^= 1 << (pair.get(3).copied().unwrap_or(0) % 8);
            }
            f
        }
        1 => good[..at(rest)].to_vec(),
        2 => {
            let i = at(rest);
            [&good[..i], rest.get(3..).unwrap_or(&[]), &good[i..]].concat()
        }
        _ => rest.to_vec(),
    };
    let mut h = Segments::from(fresh_hierarchy());
    let before = state::save_segments(&h);
    match state_file::load_bytes(&mut h, &file) {
        Ok(_) if damage < 2 && whole && file.as_slice() != good => {
            Err("a damaged version 1 state file was loaded".into())
        }
        Ok(loaded) if damage < 2 && !whole => {
            // Only whole records, the original ones: the state after some prefix of them.
            let expected = files.states.get(loaded.records);
            if expected != Some(&state::save_segments(&h)) {
                return Err(format!(
                    "a damaged journal loaded a state that is not the one after its first {} records",
                    loaded.records
                ));
            }
            let records = files.bounds.len() - 1;
            let cut_to = if damage == 1 { file.len() } else { good.len() };
            let whole_records = files.bounds.iter().filter(|&&b| b <= cut_to).count() - 1;
            // A flip may drop only the last record; a cut, only what it cut.
            let least = if damage == 0 && file.as_slice() != good {
                records - 1
            } else {
                whole_records
            };
            if loaded.records < least {
                return Err(format!(
                    "{} of {records} records loaded from a file with {whole_records} whole ones",
                    loaded.records
                ));
            }
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(_) if state::save_segments(&h) != before => {
            Err("a refused state file changed the hierarchy".into())
        }
        Err(_) => Ok(()),
    }
}
