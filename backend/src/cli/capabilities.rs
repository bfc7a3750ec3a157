//! `--print-capabilities`: a JSON description of the backend, as vhost-user backends print.

use pcierc_protocol::{Features, ProtocolFeatures, PROTOCOL_VERSION};
use serde_json::json;

use crate::service::{BACKEND_FEATURES, BACKEND_PROTOCOL_FEATURES};
use crate::topology::TopologySpec;

fn names<T: bitflags::Flags>(flags: T) -> Vec<String> {
    flags
        .iter_names()
        .map(|(n, _)| n.to_ascii_lowercase().replace('_', "-"))
        .collect()
}

/// The capabilities object for the given topology.
pub fn json(spec: &TopologySpec) -> String {
    let v = json!({
        "type": "pcie-root-complex",
        "name": "pcierc",
        "version": env!("CARGO_PKG_VERSION"),
        "protocol-version": PROTOCOL_VERSION,
        "features": names::<Features>(BACKEND_FEATURES),
        "protocol-features": names::<ProtocolFeatures>(BACKEND_PROTOCOL_FEATURES),
        "machine": "q35",
        "host-bridge": {"vendor-id": 0x8086, "device-id": 0x29c0, "addr": "00.0"},
        "devices": ["pcie-root-port"],
        "root-ports": spec.root_ports.iter().map(|p| json!({
            "id": p.config.id, "addr": p.addr.to_string(), "chassis": p.config.chassis,
            "slot": p.config.slot, "port": p.config.port,
        })).collect::<Vec<_>>(),
    });
    serde_json::to_string_pretty(&v).unwrap_or_default()
}
