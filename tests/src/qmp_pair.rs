//! QEMU and pcierc side by side through QMP: each started with the same devices, each with its
//! guest's configuration access (a [`QtestTarget`]) and its QMP socket, for the tests that
//! compare hot-plug, `device_del` and `query-pci` with QEMU's.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::process::{pcierc_bin, Backend, ScratchDir};
use crate::qmp_socket::QmpSocket;
use crate::qtest::{qemu_machine_with, Qemu, Qtest};
use crate::qtest_target::QtestTarget;

/// One side: its guest (qtest, ECAM enabled) and its QMP socket, with what must live as long.
pub struct QmpSide {
    /// Configuration access as the guest's.
    pub guest: QtestTarget,
    /// QEMU's QMP monitor or pcierc's control socket.
    pub qmp: QmpSocket,
    /// The scratch directory of QEMU's QMP socket, or the pcierc backend.
    _keep: Box<dyn std::any::Any>,
}

/// QEMU `qemu` as machine type `machine` with `-device` `devices`, a QMP socket, and ACPI
/// hot-plug below bridges off (both QEMUs hand hot-plug below cold-plugged bridges to ACPI
/// unless it is, and 10.0's `acpi_pcihp_device_plug_cb()` still takes over their secondary
/// buses). `tag` names the scratch directory. A failure to start is a panic.
pub fn qemu_with_qmp(qemu: &Qemu, machine: &str, devices: &[&str], tag: &str) -> QmpSide {
    let dir = ScratchDir::new(tag);
    let qmp_path = dir.0.join("qemu-qmp.sock");
    let qmp_arg = format!("unix:{},server=on,wait=off", qmp_path.display());
    let mut args = vec![
        "-global",
        "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off",
        "-qmp",
        &qmp_arg,
    ];
    args.extend(devices.iter().flat_map(|d| ["-device", *d]));
    let qt = qemu_machine_with(qemu, machine, &args);
    let qmp = QmpSocket::connect(&qmp_path, Duration::from_secs(10)).expect("QEMU's QMP");
    QmpSide {
        guest: QtestTarget::new(qt).expect("enabling ECAM in QEMU"),
        qmp,
        _keep: Box::new(dir),
    }
}

/// A pcierc backend started with `args` and its control socket, with `pcierc qtest` in front
/// of it. A failure to start is a panic.
pub fn pcierc_with_qmp(args: &[&str]) -> QmpSide {
    let backend = Backend::start_with_control(args);
    let mut cmd = Command::new(pcierc_bin());
    cmd.arg("qtest")
        .arg("--connect")
        .arg(&backend.socket)
        .env("RUST_LOG", "warn");
    let frontend = Qtest::spawn(cmd).expect("starting pcierc qtest");
    let control = backend.control.as_ref().expect("control socket");
    QmpSide {
        guest: QtestTarget::new(frontend).expect("enabling ECAM through pcierc"),
        qmp: QmpSocket::connect(control, Duration::from_secs(10)).expect("pcierc's QMP"),
        _keep: Box::new(backend),
    }
}

/// The ids of the devices QEMU lists under `/machine/peripheral` (`qom-list`).
pub fn peripherals(qmp: &mut QmpSocket) -> BTreeSet<String> {
    let list = qmp
        .ok("qom-list", json!({"path": "/machine/peripheral"}))
        .expect("qom-list");
    list.as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["type"].as_str().is_some_and(|t| t.starts_with("child<")))
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect()
}
