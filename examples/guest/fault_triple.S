# fault-triple: raises #UD with the VMM's boot IDT (one null entry) still loaded: #UD cannot be
# delivered (#GP), nor can that (#DF), so the CPU shuts down (triple fault, KVM_EXIT_SHUTDOWN).
# The VMM must exit non-zero and say so. Used by tests/tests/vmm_guest.rs.
        .intel_syntax noprefix
        .code64
        .section .text
        .globl _start
_start:
        ud2
        .section .note.GNU-stack, "", @progbits
