# reboot-state: proves that a reboot starts the vCPU and the interrupt controllers from their
# power-on state, as QEMU's system reset does. Used by tests/tests/vmm_guest.rs.
#
# Each boot prints the state a previous kernel could leave behind in KVM, one `state NAME HEX`
# line each: CR0, CR4, PAT, the KVM paravirtual MSRs the CPUID offers (kvmclock, steal time,
# PV EOI: KVM keeps writing guest memory at their addresses while they are set), the local
# APIC's TPR, SVR, LVT timer and initial count, IOAPIC redirection entry 1, and CONFIG_ADDRESS
# (0xCF8, which the VMM latches itself) with the CONFIG_DATA dword it selects. The first boot
# then changes every one of them, prints them again (`changed NAME HEX`, so the test can see
# the changes took), leaves a marker in RAM (RAM survives a reset; the VMM reloads only the
# image) and resets through ICH9's Reset Control register (0xCF9). The second boot prints its
# state and powers off (ACPI PM1a, as pcie_probe.S). The test compares the two boots' lines.

        .intel_syntax noprefix
        .code64

        .set COM1,          0x3f8
        .set COM1_LSR,      COM1 + 5        # Line Status Register
        .set LSR_THRE,      0x20            # Transmitter Holding Register Empty
        .set PM1A_CNT,      0x604           # QEMU q35 ACPI PM1a control
        .set SLP_EN,        0x2000
        .set RESET_CONTROL, 0xcf9           # ICH9 Reset Control: SYS_RST (bit 1) | RST_CPU (bit 2)
        .set MARKER,        0x300000        # above the image (1 MiB) and its data
        .set MARKER_VALUE,  0x72656f626f6f74  # "toobeor"
        .set PV_AREA,       0x301000        # where the first boot points the PV MSRs
        .set LAPIC,         0xfee00000
        .set IOAPIC,        0xfec00000
        # KVM's paravirtual MSRs and their CPUID bits (leaf 0x40000001 EAX;
        # Documentation/virt/kvm/x86/msr.rst and cpuid.rst).
        .set MSR_KVM_SYSTEM_TIME_NEW, 0x4b564d01
        .set MSR_KVM_STEAL_TIME,      0x4b564d03
        .set MSR_KVM_PV_EOI_EN,       0x4b564d04
        .set MSR_IA32_CR_PAT,         0x277

        .section .text
        .globl _start
_start:
        cli
        lea     rsp, [rip + stack_top]
        mov     rax, MARKER_VALUE
        mov     rbx, MARKER
        cmp     [rbx], rax
        je      second_boot

        lea     rsi, [rip + msg_boot1]
        call    puts
        lea     rsi, [rip + msg_state]
        call    print_state
        call    change_state
        lea     rsi, [rip + msg_changed]
        call    print_state
        mov     rax, MARKER_VALUE
        mov     rbx, MARKER
        mov     [rbx], rax
        mov     dx, RESET_CONTROL
        mov     al, 0x06
        out     dx, al
1:      hlt                                 # not reached: the VMM resets
        jmp     1b

second_boot:
        mov     qword ptr [rbx], 0          # a third boot would be a first one again
        lea     rsi, [rip + msg_boot2]
        call    puts
        lea     rsi, [rip + msg_state]
        call    print_state
        mov     dx, PM1A_CNT
        mov     ax, SLP_EN
        out     dx, ax
1:      hlt
        jmp     1b

# change_state: what a kernel sets up, all of which a reset must undo.
change_state:
        mov     rax, cr0
        or      eax, 1 << 16                # WP (Intel SDM Vol. 3A §2.5)
        mov     cr0, rax
        mov     rax, cr4
        or      eax, 1 << 7                 # PGE
        mov     cr4, rax
        mov     ecx, MSR_IA32_CR_PAT
        mov     eax, 0x00010406             # WB, WC, WT, UC for PA0-PA3
        mov     edx, 0x00010406
        wrmsr
        call    kvm_features
        test    eax, 1 << 3                 # KVM_FEATURE_CLOCKSOURCE2
        jz      1f
        mov     ecx, MSR_KVM_SYSTEM_TIME_NEW
        mov     eax, PV_AREA + 1            # enable bit 0
        xor     edx, edx
        wrmsr
1:      call    kvm_features
        test    eax, 1 << 5                 # KVM_FEATURE_STEAL_TIME
        jz      1f
        mov     ecx, MSR_KVM_STEAL_TIME
        mov     eax, PV_AREA + 0x40 + 1     # 64-byte aligned, enable bit 0
        xor     edx, edx
        wrmsr
1:      call    kvm_features
        test    eax, 1 << 6                 # KVM_FEATURE_PV_EOI
        jz      1f
        mov     ecx, MSR_KVM_PV_EOI_EN
        mov     eax, PV_AREA + 0x80 + 1     # 4-byte aligned, enable bit 0
        xor     edx, edx
        wrmsr
1:      mov     rbx, LAPIC
        mov     dword ptr [rbx + 0xf0], 0x1ff       # SVR: APIC enabled, spurious vector 0xff
        mov     dword ptr [rbx + 0x80], 0x20        # TPR
        mov     dword ptr [rbx + 0x3e0], 0xb        # divide by 1
        mov     dword ptr [rbx + 0x320], 0x20040    # LVT timer: periodic, vector 0x40
        mov     dword ptr [rbx + 0x380], 0x10000000 # initial count: starts the timer
        mov     rbx, IOAPIC
        mov     dword ptr [rbx], 0x12               # IOREGSEL: redirection entry 1, low half
        mov     dword ptr [rbx + 0x10], 0x41        # vector 0x41, fixed, edge, unmasked
        mov     dx, 0xcf8                   # CONFIG_ADDRESS: 00:02.0 (rp1) register 0x08
        mov     eax, 0x80001008
        out     dx, eax
        ret

# kvm_features: eax = CPUID 0x40000001 EAX when leaf 0x40000000 says "KVMKVMKVM", else 0.
kvm_features:
        push    rbx
        push    rcx
        push    rdx
        mov     eax, 0x40000000
        cpuid
        cmp     ebx, 0x4b4d564b             # "KVMK"
        jne     1f
        mov     eax, 0x40000001
        cpuid
        jmp     2f
1:      xor     eax, eax
2:      pop     rdx
        pop     rcx
        pop     rbx
        ret

# print_state(rsi = line prefix): one line per register.
print_state:
        mov     r12, rsi
        lea     r13, [rip + name_cr0]
        mov     rdi, cr0
        call    print_one
        lea     r13, [rip + name_cr4]
        mov     rdi, cr4
        call    print_one
        mov     ecx, MSR_IA32_CR_PAT
        lea     r13, [rip + name_pat]
        call    print_msr
        call    kvm_features
        mov     r14d, eax
        test    r14d, 1 << 3
        jz      1f
        mov     ecx, MSR_KVM_SYSTEM_TIME_NEW
        lea     r13, [rip + name_kvmclock]
        call    print_msr
1:      test    r14d, 1 << 5
        jz      1f
        mov     ecx, MSR_KVM_STEAL_TIME
        lea     r13, [rip + name_steal]
        call    print_msr
1:      test    r14d, 1 << 6
        jz      1f
        mov     ecx, MSR_KVM_PV_EOI_EN
        lea     r13, [rip + name_pv_eoi]
        call    print_msr
1:      mov     rbx, LAPIC
        lea     r13, [rip + name_tpr]
        mov     edi, [rbx + 0x80]
        call    print_one
        lea     r13, [rip + name_svr]
        mov     edi, [rbx + 0xf0]
        call    print_one
        lea     r13, [rip + name_lvtt]
        mov     edi, [rbx + 0x320]
        call    print_one
        lea     r13, [rip + name_tmict]
        mov     edi, [rbx + 0x380]
        call    print_one
        mov     rbx, IOAPIC
        mov     dword ptr [rbx], 0x12
        lea     r13, [rip + name_ioredir1]
        mov     edi, [rbx + 0x10]
        call    print_one
        mov     dx, 0xcf8                   # CONFIG_ADDRESS (PCI Local Bus 3.0 §3.2.2.3.2)
        in      eax, dx
        lea     r13, [rip + name_cf8]
        mov     edi, eax
        call    print_one
        mov     dx, 0xcfc                   # CONFIG_DATA: all ones while bit 31 is clear
        in      eax, dx
        lea     r13, [rip + name_cfc]
        mov     edi, eax
        call    print_one
        ret

# print_msr(ecx = MSR, r12 = prefix, r13 = name)
print_msr:
        rdmsr
        shl     rdx, 32
        mov     edi, eax
        or      rdi, rdx
        # fall through

# print_one(rdi = value, r12 = prefix, r13 = name): "PREFIX NAME 0123456789abcdef\n"
print_one:
        mov     rsi, r12
        call    puts
        mov     rsi, r13
        call    puts
        mov     ecx, 16
        call    puthex
        mov     al, '\n'
        jmp     putc

        .include "serial.inc"

        .section .rodata
msg_boot1:      .asciz "reboot-state: boot 1\n"
msg_boot2:      .asciz "reboot-state: boot 2\n"
msg_state:      .asciz "state "
msg_changed:    .asciz "changed "
name_cr0:       .asciz "cr0 "
name_cr4:       .asciz "cr4 "
name_pat:       .asciz "pat "
name_kvmclock:  .asciz "kvmclock "
name_steal:     .asciz "steal-time "
name_pv_eoi:    .asciz "pv-eoi "
name_tpr:       .asciz "lapic-tpr "
name_svr:       .asciz "lapic-svr "
name_lvtt:      .asciz "lapic-lvt-timer "
name_tmict:     .asciz "lapic-initial-count "
name_ioredir1:  .asciz "ioapic-redir1 "
name_cf8:       .asciz "config-address "
name_cfc:       .asciz "config-data "

        .section .bss
        .balign 16
stack:          .skip 4096
stack_top:

        .section .note.GNU-stack, "", @progbits
