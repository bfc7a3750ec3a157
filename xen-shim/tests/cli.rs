//! The `pcierc-xen-shim` binary: argument checks, and on a host without Xen a clear error
//! naming the missing device before anything else is tried.

use std::process::Command;

fn shim(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pcierc-xen-shim"))
        .args(args)
        .output()
        .expect("running pcierc-xen-shim");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn without_dev_xen_it_names_what_is_missing() {
    if std::path::Path::new("/dev/xen/privcmd").exists() {
        eprintln!("SKIP: this host has /dev/xen/privcmd");
        return;
    }
    let (code, err) = shim(&[
        "--domid",
        "5",
        "--backend-socket",
        "/nonexistent/pcierc.sock",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("/dev/xen/privcmd"), "{err}");
    assert!(err.contains("No such file or directory"), "{err}");
    assert!(err.contains("xen-privcmd"), "says what to load: {err}");
    assert!(
        !err.contains("pcierc.sock"),
        "the Xen devices are checked before pcierc's socket: {err}"
    );
}

/// `args` are refused as a usage error (exit 2) whose message contains `says`.
fn refused(args: &[&str], says: &str) {
    let (code, err) = shim(args);
    assert_eq!(code, 2, "{args:?}: {err}");
    assert!(err.contains(says), "{args:?}: {err}");
}

#[test]
fn arguments_are_validated() {
    refused(&["--backend-socket", "/x"], "--domid");
    refused(
        &["--domid", "0", "--backend-socket", "/x"],
        "not a guest domain id",
    );
    let base = ["--domid", "3", "--backend-socket", "/x"];
    let with = |extra: &[&'static str]| [&base[..], extra].concat();
    refused(&with(&["--peer-server", "qemu"]), "OWNER=ID");
    refused(&with(&["--peer-server", "qemu=9"]), "0 to 7");
    refused(&with(&["--runas", "0:0"]), "would keep root's privileges");
    refused(&with(&["--runas", "no-such-user-pcierc"]), "no such user");
    refused(
        &with(&["--chroot", "/nonexistent-jail"]),
        "--chroot /nonexistent-jail",
    );
    refused(&with(&["--log-level", "loud"]), "--log-level");
}
