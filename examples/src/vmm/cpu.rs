//! vCPU state at entry: 64-bit long mode set up by the VMM, as Firecracker and cloud-hypervisor
//! do for Linux's 64-bit boot protocol (Documentation/arch/x86/boot.rst, "64-bit Boot Protocol"):
//! a flat GDT, identity-mapped page tables for the low 4 GiB, CR0.PE|PG, CR4.PAE, EFER.LME|LMA,
//! `rsi` pointing at the zero page. Plus the CPUID, MSRs and local APIC LINT pins a guest expects.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, CpuId, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::layout;
use super::Error;

// Intel SDM Vol. 3A §2.5 (control registers) and §2.2.1 (EFER).
const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

// Page-table entry bits (Intel SDM Vol. 3A §4.5).
const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_PAGE_SIZE: u64 = 1 << 7;

/// A GDT entry from its access/flags word, base and limit (Intel SDM Vol. 3A §3.4.5).
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (flags as u64, base as u64, limit as u64);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The boot GDT: null, 64-bit code (selector 0x08), data (0x10), 64-bit TSS (0x18).
const BOOT_GDT: [u64; 4] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// The `kvm_segment` KVM wants for GDT entry `index`.
fn segment(index: u16) -> kvm_segment {
    let e = BOOT_GDT[usize::from(index)];
    let bit = |n: u32| ((e >> n) & 1) as u8;
    let limit = ((e >> 32) & 0x000f_0000) as u32 | (e & 0xffff) as u32;
    let g = bit(55);
    let present = bit(47);
    kvm_segment {
        base: ((e >> 32) & 0xff00_0000) | ((e >> 16) & 0x00ff_ffff),
        limit: if g == 1 { (limit << 12) | 0xfff } else { limit },
        selector: index * 8,
        type_: ((e >> 40) & 0xf) as u8,
        present,
        dpl: ((e >> 45) & 3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

fn write<T: vm_memory::ByteValued>(
    mem: &GuestMemoryMmap,
    val: T,
    addr: GuestAddress,
) -> Result<(), Error> {
    mem.write_obj(val, addr)
        .map_err(|e| Error::Memory(format!("writing boot structures at {:#x}: {e}", addr.0)))
}

/// Write the GDT, IDT and identity-mapping page tables into guest memory (shared by all vCPUs).
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<(), Error> {
    for (i, e) in BOOT_GDT.iter().enumerate() {
        write(mem, *e, layout::GDT.unchecked_add(i as u64 * 8))?;
    }
    write(mem, 0u64, layout::IDT)?;
    write(
        mem,
        layout::PDPT.0 | PTE_PRESENT | PTE_WRITABLE,
        layout::PML4,
    )?;
    for gib in 0..layout::IDENTITY_MAPPED_GIB {
        let pd = layout::PD.0 + gib * 0x1000;
        write(
            mem,
            pd | PTE_PRESENT | PTE_WRITABLE,
            layout::PDPT.unchecked_add(gib * 8),
        )?;
        for i in 0..512u64 {
            let phys = (gib << 30) | (i << 21);
            write(
                mem,
                phys | PTE_PRESENT | PTE_WRITABLE | PTE_PAGE_SIZE,
                GuestAddress(pd + i * 8),
            )?;
        }
    }
    Ok(())
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

/// Give a new vCPU KVM's supported CPUID with its APIC id. Once, before it first runs: KVM
/// refuses a changed CPUID after that (Documentation/virt/kvm/api.rst, KVM_SET_CPUID2).
pub fn set_cpuid(vcpu: &VcpuFd, id: u8, supported: &CpuId) -> Result<(), Error> {
    vcpu.set_cpuid2(&cpuid_for(supported, id))
        .map_err(kvm("KVM_SET_CPUID2"))
}

/// Put a vCPU in 64-bit mode at `entry` with `rsi` = the zero page (the boot processor), or
/// leave it waiting for INIT/SIPI (application processors: the in-kernel local APIC starts them).
pub fn setup_vcpu(vcpu: &VcpuFd, id: u8, entry: GuestAddress) -> Result<(), Error> {
    setup_msrs(vcpu)?;
    setup_lapic(vcpu)?;
    if id != 0 {
        return Ok(());
    }
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("KVM_SET_FPU"))?;

    let mut sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    sregs.gdt.base = layout::GDT.0;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = layout::IDT.0;
    sregs.idt.limit = 7;
    sregs.cs = segment(1);
    sregs.ds = segment(2);
    sregs.es = segment(2);
    sregs.fs = segment(2);
    sregs.gs = segment(2);
    sregs.ss = segment(2);
    sregs.tr = segment(3);
    sregs.cr3 = layout::PML4.0;
    sregs.cr4 |= CR4_PAE;
    sregs.cr0 |= CR0_PE | CR0_ET | CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))?;

    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry.0,
        rsp: layout::BOOT_STACK,
        rbp: layout::BOOT_STACK,
        rsi: layout::ZERO_PAGE.0,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))
}

/// KVM's supported CPUID with this vCPU's APIC id (leaf 1 EBX[31:24], leaf 0xB EDX).
fn cpuid_for(supported: &CpuId, id: u8) -> CpuId {
    let mut cpuid = supported.clone();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => e.ebx = (e.ebx & 0x00ff_ffff) | (u32::from(id) << 24),
            0xb => e.edx = u32::from(id),
            _ => {}
        }
    }
    cpuid
}

/// The MSRs Linux expects a boot loader to leave (Firecracker's list): SYSENTER/SYSCALL zeroed,
/// fast strings enabled, MTRRs enabled with write-back as the default type.
fn setup_msrs(vcpu: &VcpuFd) -> Result<(), Error> {
    const MSR_IA32_SYSENTER_CS: u32 = 0x174;
    const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
    const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
    const MSR_STAR: u32 = 0xc000_0081;
    const MSR_LSTAR: u32 = 0xc000_0082;
    const MSR_CSTAR: u32 = 0xc000_0083;
    const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
    const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
    const MSR_IA32_TSC: u32 = 0x10;
    const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
    const MISC_ENABLE_FAST_STRING: u64 = 1;
    const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
    const MTRR_ENABLE: u64 = 1 << 11;
    const MTRR_TYPE_WB: u64 = 6;
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    let msrs = Msrs::from_entries(&entries)
        .map_err(|e| Error::Config(format!("building the MSR list: {e:?}")))?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
    if set != entries.len() {
        return Err(Error::Config(format!(
            "KVM_SET_MSRS set {set} of {} MSRs (MSR {:#x} refused)",
            entries.len(),
            entries[set].index
        )));
    }
    Ok(())
}

/// Local APIC LINT0 as ExtINT (the 8259 PIC's output) and LINT1 as NMI, as the MP
/// specification's virtual-wire mode expects (Intel SDM Vol. 3A §11.5.1).
fn setup_lapic(vcpu: &VcpuFd) -> Result<(), Error> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const DELIVERY_MODE_EXTINT: u32 = 7;
    const DELIVERY_MODE_NMI: u32 = 4;
    let mut lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    for (reg, mode) in [
        (APIC_LVT0, DELIVERY_MODE_EXTINT),
        (APIC_LVT1, DELIVERY_MODE_NMI),
    ] {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i] as u8);
        let v = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (i, b) in v.to_le_bytes().into_iter().enumerate() {
            lapic.regs[reg + i] = b as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm("KVM_SET_LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_match_firecracker() {
        assert_eq!(BOOT_GDT[1], 0x00af_9b00_0000_ffff);
        assert_eq!(BOOT_GDT[2], 0x00cf_9300_0000_ffff);
        assert_eq!(BOOT_GDT[3], 0x008f_8b00_0000_ffff);
        let cs = segment(1);
        assert_eq!(
            (cs.selector, cs.l, cs.db, cs.present, cs.type_),
            (8, 1, 0, 1, 0xb)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment(2);
        assert_eq!((ds.selector, ds.db, ds.s, ds.type_), (0x10, 1, 1, 3));
    }

    #[test]
    fn page_tables_identity_map_4gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_boot_tables(&mem).unwrap();
        let rd = |a: u64| mem.read_obj::<u64>(GuestAddress(a)).unwrap();
        // Walk 0xb012_3456: PML4[0] -> PDPT[2] -> PD[0x180] (2 MiB page 0xb000_0000).
        let va = 0xb012_3456u64;
        let pdpt = rd(layout::PML4.0) & !0xfff;
        let pd = rd(pdpt + ((va >> 30) & 511) * 8) & !0xfff;
        let pde = rd(pd + ((va >> 21) & 511) * 8);
        assert_eq!(pde & PTE_PAGE_SIZE, PTE_PAGE_SIZE);
        assert_eq!((pde & !0x1f_ffff & !(1 << 63)) | (va & 0x1f_ffff), va);
    }
}
