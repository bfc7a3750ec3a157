//! Where the measuring thread and its peers (the echo process, pcierc) run.
//!
//! On a VM a wakeup of a peer on another vCPU can cost several times a wakeup on the same one,
//! and the scheduler picks either from one moment to the next, so unpinned round trips are
//! bimodal. Pinning makes each figure measure one thing: both ends on one CPU (the software path:
//! syscalls, framing, dispatch) or on two (plus a cross-CPU wakeup each way).

use std::io;

use crate::error::{Context, Error, Result};

/// Where a measurement runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Wherever the scheduler puts things.
    Free,
    /// Everything on this CPU.
    SameCpu(usize),
    /// The measuring thread on `client`, the processes it talks to on `server`.
    Split {
        /// CPU of the measuring thread.
        client: usize,
        /// CPU of the echo process or pcierc.
        server: usize,
    },
}

impl Placement {
    /// A description for the output.
    pub fn describe(self) -> String {
        match self {
            Placement::Free => "unpinned".into(),
            Placement::SameCpu(c) => format!("all on CPU {c}"),
            Placement::Split { client, server } => {
                format!("measuring thread on CPU {client}, peers on CPU {server}")
            }
        }
    }

    fn client(self) -> Option<usize> {
        match self {
            Placement::Free => None,
            Placement::SameCpu(c) | Placement::Split { client: c, .. } => Some(c),
        }
    }

    fn server(self) -> Option<usize> {
        match self {
            Placement::Free => None,
            Placement::SameCpu(c) | Placement::Split { server: c, .. } => Some(c),
        }
    }
}

/// The CPUs this thread may run on.
pub fn allowed_cpus() -> Result<Vec<usize>> {
    let set = get().context("sched_getaffinity")?;
    // SAFETY: `set` is an initialised cpu_set_t and every index is below CPU_SETSIZE.
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

fn get() -> io::Result<libc::cpu_set_t> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; the size and pointer describe `set`, which the call
    // fills in.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(set)
}

fn set(set: &libc::cpu_set_t) -> io::Result<()> {
    // SAFETY: pid 0 is the calling thread; the size and pointer describe `set`, which the call
    // only reads.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(set), set) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn only(cpu: usize) -> Result<libc::cpu_set_t> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(Error::Other(format!("CPU {cpu} is out of range")));
    }
    // SAFETY: an all-zero cpu_set_t is a valid empty set; `cpu` is below CPU_SETSIZE.
    unsafe {
        let mut s: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut s);
        Ok(s)
    }
}

/// Pins the calling thread for a measurement and puts its original affinity back on drop.
#[derive(Debug)]
pub struct Pinned {
    placement: Placement,
    original: libc::cpu_set_t,
}

impl Pinned {
    /// Pin the calling thread where `placement` puts the measuring thread.
    pub fn new(placement: Placement) -> Result<Self> {
        let original = get().context("sched_getaffinity")?;
        let p = Pinned {
            placement,
            original,
        };
        p.to_client()?;
        Ok(p)
    }

    /// Run `spawn` (which starts the peer processes) pinned where the peers go: children
    /// inherit the affinity of the thread that forks them.
    pub fn spawn_peers<T>(&self, spawn: impl FnOnce() -> Result<T>) -> Result<T> {
        if let Some(c) = self.placement.server() {
            set(&only(c)?).context(format!("pinning to CPU {c}"))?;
        }
        let r = spawn();
        self.to_client()?;
        r
    }

    fn to_client(&self) -> Result<()> {
        match self.placement.client() {
            Some(c) => set(&only(c)?).context(format!("pinning to CPU {c}")),
            None => set(&self.original).context("restoring the CPU affinity"),
        }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let _ = set(&self.original);
    }
}
