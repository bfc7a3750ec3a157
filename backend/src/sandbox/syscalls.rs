//! The system calls each program needs once it is set up, grouped by what makes them. Built by
//! reading the code paths and checked by running the end-to-end tests with `--seccomp=log`
//! (the kernel logs every call outside the list; `docs/security.md` says how) and then under
//! the default, `kill`.
//!
//! Numbers are the running architecture's (`libc::SYS_*`); calls that exist only on x86-64
//! (`open`, `stat`, `poll`, `epoll_wait`, ...) are added there, as the C library and the Rust
//! standard library may use them.

use libc::c_long;

/// Memory, threads' housekeeping, time, signals and exit: what any Rust program keeps doing.
const RUNTIME: &[c_long] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_getrandom,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // A panic's message and backtrace (symbols read from the binary).
    libc::SYS_tgkill,
    libc::SYS_getcwd,
    libc::SYS_readlinkat,
];

/// A new thread's own set-up in the C library (robust futex list, restartable sequences),
/// allowed by [`super::threaded_programs`] with `clone` (threads only) and `prctl`
/// (`PR_SET_NAME` only): pcierc starts a thread per frontend once it has negotiated.
pub const THREADS: &[c_long] = &[libc::SYS_set_robust_list, libc::SYS_rseq];

/// Descriptors: reads and writes on sockets, eventfds, the signalfd and files; polling.
const DESCRIPTORS: &[c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_lseek,
    libc::SYS_close,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_fcntl,
    libc::SYS_ioctl,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_ppoll,
    libc::SYS_pselect6,
];

/// Unix sockets: accepting peers, their credentials, messages with descriptors, shutting
/// down; `sd_notify`'s datagram (`STOPPING=1` at exit) and the test `connect()` a socket
/// path gets before it is replaced.
const SOCKETS: &[c_long] = &[
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    libc::SYS_socket,
    libc::SYS_connect,
];

/// Files: the state file (a temporary file written, synced and renamed over it, the directory
/// synced), the pid file and socket files removed at exit.
const FILES: &[c_long] = &[
    libc::SYS_openat,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlinkat,
    libc::SYS_ftruncate,
];

/// The x86-64 forms of the above that the C library may still use there.
#[cfg(target_arch = "x86_64")]
const LEGACY: &[c_long] = &[
    libc::SYS_open,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_poll,
    libc::SYS_select,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_create,
    libc::SYS_rename,
    libc::SYS_unlink,
    libc::SYS_readlink,
    libc::SYS_time,
    libc::SYS_arch_prctl,
];
#[cfg(not(target_arch = "x86_64"))]
const LEGACY: &[c_long] = &[];

/// What `pcierc` needs once it serves: its event loop (frontends, QMP clients, signals),
/// interrupt eventfds and configuration snapshots (memfds mapped shared), the state file, and
/// its exit (socket files and pid file removed, `STOPPING=1`).
pub fn pcierc() -> Vec<c_long> {
    let mut v: Vec<c_long> = [RUNTIME, DESCRIPTORS, SOCKETS, FILES, LEGACY].concat();
    v.sort_unstable();
    v.dedup();
    v
}

/// What `pcierc-xen-shim` needs once it serves: pcierc's calls less accepting connections
/// (its Xen devices are descriptors it polls, reads, writes and issues `ioctl`s on, its ioreq
/// page is already mapped, pcierc is a unix socket it is connected to), the pid file written
/// when it reports ready, and its teardown (`ioctl`s, `munmap`, `close`).
pub fn xen_shim() -> Vec<c_long> {
    let not_needed = [libc::SYS_accept, libc::SYS_accept4, libc::SYS_getsockname];
    pcierc()
        .into_iter()
        .filter(|nr| !not_needed.contains(nr))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lists_hold_no_process_creation_or_privilege_calls() {
        // clone (threads only), clone3 (ENOSYS) and prctl (PR_SET_NAME) are conditional
        // rules of `threaded_programs`, tested in `sandbox/tests.rs`.
        let all = [pcierc(), xen_shim()].concat();
        for forbidden in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_prctl,
            libc::SYS_ptrace,
            libc::SYS_setuid,
            libc::SYS_mount,
            libc::SYS_bpf,
            libc::SYS_getppid,
        ] {
            assert!(
                !all.contains(&forbidden) && !THREADS.contains(&forbidden),
                "{forbidden} is allowed"
            );
        }
    }
}
