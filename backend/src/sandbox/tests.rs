//! Each mode in a child process (this test binary run again for one test): the filter is
//! installed, then a system call outside pcierc's list (`getppid`) is made.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use super::*;

const CHILD_ENV: &str = "PCIERC_SANDBOX_TEST_CHILD";
const SURVIVED: &str = "child: survived the unlisted call";

/// The child's side: install `mode`'s filter, report the Seccomp field of /proc/self/status,
/// make a call outside the list, and report that it survived.
#[test]
fn child() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return; // run as an ordinary test: nothing to do
    };
    let mode = match mode.as_str() {
        "kill" => SeccompMode::Kill,
        "log" => SeccompMode::Log,
        _ => SeccompMode::Off,
    };
    apply(mode, &syscalls::pcierc(), "test").expect("installing the filter");
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let seccomp = status
        .lines()
        .find(|l| l.starts_with("Seccomp:"))
        .unwrap_or("Seccomp: ?");
    println!("child: {seccomp}");
    // SAFETY: getppid takes no arguments and cannot fail.
    let ppid = unsafe { libc::syscall(libc::SYS_getppid) };
    println!("{SURVIVED} (ppid {ppid})");
}

/// Run [`child`] in a new process with `mode`: its exit status and standard output.
fn run_child(mode: &str) -> (std::process::ExitStatus, String) {
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "sandbox::tests::child", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(CHILD_ENV, mode)
        .output()
        .expect("running the child");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn kill_mode_kills_the_process_at_a_call_outside_the_list() {
    let (status, out) = run_child("kill");
    assert!(out.contains("Seccomp:\t2"), "filter mode: {out}");
    assert!(!out.contains(SURVIVED), "{out}");
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{status}: {out}");
}

#[test]
fn log_mode_lets_the_call_through_and_off_installs_nothing() {
    let (status, out) = run_child("log");
    assert!(status.success(), "{status}: {out}");
    assert!(
        out.contains("Seccomp:\t2") && out.contains(SURVIVED),
        "{out}"
    );
    let (status, out) = run_child("off");
    assert!(status.success(), "{status}: {out}");
    assert!(
        out.contains("Seccomp:\t0") && out.contains(SURVIVED),
        "{out}"
    );
}

#[test]
fn the_filter_compiles_for_this_architecture() {
    assert!(program(SeccompMode::Kill, &syscalls::pcierc())
        .expect("a filter")
        .is_some_and(|p| !p.is_empty()));
    assert!(program(SeccompMode::Off, &[]).expect("no filter").is_none());
}
