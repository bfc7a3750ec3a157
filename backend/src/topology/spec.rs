//! What the hierarchy looks like: the embedded default, a TOML file (`--topology FILE`) and
//! QEMU-syntax `--device` options, validated before anything starts.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;

use super::addr::{parse_devfn, parse_size, parse_uint, DevFn};
use crate::devices::RootPortConfig;
use crate::{Error, Result};

/// The root bus name, as QEMU calls Q35's root bus.
pub const ROOT_BUS: &str = "pcie.0";

/// The owner name of functions pcierc emulates itself.
pub const PCIERC_OWNER: &str = "pcierc";

/// The embedded default topology (MCH + four root ports `rp1`-`rp4` at 00:02.0-00:02.3).
pub const DEFAULT_TOPOLOGY: &str = include_str!("default.toml");

/// A root port and where it sits on the root bus.
#[derive(Clone, Debug, PartialEq)]
pub struct PortSpec {
    /// Device/function on the root bus.
    pub addr: DevFn,
    /// The QEMU `pcie-root-port` properties.
    pub config: RootPortConfig,
}

/// A function pcierc does not emulate but knows about: it is served by another emulator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Unique id.
    pub id: String,
    /// The QEMU driver name the owner uses (informational).
    pub driver: String,
    /// `pcie.0` or the id of the root port it sits behind.
    pub bus: String,
    /// Device/function on that bus.
    pub addr: DevFn,
    /// The emulator that serves it.
    pub owner: String,
    /// Header type bit 7.
    pub multifunction: bool,
}

/// A complete, validated hierarchy description.
#[derive(Clone, Debug, PartialEq)]
pub struct TopologySpec {
    /// PCI segment group (Q35 has one: 0).
    pub segment: u16,
    /// The emulator that serves functions declared without an `owner`.
    pub default_owner: String,
    /// Root ports, in declaration order.
    pub root_ports: Vec<PortSpec>,
    /// Functions served by other emulators.
    pub endpoints: Vec<EndpointSpec>,
}

/// A number or a string in a topology file (`port = 0x10` or `mem-reserve = "64M"`).
#[derive(Deserialize, Clone, Debug)]
#[serde(untagged)]
enum NumOrStr {
    Num(u64),
    Str(String),
}

impl NumOrStr {
    fn as_uint(&self) -> Result<u64, String> {
        match self {
            NumOrStr::Num(n) => Ok(*n),
            NumOrStr::Str(s) => parse_uint(s),
        }
    }
    fn as_size(&self) -> Result<u64, String> {
        match self {
            NumOrStr::Num(n) => Ok(*n),
            NumOrStr::Str(s) => parse_size(s),
        }
    }
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileRepr {
    segment: Option<u16>,
    default_owner: Option<String>,
    #[serde(default)]
    root_port: Vec<PortRepr>,
    #[serde(default)]
    device: Vec<DeviceRepr>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct PortRepr {
    id: String,
    addr: String,
    bus: Option<String>,
    chassis: Option<NumOrStr>,
    slot: Option<NumOrStr>,
    port: Option<NumOrStr>,
    multifunction: Option<bool>,
    bus_reserve: Option<NumOrStr>,
    io_reserve: Option<NumOrStr>,
    mem_reserve: Option<NumOrStr>,
    pref32_reserve: Option<NumOrStr>,
    pref64_reserve: Option<NumOrStr>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct DeviceRepr {
    driver: String,
    id: String,
    bus: Option<String>,
    addr: Option<String>,
    owner: Option<String>,
    multifunction: Option<bool>,
}

fn bounded(what: &str, id: &str, v: Option<&NumOrStr>, max: u64) -> Result<u64, String> {
    let n = v
        .map(NumOrStr::as_uint)
        .transpose()
        .map_err(|e| format!("{id}: {what}: {e}"))?
        .unwrap_or(0);
    if n > max {
        return Err(format!("{id}: {what}={n} is out of range (0-{max})"));
    }
    Ok(n)
}

impl PortRepr {
    fn into_spec(self) -> Result<PortSpec, String> {
        let id = self.id;
        if let Some(bus) = &self.bus {
            if bus != ROOT_BUS {
                return Err(format!("{id}: root ports sit on {ROOT_BUS}, not '{bus}'"));
            }
        }
        let addr = parse_devfn(&self.addr).map_err(|e| format!("{id}: {e}"))?;
        let size = |what: &str, v: &Option<NumOrStr>| {
            v.as_ref()
                .map(NumOrStr::as_size)
                .transpose()
                .map_err(|e| format!("{id}: {what}: {e}"))
        };
        let bus_reserve = self
            .bus_reserve
            .as_ref()
            .map(|v| bounded("bus-reserve", &id, Some(v), u64::from(u32::MAX - 1)))
            .transpose()?
            .map(|n| n as u32);
        let config = RootPortConfig {
            chassis: bounded("chassis", &id, self.chassis.as_ref(), 0xff)? as u8,
            slot: bounded("slot", &id, self.slot.as_ref(), 0x1fff)? as u16,
            port: bounded("port", &id, self.port.as_ref(), 0xff)? as u8,
            multifunction: self.multifunction.unwrap_or(false),
            bus_reserve,
            io_reserve: size("io-reserve", &self.io_reserve)?,
            mem_reserve: size("mem-reserve", &self.mem_reserve)?,
            pref32_reserve: size("pref32-reserve", &self.pref32_reserve)?,
            pref64_reserve: size("pref64-reserve", &self.pref64_reserve)?,
            id,
        };
        Ok(PortSpec { addr, config })
    }
}

impl TopologySpec {
    /// The embedded default topology.
    pub fn embedded_default() -> Result<Self> {
        Self::from_toml(DEFAULT_TOPOLOGY)
    }

    /// An empty hierarchy (the MCH alone), as QEMU's `-nodefaults`.
    pub fn empty() -> Self {
        TopologySpec {
            segment: 0,
            default_owner: "vmm".into(),
            root_ports: Vec::new(),
            endpoints: Vec::new(),
        }
    }

    /// Parse and validate a TOML topology file's contents.
    pub fn from_toml(text: &str) -> Result<Self> {
        let repr: FileRepr = toml::from_str(text).map_err(|e| Error::Topology(e.to_string()))?;
        let mut spec = TopologySpec {
            segment: repr.segment.unwrap_or(0),
            default_owner: repr.default_owner.unwrap_or_else(|| "vmm".into()),
            ..Self::empty()
        };
        for p in repr.root_port {
            spec.root_ports
                .push(p.into_spec().map_err(Error::Topology)?);
        }
        for d in repr.device {
            spec.push_device(d).map_err(Error::Topology)?;
        }
        spec.validate()?;
        Ok(spec)
    }

    /// Add one QEMU-syntax `-device` option (`pcie-root-port,id=rp1,chassis=1,slot=1,addr=0x1c.0`
    /// or `DRIVER,id=ID,bus=PORT[,addr=A][,owner=EMULATOR]` for a function another emulator
    /// serves) and revalidate.
    pub fn add_device_option(&mut self, opt: &str) -> Result<()> {
        let mut parts = opt.split(',');
        let first = parts.next().unwrap_or_default();
        let mut kv: Vec<(String, String)> = Vec::new();
        let driver = match first.split_once('=') {
            Some(("driver", d)) => d.to_string(),
            Some(_) => {
                return Err(Error::Topology(format!(
                    "'{opt}': the driver name comes first"
                )))
            }
            None => first.to_string(),
        };
        if driver.is_empty() {
            return Err(Error::Topology(format!("'{opt}': missing driver name")));
        }
        for p in parts {
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| Error::Topology(format!("'{opt}': '{p}' is not key=value")))?;
            if kv.iter().any(|(k2, _)| k2 == k) {
                return Err(Error::Topology(format!("'{opt}': '{k}' given twice")));
            }
            kv.push((k.to_string(), v.to_string()));
        }
        let id = kv.iter().find(|(k, _)| k == "id").map(|(_, v)| v.clone());
        let id = id.ok_or_else(|| Error::Topology(format!("'{opt}': missing id=")))?;
        let bad = |k: &str| Error::Topology(format!("{id}: unknown property '{k}' for {driver}"));
        let boolean = |k: &str, v: &str| match v {
            "on" | "true" | "yes" => Ok(true),
            "off" | "false" | "no" => Ok(false),
            _ => Err(Error::Topology(format!("{id}: {k}='{v}' is not on/off"))),
        };
        if driver == "pcie-root-port" {
            let mut r = PortRepr {
                id: id.clone(),
                ..Default::default()
            };
            for (k, v) in kv {
                let s = Some(NumOrStr::Str(v.clone()));
                match k.as_str() {
                    "id" => {}
                    "addr" => r.addr = v,
                    "bus" => r.bus = Some(v),
                    "chassis" => r.chassis = s,
                    "slot" => r.slot = s,
                    "port" => r.port = s,
                    "multifunction" => r.multifunction = Some(boolean(&k, &v)?),
                    "bus-reserve" => r.bus_reserve = s,
                    "io-reserve" => r.io_reserve = s,
                    "mem-reserve" => r.mem_reserve = s,
                    "pref32-reserve" => r.pref32_reserve = s,
                    "pref64-reserve" => r.pref64_reserve = s,
                    other => return Err(bad(other)),
                }
            }
            if r.addr.is_empty() {
                return Err(Error::Topology(format!("{id}: addr= is required")));
            }
            self.root_ports
                .push(r.into_spec().map_err(Error::Topology)?);
        } else {
            let mut d = DeviceRepr {
                driver: driver.clone(),
                id: id.clone(),
                ..Default::default()
            };
            for (k, v) in kv {
                match k.as_str() {
                    "id" => {}
                    "bus" => d.bus = Some(v),
                    "addr" => d.addr = Some(v),
                    "owner" => d.owner = Some(v),
                    "multifunction" => d.multifunction = Some(boolean(&k, &v)?),
                    other => return Err(bad(other)),
                }
            }
            self.push_device(d).map_err(Error::Topology)?;
        }
        self.validate()
    }

    fn push_device(&mut self, d: DeviceRepr) -> Result<(), String> {
        let id = d.id;
        if d.driver == "pcie-root-port" {
            return Err(format!("{id}: declare root ports as [[root-port]]"));
        }
        let bus = d.bus.ok_or_else(|| format!("{id}: bus= is required"))?;
        let addr = match d.addr {
            Some(a) => parse_devfn(&a).map_err(|e| format!("{id}: {e}"))?,
            None => DevFn(0),
        };
        self.endpoints.push(EndpointSpec {
            owner: d.owner.unwrap_or_else(|| self.default_owner.clone()),
            driver: d.driver,
            bus,
            addr,
            multifunction: d.multifunction.unwrap_or(false),
            id,
        });
        Ok(())
    }

    /// Check the whole description; the error names the offending item.
    pub fn validate(&self) -> Result<()> {
        let err = |m: String| Err(Error::Topology(m));
        if self.segment != 0 {
            return err(format!(
                "segment {} is not supported: Q35 has segment 0 only",
                self.segment
            ));
        }
        if !valid_name(&self.default_owner) || self.default_owner == PCIERC_OWNER {
            return err(format!(
                "default-owner '{}' is not a valid emulator name",
                self.default_owner
            ));
        }
        let mut ids = HashSet::new();
        let all_ids = self
            .root_ports
            .iter()
            .map(|p| p.config.id.as_str())
            .chain(self.endpoints.iter().map(|e| e.id.as_str()));
        for id in all_ids {
            if !valid_name(id) || !id.starts_with(|c: char| c.is_ascii_alphabetic()) {
                return err(format!(
                    "id '{id}' must start with a letter and hold at most 32 letters, digits, '-', '.', '_'"
                ));
            }
            if !ids.insert(id) {
                return err(format!("id '{id}' is used twice"));
            }
        }
        // (bus name, devfn) -> (id, multifunction)
        let mut slots: HashMap<(&str, DevFn), (&str, bool)> = HashMap::new();
        let mut chassis_slots = HashMap::new();
        for p in &self.root_ports {
            let id = p.config.id.as_str();
            p.config.validate()?;
            if p.addr == DevFn(0) {
                return err(format!("{id}: 00.0 is the host bridge"));
            }
            if let Some((other, _)) = slots.insert((ROOT_BUS, p.addr), (id, p.config.multifunction))
            {
                return err(format!(
                    "{id}: address {} is already used by {other}",
                    p.addr
                ));
            }
            let cs = (p.config.chassis, p.config.slot);
            if let Some(other) = chassis_slots.insert(cs, id) {
                return err(format!(
                    "{id}: chassis {} slot {} is already used by {other}",
                    cs.0, cs.1
                ));
            }
        }
        let ports: HashSet<&str> = self
            .root_ports
            .iter()
            .map(|p| p.config.id.as_str())
            .collect();
        for e in &self.endpoints {
            let id = e.id.as_str();
            if !valid_name(&e.owner) || e.owner == PCIERC_OWNER {
                return err(format!(
                    "{id}: owner '{}' is not a valid emulator name",
                    e.owner
                ));
            }
            if e.bus == ROOT_BUS {
                if e.addr == DevFn(0) {
                    return err(format!("{id}: 00.0 is the host bridge"));
                }
            } else if !ports.contains(e.bus.as_str()) {
                return err(format!(
                    "{id}: bus '{}' is neither {ROOT_BUS} nor a root port id",
                    e.bus
                ));
            } else if e.addr.device() != 0 {
                // PCIe Base 6.0 §2.2.6.2: below a Downstream Port only Device Number 0 exists.
                return err(format!(
                    "{id}: behind root port {} only device 0 exists",
                    e.bus
                ));
            }
            if let Some((other, _)) = slots.insert((e.bus.as_str(), e.addr), (id, e.multifunction))
            {
                return err(format!(
                    "{id}: address {} on {} is already used by {other}",
                    e.addr, e.bus
                ));
            }
        }
        // Functions other than 0 need a multifunction function 0, as QEMU requires.
        for (&(bus, addr), &(id, _)) in &slots {
            if addr.function() == 0 {
                continue;
            }
            match slots.get(&(bus, DevFn(addr.0 & !7))) {
                Some(&(_, true)) => {}
                Some(&(f0, false)) => {
                    return err(format!(
                    "{id}: function {} needs multifunction=on on {f0} (function 0 of slot {:02x})",
                    addr.function(),
                    addr.device()
                ))
                }
                None => {
                    return err(format!(
                        "{id}: function {} of slot {:02x} on {bus} has no function 0",
                        addr.function(),
                        addr.device()
                    ))
                }
            }
        }
        Ok(())
    }
}

/// A name usable on the wire: 1-32 characters from letters, digits, `-`, `.`, `_`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= pcierc_protocol::NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_of(r: Result<TopologySpec>) -> String {
        match r {
            Err(e) => e.to_string(),
            Ok(s) => panic!("expected an error, got {s:?}"),
        }
    }

    #[test]
    fn embedded_default_is_four_ports_in_one_multifunction_slot() {
        let s = TopologySpec::embedded_default().unwrap();
        let got: Vec<_> = s
            .root_ports
            .iter()
            .map(|p| {
                (
                    p.config.id.as_str(),
                    p.addr.to_string(),
                    p.config.chassis,
                    p.config.slot,
                    p.config.port,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("rp1", "02.0".to_string(), 1, 1, 0x10),
                ("rp2", "02.1".to_string(), 2, 2, 0x11),
                ("rp3", "02.2".to_string(), 3, 3, 0x12),
                ("rp4", "02.3".to_string(), 4, 4, 0x13),
            ]
        );
        assert!(s.root_ports[0].config.multifunction);
    }

    #[test]
    fn device_options_in_qemu_syntax() {
        let mut s = TopologySpec::empty();
        s.add_device_option(
            "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1,addr=0x1c.0,multifunction=on",
        )
        .unwrap();
        s.add_device_option(
            "driver=pcie-root-port,id=rp2,chassis=2,slot=2,addr=1c.1,bus-reserve=3,mem-reserve=64M",
        )
        .unwrap();
        s.add_device_option("virtio-net-pci,id=net0,bus=rp1,owner=qemu")
            .unwrap();
        assert_eq!(s.root_ports[1].config.bus_reserve, Some(3));
        assert_eq!(s.root_ports[1].config.mem_reserve, Some(64 << 20));
        assert_eq!(s.endpoints[0].owner, "qemu");
        assert_eq!(s.endpoints[0].addr, DevFn(0));
    }

    #[test]
    fn rejects_with_the_offending_item_named() {
        let mut s = TopologySpec::empty();
        s.add_device_option("pcie-root-port,id=rp1,chassis=1,slot=1,addr=0x3")
            .unwrap();
        let cases = [
            (
                "pcie-root-port,id=rp2,chassis=2,slot=2,addr=0x3",
                "rp2: address 03.0 is already used by rp1",
            ),
            (
                "pcie-root-port,id=rp2,chassis=1,slot=1,addr=0x4",
                "rp2: chassis 1 slot 1 is already used by rp1",
            ),
            (
                "pcie-root-port,id=rp1,chassis=2,slot=2,addr=0x4",
                "id 'rp1' is used twice",
            ),
            (
                "pcie-root-port,id=rp2,chassis=256,addr=0x4",
                "rp2: chassis=256 is out of range",
            ),
            (
                "pcie-root-port,id=rp2,chassis=x,addr=0x4",
                "rp2: chassis: 'x' is not a number",
            ),
            (
                "pcie-root-port,id=rp2,color=red,addr=0x4",
                "rp2: unknown property 'color'",
            ),
            (
                "pcie-root-port,id=rp2,chassis=2,slot=2,addr=0x3.1",
                "rp2: function 1 needs multifunction=on on rp1",
            ),
            (
                "pcie-root-port,id=rp2,chassis=2,slot=2,addr=0x5.1",
                "rp2: function 1 of slot 05 on pcie.0 has no function 0",
            ),
            (
                "pcie-root-port,id=rp2,chassis=2,slot=2,addr=0x0",
                "rp2: 00.0 is the host bridge",
            ),
            (
                "pcie-root-port,id=rp2,chassis=2,slot=2,addr=0x20",
                "bad PCI address '0x20'",
            ),
            ("pcie-root-port,chassis=2", "missing id="),
            (
                "virtio-net-pci,id=n0,bus=rp9",
                "n0: bus 'rp9' is neither pcie.0 nor a root port id",
            ),
            (
                "virtio-net-pci,id=n0,bus=rp1,addr=1.0",
                "n0: behind root port rp1 only device 0 exists",
            ),
            (
                "virtio-net-pci,id=n0,bus=rp1,owner=pcierc",
                "n0: owner 'pcierc' is not a valid emulator name",
            ),
        ];
        for (opt, want) in cases {
            let mut t = s.clone();
            let e = match t.add_device_option(opt) {
                Err(e) => e.to_string(),
                Ok(()) => panic!("{opt} was accepted"),
            };
            assert!(e.contains(want), "{opt}: got '{e}', want '{want}'");
        }
    }

    #[test]
    fn toml_rejects_unknown_keys_and_bad_values() {
        let e = err_of(TopologySpec::from_toml(
            "[[root-port]]\nid='a'\naddr='3'\ncolour=1\n",
        ));
        assert!(e.contains("unknown field `colour`"), "{e}");
        let e = err_of(TopologySpec::from_toml(
            "[[root-port]]\nid='a'\naddr='3'\nport=300\n",
        ));
        assert!(e.contains("a: port=300 is out of range"), "{e}");
        let e = err_of(TopologySpec::from_toml("segment = 1\n"));
        assert!(e.contains("segment 1 is not supported"), "{e}");
        let ok = TopologySpec::from_toml(
            "default-owner='qemu'\n[[root-port]]\nid='a'\naddr='0x3.0'\nchassis=7\npref64-reserve='1G'\n\
             [[device]]\ndriver='vfio-pci'\nid='gpu'\nbus='a'\nowner='gpu-dm'\n[[device]]\ndriver='x'\nid='b'\nbus='a'\naddr='0.1'\n",
        );
        let e = err_of(ok);
        assert!(
            e.contains("b: function 1 needs multifunction=on on gpu"),
            "{e}"
        );
    }
}
