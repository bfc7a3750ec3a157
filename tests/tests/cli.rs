//! The `pcierc` command line: dump decoded by the real lspci, capabilities, start-up validation,
//! and serving on an inherited fd.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};

use pcierc_protocol::{Frontend, FrontendOptions};
use pcierc_tests::process::{pcierc_bin, tool_available, Backend, ScratchDir};

fn pcierc(args: &[&str]) -> std::process::Output {
    Command::new(pcierc_bin())
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("running pcierc")
}

#[test]
fn dump_of_the_default_topology_decodes_with_lspci() {
    let out = pcierc(&["dump"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.matches("\n000: ").count() + usize::from(text.starts_with("000: ")),
        5,
        "five functions"
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.len() == 52 && l.as_bytes()[3] == b':')
            .count(),
        5 * 256
    );
    if !tool_available("lspci") {
        return;
    }
    let dir = ScratchDir::new("dump");
    let file = dir.0.join("rc.xxxx");
    std::fs::write(&file, &text).unwrap();
    let lspci = Command::new("lspci")
        .arg("-F")
        .arg(&file)
        .arg("-vvv")
        .output()
        .unwrap();
    let decoded = String::from_utf8_lossy(&lspci.stdout);
    assert!(
        decoded.contains(
            "00:00.0 Host bridge: Intel Corporation 82G33/G31/P35/P31 Express DRAM Controller"
        ),
        "{decoded}"
    );
    for f in 0..4 {
        let head = format!("00:02.{f} PCI bridge: Red Hat, Inc. QEMU PCIe Root port");
        let start = decoded
            .find(&head)
            .unwrap_or_else(|| panic!("{head} missing:\n{decoded}"));
        let block = &decoded[start..];
        let block = &block[..block[1..].find("\n00:").map_or(block.len(), |i| i + 1)];
        assert!(block.contains("Express (v2) Root Port (Slot+)"), "{block}");
        assert!(block.contains(&format!("Slot #{}", f + 1)), "{block}");
        assert!(block.contains("MSI-X: Enable- Count=1"), "{block}");
        assert!(block.contains("Advanced Error Reporting"), "{block}");
        assert!(block.contains("Access Control Services"), "{block}");
    }
}

#[test]
fn dump_of_a_running_backend_matches_the_local_dump() {
    let b = Backend::start(&[]);
    let remote = pcierc(&["dump", "--connect", b.socket.to_str().unwrap()]);
    assert!(
        remote.status.success(),
        "{}",
        String::from_utf8_lossy(&remote.stderr)
    );
    let local = pcierc(&["dump"]);
    assert!(!local.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&remote.stdout),
        String::from_utf8_lossy(&local.stdout)
    );
}

#[test]
fn print_capabilities_is_json() {
    let out = pcierc(&["--print-capabilities"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["type"], "pcie-root-complex");
    assert_eq!(v["protocol-version"], 1);
    assert_eq!(v["root-ports"].as_array().map(Vec::len), Some(4));
    assert!(v["protocol-features"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "backend-channel"));
}

#[test]
fn bad_topologies_are_refused_at_start_naming_the_item() {
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "--device",
                "pcie-root-port,id=rp9,chassis=9,slot=9,addr=0x2.0",
            ],
            "rp9: address 02.0 is already used by rp1",
        ),
        (
            &[
                "--device",
                "pcie-root-port,id=rp9,chassis=1,slot=1,addr=0x3.0",
            ],
            "rp9: chassis 1 slot 1 is already used by rp1",
        ),
        (
            &[
                "--device",
                "pcie-root-port,id=rp9,chassis=9,slot=9,addr=0x3.0,colour=red",
            ],
            "unknown property 'colour'",
        ),
        (
            &["--topology", "/nonexistent/topology.toml"],
            "/nonexistent/topology.toml",
        ),
    ];
    // `dump` loads the topology as serving does (--print-capabilities ignores bad options).
    for (args, want) in cases {
        let mut all = vec!["dump"];
        all.extend_from_slice(args);
        let out = pcierc(&all);
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: '{err}' should name '{want}'");
        assert_eq!(
            err.lines().count(),
            1,
            "{args:?}: one line per failure: '{err}'"
        );
    }
    let dir = ScratchDir::new("toml");
    let file = dir.0.join("t.toml");
    std::fs::write(&file, "[[root-port]]\nid = 'a'\naddr = '0x3'\nchasis = 1\n").unwrap();
    let out = pcierc(&["dump", "--topology", file.to_str().unwrap()]);
    assert!(!out.status.success());
    // One line, with where in the file (not the TOML parser's multi-line rendering).
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "pcierc: invalid topology: {}: line 4, column 1: unknown field `chasis`",
        file.display()
    );
    assert!(err.starts_with(&want), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn refuses_to_replace_a_regular_file() {
    let dir = ScratchDir::new("nosock");
    let path = dir.0.join("precious");
    std::fs::write(&path, "data").unwrap();
    let out = pcierc(&["--socket-path", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "data");
}

#[test]
fn serves_on_an_inherited_listening_fd() {
    let dir = ScratchDir::new("fd");
    let path = dir.0.join("s");
    let listener = UnixListener::bind(&path).unwrap();
    let fd = listener.as_raw_fd();
    // Clear CLOEXEC so the child inherits the listening socket as fd `fd`.
    // SAFETY: fcntl on a valid fd we own.
    unsafe {
        libc::fcntl(
            fd,
            libc::F_SETFD,
            libc::fcntl(fd, libc::F_GETFD) & !libc::FD_CLOEXEC,
        )
    };
    let mut child = Command::new(pcierc_bin())
        .args(["--fd", &fd.to_string()])
        .env("RUST_LOG", "off")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    drop(listener);
    let mut fe = Frontend::connect(&path, FrontendOptions::tool("t-fd"))
        .expect("connect through inherited fd");
    assert_eq!(fe.config_read(0, 0, 0, 0, 4).unwrap(), 0x29c0_8086);
    let _ = child.kill();
    let _ = child.wait();
}

/// `pcierc --print-capabilities --bogus` logs one warning (the ignored option); its stderr.
fn capabilities_warning(log_level: Option<&str>, env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(pcierc_bin());
    cmd.args(["--print-capabilities", "--bogus"]);
    if let Some(l) = log_level {
        cmd.args(["--log-level", l]);
    }
    cmd.env_remove("RUST_LOG").env_remove("RUST_LOG_STYLE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("running pcierc");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn log_level_overrides_rust_log_and_piped_logs_have_no_colours() {
    let warned = |s: &str| s.contains("WARN") && s.contains("ignoring the other options");
    // Default: info, so the warning shows, without escape codes (stderr is a pipe here).
    let err = capabilities_warning(None, &[]);
    assert!(warned(&err), "{err}");
    assert!(!err.contains('\x1b'), "colours in piped stderr: {err:?}");
    // Colours can be forced, so the check above can see them.
    let err = capabilities_warning(None, &[("RUST_LOG_STYLE", "always")]);
    assert!(err.contains('\x1b'), "{err:?}");
    // RUST_LOG applies without --log-level ...
    assert!(!warned(&capabilities_warning(None, &[("RUST_LOG", "off")])));
    // ... and --log-level wins over it, both ways.
    let err = capabilities_warning(Some("warn"), &[("RUST_LOG", "off")]);
    assert!(warned(&err), "{err}");
    let err = capabilities_warning(Some("error"), &[("RUST_LOG", "trace")]);
    assert!(!warned(&err), "{err}");
}

/// rp1's dump line at 0x050 (Device Capabilities at 0x58): Extended Tag Field Supported (0x20)
/// on pc-q35-10.0 only.
fn rp1_devcap_line(args: &[&str]) -> String {
    let mut all = vec!["dump"];
    all.extend_from_slice(args);
    let out = pcierc(&all);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let rp1 = text.split("00:02.0 rp1\n").nth(1).expect("rp1 in the dump");
    let line = rp1
        .lines()
        .find(|l| l.starts_with("050:"))
        .expect("line 050");
    line.to_string()
}

#[test]
fn machine_type_from_the_command_line_or_the_topology_file() {
    let devcap_7_2 = "050: 00 08 00 00 10 48 42 01 00 80 00 00 00 00 00 00";
    let devcap_10_0 = "050: 00 08 00 00 10 48 42 01 20 80 00 00 00 00 00 00";
    assert_eq!(rp1_devcap_line(&[]), devcap_7_2);
    assert_eq!(rp1_devcap_line(&["--machine", "pc-q35-7.2"]), devcap_7_2);
    assert_eq!(rp1_devcap_line(&["--machine", "pc-q35-10.0"]), devcap_10_0);
    assert_eq!(
        rp1_devcap_line(&["-M", "q35"]),
        devcap_10_0,
        "q35 is the newest"
    );
    let dir = ScratchDir::new("machine");
    let file = dir.0.join("t.toml");
    let topology = pcierc_backend::topology::spec::DEFAULT_TOPOLOGY;
    std::fs::write(&file, format!("machine = \"pc-q35-10.0\"\n{topology}")).unwrap();
    let path = file.to_str().unwrap();
    assert_eq!(rp1_devcap_line(&["--topology", path]), devcap_10_0);
    assert_eq!(
        rp1_devcap_line(&["--topology", path, "--machine", "pc-q35-7.2"]),
        devcap_7_2,
        "--machine overrides the file"
    );
    let out = pcierc(&["dump", "--machine", "pc-q35-9.2"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown machine type 'pc-q35-9.2'"), "{err}");
    std::fs::write(&file, format!("machine = \"pc\"\n{topology}")).unwrap();
    let out = pcierc(&["dump", "--topology", path]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown machine type 'pc'"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}
