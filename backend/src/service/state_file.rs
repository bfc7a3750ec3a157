//! `--state-file PATH`: the guest-visible state kept on disk so a restarted pcierc presents the
//! same hierarchy, byte for byte. Written after every request that changed something and before
//! its reply is sent (so an acknowledged write is never lost, even to SIGKILL), atomically: the
//! blob goes to `PATH.tmp`, is fsync'ed, renamed over `PATH`, and the directory is fsync'ed.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use log::{error, info};

use super::stats::StateFileStats;

use crate::topology::{state, Hierarchy};
use crate::{Error, Result};

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
    /// Use `path`: if it exists, load it into `h` (a file that does not load is an error, never
    /// overwritten); then make sure it holds the current state.
    pub fn open(path: &Path, h: &mut Hierarchy) -> Result<Self> {
        let io = |context: String| move |source| Error::Io { context, source };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let mut f = StateFile {
            path: path.to_path_buf(),
            tmp: PathBuf::from(tmp),
            last: Vec::new(),
            stats: StateFileStats::default(),
        };
        match std::fs::read(path) {
            Ok(bytes) => {
                state::load(h, &bytes).map_err(|e| {
                    Error::State(format!(
                        "{}: {e} (move it away to start from the power-on state)",
                        path.display()
                    ))
                })?;
                info!("state restored from {}", path.display());
                f.last = bytes;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("reading {}", path.display()))(e)),
        }
        f.write(h)
            .map_err(io(format!("writing {}", path.display())))?;
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
        f.write_all(blob)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&self.tmp, &self.path)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}
