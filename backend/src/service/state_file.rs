//! `--state-file PATH`: the guest-visible state kept on disk so a restarted pcierc presents the
//! same hierarchy, byte for byte. Written after every request that changed something and before
//! its reply is sent (so an acknowledged write is never lost, even to SIGKILL), atomically: the
//! file goes to `PATH.tmp`, is fsync'ed, renamed over `PATH`, and the directory is fsync'ed.
//!
//! At start a file that is there must load whole ([`format`](mod@format): header, length and CRC-32, then
//! the state blob, which must match the topology): anything else (empty, truncated, a flipped
//! bit, another program's file, a newer version) is one [`StateFileError::Refused`] and pcierc
//! does not start, leaving the file as it is. Guest-visible state is never reset silently: only
//! `--state-reset` discards a file, with a warning that says what it held.

pub mod format;

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use log::{error, info, warn};
use thiserror::Error;

use super::stats::StateFileStats;

use crate::topology::{state, Hierarchy};
use format::FormatError;

/// Largest state file read (a state blob is at most 16 MiB, the `LoadState` limit).
pub const MAX_STATE_FILE: u64 = 64 << 20;

/// Why a state file cannot be loaded.
#[derive(Debug, Error)]
pub enum Unloadable {
    /// The file's framing or checksum is wrong, or it is not pcierc's.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The state inside does not fit this pcierc (another topology, a newer state version, ...).
    #[error("{0}")]
    State(#[source] Box<crate::Error>),
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

/// The state file and what it holds now.
pub struct StateFile {
    path: PathBuf,
    tmp: PathBuf,
    /// The blob last written (writes that change nothing are skipped).
    last: Vec<u8>,
    /// Writes and their latency, for `x-pcierc-query-stats`.
    stats: StateFileStats,
}

impl StateFile {
    /// Use `path`: if a file is there, load it into `h` (a file that does not load is
    /// [`StateFileError::Refused`], never overwritten), or with `reset` discard it (logged at
    /// warn); then make sure the file holds the current state.
    pub fn open(path: &Path, h: &mut Hierarchy, reset: bool) -> Result<Self, StateFileError> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let mut f = StateFile {
            path: path.to_path_buf(),
            tmp: PathBuf::from(tmp),
            last: Vec::new(),
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
            let legacy = load_bytes(h, &bytes).map_err(refused)?;
            if legacy {
                warn!(
                    "state file {}: written by an older pcierc without a checksum; loaded, and rewritten with one",
                    path.display()
                );
            } else {
                f.last = format::decode(&bytes)
                    .map(|d| d.blob.to_vec())
                    .unwrap_or_default();
            }
            info!("state restored from {}", path.display());
        }
        f.write(h).map_err(|source| StateFileError::Io {
            path: path.to_path_buf(),
            context: "writing",
            source,
        })?;
        Ok(f)
    }

    /// Persist `h` if it changed since the last write. Errors are logged: the guest keeps
    /// running, but a restart would lose what could not be written.
    pub fn persist(&mut self, h: &Hierarchy) {
        if let Err(e) = self.write(h) {
            error!("state file {}: {e}", self.path.display());
        }
    }

    /// Its writes so far (the one at start included, when it wrote).
    pub fn stats(&self) -> StateFileStats {
        self.stats
    }

    fn write(&mut self, h: &Hierarchy) -> std::io::Result<()> {
        let blob = state::save(h);
        if blob == self.last {
            return Ok(());
        }
        let start = std::time::Instant::now();
        let r = self.write_blob(&blob);
        self.stats.record(r.is_ok(), start.elapsed());
        r?;
        self.last = blob;
        Ok(())
    }

    fn write_blob(&self, blob: &[u8]) -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&self.tmp)?;
        f.write_all(&format::encode(blob))?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&self.tmp, &self.path)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
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

/// Check a state file's bytes and restore the state they hold into `h` (unchanged on error),
/// as [`StateFile::open`] does at start; whether they were a bare blob from before the header.
pub fn load_bytes(h: &mut Hierarchy, bytes: &[u8]) -> Result<bool, Unloadable> {
    let d = format::decode(bytes)?;
    state::load(h, d.blob).map_err(|e| Unloadable::State(Box::new(e)))?;
    Ok(d.legacy)
}
