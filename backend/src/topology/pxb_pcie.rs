//! The `pxb-pcie` properties, by QEMU 7.2's names and value syntax (`-device pxb-pcie,help`):
//! one table ([`PROPERTIES`]) and one parser ([`set_property`]), as for `pcie-pci-bridge`. What
//! each changes is documented on [`PxbPcieConfig`] and in docs/qemu-compat.md.

use super::error::TopologyError;
use super::root_port::{bounded, parse_bool};
use crate::devices::pxb_pcie::{PxbPcieConfig, NUMA_NODE_UNASSIGNED};
use crate::devices::root_port::ACPI_INDEX_MAX;

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
    let flag = |property: &str| {
        parse_bool(value).ok_or_else(|| TopologyError::NotOnOff {
            id: id.clone(),
            key: property.to_string(),
            value: value.to_string(),
        })
    };
    match key {
        // QEMU: "Parameter 'bus_nr' expects uint8_t" past 255.
        "bus_nr" => cfg.bus_nr = bounded(&id, "bus_nr", value, 0xff)? as u8,
        // QEMU: "Parameter 'numa_node' expects uint16_t" past 65535.
        "numa_node" => cfg.numa_node = bounded(&id, "numa_node", value, 0xffff)? as u16,
        "bypass_iommu" => cfg.bypass_iommu = flag(key)?,
        "multifunction" => cfg.multifunction = flag(key)?,
        "x-pcie-extcap-init" => cfg.extcap_init = flag(key)?,
        "x-pcie-lnksta-dllla" => cfg.lnksta_dllla = flag(key)?,
        "acpi-index" => cfg.acpi_index = bounded(&id, "acpi-index", value, u32::MAX.into())? as u32,
        "rombar" => cfg.rombar = bounded(&id, "rombar", value, u32::MAX.into())? as u32,
        "romsize" => {
            // QEMU's default (u32::MAX) means "not given".
            let n = bounded(&id, "romsize", value, u32::MAX.into())? as u32;
            cfg.romsize = (n != u32::MAX).then_some(n);
        }
        "romfile" if value.is_empty() => {}
        "romfile" => {
            return Err(TopologyError::Unsupported {
                id,
                property: "romfile",
                reason: "pcierc serves no option ROM (no Expansion ROM BAR)",
            })
        }
        // pci_qdev_realize(): only an Ethernet function can be a failover primary.
        "failover_pair_id" => {
            return Err(TopologyError::PortProperty {
                id,
                property: "failover_pair_id",
                reason: "failover primary device is not an Ethernet device".into(),
            })
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
    if cfg.acpi_index > ACPI_INDEX_MAX {
        return refuse(
            "acpi-index",
            format!("acpi-index should be less or equal to {ACPI_INDEX_MAX}"),
        );
    }
    if let Some(size) = cfg.romsize.filter(|s| !s.is_power_of_two()) {
        return refuse("romsize", format!("ROM size {size} is not a power of two"));
    }
    Ok(())
}

/// An expander's configuration from `id` and QEMU-syntax `properties` (`bus` and `addr` are
/// skipped: the caller places it), validated.
pub fn parse(id: &str, properties: &[(&str, &str)]) -> Result<PxbPcieConfig> {
    let mut cfg = PxbPcieConfig {
        id: id.to_string(),
        ..Default::default()
    };
    for (key, value) in properties {
        match *key {
            "bus" | "addr" | "id" | "driver" => {}
            _ => set_property(&mut cfg, key, value)?,
        }
    }
    validate(&cfg)?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`PROPERTIES`] is what QEMU 7.2 lists (`fixtures/qemu-7.2/pxb_pcie.help`, made by
    /// `-device pxb-pcie,help`) plus `bus`, `id` and `driver`.
    #[test]
    fn properties_are_the_ones_qemu_lists() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/qemu-7.2/pxb_pcie.help");
        let text = std::fs::read_to_string(&path).expect("the help fixture");
        let listed: Vec<&str> = text
            .lines()
            .skip(1)
            .filter_map(|l| l.trim().split(['=', ' ']).next())
            .collect();
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
