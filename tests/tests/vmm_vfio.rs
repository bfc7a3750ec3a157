//! `vmm --vfio` with devices that cannot be passed through: each ends the VMM at start with one
//! line naming the device and the reason (exit 1), before the guest runs. The passthrough itself
//! runs in the nested tests (a device behind an emulated IOMMU in L1).

mod vmm_support;

use vmm_support::{kvm_available, run_vmm, spawn_backend, text};

fn refused(vfio: &str) -> String {
    let args = ["--guest", "hang", "--timeout", "10", "--vfio", vfio];
    let out = run_vmm(&[spawn_backend().as_slice(), &args].concat());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "--vfio {vfio}: {stderr}");
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("vmm: error: "))
        .unwrap_or_else(|| panic!("no error line for --vfio {vfio}:\n{stderr}"))
        .to_owned()
}

#[test]
fn a_missing_device_is_named() {
    if !kvm_available() {
        return;
    }
    assert_eq!(refused("0000:7f:1f.7"), "0000:7f:1f.7: no such PCI device");
}

/// A host device bound to its own driver (this machine's first such PCI function): refused with
/// the driver's name, and the device is left alone.
#[test]
fn a_device_bound_to_another_driver_is_named_with_it() {
    if !kvm_available() {
        return;
    }
    let bound = std::fs::read_dir("/sys/bus/pci/devices")
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let driver = std::fs::read_link(e.path().join("driver")).ok()?;
            let driver = driver.file_name()?.to_str()?.to_owned();
            (driver != "vfio-pci").then(|| (e.file_name().into_string().ok(), driver))
        })
        .find_map(|(addr, driver)| Some((addr?, driver)));
    let Some((addr, driver)) = bound else {
        eprintln!("\n*** SKIP: this machine has no PCI function bound to a driver ***\n");
        return;
    };
    let line = refused(&addr);
    assert!(
        line.starts_with(&format!("{addr}: bound to {driver}, not vfio-pci")),
        "{line}"
    );
}

#[test]
fn malformed_options_are_usage_errors() {
    for bad in ["01:00", "0000:01:00.0,port=", "0000:01:00.0,bus=rp1"] {
        let out = run_vmm(&["--guest", "hang", "--vfio", bad]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "--vfio {bad}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("--vfio"),
            "{}",
            text(&out.stderr)
        );
    }
}
