//! Telling a service manager that the daemon is ready: systemd's `sd_notify` protocol
//! (`READY=1` as one datagram to the `AF_UNIX` socket named by `$NOTIFY_SOCKET`, abstract when
//! the name starts with `@`) and `--pidfile FILE` (written atomically once ready, removed at
//! exit). Used by `pcierc` and `pcierc-xen-shim`; `docs/service.md` describes both.

use std::ffi::OsString;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};

use log::{debug, warn};

use crate::{Error, Result};

/// The environment variable naming the service manager's notification socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// A service manager's notification socket (`$NOTIFY_SOCKET`).
///
/// The first notification connects a datagram socket to it, which later ones reuse: a process
/// that has since chrooted or changed its uid (`pcierc-xen-shim --chroot/--runas`) can still
/// send `STOPPING=1`, as the address was resolved and the permission checked at `connect()`.
#[derive(Debug)]
pub struct Notifier {
    addr: SocketAddr,
    name: OsString,
    connected: std::sync::Mutex<Option<UnixDatagram>>,
}

impl Notifier {
    /// The socket `$NOTIFY_SOCKET` names, if set. The variable is removed from the
    /// environment (as `sd_notify(unset_environment=1)` does) so no child process reuses it;
    /// call this before threads start. A name that is neither a path nor `@abstract` (e.g.
    /// systemd's `vsock:` form) is logged and ignored.
    pub fn from_env() -> Option<Notifier> {
        let name = std::env::var_os(NOTIFY_SOCKET)?;
        // Removing a variable is only unsound with other threads reading the environment;
        // callers run this at start-up, before any thread exists.
        std::env::remove_var(NOTIFY_SOCKET);
        match Notifier::new(name.clone()) {
            Ok(n) => Some(n),
            Err(e) => {
                warn!(
                    "{NOTIFY_SOCKET}={}: {e}; not notifying",
                    name.to_string_lossy()
                );
                None
            }
        }
    }

    /// The notification socket `name`: an absolute path, or `@name` for an abstract socket.
    pub fn new(name: OsString) -> io::Result<Notifier> {
        let bytes = name.as_bytes();
        let addr = match bytes.first() {
            Some(b'@') => abstract_addr(&bytes[1..])?,
            Some(b'/') => SocketAddr::from_pathname(Path::new(&name))?,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not an absolute path or an @abstract socket name",
                ))
            }
        };
        Ok(Notifier {
            addr,
            name,
            connected: std::sync::Mutex::new(None),
        })
    }

    /// Send one notification, e.g. `READY=1` or `STOPPING=1` (newline-separated assignments).
    pub fn notify(&self, state: &str) -> io::Result<()> {
        let mut connected = self
            .connected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The connected socket first; if it fails (the manager made a new socket), a new one.
        if let Some(sock) = connected.as_ref() {
            if sock.send(state.as_bytes()).is_ok() {
                debug!("{} <- {state}", self.name.to_string_lossy());
                return Ok(());
            }
        }
        let sock = UnixDatagram::unbound()?;
        sock.connect_addr(&self.addr)?;
        sock.send(state.as_bytes())?;
        *connected = Some(sock);
        debug!("{} <- {state}", self.name.to_string_lossy());
        Ok(())
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_addr(name: &[u8]) -> io::Result<SocketAddr> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

/// A pid file this process wrote; removed on drop if the path still names that file and it
/// still holds this process's pid (not one a later process put there: the pid is checked too,
/// since a freed inode number can come back for the next file).
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl PidFile {
    /// Write this process's pid (decimal, newline-terminated) to `path` atomically: to a new
    /// temporary file in the same directory, synced, then renamed over `path`. Readers see
    /// the old file or the complete new one, never a partial pid.
    pub fn write(path: &Path) -> Result<PidFile> {
        let err = |source: io::Error| Error::Io {
            context: format!("writing pid file {}", path.display()),
            source,
        };
        let name = path.file_name().ok_or_else(|| {
            err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a file name",
            ))
        })?;
        let mut tmp_name = OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let write = || -> io::Result<(u64, u64)> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&tmp)?;
            f.write_all(format!("{}\n", std::process::id()).as_bytes())?;
            f.sync_all()?;
            let meta = f.metadata()?;
            std::fs::rename(&tmp, path)?;
            Ok((meta.dev(), meta.ino()))
        };
        match write() {
            Ok((dev, ino)) => Ok(PidFile {
                path: path.to_path_buf(),
                dev,
                ino,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(err(e))
            }
        }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let ours = format!("{}\n", std::process::id());
        if std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino)
            && std::fs::read_to_string(&self.path).is_ok_and(|s| s == ours)
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// What a daemon does once it is ready, and undoes at exit: the pid file and the service
/// manager's notification.
#[derive(Debug, Default)]
pub struct Readiness {
    notifier: Option<Notifier>,
    pidfile_path: Option<PathBuf>,
    pidfile: Option<PidFile>,
    /// `READY=1` was sent (`STOPPING=1` only follows it).
    ready: bool,
}

impl Readiness {
    /// Notify `notifier` (if any) and write `pidfile` (if any) when ready.
    pub fn new(notifier: Option<Notifier>, pidfile: Option<PathBuf>) -> Readiness {
        Readiness {
            notifier,
            pidfile_path: pidfile,
            pidfile: None,
            ready: false,
        }
    }

    /// From `--pidfile` and `$NOTIFY_SOCKET` (read and removed from the environment now: call
    /// this at start-up, before threads start).
    pub fn from_env(pidfile: Option<PathBuf>) -> Readiness {
        Readiness::new(Notifier::from_env(), pidfile)
    }

    /// The daemon is ready: write the pid file (an error if it cannot be written: a manager
    /// waiting for it would wait forever), then send `READY=1` (a failed
    /// notification is logged; the manager then times the start out).
    pub fn ready(&mut self) -> Result<()> {
        if let Some(p) = &self.pidfile_path {
            self.pidfile = Some(PidFile::write(p)?);
        }
        self.notify("READY=1");
        self.ready = true;
        Ok(())
    }

    /// The daemon is stopping: `STOPPING=1` to the manager (if it was told `READY=1`). The
    /// pid file goes on drop.
    pub fn stopping(&self) {
        if self.ready {
            self.notify("STOPPING=1");
        }
    }

    fn notify(&self, state: &str) {
        if let Some(n) = &self.notifier {
            if let Err(e) = n.notify(state) {
                warn!("{NOTIFY_SOCKET} {}: {e}", n.name.to_string_lossy());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pcierc-notify-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn notifications_reach_path_and_abstract_sockets() {
        let d = scratch("sock");
        let path = d.join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        Notifier::new(path.clone().into_os_string())
            .unwrap()
            .notify("READY=1")
            .unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        let name = format!("pcierc-notify-test-{}", std::process::id());
        let addr = abstract_addr(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        Notifier::new(format!("@{name}").into())
            .unwrap()
            .notify("STOPPING=1")
            .unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");

        for bad in ["", "relative/path", "vsock:2:1234"] {
            assert!(Notifier::new(bad.into()).is_err(), "{bad:?}");
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn later_notifications_reach_the_socket_even_once_its_path_is_gone() {
        // As after pcierc-xen-shim's --chroot: the path no longer leads to the socket.
        let d = scratch("connected");
        let path = d.join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(path.clone().into_os_string()).unwrap();
        n.notify("READY=1").unwrap();
        std::fs::rename(&path, d.join("moved")).unwrap();
        n.notify("STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        for want in ["READY=1", "STOPPING=1"] {
            let k = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..k], want.as_bytes());
        }
        // A fresh notifier resolves the path, which is gone.
        assert!(Notifier::new(path.into_os_string())
            .unwrap()
            .notify("READY=1")
            .is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_pid_file_is_replaced_atomically_and_removed_only_if_still_ours() {
        let d = scratch("pid");
        let p = d.join("pcierc.pid");
        std::fs::write(&p, "999999\n").unwrap();
        let f = PidFile::write(&p).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            format!("{}\n", std::process::id())
        );
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o133,
            0,
            "not executable, not writable by others"
        );
        let names: Vec<_> = std::fs::read_dir(&d).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left");
        drop(f);
        assert!(!p.exists(), "removed at exit");

        let f = PidFile::write(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, "1\n").unwrap(); // another process's now
        drop(f);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "1\n");

        let e = PidFile::write(&d.join("missing-dir/x.pid")).unwrap_err();
        assert!(e.to_string().contains("missing-dir/x.pid"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
