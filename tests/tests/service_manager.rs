//! `pcierc` under a service manager, against the real binary: SIGTERM and SIGINT end it cleanly
//! (QMP clients get QEMU's `SHUTDOWN` with `reason: "host-signal"`, replies owed are sent, the
//! state file stays good, socket files go only if they are still pcierc's, exit status 0);
//! `READY=1` on `$NOTIFY_SOCKET` and `--pidfile`; sockets passed exactly as systemd passes them
//! (socket activation) or with `--control-fd`; `--print-capabilities` whatever else is given.

use std::ffi::CString;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use pcierc_protocol::{Frontend, FrontendOptions, FrontendReq, Status};
use pcierc_tests::process::{dir_entries, pcierc_bin, Backend, ScratchDir};
use pcierc_tests::qmp::{qemu_qmp_available, QmpClient};
use pcierc_tests::qmp_socket::QmpSocket;
use serde_json::{json, Value};

/// rp1 (00:02.0) and its Secondary Bus Number register: a guest-visible change to persist.
const RP1: u8 = 0x10;
const SECONDARY_BUS: u16 = 0x19;

fn spawn(args: &[&str]) -> Child {
    Command::new(pcierc_bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning pcierc")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 scratch path")
}

fn wait_connectable(child: &mut Child, paths: &[&Path]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !paths.iter().all(|p| UnixStream::connect(p).is_ok()) {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("pcierc exited early: {st}");
        }
        assert!(Instant::now() < deadline, "pcierc did not start listening");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn kill(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
}

fn wait_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = child.try_wait().expect("waitpid") {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("pcierc did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn assert_host_signal_shutdown(ev: &Value) {
    assert_eq!(ev["event"], "SHUTDOWN", "{ev}");
    assert_eq!(
        ev["data"],
        json!({"guest": false, "reason": "host-signal"}),
        "{ev}"
    );
    assert!(ev["timestamp"]["seconds"].as_u64().unwrap_or(0) > 0, "{ev}");
    assert!(ev["timestamp"]["microseconds"].is_u64(), "{ev}");
}

#[test]
fn sigterm_and_sigint_end_pcierc_cleanly() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let dir = ScratchDir::new("signal");
        let (sock, qmp_sock, state) = (
            dir.0.join("pcierc.sock"),
            dir.0.join("qmp.sock"),
            dir.0.join("vm.state"),
        );
        let args = [
            "--socket-path",
            s(&sock),
            "--control-socket",
            s(&qmp_sock),
            "--state-file",
            s(&state),
        ];
        let mut child = spawn(&args);
        wait_connectable(&mut child, &[&sock, &qmp_sock]);
        let mut qmp = QmpSocket::connect(&qmp_sock, Duration::from_secs(10)).unwrap();
        // The real client library as well, where installed (CI): it must see the same event.
        let mut lib =
            (sig == libc::SIGTERM && qemu_qmp_available()).then(|| QmpClient::connect(&qmp_sock));
        let mut fe = Frontend::connect(&sock, FrontendOptions::tool("t-signal")).unwrap();
        fe.config_write(0, 0, RP1, SECONDARY_BUS, 1, 5).unwrap();

        kill(child.id(), sig);
        let ev = qmp
            .event("SHUTDOWN", Duration::from_secs(10))
            .unwrap()
            .expect("SHUTDOWN event");
        assert_host_signal_shutdown(&ev);
        if let Some(lib) = &mut lib {
            let ev = lib
                .event("SHUTDOWN", 10.0)
                .expect("SHUTDOWN through qemu.qmp");
            assert_eq!(ev["data"], json!({"guest": false, "reason": "host-signal"}));
        }
        let st = wait_exit(&mut child);
        assert_eq!(st.code(), Some(0), "signal {sig}: {st}");
        assert_eq!(
            dir_entries(&dir.0),
            ["vm.state"],
            "sockets removed, no temporary or private files left"
        );
        assert!(
            fe.topology().is_err(),
            "the frontend's connection was closed"
        );

        // The state file is whole and holds the acknowledged write.
        let mut child = spawn(&args);
        wait_connectable(&mut child, &[&sock]);
        let mut fe = Frontend::connect(&sock, FrontendOptions::tool("t-signal")).unwrap();
        assert_eq!(fe.config_read(0, 0, RP1, SECONDARY_BUS, 1).unwrap(), 5);
        kill(child.id(), libc::SIGTERM);
        assert_eq!(wait_exit(&mut child).code(), Some(0));
    }
}

#[test]
fn replies_owed_at_sigterm_are_sent_before_exit() {
    let mut b = Backend::start(&[]);
    let mut fe = Frontend::connect(&b.socket, FrontendOptions::tool("t-owed")).unwrap();
    fe.set_timeout(Some(Duration::from_secs(20)));
    let blob = fe.save_state().unwrap().len();
    // Enough unread replies that pcierc stops reading (back-pressure at 256 KiB) with requests
    // still waiting in the socket when the signal comes.
    let n = (4 << 20) / blob + 1;
    let ids: Vec<u64> = (0..n)
        .map(|_| fe.submit(FrontendReq::SaveState as u32, &[], &[]).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    kill(b.pid(), libc::SIGTERM);
    for id in ids {
        let (status, payload) = fe.wait(id).expect("every reply owed arrives");
        assert_eq!((status, payload.len()), (Status::Ok, blob));
    }
    let st = b.wait_exit(Duration::from_secs(20)).expect("exit");
    assert_eq!(st.code(), Some(0), "{st}");
    assert!(!b.socket.exists());
}

#[test]
fn a_socket_file_replaced_by_someone_else_is_left_alone() {
    let dir = ScratchDir::new("replaced");
    let (sock, qmp_sock) = (dir.0.join("pcierc.sock"), dir.0.join("qmp.sock"));
    let mut child = spawn(&["--socket-path", s(&sock), "--control-socket", s(&qmp_sock)]);
    wait_connectable(&mut child, &[&sock, &qmp_sock]);
    // Someone else now serves at the protocol socket's path.
    std::fs::remove_file(&sock).unwrap();
    let theirs = UnixListener::bind(&sock).unwrap();
    kill(child.id(), libc::SIGTERM);
    assert_eq!(wait_exit(&mut child).code(), Some(0));
    assert!(!qmp_sock.exists(), "pcierc's own socket is removed");
    let _c = UnixStream::connect(&sock).expect("the other socket is still there");
    assert!(theirs.accept().is_ok());
}

/// A datagram socket for `NOTIFY_SOCKET` (`@name`: abstract) and its value.
fn notify_socket(dir: &Path, abstract_name: bool) -> (UnixDatagram, String) {
    use std::os::linux::net::SocketAddrExt;
    let (rx, name) = if abstract_name {
        let name = format!("pcierc-test-notify-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        (UnixDatagram::bind_addr(&addr).unwrap(), format!("@{name}"))
    } else {
        let p = dir.join("notify");
        (UnixDatagram::bind(&p).unwrap(), s(&p).to_string())
    };
    rx.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    (rx, name)
}

fn recv(rx: &UnixDatagram) -> String {
    let mut buf = [0u8; 256];
    let n = rx.recv(&mut buf).expect("a notification");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn ready_is_notified_once_listening_and_the_pidfile_lives_as_long_as_pcierc() {
    for abstract_name in [false, true] {
        let dir = ScratchDir::new("notify");
        let (sock, qmp_sock, pidfile) = (
            dir.0.join("pcierc.sock"),
            dir.0.join("qmp.sock"),
            dir.0.join("pcierc.pid"),
        );
        let (rx, name) = notify_socket(&dir.0, abstract_name);
        let mut child = Command::new(pcierc_bin())
            .args(["--socket-path", s(&sock), "--control-socket", s(&qmp_sock)])
            .args(["--pidfile", s(&pidfile)])
            .env("NOTIFY_SOCKET", &name)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        assert_eq!(recv(&rx), "READY=1", "{name}");
        // Ready means: both sockets answer and the pid file is there, now.
        UnixStream::connect(&sock).expect("protocol socket at READY=1");
        UnixStream::connect(&qmp_sock).expect("control socket at READY=1");
        assert_eq!(
            std::fs::read_to_string(&pidfile).unwrap(),
            format!("{}\n", child.id())
        );
        kill(child.id(), libc::SIGTERM);
        assert_eq!(wait_exit(&mut child).code(), Some(0));
        assert_eq!(recv(&rx), "STOPPING=1");
        assert!(!pidfile.exists(), "pid file removed at exit");
        let left: Vec<String> = dir_entries(&dir.0);
        assert!(left.iter().all(|e| e == "notify"), "{left:?}");
    }
}

/// Run pcierc to its end with `fds` as descriptors 3, 4, ... (see [`start_with_fds`]).
fn spawn_with_fds(fds: &[RawFd], names: Option<&str>, args: &[&str]) -> std::process::Output {
    start_with_fds(fds, names, args, Stdio::piped())
        .wait_with_output()
        .expect("pcierc output")
}

/// Start pcierc with `fds` as descriptors 3, 4, ... (without close-on-exec), as a service
/// manager does. With `names`, also `LISTEN_FDS`, `LISTEN_FDNAMES` (unset for `Some("")`) and
/// `LISTEN_PID`: the child's own pid, known only after fork, so `pre_exec` writes it into an
/// environment prepared beforehand and executes pcierc itself (nothing allocates between fork
/// and exec).
fn start_with_fds(fds: &[RawFd], names: Option<&str>, args: &[&str], stderr: Stdio) -> Child {
    let prog = CString::new(pcierc_bin().as_os_str().as_bytes()).unwrap();
    let argv: Vec<CString> = std::iter::once("pcierc")
        .chain(args.iter().copied())
        .map(|a| CString::new(a).unwrap())
        .collect();
    let mut env: Vec<Vec<u8>> = std::env::vars_os()
        .filter(|(k, _)| !k.as_bytes().starts_with(b"LISTEN_") && k != "RUST_LOG")
        .map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes(), b"\0"].concat())
        .collect();
    env.push(b"RUST_LOG=warn\0".to_vec());
    let mut pid_digits = None;
    if let Some(names) = names {
        env.push(format!("LISTEN_FDS={}\0", fds.len()).into_bytes());
        if !names.is_empty() {
            env.push(format!("LISTEN_FDNAMES={names}\0").into_bytes());
        }
        env.push(b"LISTEN_PID=\0\0\0\0\0\0\0\0\0\0\0".to_vec());
        // Where the digits go (the heap buffer does not move: `env` is not changed again).
        pid_digits = env
            .last()
            .map(|v| v.as_ptr() as usize + b"LISTEN_PID=".len());
    }
    // Addresses, not pointers, so the closure is Send; all point into `argv`, `env` and
    // `prog`, which the closure owns.
    let argv_ptrs: Vec<usize> = argv
        .iter()
        .map(|a| a.as_ptr() as usize)
        .chain([0])
        .collect();
    let env_ptrs: Vec<usize> = env.iter().map(|e| e.as_ptr() as usize).chain([0]).collect();
    // Copies above any descriptor the child could have, so dup2 to 3, 4, ... clobbers none.
    let high: Vec<RawFd> = fds
        .iter()
        // SAFETY: F_DUPFD_CLOEXEC on descriptors the caller owns; the copies are closed below.
        .map(|&fd| unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100) })
        .collect();
    assert!(high.iter().all(|&fd| fd >= 100));
    let high_in_child = high.clone();
    let mut cmd = Command::new(pcierc_bin());
    cmd.stdout(Stdio::null()).stderr(stderr);
    let keep = (prog, argv, env);
    // SAFETY: between fork and exec the closure only calls async-signal-safe functions
    // (dup2, getpid, execve) and writes into memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let (prog, _argv, _env) = &keep;
            for (i, &fd) in high_in_child.iter().enumerate() {
                // dup2 leaves the new descriptor without close-on-exec, as systemd passes it.
                if libc::dup2(fd, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(at) = pid_digits {
                let mut pid = libc::getpid() as u32;
                let mut digits = [0u8; 10];
                let mut n = 0;
                loop {
                    digits[n] = b'0' + (pid % 10) as u8;
                    n += 1;
                    pid /= 10;
                    if pid == 0 {
                        break;
                    }
                }
                for k in 0..n {
                    (at as *mut u8).add(k).write(digits[n - 1 - k]);
                }
            }
            libc::execve(
                prog.as_ptr(),
                argv_ptrs.as_ptr().cast(),
                env_ptrs.as_ptr().cast(),
            );
            Err(std::io::Error::last_os_error())
        });
    }
    let child = cmd.spawn().expect("spawning pcierc");
    for fd in high {
        // SAFETY: closing the parent's copies made above.
        unsafe { libc::close(fd) };
    }
    child
}

#[test]
fn socket_activation_serves_both_sockets_as_systemd_passes_them() {
    let dir = ScratchDir::new("activation");
    let (sock, qmp_sock) = (dir.0.join("pcierc.sock"), dir.0.join("qmp.sock"));
    // Named, in either order.
    for (names, first, second) in [
        ("pcierc:control", &sock, &qmp_sock),
        ("control:pcierc", &qmp_sock, &sock),
    ] {
        let a = UnixListener::bind(first).unwrap();
        let b = UnixListener::bind(second).unwrap();
        let mut child = start_with_fds(
            &[a.as_raw_fd(), b.as_raw_fd()],
            Some(names),
            &[],
            Stdio::inherit(),
        );
        drop((a, b));
        let mut fe = Frontend::connect(&sock, FrontendOptions::tool("t-act")).unwrap();
        assert_eq!(fe.config_read(0, 0, 0, 0, 4).unwrap(), 0x29c0_8086);
        let mut qmp = QmpSocket::connect(&qmp_sock, Duration::from_secs(10)).unwrap();
        assert_eq!(
            qmp.ok("query-status", Value::Null).unwrap()["running"],
            true
        );
        kill(child.id(), libc::SIGTERM);
        let ev = qmp.event("SHUTDOWN", Duration::from_secs(10)).unwrap();
        assert_host_signal_shutdown(&ev.expect("SHUTDOWN"));
        assert_eq!(wait_exit(&mut child).code(), Some(0), "{names}");
        // The socket files are the manager's: left in place.
        assert!(sock.exists() && qmp_sock.exists());
        std::fs::remove_file(&sock).unwrap();
        std::fs::remove_file(&qmp_sock).unwrap();
    }
    // One descriptor without LISTEN_FDNAMES is the protocol socket.
    let a = UnixListener::bind(&sock).unwrap();
    let mut child = start_with_fds(&[a.as_raw_fd()], Some(""), &[], Stdio::inherit());
    drop(a);
    let mut fe = Frontend::connect(&sock, FrontendOptions::tool("t-act")).unwrap();
    assert_eq!(fe.config_read(0, 0, 0, 0, 4).unwrap(), 0x29c0_8086);
    kill(child.id(), libc::SIGINT);
    assert_eq!(wait_exit(&mut child).code(), Some(0));
}

#[test]
fn systemd_socket_activate_runs_pcierc() {
    // systemd's own tool, where installed (it binds, then executes pcierc in its place on the
    // first connection, with LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES set by systemd's code).
    let tool = "systemd-socket-activate";
    if !Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("\n*** SKIP: {tool} is not installed; this test did not run ***\n");
        return;
    }
    let dir = ScratchDir::new("sd-activate");
    let (sock, qmp_sock) = (dir.0.join("pcierc.sock"), dir.0.join("qmp.sock"));
    let mut child = Command::new(tool)
        .args([
            "-l",
            s(&sock),
            "-l",
            s(&qmp_sock),
            "--fdname=pcierc:control",
        ])
        .arg(pcierc_bin())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_connectable(&mut child, &[&sock, &qmp_sock]);
    let mut fe = Frontend::connect(&sock, FrontendOptions::tool("t-sd")).unwrap();
    assert_eq!(fe.config_read(0, 0, 0, 0, 4).unwrap(), 0x29c0_8086);
    let mut qmp = QmpSocket::connect(&qmp_sock, Duration::from_secs(10)).unwrap();
    kill(child.id(), libc::SIGTERM);
    let ev = qmp.event("SHUTDOWN", Duration::from_secs(10)).unwrap();
    assert_host_signal_shutdown(&ev.expect("SHUTDOWN"));
    assert_eq!(wait_exit(&mut child).code(), Some(0));
}

#[test]
fn sockets_from_a_manager_are_checked_and_variables_for_another_process_ignored() {
    let dir = ScratchDir::new("activation-bad");
    // A datagram socket where a listening stream socket belongs: one clear line, status 1.
    let g = UnixDatagram::unbound().unwrap();
    let out = spawn_with_fds(&[g.as_raw_fd()], Some("pcierc"), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err.trim_end(),
        "pcierc: socket activation (pcierc): fd 3 is not a listening unix stream socket (a datagram socket)"
    );
    // --control-fd with a connected socket.
    let l = UnixListener::bind(dir.0.join("l")).unwrap();
    let c = UnixStream::connect(dir.0.join("l")).unwrap();
    let sock = dir.0.join("pcierc.sock");
    let out = spawn_with_fds(
        &[c.as_raw_fd()],
        None,
        &["--socket-path", s(&sock), "--control-fd", "3"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--control-fd: fd 3 is not a listening unix stream socket (a stream socket that is not listening)"),
        "{err}"
    );
    assert!(!sock.exists(), "checked before any socket is created");
    drop(l);
    // LISTEN_PID of another process: not for pcierc, which serves its --socket-path.
    let mut child = Command::new(pcierc_bin())
        .args(["--socket-path", s(&sock)])
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDS", "1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_connectable(&mut child, &[&sock]);
    kill(child.id(), libc::SIGTERM);
    assert_eq!(wait_exit(&mut child).code(), Some(0));
}

#[test]
fn control_fd_serves_qmp_on_an_inherited_socket() {
    let dir = ScratchDir::new("control-fd");
    let (sock, qmp_sock) = (dir.0.join("pcierc.sock"), dir.0.join("qmp.sock"));
    let l = UnixListener::bind(&qmp_sock).unwrap();
    let mut child = start_with_fds(
        &[l.as_raw_fd()],
        None,
        &["--socket-path", s(&sock), "--control-fd", "3"],
        Stdio::inherit(),
    );
    drop(l);
    wait_connectable(&mut child, &[&sock]);
    let mut qmp = QmpSocket::connect(&qmp_sock, Duration::from_secs(10)).unwrap();
    let slots = qmp.ok("x-pcierc-query-slots", Value::Null).unwrap();
    assert_eq!(slots.as_array().map(Vec::len), Some(4));
    kill(child.id(), libc::SIGTERM);
    let ev = qmp.event("SHUTDOWN", Duration::from_secs(10)).unwrap();
    assert_host_signal_shutdown(&ev.expect("SHUTDOWN"));
    assert_eq!(wait_exit(&mut child).code(), Some(0));
    assert!(!sock.exists(), "pcierc's socket file is removed");
    assert!(
        qmp_sock.exists(),
        "the inherited socket's file is not pcierc's"
    );
}

#[test]
fn print_capabilities_prints_whatever_the_other_options() {
    let run = |args: &[&str]| {
        let out = Command::new(pcierc_bin())
            .args(args)
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        (out.status.code(), out.stdout)
    };
    for args in [
        &[
            "--print-capabilities",
            "--no-such-option",
            "--socket-mode",
            "99",
        ][..],
        &["--socket-mode", "99", "--print-capabilities"],
        &["--print-capabilities", "--topology", "/nonexistent.toml"],
    ] {
        let (code, stdout) = run(args);
        assert_eq!(code, Some(0), "{args:?}");
        let v: Value = serde_json::from_slice(&stdout).expect("JSON");
        assert_eq!(v["type"], "pcie-root-complex");
        assert!(
            v["features"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f == "systemd-notify"),
            "{v}"
        );
        assert!(v.get("root-ports").is_none(), "no topology to describe");
    }
    // Valid options still shape the description.
    let (code, stdout) = run(&[
        "-n",
        "--device",
        "pcie-root-port,id=rpa,chassis=9,slot=9,addr=0x3.0",
        "--print-capabilities",
    ]);
    assert_eq!(code, Some(0));
    let v: Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(v["root-ports"][0]["id"], "rpa");
    // Without it, a wrong option is still an error.
    assert_eq!(run(&["--no-such-option"]).0, Some(2));
}
