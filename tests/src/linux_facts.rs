//! What Linux must make of pcierc's default topology (the MCH and root ports rp1-rp4 at
//! 00:02.0-00:02.3), checked on the fact lines the test guests' probes print (`tests/vmm-linux/init`,
//! `tests/nested/probe.sh` `facts`): `dmesg LINE`, `pci BDF VENDOR:DEVICE class CLASS driver
//! DRIVER`, `service PORT:pcieTSS driver DRIVER`, `slot N address ADDR`.

/// Check what Linux found against what pcierc's default topology must give it; `Err` lists
/// every fact that is missing or wrong. `endpoint`: the VMM's test endpoint behind rp1.
pub fn check_default_topology(facts: &[&str], endpoint: bool) -> Result<(), String> {
    let has = |want: &str| facts.contains(&want);
    let dmesg = |needle: &str| {
        facts
            .iter()
            .any(|f| f.starts_with("dmesg ") && f.contains(needle))
    };
    let mut problems = Vec::new();
    let mut require = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };
    // ECAM: Linux takes the MCFG window (and, x86, uses it for extended configuration space:
    // without it there would be no AER service below, AER being at 0x100 of the root ports).
    require(
        dmesg("PCI: MMCONFIG for domain 0000 [bus 00-ff] at [mem 0xb0000000-0xbfffffff]"),
        "dmesg: MMCONFIG (ECAM) at 0xb0000000 for buses 00-ff".into(),
    );
    require(
        !dmesg("not using MMCONFIG") && !dmesg("MMCONFIG has no entries"),
        "dmesg: MMCONFIG not refused".into(),
    );
    // _OSC hands the PCIe services to Linux.
    let osc = facts
        .iter()
        .find(|f| f.starts_with("dmesg ") && f.contains("_OSC: OS now controls ["));
    for service in ["PCIeHotplug", "PME", "AER", "PCIeCapability"] {
        require(
            osc.is_some_and(|l| l.contains(service)),
            format!("_OSC grants {service}"),
        );
    }
    for f in 0..4 {
        let port = format!("0000:00:02.{f}");
        require(
            has(&format!(
                "pci {port} 0x1b36:0x000c class 0x060400 driver pcieport"
            )),
            format!("{port}: a pcie-root-port bound to pcieport"),
        );
        for (service, driver) in [("001", "pcie_pme"), ("002", "aer"), ("004", "pciehp")] {
            require(
                has(&format!("service {port}:pcie{service} driver {driver}")),
                format!("{port}: port service {driver}"),
            );
        }
        let slot = f + 1;
        require(
            has(&format!("slot {slot} address 0000:0{slot}:00")),
            format!("pciehp slot {slot} for bus {slot:02x}"),
        );
    }
    if endpoint {
        require(
            has("pci 0000:01:00.0 0x1b36:0x0005 class 0xff0000 driver -"),
            "01:00.0: the VMM's test endpoint (1b36:0005, no driver)".into(),
        );
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "Linux's view differs from the expected one:\n  {}",
            problems.join("\n  ")
        ))
    }
}
