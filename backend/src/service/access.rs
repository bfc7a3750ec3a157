//! Who may reach pcierc's sockets: socket files created with a restrictive mode and no window in
//! which they are wider, an existing file replaced only when it is a dead socket, and every
//! accepted peer checked with `SO_PEERCRED` against the allowed uids before a byte is read.
//! `docs/security.md` puts these defences in the threat model.

use std::fs::Permissions;
use std::io::{self, ErrorKind};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use super::throttle::REFUSALS;

use thiserror::Error;

type Result<T, E = SocketError> = std::result::Result<T, E>;

/// Why a socket file could not be created (`--socket-path`, `--control-socket`).
#[derive(Debug, Error)]
pub enum SocketError {
    /// Something other than a socket is at the path; it is left alone.
    #[error("creating socket {}: exists and is not a socket; not replacing it", path.display())]
    NotASocket {
        /// The socket path.
        path: PathBuf,
    },
    /// Another process listens on the socket at the path; it is left alone.
    #[error(
        "creating socket {}: another process is listening on it; not replacing it (stop that process or choose another path)",
        path.display()
    )]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Whether another process listens on the socket at the path cannot be told.
    #[error(
        "creating socket {}: cannot tell whether another process listens on it ({source}); not replacing it",
        path.display()
    )]
    Probe {
        /// The socket path.
        path: PathBuf,
        /// What connecting to it said.
        #[source]
        source: io::Error,
    },
    /// A file appeared at the path while the socket was being created; it is left alone.
    #[error(
        "creating socket {}: a file appeared there while the socket was being created; not replacing it",
        path.display()
    )]
    Appeared {
        /// The socket path.
        path: PathBuf,
    },
    /// No name for the private directory beside the path was free.
    #[error("creating socket {}: no free private directory name in {}", path.display(), dir.display())]
    NoPrivateDir {
        /// The socket path.
        path: PathBuf,
        /// The directory tried.
        dir: PathBuf,
    },
    /// A step of creating the socket failed.
    #[error("creating socket {}: {}{source}", path.display(), step.as_deref().map(|s| format!("{s}: ")).unwrap_or_default())]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The step, when it is not the placing of the file at the path itself.
        step: Option<String>,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// `SocketError::Io` for `path`, at `step` if given.
fn socket_io(path: &Path, step: Option<String>) -> impl FnOnce(io::Error) -> SocketError + '_ {
    move |source| SocketError::Io {
        path: path.to_path_buf(),
        step,
        source,
    }
}

/// Mode of the socket files when `--socket-mode` is not given: the owner only.
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;

/// Most frontends served at once when `--max-connections` is not given.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// A `--socket-mode` that is not an octal file mode of at most `0777`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not an octal file mode of at most 0777 (e.g. 0600, 0660)")]
pub struct SocketModeError(pub String);

/// Parse `--socket-mode`: octal digits (`0600`, `660`, `0o660`), at most `0777`.
pub fn parse_socket_mode(s: &str) -> std::result::Result<u32, SocketModeError> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    Some(digits)
        .filter(|d| !d.is_empty() && d.bytes().all(|b| (b'0'..=b'7').contains(&b)))
        .and_then(|d| u32::from_str_radix(d, 8).ok())
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| SocketModeError(s.to_string()))
}

/// Who may connect, and how many frontends at once: `--socket-mode`, `--allow-uid`,
/// `--max-connections`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessConfig {
    /// Permission bits of the socket files pcierc creates (`--socket-path`, `--control-socket`).
    pub socket_mode: u32,
    /// Which peers are served, on both sockets.
    pub policy: AccessPolicy,
    /// Most frontends served at once; more are closed at accept. (The control socket has its
    /// own fixed limit, `event_loop::MAX_CONTROL_CONNECTIONS`.)
    pub max_connections: usize,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            socket_mode: DEFAULT_SOCKET_MODE,
            policy: AccessPolicy::same_uid(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// The credentials the kernel recorded for a peer when it connected (`SO_PEERCRED`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PeerCred {
    /// The peer's process id.
    pub pid: i32,
    /// The peer's effective uid.
    pub uid: u32,
    /// The peer's effective gid.
    pub gid: u32,
}

impl PeerCred {
    /// The credentials of the process at the other end of `stream`.
    pub fn of(stream: &UnixStream) -> io::Result<PeerCred> {
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `cred`, which lives for the call.
        let r = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PeerCred {
            pid: cred.pid,
            uid: cred.uid,
            gid: cred.gid,
        })
    }
}

/// Which peers are served: their effective uid at connect time must be in the list. The default
/// is the uid pcierc runs as, and only it: root is not implied (root gets past the socket file's
/// mode anyway, so it must be named, `--allow-uid 0`, to be served).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessPolicy {
    allowed_uids: Vec<u32>,
}

impl AccessPolicy {
    /// Only the effective uid of this process.
    pub fn same_uid() -> Self {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        AccessPolicy {
            allowed_uids: vec![me],
        }
    }

    /// Exactly `uids` (the process's own uid is not added); [`AccessPolicy::same_uid`] if empty.
    pub fn uids(uids: impl IntoIterator<Item = u32>) -> Self {
        let mut allowed_uids: Vec<u32> = uids.into_iter().collect();
        if allowed_uids.is_empty() {
            return Self::same_uid();
        }
        allowed_uids.sort_unstable();
        allowed_uids.dedup();
        AccessPolicy { allowed_uids }
    }

    /// The uids served.
    pub fn allowed_uids(&self) -> &[u32] {
        &self.allowed_uids
    }

    /// Is a peer with these credentials served?
    pub fn allows(&self, cred: &PeerCred) -> bool {
        self.allowed_uids.contains(&cred.uid)
    }

    /// Decide on a just-accepted `what` ("frontend", "control client") before anything is read
    /// from it. A refusal is logged with the peer's pid and uid; the caller closes the stream.
    pub fn admit(&self, stream: &UnixStream, what: &str) -> Option<PeerCred> {
        match PeerCred::of(stream) {
            Ok(cred) if self.allows(&cred) => Some(cred),
            Ok(cred) => {
                REFUSALS.warn(|| {
                    format!(
                        "refusing a {what}: pid {} uid {} gid {} is not allowed (allowed uids: {:?}; see --allow-uid)",
                        cred.pid, cred.uid, cred.gid, self.allowed_uids
                    )
                });
                None
            }
            Err(e) => {
                REFUSALS.warn(|| {
                    format!("refusing a {what}: its credentials are unknown (SO_PEERCRED: {e})")
                });
                None
            }
        }
    }
}

/// What is at a socket path before pcierc creates its socket there.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Existing {
    Nothing,
    /// A socket nobody listens on (left by a process that was killed): replaced.
    DeadSocket,
}

/// Never replace a file that is not a socket (a typo must not delete someone's data), nor a
/// socket another process is listening on (a second pcierc must not steal the first one's
/// frontends): only a dead socket is replaced.
///
/// A process that can write to the directory can still swap the file between this check and
/// the replacement; it could delete or replace the file itself anyway, so this guards against
/// mistakes, not against the directory's writers.
fn check_existing(path: &Path) -> Result<Existing> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Existing::Nothing),
        Err(e) => return Err(socket_io(path, None)(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(SocketError::InUse {
            path: path.to_path_buf(),
        }),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => Ok(Existing::DeadSocket),
        Err(source) => Err(SocketError::Probe {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A directory only this process's uid can enter, beside the socket path (same filesystem, so
/// the socket can be linked or renamed into place); removed with what is left in it on drop.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn beside(path: &Path) -> Result<PrivateDir> {
        use std::os::unix::fs::DirBuilderExt;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        for n in 0..100 {
            let dir = parent.join(format!(".pcierc-{}-{n}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {
                    let d = PrivateDir(dir);
                    // The umask may have taken bits away; never added any.
                    std::fs::set_permissions(&d.0, Permissions::from_mode(0o700))
                        .map_err(socket_io(path, Some(d.0.display().to_string())))?;
                    return Ok(d);
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    let step = format!("creating a private directory in {}", parent.display());
                    return Err(socket_io(path, Some(step))(e));
                }
            }
        }
        Err(SocketError::NoPrivateDir {
            path: path.to_path_buf(),
            dir: parent.to_path_buf(),
        })
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0.join("s"));
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A socket file this process created; removed on drop if the path still names that socket
/// (not one a later process put there).
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino)
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Create a listening unix socket at `path` whose file has permission bits `mode` from the first
/// moment anyone can reach it.
///
/// How: bind in a fresh 0700 directory beside `path`, chmod the socket file there, then hard-link
/// it to `path` (which fails instead of replacing anything that appeared meanwhile) or, over a
/// dead socket, rename it (atomic: clients never find the path missing). Nobody but this uid
/// (and root) can connect while the mode is being set, since nobody else can enter the directory.
/// The alternatives are worse: a chmod after binding at `path` leaves a window in which other
/// users can connect (harmless only in a directory nobody else can enter, which pcierc cannot
/// assume of the path it is given); the umask is process-wide, so setting it to `!mode` around
/// `bind` changes the mode of files other threads create meanwhile, and loosens it for a mode
/// like 0660 (group-writable files); `fchmod` on the socket after `bind` or before `listen`
/// changes only the socket's own inode, not the file (checked on Linux 6.x); before `bind` it
/// happens to work on Linux, but `unix(7)` does not promise it.
///
/// The cost: the private directory's name makes the bound path up to 20 bytes longer than
/// `path`, within the 107 bytes a socket path may have. The socket's own address
/// (`getsockname`, `ss -x`) names the private directory.
pub fn create_listener(path: &Path, mode: u32) -> Result<(UnixListener, SocketFile)> {
    let existing = check_existing(path)?;
    let dir = PrivateDir::beside(path)?;
    let tmp = dir.0.join("s");
    let listener = UnixListener::bind(&tmp)
        .map_err(socket_io(path, Some(format!("binding {}", tmp.display()))))?;
    std::fs::set_permissions(&tmp, Permissions::from_mode(mode))
        .map_err(socket_io(path, Some(format!("chmod {}", tmp.display()))))?;
    let meta = std::fs::symlink_metadata(&tmp).map_err(socket_io(path, None))?;
    let placed = match existing {
        Existing::Nothing => std::fs::hard_link(&tmp, path).map_err(|e| match e.kind() {
            ErrorKind::AlreadyExists => SocketError::Appeared {
                path: path.to_path_buf(),
            },
            _ => socket_io(path, None)(e),
        }),
        Existing::DeadSocket => std::fs::rename(&tmp, path).map_err(socket_io(path, None)),
    };
    placed?;
    drop(dir);
    Ok((
        listener,
        SocketFile {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let d =
                std::env::temp_dir().join(format!("pcierc-access-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Scratch(d)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn mode_of(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn entries(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn socket_modes_parse_as_octal_up_to_0777() {
        assert_eq!(parse_socket_mode("0600"), Ok(0o600));
        assert_eq!(parse_socket_mode("660"), Ok(0o660));
        assert_eq!(parse_socket_mode("0o777"), Ok(0o777));
        assert_eq!(parse_socket_mode("0"), Ok(0));
        for bad in [
            "",
            "0o",
            "1777",
            "0800",
            "0x1ff",
            "rw-------",
            "-600",
            "+600",
            " 600",
            "99999999999999",
        ] {
            assert_eq!(
                parse_socket_mode(bad),
                Err(SocketModeError(bad.to_string())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_socket_gets_its_mode_in_place_and_the_private_directory_goes_away() {
        let d = Scratch::new("mode");
        let mut kept = Vec::new();
        for (name, mode) in [("a.sock", 0o600), ("b.sock", 0o660), ("c.sock", 0o777)] {
            let p = d.0.join(name);
            let (l, f) = create_listener(&p, mode).unwrap();
            assert_eq!(mode_of(&p), mode, "{name}");
            // The listener answers on the final path.
            let _c = UnixStream::connect(&p).unwrap();
            assert!(l.accept().is_ok());
            assert_eq!(f.path(), p);
            kept.push((l, f));
        }
        assert_eq!(entries(&d.0), ["a.sock", "b.sock", "c.sock"]);
        drop(kept);
        assert!(entries(&d.0).is_empty(), "socket files removed on drop");
    }

    #[test]
    fn a_dead_socket_is_replaced_a_live_one_and_other_files_are_not() {
        let d = Scratch::new("replace");
        let p = d.0.join("s.sock");
        // Dead: bound, then the listener closed (the file stays).
        drop(UnixListener::bind(&p).unwrap());
        let (_l, f) = create_listener(&p, 0o600).unwrap();
        assert_eq!(mode_of(&p), 0o600);
        // Live: refused, and the first owner keeps its file.
        let e = create_listener(&p, 0o600).unwrap_err();
        assert!(
            matches!(&e, SocketError::InUse { path } if path == &p),
            "{e:?}"
        );
        assert!(
            e.to_string().contains("another process is listening"),
            "{e}"
        );
        assert!(UnixStream::connect(&p).is_ok());
        drop(f);
        assert!(!p.exists(), "the owner removes its socket file on drop");
        // Not a socket: refused, untouched.
        std::fs::write(&p, b"data").unwrap();
        let e = create_listener(&p, 0o600).unwrap_err();
        assert!(
            matches!(&e, SocketError::NotASocket { path } if path == &p),
            "{e:?}"
        );
        assert_eq!(std::fs::read(&p).unwrap(), b"data");
        std::fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink("/nonexistent", &p).unwrap();
        assert!(
            create_listener(&p, 0o600).is_err(),
            "a symlink is not a socket"
        );
        assert_eq!(
            entries(&d.0),
            ["s.sock"],
            "no private directory left behind"
        );
    }

    #[test]
    fn a_socket_file_replaced_by_someone_else_is_not_removed_on_drop() {
        let d = Scratch::new("drop");
        let p = d.0.join("s.sock");
        let (l, f) = create_listener(&p, 0o600).unwrap();
        drop(l);
        // Another process replaces the (now dead) socket with its own.
        let (_l2, f2) = create_listener(&p, 0o600).unwrap();
        drop(f);
        assert!(UnixStream::connect(&p).is_ok(), "the newer socket survives");
        drop(f2);
        assert!(!p.exists());
    }

    #[test]
    fn peers_are_checked_by_effective_uid() {
        let (a, _b) = UnixStream::pair().unwrap();
        let me = PeerCred::of(&a).unwrap();
        // SAFETY: no preconditions.
        assert_eq!(me.uid, unsafe { libc::geteuid() });
        assert_eq!(me.pid, std::process::id() as i32);
        assert!(AccessPolicy::same_uid().admit(&a, "frontend").is_some());
        assert!(AccessPolicy::uids([]).allows(&me));
        let other = me.uid.wrapping_add(1);
        assert!(AccessPolicy::uids([other]).admit(&a, "frontend").is_none());
        assert!(AccessPolicy::uids([other, me.uid]).allows(&me));
        assert_eq!(AccessPolicy::uids([5, 3, 5]).allowed_uids(), [3, 5]);
    }
}
