//! Giving up root once the Xen devices are open: `--chroot DIR` and `--runas USER|UID[:GID]`,
//! as QEMU's `-chroot` and `-runas` (libxl's `dm_restrict`) do for a device model.
//!
//! Order, as in QEMU's `os_setup_post()`: `chroot(DIR)` and `chdir("/")` while still root,
//! then the groups (`setgroups` to the one group, then `setresgid`) and last the user
//! (`setresuid`): once the uid is not 0 the groups could no longer be changed. Afterwards the
//! shim checks that every uid and gid is the one asked for and that `setuid(0)` fails, and
//! refuses to go on otherwise. What stays usable are the descriptors opened before: the
//! restricted `/dev/xen/privcmd` (dm_ops for the one domain only), `/dev/xen/evtchn`, the
//! mapped ioreq page and pcierc's connection.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use log::{info, warn};

/// Why privileges cannot be dropped as asked.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// `--runas` is not `USER`, `UID` or `UID:GID`.
    #[error("--runas {0:?}: expected USER, UID or UID:GID")]
    BadRunas(String),
    /// `--runas` names no user (or a uid without a passwd entry and no `:GID`).
    #[error("--runas {0}: no such user in the passwd database (give UID:GID)")]
    NoUser(String),
    /// `--runas` would keep root's uid or gid.
    #[error("--runas {0}: uid or gid 0 would keep root's privileges")]
    Root(String),
    /// `--chroot` is not a directory.
    #[error("--chroot {}: {source}", path.display())]
    ChrootDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        source: io::Error,
    },
    /// A system call failed.
    #[error("dropping privileges: {call}: {source}")]
    Sys {
        /// The call.
        call: &'static str,
        /// Its error.
        source: io::Error,
    },
    /// The ids after the drop are not those asked for, or root can be regained.
    #[error("dropping privileges: {0}; refusing to go on")]
    StillPrivileged(String),
}

/// The user and group to run as (`--runas`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunAs {
    /// User id.
    pub uid: libc::uid_t,
    /// Group id (the only group kept: supplementary groups are dropped).
    pub gid: libc::gid_t,
}

impl RunAs {
    /// Parse `USER` (its passwd entry's uid and group), `UID` (likewise, by uid) or `UID:GID`.
    /// Neither may be 0. Looked up now, before any chroot hides the passwd database.
    pub fn parse(spec: &str) -> Result<RunAs, PrivilegeError> {
        let bad = || PrivilegeError::BadRunas(spec.to_string());
        let r = match spec.split_once(':') {
            Some((u, g)) => RunAs {
                uid: u.parse().map_err(|_| bad())?,
                gid: g.parse().map_err(|_| bad())?,
            },
            None if spec.is_empty() => return Err(bad()),
            None => {
                let by_uid = spec.parse::<libc::uid_t>().ok();
                passwd_entry(spec, by_uid).ok_or_else(|| PrivilegeError::NoUser(spec.into()))?
            }
        };
        if r.uid == 0 || r.gid == 0 {
            return Err(PrivilegeError::Root(spec.into()));
        }
        Ok(r)
    }
}

/// The passwd entry for `name` (or for uid `uid` when given) as a [`RunAs`].
fn passwd_entry(name: &str, uid: Option<libc::uid_t>) -> Option<RunAs> {
    let cname = CString::new(name).ok()?;
    // SAFETY: passwd is plain data; zeroed is a valid value the call overwrites.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives it and its length is given;
    // the strings `pw` points into live in `buf`, which we do not read after it is dropped.
    let rc = unsafe {
        match uid {
            Some(u) => libc::getpwuid_r(u, &mut pw, buf.as_mut_ptr(), buf.len(), &mut result),
            None => libc::getpwnam_r(
                cname.as_ptr(),
                &mut pw,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            ),
        }
    };
    (rc == 0 && !result.is_null()).then_some(RunAs {
        uid: pw.pw_uid,
        gid: pw.pw_gid,
    })
}

/// Check that `dir` can be a `--chroot` directory (it exists and is a directory).
pub fn check_chroot_dir(dir: &Path) -> Result<(), PrivilegeError> {
    let err = |source| PrivilegeError::ChrootDir {
        path: dir.to_path_buf(),
        source,
    };
    let m = std::fs::metadata(dir).map_err(err)?;
    if !m.is_dir() {
        return Err(err(io::Error::new(
            io::ErrorKind::NotADirectory,
            "not a directory",
        )));
    }
    Ok(())
}

fn sys(call: &'static str, rc: libc::c_int) -> Result<(), PrivilegeError> {
    if rc != 0 {
        return Err(PrivilegeError::Sys {
            call,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn path_cstr(p: &Path) -> Result<CString, PrivilegeError> {
    CString::new(OsStr::as_bytes(p.as_os_str())).map_err(|_| PrivilegeError::ChrootDir {
        path: p.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "contains a NUL byte"),
    })
}

/// Chroot into `chroot` (then `chdir("/")`) and become `runas`, in that order; with `runas`,
/// check that root cannot be regained. Nothing given, nothing done. Process-wide: glibc applies
/// the id changes to every thread.
pub fn drop_privileges(chroot: Option<&Path>, runas: Option<RunAs>) -> Result<(), PrivilegeError> {
    if let Some(dir) = chroot {
        let c = path_cstr(dir)?;
        // SAFETY: a valid NUL-terminated path.
        sys("chroot", unsafe { libc::chroot(c.as_ptr()) })?;
        let root: &CStr = c"/";
        // SAFETY: as above.
        sys("chdir(\"/\")", unsafe { libc::chdir(root.as_ptr()) })?;
        if runas.is_none() {
            warn!(
                "--chroot {} without --runas: root can leave a chroot",
                dir.display()
            );
        }
    }
    let Some(r) = runas else {
        return Ok(());
    };
    let groups = [r.gid];
    // SAFETY: one gid read from a live array.
    sys("setgroups", unsafe { libc::setgroups(1, groups.as_ptr()) })?;
    // SAFETY: plain system calls on integers.
    sys("setresgid", unsafe { libc::setresgid(r.gid, r.gid, r.gid) })?;
    // SAFETY: as above.
    sys("setresuid", unsafe { libc::setresuid(r.uid, r.uid, r.uid) })?;
    verify(r)?;
    info!(
        "running as uid {} gid {}{}",
        r.uid,
        r.gid,
        chroot.map_or(String::new(), |d| format!(" in {}", d.display()))
    );
    Ok(())
}

/// Every id is `r`'s, the only group is `r.gid`, and root cannot be regained.
fn verify(r: RunAs) -> Result<(), PrivilegeError> {
    let (mut ru, mut eu, mut su) = (0, 0, 0);
    let (mut rg, mut eg, mut sg) = (0, 0, 0);
    // SAFETY: each pointer is to a live local the call writes.
    sys("getresuid", unsafe {
        libc::getresuid(&mut ru, &mut eu, &mut su)
    })?;
    // SAFETY: as above.
    sys("getresgid", unsafe {
        libc::getresgid(&mut rg, &mut eg, &mut sg)
    })?;
    if [ru, eu, su] != [r.uid; 3] || [rg, eg, sg] != [r.gid; 3] {
        return Err(PrivilegeError::StillPrivileged(format!(
            "uids {ru}/{eu}/{su}, gids {rg}/{eg}/{sg} instead of {}:{}",
            r.uid, r.gid
        )));
    }
    let mut groups = [0 as libc::gid_t; 2];
    // SAFETY: at most 2 gids written into a live array of 2.
    let n = unsafe { libc::getgroups(2, groups.as_mut_ptr()) };
    if n != 1 || groups[0] != r.gid {
        return Err(PrivilegeError::StillPrivileged(format!(
            "supplementary groups not reduced to {} ({n} groups)",
            r.gid
        )));
    }
    // SAFETY: a plain system call; success would mean root is still reachable.
    if unsafe { libc::setuid(0) } == 0 {
        return Err(PrivilegeError::StillPrivileged(
            "setuid(0) succeeded".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runas_takes_a_user_a_uid_or_uid_gid_and_never_root() {
        assert_eq!(
            RunAs::parse("107:108").ok(),
            Some(RunAs { uid: 107, gid: 108 })
        );
        assert!(matches!(RunAs::parse("0:5"), Err(PrivilegeError::Root(_))));
        assert!(matches!(RunAs::parse("5:0"), Err(PrivilegeError::Root(_))));
        assert!(matches!(RunAs::parse("root"), Err(PrivilegeError::Root(_))));
        assert!(matches!(RunAs::parse("0"), Err(PrivilegeError::Root(_))));
        for bad in ["", "1:", ":1", "a:b", "1:2:3"] {
            assert!(
                matches!(RunAs::parse(bad), Err(PrivilegeError::BadRunas(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            RunAs::parse("no-such-user-pcierc"),
            Err(PrivilegeError::NoUser(_))
        ));
        // Debian's "nobody" (65534:65534) exists on every Debian system, CI's included.
        if let Ok(r) = RunAs::parse("nobody") {
            assert_eq!(RunAs::parse(&r.uid.to_string()).ok(), Some(r));
        }
    }

    #[test]
    fn a_chroot_directory_must_be_a_directory() {
        assert!(check_chroot_dir(Path::new("/")).is_ok());
        let e = check_chroot_dir(Path::new("/nonexistent-pcierc")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent-pcierc"), "{e}");
        assert!(check_chroot_dir(Path::new("/proc/self/status")).is_err());
    }
}
