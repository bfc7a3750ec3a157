//! The `pxb-pcie` properties, by QEMU 7.2's names and value syntax (`-device pxb-pcie,help`):
//! one table ([`PROPERTIES`]) and one parser ([`set_property`]), as for `pcie-pci-bridge`. What
//! each changes is documented on [`PxbPcieConfig`] and in docs/qemu-compat.md.

use super::error::TopologyError;
use super::pci_device::{self, PciDeviceProps};
use super::root_port::{bounded, parse_bool};
use crate::devices::pxb_pcie::{PxbPcieConfig, NUMA_NODE_UNASSIGNED};

type Result<T, E = TopologyError> = std::result::Result<T, E>;

/// The driver name (`-device pxb-pcie`).
pub const DRIVER: &str = "pxb-pcie";

/// Every property QEMU 7.2 lists for `pxb-pcie`, in its order, then `bus`, `id` and the
/// topology file's `driver` key. `id`, `bus` and `addr` place the expander; [`set_property`]
/// takes the others.
pub const PROPERTIES: [&str; 15] = [
    "acpi-index",
    "addr",
    "bus_nr",
    "bypass_iommu",
    "failover_pair_id",
    "multifunction",
    "numa_node",
    "rombar",
    "romfile",
    "romsize",
    "x-pcie-extcap-init",
    "x-pcie-lnksta-dllla",
    "bus",
    "id",
    "driver",
];

/// Set property `key` of an expander from its QEMU-syntax `value`. `id`, `bus` and `addr` are
/// the caller's; any other name QEMU does not list is refused by name
/// ([`TopologyError::UnknownProperty`]).
pub fn set_property(cfg: &mut PxbPcieConfig, key: &str, value: &str) -> Result<()> {
    let id = cfg.id.clone();
    if pci_device::set(&id, PciDeviceProps::from(&mut *cfg), key, value)? {
        return Ok(());
    }
    match key {
        // QEMU: "Parameter 'bus_nr' expects uint8_t" past 255.
        "bus_nr" => cfg.bus_nr = bounded(&id, "bus_nr", value, 0xff)? as u8,
        // QEMU: "Parameter 'numa_node' expects uint16_t" past 65535.
        "numa_node" => cfg.numa_node = bounded(&id, "numa_node", value, 0xffff)? as u16,
        "bypass_iommu" => {
            cfg.bypass_iommu = parse_bool(value).ok_or_else(|| TopologyError::NotOnOff {
                id,
                key: key.to_string(),
                value: value.to_string(),
            })?
        }
        other => {
            return Err(TopologyError::UnknownProperty {
                id,
                key: other.to_string(),
                driver: DRIVER.into(),
            })
        }
    }
    Ok(())
}

/// What QEMU 7.2 refuses when it realizes the expander (`pxb_dev_realize_common()`,
/// `pci_qdev_realize()`), with its messages; and bus number 0, which QEMU accepts but which
/// names `pcie.0`, so the expander's bus could never be reached (docs/qemu-compat.md).
pub fn validate(cfg: &PxbPcieConfig) -> Result<()> {
    let refuse = |property, reason: String| {
        Err(TopologyError::PortProperty {
            id: cfg.id.clone(),
            property,
            reason,
        })
    };
    if cfg.bus_nr == 0 {
        return refuse(
            "bus_nr",
            "bus_nr=0 is pcie.0's number: give the expander's root bus another one".into(),
        );
    }
    // QEMU refuses a node at or past the machine's node count, at most MAX_NODES (128, which
    // as the default means "unassigned"); the node count is the VMM's.
    if cfg.numa_node > NUMA_NODE_UNASSIGNED {
        return refuse("numa_node", format!("Illegal numa node {}", cfg.numa_node));
    }
    pci_device::validate(&cfg.id, cfg.acpi_index, cfg.romsize)
}

/// An expander's configuration from `id` and QEMU-syntax `properties` (`bus` and `addr` are
/// skipped: the caller places it), validated.
pub fn parse(id: &str, properties: &[(&str, &str)]) -> Result<PxbPcieConfig> {
    let cfg = PxbPcieConfig {
        id: id.to_string(),
        ..Default::default()
    };
    pci_device::parse(cfg, properties, set_property, validate)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`PROPERTIES`] is what QEMU 7.2 lists (`fixtures/qemu-7.2/pxb_pcie.help`, made by
    /// `-device pxb-pcie,help`) plus `bus`, `id` and `driver`.
    #[test]
    fn properties_are_the_ones_qemu_lists() {
        let listed = pci_device::help_fixture("pxb_pcie");
        assert_eq!(listed, PROPERTIES[..PROPERTIES.len() - 3]);
    }

    /// The messages are QEMU 7.2's for the same `-device pxb-pcie,...` arguments.
    #[test]
    fn properties_parse_and_refuse_as_qemu() {
        let cfg = parse(
            "pxb1",
            &[
                ("bus", "pcie.0"),
                ("addr", "5"),
                ("bus_nr", "0x80"),
                ("numa_node", "1"),
                ("bypass_iommu", "on"),
                ("multifunction", "on"),
                ("acpi-index", "9"),
                ("romfile", ""),
            ],
        )
        .unwrap();
        assert_eq!(
            (cfg.bus_nr, cfg.numa_node(), cfg.acpi_index),
            (0x80, Some(1), 9)
        );
        assert!(cfg.bypass_iommu && cfg.multifunction);
        let unassigned = parse("p", &[("bus_nr", "3")]).unwrap();
        assert_eq!(unassigned.numa_node(), None);
        assert_eq!(
            parse("p", &[("bus_nr", "3"), ("numa_node", "128")])
                .unwrap()
                .numa_node(),
            None,
            "128 is QEMU's 'unassigned'"
        );
        let err = |props: &[(&str, &str)]| parse("p", props).unwrap_err().to_string();
        assert!(err(&[("bus_nr", "3"), ("numa_node", "129")]).contains("Illegal numa node 129"));
        assert!(err(&[("bus_nr", "256")]).contains("bus_nr=256 is out of range (0-255)"));
        assert!(err(&[("bus_nr", "3"), ("numa_node", "70000")]).contains("out of range"));
        assert!(err(&[]).contains("bus_nr=0"));
        assert!(err(&[("bus_nr", "3"), ("failover_pair_id", "x")])
            .contains("failover primary device is not an Ethernet device"));
        for unknown in ["chassis", "msi", "shpc"] {
            assert!(
                matches!(
                    parse("p", &[("bus_nr", "3"), (unknown, "1")]),
                    Err(TopologyError::UnknownProperty { ref key, ref driver, .. })
                        if key == unknown && driver == DRIVER
                ),
                "{unknown}"
            );
        }
    }
}
