//! PCI passthrough in the nested setup: L0 QEMU gets an emulated IOMMU (`intel-iommu` with
//! interrupt remapping) and PCIe devices, each behind a `pcie-root-port` of its own; L1 boots
//! with `intel_iommu=on`, loads VFIO and binds every function below those ports to `vfio-pci`
//! (`tests/nested/l1-init`), so the VMM in L1 can hand them to L2.
//!
//! L0's root ports sit at fixed addresses (`00:10.0` for the first device, `00:11.0` for the
//! second, ...), so L1 finds the functions below them without a scan; it prints one line per
//! function, which [`parse_vfio_lines`] reads:
//!
//! ```text
//! nested-l1: vfio 0000:01:00.0 port 0000:00:10.0 id 0x8086:0x10d3 driver vfio-pci group 3 dev /dev/vfio/3
//! ```
//!
//! Every L0 device has a QEMU `id`, so a test can inject AER errors into it through L0's QMP
//! socket (testkit's `QmpSocket`, `human-monitor-command` `pcie_aer_inject_error ID POISON_TLP`).

use std::path::{Path, PathBuf};

/// The PCI slot of L0's root port for the first passthrough device (`00:10.0`); the next
/// devices take the following slots.
pub const FIRST_PORT_SLOT: u8 = 0x10;

/// A PCIe device L0 gives L1 to pass through (`NestedOptions::passthrough`), behind its own
/// `pcie-root-port` in L0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PassthroughDevice {
    /// An e1000e (Intel 82574L) alone in its slot, on a user-mode network restricted to the
    /// host (`-netdev user,restrict=on`). `id` is its QEMU id in L0.
    E1000e {
        /// Its QEMU id in L0.
        id: String,
    },
    /// Two e1000e functions of one multi-function device in one slot: `ids[0]` at function 0
    /// (with `multifunction=on`), `ids[1]` at function 1. Without ACS between them, L1 puts
    /// both in one IOMMU group.
    MultiFunction {
        /// The QEMU ids in L0 of function 0 and function 1.
        ids: [String; 2],
    },
}

impl PassthroughDevice {
    /// An e1000e with QEMU id `id`.
    pub fn e1000e(id: &str) -> Self {
        PassthroughDevice::E1000e { id: id.to_owned() }
    }

    /// Two e1000e functions in one slot, with QEMU ids `f0` (function 0) and `f1`.
    pub fn multi_function(f0: &str, f1: &str) -> Self {
        PassthroughDevice::MultiFunction {
            ids: [f0.to_owned(), f1.to_owned()],
        }
    }

    /// The QEMU ids of its functions in L0, by function number.
    pub fn ids(&self) -> Vec<&str> {
        match self {
            PassthroughDevice::E1000e { id } => vec![id],
            PassthroughDevice::MultiFunction { ids } => ids.iter().map(String::as_str).collect(),
        }
    }
}

/// L1's address of the root port L0 puts the `index`th passthrough device behind.
pub fn l1_port(index: usize) -> String {
    format!("0000:00:{:02x}.0", usize::from(FIRST_PORT_SLOT) + index)
}

/// The QEMU id of L0's root port for the `index`th passthrough device.
pub fn l0_port_id(index: usize) -> String {
    format!("pt-rp{index}")
}

/// L0's QEMU arguments for `devices`: the IOMMU (first, as QEMU wants it before the devices
/// it translates for), then per device a root port, the network backends and the functions.
/// Empty when there is nothing to pass through.
pub fn qemu_args(devices: &[PassthroughDevice]) -> Vec<String> {
    if devices.is_empty() {
        return Vec::new();
    }
    // Interrupt remapping: what VFIO's type1 IOMMU wants for MSI (without it, vfio-pci needs
    // allow_unsafe_interrupts). Under TCG there is no kernel irqchip to split.
    let mut args = vec!["-device".to_owned(), "intel-iommu,intremap=on".to_owned()];
    for (i, d) in devices.iter().enumerate() {
        let slot = usize::from(FIRST_PORT_SLOT) + i;
        let port = l0_port_id(i);
        args.push("-device".into());
        args.push(format!(
            "pcie-root-port,id={port},chassis={chassis},slot={chassis},bus=pcie.0,addr={slot:#x}.0",
            chassis = 0x40 + i
        ));
        let ids = d.ids();
        for (f, id) in ids.iter().enumerate() {
            args.push("-netdev".into());
            args.push(format!("user,id={id}-net,restrict=on"));
            let mf = if ids.len() > 1 && f == 0 {
                ",multifunction=on"
            } else {
                ""
            };
            args.push("-device".into());
            args.push(format!(
                "e1000e,id={id},netdev={id}-net,bus={port},addr=0.{f}{mf}"
            ));
        }
    }
    args
}

/// L1's kernel parameters for `devices`: the IOMMU on, no timer check, and the root ports whose functions
/// `tests/nested/l1-init` binds to vfio-pci (`nested_vfio=PORT,PORT`). Empty when there is
/// nothing to pass through.
pub fn l1_cmdline(devices: &[PassthroughDevice]) -> String {
    if devices.is_empty() {
        return String::new();
    }
    let ports: Vec<String> = (0..devices.len()).map(l1_port).collect();
    // no_timer_check: with interrupt remapping, Linux panics when its early check that the
    // timer ticks through the IO-APIC fails ("timer doesn't work through Interrupt-remapped
    // IO-APIC"), and under TCG on a loaded host the check's busy-wait is too short (seen here).
    format!(
        "intel_iommu=on no_timer_check nested_vfio={}",
        ports.join(",")
    )
}

/// A function L1 bound to vfio-pci, ready for the VMM's `--vfio`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VfioFunction {
    /// Its QEMU id in L0 (for `pcie_aer_inject_error` on L0's QMP).
    pub l0_id: String,
    /// Its address in L1, e.g. `0000:01:00.0`.
    pub sbdf: String,
    /// L1's address of the root port above it, e.g. `0000:00:10.0`.
    pub port: String,
    /// Vendor and device ID as L1's sysfs gives them, e.g. `0x8086:0x10d3`.
    pub vendor_device: String,
    /// Its IOMMU group in L1; the VMM opens `/dev/vfio/<group>`.
    pub group: u32,
}

/// The functions L1 bound, from its `nested-l1: vfio ...` lines, each matched to its L0 id
/// (by root port and function number); an error naming what is missing unless every function
/// of `devices` is there, bound to vfio-pci, in an IOMMU group whose `/dev/vfio` node exists.
pub fn parse_vfio_lines(
    lines: &[&str],
    devices: &[PassthroughDevice],
) -> Result<Vec<VfioFunction>, String> {
    let mut found = Vec::new();
    let mut problems = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let port = l1_port(i);
        for (f, id) in d.ids().into_iter().enumerate() {
            let line = lines.iter().find_map(|l| {
                let w: Vec<&str> = l.strip_prefix("nested-l1: vfio ")?.split(' ').collect();
                let func = w.first()?.rsplit('.').next()?.parse::<usize>().ok()?;
                (w.get(1) == Some(&"port") && w.get(2) == Some(&port.as_str()) && func == f)
                    .then_some(w)
            });
            let Some(w) = line else {
                problems.push(format!("{id}: no function {f} below {port}"));
                continue;
            };
            // SBDF port P id V:D driver DRV group G dev NODE
            let field = |name: &str| {
                w.iter()
                    .position(|x| *x == name)
                    .and_then(|p| w.get(p + 1))
                    .copied()
                    .unwrap_or("-")
            };
            let group = field("group").parse::<u32>();
            let node = field("dev");
            match (field("driver"), group) {
                ("vfio-pci", Ok(group)) if node == format!("/dev/vfio/{group}") => {
                    found.push(VfioFunction {
                        l0_id: id.to_owned(),
                        sbdf: w[0].to_owned(),
                        port: port.clone(),
                        vendor_device: field("id").to_owned(),
                        group,
                    })
                }
                _ => problems.push(format!("{id}: {}", w.join(" "))),
            }
        }
    }
    if problems.is_empty() {
        Ok(found)
    } else {
        Err(problems.join("; "))
    }
}

/// Where L0's QMP socket is in the scratch directory `dir`.
pub fn l0_qmp_socket(dir: &Path) -> PathBuf {
    dir.join("qmp-l0.sock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_args_put_each_device_behind_its_own_port() {
        let d = [
            PassthroughDevice::e1000e("nic0"),
            PassthroughDevice::multi_function("mf0", "mf1"),
        ];
        let a = qemu_args(&d).join(" ");
        assert!(a.starts_with("-device intel-iommu,intremap=on "), "{a}");
        assert!(a.contains("pcie-root-port,id=pt-rp0,chassis=64,slot=64,bus=pcie.0,addr=0x10.0"));
        assert!(a.contains("e1000e,id=nic0,netdev=nic0-net,bus=pt-rp0,addr=0.0 "));
        assert!(a.contains("pcie-root-port,id=pt-rp1,chassis=65,slot=65,bus=pcie.0,addr=0x11.0"));
        assert!(a.contains("e1000e,id=mf0,netdev=mf0-net,bus=pt-rp1,addr=0.0,multifunction=on"));
        assert!(a.ends_with("e1000e,id=mf1,netdev=mf1-net,bus=pt-rp1,addr=0.1"));
        assert_eq!(
            l1_cmdline(&d),
            "intel_iommu=on no_timer_check nested_vfio=0000:00:10.0,0000:00:11.0"
        );
        assert!(qemu_args(&[]).is_empty() && l1_cmdline(&[]).is_empty());
    }

    #[test]
    fn vfio_lines_are_matched_to_l0_ids() {
        let d = [
            PassthroughDevice::e1000e("nic0"),
            PassthroughDevice::multi_function("mf0", "mf1"),
        ];
        let lines = [
            "nested-l1: vfio 0000:01:00.0 port 0000:00:10.0 id 0x8086:0x10d3 driver vfio-pci group 3 dev /dev/vfio/3",
            "nested-l1: vfio 0000:02:00.1 port 0000:00:11.0 id 0x8086:0x10d3 driver vfio-pci group 4 dev /dev/vfio/4",
            "nested-l1: vfio 0000:02:00.0 port 0000:00:11.0 id 0x8086:0x10d3 driver vfio-pci group 4 dev /dev/vfio/4",
        ];
        let f = parse_vfio_lines(&lines, &d).expect("all there");
        let got: Vec<(&str, &str, u32)> = f
            .iter()
            .map(|v| (v.l0_id.as_str(), v.sbdf.as_str(), v.group))
            .collect();
        assert_eq!(
            got,
            [
                ("nic0", "0000:01:00.0", 3),
                ("mf0", "0000:02:00.0", 4),
                ("mf1", "0000:02:00.1", 4)
            ]
        );
        // Not bound, or no device node: named.
        let bad = [
            "nested-l1: vfio 0000:01:00.0 port 0000:00:10.0 id 0x8086:0x10d3 driver - group 3 dev absent",
        ];
        let e = parse_vfio_lines(&bad, &d[..1]).unwrap_err();
        assert!(e.starts_with("nic0: 0000:01:00.0"), "{e}");
        let e = parse_vfio_lines(&[], &d[1..]).unwrap_err();
        assert!(e.contains("mf0: no function 0 below 0000:00:10.0"), "{e}");
    }
}
