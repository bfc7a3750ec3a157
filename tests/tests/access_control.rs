//! Access control on the real `pcierc` process (issue 8): socket file modes, never replacing a
//! file that is not a socket or a socket someone listens on, `--allow-uid` checked with
//! SO_PEERCRED on both sockets (refusals logged with the peer's pid and uid), and the limits a
//! peer can hit: `--max-connections`, back-pressure on a frontend that does not read, and the
//! control socket's 16 clients and 4 MiB of unread output. `docs/security.md` maps each test to
//! its defence.
//!
//! Nothing here needs root, and everything works as root too (CI runs as root): the "other"
//! uid is never ours and never 0.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use pcierc_protocol::{read_obj, Frontend, FrontendOptions, FrontendReq, MsgHeader, HEADER_SIZE};
use pcierc_tests::process::{dir_entries, pcierc_bin, Backend, ScratchDir};
use vm_memory::ByteValued;

/// The effective uid of this test process (what SO_PEERCRED reports for our connections).
fn our_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// A uid that is neither ours nor root's.
fn other_uid() -> u32 {
    if our_uid() == 65534 {
        65533
    } else {
        65534
    }
}

fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Run pcierc with `args` until it exits (it is expected to refuse to start): its status and
/// stderr. Killed, and the test failed, if it is still running after 20 s.
fn run_to_exit(args: &[&std::ffi::OsStr]) -> (ExitStatus, String) {
    let log = ScratchDir::new("access-exit");
    let log_path = log.0.join("stderr");
    let mut child = Command::new(pcierc_bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("spawning pcierc");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pcierc {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, std::fs::read_to_string(&log_path).unwrap())
}

/// A pcierc serving both sockets with its log (stderr, `RUST_LOG=warn`) in a file; killed on drop.
struct Logged {
    child: Child,
    socket: PathBuf,
    control: PathBuf,
    log: PathBuf,
    _dir: ScratchDir,
}

impl Logged {
    fn start(extra: &[&str]) -> Logged {
        let dir = ScratchDir::new("access");
        let socket = dir.0.join("pcierc.sock");
        let control = dir.0.join("control.sock");
        let log = dir.0.join("stderr");
        let mut child = Command::new(pcierc_bin())
            .arg("--socket-path")
            .arg(&socket)
            .arg("--control-socket")
            .arg(&control)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawning pcierc");
        // Connecting works even for a refused uid: the refusal comes after accept.
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&socket).is_err() || UnixStream::connect(&control).is_err() {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "pcierc exited early: {st}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "pcierc did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        Logged {
            child,
            socket,
            control,
            log,
            _dir: dir,
        }
    }

    /// The log so far, waiting up to 5 s for a line containing `needle`.
    fn log_with(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap();
            if log.contains(needle) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a QMP client gets before it sends anything: the greeting, or "" if the server closes.
fn qmp_first_bytes(path: &Path) -> String {
    let mut s = UnixStream::connect(path).expect("the control socket accepts");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"\r\n") {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("no greeting and no EOF from the control socket: {e}"),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn socket_files_are_0600_by_default_or_the_socket_mode_given() {
    let b = Backend::start_with_control(&[]);
    let control = b.control.clone().unwrap();
    assert_eq!(mode_of(&b.socket), 0o600);
    assert_eq!(mode_of(&control), 0o600);
    assert_eq!(
        dir_entries(b.socket.parent().unwrap()),
        ["control.sock", "pcierc.sock"],
        "no private directory left behind"
    );

    let b = Backend::start_with_control(&["--socket-mode", "0660"]);
    assert_eq!(mode_of(&b.socket), 0o660);
    assert_eq!(mode_of(b.control.as_ref().unwrap()), 0o660);
    let mut f = Frontend::connect(&b.socket, FrontendOptions::tool("mode")).unwrap();
    assert_eq!(f.config_read(0, 0, 0, 0, 4).unwrap(), 0x29c0_8086);
}

#[test]
fn a_bad_socket_mode_or_connection_limit_is_a_clear_cli_error() {
    let d = ScratchDir::new("access-cli");
    let sock = d.0.join("s.sock");
    for bad in ["0800", "1777", "0x180", "rw-------", "600 ", ""] {
        let (st, err) = run_to_exit(&[
            "--socket-path".as_ref(),
            sock.as_os_str(),
            "--socket-mode".as_ref(),
            bad.as_ref(),
        ]);
        assert_eq!(st.code(), Some(2), "{bad:?}: {err}");
        assert!(
            err.contains("--socket-mode") && err.contains("octal file mode of at most 0777"),
            "{bad:?}: {err}"
        );
    }
    for bad in ["0", "many", "1.5"] {
        let (st, err) = run_to_exit(&[
            "--socket-path".as_ref(),
            sock.as_os_str(),
            "--max-connections".as_ref(),
            bad.as_ref(),
        ]);
        assert_eq!(st.code(), Some(2), "{bad:?}: {err}");
        assert!(err.contains("--max-connections"), "{bad:?}: {err}");
    }
    let (st, err) = run_to_exit(&[
        "--socket-path".as_ref(),
        sock.as_os_str(),
        "--allow-uid".as_ref(),
        "root".as_ref(),
    ]);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("--allow-uid"), "{err}");
    assert!(dir_entries(&d.0).is_empty(), "nothing created");
}

#[test]
fn a_file_that_is_not_a_socket_is_never_replaced() {
    let d = ScratchDir::new("access-file");
    let data = d.0.join("data.sock");
    std::fs::write(&data, b"precious").unwrap();
    let (st, err) = run_to_exit(&["--socket-path".as_ref(), data.as_os_str()]);
    assert!(!st.success());
    assert!(
        err.contains(&format!("{}: exists and is not a socket", data.display())),
        "names the path: {err}"
    );
    assert_eq!(std::fs::read(&data).unwrap(), b"precious");

    // The control socket's path is checked as well, and the frontend socket created before the
    // refusal does not stay behind.
    let sock = d.0.join("s.sock");
    let (st, err) = run_to_exit(&[
        "--socket-path".as_ref(),
        sock.as_os_str(),
        "--control-socket".as_ref(),
        data.as_os_str(),
    ]);
    assert!(!st.success());
    assert!(
        err.contains(&format!("{}: exists and is not a socket", data.display())),
        "{err}"
    );
    assert_eq!(std::fs::read(&data).unwrap(), b"precious");
    assert_eq!(dir_entries(&d.0), ["data.sock"]);
}

#[test]
fn a_second_pcierc_does_not_steal_a_live_socket_but_replaces_a_dead_one() {
    let mut b = Backend::start_with_control(&[]);
    let control = b.control.clone().unwrap();
    let ino = std::fs::metadata(&b.socket).unwrap().ino();

    let (st, err) = run_to_exit(&["--socket-path".as_ref(), b.socket.as_os_str()]);
    assert!(!st.success());
    assert!(
        err.contains(&format!(
            "{}: another process is listening on it; not replacing it",
            b.socket.display()
        )),
        "{err}"
    );
    // Same for the control socket; the second one's own fresh socket is removed again.
    let d = ScratchDir::new("access-second");
    let fresh = d.0.join("s.sock");
    let (st, err) = run_to_exit(&[
        "--socket-path".as_ref(),
        fresh.as_os_str(),
        "--control-socket".as_ref(),
        control.as_os_str(),
    ]);
    assert!(!st.success());
    assert!(
        err.contains(&format!(
            "{}: another process is listening on it",
            control.display()
        )),
        "{err}"
    );
    assert!(dir_entries(&d.0).is_empty(), "{:?}", dir_entries(&d.0));

    // The first one still has its sockets and serves on them.
    assert_eq!(std::fs::metadata(&b.socket).unwrap().ino(), ino);
    let mut f = Frontend::connect(&b.socket, FrontendOptions::tool("first")).unwrap();
    assert_eq!(f.config_read(0, 0, 0, 0, 4).unwrap(), 0x29c0_8086);
    assert!(qmp_first_bytes(&control).contains("\"QMP\""));
    drop(f);

    // Killed (SIGKILL leaves the socket files behind): a new pcierc replaces the dead sockets.
    b.restart(&[]);
    assert_ne!(std::fs::metadata(&b.socket).unwrap().ino(), ino);
    let mut f = Frontend::connect(&b.socket, FrontendOptions::tool("second")).unwrap();
    assert_eq!(f.config_read(0, 0, 0, 0, 4).unwrap(), 0x29c0_8086);
}

#[test]
fn a_uid_not_allowed_is_refused_on_both_sockets_and_logged() {
    let mut b = Logged::start(&["--allow-uid", &other_uid().to_string()]);
    let Err(err) = Frontend::connect(&b.socket, FrontendOptions::tool("refused")) else {
        panic!("our uid is not allowed: the handshake must fail");
    };
    let needle = format!(
        "refusing a frontend: pid {} uid {}",
        std::process::id(),
        our_uid()
    );
    let log = b.log_with(&needle);
    assert!(log.contains(&needle), "{err}; log:\n{log}");
    assert!(log.contains("not allowed"), "{log}");

    // The control socket: EOF before any greeting.
    assert_eq!(
        qmp_first_bytes(&b.control),
        "",
        "no greeting for a refused client"
    );
    let needle = format!(
        "refusing a control client: pid {} uid {}",
        std::process::id(),
        our_uid()
    );
    let log = b.log_with(&needle);
    assert!(log.contains(&needle), "{log}");
    assert!(b.alive(), "refusing is not fatal to pcierc");
}

#[test]
fn allowed_uids_are_served_on_both_sockets() {
    let (me, other) = (our_uid().to_string(), other_uid().to_string());
    let b = Logged::start(&["--allow-uid", &other, "--allow-uid", &me]);
    let mut f = Frontend::connect(&b.socket, FrontendOptions::tool("allowed")).unwrap();
    assert_eq!(f.config_read(0, 0, 0, 0, 4).unwrap(), 0x29c0_8086);
    assert!(qmp_first_bytes(&b.control).contains("\"QMP\""));
    let log = std::fs::read_to_string(&b.log).unwrap();
    assert!(!log.contains("refusing"), "{log}");
}

/// Connect, retrying for up to 5 s while the server still counts connections that just left.
fn connect_soon(path: &Path, name: &str) -> Frontend {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Frontend::connect(path, FrontendOptions::tool(name)) {
            Ok(f) => return f,
            Err(e) if Instant::now() > deadline => panic!("{name}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[test]
fn connections_past_max_connections_are_closed_and_others_keep_working() {
    let b = Backend::start(&["--max-connections", "2"]);
    let mut f1 = connect_soon(&b.socket, "one");
    let mut f2 = connect_soon(&b.socket, "two");
    assert!(
        Frontend::connect(&b.socket, FrontendOptions::tool("three")).is_err(),
        "a third frontend is refused"
    );
    assert_eq!(f1.config_read(0, 0, 0, 0, 4).unwrap(), 0x29c0_8086);
    assert_eq!(f2.config_read(0, 0, 0x10, 0, 4).unwrap(), 0x000c_1b36);
    drop(f1);
    let mut f3 = connect_soon(&b.socket, "three-again");
    assert_eq!(f3.config_read(0, 0, 0, 0, 4).unwrap(), 0x29c0_8086);
    assert_eq!(f2.config_read(0, 0, 0, 0, 4).unwrap(), 0x29c0_8086);
}

/// A frontend that sends requests and never reads the replies: pcierc stops reading from it
/// once 256 KiB of replies wait (its writes then block in the kernel), keeps serving everyone
/// else, and drops nothing: when it reads at last, every reply is there, in order.
#[test]
fn a_frontend_that_does_not_read_is_back_pressured_alone() {
    let mut b = Backend::start(&[]);
    let mut hog = UnixStream::connect(&b.socket).unwrap();
    hog.set_nonblocking(true).unwrap();
    // GetFeatures needs no handshake: a 24-byte request, a 32-byte reply.
    let request = |id: u64| MsgHeader::request(FrontendReq::GetFeatures as u32, 0, id);
    let mut sent = 0u64;
    let mut blocked_since = None;
    while blocked_since.is_none_or(|t: Instant| t.elapsed() < Duration::from_millis(500)) {
        match hog.write(request(sent + 1).as_slice()) {
            Ok(n) => {
                assert_eq!(n, HEADER_SIZE, "small writes are all or nothing");
                sent += 1;
                blocked_since = None;
                assert!(sent < 1 << 20, "pcierc never stopped reading");
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                blocked_since.get_or_insert_with(Instant::now);
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("the hog was dropped after {sent} requests: {e}"),
        }
    }
    // More replies were produced than fit the socket: pcierc holds some, then stopped reading.
    assert!(
        sent * 32 > 256 << 10,
        "only {sent} requests before blocking"
    );

    let mut good = Frontend::connect(&b.socket, FrontendOptions::tool("good")).unwrap();
    for _ in 0..100 {
        assert_eq!(good.config_read(0, 0, 0, 0, 4).unwrap(), 0x29c0_8086);
    }
    assert!(
        b.rss_kib().is_some_and(|kib| kib < 256 << 10),
        "memory bounded"
    );

    // Now read: every reply, in order.
    hog.set_nonblocking(false).unwrap();
    hog.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reply = [0u8; 32];
    for id in 1..=sent {
        hog.read_exact(&mut reply)
            .unwrap_or_else(|e| panic!("reply {id} of {sent}: {e}"));
        let h: MsgHeader = read_obj(&reply[..HEADER_SIZE]).unwrap();
        assert!(h.is_reply() && h.status == 0 && h.size == 8, "{h:?}");
        assert_eq!(h.id, id);
    }
    assert!(b.alive());
}

/// A process holding control clients (python3): connects until it holds `n` greeted ones or
/// 5 s pass, prints how many it holds, and keeps them until its stdin closes.
fn holder(control: &Path, n: usize) -> (Child, usize) {
    const SCRIPT: &str = r#"
import socket, sys, time
path, want = sys.argv[1], int(sys.argv[2])
held, deadline = [], time.time() + 5
while len(held) < want and time.time() < deadline:
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.settimeout(5)
    try:
        d = s.recv(4096)
    except OSError:
        d = b""
    if d.startswith(b'{"QMP"'):
        held.append(s)
    else:
        s.close()
        time.sleep(0.02)
print(len(held), flush=True)
sys.stdin.read()
"#;
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(control)
        .arg(n.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    let mut out = child.stdout.take().expect("stdout");
    let mut byte = [0u8; 1];
    while out.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
        line.push(byte[0] as char);
    }
    let held = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("holder said {line:?}"));
    (child, held)
}

#[test]
fn control_clients_past_sixteen_or_four_per_process_are_closed_and_one_that_does_not_read_is_dropped(
) {
    if !pcierc_tests::process::tool_available("python3") {
        eprintln!("\n*** SKIP: python3 is absent: control-client limits across processes not tested ***\n");
        return;
    }
    let b = Logged::start(&[]);
    let greeted = |s: &mut UnixStream| {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4096];
        matches!(s.read(&mut buf), Ok(n) if n > 0 && buf[..n].starts_with(b"{\"QMP\""))
    };
    // MAX_CONTROL_CONNECTIONS_PER_PEER = 4 from this process (the readiness probe may still be
    // counted for a moment), then a fifth is closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut clients: Vec<UnixStream> = Vec::new();
    while clients.len() < 4 {
        let mut s = UnixStream::connect(&b.control).unwrap();
        if greeted(&mut s) {
            clients.push(s);
        } else {
            assert!(Instant::now() < deadline, "only {} clients", clients.len());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(
        qmp_first_bytes(&b.control),
        "",
        "a fifth client of one process is closed"
    );
    // Other processes get theirs: three more hold 4 each, 16 in all (MAX_CONTROL_CONNECTIONS);
    // then a 17th is closed, whichever process asks.
    let mut holders: Vec<Child> = (0..3)
        .map(|i| {
            let (c, held) = holder(&b.control, 4);
            assert_eq!(held, 4, "holder {i}");
            c
        })
        .collect();
    let (extra, held) = holder(&b.control, 1);
    holders.push(extra);
    assert_eq!(held, 0, "a 17th client (another process) is closed");
    drop(clients.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !greeted(&mut UnixStream::connect(&b.control).unwrap()) {
        assert!(Instant::now() < deadline, "a freed place is not reused");
        std::thread::sleep(Duration::from_millis(20));
    }
    for mut h in holders {
        drop(h.stdin.take());
        let _ = h.wait();
    }

    // A client that sends commands and never reads: dropped once 4 MiB of replies wait for it.
    let mut hog = clients.pop().unwrap();
    hog.set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    hog.write_all(b"{\"execute\":\"qmp_capabilities\"}")
        .unwrap();
    let command = b"{\"execute\":\"query-pci\"}".repeat(64);
    let mut written = 0usize;
    let err = loop {
        match hog.write(&command) {
            Ok(n) => written += n,
            Err(e) => break e,
        }
        assert!(written < 256 << 20, "never dropped");
    };
    assert!(
        matches!(
            err.kind(),
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset
        ),
        "{err}"
    );
    // Everyone else is still served.
    let mut ok = clients.pop().unwrap();
    ok.write_all(b"{\"execute\":\"qmp_capabilities\",\"id\":1}")
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = ok.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("\"return\""));
}
