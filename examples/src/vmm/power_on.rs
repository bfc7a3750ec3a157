//! Power-on state, captured when the VM and its vCPUs are created and written back at every
//! start, so a reboot begins from the state a new machine has, as QEMU's system reset does
//! (`x86_cpu_reset`, then `kvm_arch_put_registers` at `KVM_PUT_RESET_STATE`).
//!
//! Without it a reboot inherits what the previous kernel left in KVM: its kvmclock, steal-time
//! and async page-fault areas (KVM keeps writing guest memory the new kernel now owns), PV EOI
//! (KVM skips EOIs the new kernel then never sees acknowledged), control-register bits, a
//! programmed local APIC timer with in-service vectors, unmasked IOAPIC entries, the PIT's
//! mode. Capturing KVM's own creation-time values, rather than writing our idea of them, keeps
//! this right for whatever KVM reports.

use kvm_bindings::{
    kvm_debugregs, kvm_fpu, kvm_irqchip, kvm_lapic_state, kvm_msr_entry, kvm_pit_state2, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, Msrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use super::Error;

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

/// MSRs not written back: the TSC (the boot setup sets it to 0, as a reset does), and the
/// kvmclock wall-clock MSRs and the async page-fault acknowledgement, which are commands (a
/// write makes KVM write guest memory or act) rather than state.
const NOT_RESTORED: [u32; 4] = [0x10, 0x11, 0x4b56_4d00, 0x4b56_4d07];

/// The interrupt controllers' and the PIT's state of a newly created VM.
pub struct Platform {
    irqchips: Vec<kvm_irqchip>,
    pit: kvm_pit_state2,
}

impl Platform {
    /// Capture `vm`'s state; call right after creating its irqchip and PIT.
    pub fn capture(vm: &VmFd) -> Result<Platform, Error> {
        let mut irqchips = Vec::new();
        for chip_id in [
            KVM_IRQCHIP_PIC_MASTER,
            KVM_IRQCHIP_PIC_SLAVE,
            KVM_IRQCHIP_IOAPIC,
        ] {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            vm.get_irqchip(&mut chip).map_err(kvm("KVM_GET_IRQCHIP"))?;
            irqchips.push(chip);
        }
        let pit = vm.get_pit2().map_err(kvm("KVM_GET_PIT2"))?;
        Ok(Platform { irqchips, pit })
    }

    /// Put the PICs, the IOAPIC (every redirection entry masked again) and the PIT back.
    pub fn restore(&self, vm: &VmFd) -> Result<(), Error> {
        for chip in &self.irqchips {
            vm.set_irqchip(chip).map_err(kvm("KVM_SET_IRQCHIP"))?;
        }
        vm.set_pit2(&self.pit).map_err(kvm("KVM_SET_PIT2"))
    }
}

/// One vCPU's state as KVM created it.
pub struct Vcpu {
    sregs: kvm_sregs,
    fpu: kvm_fpu,
    lapic: kvm_lapic_state,
    xcrs: kvm_xcrs,
    debugregs: kvm_debugregs,
    events: kvm_vcpu_events,
    msrs: Vec<kvm_msr_entry>,
}

impl Vcpu {
    /// Capture `vcpu`'s state before it first runs: registers, local APIC, and the value of
    /// every MSR KVM lists (`KVM_GET_MSR_INDEX_LIST`) that it lets the VMM read.
    pub fn capture(kvm_fd: &Kvm, vcpu: &VcpuFd) -> Result<Vcpu, Error> {
        let list = kvm_fd
            .get_msr_index_list()
            .map_err(kvm("KVM_GET_MSR_INDEX_LIST"))?;
        let mut msrs = Vec::new();
        for &index in list.as_slice() {
            if NOT_RESTORED.contains(&index) {
                continue;
            }
            // One at a time: KVM_GET_MSRS stops at the first MSR it cannot read, and which
            // ones those are depends on the host and the CPUID set later.
            let mut one = Msrs::from_entries(&[kvm_msr_entry {
                index,
                ..Default::default()
            }])
            .map_err(|e| Error::Config(format!("building an MSR list: {e:?}")))?;
            if vcpu.get_msrs(&mut one) == Ok(1) {
                msrs.extend_from_slice(one.as_slice());
            }
        }
        Ok(Vcpu {
            sregs: vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?,
            fpu: vcpu.get_fpu().map_err(kvm("KVM_GET_FPU"))?,
            lapic: vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?,
            xcrs: vcpu.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?,
            debugregs: vcpu.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?,
            events: vcpu.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?,
            msrs,
        })
    }

    /// Write the captured state back (the boot setup then changes what a boot loader would).
    /// MSRs KVM refuses now (a CPUID set since makes some invalid) are skipped and logged: the
    /// rest are still written. Returns how many were refused.
    pub fn restore(&self, vcpu: &VcpuFd) -> Result<usize, Error> {
        vcpu.set_sregs(&self.sregs).map_err(kvm("KVM_SET_SREGS"))?;
        vcpu.set_xcrs(&self.xcrs).map_err(kvm("KVM_SET_XCRS"))?;
        vcpu.set_fpu(&self.fpu).map_err(kvm("KVM_SET_FPU"))?;
        let mut refused = 0;
        let mut rest = &self.msrs[..];
        while !rest.is_empty() {
            let chunk = &rest[..rest.len().min(kvm_bindings::KVM_MAX_MSR_ENTRIES)];
            let batch =
                Msrs::from_entries(chunk).map_err(|e| Error::Config(format!("MSR list: {e:?}")))?;
            let set = vcpu.set_msrs(&batch).map_err(kvm("KVM_SET_MSRS"))?;
            if set < chunk.len() {
                log::debug!("reset: KVM refused MSR {:#x}", rest[set].index);
                refused += 1;
                rest = &rest[set + 1..];
            } else {
                rest = &rest[chunk.len()..];
            }
        }
        vcpu.set_vcpu_events(&self.events)
            .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
        vcpu.set_lapic(&self.lapic).map_err(kvm("KVM_SET_LAPIC"))?;
        vcpu.set_debug_regs(&self.debugregs)
            .map_err(kvm("KVM_SET_DEBUGREGS"))?;
        Ok(refused)
    }
}
