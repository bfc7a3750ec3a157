//! Host PCI functions passed through to the guest behind pcierc's root ports, with rust-vmm's
//! `vfio-ioctls` as cloud-hypervisor does: the function's IOMMU group joins a VFIO container
//! (type 1 v2 IOMMU) that maps guest RAM for DMA, its BAR accesses are forwarded to the
//! device's regions (trapped; mapping them into the guest is not done yet), and its
//! configuration space is the device's own except for what a VMM must virtualise
//! (docs/passthrough.md).
//!
//! [`host`]: the checks sysfs allows before anything is opened (`--vfio` with a device that is
//! missing, not bound to vfio-pci or sharing its IOMMU group ends the VMM at start, one line).

pub mod container;
pub mod errors;
pub mod function;
pub mod host;

use std::path::PathBuf;

pub use host::{HostFunction, Sbdf};

/// Why a function cannot be passed through. Each names the device.
#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    /// No such function under /sys/bus/pci/devices.
    #[error("{sbdf}: no such PCI device")]
    NoDevice {
        /// The function.
        sbdf: Sbdf,
    },
    /// Bound to another driver.
    #[error("{sbdf}: bound to {driver}, not vfio-pci (docs/passthrough.md: binding to vfio-pci)")]
    WrongDriver {
        /// The function.
        sbdf: Sbdf,
        /// The driver it is bound to.
        driver: String,
    },
    /// Bound to no driver.
    #[error("{sbdf}: bound to no driver, not vfio-pci (docs/passthrough.md: binding to vfio-pci)")]
    NoDriver {
        /// The function.
        sbdf: Sbdf,
    },
    /// No IOMMU group: the IOMMU is off or does not translate for it.
    #[error("{sbdf}: no IOMMU group (is the host's IOMMU on? intel_iommu=on or amd_iommu=on)")]
    NoIommuGroup {
        /// The function.
        sbdf: Sbdf,
    },
    /// Its IOMMU group holds functions not passed through.
    #[error("{sbdf}: IOMMU group {group} also holds {others}; pass every function of the group through, or none")]
    SharedGroup {
        /// The function.
        sbdf: Sbdf,
        /// Its group.
        group: u32,
        /// The other members, comma-separated.
        others: String,
    },
    /// sysfs could not be read.
    #[error("{sbdf}: reading {path}: {source}")]
    Sysfs {
        /// The function.
        sbdf: Sbdf,
        /// What was read.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// An eventfd could not be made.
    #[error("{sbdf}: eventfd: {source}")]
    Eventfd {
        /// The function.
        sbdf: Sbdf,
        /// Why.
        source: std::io::Error,
    },
    /// A KVM operation failed.
    #[error("{sbdf}: {what}: {source}")]
    Kvm {
        /// The function.
        sbdf: Sbdf,
        /// The operation.
        what: &'static str,
        /// What KVM said.
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be described to VFIO.
    #[error("{sbdf}: guest memory: {detail}")]
    Memory {
        /// The function.
        sbdf: Sbdf,
        /// What went wrong.
        detail: String,
    },
    /// `open_all` was given no function.
    #[error("no function to pass through")]
    Nothing,
    /// A VFIO operation failed.
    #[error("{sbdf}: {what}: {source}")]
    Vfio {
        /// The function.
        sbdf: Sbdf,
        /// The operation.
        what: &'static str,
        /// What VFIO said.
        source: vfio_ioctls::VfioError,
    },
}

/// `--vfio SBDF[,port=ID][,addr=D.F]`: a host function to pass through behind root port `ID`
/// (the first root port with an empty slot when not given) at device `D`, function `F` of the
/// port's secondary bus (device 0 and the host function's number when not given, so the
/// functions of one device given to one port keep their numbers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VfioSpec {
    /// The host function.
    pub host: Sbdf,
    /// The root port's id.
    pub port: Option<String>,
    /// Device and function below the port.
    pub addr: Option<(u8, u8)>,
}

impl std::str::FromStr for VfioSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<VfioSpec, String> {
        let mut parts = s.split(',');
        let host = parts.next().unwrap_or_default().parse::<Sbdf>()?;
        let mut spec = VfioSpec {
            host,
            port: None,
            addr: None,
        };
        for p in parts {
            match p.split_once('=') {
                Some(("port", id)) if !id.is_empty() => spec.port = Some(id.to_owned()),
                Some(("addr", a)) => spec.addr = Some(parse_addr(a)?),
                _ => {
                    return Err(format!(
                        "unknown --vfio option {p:?} (known: port=ID, addr=D.F)"
                    ))
                }
            }
        }
        Ok(spec)
    }
}

/// `D.F` or `D` (function 0), hexadecimal device as QEMU's `addr=`.
fn parse_addr(a: &str) -> Result<(u8, u8), String> {
    let bad = || format!("addr={a:?}: expected D.F (device 0-1f hexadecimal, function 0-7)");
    let (d, f) = a.split_once('.').unwrap_or((a, "0"));
    let d = u8::from_str_radix(d, 16)
        .ok()
        .filter(|&d| d < 32)
        .ok_or_else(bad)?;
    let f = f.parse::<u8>().ok().filter(|&f| f < 8).ok_or_else(bad)?;
    Ok((d, f))
}

/// A host function passed through: the guest's view of it over its VFIO device.
pub struct Assigned {
    /// What `--vfio` asked for.
    pub spec: VfioSpec,
    /// The host function.
    pub host: HostFunction,
    /// Its index among the passed-through functions (names its interrupt vectors).
    pub index: u32,
    /// Configuration space and BARs as the guest sees them.
    pub view: function::Passthrough<vfio_ioctls::VfioDevice>,
    /// Signalled by the host's vfio-pci when the host's AER driver saw an error of the device
    /// (`VFIO_PCI_ERR_IRQ_INDEX`); `None` when the device offers no error interrupt.
    pub error: Option<vmm_sys_util::eventfd::EventFd>,
}

impl Assigned {
    /// The function id the VMM claims it under in pcierc's hierarchy: `vfio-SSSS-BB-DD.F`.
    pub fn id(&self) -> String {
        function_id(self.host.sbdf)
    }
}

/// The function id of host function `sbdf` in pcierc's hierarchy (pcierc's names allow letters,
/// digits, `-`, `.` and `_`).
pub fn function_id(sbdf: Sbdf) -> String {
    format!(
        "vfio-{:04x}-{:02x}-{:02x}.{}",
        sbdf.segment, sbdf.bus, sbdf.device, sbdf.function
    )
}

/// An eventfd on the device's error interrupt, if it has one.
fn error_eventfd(
    device: &vfio_ioctls::VfioDevice,
    sbdf: Sbdf,
) -> Result<Option<vmm_sys_util::eventfd::EventFd>, VfioError> {
    let index = vfio_bindings::bindings::vfio::VFIO_PCI_ERR_IRQ_INDEX;
    if device.get_irq_info(index).is_none_or(|i| i.count == 0) {
        return Ok(None);
    }
    let fd = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK)
        .map_err(|source| VfioError::Eventfd { sbdf, source })?;
    device
        .enable_irq(index, vec![&fd])
        .map_err(|source| VfioError::Vfio {
            sbdf,
            what: "registering the error eventfd (VFIO_PCI_ERR_IRQ_INDEX)",
            source,
        })?;
    Ok(Some(fd))
}

/// Check every `--vfio` function under the sysfs at `sysfs_root`, then open them all in one
/// container with guest RAM mapped for DMA. Nothing is opened unless every check passes.
pub fn open_all(
    vm: &kvm_ioctls::VmFd,
    mem: &vm_memory::GuestMemoryMmap,
    specs: &[VfioSpec],
    sysfs_root: &std::path::Path,
) -> Result<(container::Container, Vec<Assigned>), VfioError> {
    let hosts: Vec<HostFunction> = specs
        .iter()
        .map(|s| host::find(sysfs_root, s.host))
        .collect::<Result<_, _>>()?;
    host::check_groups(&hosts)?;
    let Some(first) = hosts.first() else {
        return Err(VfioError::Nothing);
    };
    let container = container::Container::new(vm, first)?;
    let mut assigned = Vec::new();
    for (i, (spec, host)) in specs.iter().zip(hosts).enumerate() {
        let device = container.open(&host, mem, i == 0)?;
        let sizes: [u64; 6] = std::array::from_fn(|bar| device.get_region_size(bar as u32));
        let error = error_eventfd(&device, host.sbdf)?;
        let view = function::Passthrough::new(device, sizes);
        log::info!(
            "{}: IOMMU group {}, BARs {:?}, MSI-X {:?}, MSI {}",
            host.sbdf,
            host.group,
            view.bars(),
            view.msix_place(),
            if view.hidden_msi().is_some() {
                "hidden"
            } else {
                "none"
            }
        );
        assigned.push(Assigned {
            spec: spec.clone(),
            host,
            index: i as u32,
            view,
            error,
        });
    }
    Ok((container, assigned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vfio_options_parse() {
        let s: VfioSpec = "0000:01:00.0,port=rp2,addr=0.1".parse().unwrap();
        assert_eq!(s.host.to_string(), "0000:01:00.0");
        assert_eq!((s.port.as_deref(), s.addr), (Some("rp2"), Some((0, 1))));
        let s: VfioSpec = "01:00.3".parse().unwrap();
        assert_eq!((s.port, s.addr), (None, None));
        assert_eq!(
            "01:00.0,addr=1f".parse::<VfioSpec>().unwrap().addr,
            Some((0x1f, 0))
        );
        for bad in [
            "",
            "01:00.0,port=",
            "01:00.0,addr=20.0",
            "01:00.0,addr=0.8",
            "01:00.0,bus=rp1",
        ] {
            assert!(bad.parse::<VfioSpec>().is_err(), "{bad:?} accepted");
        }
    }
}
