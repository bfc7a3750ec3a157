//! The `pcie-root-port` properties, by QEMU 7.2's names and value syntax, for the topology file
//! and `--device` alike: one table ([`PROPERTIES`]) and one parser ([`set_property`]), so a
//! property cannot be known to one and not the other. What each changes is documented on
//! [`RootPortConfig`] and in docs/qemu-compat.md.

use super::addr::{parse_size, parse_uint, ParseError};
use super::error::TopologyError;
use super::pci_device::{self, PciDeviceProps};
use crate::devices::{RootPortConfig, RootPortModel};
use crate::pci::caps::express::LinkSpeed;

type Result<T, E = TopologyError> = std::result::Result<T, E>;

/// Every property QEMU 7.2 lists for `pcie-root-port` (`-device pcie-root-port,help`), in its
/// order. `id`, `bus` and `addr` place the port; [`set_property`] takes the others.
pub const PROPERTIES: [&str; 28] = [
    "acpi-index",
    "addr",
    "aer_log_max",
    "bus-reserve",
    "chassis",
    "disable-acs",
    "failover_pair_id",
    "hotplug",
    "io-reserve",
    "mem-reserve",
    "multifunction",
    "port",
    "power_controller_present",
    "pref32-reserve",
    "pref64-reserve",
    "rombar",
    "romfile",
    "romsize",
    "slot",
    "x-migrate-msix",
    "x-native-hotplug",
    "x-pcie-extcap-init",
    "x-pcie-lnksta-dllla",
    "x-speed",
    "x-width",
    "bus",
    "id",
    // Not a QEMU property: the topology file's `driver` key (`-device DRIVER` on the command line).
    "driver",
];

/// The properties QEMU 7.2's `ioh3420` lacks (`gen_rp_props`: only `pcie-root-port` has them);
/// `-device ioh3420,help` lists the rest.
const GENERIC_ROOT_PORT_ONLY: [&str; 8] = [
    "bus-reserve",
    "io-reserve",
    "mem-reserve",
    "pref32-reserve",
    "pref64-reserve",
    "x-migrate-msix",
    "x-speed",
    "x-width",
];

/// The properties of root ports that QEMU 7.2's switch ports lack (`-device x3130-upstream,help`,
/// `-device xio3130-downstream,help`): `rp_props` (`disable-acs`) and [`GENERIC_ROOT_PORT_ONLY`].
const ROOT_PORT_ONLY: [&str; 1] = ["disable-acs"];

/// The slot properties (`pcie_slot_props`) the upstream port, which has no slot, lacks.
const SLOT_ONLY: [&str; 5] = [
    "chassis",
    "slot",
    "hotplug",
    "power_controller_present",
    "x-native-hotplug",
];

/// Does QEMU 7.2's device `model` have property `key` (one of [`PROPERTIES`])?
pub fn model_has(model: RootPortModel, key: &str) -> bool {
    match model {
        RootPortModel::PcieRootPort => true,
        RootPortModel::Ioh3420 => !GENERIC_ROOT_PORT_ONLY.contains(&key),
        RootPortModel::Xio3130Downstream => {
            !GENERIC_ROOT_PORT_ONLY.contains(&key) && !ROOT_PORT_ONLY.contains(&key)
        }
        RootPortModel::X3130Upstream => {
            !GENERIC_ROOT_PORT_ONLY.contains(&key)
                && !ROOT_PORT_ONLY.contains(&key)
                && !SLOT_ONLY.contains(&key)
        }
    }
}

/// A property name from [`PROPERTIES`], as a topology file key: any other name fails while the
/// file is parsed (with its line and column).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PropertyName(&'static str);

impl PropertyName {
    /// The name.
    pub fn as_str(&self) -> &'static str {
        self.0
    }
}

impl std::fmt::Display for PropertyName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::borrow::Borrow<str> for PropertyName {
    fn borrow(&self) -> &str {
        self.0
    }
}

impl<'de> serde::Deserialize<'de> for PropertyName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        PROPERTIES
            .iter()
            .find(|p| **p == s)
            .map(|p| PropertyName(p))
            .ok_or_else(|| serde::de::Error::unknown_field(&s, &PROPERTIES))
    }
}

/// QEMU's boolean syntax (`qapi_bool_parse()`): on/yes/true/y and off/no/false/n.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "on" | "yes" | "true" | "y" => Some(true),
        "off" | "no" | "false" | "n" => Some(false),
        _ => None,
    }
}

/// An integer property of at most `max`.
pub(super) fn bounded(id: &str, property: &'static str, value: &str, max: u64) -> Result<u64> {
    let n = parse_uint(value).map_err(|source| TopologyError::Value {
        id: id.to_string(),
        property,
        source,
    })?;
    if n > max {
        return Err(TopologyError::OutOfRange {
            id: id.to_string(),
            property,
            value: n,
            max,
        });
    }
    Ok(n)
}

fn size(id: &str, property: &'static str, value: &str) -> Result<u64> {
    parse_size(value).map_err(|source: ParseError| TopologyError::Value {
        id: id.to_string(),
        property,
        source,
    })
}

/// Set property `key` of a port from its QEMU-syntax `value`. `id`, `bus` and `addr` are the
/// caller's; any other name QEMU does not list is refused by name ([`TopologyError::UnknownProperty`]).
/// Values QEMU refuses are refused with its message; combinations are checked by
/// [`RootPortConfig::validate`].
pub fn set_property(cfg: &mut RootPortConfig, key: &str, value: &str) -> Result<()> {
    let id = cfg.id.clone();
    if PROPERTIES.contains(&key) && !model_has(cfg.model, key) {
        return Err(TopologyError::UnknownProperty {
            id,
            key: key.to_string(),
            driver: cfg.model.driver().into(),
        });
    }
    let flag = |property: &str| {
        parse_bool(value).ok_or_else(|| TopologyError::NotOnOff {
            id: id.clone(),
            key: property.to_string(),
            value: value.to_string(),
        })
    };
    let qemu_refuses = |property: &'static str| TopologyError::PortProperty {
        id: id.clone(),
        property,
        reason: format!("Parameter '{property}' does not accept value '{value}'"),
    };
    if pci_device::set(&id, PciDeviceProps::from(&mut *cfg), key, value)? {
        return Ok(());
    }
    match key {
        "chassis" => cfg.chassis = bounded(&id, "chassis", value, 0xff)? as u8,
        "slot" => cfg.slot = bounded(&id, "slot", value, 0x1fff)? as u16,
        "port" => cfg.port = bounded(&id, "port", value, 0xff)? as u8,
        // QEMU's default (u32::MAX) means "not given".
        "bus-reserve" => {
            let n = bounded(&id, "bus-reserve", value, u32::MAX.into())? as u32;
            cfg.bus_reserve = (n != u32::MAX).then_some(n);
        }
        "io-reserve" | "mem-reserve" | "pref32-reserve" | "pref64-reserve" => {
            // QEMU's default (u64::MAX) means "not given".
            let n = size(&id, static_name(key), value)?;
            let v = (n != u64::MAX).then_some(n);
            match key {
                "io-reserve" => cfg.io_reserve = v,
                "mem-reserve" => cfg.mem_reserve = v,
                "pref32-reserve" => cfg.pref32_reserve = v,
                _ => cfg.pref64_reserve = v,
            }
        }
        "hotplug" => cfg.hotplug = flag(key)?,
        "x-native-hotplug" => cfg.native_hotplug = flag(key)?,
        "power_controller_present" => cfg.power_controller_present = flag(key)?,
        "disable-acs" => cfg.disable_acs = flag(key)?,
        "x-migrate-msix" => cfg.migrate_msix = flag(key)?,
        "aer_log_max" => cfg.aer_log_max = bounded(&id, "aer_log_max", value, 0xffff)? as u16,
        "x-speed" => {
            cfg.speed = LinkSpeed::from_qemu(value).ok_or_else(|| qemu_refuses("x-speed"))?
        }
        "x-width" => {
            cfg.width = value
                .parse::<u8>()
                .ok()
                .filter(|w| crate::devices::root_port::LINK_WIDTHS.contains(w))
                .ok_or_else(|| qemu_refuses("x-width"))?
        }
        other => {
            return Err(TopologyError::UnknownProperty {
                id,
                key: other.to_string(),
                driver: cfg.model.driver().into(),
            })
        }
    }
    Ok(())
}

/// A topology file's value as the QEMU-syntax string [`set_property`] takes: strings as
/// written, integers in decimal, booleans as on/off. Other TOML types are refused by name.
pub fn toml_value(id: &str, key: &str, v: &toml::Value) -> Result<String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(n) if *n >= 0 => Ok(n.to_string()),
        toml::Value::Boolean(b) => Ok(if *b { "on" } else { "off" }.into()),
        other => Err(TopologyError::Value {
            id: id.to_string(),
            property: static_name(key),
            source: ParseError::NotANumber(other.to_string()),
        }),
    }
}

/// The static name of a known property (for error values), or "value".
fn static_name(key: &str) -> &'static str {
    PROPERTIES
        .iter()
        .find(|p| **p == key)
        .copied()
        .unwrap_or("value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(props: &[(&str, &str)]) -> Result<RootPortConfig> {
        let mut c = RootPortConfig {
            id: "rp".into(),
            ..Default::default()
        };
        for (k, v) in props {
            set_property(&mut c, k, v)?;
        }
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn every_qemu_property_is_taken_with_qemus_syntax() {
        let c = port(&[
            ("hotplug", "off"),
            ("x-native-hotplug", "false"),
            ("power_controller_present", "no"),
            ("disable-acs", "on"),
            ("aer_log_max", "0"),
            ("x-speed", "2_5"),
            ("x-width", "12"),
            ("x-pcie-lnksta-dllla", "off"),
            ("x-pcie-extcap-init", "off"),
            ("x-migrate-msix", "off"),
            ("acpi-index", "16383"),
            ("rombar", "0"),
            ("romsize", "0x10000"),
            ("romfile", ""),
            ("io-reserve", "4k"),
            ("bus-reserve", "4294967295"),
        ])
        .unwrap();
        assert!(!c.hotplug && !c.native_hotplug && !c.power_controller_present);
        assert!(c.disable_acs && !c.lnksta_dllla && !c.extcap_init && !c.migrate_msix);
        assert_eq!((c.aer_log_max, c.speed, c.width), (0, LinkSpeed::Gt2_5, 12));
        assert_eq!(
            (c.acpi_index, c.rombar, c.romsize),
            (16383, 0, Some(0x10000))
        );
        assert_eq!((c.io_reserve, c.bus_reserve), (Some(4096), None));
        // Every listed property except the placement ones is known to the parser.
        for p in PROPERTIES
            .iter()
            .filter(|p| !["id", "bus", "addr", "driver"].contains(p))
        {
            let mut c = RootPortConfig::default();
            let e = set_property(&mut c, p, "zz");
            assert!(
                !matches!(e, Err(TopologyError::UnknownProperty { .. })),
                "{p} is not parsed"
            );
        }
    }

    #[test]
    fn values_qemu_refuses_are_refused_with_its_message() {
        let msg = |props: &[(&str, &str)]| port(props).unwrap_err().to_string();
        assert_eq!(
            msg(&[("x-speed", "3")]),
            "rp: Parameter 'x-speed' does not accept value '3'"
        );
        assert_eq!(
            msg(&[("x-width", "3")]),
            "rp: Parameter 'x-width' does not accept value '3'"
        );
        assert_eq!(
            msg(&[("aer_log_max", "200")]),
            "rp: Invalid aer_log_max 200. The max number of aer log is 128"
        );
        assert_eq!(
            msg(&[("acpi-index", "20000")]),
            "rp: acpi-index should be less or equal to 16383"
        );
        assert_eq!(
            msg(&[("romsize", "3")]),
            "rp: ROM size 3 is not a power of two"
        );
        assert_eq!(
            msg(&[("failover_pair_id", "n1")]),
            "rp: failover primary device is not an Ethernet device"
        );
        assert_eq!(
            msg(&[("hotplug", "maybe")]),
            "rp: hotplug='maybe' is not on/off"
        );
        assert!(matches!(
            port(&[("romfile", "efi.rom")]),
            Err(TopologyError::Unsupported {
                property: "romfile",
                ..
            })
        ));
        assert!(matches!(
            port(&[("colour", "red")]),
            Err(TopologyError::UnknownProperty { key, .. }) if key == "colour"
        ));
    }
}
