//! `--seccomp`: the real `pcierc` runs under its system call filter once set up (the default,
//! `kill`, and `log`), or without one (`off`), as `/proc/PID/status` shows; every other
//! end-to-end test runs under the default. That a call outside the list kills the process
//! (`kill`) or goes through (`log`, `off`) is shown in `backend/src/sandbox/tests.rs`.

use std::time::Duration;

use pcierc_protocol::{Frontend, FrontendOptions};
use pcierc_tests::process::Backend;
use pcierc_tests::qmp_socket::QmpSocket;
use serde_json::{json, Value};

/// The `Seccomp:` field of the process's status: 0 none, 2 a filter.
fn seccomp_field(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .map(|v| v.trim().to_string())
        .expect("a Seccomp field")
}

#[test]
fn pcierc_serves_under_its_filter_in_kill_and_log_modes_and_without_one_when_off() {
    for (args, want) in [
        (&[][..], "2"),
        (&["--seccomp", "kill"][..], "2"),
        (&["--seccomp", "log"][..], "2"),
        (&["--seccomp", "off"][..], "0"),
    ] {
        let mut b = Backend::start_with_control(args);
        // A little of everything: handshake, snapshot, writes, reads, topology, a QMP client.
        let mut f = Frontend::connect(&b.socket, FrontendOptions::vmm("vmm")).expect("frontend");
        f.pio_write(0xcf8, 4, 0x8000_0060).unwrap();
        f.pio_write(0xcfc, 4, 0xb000_0001).unwrap();
        f.config_write(0, 0, 0x10, 0x204, 4, 0x1234_5678).unwrap();
        assert_eq!(f.config_read(0, 0, 0x10, 0x204, 4).unwrap(), 0x1234_5678);
        assert!(f.topology().is_ok());
        let control = b.control.clone().expect("control socket");
        for (cmd, arguments) in [
            ("query-pci", Value::Null),
            (
                "device_add",
                json!({"driver": "e1000e", "id": "net0", "bus": "rp2", "owner": "qemu"}),
            ),
        ] {
            let mut qmp = QmpSocket::connect(&control, Duration::from_secs(10)).expect("QMP");
            let reply = qmp.execute(cmd, arguments).expect("QMP reply");
            assert!(reply.is_ok(), "{args:?} {cmd}: {reply:?}");
        }
        assert_eq!(seccomp_field(b.pid()), want, "{args:?}");
        drop(f);
        assert!(b.alive(), "{args:?}: pcierc still serving");
    }
}

#[test]
fn a_bad_seccomp_mode_is_a_cli_error() {
    let out = std::process::Command::new(pcierc_tests::process::pcierc_bin())
        .args(["--socket-path", "/nonexistent/s", "--seccomp", "trap"])
        .output()
        .expect("running pcierc");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--seccomp"));
}
