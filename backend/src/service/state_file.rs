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

use crate::devices::MachineType;
use crate::pci::port::SAVED_VALUES_PATH;
use crate::topology::{state, FunctionChange, SavedModels, Segments};
use format::{Decoded, FormatError, TornTail};
use patch::PatchError;
use pcierc_config_space::config_space::hex;

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
    /// The base was taken against the power-on state of this topology under another machine
    /// type (docs/qemu-compat.md, "Machine types").
    #[error("state was saved under machine type {saved}, this pcierc runs {running}")]
    Machine {
        /// The machine type whose power-on state the file's matches.
        saved: MachineType,
        /// The running machine type.
        running: MachineType,
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
    /// The state the file holds (or, after a failed write, the one the next base will hold).
    current: Value,
    /// The function models `current` was saved from.
    models: Vec<SavedModels>,
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
    pub fn open(path: &Path, h: &mut Segments, reset: bool) -> Result<Self, StateFileError> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let power_on = state::save_value_segments(h);
        let power_on_crc = format::crc32(&to_bytes(&power_on));
        let mut f = StateFile {
            path: path.to_path_buf(),
            tmp: PathBuf::from(tmp),
            file: None,
            current: power_on.clone(),
            models: Vec::new(),
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
        f.current = state::save_value_segments(h);
        h.save_changed_functions(&mut f.models, patch::RUN_GAP / 2);
        let start = std::time::Instant::now();
        let r = f.write_base();
        f.stats.record(r.is_ok(), start.elapsed());
        r.map_err(|source| StateFileError::Io {
            path: path.to_path_buf(),
            context: "writing",
            source,
        })?;
        Ok(f)
    }

    /// Persist `h` if it changed since the last write: one record appended and `fdatasync`'ed,
    /// or a new base when the journal is past its bound (or a write failed before). Errors are
    /// logged: the guest keeps running, but a restart would lose what could not be written.
    pub fn persist(&mut self, h: &Segments) {
        let change = self.update(h);
        if change.is_none() && self.file.is_some() {
            return;
        }
        let start = std::time::Instant::now();
        let r = match change {
            Some(c) => self.write(&c),
            None => self.write_base(),
        };
        self.stats.record(r.is_ok(), start.elapsed());
        if let Err(e) = r {
            // The next call writes a new base holding `current`, which also cuts off whatever
            // part of a record reached the file.
            self.file = None;
            error!("state file {}: {e}", self.path.display());
        }
    }

    /// Bring `current` up to date with `h` and return the patch from the old one, `None` if
    /// nothing changed. Only the functions whose model changed are serialized and compared.
    fn update(&mut self, h: &Segments) -> Option<Value> {
        let top = state::save_value_without_functions(h);
        let changed = h.save_changed_functions(&mut self.models, patch::RUN_GAP / 2);
        let mut patch = serde_json::Map::new();
        let (Value::Object(top), Value::Object(cur)) = (top, &mut self.current) else {
            // Both are serialized structs: objects.
            return None;
        };
        for (k, v) in top {
            if k == "functions" {
                continue;
            }
            let p = match cur.get(&k) {
                Some(old) => patch::diff(old, &v),
                None => Some(serde_json::json!({ "set": v })),
            };
            if let Some(p) = p {
                patch.insert(k.clone(), p);
                cur.insert(k, v);
            }
        }
        let mut items = Vec::new();
        if let Some(Value::Array(functions)) = cur.get_mut("functions") {
            for (i, change) in changed {
                let Some(slot) = functions.get_mut(i).and_then(|f| f.get_mut("state")) else {
                    continue;
                };
                let p = match change {
                    FunctionChange::State(new) => {
                        let p = patch::diff(slot, &new);
                        *slot = new;
                        p
                    }
                    FunctionChange::Values(runs) => {
                        let p = values_patch(&runs);
                        if let Some(p) = &p {
                            if let Err(e) = patch::apply(slot, p) {
                                // Cannot happen (the state is the same model's save); if it
                                // did, `current` is taken whole again and written as a base.
                                error!("state file: register patch of function {i}: {e}");
                                self.file = None;
                                self.current = state::save_value_segments(h);
                                return None;
                            }
                        }
                        p
                    }
                };
                if let Some(p) = p {
                    items.push(serde_json::json!([i, { "obj": { "state": p } }]));
                }
            }
        }
        if !items.is_empty() {
            patch.insert("functions".into(), serde_json::json!({ "arr": items }));
        }
        (!patch.is_empty()).then(|| serde_json::json!({ "obj": patch }))
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

    fn write(&mut self, change: &Value) -> std::io::Result<()> {
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
            _ => self.write_base(),
        }
    }

    /// Replace the file, atomically, by a base holding `current` and no records.
    fn write_base(&mut self) -> std::io::Result<()> {
        self.file = None;
        let base = patch::diff(&self.power_on, &self.current)
            .unwrap_or_else(|| serde_json::json!({"obj": {}}));
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

/// The patch of a function's state for register values that changed (offset, new bytes):
/// runs of the hex string at [`SAVED_VALUES_PATH`], as [`patch::diff`] of the two states
/// would give them; `None` if there are none.
fn values_patch(runs: &[(usize, &[u8])]) -> Option<Value> {
    if runs.is_empty() {
        return None;
    }
    let runs: Vec<Value> = runs
        .iter()
        .map(|&(at, bytes)| serde_json::json!([2 * at, hex(bytes)]))
        .collect();
    let mut p = serde_json::json!({ "str": runs });
    for key in SAVED_VALUES_PATH.iter().rev() {
        p = serde_json::json!({ "obj": { *key: p } });
    }
    Some(p)
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

/// If `power_on` (a journal's power-on CRC) is this topology's power-on state under another
/// machine type, the error that names it: the base holds only what differs from power-on, so
/// the machine type itself is not in the file.
fn other_machine(h: &Segments, power_on: u32) -> Option<Unloadable> {
    let running = h.primary().spec().machine;
    MachineType::ALL
        .into_iter()
        .filter(|&m| m != running)
        .find(|&m| {
            let mut spec = h.declared().clone();
            spec.machine = m;
            Segments::new(spec).is_ok_and(|other| {
                format::crc32(&to_bytes(&state::save_value_segments(&other))) == power_on
            })
        })
        .map(|saved| Unloadable::Machine { saved, running })
}

/// Check a state file's bytes and restore the state they hold into `h`, which must be at
/// power-on (a journal's base is the difference from it), as [`StateFile::open`] does at start;
/// `h` is unchanged on error.
pub fn load_bytes(h: &mut Segments, bytes: &[u8]) -> Result<Loaded, Unloadable> {
    let state_err = |e| Unloadable::State(Box::new(e));
    match format::decode(bytes)? {
        Decoded::Whole { blob, legacy } => {
            state::load_segments(h, blob).map_err(state_err)?;
            Ok(Loaded {
                version: if legacy { 0 } else { format::WHOLE_VERSION },
                records: 0,
                torn: None,
            })
        }
        Decoded::Journal(j) => {
            let mut value = state::save_value_segments(h);
            let this = format::crc32(&to_bytes(&value));
            if j.power_on != this {
                return Err(other_machine(h, j.power_on).unwrap_or(Unloadable::PowerOn {
                    file: j.power_on,
                    this,
                }));
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
                patch::apply(&mut value, &p)
                    .map_err(|reason| Unloadable::Patch { what, reason })?;
            }
            state::load_segments(h, &to_bytes(&value)).map_err(state_err)?;
            Ok(Loaded {
                version: format::FILE_VERSION,
                records: j.records.len(),
                torn: j.torn,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::TopologySpec;

    const RP1_ECAM: u64 = 0xb000_0000 + (0x10 << 12);

    fn hierarchy() -> Segments {
        Segments::new(TopologySpec::embedded_default().expect("topology")).expect("hierarchy")
    }

    /// Map ECAM at 0xb0000000 (PCIEXBAR through CF8/CFC).
    fn enable_ecam(h: &mut Segments) {
        let h = h.primary_mut();
        let _ = h.pio_write(0xcf8, 4, 0x8000_0060);
        let _ = h.pio_write(0xcfc, 4, 0xb000_0001);
    }

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pcierc-unit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    }

    #[test]
    fn each_change_is_one_record_and_the_file_reloads_to_the_same_state() {
        let dir = scratch("journal");
        let path = dir.join("s.state");
        let mut h = hierarchy();
        let mut f = StateFile::open(&path, &mut h, false).expect("open");
        let base = std::fs::metadata(&path).expect("written").len();
        enable_ecam(&mut h);
        f.persist(&h);
        for (off, v) in [(0x18, 0x0001_0100), (0x200, 7), (0x3c, 0x0b), (0x200, 8)] {
            let _ = h.mmio_write(RP1_ECAM + off, 4, v);
            f.persist(&h);
            // Incremental: the state kept equals a whole save.
            assert_eq!(f.current, state::save_value_segments(&h));
        }
        // A request that changes nothing writes nothing.
        f.persist(&h);
        let bytes = std::fs::read(&path).expect("file");
        let Ok(Decoded::Journal(j)) = format::decode(&bytes) else {
            panic!("not a journal");
        };
        assert_eq!(
            j.records.len(),
            5,
            "one per persisted change (CF8+CFC, four writes)"
        );
        assert!(bytes.len() as u64 - base < 2000, "records are small");
        assert_eq!(f.stats().writes, 6, "the base and five records");
        let mut again = hierarchy();
        let loaded = load_bytes(&mut again, &bytes).expect("loads");
        assert_eq!(loaded.records, 5);
        assert_eq!(again.save_functions(), h.save_functions());
        assert_eq!(
            again.primary().config_address(),
            h.primary().config_address()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_register_write_is_recorded_from_the_bytes_it_changed() {
        let dir = scratch("values");
        let path = dir.join("s.state");
        let mut h = hierarchy();
        let mut f = StateFile::open(&path, &mut h, false).expect("open");
        enable_ecam(&mut h);
        f.persist(&h);
        let mut copy = Vec::<SavedModels>::new();
        let _ = h.save_changed_functions(&mut copy, patch::RUN_GAP / 2);
        let _ = h.mmio_write(RP1_ECAM + 0x200, 4, 0x1234_5678);
        // The hierarchy gives rp1's changed bytes, not its state.
        let changed = h.save_changed_functions(&mut copy, patch::RUN_GAP / 2);
        assert_eq!(
            changed,
            vec![(
                1,
                FunctionChange::Values(vec![(0x200, &[0x78, 0x56, 0x34, 0x12][..])])
            )]
        );
        f.persist(&h);
        assert_eq!(f.current, state::save_value_segments(&h));
        let bytes = std::fs::read(&path).expect("file");
        let Ok(Decoded::Journal(j)) = format::decode(&bytes) else {
            panic!("not a journal");
        };
        let last: Value = serde_json::from_slice(j.records[j.records.len() - 1]).expect("JSON");
        assert_eq!(
            last,
            serde_json::json!({"obj": {"functions": {"arr": [[1, {"obj": {"state": {"obj":
                {"port": {"obj": {"space": {"obj": {"value":
                    {"str": [[0x400, "78563412"]]}}}}}}}}}]]}}})
        );
        let mut again = hierarchy();
        load_bytes(&mut again, &bytes).expect("loads");
        assert_eq!(again.save_functions(), h.save_functions());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn past_its_bound_the_journal_becomes_a_new_base() {
        let dir = scratch("compact");
        let path = dir.join("s.state");
        let mut h = hierarchy();
        let mut f = StateFile::open(&path, &mut h, false).expect("open");
        enable_ecam(&mut h);
        let mut compacted = false;
        for i in 0..2000u64 {
            let _ = h.mmio_write(RP1_ECAM + 0x200, 4, i);
            let before = f.journal_len;
            f.persist(&h);
            compacted |= f.journal_len < before;
            assert!(f.journal_len <= f.journal_bound());
        }
        // The first write (0) leaves the dword as it was: nothing to write.
        assert_eq!(
            f.stats().writes,
            2001,
            "the first base, CF8+CFC, 1999 writes"
        );
        assert!(compacted, "a compaction in 2000 writes");
        let bytes = std::fs::read(&path).expect("file");
        assert!(bytes.len() as u64 <= f.base_len + f.journal_bound());
        let mut again = hierarchy();
        load_bytes(&mut again, &bytes).expect("loads");
        assert_eq!(again.save_functions(), h.save_functions());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_journal_of_another_power_on_state_is_refused() {
        let dir = scratch("power-on");
        let path = dir.join("s.state");
        let mut h = hierarchy();
        let mut f = StateFile::open(&path, &mut h, false).expect("open");
        enable_ecam(&mut h);
        f.persist(&h);
        let bytes = std::fs::read(&path).expect("file");
        let mut other = Segments::new(TopologySpec::empty()).expect("MCH alone");
        assert!(matches!(
            load_bytes(&mut other, &bytes),
            Err(Unloadable::PowerOn { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
