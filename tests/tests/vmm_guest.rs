//! End to end under this machine's KVM: the example VMM (`examples/src/bin/vmm.rs`) boots the
//! freestanding test guests of `examples/guest/` with a real `pcierc` behind it, and the guest's
//! firmware-style enumeration (CF8/CFC, ECAM, bus numbering) goes through pcierc unchanged.
//!
//! Without `/dev/kvm` these tests skip loudly, also in CI: CI machines may lack (nested) KVM, and
//! everything the VMM forwards is covered without KVM by the socket tests. Set
//! `PCIERC_REQUIRE_KVM=1` to make a missing `/dev/kvm` a failure instead (docs/vmm.md).

mod vmm_support;

use std::time::Instant;

use pcierc_protocol::{Frontend, FrontendOptions};
use pcierc_tests::process::{pcierc_bin, Backend, ScratchDir};
use serde_json::json;
use vmm_support::{kvm_available, probe_image, run_vmm, text, Qmp, RunningVmm};

/// What the probe guest must print for pcierc's default topology: QEMU's ids for the Q35 MCH and
/// the four `pcie-root-port`s, each numbered with its own secondary bus and read back.
fn check_enumeration(stdout: &str) {
    let expected = [
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
        "pcie-probe: functions 05 last bus 04",
        "pcie-probe: power off",
    ];
    let lines: Vec<&str> = stdout.lines().collect();
    for e in expected {
        assert!(
            lines.contains(&e),
            "missing {e:?} in the guest's output:\n{stdout}"
        );
    }
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
    let pcierc = pcierc_bin();
    let pcierc = pcierc.to_string_lossy();
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
        let mut args = vec![
            "--spawn-backend",
            "--pcierc",
            &pcierc,
            "--kernel",
            &kernel,
            "--mem",
            "64",
            "--stats",
            "--timeout",
            "20",
        ];
        args.extend_from_slice(extra);
        let out = run_vmm(&args);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(
            out.status.success(),
            "vmm {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        );
        check_enumeration(&stdout);
        assert!(
            stdout.lines().any(|l| l == ecam_line),
            "{ecam_line:?}:\n{stdout}"
        );
        assert!(stderr.contains("vmm: guest powered off"), "{stderr}");
        eprintln!(
            "vmm {extra:?}: guest-measured time per access (trivial exit vs forwarded):\n{}{}",
            latency_report(&stdout, &stderr),
            stderr
                .lines()
                .filter(|l| l.starts_with("vmm: exits"))
                .map(|l| format!("  {l}\n"))
                .collect::<String>()
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
    let out = run_vmm(&[
        "--backend-socket",
        &socket,
        "--kernel",
        &kernel,
        "--mem",
        "64",
        "--timeout",
        "20",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", text(&out.stderr));
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

#[test]
fn guest_failures_end_the_vmm_with_a_clear_error() {
    if !kvm_available() {
        return;
    }
    let pcierc = pcierc_bin();
    let pcierc = pcierc.to_string_lossy();
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
        let mut args = vec!["--spawn-backend", "--pcierc", &pcierc, "--guest", guest];
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

fn hot_add_and_removal(extra: &[&str]) {
    if !kvm_available() {
        return;
    }
    let backend = Backend::start_with_control(&[]);
    let control = backend.control.clone().expect("control socket");
    let socket = backend.socket.to_string_lossy().into_owned();
    let mut args = vec![
        "--backend-socket",
        &socket,
        "--guest",
        "pcie-probe",
        "--cmdline",
        "pcie-probe.hotplug",
        "--mem",
        "64",
        "--stats",
        "--timeout",
        "20",
    ];
    args.extend_from_slice(extra);
    let mut vmm = RunningVmm::start(&args);
    vmm.expect_line("pcie-probe: MSI-X on 00:02.0: table at c0000000, vector 40");
    vmm.expect_line("pcie-probe: waiting for hot-add on 00:02.0");

    // Hot-add of the VMM's own endpoint: pcierc raises the slot's MSI-X vector by writing the
    // VMM's irqfd (KVM injects it) and tells the VMM (`FunctionAdded`), which makes the model.
    let mut qmp = Qmp::connect(&control);
    let sent = Instant::now();
    qmp.execute(
        "device_add",
        json!({"driver": "pcierc-testdev", "id": "ep0", "bus": "rp1", "owner": "vmm"}),
    );
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
    qmp.execute("device_del", json!({"id": "ep0"}));
    let (_, irq) = vmm.expect_line("pcie-probe: hot-plug interrupt, slot status");
    let status = u16::from_str_radix(irq.rsplit(' ').next().unwrap_or_default(), 16).unwrap();
    assert_eq!(status & 1, 1, "Attention Button Pressed: {irq}");
    vmm.expect_line("pcie-probe: attention button: powering 00:02.0 off");
    vmm.expect_line("pcie-probe: hot-remove: 00:02.0 is empty");
    vmm.expect_line("pcie-probe: after removal 01:00.0 ffffffff");
    let deleted = qmp.event("DEVICE_DELETED").expect("DEVICE_DELETED");
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
