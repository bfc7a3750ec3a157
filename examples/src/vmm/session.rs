//! Running the vCPUs, and rebooting: a guest reset (i8042 pulse, ICH9's Reset Control at 0xCF9,
//! the FADT's reset register, a KVM reset event) resets the platform as QEMU's system reset
//! does: pcierc's hierarchy (`Reset`), the VMM's own endpoints, the boot images and every vCPU,
//! then the guest starts again. `--no-reboot` ends the VMM at a reset instead, as QEMU's
//! `-no-reboot` does.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_mp_state, KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED};
use kvm_ioctls::VcpuFd;
use vm_memory::GuestAddress;

use super::machine::{Machine, Stop};
use super::{cpu, power_on, vcpu, wiring, Error};

/// What a vCPU thread (or the notification thread, with no vCPU) reports when it ends.
pub type Report = (u8, vcpu::Outcome, Option<VcpuFd>);

/// The vCPUs and the channel their threads report on.
pub struct Session {
    machine: Arc<Machine>,
    platform: power_on::Platform,
    power_on: Vec<power_on::Vcpu>,
    idle: Vec<(u8, VcpuFd)>,
    threads: Vec<std::thread::JoinHandle<()>>,
    tx: Sender<Report>,
    rx: Receiver<Report>,
    /// Reboots so far.
    pub reboots: u32,
}

impl Session {
    /// `vcpus` (created with their CPUID, not set up, ids 0..n in order) for `machine`, with the power-on state
    /// of the VM's platform and of each vCPU that every reboot starts from again.
    pub fn new(
        machine: Arc<Machine>,
        platform: power_on::Platform,
        vcpus: Vec<(u8, VcpuFd, power_on::Vcpu)>,
    ) -> Session {
        let (tx, rx) = mpsc::channel();
        let (idle, power_on) = vcpus
            .into_iter()
            .map(|(id, fd, state)| ((id, fd), state))
            .unzip();
        Session {
            machine,
            platform,
            power_on,
            idle,
            threads: Vec::new(),
            tx,
            rx,
            reboots: 0,
        }
    }

    /// A sender for another thread whose failure ends the guest (the notification thread).
    pub fn reporter(&self) -> Sender<Report> {
        self.tx.clone()
    }

    /// Set every vCPU up for the entry point `entry` and start it: the BSP runs, the others
    /// wait for INIT/SIPI. After a reset each starts from its power-on state first.
    fn start(&mut self, entry: GuestAddress) -> Result<(), Error> {
        for (id, vcpu) in std::mem::take(&mut self.idle) {
            if self.reboots > 0 {
                let state = self
                    .power_on
                    .get(usize::from(id))
                    .ok_or_else(|| Error::Config(format!("no power-on state for vCPU {id}")))?;
                let refused = state.restore(&vcpu)?;
                if refused > 0 {
                    log::info!("reset: vCPU {id}: KVM refused {refused} power-on MSR values");
                }
            }
            cpu::setup_vcpu(&vcpu, id, entry)?;
            let state = kvm_mp_state {
                mp_state: if id == 0 {
                    KVM_MP_STATE_RUNNABLE
                } else {
                    KVM_MP_STATE_UNINITIALIZED
                },
            };
            vcpu.set_mp_state(state).map_err(|source| Error::Kvm {
                what: "KVM_SET_MP_STATE",
                source,
            })?;
            let (m, tx) = (self.machine.clone(), self.tx.clone());
            let thread = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || {
                    let mut vcpu = vcpu;
                    let outcome = vcpu::run(m, &mut vcpu, id);
                    let _ = tx.send((id, outcome, Some(vcpu)));
                })
                .map_err(|source| Error::Io {
                    what: "spawning a vCPU thread".into(),
                    source,
                })?;
            self.threads.push(thread);
        }
        Ok(())
    }

    /// Run the guest from `entry` until it powers off, fails, times out at `deadline`, or
    /// resets with `reboot` off. On a reset with `reboot` on, `reload` resets the platform and
    /// writes the boot images again (the new entry point) and the guest starts over.
    pub fn run(
        &mut self,
        mut entry: GuestAddress,
        deadline: Option<(Instant, Duration)>,
        reboot: bool,
        mut reload: impl FnMut(&Machine) -> Result<GuestAddress, Error>,
    ) -> Result<Stop, Error> {
        loop {
            self.start(entry)?;
            let first = match deadline {
                Some((at, after)) => {
                    match self
                        .rx
                        .recv_timeout(at.saturating_duration_since(Instant::now()))
                    {
                        Ok(r) => r,
                        Err(_) => {
                            let position = self
                                .stop_all(None)
                                .unwrap_or_else(|| "the vCPUs did not stop".into());
                            return Err(Error::Timeout { after, position });
                        }
                    }
                }
                None => self.rx.recv().map_err(|_| {
                    Error::Config("every vCPU thread ended without an outcome".into())
                })?,
            };
            let (_, outcome, vcpu) = first;
            match (outcome, reboot) {
                (Ok(Stop::Reset), true) => {
                    self.stop_all(vcpu.map(|v| (first.0, v)));
                    if self.idle.len() != usize::from(self.cpus()) {
                        return Err(Error::Config("a vCPU did not stop for the reset".into()));
                    }
                    self.machine.clear_stop();
                    self.reboots += 1;
                    eprintln!("vmm: guest reset; rebooting (reboot {})", self.reboots);
                    self.platform.restore(&self.machine.vm)?;
                    entry = reload(&self.machine)?;
                }
                (outcome, _) => return outcome,
            }
        }
    }

    fn cpus(&self) -> u8 {
        self.threads.len().max(self.idle.len()) as u8
    }

    /// Stop every running vCPU (kicking it out of KVM_RUN until it notices) and take the vCPUs
    /// back; `returned` is one that has already stopped. Where vCPU 0 was, if it was stopped.
    fn stop_all(&mut self, returned: Option<(u8, VcpuFd)>) -> Option<String> {
        use vmm_sys_util::signal::Killable;
        self.machine.request_stop();
        let mut position = None;
        let mut running = self.threads.len() - usize::from(returned.is_some());
        self.idle.extend(returned);
        let deadline = Instant::now() + Duration::from_secs(2);
        while running > 0 && Instant::now() < deadline {
            for t in &self.threads {
                let _ = t.kill(vmm_sys_util::signal::SIGRTMIN());
            }
            if let Ok((id, outcome, vcpu)) = self.rx.recv_timeout(Duration::from_millis(10)) {
                let Some(vcpu) = vcpu else {
                    continue;
                };
                running -= 1;
                if let (0, Err(Error::Guest { detail, .. })) = (id, outcome) {
                    position = Some(format!("vCPU 0 {detail}"));
                }
                self.idle.push((id, vcpu));
            }
        }
        if running == 0 {
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
            self.idle.sort_by_key(|(id, _)| *id);
        }
        position
    }
}

/// The platform part of a reset: pcierc's hierarchy (then ECAM enabled again, as firmware
/// would), the VMM's endpoints, and the notifications that follow.
pub fn reset_platform(machine: &Machine, acpi: bool) -> Result<(), Error> {
    // Port writes the guest made after its reset request (other vCPUs) go with the old state.
    if let Some(ring) = machine.coalesced.get() {
        ring.discard();
    }
    machine
        .pcie
        .frontend()
        .reset()
        .map_err(|source| Error::Backend {
            what: "Reset".into(),
            source,
        })?;
    if acpi {
        wiring::enable_ecam(&machine.pcie)?;
    }
    let assigned = machine.devices().reset();
    for (index, changes) in assigned {
        machine.apply_assigned(index, changes)?;
    }
    machine.drain_notifications()?;
    machine.lower_intx()
}
