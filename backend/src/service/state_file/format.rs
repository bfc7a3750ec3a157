//! The bytes of a state file. Version 2 (written since the journal) is a base, the state
//! that differs from power-on, followed by records, each the difference from the state before
//! it (both [`patch`](super::patch)es of the `topology::state` JSON):
//!
//! ```text
//! pcierc-state-file 2 len=57 crc32=89abcdef power-on=01234567 check=fedcba98\n
//! {"obj":{"config_address":{"set":2147483744},...}}\n
//! record len=40 crc32=76543210 check=0badf00d\n
//! {"obj":{"functions":{"arr":[[1,...]]}}}\n
//! record len=...
//! ```
//!
//! `power-on` is the CRC-32 of the power-on state the base was taken against: a file loads only
//! into a pcierc with the same power-on state (same topology, same reset values). `check` is the
//! CRC-32 of the header line before ` check=`. Each record has its own length, CRC-32 and
//! `check`, so a damaged length is never mistaken for a short write. A record a crash or power loss cut
//! (the write never acknowledged) can only be the last one: it is reported as [`TornTail`] and
//! dropped; any other damage, in the base or in a record followed by another, is an error.
//!
//! Version 1 (the whole state blob after the header, nothing after it) and files written before
//! the header (the bare blob) still load.
//!
//! The header makes every way a file can be wrong a distinct, named error before anything is
//! parsed: empty, not pcierc's, a newer file version, cut short, too long, or changed (the
//! checksum catches every flipped bit and every burst of up to 32).

use thiserror::Error;

/// The first word of every state file.
pub const MAGIC: &str = "pcierc-state-file";
/// The file version this build writes (a base and a journal of records).
pub const FILE_VERSION: u32 = 2;
/// The file version with the whole state and no journal, written before version 2; still read.
pub const WHOLE_VERSION: u32 = 1;
/// The first word of every record's header line.
pub const RECORD: &str = "record";
/// Longest header line accepted (a real one is under 80 bytes).
const MAX_HEADER: usize = 128;

/// Why the bytes of a state file are not a state this build can load.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FormatError {
    /// Nothing in the file.
    #[error("the file is empty (0 bytes)")]
    Empty,
    /// Neither a state file nor a bare state blob.
    #[error("not a pcierc state file (it starts with {0})")]
    Foreign(String),
    /// JSON that is not a pcierc state blob (another program's file).
    #[error("JSON that is not a pcierc state (format {0})")]
    ForeignJson(String),
    /// A version of the file format this build does not know.
    #[error("state file version {0} is newer than this pcierc reads (version {FILE_VERSION})")]
    NewerVersion(u64),
    /// The header line is incomplete or malformed.
    #[error("its header line is damaged ({0})")]
    BadHeader(String),
    /// Fewer bytes after the header than it announces.
    #[error("truncated: {present} of the {expected} bytes of state its header announces")]
    Truncated {
        /// Announced length.
        expected: u64,
        /// Bytes present.
        present: u64,
    },
    /// More bytes after the header than it announces (version 1).
    #[error("{extra} unexpected bytes after the {expected} bytes of state its header announces")]
    Trailing {
        /// Announced length.
        expected: u64,
        /// Bytes beyond it.
        extra: u64,
    },
    /// The state (version 1) or the base (version 2) does not match its checksum.
    #[error("corrupted: the state's CRC-32 is {actual:08x}, its header says {expected:08x}")]
    Checksum {
        /// Checksum in the header.
        expected: u32,
        /// Checksum of the bytes present.
        actual: u32,
    },
    /// The base is not followed by the end of line that closes it (version 2).
    #[error("corrupted: no end of line after the {0} bytes of its base")]
    BaseEnd(u64),
    /// A record that is not the last one is damaged (version 2).
    #[error(
        "corrupted: record {index} (at byte {offset}) is damaged ({what}) and is not the last one"
    )]
    Record {
        /// The record's number, from 1.
        index: usize,
        /// Where it starts in the file.
        offset: u64,
        /// What is wrong.
        what: String,
    },
}

/// A last record a crash or power loss cut short: its write was never acknowledged.
#[derive(Debug, PartialEq, Eq)]
pub struct TornTail {
    /// Where it starts in the file.
    pub offset: u64,
    /// Its bytes present, up to the end of the file.
    pub len: u64,
    /// What is wrong with it.
    pub what: String,
}

/// A version 2 file: the base and the records after it.
#[derive(Debug, PartialEq, Eq)]
pub struct Journal<'a> {
    /// CRC-32 of the power-on state the base is the difference from.
    pub power_on: u32,
    /// The base (a patch of the power-on state).
    pub base: &'a [u8],
    /// The records in order (each a patch of the state before it).
    pub records: Vec<&'a [u8]>,
    /// A cut last record, dropped.
    pub torn: Option<TornTail>,
}

/// What a file held.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// The whole state blob: a version 1 file, or a bare blob from before the header existed
    /// (`legacy`: no checksum to check).
    Whole {
        /// The state blob.
        blob: &'a [u8],
        /// A bare blob.
        legacy: bool,
    },
    /// A version 2 file.
    Journal(Journal<'a>),
}

/// A version 1 file holding the whole `blob` (written before the journal; kept to write test
/// files and seeds of the old format).
pub fn encode_whole(blob: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "{MAGIC} {WHOLE_VERSION} len={} crc32={:08x}",
        blob.len(),
        crc32(blob)
    )
    .into_bytes();
    out.push(b'\n');
    out.extend_from_slice(blob);
    out
}

/// The start of a version 2 file: header and `base` (taken against the power-on state whose
/// CRC-32 is `power_on`), with no records yet.
pub fn encode_base(power_on: u32, base: &[u8]) -> Vec<u8> {
    let mut out = base_header(base.len() as u64, crc32(base), power_on).into_bytes();
    out.push(b'\n');
    out.extend_from_slice(base);
    out.push(b'\n');
    out
}

/// One record, as appended to a version 2 file.
pub fn encode_record(payload: &[u8]) -> Vec<u8> {
    let mut out = record_header(payload.len() as u64, crc32(payload)).into_bytes();
    out.push(b'\n');
    out.extend_from_slice(payload);
    out.push(b'\n');
    out
}

fn base_header(len: u64, crc: u32, power_on: u32) -> String {
    let head = format!("{MAGIC} {FILE_VERSION} len={len} crc32={crc:08x} power-on={power_on:08x}");
    let check = crc32(head.as_bytes());
    format!("{head} check={check:08x}")
}

fn record_header(len: u64, crc: u32) -> String {
    let head = format!("{RECORD} len={len} crc32={crc:08x}");
    let check = crc32(head.as_bytes());
    format!("{head} check={check:08x}")
}

/// The `key=` field of a header line, as a number in `radix`.
fn field(w: Option<&str>, key: &str, radix: u32) -> Option<u64> {
    w.and_then(|w| w.strip_prefix(key))
        .and_then(|v| u64::from_str_radix(v, radix).ok())
}

fn crc_field(w: Option<&str>, key: &str) -> Option<u32> {
    field(w, key, 16).and_then(|v| u32::try_from(v).ok())
}

/// Check the file's framing and checksums; the state inside is not parsed here, except to tell
/// a pre-header pcierc blob from another program's JSON.
pub fn decode(bytes: &[u8]) -> Result<Decoded<'_>, FormatError> {
    if bytes.is_empty() {
        return Err(FormatError::Empty);
    }
    if MAGIC.as_bytes().starts_with(bytes) {
        return Err(FormatError::BadHeader("cut short within it".into()));
    }
    if !bytes.starts_with(MAGIC.as_bytes()) {
        return legacy(bytes);
    }
    let Some(nl) = bytes.iter().take(MAX_HEADER).position(|&b| b == b'\n') else {
        return Err(FormatError::BadHeader("no end of line".into()));
    };
    let line =
        std::str::from_utf8(&bytes[..nl]).map_err(|_| FormatError::BadHeader("not text".into()))?;
    let body = &bytes[nl + 1..];
    let mut words = line.split(' ');
    words.next(); // MAGIC
    let version: u64 = words
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| FormatError::BadHeader(format!("no version in '{line}'")))?;
    if version > u64::from(FILE_VERSION) {
        return Err(FormatError::NewerVersion(version));
    }
    if version != u64::from(FILE_VERSION) && version != u64::from(WHOLE_VERSION) {
        return Err(FormatError::BadHeader(format!("version {version}")));
    }
    let bad = |key: &str| FormatError::BadHeader(format!("no {key} in '{line}'"));
    let expected = field(words.next(), "len=", 10).ok_or_else(|| bad("len="))?;
    let expected_crc = crc_field(words.next(), "crc32=").ok_or_else(|| bad("crc32="))?;
    let power_on = if version == u64::from(FILE_VERSION) {
        Some(crc_field(words.next(), "power-on=").ok_or_else(|| bad("power-on="))?)
    } else {
        None
    };
    // Exactly as written: no extra words, leading zeros or upper-case digits.
    let written = match power_on {
        Some(p) => base_header(expected, expected_crc, p),
        None => encode_whole_header(expected, expected_crc),
    };
    if line != written {
        return Err(FormatError::BadHeader(format!(
            "'{line}' is not as pcierc writes it"
        )));
    }
    let present = body.len() as u64;
    if present < expected {
        return Err(FormatError::Truncated { expected, present });
    }
    // `expected <= present`, a length in memory.
    let (state, after) = body.split_at(expected as usize);
    if power_on.is_none() && !after.is_empty() {
        return Err(FormatError::Trailing {
            expected,
            extra: after.len() as u64,
        });
    }
    let actual = crc32(state);
    if actual != expected_crc {
        return Err(FormatError::Checksum {
            expected: expected_crc,
            actual,
        });
    }
    let Some(power_on) = power_on else {
        return Ok(Decoded::Whole {
            blob: state,
            legacy: false,
        });
    };
    if after.first() != Some(&b'\n') {
        return Err(FormatError::BaseEnd(expected));
    }
    let start = bytes.len() - after.len() + 1;
    let (records, torn) = records(bytes, start)?;
    Ok(Decoded::Journal(Journal {
        power_on,
        base: state,
        records,
        torn,
    }))
}

fn encode_whole_header(len: u64, crc: u32) -> String {
    format!("{MAGIC} {WHOLE_VERSION} len={len} crc32={crc:08x}")
}

/// What is at one record's place.
enum Next<'a> {
    /// A sound record, and where the next one starts.
    Record(&'a [u8], usize),
    /// Damage that can only be a cut last write if nothing follows; `end`: where the damaged
    /// record ends, when its header could be read.
    Damaged { what: String, end: Option<usize> },
}

/// The records of `bytes` from `start` on.
fn records(bytes: &[u8], mut start: usize) -> Result<(Vec<&[u8]>, Option<TornTail>), FormatError> {
    let mut out = Vec::new();
    while start < bytes.len() {
        let rest = &bytes[start..];
        let (what, end) = match record(rest) {
            Next::Record(payload, len) => {
                out.push(payload);
                start += len;
                continue;
            }
            Next::Damaged { what, end } => (what, end),
        };
        // A cut write leaves a prefix of a record (the file ends inside it), bytes of zeros
        // (a size extended before the data reached the disk), or a whole-sized record whose
        // bytes did not all reach the disk; never damage with something after it.
        let last = match end {
            Some(end) => end >= rest.len(),
            None => {
                (rest.len() < MAX_HEADER && !rest.contains(&b'\n')) || rest.iter().all(|&b| b == 0)
            }
        };
        if !last {
            return Err(FormatError::Record {
                index: out.len() + 1,
                offset: start as u64,
                what,
            });
        }
        return Ok((
            out,
            Some(TornTail {
                offset: start as u64,
                len: rest.len() as u64,
                what,
            }),
        ));
    }
    Ok((out, None))
}

/// The record at the start of `rest` (not empty).
fn record(rest: &[u8]) -> Next<'_> {
    let damaged = |what: &str, end| Next::Damaged {
        what: what.to_string(),
        end,
    };
    if rest.iter().all(|&b| b == 0) {
        return damaged("zeros", None);
    }
    let Some(nl) = rest.iter().take(MAX_HEADER).position(|&b| b == b'\n') else {
        return damaged("its header line has no end", None);
    };
    let Ok(line) = std::str::from_utf8(&rest[..nl]) else {
        return damaged("its header line is not text", None);
    };
    let mut words = line.split(' ');
    let ok = words.next() == Some(RECORD);
    let len = field(words.next(), "len=", 10);
    let crc = crc_field(words.next(), "crc32=");
    let (Some(len), Some(crc), true) = (len, crc, ok) else {
        return damaged("its header line is malformed", None);
    };
    if line != record_header(len, crc) {
        return damaged("its header line fails its check", None);
    }
    // The payload and its closing end of line; a length past the file is a cut write.
    let end = usize::try_from(len)
        .ok()
        .and_then(|l| (nl + 1).checked_add(l)?.checked_add(1));
    let Some(end) = end.filter(|&e| e <= rest.len()) else {
        return damaged("cut short", Some(usize::MAX));
    };
    let payload = &rest[nl + 1..end - 1];
    if rest[end - 1] != b'\n' {
        return damaged("no end of line after it", Some(end));
    }
    let actual = crc32(payload);
    if actual != crc {
        return damaged(
            &format!("its CRC-32 is {actual:08x}, its header says {crc:08x}"),
            Some(end),
        );
    }
    Next::Record(payload, end)
}

/// A file without the header: only a pcierc state blob (as files were written before the
/// header) is accepted, and only if it parses whole.
fn legacy(bytes: &[u8]) -> Result<Decoded<'_>, FormatError> {
    #[derive(serde::Deserialize)]
    struct Probe {
        format: Option<serde_json::Value>,
    }
    let start = first_bytes(bytes);
    let value: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) if bytes.trim_ascii_start().starts_with(b"{") => {
            return Err(FormatError::BadHeader(format!(
                "no header, and not a whole JSON document: {e}"
            )))
        }
        Err(_) => return Err(FormatError::Foreign(start)),
    };
    let format = serde_json::from_value::<Probe>(value)
        .ok()
        .and_then(|p| p.format);
    match format {
        Some(serde_json::Value::String(f)) if f == crate::topology::state::STATE_FORMAT => {
            Ok(Decoded::Whole {
                blob: bytes,
                legacy: true,
            })
        }
        Some(other) => Err(FormatError::ForeignJson(other.to_string())),
        None => Err(FormatError::ForeignJson("missing".into())),
    }
}

/// The file's first bytes, quoted for an error message.
fn first_bytes(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(16)];
    format!("{:?}", String::from_utf8_lossy(head))
}

/// CRC-32 (IEEE 802.3, as zlib and `cksum -a crc32b` compute it).
pub fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    !bytes
        .iter()
        .fold(!0u32, |c, &b| TABLE[usize::from((c as u8) ^ b)] ^ (c >> 8))
}

#[cfg(test)]
mod tests;
