//! The `pcie-pci-bridge` properties, by QEMU 7.2's names and value syntax (`-device
//! pcie-pci-bridge,help`), as a standalone parser the topology file and `--device` can call when
//! the hierarchy places bridges: one table ([`PROPERTIES`]) and one parser ([`set_property`]).
//! What each changes is documented on [`PciePciBridgeConfig`] and in docs/qemu-compat.md.

use super::error::TopologyError;
use super::pci_device::{self, PciDeviceProps};
use crate::devices::pcie_pci_bridge::{OnOffAuto, PciePciBridgeConfig};

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
    if pci_device::set(&id, PciDeviceProps::from(&mut *cfg), key, value)? {
        return Ok(());
    }
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
    pci_device::validate(&cfg.id, cfg.acpi_index, cfg.romsize)
}

/// A bridge's configuration from `id` and QEMU-syntax `properties` (as `-device` gives them, in
/// order; `bus` and `addr` are skipped: the caller places the bridge), validated.
pub fn parse(id: &str, properties: &[(&str, &str)]) -> Result<PciePciBridgeConfig> {
    let cfg = PciePciBridgeConfig {
        id: id.to_string(),
        ..Default::default()
    };
    pci_device::parse(cfg, properties, set_property, validate)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`PROPERTIES`] is what QEMU 7.2 lists (`fixtures/qemu-7.2/pcie_pci_bridge.help`, made by
    /// `-device pcie-pci-bridge,help`) plus `bus`, `id` and `driver`.
    #[test]
    fn properties_are_the_ones_qemu_lists() {
        let listed = pci_device::help_fixture("pcie_pci_bridge");
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

    /// Where a bridge may sit and what may sit below it, from a topology file and `--device`.
    #[test]
    fn bridges_are_placed_from_files_and_device_options() {
        use crate::topology::addr::DevFn;
        use crate::topology::spec::{TopologySpec, ROOT_BUS};
        use TopologyError as E;
        let s = TopologySpec::from_toml(
            "[[root-port]]\nid='rp1'\naddr='2'\nchassis=1\nslot=1\n\
             [[bridge]]\nid='br0'\naddr='3'\nmsi='off'\n\
             [[bridge]]\nid='br1'\nbus='rp1'\ndriver='pcie-pci-bridge'\nmultifunction=true\n\
             [[device]]\ndriver='e1000'\nid='nic'\nbus='br1'\naddr='1f.0'\n",
        )
        .unwrap();
        let b0 = s.bridge("br0").unwrap();
        assert_eq!(
            (b0.bus.as_str(), b0.addr, b0.config.msi),
            (ROOT_BUS, DevFn(0x18), OnOffAuto::Off)
        );
        let b1 = s.bridge("br1").unwrap();
        assert_eq!(
            (b1.bus.as_str(), b1.addr, b1.config.multifunction),
            ("rp1", DevFn(0), true)
        );
        assert_eq!(s.endpoints[0].bus, "br1");

        let mut spec = TopologySpec::empty();
        spec.add_device_option("pcie-root-port,id=rp1,chassis=1,slot=1,addr=2")
            .unwrap();
        spec.add_device_option("pcie-pci-bridge,id=br1,bus=rp1,msi=off")
            .unwrap();
        assert_eq!(spec.bridge("br1").unwrap().config.msi, OnOffAuto::Off);
        // Any device number 1-31 below it, several functions with a multifunction function 0.
        for opt in [
            "e1000,id=a,bus=br1,addr=1,multifunction=on",
            "e1000,id=b,bus=br1,addr=1.1",
            "e1000,id=c,bus=br1,addr=0x1f",
        ] {
            spec.add_device_option(opt).unwrap();
        }
        let refused = |opt: &str| {
            let mut s = spec.clone();
            s.add_device_option(opt).unwrap_err()
        };
        // QEMU 7.2: `-device e1000,bus=br1,addr=0` fails with the SHPC's message.
        let e = refused("e1000,id=z,bus=br1,addr=0");
        assert!(
            matches!(&e, E::BridgeSlotZero { id, bridge } if id == "z" && bridge == "br1"),
            "{e:?}"
        );
        assert!(e.to_string().ends_with("Unsupported PCI slot 0 for standard hotplug controller. Valid slots are between 1 and 31."));
        assert!(matches!(
            refused("e1000,id=z,bus=br1,addr=1"),
            E::AddressInUse { .. }
        ));
        assert!(matches!(
            refused("e1000,id=z,bus=br1,addr=2.1"),
            E::NoFunctionZero { .. }
        ));
        // Behind a port only device 0; the port's slot holds one card.
        assert!(matches!(
            refused("pcie-pci-bridge,id=b2,bus=rp1,addr=1"),
            E::DeviceBehindPort { .. }
        ));
        assert!(matches!(
            refused("pcie-pci-bridge,id=b2,bus=rp1"),
            E::AddressInUse { .. }
        ));
        assert!(matches!(
            refused("pcie-pci-bridge,id=b2,addr=0"),
            E::HostBridgeAddress { .. }
        ));
        assert!(matches!(
            refused("pcie-pci-bridge,id=b2,bus=nowhere,addr=0"),
            E::UnknownBus { .. }
        ));
        // Not below another bridge, no switch below it; its own properties as QEMU parses them.
        assert!(matches!(
            refused("pcie-pci-bridge,id=b2,bus=br1,addr=2"),
            E::Placement { .. }
        ));
        assert!(matches!(
            refused("x3130-upstream,id=u,bus=br1"),
            E::Placement { .. }
        ));
        assert!(matches!(
            refused("pcie-pci-bridge,id=b2,addr=4,shpc=off"),
            E::UnknownProperty { .. }
        ));
        assert!(matches!(
            refused("pcie-pci-bridge,id=a,addr=4"),
            E::DuplicateId(_)
        ));
        let e = TopologySpec::from_toml(
            "[[device]]\ndriver='pcie-pci-bridge'\nid='b'\nbus='pcie.0'\naddr='3'\n",
        )
        .unwrap_err();
        assert!(matches!(&e, E::BridgeAsDevice { id } if id == "b"), "{e:?}");
        let e = TopologySpec::from_toml("[[bridge]]\nid='b'\naddr='3'\ndriver='pci-bridge'\n")
            .unwrap_err();
        assert!(matches!(&e, E::UnknownProperty { .. }), "{e:?}");
        // The hierarchy holds the bridges it was given.
        let h = crate::topology::Hierarchy::new(spec).expect("placed");
        assert!(!h.bridges().is_empty());
    }
}
