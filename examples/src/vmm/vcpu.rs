//! The vCPU loop: `KVM_RUN`, then each exit goes to the [`Machine`]. Exits that mean the guest
//! cannot go on (internal errors, emulation failures, triple faults, failed entries) end the VMM
//! with what KVM said and where the guest was, instead of hanging.

use std::sync::Arc;

use kvm_bindings::{
    KVM_INTERNAL_ERROR_DELIVERY_EV, KVM_INTERNAL_ERROR_EMULATION, KVM_INTERNAL_ERROR_SIMUL_EX,
    KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress};

use super::machine::{Machine, Stop};
use super::Error;

/// What ended a vCPU's loop: a stop request from the guest, or a fatal error.
pub type Outcome = Result<Stop, Error>;

/// Outcomes of one exit that need the vCPU (not borrowed by the exit) to describe.
enum Fatal {
    /// The VMM stopped the vCPU (`--timeout`).
    Stopped,
    Internal,
    Shutdown,
    FailEntry(u64),
    Other(String),
}

/// Run `vcpu` until the guest stops or fails.
pub fn run(machine: Arc<Machine>, vcpu: &mut VcpuFd, id: u8) -> Outcome {
    loop {
        let exit = vcpu.run();
        // Port writes KVM coalesced since the last exit come first, in order: the access that
        // exited may depend on them (CONFIG_DATA on CONFIG_ADDRESS, 0x71 on the CMOS index).
        if let Some(stop) = machine.drain_coalesced()? {
            return Ok(stop);
        }
        let fatal = match exit {
            Ok(VcpuExit::IoIn(port, data)) => {
                machine.pio_in(port, data)?;
                continue;
            }
            Ok(VcpuExit::IoOut(port, data)) => match machine.pio_out(port, data)? {
                Some(stop) => return Ok(stop),
                None => continue,
            },
            Ok(VcpuExit::MmioRead(addr, data)) => {
                machine.mmio_read(addr, data)?;
                continue;
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                machine.mmio_write(addr, data)?;
                continue;
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => return Ok(Stop::PowerOff),
                KVM_SYSTEM_EVENT_RESET => return Ok(Stop::Reset),
                KVM_SYSTEM_EVENT_CRASH => Fatal::Other("guest crashed (system event)".into()),
                other => Fatal::Other(format!("system event {other}")),
            },
            Ok(VcpuExit::Hlt) => {
                // Only without an in-kernel irqchip; this VMM always has one.
                Fatal::Other("HLT exit without an in-kernel irqchip".into())
            }
            Ok(VcpuExit::Intr) => continue,
            Ok(VcpuExit::InternalError) => Fatal::Internal,
            Ok(VcpuExit::Shutdown) => Fatal::Shutdown,
            Ok(VcpuExit::FailEntry(reason, _)) => Fatal::FailEntry(reason),
            Ok(other) => Fatal::Other(format!("unexpected exit {other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                if machine.stop_requested() {
                    Fatal::Stopped
                } else {
                    continue;
                }
            }
            Err(source) => {
                return Err(Error::Kvm {
                    what: "KVM_RUN",
                    source,
                })
            }
        };
        let where_ = describe_position(&machine, vcpu);
        let detail = match fatal {
            Fatal::Stopped => "stopped".to_string(),
            Fatal::Internal => internal_error(vcpu),
            Fatal::Shutdown => "triple fault (KVM_EXIT_SHUTDOWN)".to_string(),
            Fatal::FailEntry(reason) => {
                format!("VM entry failed, hardware reason {reason:#x}")
            }
            Fatal::Other(s) => s,
        };
        return Err(Error::Guest {
            cpu: id,
            detail: format!("{detail}; {where_}"),
        });
    }
}

/// KVM_EXIT_INTERNAL_ERROR's sub-error and data (include/uapi/linux/kvm.h).
fn internal_error(vcpu: &mut VcpuFd) -> String {
    let run = vcpu.get_kvm_run();
    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so KVM filled the `internal` member.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let what = match internal.suberror {
        KVM_INTERNAL_ERROR_EMULATION => "emulation failure (KVM could not emulate an instruction)",
        KVM_INTERNAL_ERROR_SIMUL_EX => "exception while delivering an exception",
        KVM_INTERNAL_ERROR_DELIVERY_EV => "exit while delivering an event",
        _ => "internal error",
    };
    let n = (internal.ndata as usize).min(internal.data.len());
    format!(
        "KVM internal error {}: {what}, data {:x?}",
        internal.suberror,
        &internal.data[..n]
    )
}

/// `rip`, mode and the instruction bytes at `rip`, for error messages.
fn describe_position(machine: &Machine, vcpu: &VcpuFd) -> String {
    let Ok(regs) = vcpu.get_regs() else {
        return "registers unavailable".into();
    };
    let mode = vcpu
        .get_sregs()
        .map(|s| {
            if s.efer & (1 << 10) != 0 {
                "long mode"
            } else if s.cr0 & 1 != 0 {
                "protected mode"
            } else {
                "real mode"
            }
        })
        .unwrap_or("mode unknown");
    let mut bytes = [0u8; 16];
    let code = vcpu
        .translate_gva(regs.rip)
        .ok()
        .filter(|t| t.valid != 0)
        .and_then(|t| {
            machine
                .mem
                .read_slice(&mut bytes, GuestAddress(t.physical_address))
                .ok()
        })
        .map(|()| format!("{bytes:02x?}"))
        .unwrap_or_else(|| "unreadable".into());
    format!(
        "rip {:#x} ({mode}), rsp {:#x}, rflags {:#x}, code at rip {code}",
        regs.rip, regs.rsp, regs.rflags
    )
}
