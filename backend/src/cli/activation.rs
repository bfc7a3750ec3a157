//! Sockets handed over by a service manager: systemd's socket activation (`LISTEN_PID`,
//! `LISTEN_FDS`, `LISTEN_FDNAMES`; descriptors from 3 on) and `--control-fd`.
//!
//! Names (`FileDescriptorName=` in the socket unit): [`PROTOCOL_NAME`] (`pcierc`) is the
//! protocol socket frontends connect to, [`CONTROL_NAME`] (`control`) the QMP control socket.
//! A single descriptor is the protocol socket unless it is named `control` (so a socket unit
//! with one `ListenStream=` needs no name: systemd then names it after the unit); with more,
//! each must be named. Every descriptor must be a listening unix stream socket. Variables meant
//! for another process (`LISTEN_PID` is not ours) are ignored, as `sd_listen_fds` does.
//! `docs/service.md` shows the units.

use std::os::fd::RawFd;

use log::{debug, info};

/// The first descriptor a service manager passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;
/// `LISTEN_FDNAMES` name of the protocol socket.
pub const PROTOCOL_NAME: &str = "pcierc";
/// `LISTEN_FDNAMES` name of the QMP control socket.
pub const CONTROL_NAME: &str = "control";
/// Most descriptors accepted from a service manager (pcierc uses two).
pub const MAX_LISTEN_FDS: usize = 16;

/// Why sockets from a service manager cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActivationError {
    /// A variable that is not a number, or out of range.
    #[error("socket activation: {var}={value:?}: {why}")]
    BadVariable {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        why: &'static str,
    },
    /// `LISTEN_FDNAMES` does not have one name per descriptor.
    #[error("socket activation: LISTEN_FDNAMES has {names} names for LISTEN_FDS={fds}")]
    NameCount {
        /// Names given.
        names: usize,
        /// Descriptors passed.
        fds: usize,
    },
    /// A descriptor whose name says nothing to pcierc, among several.
    #[error(
        "socket activation: fd {fd} is named {name:?}; with several sockets each must be named \
         \"pcierc\" (the protocol socket) or \"control\" (the QMP control socket): set \
         FileDescriptorName= in the socket unit"
    )]
    UnknownName {
        /// The descriptor.
        fd: RawFd,
        /// Its name.
        name: String,
    },
    /// Two descriptors for the same socket.
    #[error("socket activation: fds {first} and {second} are both named {name:?}")]
    Duplicate {
        /// The name.
        name: &'static str,
        /// The first descriptor with it.
        first: RawFd,
        /// The second one.
        second: RawFd,
    },
    /// A descriptor that cannot be served.
    #[error("{what}: fd {fd} is not a listening unix stream socket ({is})")]
    NotListening {
        /// Where it came from (`--control-fd`, `socket activation (name)`).
        what: String,
        /// The descriptor.
        fd: RawFd,
        /// What it is instead.
        is: NotServable,
    },
}

/// What a descriptor that is not a listening unix stream socket is instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotServable {
    /// `fstat` or `getsockopt` on it failed with this errno (e.g. `EBADF`: not open).
    #[error("{}", std::io::Error::from_raw_os_error(*.0))]
    Unreadable(i32),
    /// Not a socket at all.
    #[error("not a socket")]
    NotASocket,
    /// A socket of another address family.
    #[error("a socket of address family {0}, not AF_UNIX")]
    Family(i32),
    /// A datagram socket.
    #[error("a datagram socket")]
    Datagram,
    /// A seqpacket socket.
    #[error("a seqpacket socket")]
    SeqPacket,
    /// A socket of another type.
    #[error("a socket of type {0}")]
    Type(i32),
    /// A stream socket that is connected, or not listening yet.
    #[error("a stream socket that is not listening")]
    NotListening,
}

/// The sockets a service manager passed, by role.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Activated {
    /// The protocol socket (`pcierc`).
    pub protocol: Option<RawFd>,
    /// The QMP control socket (`control`).
    pub control: Option<RawFd>,
}

const VARS: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// The sockets passed to this process by socket activation, if any, each checked to be a
/// listening unix stream socket (the service makes them close-on-exec when it adopts them:
/// `service::event_loop`). The variables are removed from the
/// environment (call this at start-up, before threads start).
pub fn from_env() -> Result<Option<Activated>, ActivationError> {
    let get = |v: &str| std::env::var_os(v).map(|s| s.to_string_lossy().into_owned());
    let (pid, fds, names) = (get(VARS[0]), get(VARS[1]), get(VARS[2]));
    for v in VARS {
        // Removing variables is only unsound with other threads reading the environment;
        // this runs at start-up, before any thread exists.
        std::env::remove_var(v);
    }
    let Some(a) = parse(
        pid.as_deref(),
        fds.as_deref(),
        names.as_deref(),
        std::process::id(),
    )?
    else {
        return Ok(None);
    };
    for (fd, name) in [(a.protocol, PROTOCOL_NAME), (a.control, CONTROL_NAME)] {
        if let Some(fd) = fd {
            // Close-on-exec is set where the service adopts them (event_loop).
            check_listening_unix_stream(fd, &format!("socket activation ({name})"))?;
        }
    }
    info!("socket activation: {a:?}");
    Ok(Some(a))
}

fn bad(var: &'static str, value: &str, why: &'static str) -> ActivationError {
    ActivationError::BadVariable {
        var,
        value: value.to_string(),
        why,
    }
}

/// Decide from the variables' values, for the process `my_pid`, which descriptor is which
/// (without looking at the descriptors). `None`: nothing was passed to this process.
pub fn parse(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    listen_fdnames: Option<&str>,
    my_pid: u32,
) -> Result<Option<Activated>, ActivationError> {
    let (Some(pid), Some(fds)) = (listen_pid, listen_fds) else {
        return Ok(None);
    };
    let pid: u32 = pid
        .parse()
        .map_err(|_| bad("LISTEN_PID", pid, "not a process id"))?;
    if pid != my_pid {
        debug!("socket activation: LISTEN_PID={pid} is not this process ({my_pid}); ignored");
        return Ok(None);
    }
    let n: usize = fds
        .parse()
        .map_err(|_| bad("LISTEN_FDS", fds, "not a number"))?;
    if n == 0 {
        return Ok(None);
    }
    if n > MAX_LISTEN_FDS {
        return Err(bad(
            "LISTEN_FDS",
            fds,
            "more descriptors than pcierc can use",
        ));
    }
    let names: Vec<Option<&str>> = match listen_fdnames {
        Some(s) => {
            let v: Vec<&str> = s.split(':').collect();
            if v.len() != n {
                return Err(ActivationError::NameCount {
                    names: v.len(),
                    fds: n,
                });
            }
            // systemd's sd_listen_fds_with_names calls a descriptor without a name "unknown".
            v.into_iter()
                .map(|s| (!s.is_empty() && s != "unknown").then_some(s))
                .collect()
        }
        None => vec![None; n],
    };
    let mut a = Activated::default();
    for (i, name) in names.into_iter().enumerate() {
        let fd = LISTEN_FDS_START + i as RawFd;
        let (slot, role) = match name {
            Some(CONTROL_NAME) => (&mut a.control, CONTROL_NAME),
            Some(PROTOCOL_NAME) => (&mut a.protocol, PROTOCOL_NAME),
            _ if n == 1 => (&mut a.protocol, PROTOCOL_NAME),
            other => {
                return Err(ActivationError::UnknownName {
                    fd,
                    name: other.unwrap_or("").to_string(),
                })
            }
        };
        if let Some(first) = *slot {
            return Err(ActivationError::Duplicate {
                name: role,
                first,
                second: fd,
            });
        }
        *slot = Some(fd);
    }
    Ok(Some(a))
}

/// Fail unless `fd` is a listening (`SO_ACCEPTCONN`) `AF_UNIX` `SOCK_STREAM` socket; the error
/// says what it is instead. `what` names where the descriptor came from.
pub fn check_listening_unix_stream(fd: RawFd, what: &str) -> Result<(), ActivationError> {
    let not = |is: NotServable| ActivationError::NotListening {
        what: what.to_string(),
        fd,
        is,
    };
    // SAFETY: fstat writes into `st`, which lives for the call; a bad fd is an error.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(not(unreadable(&std::io::Error::last_os_error())));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(not(NotServable::NotASocket));
    }
    let opt =
        |name| crate::service::event_loop::socket_option(fd, name).map_err(|e| not(unreadable(&e)));
    let domain = opt(libc::SO_DOMAIN)?;
    if domain != libc::AF_UNIX {
        return Err(not(NotServable::Family(domain)));
    }
    match opt(libc::SO_TYPE)? {
        libc::SOCK_STREAM => {}
        libc::SOCK_DGRAM => return Err(not(NotServable::Datagram)),
        libc::SOCK_SEQPACKET => return Err(not(NotServable::SeqPacket)),
        t => return Err(not(NotServable::Type(t))),
    }
    if opt(libc::SO_ACCEPTCONN)? == 0 {
        return Err(not(NotServable::NotListening));
    }
    Ok(())
}

/// A failed `fstat` or `getsockopt` (always an OS error; `EIO` should one not say).
fn unreadable(e: &std::io::Error) -> NotServable {
    NotServable::Unreadable(e.raw_os_error().unwrap_or(libc::EIO))
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};

    use super::*;

    const ME: u32 = 4242;

    fn p(names: Option<&str>, n: &str) -> Result<Option<Activated>, ActivationError> {
        parse(Some("4242"), Some(n), names, ME)
    }

    #[test]
    fn descriptors_are_assigned_by_name_and_a_single_one_is_the_protocol_socket() {
        let both = Activated {
            protocol: Some(3),
            control: Some(4),
        };
        assert_eq!(p(Some("pcierc:control"), "2"), Ok(Some(both)));
        assert_eq!(
            p(Some("control:pcierc"), "2"),
            Ok(Some(Activated {
                protocol: Some(4),
                control: Some(3)
            }))
        );
        let one = Activated {
            protocol: Some(3),
            control: None,
        };
        assert_eq!(p(None, "1"), Ok(Some(one)));
        assert_eq!(p(Some("pcierc@vm1.socket"), "1"), Ok(Some(one)));
        assert_eq!(p(Some("unknown"), "1"), Ok(Some(one)));
        assert_eq!(
            p(Some("control"), "1"),
            Ok(Some(Activated {
                protocol: None,
                control: Some(3)
            }))
        );
    }

    #[test]
    fn variables_for_another_process_or_none_mean_nothing_was_passed() {
        assert_eq!(parse(Some("1"), Some("2"), None, ME), Ok(None));
        assert_eq!(parse(None, Some("2"), None, ME), Ok(None));
        assert_eq!(parse(Some("4242"), None, None, ME), Ok(None));
        assert_eq!(p(None, "0"), Ok(None));
    }

    #[test]
    fn malformed_variables_and_names_are_clear_errors() {
        let e = parse(Some("x"), Some("1"), None, ME).unwrap_err();
        assert!(e.to_string().contains("LISTEN_PID=\"x\""), "{e}");
        let e = p(None, "two").unwrap_err().to_string();
        assert!(e.contains("LISTEN_FDS=\"two\": not a number"), "{e}");
        assert!(p(None, "-1").is_err());
        assert!(p(None, "17").is_err());
        assert_eq!(
            p(Some("pcierc"), "2"),
            Err(ActivationError::NameCount { names: 1, fds: 2 })
        );
        let e = p(None, "2").unwrap_err().to_string();
        assert!(e.contains("FileDescriptorName="), "{e}");
        assert_eq!(
            p(Some("pcierc:qmp"), "2"),
            Err(ActivationError::UnknownName {
                fd: 4,
                name: "qmp".into()
            })
        );
        assert_eq!(
            p(Some("control:control"), "2"),
            Err(ActivationError::Duplicate {
                name: "control",
                first: 3,
                second: 4
            })
        );
    }

    #[test]
    fn only_listening_unix_stream_sockets_pass() {
        let d = std::env::temp_dir().join(format!("pcierc-activation-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let l = UnixListener::bind(d.join("l")).unwrap();
        assert_eq!(check_listening_unix_stream(l.as_raw_fd(), "t"), Ok(()));
        let c = UnixStream::connect(d.join("l")).unwrap();
        let e = check_listening_unix_stream(c.as_raw_fd(), "--control-fd").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "--control-fd: fd {} is not a listening unix stream socket (a stream socket that is not listening)",
                c.as_raw_fd()
            )
        );
        let g = UnixDatagram::unbound().unwrap();
        let is = |fd| match check_listening_unix_stream(fd, "t") {
            Err(ActivationError::NotListening { is, .. }) => is,
            r => panic!("fd {fd}: {r:?}"),
        };
        assert_eq!(is(g.as_raw_fd()), NotServable::Datagram);
        let f = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(is(f.as_raw_fd()), NotServable::NotASocket);
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(is(tcp.as_raw_fd()), NotServable::Family(libc::AF_INET));
        assert_eq!(is(9999), NotServable::Unreadable(libc::EBADF));
        let e = check_listening_unix_stream(9999, "t").unwrap_err();
        assert!(e.to_string().contains("Bad file descriptor"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
