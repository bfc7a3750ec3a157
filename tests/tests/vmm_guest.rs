//! End to end under this machine's KVM: the example VMM (`examples/src/bin/vmm.rs`) boots the
//! freestanding test guests of `examples/guest/` with a real `pcierc` behind it, and the guest's
//! firmware-style enumeration (CF8/CFC, ECAM, bus numbering) goes through pcierc unchanged.
//!
//! Without `/dev/kvm` these tests skip loudly, also in CI: CI machines may lack (nested) KVM, and
//! everything the VMM forwards is covered without KVM by the socket tests. Set
//! `PCIERC_REQUIRE_KVM=1` to make a missing `/dev/kvm` a failure instead (docs/vmm.md).

mod vmm_support;

use std::time::{Duration, Instant};

use pcierc_protocol::{Frontend, FrontendOptions};
use pcierc_tests::process::{tool_available, Backend, ScratchDir};
use pcierc_tests::qmp_socket::QmpSocket;
use serde_json::json;
use vmm_support::{
    assert_lines, kvm_available, probe_image, qmp, run_for, run_vmm, run_vmm_ok, spawn_backend,
    stats_lines, text, RunningVmm, PROBE_LIMITS, RUN_LIMIT,
};

/// What the probe guest must print for pcierc's default topology (and for QEMU's q35 with four
/// `pcie-root-port`s laid out the same): QEMU's ids for the Q35 MCH and the root ports, each
/// numbered with its own secondary bus and read back.
const ENUMERATION: &[&str] = &[
    "PCIEXBAR b0000001",
    "00:00.0 8086:29c0 class 060000 type 00",
    "00:02.0 1b36:000c class 060400 type 01",
    "00:02.0 buses 00/01/01",
    "00:02.1 1b36:000c class 060400 type 01",
    "00:02.1 buses 00/02/02",
    "00:02.2 1b36:000c class 060400 type 01",
    "00:02.2 buses 00/03/03",
    "00:02.3 1b36:000c class 060400 type 01",
    "00:02.3 buses 00/04/04",
    "pcie-probe: power off",
];

/// [`ENUMERATION`] with the VMM's function count (pcierc has the MCH and the root ports only).
fn check_enumeration(stdout: &str) {
    assert_lines(stdout, ENUMERATION);
    assert_lines(stdout, &["pcie-probe: functions 05 last bus 04"]);
}

/// The guest's exit-latency lines converted with the TSC frequency the VMM printed.
fn latency_report(stdout: &str, stderr: &str) -> String {
    let khz: Option<f64> = stderr
        .lines()
        .find_map(|l| l.strip_prefix("vmm: guest TSC "))
        .and_then(|l| l.trim_end_matches(" kHz").parse().ok());
    let mut s = String::new();
    for l in stdout.lines().filter_map(|l| l.strip_prefix("bench: ")) {
        let mut it = l.split_whitespace();
        let (Some(name), Some(cycles)) = (it.next(), it.next().and_then(|c| c.parse::<f64>().ok()))
        else {
            continue;
        };
        match khz {
            Some(k) => s += &format!("  {name:<14} {:>8.2} us\n", cycles / k * 1000.0),
            None => s += &format!("  {name:<14} {cycles:>8} TSC cycles\n"),
        }
    }
    s
}

#[test]
fn probe_guest_enumerates_pcierc_through_the_vmm() {
    if !kvm_available() {
        return;
    }
    let dir = ScratchDir::new("vmm");
    let kernel = probe_image(&dir);
    // As firmware (ECAM enabled, ACPI tables) with pcierc's shared configuration snapshot (reads
    // without a message); then with neither: the guest enables ECAM through CF8/CFC and every
    // configuration read is a message.
    for (extra, ecam_line) in [
        (&[][..], "ACPI MCFG: ECAM b0000000 buses 00-ff"),
        (
            &["--no-config-snapshot", "--no-acpi"][..],
            "no ACPI MCFG: enabling ECAM through PCIEXBAR",
        ),
    ] {
        let mut args = spawn_backend().to_vec();
        args.extend(["--kernel", &kernel, "--stats"]);
        args.extend(PROBE_LIMITS.iter().chain(extra));
        let (stdout, stderr) = run_vmm_ok(&args);
        check_enumeration(&stdout);
        // pcierc-bench's guest group parses this line (bench/src/guest/probe.rs).
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("bench: ecam-write ")
                    && l.ends_with(" TSC cycles per access")),
            "no ecam-write timing:\n{stdout}"
        );
        assert!(
            stdout.lines().any(|l| l == ecam_line),
            "{ecam_line:?}:\n{stdout}"
        );
        assert!(stderr.contains("vmm: guest powered off"), "{stderr}");
        eprintln!(
            "vmm {extra:?}: guest-measured time per access (trivial exit vs forwarded):\n{}{}",
            latency_report(&stdout, &stderr),
            stats_lines(&stderr, &["vmm: exits"])
        );
    }
}

#[test]
fn guest_programming_lands_in_a_running_pcierc() {
    if !kvm_available() {
        return;
    }
    let backend = Backend::start(&[]);
    let dir = ScratchDir::new("vmm");
    let kernel = probe_image(&dir);
    let socket = backend.socket.to_string_lossy().into_owned();
    let mut args = vec!["--backend-socket", &socket, "--kernel", &kernel];
    args.extend(PROBE_LIMITS);
    let (stdout, _) = run_vmm_ok(&args);
    check_enumeration(&stdout);
    // What the guest wrote through CF8/CFC and ECAM is pcierc's state now.
    let mut fe = Frontend::connect(&backend.socket, FrontendOptions::tool("check"))
        .expect("connecting to pcierc");
    assert_eq!(fe.config_read(0, 0, 0, 0x60, 4).unwrap(), 0xb000_0001);
    for (func, bus) in (0..4u8).zip(1u32..) {
        let buses = fe.config_read(0, 0, 2 << 3 | func, 0x18, 4).unwrap();
        assert_eq!(
            buses & 0xff_ffff,
            bus << 16 | bus << 8,
            "rp{bus} bus numbers"
        );
    }
    let topo = fe.topology().unwrap();
    assert_eq!(topo.ecam.len(), 1);
    assert_eq!(topo.ecam[0].base, 0xb000_0000);
}

/// The probe guest's firmware-style scan through a switch behind rp1 (`x3130-upstream` with two
/// `xio3130-downstream`s): it numbers the buses depth first through the switch, as SeaBIOS
/// would, and pcierc routes every cycle down the tree.
#[test]
fn probe_guest_enumerates_a_switch() {
    if !kvm_available() {
        return;
    }
    let backend = Backend::start(&[
        "--device",
        "x3130-upstream,id=up1,bus=rp1",
        "--device",
        "xio3130-downstream,id=dp1,bus=up1,chassis=5,slot=1",
        "--device",
        "xio3130-downstream,id=dp2,bus=up1,chassis=5,slot=2",
    ]);
    let dir = ScratchDir::new("vmm");
    let kernel = probe_image(&dir);
    let socket = backend.socket.to_string_lossy().into_owned();
    let mut args = vec!["--backend-socket", &socket, "--kernel", &kernel];
    args.extend(PROBE_LIMITS);
    let (stdout, _) = run_vmm_ok(&args);
    assert_lines(
        &stdout,
        &[
            "00:02.0 buses 00/01/04",
            "01:00.0 104c:8232 class 060400 type 01",
            "01:00.0 buses 01/02/04",
            "02:00.0 104c:8233 class 060400 type 01",
            "02:00.0 buses 02/03/03",
            "02:01.0 104c:8233 class 060400 type 01",
            "02:01.0 buses 02/04/04",
            "00:02.1 buses 00/05/05",
            "00:02.3 buses 00/07/07",
            "pcie-probe: functions 08 last bus 07",
        ],
    );
    let mut fe = Frontend::connect(&backend.socket, FrontendOptions::tool("check"))
        .expect("connecting to pcierc");
    assert_eq!(
        fe.config_read(0, 2, 8, 0x18, 4).unwrap() & 0xff_ffff,
        0x04_0402,
        "dp2 as the guest numbered it"
    );
}

/// A `pxb-pcie` expander (bus 0x80, NUMA node 1) with a root port and a switch's upstream port
/// behind it, beside the default root ports: the VMM's DSDT gets its host bridge (`\_SB.PC80`,
/// `_BBN` 0x80, the buses up to 0xff, `_PXM` 1; the VMM prints what it wrote), and the probe
/// guest, told to look for extra root buses as SeaBIOS does, finds bus 0x80 past the buses it
/// numbered, numbers the buses below the expander's root port from 0x81, and pcierc routes
/// every cycle there.
#[test]
fn probe_guest_enumerates_an_expanders_root_bus() {
    if !kvm_available() {
        return;
    }
    let backend = Backend::start(&[
        "--device",
        "pxb-pcie,id=pxb1,bus_nr=0x80,bus=pcie.0,addr=0x5,numa_node=1",
        "--device",
        "pcie-root-port,id=rp9,bus=pxb1,chassis=9,slot=9,addr=0",
        "--device",
        "x3130-upstream,id=up1,bus=rp9",
    ]);
    let dir = ScratchDir::new("vmm");
    let kernel = probe_image(&dir);
    let socket = backend.socket.to_string_lossy().into_owned();
    let mut args = vec![
        "--backend-socket",
        &socket,
        "--kernel",
        &kernel,
        "--cmdline",
        "pcie-probe.extra-roots",
    ];
    args.extend(PROBE_LIMITS);
    let (stdout, stderr) = run_vmm_ok(&args);
    assert_lines(
        &stderr,
        &["vmm: ACPI: \\_SB.PC80 (PNP0A08) _BBN 0x80 buses 80-ff _PXM 1"],
    );
    assert_lines(
        &stdout,
        &[
            "00:05.0 1b36:000b class 060000 type 00",
            "00:02.3 buses 00/04/04",
            "pcie-probe: extra root bus 80",
            "80:00.0 1b36:000c class 060400 type 01",
            "81:00.0 104c:8232 class 060400 type 01",
            "81:00.0 buses 81/82/82",
            "80:00.0 buses 80/81/82",
            "pcie-probe: functions 08 last bus 82",
        ],
    );
    let mut fe = Frontend::connect(&backend.socket, FrontendOptions::tool("check"))
        .expect("connecting to pcierc");
    assert_eq!(
        fe.config_read(0, 0x80, 0, 0x18, 4).unwrap() & 0xff_ffff,
        0x82_8180,
        "rp9 as the guest numbered it"
    );
}

#[test]
fn guest_failures_end_the_vmm_with_a_clear_error() {
    if !kvm_available() {
        return;
    }
    for (guest, extra, expect) in [
        (
            "fault-exec-mmio",
            &[][..],
            "emulation failure (KVM could not emulate an instruction)",
        ),
        ("fault-triple", &[][..], "triple fault (KVM_EXIT_SHUTDOWN)"),
        (
            "hang",
            &["--timeout", "1"][..],
            "the guest did not stop within 1s",
        ),
    ] {
        let mut args = spawn_backend().to_vec();
        args.extend(["--guest", guest]);
        args.extend_from_slice(extra);
        let start = Instant::now();
        let out = run_vmm(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{guest}: {stderr}");
        assert!(
            stderr.contains(expect),
            "{guest}: expected {expect:?} in:\n{stderr}"
        );
        eprintln!(
            "{guest}: exit 1 after {:?}: {}",
            start.elapsed(),
            stderr
                .lines()
                .find(|l| l.starts_with("vmm: error"))
                .unwrap_or_default()
        );
    }
}

#[test]
fn guest_takes_hot_add_and_removal_through_msix_on_irqfd() {
    hot_add_and_removal(&["--no-config-snapshot"]);
}

/// The same with pcierc's shared configuration snapshot: the guest's interrupt handler reads
/// Slot Status from the snapshot, so pcierc must update it before it signals the interrupt.
/// (Regression: it used to signal first, and the handler saw the Slot Status of before the
/// hot-add, as Linux's pciehp would have.)
#[test]
fn guest_takes_hot_add_and_removal_with_the_config_snapshot() {
    hot_add_and_removal(&[]);
}

/// A running pcierc with its control socket, the probe guest started on the VMM against it with
/// kernel command line `cmdline` and the VMM options `extra`, and a QMP session.
fn probe_guest_on_pcierc(cmdline: &str, extra: &[&str]) -> (Backend, RunningVmm, QmpSocket) {
    let backend = Backend::start_with_control(&[]);
    let socket = backend.socket.to_string_lossy().into_owned();
    let mut args = vec!["--backend-socket", &socket, "--guest", "pcie-probe"];
    args.extend(
        ["--cmdline", cmdline]
            .iter()
            .chain(&PROBE_LIMITS)
            .chain(extra),
    );
    let vmm = RunningVmm::start(&args);
    let qmp = qmp(backend.control.as_deref().expect("control socket"));
    (backend, vmm, qmp)
}

fn hot_add_and_removal(extra: &[&str]) {
    if !kvm_available() {
        return;
    }
    let extra = [extra, &["--stats"]].concat();
    let (_backend, mut vmm, mut qmp) = probe_guest_on_pcierc("pcie-probe.hotplug", &extra);
    vmm.expect_line("pcie-probe: MSI-X on 00:02.0: table at c0000000, vector 40");
    vmm.expect_line("pcie-probe: waiting for hot-add on 00:02.0");

    // Hot-add of the VMM's own endpoint: pcierc raises the slot's MSI-X vector by writing the
    // VMM's irqfd (KVM injects it) and tells the VMM (`FunctionAdded`), which makes the model.
    let sent = Instant::now();
    qmp.ok(
        "device_add",
        json!({"driver": "pcierc-testdev", "id": "ep0", "bus": "rp1", "owner": "vmm"}),
    )
    .unwrap();
    let (seen, irq) = vmm.expect_line("pcie-probe: hot-plug interrupt, slot status");
    let status = u16::from_str_radix(irq.rsplit(' ').next().unwrap_or_default(), 16).unwrap();
    assert_eq!(
        status & 0x48,
        0x48,
        "Presence Detect Changed and State: {irq}"
    );
    let irq_latency = seen.duration_since(sent);
    vmm.expect_line("pcie-probe: hot-add: card present in 00:02.0");
    // The guest powers the slot on and reads the new function: the VMM serves it.
    let (seen, _) = vmm.expect_line("pcie-probe: hot-added 01:00.0 1b36:0005");
    let ids_latency = seen.duration_since(sent);
    let serial = pcierc_examples::vmm::endpoint::serial_number("ep0");
    vmm.expect_line(&format!("01:00.0 dsn {serial:016x}"));
    vmm.expect_line("pcie-probe: endpoint 01:00.0 BAR0 c0200000 id 70636965 MSI-X table +2000");
    vmm.expect_line("pcie-probe: endpoint MSI-X vector 0 interrupt taken, messages sent 00000001");
    vmm.expect_line("pcie-probe: waiting for hot-remove on 00:02.0");

    // Removal: the attention button interrupt, the guest powers the slot off, pcierc completes
    // and tells the VMM (`FunctionRemoved`), which drops the model.
    qmp.ok("device_del", json!({"id": "ep0"})).unwrap();
    let (_, irq) = vmm.expect_line("pcie-probe: hot-plug interrupt, slot status");
    let status = u16::from_str_radix(irq.rsplit(' ').next().unwrap_or_default(), 16).unwrap();
    assert_eq!(status & 1, 1, "Attention Button Pressed: {irq}");
    vmm.expect_line("pcie-probe: attention button: powering 00:02.0 off");
    vmm.expect_line("pcie-probe: hot-remove: 00:02.0 is empty");
    vmm.expect_line("pcie-probe: after removal 01:00.0 ffffffff");
    let deleted = qmp
        .event("DEVICE_DELETED", Duration::from_secs(10))
        .unwrap()
        .expect("DEVICE_DELETED");
    assert_eq!(deleted["data"]["device"], "ep0");
    vmm.expect_line("pcie-probe: power off");
    let (status, stderr) = vmm.finish();
    assert!(status.success(), "{stderr}");
    // The root port's interrupts took the irqfd path: routes followed MsiRoute, no Msi message
    // was injected. The endpoint's one message went through KVM_SIGNAL_MSI.
    let line = |prefix: &str| {
        stderr
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_default()
            .to_string()
    };
    let irq_line = line("vmm: interrupts:");
    assert!(
        irq_line.ends_with(" 0 MSIs signalled from notifications")
            && !irq_line.contains(": 0 MSI routes"),
        "{irq_line}"
    );
    let endpoints = line("vmm: endpoints:");
    assert!(
        endpoints.starts_with("vmm: endpoints: 1 added, 1 removed, 0 served;")
            && endpoints.contains(" 1 MSI-X messages sent, 0 lost"),
        "{endpoints}\n{stderr}"
    );
    assert!(stderr.contains("endpoint ep0 added"), "{stderr}");
    assert!(
        stderr.contains("endpoint ep0 removed from 01:00.0"),
        "{stderr}"
    );
    eprintln!(
        "hot-add latency, device_add sent -> the guest's interrupt handler ran and printed: {:.2} ms; \
         -> the guest read the VMM's endpoint's ids: {:.2} ms\n{irq_line}\n{endpoints}",
        irq_latency.as_secs_f64() * 1000.0,
        ids_latency.as_secs_f64() * 1000.0
    );
}

/// AER and PME reach the guest (issue 6): with "pcie-probe.aer" the guest, once the VMM's
/// endpoint is hot-added behind rp1, enables rp1's Root Error Command (all three classes) and
/// Root Control PME Interrupt Enable on the MSI-X vector its slot driver set up. Errors and a PME
/// injected on pcierc's control socket arrive as that interrupt; the guest's handler prints Root
/// Error Status, Error Source Identification, rp1's own Uncorrectable Error Status and the PME
/// Requester ID, and clears them (RW1C) so the next one is signalled again.
#[test]
fn guest_takes_aer_and_pme_interrupts_from_rp1() {
    aer_and_pme(&["--no-config-snapshot"]);
}

/// The same with the configuration snapshot: the handler reads Root Error Status and Root
/// Status from shared memory, which pcierc must update before it signals.
#[test]
fn guest_takes_aer_and_pme_interrupts_with_the_config_snapshot() {
    aer_and_pme(&[]);
}

/// The `0x`-prefixed hex number after `key ` in a line of the guest's.
fn field(line: &str, key: &str) -> u32 {
    let v = line
        .split_whitespace()
        .skip_while(|w| *w != key)
        .nth(1)
        .and_then(|v| v.strip_prefix("0x"))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"));
    u32::from_str_radix(v, 16).unwrap_or_else(|e| panic!("{key} in {line:?}: {e}"))
}

fn aer_and_pme(extra: &[&str]) {
    if !kvm_available() {
        return;
    }
    let (_backend, mut vmm, mut qmp) =
        probe_guest_on_pcierc("pcie-probe.hotplug pcie-probe.aer", extra);
    vmm.expect_line("pcie-probe: waiting for hot-add on 00:02.0");
    qmp.ok(
        "device_add",
        json!({"driver": "pcierc-testdev", "id": "ep0", "bus": "rp1", "owner": "vmm"}),
    )
    .unwrap();
    vmm.expect_line("pcie-probe: hot-added 01:00.0 1b36:0005");
    vmm.expect_line("pcie-probe: AER and PME interrupts enabled on 00:02.0");

    // PCIe Base 6.0 §7.8.4.10 Root Error Status: ERR_FATAL/NONFATAL Received (bit 2), Non-Fatal
    // Error Messages Received (bit 5); §7.8.4.11: the requester in bits 31:16.
    const UE_NONFATAL_RECEIVED: u32 = 1 << 2 | 1 << 5;
    // rp1's own Unsupported Request (§7.8.4.2 bit 20, non-fatal by default severity): logged
    // in its Uncorrectable Error Status, reported with itself (00:02.0) as the source.
    qmp.ok(
        "pcie-aer-inject-error",
        json!({"id": "rp1", "error": "UNSUP"}),
    )
    .unwrap();
    let (_, own) = vmm.expect_line("aer: root-status");
    assert_eq!(field(&own, "root-status"), UE_NONFATAL_RECEIVED, "{own}");
    assert_eq!(field(&own, "source"), 0x0010 << 16, "{own}");
    assert_eq!(field(&own, "uncor"), 1 << 20, "{own}");

    // A Completion Timeout (bit 14) of the endpoint behind rp1: an error message received from
    // 01:00.0; the endpoint logs it itself, rp1's own status stays clear (docs/hotplug-aer.md).
    qmp.ok(
        "pcie-aer-inject-error",
        json!({"id": "ep0", "error": "COMP_TIME"}),
    )
    .unwrap();
    let (_, below) = vmm.expect_line("aer: root-status");
    assert_eq!(
        field(&below, "root-status"),
        UE_NONFATAL_RECEIVED,
        "{below}"
    );
    assert_eq!(field(&below, "source"), 0x0100 << 16, "{below}");
    assert_eq!(field(&below, "uncor"), 0, "{below}");

    // A PME from the endpoint: Root Status PME Requester ID 01:00.0 (§7.5.3.14).
    qmp.ok("x-pcierc-inject-pme", json!({"id": "ep0"})).unwrap();
    let (_, pme) = vmm.expect_line("pme: requester 0x0100");
    vmm.expect_line("pcie-probe: AER and PME reports taken");

    // The card leaves as in the hot-plug test, and the guest powers off.
    vmm.expect_line("pcie-probe: waiting for hot-remove on 00:02.0");
    qmp.ok("device_del", json!({"id": "ep0"})).unwrap();
    vmm.expect_line("pcie-probe: hot-remove: 00:02.0 is empty");
    vmm.expect_line("pcie-probe: power off");
    let (status, stderr) = vmm.finish();
    assert!(status.success(), "{stderr}");
    eprintln!("{own}\n{below}\n{pme}");
}

/// The same image boots under QEMU: `-kernel` finds the PVH ELF note (XEN_ELFNOTE_PHYS32_ENTRY)
/// and enters `pvh_start` in 32-bit mode, which builds page tables and enters long mode. On q35
/// with pcierc's default topology as `pcie-root-port`s, the guest finds ECAM in QEMU's ACPI
/// tables (through the RSDT: QEMU's RSDP is revision 0) and prints what it prints on the VMM,
/// plus the ICH9 functions. TCG always; KVM too when `/dev/kvm` is there. Skips without QEMU
/// (fails under `PCIERC_REQUIRE_TOOLS`).
#[test]
fn probe_guest_boots_under_qemu_through_its_pvh_note() {
    if !tool_available("qemu-system-x86_64") {
        return;
    }
    let dir = ScratchDir::new("vmm-qemu");
    let kernel = probe_image(&dir);
    let mut accels = vec!["tcg"];
    if std::path::Path::new("/dev/kvm").exists() {
        accels.push("kvm");
    }
    for accel in accels {
        let mut cmd = std::process::Command::new("qemu-system-x86_64");
        cmd.args(["-M", "q35", "-accel", accel, "-m", "128", "-nodefaults"])
            .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
            .arg("-no-reboot");
        for (f, n) in (0..4).zip(1..) {
            let mf = if f == 0 { ",multifunction=on" } else { "" };
            cmd.arg("-device").arg(format!(
                "pcie-root-port,id=rp{n},chassis={n},slot={n},port=0x1{f},bus=pcie.0,addr=0x2.{f}{mf}"
            ));
        }
        // The ordering checks as well: QEMU (which exits on every one of these writes) is the
        // reference for what the guest expects of the VMM's coalesced writes.
        cmd.args(["-kernel", &kernel, "-append", "pcie-probe.ordering"]);
        let start = Instant::now();
        let out = run_for(cmd, RUN_LIMIT);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(
            out.status.success(),
            "QEMU ({accel}) failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
        assert_lines(&stdout, ENUMERATION);
        assert_lines(
            &stdout,
            &[
                "pcie-probe: 64-bit guest running",
                "ACPI MCFG: ECAM b0000000 buses 00-ff",
                "00:1f.0 8086:2918 class 060100 type 00",
                "pcie-probe: functions 08 last bus 04",
                ORDERING,
            ],
        );
        eprintln!(
            "QEMU q35 ({accel}): booted through PVH and powered off in {:.2} s\n{}",
            start.elapsed().as_secs_f64(),
            latency_report(&stdout, "")
        );
    }
}

/// A reboot starts from the power-on state, as QEMU's system reset does: the `reboot-state`
/// guest changes what a kernel sets up (CR0/CR4 bits, PAT, KVM's kvmclock, steal-time and PV
/// EOI MSRs, the local APIC's TPR, SVR and a running periodic timer, an unmasked IOAPIC entry,
/// CONFIG_ADDRESS, which the VMM latches itself, and so what CONFIG_DATA reads)
/// and resets through 0xCF9; its second boot must print the first boot's state. (Regression: the
/// VMM kept KVM's vCPU and irqchip state across reboots, so a rebooted Linux inherited the old
/// kernel's kvmclock and PV EOI areas and an enabled APIC.)
#[test]
fn reboot_starts_from_the_power_on_state() {
    if !kvm_available() {
        return;
    }
    let out = run_vmm(&[spawn_backend().as_slice(), &["--guest", "reboot-state"]].concat());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}\n{stdout}");
    let section = |from: &str, to: Option<&str>, prefix: &str| -> Vec<(String, String)> {
        let start = stdout
            .find(from)
            .unwrap_or_else(|| panic!("no {from:?} in:\n{stdout}"));
        let rest = &stdout[start..];
        let rest = to
            .and_then(|t| rest.find(t))
            .map_or(rest, |end| &rest[..end]);
        rest.lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .filter_map(|l| l.split_once(' '))
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect()
    };
    let boot1 = section(
        "reboot-state: boot 1",
        Some("reboot-state: boot 2"),
        "state ",
    );
    let changed = section(
        "reboot-state: boot 1",
        Some("reboot-state: boot 2"),
        "changed ",
    );
    let boot2 = section("reboot-state: boot 2", None, "state ");
    assert!(boot1.len() >= 8, "too few state lines:\n{stdout}");
    assert_eq!(
        boot1.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        changed.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    // Every change took (else the comparison below proves nothing for it)...
    for ((name, before), (_, after)) in boot1.iter().zip(&changed) {
        assert_ne!(
            before, after,
            "the guest could not change {name}:\n{stdout}"
        );
    }
    // ...and the reboot undid all of them.
    let diffs: Vec<String> = boot1
        .iter()
        .zip(&boot2)
        .filter(|(a, b)| a != b)
        .map(|((n, a), (_, b))| format!("{n}: power-on {a}, after the reboot {b}"))
        .collect();
    assert!(
        boot1.len() == boot2.len() && diffs.is_empty(),
        "the second boot did not start from the power-on state:\n  {}\n{stdout}",
        diffs.join("\n  ")
    );
    assert!(
        stderr.contains("vmm: guest reset; rebooting (reboot 1)"),
        "{stderr}"
    );
    eprintln!(
        "reboot-state: {} registers back at their power-on values",
        boot1.len()
    );
}

/// `--ecam-map` (issue 17 item 7): with pcierc's configuration pages mapped read-only into the
/// ECAM window, the probe guest reads the same values as with every read trapped, across a bus
/// renumbering, an ECAM move (PCIEXBAR written through ECAM itself) and back, and its 2000 timed
/// ECAM reads of 00:00.0 exit no more: the forwarded MMIO exits drop by at least that many, and
/// what is left is the guest's writes and the reads of trapped pages.
#[test]
fn ecam_reads_from_mapped_pages_match_trapped_reads_without_exits() {
    if !kvm_available() {
        return;
    }
    let dir = ScratchDir::new("vmm-ecam-map");
    let kernel = probe_image(&dir);
    let run = |mode: &str| {
        let mut args = spawn_backend().to_vec();
        args.extend(["--kernel", &kernel, "--stats", "--ecam-map", mode]);
        args.extend(["--cmdline", "pcie-probe.ecam-move"]);
        args.extend(PROBE_LIMITS);
        let (stdout, stderr) = run_vmm_ok(&args);
        check_enumeration(&stdout);
        let forwarded_mmio: u64 = stderr
            .lines()
            .find_map(|l| l.strip_prefix("vmm: exits forwarded-mmio"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no forwarded-mmio exit count:\n{stderr}"));
        let lines: Vec<String> = stdout
            .lines()
            .filter(|l| !l.starts_with("bench: "))
            .map(str::to_owned)
            .collect();
        (lines, forwarded_mmio, stderr)
    };
    let (mapped, mapped_exits, mapped_err) = run("on");
    let (trapped, trapped_exits, trapped_err) = run("off");
    assert_lines(
        &mapped.join("\n"),
        &[
            "ecam-move: start 00:00.0 29c08086 00:02.0 buses 00010100 01:00.0 ffffffff 05:00.0 ffffffff",
            "ecam-move: rp1 on bus 05 00:00.0 29c08086 00:02.0 buses 00050500 01:00.0 ffffffff 05:00.0 ffffffff",
            "ecam-move: at e0000000 00:00.0 29c08086 00:02.0 buses 00050500 01:00.0 ffffffff 05:00.0 ffffffff",
            "ecam-move: b0000000 after the move ffffffff",
            "ecam-move: back 00:00.0 29c08086 00:02.0 buses 00010100 01:00.0 ffffffff 05:00.0 ffffffff",
        ],
    );
    assert_eq!(mapped, trapped, "the guest saw different values");
    let map_line = |stderr: &str| {
        stderr
            .lines()
            .find(|l| l.starts_with("vmm: ecam map:"))
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(map_line(&trapped_err), "vmm: ecam map: off");
    // Back at 0xb0000000, 256 buses: the MCH and four root ports mapped, device 0 below each
    // port trapped (8 pages each), the rest all ones.
    assert!(
        map_line(&mapped_err).starts_with(
            "vmm: ecam map: 5 image pages, 65499 all-ones pages, 32 trapped pages in 5 slots;"
        ),
        "{mapped_err}"
    );
    assert!(
        trapped_exits >= mapped_exits + 2000,
        "the timed ECAM reads still exit: {mapped_exits} forwarded MMIO exits mapped, \
         {trapped_exits} trapped"
    );
    // Left: the 2000 timed writes, the guest's few programming writes and trapped reads.
    assert!(
        mapped_exits <= 2000 + 64,
        "{mapped_exits} forwarded MMIO exits with the mapping:\n{mapped_err}"
    );
    eprintln!(
        "forwarded MMIO exits: {mapped_exits} with --ecam-map on, {trapped_exits} off\n{}",
        stats_lines(&mapped_err, &["vmm: exits", "vmm: ecam map"])
    );
}

/// The hot-add and removal with every ECAM read trapped (`--ecam-map off`), to compare with
/// the default (mapped) run above: the guest reads 01:00.0 as all ones, then the new function's
/// ids, either way.
#[test]
fn guest_takes_hot_add_and_removal_with_ecam_reads_trapped() {
    hot_add_and_removal(&["--ecam-map", "off"]);
}

/// What `pcie-probe.ordering` prints when every check passes: 5 functions x 64 registers x
/// (CONFIG_DATA against ECAM, CONFIG_ADDRESS read back), and 32 CMOS bytes. QEMU prints the same
/// (`probe_guest_boots_under_qemu_through_its_pvh_note`).
const ORDERING: &str = "ordering: 672 checks, mismatches 0";

/// The `vmm: coalesced port writes N ...` count, if the VMM coalesced any.
fn coalesced_writes(stderr: &str) -> Option<u64> {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("vmm: coalesced port writes "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// KVM's coalesced port writes (CONFIG_ADDRESS, the CMOS index: `--coalesce-pio on`, the
/// default) are applied in the order the guest made them, before the access that depends on
/// them: for every dword register below 0x100 of the MCH and the four root ports the guest
/// writes a decoy CONFIG_ADDRESS, the register's, and a byte to 0xCFB (not CONFIG_ADDRESS), then
/// reads CONFIG_DATA and compares it with ECAM, then writes and reads back CONFIG_ADDRESS; and
/// fills CMOS RAM through 0x70/0x71 and reads it back after decoy indexes. Without the VMM's
/// draining 171 of the 672 checks failed (and the rest passed only by the watcher's timing).
#[test]
fn coalesced_port_writes_apply_in_order_before_the_next_exit() {
    if !kvm_available() {
        return;
    }
    let dir = ScratchDir::new("vmm-coalesced");
    let kernel = probe_image(&dir);
    for mode in ["on", "off"] {
        let mut args = spawn_backend().to_vec();
        args.extend(["--kernel", &kernel, "--stats", "--coalesce-pio", mode]);
        args.extend(["--cmdline", "pcie-probe.ordering"]);
        args.extend(PROBE_LIMITS);
        let (stdout, stderr) = run_vmm_ok(&args);
        check_enumeration(&stdout);
        assert_lines(&stdout, &[ORDERING]);
        let coalesced = coalesced_writes(&stderr);
        if mode == "on" {
            // Per register: decoy, CONFIG_ADDRESS, the byte at 0xCFB, CONFIG_ADDRESS again;
            // per CMOS byte: the index of the fill, the decoy and the index of the read.
            let at_least = 5 * 64 * 4 + 32 * 3;
            let n = coalesced.unwrap_or_else(|| panic!("nothing coalesced:\n{stderr}"));
            assert!(
                n >= at_least,
                "{n} coalesced writes, expected {at_least}:\n{stderr}"
            );
        } else {
            assert_eq!(coalesced, None, "--coalesce-pio off coalesced:\n{stderr}");
        }
        eprintln!(
            "--coalesce-pio {mode}:\n{}{}",
            latency_report(&stdout, &stderr),
            stats_lines(&stderr, &["vmm: exits", "vmm: coalesced"])
        );
    }
}

/// A reset requested through ICH9's Reset Control (0xCF9, inside the CONFIG_ADDRESS zone, so
/// coalesced) takes effect although the guest then halts with interrupts off and never exits
/// again: the VMM's watcher applies the waiting write. With `--no-reboot` the VMM ends at the
/// reset; without the watcher it would hang until `--timeout`.
#[test]
fn coalesced_reset_request_is_taken_without_a_later_exit() {
    if !kvm_available() {
        return;
    }
    let dir = ScratchDir::new("vmm-coalesced-cf9");
    let kernel = probe_image(&dir);
    let mut args = spawn_backend().to_vec();
    args.extend(["--kernel", &kernel, "--stats", "--no-reboot"]);
    args.extend(["--cmdline", "pcie-probe.cf9-halt"]);
    args.extend(PROBE_LIMITS);
    let (stdout, stderr) = run_vmm_ok(&args);
    assert_lines(&stdout, &["pcie-probe: reset through 0xCF9, then halt"]);
    assert!(
        stderr.contains("vmm: guest reset; stopping (--no-reboot)"),
        "{stderr}"
    );
    let by_watcher = stderr
        .lines()
        .find_map(|l| l.strip_prefix("vmm: coalesced port writes "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(
        by_watcher.is_some_and(|n| n >= 1),
        "the reset was not applied by the watcher:\n{stderr}"
    );
}

/// With an extra PCI segment in pcierc's topology the VMM writes its MCFG entry and DSDT host
/// bridge and the probe guest still finds segment 0 first in MCFG and enumerates it; a window
/// that overlaps guest RAM is refused before the guest runs.
#[test]
fn an_extra_pci_segment_boots_and_a_window_over_ram_is_refused() {
    if !kvm_available() {
        return;
    }
    let dir = ScratchDir::new("vmm-segments");
    let kernel = probe_image(&dir);
    let topology = |base: &str| {
        let path = dir.0.join(format!("segments-{base}.toml"));
        std::fs::write(
            &path,
            format!(
                "[[segment]]\nid = 'seg1'\nsegment = 1\necam-base = {base}\n\
                 [[root-port]]\nid = 'rp1'\naddr = '2.0'\nchassis = 1\nslot = 1\n\
                 [[root-port]]\nid = 'rp5'\nbus = 'seg1'\naddr = '3.0'\nchassis = 5\n"
            ),
        )
        .unwrap();
        path.to_string_lossy().into_owned()
    };
    let run = |file: &str| {
        let mut args = spawn_backend().to_vec();
        args.extend(["--backend-arg=--topology", "--backend-arg", file]);
        args.extend(["--kernel", &kernel]);
        args.extend(PROBE_LIMITS);
        run_vmm(&args)
    };
    let ok = topology("0x1000000000");
    let out = run(&ok);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_lines(
        &stdout,
        &[
            "ACPI MCFG: ECAM b0000000 buses 00-ff",
            "00:00.0 8086:29c0 class 060000 type 00",
            "00:02.0 buses 00/01/01",
            "pcie-probe: power off",
        ],
    );
    let over_ram = topology("0x2000000");
    let out = run(&over_ram);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("PCI segment 0001's ECAM window 0x2000000+0x10000000 overlaps guest RAM"),
        "{stderr}"
    );
}
