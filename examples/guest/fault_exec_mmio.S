# fault-exec-mmio: jumps into the PCI hole (no RAM, no device), where the vCPU cannot fetch
# instructions. KVM reports an emulation failure (KVM_EXIT_INTERNAL_ERROR); the VMM must exit
# non-zero with that message instead of hanging. Used by tests/tests/vmm_guest.rs.
        .intel_syntax noprefix
        .code64
        .section .text
        .globl _start
_start:
        mov     eax, 0xd0000000
        jmp     rax
        .section .note.GNU-stack, "", @progbits
