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

#[test]
fn arguments_are_validated() {
    let (code, err) = shim(&["--backend-socket", "/x"]);
    assert_eq!(code, 2);
    assert!(err.contains("--domid"), "{err}");
    let (code, err) = shim(&["--domid", "0", "--backend-socket", "/x"]);
    assert_eq!(code, 2);
    assert!(err.contains("not a guest domain id"), "{err}");
    let (code, err) = shim(&[
        "--domid",
        "3",
        "--backend-socket",
        "/x",
        "--peer-server",
        "qemu",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("OWNER=ID"), "{err}");
    let (code, err) = shim(&[
        "--domid",
        "3",
        "--backend-socket",
        "/x",
        "--peer-server",
        "qemu=9",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("0 to 7"), "{err}");
    let base = ["--domid", "3", "--backend-socket", "/x"];
    let (code, err) = shim(&[&base[..], &["--runas", "0:0"]].concat());
    assert_eq!(code, 2);
    assert!(err.contains("would keep root's privileges"), "{err}");
    let (code, err) = shim(&[&base[..], &["--runas", "no-such-user-pcierc"]].concat());
    assert_eq!(code, 2);
    assert!(err.contains("no such user"), "{err}");
    let (code, err) = shim(&[&base[..], &["--chroot", "/nonexistent-jail"]].concat());
    assert_eq!(code, 2);
    assert!(err.contains("--chroot /nonexistent-jail"), "{err}");
    let (code, err) = shim(&[&base[..], &["--log-level", "loud"]].concat());
    assert_eq!(code, 2);
    assert!(err.contains("--log-level"), "{err}");
}
