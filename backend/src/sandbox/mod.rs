//! seccomp: once a program is set up (sockets open, state restored), every one of its threads
//! runs under an allow-list of the system calls it needs from then on ([`syscalls`]), compiled
//! to BPF by rust-vmm's `seccompiler` and installed with `SECCOMP_FILTER_FLAG_TSYNC` (and
//! `PR_SET_NO_NEW_PRIVS`). `--seccomp=kill|log|off`, as virtiofsd offers: a call outside the
//! list kills the process with `SIGSYS`, or is allowed and logged by the kernel (audit records
//! `type=1326` in `dmesg`, to build or check the list), or there is no filter at all.

pub mod syscalls;

use std::collections::BTreeMap;

use log::info;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use thiserror::Error;

/// What happens to a system call outside the allow-list (`--seccomp`).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompMode {
    /// The process is killed (`SIGSYS`).
    #[default]
    Kill,
    /// The call is allowed and the kernel logs it.
    Log,
    /// No filter is installed.
    Off,
}

/// Why the filter could not be installed.
#[derive(Debug, Error)]
pub enum SandboxError {
    /// seccompiler has no BPF for this architecture.
    #[error("seccomp: no filter for this architecture ({0}); run with --seccomp=off")]
    Arch(&'static str),
    /// The filter did not compile.
    #[error("seccomp: building the filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("seccomp: installing the filter: {0}")]
    Install(#[from] seccompiler::Error),
}

/// What a call outside the list gets under `mode`, and this machine's architecture; `None`
/// for [`SeccompMode::Off`].
fn mismatch_and_arch(
    mode: SeccompMode,
) -> Result<Option<(SeccompAction, TargetArch)>, SandboxError> {
    let mismatch = match mode {
        SeccompMode::Kill => SeccompAction::KillProcess,
        SeccompMode::Log => SeccompAction::Log,
        SeccompMode::Off => return Ok(None),
    };
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SandboxError::Arch(std::env::consts::ARCH))?;
    Ok(Some((mismatch, arch)))
}

/// The BPF program allowing `allowed` (system call numbers) and treating anything else as
/// `mode` says; `None` for [`SeccompMode::Off`].
pub fn program(mode: SeccompMode, allowed: &[i64]) -> Result<Option<BpfProgram>, SandboxError> {
    let Some((mismatch, arch)) = mismatch_and_arch(mode)? else {
        return Ok(None);
    };
    let rules: BTreeMap<i64, Vec<SeccompRule>> =
        allowed.iter().map(|&nr| (nr, Vec::new())).collect();
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)?;
    Ok(Some(BpfProgram::try_from(filter)?))
}

/// The BPF programs for a program that creates threads once filtered (pcierc's frontend
/// threads): `allowed` as [`program`] builds it, plus [`syscalls::THREADS`], `clone` only with
/// `CLONE_THREAD` in its flags (a thread of this process: never a new process, `fork` and
/// `vfork` included, which are not on the list either), `prctl` only for `PR_SET_NAME` (a
/// thread's name), and `clone3` (whose flags are in memory the filter cannot read) let
/// through the first program only for the second to fail it with `ENOSYS`: the C library then
/// falls back to `clone`. The kernel runs both and the stricter outcome wins (an error over
/// allowing). `None` for [`SeccompMode::Off`].
pub fn threaded_programs(
    mode: SeccompMode,
    allowed: &[i64],
) -> Result<Option<[BpfProgram; 2]>, SandboxError> {
    let Some((mismatch, arch)) = mismatch_and_arch(mode)? else {
        return Ok(None);
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = allowed
        .iter()
        .chain(syscalls::THREADS)
        .map(|&nr| (nr, Vec::new()))
        .collect();
    let only = |arg: u8, op: SeccompCmpOp, value: u64| {
        SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value)
            .and_then(|c| SeccompRule::new(vec![c]))
    };
    // clone(flags, ...): the flags are the first argument on every architecture.
    let thread = libc::CLONE_THREAD as u64;
    rules.insert(
        libc::SYS_clone,
        vec![only(0, SeccompCmpOp::MaskedEq(thread), thread)?],
    );
    rules.insert(
        libc::SYS_prctl,
        vec![only(0, SeccompCmpOp::Eq, libc::PR_SET_NAME as u64)?],
    );
    rules.insert(libc::SYS_clone3, Vec::new());
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)?;
    let no_clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )?;
    Ok(Some([
        BpfProgram::try_from(filter)?,
        BpfProgram::try_from(no_clone3)?,
    ]))
}

/// Install the filter for `mode` on every thread of the process (`who` names the program in
/// the log). From here on a system call outside `allowed` kills the process (`kill`) or is
/// logged (`log`).
pub fn apply(mode: SeccompMode, allowed: &[i64], who: &str) -> Result<(), SandboxError> {
    let Some(prog) = program(mode, allowed)? else {
        info!("{who}: seccomp off (--seccomp=off): no system call filter");
        return Ok(());
    };
    seccompiler::apply_filter_all_threads(&prog)?;
    log_installed(mode, allowed, who);
    Ok(())
}

/// [`apply`] for a program that creates threads afterwards ([`threaded_programs`]).
pub fn apply_threaded(mode: SeccompMode, allowed: &[i64], who: &str) -> Result<(), SandboxError> {
    let Some(progs) = threaded_programs(mode, allowed)? else {
        info!("{who}: seccomp off (--seccomp=off): no system call filter");
        return Ok(());
    };
    // The allow-list last: installing a filter calls prctl(PR_SET_NO_NEW_PRIVS), which the
    // allow-list forbids.
    for prog in progs.iter().rev() {
        seccompiler::apply_filter_all_threads(prog)?;
    }
    log_installed(mode, allowed, who);
    Ok(())
}

fn log_installed(mode: SeccompMode, allowed: &[i64], who: &str) {
    let what = match mode {
        SeccompMode::Kill => "kill the process",
        _ => "are logged by the kernel",
    };
    info!(
        "{who}: seccomp filter installed: {} system calls allowed, others {what}",
        allowed.len()
    );
}

#[cfg(test)]
mod tests;
