//! Each mode in a child process (this test binary run again for one test): the filter is
//! installed, then a system call outside pcierc's list (`getppid`) is made; and pcierc's
//! threaded filter: a thread may be started, a process may not.

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

const THREADS_ENV: &str = "PCIERC_SANDBOX_TEST_THREADS";
const THREAD_RAN: &str = "child: a thread ran";
const FORKED: &str = "child: fork returned";

/// The child's side for pcierc's threaded filter (`kill`): start a named thread (clone with
/// CLONE_THREAD after clone3's ENOSYS, set_robust_list, rseq, prctl(PR_SET_NAME)), call clone3
/// directly (ENOSYS expected), then fork (a clone without CLONE_THREAD: killed).
#[test]
fn threads_child() {
    if std::env::var_os(THREADS_ENV).is_none() {
        return;
    }
    apply_threaded(SeccompMode::Kill, &syscalls::pcierc(), "test").expect("installing");
    let t = std::thread::Builder::new()
        .name("frontend-1".into())
        .spawn(|| 7)
        .expect("spawning a thread under the filter");
    assert_eq!(t.join().expect("thread"), 7);
    println!("{THREAD_RAN}");
    // SAFETY: clone3 with a null argument and size 0 reads no memory; the filter answers
    // before the kernel would look at it.
    let r = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) };
    let errno = std::io::Error::last_os_error().raw_os_error();
    println!("child: clone3 {r} errno {errno:?}");
    // SAFETY: fork in a single-threaded moment of a test child; the child (if any) exits at once.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: leaving the forked child without running anything else.
        unsafe { libc::_exit(0) };
    }
    println!("{FORKED} {pid}");
}

#[test]
fn the_threaded_filter_allows_threads_and_kills_at_fork() {
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "sandbox::tests::threads_child", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(THREADS_ENV, "1")
        .output()
        .expect("running the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(THREAD_RAN), "{}: {stdout}", out.status);
    assert!(
        stdout.contains(&format!("clone3 -1 errno Some({})", libc::ENOSYS)),
        "{stdout}"
    );
    assert!(!stdout.contains(FORKED), "{stdout}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSYS),
        "{}: {stdout}",
        out.status
    );
}

#[test]
fn the_threaded_filter_compiles_for_this_architecture() {
    let progs = threaded_programs(SeccompMode::Kill, &syscalls::pcierc())
        .expect("filters")
        .expect("two programs");
    assert!(progs.iter().all(|p| !p.is_empty()));
    assert!(threaded_programs(SeccompMode::Off, &[])
        .expect("none")
        .is_none());
}
