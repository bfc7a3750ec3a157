//! The versioned device-state blob (`SaveState` / `LoadState`).
//!
//! A JSON document: `{"format": "pcierc-state", "version": 1, "machine": "pc-q35-7.2",
//! "config_address": N, "generation": N,
//! "functions": [{"id": "mch", "state": {...}}, ...], "endpoints": [{"id", "driver", "bus",
//! "addr", "owner", "multifunction"}, ...]}` (endpoints: the functions other emulators serve,
//! including hot-added ones; `"segment": N` on those of an extra segment, whose root bus is
//! `pcie.0` there). With extra segments, `functions` lists segment 0's, then each extra
//! segment's host bridge (by the segment's id) and root ports. Loading checks the format, refuses versions
//! newer than this build understands, and requires the same machine type (`pc-q35-7.2` when the
//! blob has none: it predates machine types) and the same functions as the running topology.

use serde::{Deserialize, Serialize};

use super::hierarchy::Hierarchy;
use super::segments::Segments;
use super::spec::EndpointSpec;
use super::DevFn;
use super::StateError;
use crate::devices::MachineType;
use crate::Result;

/// The `format` field of every blob.
pub const STATE_FORMAT: &str = "pcierc-state";
/// The blob version this build writes.
pub const STATE_VERSION: u32 = 1;

/// Function `id`'s part of a blob (`state`) as its model's state type `S`, refused unless it
/// was saved with the properties the function has now (`config`; `saved` picks them out of
/// `S`): a state is restored into the same topology only.
pub(crate) fn function_state<S, C>(
    id: &str,
    state: &serde_json::Value,
    config: &C,
    saved: fn(&S) -> &C,
) -> std::result::Result<S, StateError>
where
    S: serde::de::DeserializeOwned,
    C: PartialEq + std::fmt::Debug,
{
    let s = S::deserialize(state).map_err(|source| StateError::Function {
        id: id.to_string(),
        source,
    })?;
    if saved(&s) != config {
        return Err(StateError::PortProperties {
            id: id.to_string(),
            other: format!("{:?}", saved(&s)),
        });
    }
    Ok(s)
}

#[derive(Serialize, Deserialize)]
struct FunctionState {
    id: String,
    state: serde_json::Value,
}

/// A function another emulator serves (declared or hot-added), as saved.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointState {
    /// The extra segment it sits in (absent: segment 0, as in blobs from before segments).
    #[serde(default, skip_serializing_if = "is_zero")]
    segment: u16,
    id: String,
    driver: String,
    bus: String,
    addr: u8,
    owner: String,
    multifunction: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Blob {
    format: String,
    version: u32,
    /// The machine type the registers behave as (absent in blobs from before machine types:
    /// those are `pc-q35-7.2`).
    #[serde(default)]
    machine: MachineType,
    config_address: u32,
    /// The layout generation when saved (absent in blobs from before it was recorded).
    #[serde(default)]
    generation: u64,
    functions: Vec<FunctionState>,
    endpoints: Vec<EndpointState>,
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

/// Serialize one hierarchy's complete guest-visible state (a topology of one segment).
pub fn save(h: &Hierarchy) -> Vec<u8> {
    save_segments(&Segments::from(h.clone()))
}

/// [`save_value_segments`] of one hierarchy.
pub fn save_value(h: &Hierarchy) -> serde_json::Value {
    save_value_segments(&Segments::from(h.clone()))
}

/// [`load_segments`] into one hierarchy (a topology of one segment).
pub fn load(h: &mut Hierarchy, bytes: &[u8]) -> Result<()> {
    let mut all = Segments::from(h.clone());
    load_segments(&mut all, bytes)?;
    *h = all.primary().clone();
    Ok(())
}

/// Serialize the complete guest-visible state of every segment.
pub fn save_segments(h: &Segments) -> Vec<u8> {
    // Serializing plain data with string keys into memory cannot fail.
    serde_json::to_vec(&blob(h)).unwrap_or_default()
}

/// The state [`save`] serializes, as a JSON value (what the state file's journal compares and
/// patches); [`load_segments`] takes its serialization.
pub fn save_value_segments(h: &Segments) -> serde_json::Value {
    // Plain data with string keys always converts.
    serde_json::to_value(blob(h)).unwrap_or_default()
}

/// [`save_value_segments`] with an empty `functions` list: the rest of the state, cheap to take.
/// `functions[i].state` of [`save_value_segments`] is state `i` of
/// [`Segments::save_changed_functions`].
pub fn save_value_without_functions(h: &Segments) -> serde_json::Value {
    serde_json::to_value(blob_without_functions(h)).unwrap_or_default()
}

fn blob(h: &Segments) -> Blob {
    Blob {
        functions: h
            .save_functions()
            .into_iter()
            .map(|(id, state)| FunctionState { id, state })
            .collect(),
        ..blob_without_functions(h)
    }
}

fn blob_without_functions(h: &Segments) -> Blob {
    let q35 = h.primary();
    Blob {
        format: STATE_FORMAT.into(),
        version: STATE_VERSION,
        machine: q35.spec().machine,
        config_address: q35.config_address(),
        generation: h.generation(),
        functions: Vec::new(),
        endpoints: h
            .iter()
            .flat_map(|s| s.spec().endpoints.iter().map(|e| (s.spec().segment, e)))
            .map(|(segment, e)| EndpointState {
                segment,
                id: e.id.clone(),
                driver: e.driver.clone(),
                bus: e.bus.clone(),
                addr: e.addr.0,
                owner: e.owner.clone(),
                multifunction: e.multifunction,
            })
            .collect(),
    }
}

/// Restore a blob produced by [`save`]; the running state is unchanged on error.
pub fn load_segments(h: &mut Segments, bytes: &[u8]) -> Result<()> {
    #[derive(Deserialize)]
    struct Probe {
        format: String,
        version: u32,
    }
    let probe: Probe = serde_json::from_slice(bytes).map_err(StateError::NotABlob)?;
    if probe.format != STATE_FORMAT {
        return Err(StateError::Format(probe.format).into());
    }
    if probe.version != STATE_VERSION {
        return Err(StateError::Version(probe.version).into());
    }
    let blob: Blob = serde_json::from_slice(bytes).map_err(StateError::Malformed)?;
    let running = h.primary().spec().machine;
    if blob.machine != running {
        return Err(StateError::Machine {
            saved: blob.machine,
            running,
        }
        .into());
    }
    let functions: Vec<_> = blob
        .functions
        .into_iter()
        .map(|f| (f.id, f.state))
        .collect();
    let endpoints = blob
        .endpoints
        .into_iter()
        .map(|e| {
            (
                e.segment,
                EndpointSpec {
                    id: e.id,
                    driver: e.driver,
                    bus: e.bus,
                    addr: DevFn(e.addr),
                    owner: e.owner,
                    multifunction: e.multifunction,
                },
            )
        })
        .collect();
    h.restore_functions(blob.config_address, &functions, endpoints, blob.generation)
}
