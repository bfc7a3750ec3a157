# hang: halts forever with interrupts disabled, as a wedged guest would. The VMM's --timeout must
# end it with an error. Used by tests/tests/vmm_guest.rs.
        .intel_syntax noprefix
        .code64
        .section .text
        .globl _start
_start:
        cli
1:      hlt
        jmp     1b
        .section .note.GNU-stack, "", @progbits
