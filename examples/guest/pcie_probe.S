# pcie-probe: a freestanding x86-64 test guest for the pcierc VMM (examples/src/bin/vmm.rs).
#
# The VMM enters `_start` in 64-bit long mode with the low 4 GiB identity-mapped (2 MiB pages),
# interrupts disabled, and the image loaded at its ELF address (1 MiB). QEMU (`-kernel` with this
# ELF) enters `pvh_start` instead, named by the PVH ELF note, in 32-bit protected mode without
# paging (Xen's PVH boot ABI); the stub there builds the same page tables and enters long mode. The guest finds ECAM in
# the ACPI MCFG table as an OS does (or, without ACPI tables, enables it through the Q35 MCH's
# PCIEXBAR with configuration mechanism #1, 0xCF8/0xCFC, as firmware does), reads PCIEXBAR back
# through CF8/CFC, enumerates every bus through ECAM depth first, numbers the buses behind each
# bridge (secondary/subordinate), and prints one line per function on the 16550 serial port
# (COM1, 0x3F8):
#
#     00:00.0 8086:29c0 class 060000 type 00
#     00:02.0 1b36:000c class 060400 type 01
#     00:02.0 buses 00/01/01                      (read back after numbering)
#     01:00.0 1b36:0005 class ff0000 type 00      (an endpoint: the VMM's own, behind rp1)
#     01:00.0 dsn fd47c22975618194                (its Device Serial Number extended capability)
#
# If the VMM's test endpoint sits behind rp1 it then opens rp1's memory window, places the
# endpoint's BAR0, points MSI-X vector 0 at the local APIC, rings the endpoint's doorbell and
# waits for the interrupt. With "pcie-probe.hotplug" on the command line it then drives rp1's
# slot like pciehp (hot-add, attention button, power off) and reports the endpoint that arrives
# (with "pcie-probe.ecam-move", before the timing loops, it renumbers rp1's buses and moves ECAM,
# reading through ECAM after each step);
# with "pcie-probe.ordering" it checks CF8/CFC and the CMOS index across the VMM's coalesced port
# writes, and with "pcie-probe.cf9-halt" it resets through 0xCF9 and halts (pcie_probe_ordering.inc);
# with "pcie-probe.aer" as well, while that card is in, it enables rp1's AER (Root Error Command)
# and PME (Root Control) interrupts and reports three of them ("aer: root-status ... source ...
# uncor ...", "pme: requester ...") before it waits for the removal.
# Finally it powers off by writing SLP_EN (bit 13) with SLP_TYP 0 (S5) to the ACPI PM1a control
# register at port 0x604, where QEMU's q35 has it.
#
# Assembled with GNU as and linked with `ld -N -Ttext=0x100000 -T pvh_note.ld` (the PVH note
# inside the image) by examples/build.rs.

        .intel_syntax noprefix
        .code64

        .set COM1,          0x3f8
        .set COM1_LSR,      COM1 + 5        # Line Status Register
        .set LSR_THRE,      0x20            # Transmitter Holding Register Empty
        .set CONFIG_ADDRESS, 0xcf8
        .set CONFIG_DATA,   0xcfc
        .set PM1A_CNT,      0x604           # QEMU q35 ACPI PM1a control
        .set SLP_EN,        0x2000
        .set ECAM_BASE,     0xb0000000      # where this guest puts ECAM (QEMU's q35 address)
        # Used before pcie_probe_devices.inc: with Intel syntax a symbol not yet defined is
        # taken for a memory operand, so constants are set before their first use.
        .set RP_DEVFN,      0x10            # rp1 at 00:02.0 in pcierc's default topology
        .set RP_IO_BASE_LIMIT, 0x1c         # PCI-to-PCI Bridge 1.2 §3.2.5.6, a 16-bit register

        .section .text
        .globl _start
_start:
        cli
        test    rsi, rsi                    # Linux boot protocol: rsi = boot_params
        jz      main64
        mov     eax, [rsi + 0x228]          # boot_params.hdr.cmd_line_ptr
        mov     [rip + cmdline_ptr], eax
main64:                                     # both entries meet here, in long mode
        lea     rsp, [rip + stack_top]
        lea     rsi, [rip + msg_hello]
        call    puts

        # ECAM from ACPI: RSDP -> XSDT -> MCFG (PCI Firmware 3.3 §4.1.2), as an OS finds it.
        call    find_mcfg
        test    rax, rax
        jz      .Lno_mcfg
        mov     [rip + ecam_base], rax
        lea     rsi, [rip + msg_mcfg]
        call    puts
        mov     rdi, [rip + ecam_base]
        mov     ecx, 8
        call    puthex
        lea     rsi, [rip + msg_buses]
        call    puts
        movzx   edi, byte ptr [rip + mcfg_start_bus]
        mov     ecx, 2
        call    puthex
        mov     al, '-'
        call    putc
        movzx   edi, byte ptr [rip + mcfg_end_bus]
        mov     ecx, 2
        call    puthex
        call    newline
        jmp     .Lshow_pciexbar
.Lno_mcfg:
        # No tables: enable ECAM ourselves, as firmware does. Q35 PCIEXBAR (MCH 00:00.0 offset
        # 0x60/0x64): base | length 256 MiB (bits 2:1 = 0) | enable (bit 0), written through
        # configuration mechanism #1.
        lea     rsi, [rip + msg_nomcfg]
        call    puts
        mov     eax, 0x80000064
        mov     ecx, 0
        call    cf8_write32
        mov     eax, 0x80000060
        mov     ecx, ECAM_BASE | 1
        call    cf8_write32
        mov     eax, ECAM_BASE
        mov     [rip + ecam_base], rax
.Lshow_pciexbar:
        # PCIEXBAR read back through CF8/CFC either way.
        lea     rsi, [rip + msg_pciexbar]
        call    puts
        mov     eax, 0x80000060
        call    cf8_read32
        mov     edi, eax
        mov     ecx, 8
        call    puthex
        call    newline

        xor     edi, edi                # bus 0
        call    scan_bus
        # With "pcie-probe.extra-roots": the root buses of expanders (QEMU's pxb-pcie) too.
        lea     rdi, [rip + str_extra_roots_flag]
        call    cmdline_has
        test    eax, eax
        jz      1f
        call    scan_extra_roots
1:
        lea     rsi, [rip + msg_done]
        call    puts
        mov     edi, [rip + nfunctions]
        mov     ecx, 2
        call    puthex
        lea     rsi, [rip + msg_lastbus]
        call    puts
        mov     edi, [rip + next_bus]
        mov     ecx, 2
        call    puthex
        call    newline

        # The VMM's own endpoint behind rp1, if there is one: BAR0 and MSI-X.
        call    rp1_secondary
        mov     edi, eax
        call    endpoint_demo

        # With "pcie-probe.ecam-move" on the command line: ECAM reads across a bus renumbering
        # and an ECAM move (pcie_probe_ecam_move.inc).
        lea     rdi, [rip + str_ecam_move_flag]
        call    cmdline_has
        test    eax, eax
        jz      1f
        call    ecam_move_demo
1:
        # With "pcie-probe.ordering": CF8/CFC and the CMOS index across coalesced port writes
        # (pcie_probe_ordering.inc); with "pcie-probe.cf9-halt": reset and halt.
        lea     rdi, [rip + str_ordering_flag]
        call    cmdline_has
        test    eax, eax
        jz      1f
        call    ordering_check
1:
        lea     rdi, [rip + str_cf9_flag]
        call    cmdline_has
        test    eax, eax
        jz      1f
        jmp     cf9_reset_halt
1:
        # Exit latency as the guest sees it: BENCH_ROUNDS accesses of each kind, timed with the
        # TSC (the VMM prints the TSC frequency with --stats).
        lea     rsi, [rip + msg_bench_pio]
        lea     rdi, [rip + bench_local_pio]
        call    bench
        lea     rsi, [rip + msg_bench_mmio]
        lea     rdi, [rip + bench_local_mmio]
        call    bench
        lea     rsi, [rip + msg_bench_ecam]
        lea     rdi, [rip + bench_ecam]
        call    bench
        lea     rsi, [rip + msg_bench_cf8]
        lea     rdi, [rip + bench_cf8]
        call    bench
        # A forwarded ECAM write: rp1's I/O Base/Limit, rewritten with the value it holds.
        xor     edi, edi
        mov     esi, RP_DEVFN
        mov     edx, RP_IO_BASE_LIMIT
        call    cfg_read16
        mov     [rip + rp1_io_base_limit], ax
        lea     rsi, [rip + msg_bench_ecam_write]
        lea     rdi, [rip + bench_ecam_write]
        call    bench
        # Plain guest code for comparison: 10 iterations of a 3-instruction register loop.
        lea     rsi, [rip + msg_bench_loop]
        lea     rdi, [rip + bench_loop]
        call    bench
        # The bench loop alone (call, ret, dec, jnz): what every figure above contains besides
        # its access.
        lea     rsi, [rip + msg_bench_empty]
        lea     rdi, [rip + bench_empty]
        call    bench

        # With "pcie-probe.hotplug" on the command line: take rp1's hot-plug interrupts.
        lea     rdi, [rip + str_hotplug_flag]
        call    cmdline_has
        test    eax, eax
        jz      power_off
        call    hotplug_demo

power_off:
        lea     rsi, [rip + msg_off]
        call    puts
        mov     dx, PM1A_CNT
        mov     ax, SLP_EN
        out     dx, ax
1:      hlt                             # not reached when the VMM implements PM1a
        jmp     1b

# Hot-plug (rp1's slot driver) and the VMM's test endpoint (BAR0, MSI-X, serial number).
        .include "pcie_probe_devices.inc"
# ECAM reads across a bus renumbering and an ECAM move.
        .include "pcie_probe_ecam_move.inc"
# CF8/CFC and the CMOS index across coalesced port writes; a reset through 0xCF9.
        .include "pcie_probe_ordering.inc"

# --- exit latency ---------------------------------------------------------------------------

        .set BENCH_ROUNDS,  2000
        .set UNCLAIMED_PORT, 0x5f0          # no device in the VMM nor in QEMU's q35 (0x510 is
                                            # QEMU's fw_cfg): all ones, without pcierc
        .set UNCLAIMED_MMIO, 0xd0000000     # in the PCI hole, no BAR there: all ones, no pcierc

# bench(rsi label, rdi routine): run the routine BENCH_ROUNDS times and print
# "bench: <label> <cycles per call> TSC cycles".
bench:
        push    rbx
        push    r12
        push    r13
        mov     r12, rdi
        push    rsi
        lea     rsi, [rip + msg_bench]
        call    puts
        pop     rsi
        call    puts
        lfence
        rdtsc
        shl     rdx, 32
        or      rax, rdx
        mov     r13, rax
        mov     ebx, BENCH_ROUNDS
1:      call    r12
        dec     ebx
        jnz     1b
        lfence
        rdtsc
        shl     rdx, 32
        or      rax, rdx
        sub     rax, r13
        xor     edx, edx
        mov     ecx, BENCH_ROUNDS
        div     rcx
        mov     rdi, rax
        call    putdec
        lea     rsi, [rip + msg_cycles]
        call    puts
        pop     r13
        pop     r12
        pop     rbx
        ret

bench_local_pio:
        mov     dx, UNCLAIMED_PORT
        in      eax, dx
        ret

bench_local_mmio:
        mov     eax, UNCLAIMED_MMIO
        mov     eax, [rax]
        ret

bench_ecam:                             # vendor/device id of 00:00.0: forwarded to pcierc
        mov     rax, [rip + ecam_base]
        mov     eax, [rax]
        ret

bench_ecam_write:                       # rp1's I/O Base/Limit (00:02.0 0x1c, 2 bytes), unchanged
        mov     rax, [rip + ecam_base]
        mov     cx, [rip + rp1_io_base_limit]
        mov     [rax + (RP_DEVFN << 12) + RP_IO_BASE_LIMIT], cx
        ret

bench_loop:                             # no exit: what the CPU (or emulator) does alone
        mov     ecx, 10
1:      add     rax, 1
        dec     ecx
        jnz     1b
        ret

bench_empty:                            # nothing: the loop's own cost
        ret

bench_cf8:                              # the same through CF8/CFC: two forwarded exits
        mov     eax, 0x80000000
        jmp     cf8_read32

# --- PVH entry (Xen's HVM direct boot ABI, xen/include/public/arch-x86/hvm/start_info.h) -------

# The note QEMU's `-kernel` looks for (XEN_ELFNOTE_PHYS32_ENTRY, xen/include/public/elfnote.h):
# name "Xen", the 32-bit entry's physical address as the descriptor. 8 bytes as Linux writes it
# (QEMU reads a size_t); 4-byte alignment, which QEMU applies to the name through p_align.
        .section .note.Xen, "a", @note
        .balign 4
        .long   4                           # namesz
        .long   8                           # descsz
        .long   18                          # XEN_ELFNOTE_PHYS32_ENTRY
        .asciz  "Xen"
        .quad   pvh_start
        .text

        .set PVH_CMDLINE, 24                # hvm_start_info.cmdline_paddr
        .set EFER,          0xc0000080
        .set PTE_PRESENT_RW, 0x3
        .set PDE_2M,        0x83            # present, writable, 2 MiB page

# pvh_start: 32-bit protected mode, paging off, flat segments, ebx = hvm_start_info. Keep the
# command line, identity-map the low 4 GiB with 2 MiB pages (PML4 -> PDPT -> 4 PDs), enable PAE,
# EFER.LME and paging, and jump to 64-bit code through a GDT laid out as the VMM's (code 0x08,
# data 0x10), so the IDT gates work on both entries.
        .code32
pvh_start:
        cli
        mov     eax, [ebx + PVH_CMDLINE]
        mov     [cmdline_ptr], eax
        mov     edi, offset pvh_pml4        # zero the tables (PML4, PDPT, 4 PDs)
        mov     ecx, 6 * 4096 / 4
        xor     eax, eax
        cld
        rep stosd
        mov     edi, offset pvh_pd          # 2048 PDEs: 0-4 GiB
        mov     eax, PDE_2M
        xor     edx, edx                    # bits 63:32 of the address
        xor     ecx, ecx
1:      mov     [edi + ecx * 8], eax
        mov     [edi + ecx * 8 + 4], edx
        add     eax, 0x200000
        adc     edx, 0
        inc     ecx
        cmp     ecx, 2048
        jb      1b
        mov     eax, offset pvh_pd + PTE_PRESENT_RW
        xor     ecx, ecx
2:      mov     [pvh_pdpt + ecx * 8], eax
        add     eax, 4096
        inc     ecx
        cmp     ecx, 4
        jb      2b
        mov     dword ptr [pvh_pml4], offset pvh_pdpt + PTE_PRESENT_RW
        mov     eax, offset pvh_pml4
        mov     cr3, eax
        mov     eax, cr4
        or      eax, 0x20                   # PAE
        mov     cr4, eax
        mov     ecx, EFER
        rdmsr
        or      eax, 0x100                  # LME
        wrmsr
        lgdt    [pvh_gdtr]
        mov     eax, cr0
        or      eax, 0x80000001             # PG | PE
        mov     cr0, eax
        .byte   0xea                        # jmp far 0x08:pvh_long
        .long   pvh_long
        .word   0x08
        .code64
pvh_long:
        mov     eax, 0x10
        mov     ds, eax
        mov     es, eax
        mov     ss, eax
        mov     fs, eax
        mov     gs, eax
        jmp     main64

# --- ACPI (ACPI 6.5 §5.2.5-§5.2.8) ------------------------------------------------------------

# find_mcfg: rax = the base of MCFG's first allocation (start/end bus in mcfg_start_bus and
# mcfg_end_bus), or 0. The RSDP is searched on 16-byte boundaries of 0xE0000-0xFFFFF (§5.2.5.1)
# and must pass its checksum.
find_mcfg:
        mov     esi, 0xe0000
        mov     rdx, 0x2052545020445352     # "RSD PTR "
1:      cmp     [rsi], rdx
        jne     3f
        xor     eax, eax                    # checksum of the first 20 bytes must be 0
        xor     ecx, ecx
2:      add     al, [rsi + rcx]
        inc     ecx
        cmp     ecx, 20
        jb      2b
        test    al, al
        jz      4f
3:      add     esi, 16
        cmp     esi, 0x100000
        jb      1b
        xor     eax, eax
        ret
4:      cmp     byte ptr [rsi + 15], 2      # revision 2+: the XSDT, if it has one
        jb      8f
        mov     rdi, [rsi + 24]             # XSDT address
        test    rdi, rdi
        jz      8f
        mov     ecx, [rdi + 4]              # XSDT length
        sub     ecx, 36
        shr     ecx, 3                      # 64-bit entries after the 36-byte header
        lea     rdx, [rdi + 36]
5:      test    ecx, ecx
        jz      6f
        mov     r8, [rdx]
        cmp     dword ptr [r8], 0x4746434d  # "MCFG"
        je      7f
        add     rdx, 8
        dec     ecx
        jmp     5b
6:      xor     eax, eax
        ret
8:      mov     edi, [rsi + 16]             # the RSDT (revision 0, as QEMU's x86 tables)
        test    edi, edi
        jz      6b
        mov     ecx, [rdi + 4]              # RSDT length
        sub     ecx, 36
        shr     ecx, 2                      # 32-bit entries after the header
        lea     rdx, [rdi + 36]
9:      test    ecx, ecx
        jz      6b
        mov     r8d, [rdx]
        cmp     dword ptr [r8], 0x4746434d  # "MCFG"
        je      7f
        add     rdx, 4
        dec     ecx
        jmp     9b
7:      cmp     dword ptr [r8 + 4], 44 + 16 # header, reserved, one allocation at least
        jb      6b
        mov     al, [r8 + 54]
        mov     [rip + mcfg_start_bus], al
        mov     al, [r8 + 55]
        mov     [rip + mcfg_end_bus], al
        mov     rax, [r8 + 44]
        ret

# --- configuration mechanism #1 -------------------------------------------------------------

# cf8_write32: CONFIG_ADDRESS = eax, CONFIG_DATA = ecx. Clobbers edx.
cf8_write32:
        mov     dx, CONFIG_ADDRESS
        out     dx, eax
        mov     dx, CONFIG_DATA
        mov     eax, ecx
        out     dx, eax
        ret

# cf8_read32: CONFIG_ADDRESS = eax; returns CONFIG_DATA in eax. Clobbers edx.
cf8_read32:
        mov     dx, CONFIG_ADDRESS
        out     dx, eax
        mov     dx, CONFIG_DATA
        in      eax, dx
        ret

# --- ECAM (PCIe Base 6.0 §7.2.2: bus << 20 | device << 15 | function << 12 | offset) ----------

# ecam_addr: rax = ecam_base | edi (bus) << 20 | esi (devfn) << 12 | edx (offset).
ecam_addr:
        mov     eax, edi
        shl     rax, 20
        mov     r8d, esi
        shl     r8, 12
        or      rax, r8
        mov     r8d, edx
        or      rax, r8
        or      rax, [rip + ecam_base]
        ret

# cfg_read32(edi bus, esi devfn, edx offset) -> eax. Clobbers r8.
cfg_read32:
        call    ecam_addr
        mov     eax, [rax]
        ret

# cfg_write32(edi bus, esi devfn, edx offset, ecx value). Clobbers rax, r8.
cfg_write32:
        call    ecam_addr
        mov     [rax], ecx
        ret

# cfg_read16(edi bus, esi devfn, edx offset) -> eax. Clobbers r8.
cfg_read16:
        call    ecam_addr
        movzx   eax, word ptr [rax]
        ret

# cfg_write16(edi bus, esi devfn, edx offset, cx value). Clobbers rax, r8.
cfg_write16:
        call    ecam_addr
        mov     [rax], cx
        ret

# cfg_write8(edi bus, esi devfn, edx offset, cl value). Clobbers rax, r8.
cfg_write8:
        call    ecam_addr
        mov     [rax], cl
        ret

# --- enumeration ------------------------------------------------------------------------------

# scan_bus(edi bus): every device and function of the bus; bridges get the next bus number as
# secondary, are scanned recursively, and get the last number assigned below them as subordinate.
# Registers kept across calls: ebx bus, r12d device, r13d function, r14d header type of
# function 0 (multi-function bit), r15d id/scratch.
scan_bus:
        push    rbx
        push    r12
        push    r13
        push    r14
        push    r15
        mov     ebx, edi
        xor     r12d, r12d
.Ldevice:
        xor     r13d, r13d
.Lfunction:
        call    devfn_esi
        mov     edi, ebx
        xor     edx, edx
        call    cfg_read32              # vendor id | device id << 16
        cmp     ax, 0xffff
        jne     .Lpresent
        test    r13d, r13d
        jz      .Lnext_device           # no function 0: nothing in this slot
        jmp     .Lnext_function
.Lpresent:
        mov     r15d, eax
        inc     dword ptr [rip + nfunctions]
        call    print_bdf
        mov     al, ' '
        call    putc
        movzx   edi, r15w               # vendor id
        mov     ecx, 4
        call    puthex
        mov     al, ':'
        call    putc
        mov     edi, r15d
        shr     edi, 16                 # device id
        mov     ecx, 4
        call    puthex
        lea     rsi, [rip + msg_class]
        call    puts
        call    devfn_esi
        mov     edi, ebx
        mov     edx, 0x08
        call    cfg_read32              # revision | class code << 8
        mov     edi, eax
        shr     edi, 8
        mov     ecx, 6
        call    puthex
        lea     rsi, [rip + msg_type]
        call    puts
        call    devfn_esi
        mov     edi, ebx
        mov     edx, 0x0c
        call    cfg_read32              # header type in bits 23:16
        shr     eax, 16
        movzx   r15d, al
        test    r13d, r13d
        jnz     1f
        mov     r14d, r15d              # function 0's header type decides multi-function
1:      mov     edi, r15d
        and     edi, 0x7f
        mov     ecx, 2
        call    puthex
        call    newline

        mov     eax, r15d
        and     eax, 0x7f
        cmp     eax, 1                  # type 1: a PCI-to-PCI bridge (root port)
        jne     .Lendpoint
        call    number_bridge
        jmp     .Lnext_function_if_multi
.Lendpoint:
        test    ebx, ebx                # behind a port: a PCIe endpoint, extended capabilities
        jz      .Lnext_function_if_multi
        mov     edi, ebx
        call    devfn_esi
        call    show_dsn

.Lnext_function_if_multi:
        test    r13d, r13d
        jnz     .Lnext_function
        test    r14d, 0x80
        jz      .Lnext_device
.Lnext_function:
        inc     r13d
        cmp     r13d, 8
        jb      .Lfunction
.Lnext_device:
        inc     r12d
        cmp     r12d, 32
        jb      .Ldevice
        pop     r15
        pop     r14
        pop     r13
        pop     r12
        pop     rbx
        ret

# scan_extra_roots: the root buses of expanders, found as SeaBIOS finds QEMU's pxb-pcie buses:
# a bus number past the last one assigned on which some device's function 0 answers is a root
# bus of its own. Each is printed ("extra root bus BB") and scanned, the buses below its root
# ports numbered from BB + 1 (next_bus = BB first); the search goes on past them.
scan_extra_roots:
        push    rbx
        push    r12
        push    r13
        mov     ebx, [rip + next_bus]
.Lroot_bus:
        inc     ebx
        cmp     ebx, 0x100
        jae     .Lroots_done
        xor     r12d, r12d
        xor     r13d, r13d
.Lroot_device:
        call    devfn_esi
        mov     edi, ebx
        xor     edx, edx
        call    cfg_read32              # vendor id | device id << 16
        cmp     ax, 0xffff
        jne     .Lroot_found
        inc     r12d
        cmp     r12d, 32
        jb      .Lroot_device
        jmp     .Lroot_bus
.Lroot_found:
        lea     rsi, [rip + msg_extra_root]
        call    puts
        mov     edi, ebx
        mov     ecx, 2
        call    puthex
        call    newline
        mov     [rip + next_bus], ebx
        mov     edi, ebx
        call    scan_bus
        mov     ebx, [rip + next_bus]
        jmp     .Lroot_bus
.Lroots_done:
        pop     r13
        pop     r12
        pop     rbx
        ret

# number_bridge: for the bridge at ebx:r12d.r13d (PCI-to-PCI Bridge 1.2 §3.2.5.3): primary = bus,
# secondary = ++next_bus, subordinate = 0xff while the secondary side is scanned, then the last
# bus assigned; prints the numbers read back.
number_bridge:
        push    r15
        mov     eax, [rip + next_bus]
        inc     eax
        mov     [rip + next_bus], eax
        mov     r15d, eax               # secondary
        call    devfn_esi
        mov     edi, ebx
        mov     edx, 0x18
        mov     ecx, r15d
        shl     ecx, 8
        or      ecx, ebx
        or      ecx, 0xff0000
        call    cfg_write32
        mov     edi, r15d
        call    scan_bus
        call    devfn_esi
        mov     edi, ebx
        mov     edx, 0x1a
        mov     ecx, [rip + next_bus]
        call    cfg_write8
        call    print_bdf
        lea     rsi, [rip + msg_buses]
        call    puts
        call    devfn_esi
        mov     edi, ebx
        mov     edx, 0x18
        call    cfg_read32
        mov     r15d, eax
        movzx   edi, r15b               # primary
        mov     ecx, 2
        call    puthex
        mov     al, '/'
        call    putc
        mov     edi, r15d
        shr     edi, 8                  # secondary
        movzx   edi, dil
        mov     ecx, 2
        call    puthex
        mov     al, '/'
        call    putc
        mov     edi, r15d
        shr     edi, 16                 # subordinate
        movzx   edi, dil
        mov     ecx, 2
        call    puthex
        call    newline
        pop     r15
        ret

# devfn_esi: esi = r12d (device) << 3 | r13d (function).
devfn_esi:
        mov     esi, r12d
        shl     esi, 3
        or      esi, r13d
        ret

# print_bdf: "BB:DD.F" for ebx:r12d.r13d.
print_bdf:
        mov     edi, ebx
        mov     ecx, 2
        call    puthex
        mov     al, ':'
        call    putc
        mov     edi, r12d
        mov     ecx, 2
        call    puthex
        mov     al, '.'
        call    putc
        mov     al, r13b
        add     al, '0'
        call    putc
        ret

# --- serial output (putc, puts, puthex: serial.inc) ------------------------------------------
        .include "serial.inc"

newline:
        mov     al, '\n'
        jmp     putc

# putdec(rdi): unsigned decimal. Clobbers rax, rcx, rdx, rsi.
putdec:
        lea     rsi, [rip + decbuf_end]
        mov     byte ptr [rsi], 0
        mov     rax, rdi
        mov     ecx, 10
1:      xor     edx, edx
        div     rcx
        add     dl, '0'
        dec     rsi
        mov     [rsi], dl
        test    rax, rax
        jnz     1b
        jmp     puts


        .section .rodata
msg_hello:      .asciz "pcie-probe: 64-bit guest running\n"
msg_pciexbar:   .asciz "PCIEXBAR "
msg_mcfg:       .asciz "ACPI MCFG: ECAM "
msg_nomcfg:     .asciz "no ACPI MCFG: enabling ECAM through PCIEXBAR\n"
msg_class:      .asciz " class "
msg_type:       .asciz " type "
msg_buses:      .asciz " buses "
msg_done:       .asciz "pcie-probe: functions "
msg_lastbus:    .asciz " last bus "
msg_extra_root: .asciz "pcie-probe: extra root bus "
str_extra_roots_flag: .asciz "pcie-probe.extra-roots"
msg_off:        .asciz "pcie-probe: power off\n"
msg_bench:      .asciz "bench: "
str_hotplug_flag: .asciz "pcie-probe.hotplug"
msg_msix:       .asciz "pcie-probe: MSI-X on 00:02.0: table at "
msg_msix_vector: .asciz ", vector "
msg_wait_add:   .asciz "pcie-probe: waiting for hot-add on 00:02.0\n"
msg_irq:        .asciz "pcie-probe: hot-plug interrupt, slot status "
msg_added:      .asciz "pcie-probe: hot-add: card present in 00:02.0, powering the slot on\n"
msg_wait_remove: .asciz "pcie-probe: waiting for hot-remove on 00:02.0\n"
msg_button:     .asciz "pcie-probe: attention button: powering 00:02.0 off\n"
msg_removed:    .asciz "pcie-probe: hot-remove: 00:02.0 is empty\n"
msg_hot_added:  .asciz "pcie-probe: hot-added "
msg_after_removal: .asciz "pcie-probe: after removal "
msg_dsn:        .asciz " dsn "
msg_ep:         .asciz "pcie-probe: endpoint "
msg_ep_bar:     .asciz " BAR0 "
msg_ep_id:      .asciz " id "
msg_ep_table:   .asciz " MSI-X table +"
msg_ep_cf8:     .asciz " through CF8/CFC "
msg_ep_cf8_device: .asciz " device "
msg_ep_irq:     .asciz "pcie-probe: endpoint MSI-X vector 0 interrupt taken, messages sent "
msg_ep_fail:    .asciz "pcie-probe: endpoint without a usable MSI-X capability\n"
msg_hp_fail:    .asciz "pcie-probe: rp1 has no PCI Express or MSI-X capability\n"
msg_unexpected: .asciz "pcie-probe: unexpected interrupt or exception\n"
str_aer_flag:   .asciz "pcie-probe.aer"
msg_aer_wait:   .asciz "pcie-probe: AER and PME interrupts enabled on 00:02.0\n"
msg_aer_done:   .asciz "pcie-probe: AER and PME reports taken\n"
msg_aer_fail:   .asciz "pcie-probe: rp1 has no AER capability at 0x100\n"
msg_aer_root:   .asciz "aer: root-status "
msg_aer_source: .asciz " source "
msg_aer_uncor:  .asciz " uncor "
msg_pme:        .asciz "pme: requester 0x"
msg_0x:         .asciz "0x"
msg_bench_pio:  .asciz "local-pio "
msg_bench_mmio: .asciz "local-mmio "
msg_bench_ecam: .asciz "ecam-read "
msg_bench_cf8:  .asciz "cf8-cfc-read "
msg_bench_ecam_write: .asciz "ecam-write "
msg_bench_loop: .asciz "loop-x10 "
msg_bench_empty: .asciz "empty "
msg_cycles:     .asciz " TSC cycles per access\n"

        .section .data
        .balign 8
ecam_base:      .quad 0
cmdline_ptr:    .quad 0                     # the kernel command line (physical), or 0
        .balign 8
pvh_gdt:        .quad 0
                .quad 0x00af9a000000ffff    # 0x08: 64-bit code, DPL 0
                .quad 0x00cf92000000ffff    # 0x10: flat data
pvh_gdtr:       .word 3 * 8 - 1
                .long pvh_gdt
idtr:           .word 256 * 16 - 1
                .quad idt
slot_status_off: .long 0
slot_events:    .long 0
root_status_off: .long 0
aer_enabled:    .long 0
aer_pme_reports: .long 0
ep_irqs:        .long 0
nfunctions:     .long 0
rp1_io_base_limit: .word 0
mcfg_start_bus: .byte 0
mcfg_end_bus:   .byte 0
next_bus:       .long 0

        .section .bss
        .balign 16
decbuf:         .skip 24
decbuf_end:     .skip 1
        .balign 4096
pvh_pml4:       .skip 4096                  # pvh_start's page tables (in this order)
pvh_pdpt:       .skip 4096
pvh_pd:         .skip 4 * 4096
        .balign 16
idt:            .skip 256 * 16
stack:          .skip 16384
stack_top:

        .section .note.GNU-stack, "", @progbits
