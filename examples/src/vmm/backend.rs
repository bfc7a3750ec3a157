//! `--spawn-backend`: run a private `pcierc` on a temporary socket for the VMM's lifetime.

use std::os::fd::AsFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::Error;

/// How long pcierc gets to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The `pcierc` binary: next to this executable (a cargo target directory), else on `PATH`.
pub fn find_pcierc() -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("pcierc")))
        .filter(|p| p.is_file());
    beside.or_else(|| {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("pcierc"))
                .find(|p| p.is_file())
        })
    })
}

/// A `pcierc` child process, killed (and its socket directory removed) on drop. It also gets
/// SIGKILL if the VMM dies without dropping it (`PR_SET_PDEATHSIG`).
pub struct SpawnedBackend {
    child: Child,
    dir: PathBuf,
    /// The socket it serves.
    pub socket: PathBuf,
}

impl SpawnedBackend {
    /// Start `program --socket-path DIR/pcierc.sock ARGS...` and wait until it listens.
    pub fn start(program: &Path, args: &[String]) -> Result<SpawnedBackend, Error> {
        // The VMM's stdout is the guest's console: pcierc's banner goes to stderr.
        let stderr = std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Error::Spawn(format!("duplicating stderr: {e}")))?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let dir =
            std::env::temp_dir().join(format!("pcierc-vmm-{}-{nanos:08x}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::Spawn(format!("creating {}: {e}", dir.display())))?;
        let socket = dir.join("pcierc.sock");
        let mut cmd = Command::new(program);
        cmd.arg("--socket-path")
            .arg(&socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stderr));
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(Error::Spawn(format!("{}: {e}", program.display())));
            }
        };
        let mut b = SpawnedBackend { child, dir, socket };
        let deadline = Instant::now() + START_TIMEOUT;
        while std::os::unix::net::UnixStream::connect(&b.socket).is_err() {
            if let Ok(Some(st)) = b.child.try_wait() {
                return Err(Error::Spawn(format!(
                    "{} exited before listening: {st}",
                    program.display()
                )));
            }
            if Instant::now() > deadline {
                return Err(Error::Spawn(format!(
                    "{} did not listen on {} within {START_TIMEOUT:?}",
                    program.display(),
                    b.socket.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(b)
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for SpawnedBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
