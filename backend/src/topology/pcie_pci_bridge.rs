//! The `pcie-pci-bridge` properties, by QEMU 7.2's names and value syntax (`-device
//! pcie-pci-bridge,help`), as a standalone parser the topology file and `--device` can call when
//! the hierarchy places bridges: one table ([`PROPERTIES`]) and one parser ([`set_property`]).
//! What each changes is documented on [`PciePciBridgeConfig`] and in docs/qemu-compat.md.

use super::error::TopologyError;
use super::root_port::{bounded, parse_bool};
use crate::devices::pcie_pci_bridge::{OnOffAuto, PciePciBridgeConfig};
use crate::devices::root_port::ACPI_INDEX_MAX;

type Result<T, E = TopologyError> = std::result::Result<T, E>;

/// The driver name (`-device pcie-pci-bridge`).
pub const DRIVER: &str = "pcie-pci-bridge";

/// Every property QEMU 7.2 lists for `pcie-pci-bridge`, in its order, then `bus`, `id` and the
/// topology file's `driver` key. `id`, `bus` and `addr` place the bridge; [`set_property`] takes
/// the others.
pub const PROPERTIES: [&str; 13] = [
    "acpi-index",
    "addr",
    "failover_pair_id",
    "msi",
    "multifunction",
    "rombar",
    "romfile",
    "romsize",
    "x-pcie-extcap-init",
    "x-pcie-lnksta-dllla",
    "bus",
    "id",
    "driver",
];

/// Set property `key` of a bridge from its QEMU-syntax `value`. `id`, `bus` and `addr` are the
/// caller's; any other name QEMU does not list (a root port's `chassis`, `pci-bridge`'s `shpc`,
/// ...) is refused by name ([`TopologyError::UnknownProperty`]). Values QEMU refuses are refused
/// with its message ([`validate`] checks what QEMU checks at realize).
pub fn set_property(cfg: &mut PciePciBridgeConfig, key: &str, value: &str) -> Result<()> {
    let id = cfg.id.clone();
    let flag = |property: &str| {
        parse_bool(value).ok_or_else(|| TopologyError::NotOnOff {
            id: id.clone(),
            key: property.to_string(),
            value: value.to_string(),
        })
    };
    match key {
        // QAPI's OnOffAuto: exactly these lowercase names.
        "msi" => {
            cfg.msi = match value {
                "on" => OnOffAuto::On,
                "off" => OnOffAuto::Off,
                "auto" => OnOffAuto::Auto,
                _ => {
                    return Err(TopologyError::PortProperty {
                        id,
                        property: "msi",
                        reason: format!("Parameter 'msi' does not accept value '{value}'"),
                    })
                }
            }
        }
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
        // An empty name is QEMU's "no ROM"; pcierc has no ROM to serve.
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

/// What QEMU 7.2 refuses when it realizes the bridge (`pci_qdev_realize()`), with its messages.
pub fn validate(cfg: &PciePciBridgeConfig) -> Result<()> {
    let refuse = |property, reason: String| {
        Err(TopologyError::PortProperty {
            id: cfg.id.clone(),
            property,
            reason,
        })
    };
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

/// A bridge's configuration from `id` and QEMU-syntax `properties` (as `-device` gives them, in
/// order; `bus` and `addr` are skipped: the caller places the bridge), validated.
pub fn parse(id: &str, properties: &[(&str, &str)]) -> Result<PciePciBridgeConfig> {
    let mut cfg = PciePciBridgeConfig {
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

    /// [`PROPERTIES`] is what QEMU 7.2 lists (`fixtures/qemu-7.2/pcie_pci_bridge.help`, made by
    /// `-device pcie-pci-bridge,help`) plus `bus`, `id` and `driver`.
    #[test]
    fn properties_are_the_ones_qemu_lists() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/qemu-7.2/pcie_pci_bridge.help");
        let text = std::fs::read_to_string(&path).expect("the help fixture");
        let listed: Vec<&str> = text
            .lines()
            .skip(1)
            .filter_map(|l| l.trim().split(['=', ' ']).next())
            .collect();
        assert_eq!(listed, PROPERTIES[..PROPERTIES.len() - 3]);
    }

    /// The messages are QEMU 7.2's for the same `-device pcie-pci-bridge,...` arguments.
    #[test]
    fn properties_parse_and_refuse_as_qemu() {
        let cfg = parse(
            "br1",
            &[
                ("bus", "rp1"),
                ("addr", "0"),
                ("msi", "off"),
                ("multifunction", "on"),
                ("x-pcie-extcap-init", "off"),
                ("x-pcie-lnksta-dllla", "no"),
                ("acpi-index", "7"),
                ("rombar", "0"),
                ("romsize", "4096"),
                ("romfile", ""),
            ],
        )
        .unwrap();
        assert_eq!(cfg.msi, OnOffAuto::Off);
        assert!(cfg.multifunction && !cfg.extcap_init && !cfg.lnksta_dllla);
        assert_eq!(
            (cfg.acpi_index, cfg.rombar, cfg.romsize),
            (7, 0, Some(4096))
        );
        assert_eq!(parse("b", &[("msi", "auto")]).unwrap().msi, OnOffAuto::Auto);
        let err = |props: &[(&str, &str)]| parse("b", props).unwrap_err().to_string();
        assert!(err(&[("msi", "On")]).contains("Parameter 'msi' does not accept value 'On'"));
        assert!(
            err(&[("acpi-index", "16384")]).contains("acpi-index should be less or equal to 16383")
        );
        assert!(err(&[("romsize", "3")]).contains("ROM size 3 is not a power of two"));
        assert!(err(&[("failover_pair_id", "x")])
            .contains("failover primary device is not an Ethernet device"));
        assert!(err(&[("multifunction", "maybe")]).contains("maybe"));
        for unknown in ["chassis", "shpc", "hotplug"] {
            assert!(
                matches!(
                    parse("b", &[(unknown, "1")]),
                    Err(TopologyError::UnknownProperty { ref key, .. }) if key == unknown
                ),
                "{unknown}"
            );
        }
        assert!(matches!(
            parse("b", &[("romfile", "foo")]),
            Err(TopologyError::Unsupported { .. })
        ));
    }
}
