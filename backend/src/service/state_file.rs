//! `--state-file PATH`: the guest-visible state kept on disk so a restarted pcierc presents the
//! same hierarchy, byte for byte. The file is a base (the state that differs from power-on) and
//! a journal of records appended after it, one per request that changed something (the
//! difference from the state before; [`format`](mod@format), [`patch`]).
//!
//! Durability, in this order (so an acknowledged write is never lost, even to SIGKILL or power
//! loss):
//! - a base is written whole to `PATH.tmp`, fsync'ed, renamed over `PATH`, and the directory is
//!   fsync'ed: at start, and when the journal has grown past [`StateFile::journal_bound`]
//!   (compaction); a crash in between leaves the old file whole;
//! - every other change is one record appended with one `write` and `fdatasync`'ed before the
//!   reply to the request that made it is sent. A crash during the append leaves a cut last
//!   record, which the next start drops with a warning (its write was never acknowledged).
//!
//! At start a file that is there must load whole (header, lengths and CRC-32s, then a state that
//! matches the topology): anything else (empty, truncated base, a flipped bit, a damaged record
//! that is not the last, another program's file, a newer version, another power-on state) is
//! one [`StateFileError::Refused`] and pcierc does not start, leaving the file as it is.
//! Guest-visible state is never reset silently: only `--state-reset` discards a file, with a
//! warning that says what it held. Files of version 1 (the whole state) and bare blobs still
//! load, and are rewritten as version 2.

pub mod format;
pub mod patch;

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use log::{error, info, warn};
use serde_json::Value;
use thiserror::Error;

use super::stats::StateFileStats;

use crate::topology::{state, Hierarchy};
use format::{Decoded, FormatError, TornTail};
use patch::PatchError;

/// Largest state file read (a state blob is at most 16 MiB, the `LoadState` limit).
pub const MAX_STATE_FILE: u64 = 64 << 20;
/// The journal may always grow to this many bytes before a compaction.
pub const MIN_JOURNAL_BOUND: u64 = 64 << 10;
/// ... and to this many times the base.
pub const JOURNAL_BASE_FACTOR: u64 = 4;

/// Why a state file cannot be loaded.
#[derive(Debug, Error)]
pub enum Unloadable {
    /// The file's framing or checksum is wrong, or it is not pcierc's.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The state inside does not fit this pcierc (another topology, a newer state version, ...).
    #[error("{0}")]
    State(#[source] Box<crate::Error>),
    /// The base was taken against another power-on state (another topology or another build's
    /// reset values), so the differences it holds do not apply here.
    #[error(
        "written against another power-on state (CRC-32 {file:08x}, this pcierc's is \
         {this:08x}: another topology or another build's reset values)"
    )]
    PowerOn {
        /// The file's.
        file: u32,
        /// This pcierc's.
        this: u32,
    },
    /// The base or a record is not a difference that applies to the state before it.
    #[error("{what} does not apply: {reason}")]
    Patch {
        /// "the base" or "record N".
        what: String,
        /// Why.
        reason: PatchError,
    },
    /// Not a regular file (a directory, a FIFO, a device).
    #[error("not a regular file")]
    NotAFile,
    /// Far larger than any state.
    #[error("{0} bytes, larger than any state ({MAX_STATE_FILE} bytes at most)")]
    TooLarge(u64),
}

/// Errors of the state file.
#[derive(Debug, Error)]
pub enum StateFileError {
    /// The file at start cannot be loaded; it is left as it is and pcierc does not start.
    #[error(
        "state file {}: {reason}; refusing to start from it (the file is left as it is): \
         repair or move it away, or give --state-reset to discard it and start from the \
         power-on state", path.display()
    )]
    Refused {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: Unloadable,
    },
    /// Reading or writing the file failed.
    #[error("state file {}: {context}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        context: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// What a file that loaded held.
#[derive(Debug, PartialEq, Eq)]
pub struct Loaded {
    /// The file version (0: a bare blob from before the header).
    pub version: u32,
    /// Records applied after the base (version 2).
    pub records: usize,
    /// A cut last record, dropped (its write was never acknowledged).
    pub torn: Option<TornTail>,
}

/// The state file and what it holds now.
pub struct StateFile {
    path: PathBuf,
    tmp: PathBuf,
    /// The file, positioned at its end for the next record; `None` after a failed append, so
    /// the next change writes a new base.
    file: Option<File>,
    /// The power-on state, which the base is the difference from.
    power_on: Value,
    /// Its CRC-32, in the base's header.
    power_on_crc: u32,
    /// The state the file holds.
    current: Value,
    /// Bytes of the base (header included) and of the records after it.
    base_len: u64,
    journal_len: u64,
    /// Writes and their latency, for `x-pcierc-query-stats`.
    stats: StateFileStats,
}

impl StateFile {
    /// Use `path` for `h`, which is at power-on: if a file is there, load it into `h` (a file
    /// that does not load is [`StateFileError::Refused`], never overwritten), or with `reset`
    /// discard it (logged at warn); then write a new base holding the current state.
    pub fn open(path: &Path, h: &mut Hierarchy, reset: bool) -> Result<Self, StateFileError> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let power_on = state::save_value(h);
        let power_on_crc = format::crc32(&to_bytes(&power_on));
        let mut f = StateFile {
            path: path.to_path_buf(),
            tmp: PathBuf::from(tmp),
            file: None,
            current: power_on.clone(),
            power_on,
            power_on_crc,
            base_len: 0,
            journal_len: 0,
            stats: StateFileStats::default(),
        };
        let existing = read(path);
        if reset {
            let held = match &existing {
                Ok(None) => None,
                Ok(Some(bytes)) => Some(match format::decode(bytes) {
                    Ok(_) => "it was intact".to_string(),
                    Err(e) => e.to_string(),
                }),
                Err(e) => Some(e.to_string()),
            };
            match held {
                Some(held) => warn!(
                    "state file {}: discarded as --state-reset asks ({held}); starting from the power-on state",
                    path.display()
                ),
                None => info!(
                    "state file {}: none to discard (--state-reset)",
                    path.display()
                ),
            }
        } else if let Some(bytes) = existing? {
            let refused = |reason| StateFileError::Refused {
                path: path.to_path_buf(),
                reason,
            };
            let loaded = load_bytes(h, &bytes).map_err(refused)?;
            if let Some(t) = &loaded.torn {
                warn!(
                    "state file {}: its last record ({} bytes at byte {}) is {}: a write cut by a \
                     crash or power loss, never acknowledged; dropped",
                    path.display(),
                    t.len,
                    t.offset,
                    t.what
                );
            }
            match loaded.version {
                0 => warn!(
                    "state file {}: written by an older pcierc without a checksum; loaded, and rewritten with one",
                    path.display()
                ),
                format::WHOLE_VERSION => info!(
                    "state file {}: version 1 (the whole state); loaded, and rewritten as version {}",
                    path.display(),
                    format::FILE_VERSION
                ),
                _ => {}
            }
            info!(
                "state restored from {} ({} records after its base)",
                path.display(),
                loaded.records
            );
        }
        let now = state::save_value(h);
        let start = std::time::Instant::now();
        let r = f.write_base(&now);
        f.stats.record(r.is_ok(), start.elapsed());
        r.map_err(|source| StateFileError::Io {
            path: path.to_path_buf(),
            context: "writing",
            source,
        })?;
        f.current = now;
        Ok(f)
    }

    /// Persist `h` if it changed since the last write: one record appended and `fdatasync`'ed,
    /// or a new base when the journal is past its bound. Errors are logged: the guest keeps
    /// running, but a restart would lose what could not be written.
    pub fn persist(&mut self, h: &Hierarchy) {
        let now = state::save_value(h);
        let Some(change) = patch::diff(&self.current, &now) else {
            return;
        };
        let start = std::time::Instant::now();
        let r = self.write(&now, &change);
        self.stats.record(r.is_ok(), start.elapsed());
        match r {
            Ok(()) => self.current = now,
            Err(e) => {
                // Whatever part of a record reached the file is cut off by the next base.
                self.file = None;
                error!("state file {}: {e}", self.path.display());
            }
        }
    }

    /// Its writes so far (the base at start included).
    pub fn stats(&self) -> StateFileStats {
        self.stats
    }

    /// Bytes of records after which the next change writes a new base instead: the larger of
    /// [`MIN_JOURNAL_BOUND`] and [`JOURNAL_BASE_FACTOR`] times the base.
    pub fn journal_bound(&self) -> u64 {
        MIN_JOURNAL_BOUND.max(JOURNAL_BASE_FACTOR * self.base_len)
    }

    fn write(&mut self, now: &Value, change: &Value) -> std::io::Result<()> {
        let record = format::encode_record(&to_bytes(change));
        let fits = self.journal_len + record.len() as u64 <= self.journal_bound();
        match &mut self.file {
            Some(file) if fits => {
                // One write, so a crash leaves at most this record cut, at the end.
                file.write_all(&record)?;
                file.sync_data()?;
                self.journal_len += record.len() as u64;
                Ok(())
            }
            _ => self.write_base(now),
        }
    }

    /// Replace the file, atomically, by a base holding `now` and no records.
    fn write_base(&mut self, now: &Value) -> std::io::Result<()> {
        self.file = None;
        let base = patch::diff(&self.power_on, now).unwrap_or_else(|| serde_json::json!({"obj": {}}));
        let bytes = format::encode_base(self.power_on_crc, &to_bytes(&base));
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&self.tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&self.tmp, &self.path)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        // The handle follows the file through the rename; records go after the base.
        self.file = Some(f);
        self.base_len = bytes.len() as u64;
        self.journal_len = 0;
        Ok(())
    }
}

/// A state or a patch serialized (in memory: cannot fail).
fn to_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// The file's bytes, `None` if there is no file; only regular files of plausible size are read.
fn read(path: &Path) -> Result<Option<Vec<u8>>, StateFileError> {
    let io = |context| {
        move |source| StateFileError::Io {
            path: path.to_path_buf(),
            context,
            source,
        }
    };
    let refused = |reason| StateFileError::Refused {
        path: path.to_path_buf(),
        reason,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("reading")(e)),
    };
    if !meta.is_file() {
        return Err(refused(Unloadable::NotAFile));
    }
    if meta.len() > MAX_STATE_FILE {
        return Err(refused(Unloadable::TooLarge(meta.len())));
    }
    std::fs::read(path).map(Some).map_err(io("reading"))
}

/// Check a state file's bytes and restore the state they hold into `h`, which must be at
/// power-on (a journal's base is the difference from it), as [`StateFile::open`] does at start;
/// `h` is unchanged on error.
pub fn load_bytes(h: &mut Hierarchy, bytes: &[u8]) -> Result<Loaded, Unloadable> {
    let state_err = |e| Unloadable::State(Box::new(e));
    match format::decode(bytes)? {
        Decoded::Whole { blob, legacy } => {
            state::load(h, blob).map_err(state_err)?;
            Ok(Loaded {
                version: if legacy { 0 } else { format::WHOLE_VERSION },
                records: 0,
                torn: None,
            })
        }
        Decoded::Journal(j) => {
            let mut value = state::save_value(h);
            let this = format::crc32(&to_bytes(&value));
            if j.power_on != this {
                return Err(Unloadable::PowerOn {
                    file: j.power_on,
                    this,
                });
            }
            let parts = std::iter::once(("the base".to_string(), j.base)).chain(
                j.records
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (format!("record {}", i + 1), *r)),
            );
            for (what, bytes) in parts {
                let p: Value = serde_json::from_slice(bytes).map_err(|e| Unloadable::Patch {
                    what: what.clone(),
                    reason: PatchError::Malformed(format!("not JSON: {e}")),
                })?;
                patch::apply(&mut value, &p).map_err(|reason| Unloadable::Patch { what, reason })?;
            }
            state::load(h, &to_bytes(&value)).map_err(state_err)?;
            Ok(Loaded {
                version: format::FILE_VERSION,
                records: j.records.len(),
                torn: j.torn,
            })
        }
    }
}
