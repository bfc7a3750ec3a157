//! `contrib/systemd/`: the units pass `systemd-analyze verify` (with no warning at all), and
//! what they describe works with pcierc's rules: the `ExecStart=` command line, run with the
//! sockets and `FileDescriptorName=`s of the two socket units (through systemd's own
//! `systemd-socket-activate`), says `READY=1`, serves both sockets, writes its state under
//! `StateDirectory=` and stops cleanly on SIGTERM. Skipped loudly without the tools; a failure
//! when `PCIERC_REQUIRE_TOOLS` is set (CI installs systemd).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pcierc_protocol::{Frontend, FrontendOptions};
use pcierc_tests::process::{pcierc_bin, tool_available, ScratchDir};

const UNITS: [&str; 3] = ["pcierc@.service", "pcierc@.socket", "pcierc-qmp@.socket"];

fn contrib() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/systemd")
}

/// `systemd-analyze verify` of the units, instantiated for `vm1`, in a root holding them, the
/// host's system units (for the default dependencies) and the binary at /usr/bin/pcierc. Its
/// output (empty when nothing is wrong).
fn verify(units: &Path) -> (bool, String) {
    let root = ScratchDir::new("sd-root");
    let sys = root.0.join("etc/systemd/system");
    std::fs::create_dir_all(&sys).unwrap();
    std::fs::create_dir_all(root.0.join("usr/bin")).unwrap();
    std::fs::copy(pcierc_bin(), root.0.join("usr/bin/pcierc")).unwrap();
    let host_units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .find(|d| Path::new(d).join("sysinit.target").exists())
        .expect("the host's systemd units");
    std::fs::create_dir_all(root.0.join("usr/lib/systemd")).unwrap();
    let st = Command::new("cp")
        .args(["-a", host_units])
        .arg(root.0.join("usr/lib/systemd/system"))
        .status()
        .unwrap();
    assert!(st.success());
    for u in UNITS {
        std::fs::copy(units.join(u), sys.join(u)).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", root.0.display()))
        .args([
            "pcierc@vm1.service",
            "pcierc@vm1.socket",
            "pcierc-qmp@vm1.socket",
        ])
        .output()
        .expect("running systemd-analyze");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn the_units_pass_systemd_analyze_verify_without_a_warning() {
    if !tool_available("systemd-analyze") {
        return;
    }
    let (ok, text) = verify(&contrib());
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );
    // The check sees mistakes: a bad value is only a warning to systemd, and fails here.
    let bad = ScratchDir::new("sd-bad");
    for u in UNITS {
        std::fs::copy(contrib().join(u), bad.0.join(u)).unwrap();
    }
    let svc = bad.0.join("pcierc@.service");
    let text = std::fs::read_to_string(&svc).unwrap();
    std::fs::write(
        &svc,
        text.replace("ProtectSystem=strict", "ProtectSystem=sturdy"),
    )
    .unwrap();
    let (_, text) = verify(&bad.0);
    assert!(
        text.contains("ProtectSystem") || text.contains("protect system"),
        "{text}"
    );
}

/// `Key=value` lines of a unit file (the last one of each key).
fn keys(unit: &str) -> BTreeMap<String, String> {
    std::fs::read_to_string(contrib().join(unit))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn what_the_units_describe_serves_both_sockets_under_socket_activation() {
    if !tool_available("systemd-socket-activate") {
        return;
    }
    let dir = ScratchDir::new("sd-units");
    let svc = keys("pcierc@.service");
    assert_eq!(svc["Type"], "notify");
    assert_eq!(svc["StateDirectory"], "pcierc");
    // Sockets in the order the service lists them, as systemd passes them.
    let mut args: Vec<String> = Vec::new();
    let mut names = Vec::new();
    let mut paths = Vec::new();
    for unit in svc["Sockets"].split_whitespace() {
        let file = unit.replace("@%i.", "@.");
        let sock = keys(&file);
        assert_eq!(sock["Service"], "pcierc@%i.service", "{file}");
        let path = sock["ListenStream"]
            .replace("/run/pcierc", &dir.0.display().to_string())
            .replace("%i", "vm1");
        args.extend(["-l".into(), path.clone()]);
        names.push(sock["FileDescriptorName"].clone());
        paths.push(PathBuf::from(path));
    }
    assert_eq!(names, ["pcierc", "control"]);
    // ExecStart=, with the specifiers and an empty $PCIERC_OPTS, run from this build.
    let state_dir = dir.0.join("state");
    std::fs::create_dir_all(state_dir.join("pcierc")).unwrap();
    let exec: Vec<String> = svc["ExecStart"]
        .replace("%S", &state_dir.display().to_string())
        .replace("%i", "vm1")
        .split_whitespace()
        .filter(|a| *a != "$PCIERC_OPTS")
        .map(String::from)
        .collect();
    assert_eq!(exec[0], "/usr/bin/pcierc");
    let notify = dir.0.join("notify");
    let rx = UnixDatagram::bind(&notify).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut child = KillOnDrop(
        Command::new("systemd-socket-activate")
            .args(&args)
            .arg(format!("--fdname={}", names.join(":")))
            .arg("-E")
            .arg(format!("NOTIFY_SOCKET={}", notify.display()))
            .args(["-E", "RUST_LOG=warn"])
            .arg(pcierc_bin())
            .args(&exec[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !paths.iter().all(|p| p.exists()) {
        assert!(Instant::now() < deadline, "the sockets did not appear");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The first connection starts pcierc (as systemd would); it then says it is ready.
    let mut fe = Frontend::connect(&paths[0], FrontendOptions::tool("units")).unwrap();
    let mut buf = [0u8; 64];
    let n = rx.recv(&mut buf).expect("READY=1");
    assert_eq!(&buf[..n], b"READY=1");
    assert_eq!(fe.config_read(0, 0, 0, 0, 4).unwrap(), 0x29c0_8086);
    let qmp = UnixStream::connect(&paths[1]).unwrap();
    qmp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut greeting = String::new();
    BufReader::new(&qmp).read_line(&mut greeting).unwrap();
    assert!(greeting.starts_with("{\"QMP\""), "{greeting}");
    assert!(state_dir.join("pcierc/vm1.state").exists(), "state file");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.0.id() as libc::pid_t, libc::SIGTERM) };
    let st = child.0.wait().unwrap();
    assert_eq!(st.code(), Some(0));
    let n = rx.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
}

/// A child killed (and reaped) if the test fails before it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
