//! `--print-capabilities`: a JSON description of the backend, as vhost-user backends print.
//! As vhost-user's backend program conventions require, it is printed whatever the other
//! options are: [`requested`] finds it before the command line is parsed, and options that do
//! not parse or describe no valid topology are ignored (with a warning on standard error).

use std::ffi::OsString;

use clap::Parser;
use log::warn;
use pcierc_protocol::{Features, ProtocolFeatures, PROTOCOL_VERSION};
use serde_json::json;

use super::Args;
use crate::devices::MachineType;
use crate::service::{BACKEND_FEATURES, BACKEND_PROTOCOL_FEATURES};
use crate::topology::spec::ROOT_BUS;
use crate::topology::TopologySpec;

/// The option.
pub const OPTION: &str = "--print-capabilities";

/// Features of the program itself, listed after the protocol's feature bits.
pub const PROGRAM_FEATURES: [&str; 1] = [
    // READY=1 on $NOTIFY_SOCKET once listening (systemd Type=notify).
    "systemd-notify",
];

/// Does the command line (`argv` without the program name) ask for the capabilities? Looked
/// for before `--` only.
pub fn requested<I: IntoIterator<Item = OsString>>(argv: I) -> bool {
    argv.into_iter()
        .take_while(|a| a != "--")
        .any(|a| a == OPTION)
}

/// Print the capabilities for a command line that asks for them (`argv` with the program
/// name): the root ports are those of the topology the other options describe, if they parse
/// and describe a valid one; otherwise they are left out and a warning says why.
pub fn print_for_argv<I: IntoIterator<Item = OsString>>(argv: I) {
    match Args::try_parse_from(argv) {
        Ok(args) if args.command.is_none() => print(Some(&args)),
        Ok(_) => {
            warn!("{OPTION}: ignoring the subcommand");
            print(None)
        }
        Err(e) => {
            let first = e.to_string();
            let first = first.lines().next().unwrap_or_default();
            warn!("{OPTION}: ignoring the other options ({first})");
            print(None)
        }
    }
}

/// Print the capabilities: for `args`' topology when it loads, else without root ports.
pub fn print(args: Option<&Args>) {
    let spec = args.and_then(|a| match a.topology.load() {
        Ok(s) => Some(s),
        Err(e) => {
            warn!("{OPTION}: ignoring the topology options ({e})");
            None
        }
    });
    println!("{}", json(spec.as_ref()));
}

fn names<T: bitflags::Flags>(flags: T) -> Vec<String> {
    flags
        .iter_names()
        .map(|(n, _)| n.to_ascii_lowercase().replace('_', "-"))
        .collect()
}

/// The capabilities object for the given topology (`root-ports` left out without one).
pub fn json(spec: Option<&TopologySpec>) -> String {
    let mut features = names::<Features>(BACKEND_FEATURES);
    features.extend(PROGRAM_FEATURES.iter().map(|f| f.to_string()));
    let mut v = json!({
        "type": "pcie-root-complex",
        "name": "pcierc",
        "version": env!("CARGO_PKG_VERSION"),
        "protocol-version": PROTOCOL_VERSION,
        "features": features,
        "protocol-features": names::<ProtocolFeatures>(BACKEND_PROTOCOL_FEATURES),
        "machine": "q35",
        "machine-types": MachineType::ALL.map(MachineType::name),
        "host-bridge": {"vendor-id": 0x8086, "device-id": 0x29c0, "addr": "00.0"},
        "devices": ["pcie-root-port"],
    });
    if let Some(spec) = spec {
        v["machine-type"] = spec.machine.name().into();
        // Root ports sit on pcie.0 or on an expander's root bus.
        let root = |p: &&crate::topology::spec::PortSpec| {
            p.bus == ROOT_BUS || spec.expander(&p.bus).is_some()
        };
        v["root-ports"] = spec
            .root_ports
            .iter()
            .filter(root)
            .map(|p| {
                json!({
                    "id": p.config.id, "addr": p.addr.to_string(), "chassis": p.config.chassis,
                    "slot": p.config.slot, "port": p.config.port,
                })
            })
            .collect();
        let switch: Vec<serde_json::Value> = spec
            .root_ports
            .iter()
            .filter(|p| !root(p))
            .map(|p| {
                json!({
                    "id": p.config.id, "driver": p.config.model.driver(), "bus": p.bus,
                    "addr": p.addr.to_string(), "port": p.config.port,
                })
            })
            .collect();
        if !switch.is_empty() {
            v["switch-ports"] = switch.into();
        }
        let expanders: Vec<serde_json::Value> = spec
            .expanders
            .iter()
            .map(|x| {
                json!({
                    "id": x.config.id, "driver": crate::topology::pxb_pcie::DRIVER,
                    "addr": x.addr.to_string(), "bus_nr": x.config.bus_nr,
                    "numa_node": x.config.numa_node(),
                })
            })
            .collect();
        if !expanders.is_empty() {
            v["expanders"] = expanders.into();
        }
    }
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_option_is_found_anywhere_before_a_double_dash() {
        assert!(requested(argv(&["--print-capabilities"])));
        assert!(requested(argv(&["--bogus", "x", "--print-capabilities"])));
        assert!(!requested(argv(&["--socket-path", "s"])));
        assert!(!requested(argv(&["--", "--print-capabilities"])));
    }

    #[test]
    fn features_include_systemd_notify_and_root_ports_need_a_topology() {
        let v: serde_json::Value = serde_json::from_str(&json(None)).unwrap();
        assert!(v["features"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "systemd-notify"));
        assert!(v.get("root-ports").is_none());
        assert!(v.get("machine-type").is_none());
        assert_eq!(
            v["machine-types"],
            serde_json::json!(["pc-q35-7.2", "pc-q35-10.0"])
        );
        let mut spec = TopologySpec::embedded_default().unwrap();
        let v: serde_json::Value = serde_json::from_str(&json(Some(&spec))).unwrap();
        assert_eq!(v["root-ports"].as_array().map(Vec::len), Some(4));
        assert_eq!(v["machine-type"], "pc-q35-7.2");
        spec.machine = MachineType::PcQ35V10_0;
        let v: serde_json::Value = serde_json::from_str(&json(Some(&spec))).unwrap();
        assert_eq!(v["machine-type"], "pc-q35-10.0");
    }
}
