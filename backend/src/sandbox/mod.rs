//! seccomp: once a program is set up (sockets open, state restored), every one of its threads
//! runs under an allow-list of the system calls it needs from then on ([`syscalls`]), compiled
//! to BPF by rust-vmm's `seccompiler` and installed with `SECCOMP_FILTER_FLAG_TSYNC` (and
//! `PR_SET_NO_NEW_PRIVS`). `--seccomp=kill|log|off`, as virtiofsd offers: a call outside the
//! list kills the process with `SIGSYS`, or is allowed and logged by the kernel (audit records
//! `type=1326` in `dmesg`, to build or check the list), or there is no filter at all.

pub mod syscalls;

use std::collections::BTreeMap;

use log::info;
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
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

/// The BPF program allowing `allowed` (system call numbers) and treating anything else as
/// `mode` says; `None` for [`SeccompMode::Off`].
pub fn program(mode: SeccompMode, allowed: &[i64]) -> Result<Option<BpfProgram>, SandboxError> {
    let mismatch = match mode {
        SeccompMode::Kill => SeccompAction::KillProcess,
        SeccompMode::Log => SeccompAction::Log,
        SeccompMode::Off => return Ok(None),
    };
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SandboxError::Arch(std::env::consts::ARCH))?;
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        allowed.iter().map(|&nr| (nr, Vec::new())).collect();
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)?;
    Ok(Some(BpfProgram::try_from(filter)?))
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
    let what = match mode {
        SeccompMode::Kill => "kill the process",
        _ => "are logged by the kernel",
    };
    info!(
        "{who}: seccomp filter installed: {} system calls allowed, others {what}",
        allowed.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests;
