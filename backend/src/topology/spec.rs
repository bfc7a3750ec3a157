//! What the hierarchy looks like: the embedded default, a TOML file (`--topology FILE`) and
//! QEMU-syntax `--device` options, validated before anything starts.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Deserialize;

use super::addr::{parse_devfn, DevFn};
use super::error::TopologyError;
use super::root_port;
pub use super::segment::SegmentSpec;
use super::{pcie_pci_bridge, pcie_pci_bridge::DRIVER as BRIDGE_DRIVER};
use super::{pxb_pcie, pxb_pcie::DRIVER as EXPANDER_DRIVER};
use crate::devices::pcie_pci_bridge::PciePciBridgeConfig;
use crate::devices::pxb_pcie::PxbPcieConfig;
use crate::devices::{BridgeKind, MachineType, RootPortConfig, RootPortModel};

type Result<T, E = TopologyError> = std::result::Result<T, E>;

/// The root bus name, as QEMU calls Q35's root bus.
pub const ROOT_BUS: &str = "pcie.0";

/// The owner name of functions pcierc emulates itself.
pub const PCIERC_OWNER: &str = "pcierc";

/// The embedded default topology (MCH + four root ports `rp1`-`rp4` at 00:02.0-00:02.3).
pub const DEFAULT_TOPOLOGY: &str = include_str!("default.toml");

/// A port pcierc emulates (a root port, or a switch's upstream or downstream port) and where it
/// sits: on the root bus, or on the secondary bus of the port `bus` names.
#[derive(Clone, Debug, PartialEq)]
pub struct PortSpec {
    /// The PCI segment whose hierarchy it is in (0: the Q35 hierarchy's; else a
    /// [`SegmentSpec`]'s: a root port names the segment's id as its `bus`, a switch port is
    /// in its parent's segment, see [`TopologySpec::port_segment`]).
    pub segment: u16,
    /// Device/function on its bus.
    pub addr: DevFn,
    /// `pcie.0` for root ports; the id of the parent port for switch ports (QEMU's `bus=`).
    pub bus: String,
    /// The QEMU device's properties (`pcie-root-port`, `ioh3420`, `x3130-upstream`,
    /// `xio3130-downstream`).
    pub config: RootPortConfig,
}

/// A `pcie-pci-bridge` pcierc emulates and where it sits: on the root bus, or as the card in a
/// root or switch downstream port's slot. Its secondary bus is conventional PCI: functions below
/// it (`bus` = its id) sit at device numbers 1-31, the slots of its hot-plug controller.
#[derive(Clone, Debug, PartialEq)]
pub struct BridgeSpec {
    /// Device/function on its bus.
    pub addr: DevFn,
    /// `pcie.0` or the id of the root or switch downstream port it sits behind.
    pub bus: String,
    /// The QEMU device's properties (`-device pcie-pci-bridge,help`).
    pub config: PciePciBridgeConfig,
}

/// A `pxb-pcie` expander bridge pcierc emulates: a function on `pcie.0` that opens one more root
/// bus of segment 0, numbered `bus_nr`, named after its id: root ports placed with `bus` = its id
/// sit there.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpanderSpec {
    /// Device/function on `pcie.0`.
    pub addr: DevFn,
    /// `pcie.0`, the only bus QEMU lets an expander sit on.
    pub bus: String,
    /// The QEMU device's properties (`-device pxb-pcie,help`).
    pub config: PxbPcieConfig,
}

/// A function pcierc does not emulate but knows about: it is served by another emulator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Unique id.
    pub id: String,
    /// The QEMU driver name the owner uses (informational).
    pub driver: String,
    /// `pcie.0`, the id of an extra segment (its root bus), the id of the root or switch
    /// downstream port it sits behind, or the id of a `pcie-pci-bridge` it sits below (not a
    /// `pxb-pcie`'s: QEMU puts only bridges on an expander's bus).
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
    /// The machine type whose register behaviour the functions have (`machine = "..."` in a
    /// topology file, `--machine` on the command line; `pc-q35-7.2` unless given).
    pub machine: MachineType,
    /// PCI segment group of this hierarchy: 0 for the whole topology and for the Q35
    /// hierarchy; an extra segment's number in [`TopologySpec::for_segment`]'s part.
    pub segment: u16,
    /// Extra PCI segments (beyond QEMU: `[[segment]]` tables), each with its own root bus and
    /// fixed ECAM window. In [`TopologySpec::for_segment`]'s part of segment N, N's alone.
    pub segments: Vec<SegmentSpec>,
    /// The emulator that serves functions declared without an `owner`.
    pub default_owner: String,
    /// The ports pcierc emulates, in declaration order: root ports, then switch ports (a tree:
    /// each switch port's `bus` names its parent).
    pub root_ports: Vec<PortSpec>,
    /// The `pcie-pci-bridge`s pcierc emulates, in declaration order.
    pub bridges: Vec<BridgeSpec>,
    /// The `pxb-pcie` expander bridges pcierc emulates, in declaration order (segment 0 only).
    pub expanders: Vec<ExpanderSpec>,
    /// Functions served by other emulators.
    pub endpoints: Vec<EndpointSpec>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileRepr {
    machine: Option<String>,
    /// `segment = 0` (the Q35 hierarchy's number, the only one it may have) or `[[segment]]`
    /// tables.
    segment: Option<toml::Value>,
    default_owner: Option<String>,
    #[serde(default)]
    root_port: Vec<PortRepr>,
    #[serde(default)]
    switch_port: Vec<PortRepr>,
    #[serde(default)]
    bridge: Vec<BridgeRepr>,
    #[serde(default)]
    expander: Vec<ExpanderRepr>,
    #[serde(default)]
    device: Vec<DeviceRepr>,
}

/// An `[[expander]]` table: `id`, `addr` (required), `bus` (default and only value `pcie.0`),
/// optional `driver` (`pxb-pcie`, the only one), then any property of that QEMU device by QEMU's
/// name ([`pxb_pcie::PROPERTIES`]): `bus_nr`, `numa_node`, ...
#[derive(Deserialize, Debug, Default)]
#[serde(transparent)]
struct ExpanderRepr(BTreeMap<String, toml::Value>);

impl ExpanderRepr {
    fn into_spec(self) -> Result<ExpanderSpec> {
        let (id, props) = table_properties(&self.0, "expander", "an [[expander]] without id")?;
        expander_spec(&id, &props)
    }
}

/// Build an expander from QEMU-syntax properties (`id`, `bus`, `addr`, `driver` and the
/// device's own). Without `bus` it sits on `pcie.0`; `addr` is required, as for root ports.
fn expander_spec(id: &str, props: &[(String, String)]) -> Result<ExpanderSpec> {
    let (bus, addr, config) = placed(id, props, EXPANDER_DRIVER, None, pxb_pcie::parse)?;
    Ok(ExpanderSpec { addr, bus, config })
}

/// A `[[bridge]]` table: `id`, `bus` (default `pcie.0`), `addr` (default 0.0, required on
/// `pcie.0`), optional `driver` (`pcie-pci-bridge`, the only one), then any property of that QEMU
/// device by QEMU's name ([`pcie_pci_bridge::PROPERTIES`]).
#[derive(Deserialize, Debug, Default)]
#[serde(transparent)]
struct BridgeRepr(BTreeMap<String, toml::Value>);

impl BridgeRepr {
    fn into_spec(self) -> Result<BridgeSpec> {
        let (id, props) = table_properties(&self.0, "bridge", "a [[bridge]] without id")?;
        bridge_spec(&id, &props)
    }
}

/// Build a bridge from QEMU-syntax properties (`id`, `bus`, `addr`, `driver` and the device's
/// own). Without `bus` it sits on `pcie.0`; without `addr` at device 0 (behind a port, the only
/// device there is).
fn bridge_spec(id: &str, props: &[(String, String)]) -> Result<BridgeSpec> {
    let (bus, addr, config) = placed(
        id,
        props,
        BRIDGE_DRIVER,
        Some(DevFn(0)),
        pcie_pci_bridge::parse,
    )?;
    Ok(BridgeSpec { addr, bus, config })
}

/// The id and QEMU-syntax properties of a `[[bridge]]` or `[[expander]]` table (`kind`): its
/// values as [`root_port::toml_value`] writes them; the id must be a string, and present
/// (else `without_id`).
fn table_properties(
    table: &BTreeMap<String, toml::Value>,
    kind: &str,
    without_id: &str,
) -> Result<(String, Vec<(String, String)>)> {
    let mut props = Vec::new();
    let mut id = None;
    for (k, v) in table {
        let value = match v {
            toml::Value::String(s) => s.clone(),
            other if k == "id" => {
                return Err(TopologyError::Toml {
                    location: None,
                    message: format!("{kind} id: expected a string, found {other}"),
                })
            }
            other => root_port::toml_value(id.as_deref().unwrap_or(k), k, other)?,
        };
        if k == "id" {
            id = Some(value.clone());
        }
        props.push((k.clone(), value));
    }
    let Some(id) = id else {
        return Err(TopologyError::Toml {
            location: None,
            message: without_id.into(),
        });
    };
    Ok((id, props))
}

/// A device's configuration parser: from its id and QEMU-syntax properties.
type ParseConfig<C> = fn(&str, &[(&str, &str)]) -> Result<C>;

/// Where device `id` of driver `driver` sits (bus, address) and its configuration, from
/// QEMU-syntax properties (`id`, `bus`, `addr`, `driver` and the device's own, which `parse`
/// takes). Another `driver` is refused; without `bus` it sits on `pcie.0`; without `addr` at
/// `default_addr`, or, if `None`, it is refused.
fn placed<C>(
    id: &str,
    props: &[(String, String)],
    driver: &str,
    default_addr: Option<DevFn>,
    parse: ParseConfig<C>,
) -> Result<(String, DevFn, C)> {
    let field = |name: &str| {
        props
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if let Some(other) = field("driver").filter(|d| *d != driver) {
        return Err(TopologyError::UnknownProperty {
            id: id.to_string(),
            key: format!("driver={other}"),
            driver: driver.into(),
        });
    }
    let addr = match (field("addr"), default_addr) {
        (Some(a), _) => parse_devfn(a).map_err(|source| TopologyError::Address {
            id: id.to_string(),
            source,
        })?,
        (None, Some(a)) => a,
        (None, None) => {
            return Err(TopologyError::MissingProperty {
                id: id.to_string(),
                property: "addr",
            })
        }
    };
    let pairs: Vec<(&str, &str)> = props
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let bus = field("bus").unwrap_or(ROOT_BUS).to_string();
    Ok((bus, addr, parse(id, &pairs)?))
}

/// A `[[root-port]]` or `[[switch-port]]` table: `id`, `addr`, optional `bus` and `driver`
/// (`pcie-root-port`, the default, `ioh3420`, `x3130-upstream` or `xio3130-downstream`), then
/// any property of that QEMU device by QEMU's name. Names QEMU does not list fail while parsing,
/// with their line and column.
#[derive(Deserialize, Debug, Default)]
#[serde(transparent)]
struct PortRepr(BTreeMap<root_port::PropertyName, toml::Value>);

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

/// Build a port from its placement and QEMU-syntax properties, with the `addr` it was given.
/// Root ports sit on the root bus at `addr` (required); a switch port names its parent port in
/// `bus` (required) and without `addr` is placed by [`TopologySpec::push_port`].
fn port_spec(
    id: String,
    model: RootPortModel,
    addr: Option<&str>,
    bus: Option<&str>,
    props: &[(String, String)],
    segments: &[SegmentSpec],
    expanders: &[ExpanderSpec],
) -> Result<(PortSpec, Option<DevFn>)> {
    let root = model.kind() == BridgeKind::RootPort;
    let (segment, bus) = match bus {
        None | Some(ROOT_BUS) if root => (0, ROOT_BUS.to_string()),
        // A root port on a pxb-pcie's root bus (segment 0): `bus` names the expander.
        Some(bus) if root && expanders.iter().any(|x| x.config.id == bus) => (0, bus.to_string()),
        // A root port on an extra segment's root bus: `bus` names the segment.
        Some(bus) if root => match segments.iter().find(|s| s.id == bus) {
            Some(s) => (s.segment, ROOT_BUS.to_string()),
            None => {
                return Err(TopologyError::PortBus {
                    id,
                    bus: bus.to_string(),
                })
            }
        },
        // A switch port: its parent's segment (TopologySpec::port_segment).
        Some(bus) => (0, bus.to_string()),
        None => {
            return Err(TopologyError::MissingProperty {
                id,
                property: "bus",
            })
        }
    };
    let addr = match addr {
        Some(a) => Some(parse_devfn(a).map_err(|source| TopologyError::Address {
            id: id.clone(),
            source,
        })?),
        None if root => {
            return Err(TopologyError::MissingProperty {
                id,
                property: "addr",
            })
        }
        None => None,
    };
    let mut config = RootPortConfig {
        id,
        model,
        ..Default::default()
    };
    for (k, v) in props {
        root_port::set_property(&mut config, k, v)?;
    }
    let spec = PortSpec {
        segment,
        // Unplaced switch ports get their device number from TopologySpec::push_port().
        addr: addr.unwrap_or(DevFn(0)),
        bus,
        config,
    };
    Ok((spec, addr))
}

impl PortRepr {
    fn into_spec(
        self,
        segments: &[SegmentSpec],
        expanders: &[ExpanderSpec],
    ) -> Result<(PortSpec, Option<DevFn>)> {
        let text = |key: &str| match self.0.get(key) {
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            None => Ok(None),
            Some(other) => Err(TopologyError::Toml {
                location: None,
                message: format!("root-port {key}: expected a string, found {other}"),
            }),
        };
        let Some(id) = text("id")? else {
            return Err(TopologyError::Toml {
                location: None,
                message: "a [[root-port]] without id".into(),
            });
        };
        let addr = text("addr")?;
        let bus = text("bus")?;
        let model = match text("driver")? {
            None => RootPortModel::default(),
            Some(d) => RootPortModel::from_driver(&d).ok_or_else(|| TopologyError::PortDriver {
                id: id.clone(),
                driver: d,
            })?,
        };
        let props = self
            .0
            .iter()
            .filter(|(k, _)| !["id", "addr", "bus", "driver"].contains(&k.as_str()))
            .map(|(k, v)| Ok((k.to_string(), root_port::toml_value(&id, k.as_str(), v)?)))
            .collect::<Result<Vec<_>>>()?;
        port_spec(
            id,
            model,
            addr.as_deref(),
            bus.as_deref(),
            &props,
            segments,
            expanders,
        )
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
            machine: MachineType::default(),
            segment: 0,
            segments: Vec::new(),
            default_owner: "vmm".into(),
            root_ports: Vec::new(),
            bridges: Vec::new(),
            expanders: Vec::new(),
            endpoints: Vec::new(),
        }
    }

    /// Parse and validate a TOML topology file's contents.
    pub fn from_toml(text: &str) -> Result<Self> {
        let repr: FileRepr = toml::from_str(text).map_err(|e| TopologyError::toml(text, &e))?;
        let machine = match &repr.machine {
            Some(m) => m.parse().map_err(TopologyError::Machine)?,
            None => MachineType::default(),
        };
        let (segment, segments) = match repr.segment {
            None => (0, Vec::new()),
            Some(v) => super::segment::from_key(v)?,
        };
        let mut spec = TopologySpec {
            machine,
            segment,
            segments,
            default_owner: repr.default_owner.unwrap_or_else(|| "vmm".into()),
            ..Self::empty()
        };
        // Expanders first: root ports name them as their bus.
        for x in repr.expander {
            spec.expanders.push(x.into_spec()?);
        }
        for p in repr.root_port.into_iter().chain(repr.switch_port) {
            let (p, addr) = p.into_spec(&spec.segments, &spec.expanders)?;
            spec.push_port(p, addr);
        }
        for b in repr.bridge {
            spec.bridges.push(b.into_spec()?);
        }
        for d in repr.device {
            spec.push_device(d)?;
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
                return Err(TopologyError::DriverNotFirst {
                    opt: opt.to_string(),
                })
            }
            None => first.to_string(),
        };
        if driver.is_empty() {
            return Err(TopologyError::MissingDriver {
                opt: opt.to_string(),
            });
        }
        for p in parts {
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| TopologyError::NotKeyValue {
                    opt: opt.to_string(),
                    part: p.to_string(),
                })?;
            if kv.iter().any(|(k2, _)| k2 == k) {
                return Err(TopologyError::DuplicateProperty {
                    opt: opt.to_string(),
                    key: k.to_string(),
                });
            }
            kv.push((k.to_string(), v.to_string()));
        }
        let id = kv.iter().find(|(k, _)| k == "id").map(|(_, v)| v.clone());
        let id = id.ok_or_else(|| TopologyError::MissingId {
            opt: opt.to_string(),
        })?;
        let bad = |k: &str| TopologyError::UnknownProperty {
            id: id.clone(),
            key: k.to_string(),
            driver: driver.clone(),
        };
        let boolean = |k: &str, v: &str| {
            root_port::parse_bool(v).ok_or_else(|| TopologyError::NotOnOff {
                id: id.clone(),
                key: k.to_string(),
                value: v.to_string(),
            })
        };
        if let Some(model) = RootPortModel::from_driver(&driver) {
            let field = |name: &str| kv.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
            let props: Vec<(String, String)> = kv
                .iter()
                .filter(|(k, _)| !["id", "addr", "bus"].contains(&k.as_str()))
                .cloned()
                .collect();
            let (port, addr) = port_spec(
                id.clone(),
                model,
                field("addr"),
                field("bus"),
                &props,
                &self.segments,
                &self.expanders,
            )?;
            self.push_port(port, addr);
        } else if driver == BRIDGE_DRIVER {
            self.bridges.push(bridge_spec(&id, &kv)?);
        } else if driver == EXPANDER_DRIVER {
            self.expanders.push(expander_spec(&id, &kv)?);
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
            self.push_device(d)?;
        }
        self.validate()
    }

    /// Add a port at `addr`; a switch port given without one takes the lowest device number no
    /// port or function on its bus uses yet, as QEMU's automatic slot assignment does.
    fn push_port(&mut self, mut p: PortSpec, addr: Option<DevFn>) {
        if addr.is_none() {
            let used = |dev: u8| {
                self.root_ports
                    .iter()
                    .filter(|q| q.bus == p.bus)
                    .map(|q| q.addr)
                    .chain(
                        self.endpoints
                            .iter()
                            .filter(|e| e.bus == p.bus)
                            .map(|e| e.addr),
                    )
                    .any(|a| a.device() == dev)
            };
            let dev = (0..32u8).find(|&d| !used(d)).unwrap_or(0);
            p.addr = DevFn(dev << 3);
        }
        self.root_ports.push(p);
    }

    /// The port with this id.
    pub fn port(&self, id: &str) -> Option<&PortSpec> {
        self.root_ports.iter().find(|p| p.config.id == id)
    }

    /// The `pcie-pci-bridge` with this id.
    pub fn bridge(&self, id: &str) -> Option<&BridgeSpec> {
        self.bridges.iter().find(|b| b.config.id == id)
    }

    /// The `pxb-pcie` with this id.
    pub fn expander(&self, id: &str) -> Option<&ExpanderSpec> {
        self.expanders.iter().find(|x| x.config.id == id)
    }

    fn push_device(&mut self, d: DeviceRepr) -> Result<()> {
        let id = d.id;
        if RootPortModel::from_driver(&d.driver).is_some() {
            return Err(TopologyError::PortAsDevice { id });
        }
        if d.driver == BRIDGE_DRIVER {
            return Err(TopologyError::BridgeAsDevice { id });
        }
        if d.driver == EXPANDER_DRIVER {
            return Err(TopologyError::ExpanderAsDevice { id });
        }
        let Some(bus) = d.bus else {
            return Err(TopologyError::MissingProperty {
                id,
                property: "bus",
            });
        };
        let addr = match d.addr {
            Some(a) => parse_devfn(&a).map_err(|source| TopologyError::Address {
                id: id.clone(),
                source,
            })?,
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
        use TopologyError as E;
        if self.segment != 0 && !self.segments.iter().any(|s| s.segment == self.segment) {
            return Err(E::Segment(self.segment));
        }
        super::segment::validate(&self.segments)?;
        // An extra segment's id names its root bus: not the Q35 one's name.
        if let Some(s) = self.segments.iter().find(|s| s.id == ROOT_BUS) {
            return Err(E::InvalidId(s.id.clone()));
        }
        if !valid_name(&self.default_owner) || self.default_owner == PCIERC_OWNER {
            return Err(E::DefaultOwner(self.default_owner.clone()));
        }
        let mut ids = HashSet::new();
        let all_ids = self
            .segments
            .iter()
            .map(|s| s.id.as_str())
            .chain(self.root_ports.iter().map(|p| p.config.id.as_str()))
            .chain(self.bridges.iter().map(|b| b.config.id.as_str()))
            .chain(self.expanders.iter().map(|x| x.config.id.as_str()))
            .chain(self.endpoints.iter().map(|e| e.id.as_str()));
        for id in all_ids {
            if !valid_name(id) || !id.starts_with(|c: char| c.is_ascii_alphabetic()) {
                return Err(E::InvalidId(id.to_string()));
            }
            if !ids.insert(id) {
                return Err(E::DuplicateId(id.to_string()));
            }
        }
        // (bus name, devfn) -> (id, multifunction)
        let mut slots: HashMap<(&str, DevFn), (&str, bool)> = HashMap::new();
        let mut chassis_slots = HashMap::new();
        let mut acpi_indexes = HashSet::new();
        self.validate_expanders(&mut slots, &mut acpi_indexes)?;
        for p in &self.root_ports {
            let id = p.config.id.as_str();
            p.config.validate()?;
            // pci_qdev_realize(): acpi-index is unique among the machine's devices.
            let index = p.config.acpi_index;
            if index != 0 && !acpi_indexes.insert(index) {
                return Err(E::AcpiIndexInUse {
                    id: id.to_string(),
                    index,
                });
            }
            self.check_placement(p)?;
            if p.bus == ROOT_BUS && p.addr == DevFn(0) {
                return Err(E::HostBridgeAddress { id: id.to_string() });
            }
            // Root ports by their segment's root bus, switch ports by their parent's id.
            let bus = if p.bus == ROOT_BUS {
                self.root_bus_name(self.port_segment(p))
            } else {
                p.bus.as_str()
            };
            if let Some((other, _)) = slots.insert((bus, p.addr), (id, p.config.multifunction)) {
                return Err(E::PortAddressInUse {
                    id: id.to_string(),
                    addr: p.addr,
                    other: other.to_string(),
                });
            }
            // pcie_chassis_add_slot(): (chassis, slot) is unique among the ports with a slot.
            if !p.config.model.kind().has_slot() {
                continue;
            }
            let cs = (p.config.chassis, p.config.slot);
            if let Some(other) = chassis_slots.insert(cs, id) {
                return Err(E::ChassisSlotInUse {
                    id: id.to_string(),
                    chassis: cs.0,
                    slot: cs.1,
                    other: other.to_string(),
                });
            }
        }
        // Functions and bridges sit behind ports with a slot (root and switch downstream ports).
        let ports: HashSet<&str> = self
            .root_ports
            .iter()
            .filter(|p| p.config.model.kind().has_slot())
            .map(|p| p.config.id.as_str())
            .collect();
        for b in &self.bridges {
            let id = b.config.id.as_str();
            pcie_pci_bridge::validate(&b.config)?;
            let index = b.config.acpi_index;
            if index != 0 && !acpi_indexes.insert(index) {
                return Err(E::AcpiIndexInUse {
                    id: id.to_string(),
                    index,
                });
            }
            if b.bus == ROOT_BUS {
                if b.addr == DevFn(0) {
                    return Err(E::HostBridgeAddress { id: id.to_string() });
                }
            } else if self.bridge(&b.bus).is_some() || self.expander(&b.bus).is_some() {
                return Err(E::Placement {
                    id: id.to_string(),
                    bus: b.bus.clone(),
                    reason: "a pcie-pci-bridge sits on pcie.0 or below a root or downstream port",
                });
            } else if !ports.contains(b.bus.as_str()) {
                return Err(E::UnknownBus {
                    id: id.to_string(),
                    bus: b.bus.clone(),
                });
            } else if b.addr.device() != 0 {
                // PCIe Base 6.0 §2.2.6.2: below a Downstream Port only Device Number 0 exists.
                return Err(E::DeviceBehindPort {
                    id: id.to_string(),
                    port: b.bus.clone(),
                });
            }
            if let Some((other, _)) =
                slots.insert((b.bus.as_str(), b.addr), (id, b.config.multifunction))
            {
                return Err(E::AddressInUse {
                    id: id.to_string(),
                    addr: b.addr,
                    bus: b.bus.clone(),
                    other: other.to_string(),
                });
            }
        }
        for e in &self.endpoints {
            let id = e.id.as_str();
            if !valid_name(&e.owner) || e.owner == PCIERC_OWNER {
                return Err(E::Owner {
                    id: id.to_string(),
                    owner: e.owner.clone(),
                });
            }
            if e.bus == ROOT_BUS || self.segments.iter().any(|s| s.id == e.bus) {
                if e.addr == DevFn(0) {
                    return Err(E::HostBridgeAddress { id: id.to_string() });
                }
            } else if self.expander(&e.bus).is_some() {
                // pci_qdev_realize() -> pxb_bus's check: only bridges on an expander's bus.
                return Err(E::OnlyBridgesOnExpander {
                    id: id.to_string(),
                    expander: e.bus.clone(),
                });
            } else if self.bridge(&e.bus).is_some() {
                // A conventional PCI bus: devices 0-31, but the SHPC has slots 1-31 only and
                // QEMU refuses device 0 (shpc_device_get_slot()).
                if e.addr.device() == 0 {
                    return Err(E::BridgeSlotZero {
                        id: id.to_string(),
                        bridge: e.bus.clone(),
                    });
                }
            } else if !ports.contains(e.bus.as_str()) {
                return Err(E::UnknownBus {
                    id: id.to_string(),
                    bus: e.bus.clone(),
                });
            } else if e.addr.device() != 0 {
                // PCIe Base 6.0 §2.2.6.2: below a Downstream Port only Device Number 0 exists.
                return Err(E::DeviceBehindPort {
                    id: id.to_string(),
                    port: e.bus.clone(),
                });
            }
            if let Some((other, _)) = slots.insert((e.bus.as_str(), e.addr), (id, e.multifunction))
            {
                return Err(E::AddressInUse {
                    id: id.to_string(),
                    addr: e.addr,
                    bus: e.bus.clone(),
                    other: other.to_string(),
                });
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
                    return Err(E::NeedsMultifunction {
                        id: id.to_string(),
                        function: addr.function(),
                        function0: f0.to_string(),
                        device: addr.device(),
                    })
                }
                None => {
                    return Err(E::NoFunctionZero {
                        id: id.to_string(),
                        function: addr.function(),
                        device: addr.device(),
                        bus: bus.to_string(),
                    })
                }
            }
        }
        Ok(())
    }

    /// The name of segment `segment`'s root bus: `pcie.0` for this spec's own segment (the Q35
    /// hierarchy's in the whole topology), the segment's id for another.
    pub fn root_bus_name(&self, segment: u16) -> &str {
        if segment == self.segment {
            return ROOT_BUS;
        }
        self.segments
            .iter()
            .find(|s| s.segment == segment)
            .map_or(ROOT_BUS, |s| s.id.as_str())
    }

    /// The segment endpoint `e` sits in: its root bus's, or its port's; `None` for an unknown
    /// bus.
    pub fn endpoint_segment(&self, e: &EndpointSpec) -> Option<u16> {
        if e.bus == ROOT_BUS {
            return Some(self.segment);
        }
        if let Some(s) = self.segments.iter().find(|s| s.id == e.bus) {
            return Some(s.segment);
        }
        if let Some(b) = self.bridges.iter().find(|b| b.config.id == e.bus) {
            return self.bridge_segment(b);
        }
        self.port(&e.bus).map(|p| self.port_segment(p))
    }

    /// The segment a `pcie-pci-bridge` is in: the root bus's, or the port's it sits behind;
    /// `None` for an unknown bus.
    pub fn bridge_segment(&self, b: &BridgeSpec) -> Option<u16> {
        if b.bus == ROOT_BUS {
            return Some(self.segment);
        }
        self.port(&b.bus).map(|p| self.port_segment(p))
    }

    /// The segment port `p` is in: a root port's own, a switch port's root port's (the chain
    /// of parents is walked at most once per port: a broken chain, refused by validation,
    /// gives the last port reached).
    pub fn port_segment(&self, p: &PortSpec) -> u16 {
        let mut at = p;
        for _ in 0..=self.root_ports.len() {
            if at.bus == ROOT_BUS {
                break;
            }
            match self.port(&at.bus) {
                Some(up) => at = up,
                None => break,
            }
        }
        at.segment
    }

    /// The segment numbers this topology has: its own (0, the Q35 hierarchy, for a whole
    /// topology), then the extra ones in declaration order.
    pub fn segment_numbers(&self) -> Vec<u16> {
        std::iter::once(self.segment)
            .chain(
                self.segments
                    .iter()
                    .map(|s| s.segment)
                    .filter(|&n| n != self.segment),
            )
            .collect()
    }

    /// The part of the topology in segment `segment`, as one hierarchy serves it: its root
    /// ports and endpoints (those on its root bus with `bus` = `pcie.0`), and for an extra
    /// segment its [`SegmentSpec`] alone.
    pub fn for_segment(&self, segment: u16) -> TopologySpec {
        let own = self.segments.iter().find(|s| s.segment == segment);
        let root_bus = own.map(|s| s.id.as_str());
        TopologySpec {
            machine: self.machine,
            segment,
            segments: own.cloned().into_iter().collect(),
            default_owner: self.default_owner.clone(),
            root_ports: self
                .root_ports
                .iter()
                .filter(|p| self.port_segment(p) == segment)
                .map(|p| PortSpec {
                    segment,
                    ..p.clone()
                })
                .collect(),
            bridges: self
                .bridges
                .iter()
                .filter(|b| self.bridge_segment(b) == Some(segment))
                .cloned()
                .collect(),
            // Expanders open buses of segment 0 (the Q35 hierarchy's) only.
            expanders: if own.is_none() {
                self.expanders.clone()
            } else {
                Vec::new()
            },
            endpoints: self
                .endpoints
                .iter()
                .filter(|e| self.endpoint_segment(e) == Some(segment))
                .map(|e| EndpointSpec {
                    bus: if Some(e.bus.as_str()) == root_bus {
                        ROOT_BUS.to_string()
                    } else {
                        e.bus.clone()
                    },
                    ..e.clone()
                })
                .collect(),
        }
    }
}

impl TopologySpec {
    /// The expanders' own checks (QEMU 7.2's `pxb_dev_realize_common()`, `pxb_register_bus()`,
    /// `pci_qdev_realize()`): on `pcie.0` only, not at 00.0, a bus number no other expander
    /// has, a unique `acpi-index`; their addresses go into `slots` with the other functions'.
    fn validate_expanders<'a>(
        &'a self,
        slots: &mut HashMap<(&'a str, DevFn), (&'a str, bool)>,
        acpi_indexes: &mut HashSet<u32>,
    ) -> Result<()> {
        use TopologyError as E;
        let mut bus_nrs: HashMap<u8, &str> = HashMap::new();
        for x in &self.expanders {
            let id = x.config.id.as_str();
            pxb_pcie::validate(&x.config)?;
            if x.bus != ROOT_BUS {
                if self.expander(&x.bus).is_some() {
                    return Err(E::OnlyBridgesOnExpander {
                        id: id.to_string(),
                        expander: x.bus.clone(),
                    });
                }
                if self.port(&x.bus).is_some()
                    || self.bridge(&x.bus).is_some()
                    || self.segments.iter().any(|s| s.id == x.bus)
                {
                    return Err(E::ExpanderNotOnRootBus { id: id.to_string() });
                }
                return Err(E::UnknownBus {
                    id: id.to_string(),
                    bus: x.bus.clone(),
                });
            }
            if x.addr == DevFn(0) {
                return Err(E::HostBridgeAddress { id: id.to_string() });
            }
            let index = x.config.acpi_index;
            if index != 0 && !acpi_indexes.insert(index) {
                return Err(E::AcpiIndexInUse {
                    id: id.to_string(),
                    index,
                });
            }
            if let Some(other) = bus_nrs.insert(x.config.bus_nr, id) {
                return Err(E::ExpanderBusInUse {
                    id: id.to_string(),
                    bus_nr: x.config.bus_nr,
                    other: other.to_string(),
                });
            }
            let function = (id, x.config.multifunction);
            if let Some((other, _)) = slots.insert((ROOT_BUS, x.addr), function) {
                return Err(E::PortAddressInUse {
                    id: id.to_string(),
                    addr: x.addr,
                    other: other.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Where a port may sit (PCIe Base 6.0 §1.3.3, §7.3.1): a root port on the root bus; a
    /// switch's upstream port at device 0 below a root or switch downstream port; a downstream
    /// port on an upstream port's (internal) bus; and the chain of parents reaches the root bus.
    fn check_placement(&self, p: &PortSpec) -> Result<()> {
        let refuse = |reason| {
            Err(TopologyError::Placement {
                id: p.config.id.clone(),
                bus: p.bus.clone(),
                reason,
            })
        };
        let kind = p.config.model.kind();
        if kind == BridgeKind::RootPort {
            return Ok(());
        }
        if p.bus == ROOT_BUS || self.expander(&p.bus).is_some() {
            return refuse("a switch port sits below a root port or another switch's port");
        }
        if self.bridge(&p.bus).is_some() {
            return refuse("a switch port sits below a root port or another switch's port");
        }
        let Some(parent) = self.port(&p.bus) else {
            return Err(TopologyError::UnknownBus {
                id: p.config.id.clone(),
                bus: p.bus.clone(),
            });
        };
        let parent_kind = parent.config.model.kind();
        match kind {
            BridgeKind::SwitchUpstream if parent_kind == BridgeKind::SwitchUpstream => {
                return refuse("an upstream port sits below a root or downstream port");
            }
            BridgeKind::SwitchUpstream if p.addr.device() != 0 => {
                return refuse("below a downstream port only device 0 exists");
            }
            BridgeKind::SwitchDownstream if parent_kind != BridgeKind::SwitchUpstream => {
                return refuse("a downstream port sits on a switch upstream port's bus");
            }
            _ => {}
        }
        // No cycles: the parents lead to the root bus within as many steps as there are ports.
        let mut at = p;
        for _ in 0..=self.root_ports.len() {
            // A root bus: pcie.0 or an expander's.
            if at.bus == ROOT_BUS || self.expander(&at.bus).is_some() {
                return Ok(());
            }
            match self.port(&at.bus) {
                Some(up) => at = up,
                None => break,
            }
        }
        refuse("its parents never reach the root bus (a cycle)")
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
    use crate::topology::addr::ParseError;

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
    fn the_last_function_of_the_last_slot_is_an_address_like_any_other() {
        // 1f.7 is devfn 0xff: it once stood for "no addr given" and came out as 00.0.
        let mut s = TopologySpec::empty();
        for f in 0..8 {
            let mf = if f == 0 { ",multifunction=on" } else { "" };
            s.add_device_option(&format!(
                "pcie-root-port,id=rp{f},chassis=1,slot={f},addr=0x1f.{f}{mf}"
            ))
            .unwrap();
        }
        assert_eq!(s.port("rp7").map(|p| p.addr), Some(DevFn(0xff)));
        let toml = "[[root-port]]\nid = \"rp1\"\naddr = \"1f.0\"\nmultifunction = \"on\"\n\
                    [[root-port]]\nid = \"rp2\"\naddr = \"1f.7\"\nchassis = \"2\"\n";
        let f = TopologySpec::from_toml(toml).unwrap();
        assert_eq!(f.port("rp2").map(|p| p.addr), Some(DevFn(0xff)));
    }

    #[test]
    fn ioh3420_root_ports_from_options_and_files() {
        use TopologyError as E;
        let mut s = TopologySpec::empty();
        s.add_device_option("ioh3420,id=rp1,chassis=1,slot=1,addr=0x1c.0,port=3")
            .unwrap();
        s.add_device_option("virtio-net-pci,id=net0,bus=rp1")
            .unwrap();
        assert_eq!(s.root_ports[0].config.model, RootPortModel::Ioh3420);
        assert_eq!(s.root_ports[0].config.port, 3);
        let chassis = s
            .clone()
            .add_device_option("pcie-root-port,id=rp2,chassis=1,slot=1,addr=0x1c.1")
            .unwrap_err();
        assert!(
            matches!(&chassis, E::ChassisSlotInUse { other, .. } if other == "rp1"),
            "one chassis/slot namespace across models: {chassis:?}"
        );
        let e = s
            .clone()
            .add_device_option("ioh3420,id=rp2,chassis=2,slot=2,addr=0x1c.1,bus-reserve=1")
            .unwrap_err();
        assert!(
            matches!(&e, E::UnknownProperty { key, driver, .. } if key == "bus-reserve" && driver == "ioh3420"),
            "{e:?}"
        );
        let f = TopologySpec::from_toml(
            "[[root-port]]\nid='a'\ndriver='ioh3420'\naddr='3'\n[[root-port]]\nid='b'\naddr='4'\nslot=2\n",
        )
        .unwrap();
        let models: Vec<_> = f.root_ports.iter().map(|p| p.config.model).collect();
        assert_eq!(
            models,
            [RootPortModel::Ioh3420, RootPortModel::PcieRootPort]
        );
        let e = TopologySpec::from_toml("[[root-port]]\nid='a'\ndriver='x3130'\naddr='3'\n")
            .unwrap_err();
        assert!(
            matches!(&e, E::PortDriver { id, driver } if id == "a" && driver == "x3130"),
            "{e:?}"
        );
        let e = TopologySpec::from_toml("[[device]]\nid='a'\ndriver='ioh3420'\nbus='pcie.0'\n")
            .unwrap_err();
        assert!(matches!(&e, E::PortAsDevice { id } if id == "a"), "{e:?}");
    }

    #[test]
    fn rejects_with_the_offending_item_named() {
        use TopologyError as E;
        let mut s = TopologySpec::empty();
        s.add_device_option("pcie-root-port,id=rp1,chassis=1,slot=1,addr=0x3")
            .unwrap();
        let refused = |opt: &str| {
            let mut t = s.clone();
            match t.add_device_option(opt) {
                Err(e) => e,
                Ok(()) => panic!("{opt} was accepted"),
            }
        };
        let is = |s: &str, want: &str| s == want;
        type Check<'a> = Box<dyn Fn(&TopologyError) -> bool + 'a>;
        let cases: Vec<(&str, Check)> = vec![
            (
                "pcie-root-port,id=rp2,chassis=2,slot=2,addr=0x3",
                Box::new(|e| {
                    matches!(e, E::PortAddressInUse { id, addr: DevFn(0x18), other }
                        if is(id, "rp2") && is(other, "rp1"))
                }),
            ),
            (
                "pcie-root-port,id=rp2,chassis=1,slot=1,addr=0x4",
                Box::new(|e| {
                    matches!(e, E::ChassisSlotInUse { id, chassis: 1, slot: 1, other }
                        if is(id, "rp2") && is(other, "rp1"))
                }),
            ),
            (
                "pcie-root-port,id=rp1,chassis=2,slot=2,addr=0x4",
                Box::new(|e| matches!(e, E::DuplicateId(id) if is(id, "rp1"))),
            ),
            (
                "pcie-root-port,id=rp2,chassis=256,addr=0x4",
                Box::new(|e| {
                    matches!(e, E::OutOfRange { id, property: "chassis", value: 256, max: 0xff }
                        if is(id, "rp2"))
                }),
            ),
            (
                "pcie-root-port,id=rp2,chassis=x,addr=0x4",
                Box::new(|e| {
                    matches!(e, E::Value { id, property: "chassis", source: ParseError::NotANumber(x) }
                        if is(id, "rp2") && is(x, "x"))
                }),
            ),
            (
                "pcie-root-port,id=rp2,color=red,addr=0x4",
                Box::new(|e| {
                    matches!(e, E::UnknownProperty { id, key, driver }
                        if is(id, "rp2") && is(key, "color") && is(driver, "pcie-root-port"))
                }),
            ),
            (
                "pcie-root-port,id=rp2,chassis=2,slot=2,addr=0x3.1",
                Box::new(|e| {
                    matches!(e, E::NeedsMultifunction { id, function: 1, function0, device: 3 }
                        if is(id, "rp2") && is(function0, "rp1"))
                }),
            ),
            (
                "pcie-root-port,id=rp2,chassis=2,slot=2,addr=0x5.1",
                Box::new(|e| {
                    matches!(e, E::NoFunctionZero { id, function: 1, device: 5, bus }
                        if is(id, "rp2") && is(bus, ROOT_BUS))
                }),
            ),
            (
                "pcie-root-port,id=rp2,chassis=2,slot=2,addr=0x0",
                Box::new(|e| matches!(e, E::HostBridgeAddress { id } if is(id, "rp2"))),
            ),
            (
                "pcie-root-port,id=rp2,chassis=2,slot=2,addr=0x20",
                Box::new(|e| {
                    matches!(e, E::Address { id, source: ParseError::AddressOutOfRange(a) }
                        if is(id, "rp2") && is(a, "0x20"))
                }),
            ),
            (
                "pcie-root-port,chassis=2",
                Box::new(|e| matches!(e, E::MissingId { .. })),
            ),
            (
                "virtio-net-pci,id=n0,bus=rp9",
                Box::new(
                    |e| matches!(e, E::UnknownBus { id, bus } if is(id, "n0") && is(bus, "rp9")),
                ),
            ),
            (
                "virtio-net-pci,id=n0,bus=rp1,addr=1.0",
                Box::new(
                    |e| matches!(e, E::DeviceBehindPort { id, port } if is(id, "n0") && is(port, "rp1")),
                ),
            ),
            (
                "virtio-net-pci,id=n0,bus=rp1,owner=pcierc",
                Box::new(
                    |e| matches!(e, E::Owner { id, owner } if is(id, "n0") && is(owner, PCIERC_OWNER)),
                ),
            ),
            (
                "virtio-net-pci,id=n0",
                Box::new(
                    |e| matches!(e, E::MissingProperty { id, property: "bus" } if is(id, "n0")),
                ),
            ),
            (
                "pcie-root-port,id=rp2,chassis=2,slot=2,addr=4,multifunction=maybe",
                Box::new(|e| matches!(e, E::NotOnOff { key, .. } if is(key, "multifunction"))),
            ),
        ];
        for (opt, want) in cases {
            let e = refused(opt);
            assert!(want(&e), "{opt}: got {e:?} ('{e}')");
        }
        // The message names the item, as the command line prints it.
        assert_eq!(
            refused("pcie-root-port,id=rp2,chassis=2,slot=2,addr=0x3").to_string(),
            "rp2: address 03.0 is already used by rp1"
        );
        assert_eq!(
            refused("pcie-root-port,id=rp2,chassis=x,addr=0x4").to_string(),
            "rp2: chassis: 'x' is not a number"
        );
    }

    #[test]
    fn toml_rejects_unknown_keys_and_bad_values() {
        use TopologyError as E;
        let e = TopologySpec::from_toml("[[root-port]]\nid='a'\naddr='3'\ncolour=1\n").unwrap_err();
        assert!(
            matches!(&e, E::Toml { location: Some((4, 1)), message } if message.contains("unknown field `colour`")),
            "{e:?}"
        );
        let s = TopologySpec::from_toml(
            "[[root-port]]\nid='a'\naddr='3'\nhotplug=false\nx-speed='8'\naer_log_max=0\n",
        )
        .unwrap();
        let c = &s.root_ports[0].config;
        assert_eq!((c.hotplug, c.aer_log_max), (false, 0));
        let e =
            TopologySpec::from_toml("[[root-port]]\nid='a'\naddr='3'\nx-width=3\n").unwrap_err();
        assert!(
            matches!(
                &e,
                E::PortProperty {
                    property: "x-width",
                    ..
                }
            ),
            "{e:?}"
        );
        let e = TopologySpec::from_toml("[[device]]\ndriver='x'\nid='a'\nbus='rp'\ncolour=1\n")
            .unwrap_err();
        assert!(
            matches!(&e, E::Toml { location: Some((5, 1)), message } if message.contains("unknown field `colour`")),
            "{e:?}"
        );
        assert!(!e.to_string().contains('\n'), "one line: {e}");
        let e = TopologySpec::from_toml("[[root-port]]\nid='a'\naddr='3'\nport=300\n").unwrap_err();
        assert!(
            matches!(&e, E::OutOfRange { id, property: "port", value: 300, .. } if id == "a"),
            "{e:?}"
        );
        let e = TopologySpec::from_toml("segment = 1\n").unwrap_err();
        assert!(matches!(e, E::Segment(1)), "{e:?}");
        let e = TopologySpec::from_toml(
            "default-owner='qemu'\n[[root-port]]\nid='a'\naddr='0x3.0'\nchassis=7\npref64-reserve='1G'\n\
             [[device]]\ndriver='vfio-pci'\nid='gpu'\nbus='a'\nowner='gpu-dm'\n[[device]]\ndriver='x'\nid='b'\nbus='a'\naddr='0.1'\n",
        )
        .unwrap_err();
        assert!(
            matches!(&e, E::NeedsMultifunction { id, function: 1, function0, device: 0 }
                if id == "b" && function0 == "gpu"),
            "{e:?}"
        );
        let e =
            TopologySpec::from_toml("[[root-port]]\nid='a'\naddr='3'\nbus='rp1'\n").unwrap_err();
        assert!(
            matches!(&e, E::PortBus { bus, .. } if bus == "rp1"),
            "{e:?}"
        );
    }
}
