//! The properties every QEMU 7.2 PCI device has (`pci_props` in hw/pci/pci.c and the PCIe
//! `x-pcie-*` compat flags), parsed once for `pcie-root-port` ([`super::root_port`]),
//! `pcie-pci-bridge` ([`super::pcie_pci_bridge`]) and `pxb-pcie` ([`super::pxb_pcie`]): each
//! device's parser tries [`set`] first and takes its own properties when [`set`] did not.

use super::error::TopologyError;
use super::root_port::{bounded, parse_bool};
use crate::devices::pcie_pci_bridge::PciePciBridgeConfig;
use crate::devices::pxb_pcie::PxbPcieConfig;
use crate::devices::root_port::ACPI_INDEX_MAX;
use crate::devices::RootPortConfig;

type Result<T, E = TopologyError> = std::result::Result<T, E>;

/// The fields of a device's configuration that hold the common PCI device properties.
pub struct PciDeviceProps<'a> {
    /// `multifunction=`.
    pub multifunction: &'a mut bool,
    /// `x-pcie-extcap-init=`.
    pub extcap_init: &'a mut bool,
    /// `x-pcie-lnksta-dllla=`.
    pub lnksta_dllla: &'a mut bool,
    /// `acpi-index=`.
    pub acpi_index: &'a mut u32,
    /// `rombar=`.
    pub rombar: &'a mut u32,
    /// `romsize=` (`None`: not given).
    pub romsize: &'a mut Option<u32>,
}

/// The common properties of each device configuration that has them.
macro_rules! pci_device_props {
    ($($config:ty),*) => {$(
        impl<'a> From<&'a mut $config> for PciDeviceProps<'a> {
            fn from(c: &'a mut $config) -> Self {
                PciDeviceProps {
                    multifunction: &mut c.multifunction,
                    extcap_init: &mut c.extcap_init,
                    lnksta_dllla: &mut c.lnksta_dllla,
                    acpi_index: &mut c.acpi_index,
                    rombar: &mut c.rombar,
                    romsize: &mut c.romsize,
                }
            }
        }
    )*};
}
pci_device_props!(RootPortConfig, PciePciBridgeConfig, PxbPcieConfig);

/// Set common property `key` of device `id` from its QEMU-syntax `value`: `Ok(true)` if `key`
/// is one of them, `Ok(false)` (nothing changed) if it is not. Values QEMU refuses are refused
/// with its message.
pub fn set(id: &str, props: PciDeviceProps<'_>, key: &str, value: &str) -> Result<bool> {
    let flag = |property: &str| {
        parse_bool(value).ok_or_else(|| TopologyError::NotOnOff {
            id: id.to_string(),
            key: property.to_string(),
            value: value.to_string(),
        })
    };
    match key {
        "multifunction" => *props.multifunction = flag(key)?,
        "x-pcie-extcap-init" => *props.extcap_init = flag(key)?,
        "x-pcie-lnksta-dllla" => *props.lnksta_dllla = flag(key)?,
        "acpi-index" => {
            *props.acpi_index = bounded(id, "acpi-index", value, u32::MAX.into())? as u32
        }
        "rombar" => *props.rombar = bounded(id, "rombar", value, u32::MAX.into())? as u32,
        "romsize" => {
            // QEMU's default (u32::MAX) means "not given".
            let n = bounded(id, "romsize", value, u32::MAX.into())? as u32;
            *props.romsize = (n != u32::MAX).then_some(n);
        }
        // QEMU loads an option ROM from the file and shows it in the Expansion ROM BAR; pcierc
        // has no ROM to serve. An empty name is QEMU's "no ROM".
        "romfile" if value.is_empty() => {}
        "romfile" => {
            return Err(TopologyError::Unsupported {
                id: id.to_string(),
                property: "romfile",
                reason: "pcierc serves no option ROM (no Expansion ROM BAR)",
            })
        }
        // pci_qdev_realize(): only an Ethernet function can be a failover primary.
        "failover_pair_id" => {
            return Err(TopologyError::PortProperty {
                id: id.to_string(),
                property: "failover_pair_id",
                reason: "failover primary device is not an Ethernet device".into(),
            })
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// What QEMU 7.2 refuses of the common properties when it realizes device `id`
/// (`pci_qdev_realize()`), with its messages.
pub fn validate(id: &str, acpi_index: u32, romsize: Option<u32>) -> Result<()> {
    let refuse = |property, reason: String| {
        Err(TopologyError::PortProperty {
            id: id.to_string(),
            property,
            reason,
        })
    };
    if acpi_index > ACPI_INDEX_MAX {
        return refuse(
            "acpi-index",
            format!("acpi-index should be less or equal to {ACPI_INDEX_MAX}"),
        );
    }
    if let Some(size) = romsize.filter(|s| !s.is_power_of_two()) {
        return refuse("romsize", format!("ROM size {size} is not a power of two"));
    }
    Ok(())
}

/// Device configuration `cfg` with QEMU-syntax `properties` (as `-device` gives them, in order)
/// set by `set_property`, then checked by `validate`. `id`, `bus`, `addr` and the topology
/// file's `driver` are skipped: the caller names and places the device.
pub(super) fn parse<C>(
    mut cfg: C,
    properties: &[(&str, &str)],
    set_property: fn(&mut C, &str, &str) -> Result<()>,
    validate: fn(&C) -> Result<()>,
) -> Result<C> {
    for (key, value) in properties {
        match *key {
            "bus" | "addr" | "id" | "driver" => {}
            _ => set_property(&mut cfg, key, value)?,
        }
    }
    validate(&cfg)?;
    Ok(cfg)
}

/// The property names QEMU 7.2 lists in help fixture `fixtures/qemu-7.2/<name>.help` (made by
/// `-device DRIVER,help`), in its order.
#[cfg(test)]
pub(super) fn help_fixture(name: &str) -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../fixtures/qemu-7.2/{name}.help"));
    let text = std::fs::read_to_string(&path).expect("the help fixture");
    text.lines()
        .skip(1)
        .filter_map(|l| l.trim().split(['=', ' ']).next())
        .map(str::to_string)
        .collect()
}
