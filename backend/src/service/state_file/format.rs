//! The bytes of a state file: one header line that says what the file is, how long the state
//! after it is and its CRC-32, then the state blob itself (`topology::state`, JSON):
//!
//! ```text
//! pcierc-state-file 1 len=1234 crc32=89abcdef\n
//! {"format":"pcierc-state","version":1,...}
//! ```
//!
//! The header makes every way a file can be wrong a distinct, named error before anything is
//! parsed: empty, not pcierc's, a newer file version, cut short, too long, or changed (the
//! checksum catches every flipped bit and every burst of up to 32). Files written before the
//! header existed (the bare blob) still load.

use thiserror::Error;

/// The first word of every state file.
pub const MAGIC: &str = "pcierc-state-file";
/// The file version this build writes and reads.
pub const FILE_VERSION: u32 = 1;
/// Longest header line accepted (a real one is under 64 bytes).
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
    /// More bytes after the header than it announces.
    #[error("{extra} unexpected bytes after the {expected} bytes of state its header announces")]
    Trailing {
        /// Announced length.
        expected: u64,
        /// Bytes beyond it.
        extra: u64,
    },
    /// The state does not match its checksum.
    #[error("corrupted: the state's CRC-32 is {actual:08x}, its header says {expected:08x}")]
    Checksum {
        /// Checksum in the header.
        expected: u32,
        /// Checksum of the bytes present.
        actual: u32,
    },
}

/// What a file held.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// The state blob.
    pub blob: &'a [u8],
    /// The file is a bare blob from before the header existed (no checksum to check).
    pub legacy: bool,
}

/// The file contents for `blob`.
pub fn encode(blob: &[u8]) -> Vec<u8> {
    let mut out = header(blob.len() as u64, crc32(blob)).into_bytes();
    out.push(b'\n');
    out.extend_from_slice(blob);
    out
}

/// The header line (without its end of line).
fn header(len: u64, crc: u32) -> String {
    format!("{MAGIC} {FILE_VERSION} len={len} crc32={crc:08x}")
}

/// Check the file's framing and checksum; the blob inside is not parsed here, except to tell a
/// pre-header pcierc blob from another program's JSON.
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
    if version != u64::from(FILE_VERSION) {
        return Err(if version > u64::from(FILE_VERSION) {
            FormatError::NewerVersion(version)
        } else {
            FormatError::BadHeader(format!("version {version}"))
        });
    }
    let field = |w: Option<&str>, key: &str, radix: u32| {
        w.and_then(|w| w.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v, radix).ok())
            .ok_or_else(|| FormatError::BadHeader(format!("no {key} in '{line}'")))
    };
    let expected = field(words.next(), "len=", 10)?;
    let crc = field(words.next(), "crc32=", 16)?;
    let expected_crc =
        u32::try_from(crc).map_err(|_| FormatError::BadHeader(format!("crc32 in '{line}'")))?;
    // Exactly as written: no extra words, leading zeros or upper-case digits.
    if line != header(expected, expected_crc) {
        return Err(FormatError::BadHeader(format!(
            "'{line}' is not as pcierc writes it"
        )));
    }
    let present = body.len() as u64;
    if present < expected {
        return Err(FormatError::Truncated { expected, present });
    }
    if present > expected {
        return Err(FormatError::Trailing {
            expected,
            extra: present - expected,
        });
    }
    let actual = crc32(body);
    if actual != expected_crc {
        return Err(FormatError::Checksum {
            expected: expected_crc,
            actual,
        });
    }
    Ok(Decoded {
        blob: body,
        legacy: false,
    })
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
            Ok(Decoded {
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
mod tests {
    use super::*;

    const BLOB: &[u8] = br#"{"format":"pcierc-state","version":1,"x":[1,2,3]}"#;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn an_encoded_file_decodes_to_its_blob() {
        let file = encode(BLOB);
        let start = format!("pcierc-state-file 1 len={} crc32=", BLOB.len());
        assert!(file.starts_with(start.as_bytes()));
        assert_eq!(
            decode(&file),
            Ok(Decoded {
                blob: BLOB,
                legacy: false
            })
        );
    }

    #[test]
    fn every_single_bit_flip_and_every_truncation_is_refused() {
        let file = encode(BLOB);
        for i in 0..file.len() {
            for bit in 0..8 {
                let mut f = file.clone();
                f[i] ^= 1 << bit;
                assert!(decode(&f).is_err(), "bit {bit} of byte {i} flipped loaded");
            }
            assert!(decode(&file[..i]).is_err(), "cut to {i} bytes loaded");
        }
    }

    #[test]
    fn each_way_of_being_wrong_has_its_own_error() {
        let file = encode(BLOB);
        assert_eq!(decode(b""), Err(FormatError::Empty));
        assert!(matches!(
            decode(&file[..file.len() - 5]),
            Err(FormatError::Truncated { expected, present })
                if expected == BLOB.len() as u64 && present == expected - 5
        ));
        assert!(matches!(
            decode(&[&file[..], b"xx"].concat()),
            Err(FormatError::Trailing { extra: 2, .. })
        ));
        let mut flipped = file.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 0x04;
        assert!(matches!(
            decode(&flipped),
            Err(FormatError::Checksum { .. })
        ));
        let newer = String::from_utf8(file.clone())
            .unwrap()
            .replacen(" 1 ", " 7 ", 1);
        assert_eq!(decode(newer.as_bytes()), Err(FormatError::NewerVersion(7)));
        assert!(matches!(
            decode(br#"{"name":"my-app","version":"2.0"}"#),
            Err(FormatError::ForeignJson(_))
        ));
        assert!(matches!(
            decode(br#"{"format":"qemu-vmstate"}"#),
            Err(FormatError::ForeignJson(f)) if f == "\"qemu-vmstate\""
        ));
        assert!(matches!(
            decode(b"\x7fELF\x02\x01"),
            Err(FormatError::Foreign(_))
        ));
        assert!(matches!(
            decode(&BLOB[..20]),
            Err(FormatError::BadHeader(_))
        ));
    }

    #[test]
    fn a_bare_blob_from_before_the_header_still_loads() {
        assert_eq!(
            decode(BLOB),
            Ok(Decoded {
                blob: BLOB,
                legacy: true
            })
        );
    }
}
