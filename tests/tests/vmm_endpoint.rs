//! The VMM's own endpoints behind pcierc's root ports, end to end under this machine's KVM:
//! pcierc owns the hierarchy (slots, bus numbers, windows) and answers `EREMOTE` for the
//! endpoints' configuration space; the VMM serves that, their BAR and their MSI-X. Hot-add and
//! removal through pcierc's control socket are in `vmm_guest.rs` (the pciehp flow).
//!
//! Without `/dev/kvm` these tests skip loudly (see `vmm_guest.rs`).

mod vmm_support;

use pcierc_examples::vmm::endpoint::serial_number;
use pcierc_protocol::{decode_name, Frontend, FrontendOptions};
use pcierc_tests::process::Backend;
use vmm_support::{
    assert_lines, kvm_available, run_vmm, run_vmm_ok, spawn_backend, stats_lines, text,
    PROBE_LIMITS,
};

/// What the probe guest prints for the test endpoint at `bus`:00.0 with function id `id`.
fn endpoint_lines(bus: u8, id: &str) -> Vec<String> {
    vec![
        format!("{bus:02x}:00.0 1b36:0005 class ff0000 type 00"),
        format!("{bus:02x}:00.0 dsn {:016x}", serial_number(id)),
    ]
}

/// The BAR and MSI-X check the guest makes on the endpoint behind rp1 (bus 1).
fn rp1_demo_lines() -> Vec<String> {
    [
        "pcie-probe: endpoint 01:00.0 BAR0 c0200000 id 70636965 MSI-X table +2000",
        "pcie-probe: endpoint 01:00.0 through CF8/CFC 1b36:0005 device 0005",
        "pcie-probe: endpoint MSI-X vector 0 interrupt taken, messages sent 00000001",
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn cold_plugged_endpoints_are_enumerated_with_their_serial_numbers() {
    if !kvm_available() {
        return;
    }
    // With the configuration snapshot (pcierc's functions read from shared memory, the VMM's
    // after one EREMOTE round trip) and without it (every access a message).
    for extra in [&[][..], &["--no-config-snapshot", "--no-acpi"][..]] {
        let mut args = spawn_backend().to_vec();
        args.extend([
            "--guest",
            "pcie-probe",
            "--endpoint",
            "rp1",
            "--endpoint",
            "rp3",
        ]);
        args.extend(["--stats"].iter().chain(&PROBE_LIMITS).chain(extra));
        let (stdout, stderr) = run_vmm_ok(&args);
        let mut expected = endpoint_lines(1, "ep-rp1");
        expected.extend(endpoint_lines(3, "ep-rp3"));
        expected.extend(rp1_demo_lines());
        expected.extend(
            [
                "00:02.0 buses 00/01/01",
                "00:02.2 buses 00/03/03",
                "pcie-probe: functions 07 last bus 04",
                "pcie-probe: power off",
            ]
            .map(String::from),
        );
        assert_lines(&stdout, &expected);
        let endpoints = stderr
            .lines()
            .find(|l| l.starts_with("vmm: endpoints:"))
            .unwrap_or_default();
        assert!(
            endpoints.starts_with("vmm: endpoints: 2 added, 0 removed, 2 served;")
                && endpoints.ends_with(" 1 MSI-X messages sent, 0 lost"),
            "{endpoints}"
        );
        eprintln!(
            "vmm {extra:?}:\n{}",
            stats_lines(&stderr, &["vmm: exits endpoint", "vmm: endpoints"])
        );
    }
}

#[test]
fn endpoints_are_pcierc_functions_owned_by_the_vmm() {
    if !kvm_available() {
        return;
    }
    let backend = Backend::start(&[]);
    let socket = backend.socket.to_string_lossy().into_owned();
    // Another emulator's function behind rp3: the VMM must not serve it (pcierc answers EREMOTE,
    // the VMM finds no function of its own there: all ones, so the guest sees an empty bus).
    let mut gpu = Frontend::connect(&backend.socket, FrontendOptions::vmm("gpu-dm")).unwrap();
    gpu.claim_function("rp3", "gpu0", "vfio-pci", 0, true, false)
        .unwrap();
    let mut args = vec!["--backend-socket", &socket, "--guest", "pcie-probe"];
    args.extend(["--endpoint", "rp2"].iter().chain(&PROBE_LIMITS));
    let mut expected = endpoint_lines(2, "ep-rp2");
    expected.push("pcie-probe: functions 06 last bus 04".into());
    // Twice: the second run finds its claim from the first (a VMM that restarts under the same
    // name serves its functions again) and serves it.
    for _ in 0..2 {
        let (stdout, _) = run_vmm_ok(&args);
        assert_lines(&stdout, &expected);
        assert!(
            !stdout.contains("03:00.0"),
            "gpu-dm's function is not the VMM's to serve:\n{stdout}"
        );
    }
    let mut tool = Frontend::connect(&backend.socket, FrontendOptions::tool("check")).unwrap();
    let topology = tool.topology().unwrap();
    let mut owners: Vec<(&str, &str)> = topology
        .functions
        .iter()
        .filter_map(|f| Some((decode_name(&f.id)?, decode_name(&f.owner)?)))
        .filter(|(id, _)| id.starts_with("ep-") || *id == "gpu0")
        .collect();
    owners.sort();
    assert_eq!(owners, vec![("ep-rp2", "vmm"), ("gpu0", "gpu-dm")]);

    // A claim pcierc refuses ends the VMM with pcierc's reason.
    let out = run_vmm(&[
        "--backend-socket",
        &socket,
        "--guest",
        "pcie-probe",
        "--endpoint",
        "rp3",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("ClaimFunction ep-rp3 behind rp3"),
        "rp3's slot is gpu-dm's: {stderr}"
    );
}
