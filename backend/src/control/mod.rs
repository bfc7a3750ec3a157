//! The management plane: a QMP-compatible JSON control socket (`pcierc --control-socket PATH`),
//! so QEMU's tools and libraries (the `qemu.qmp` Python package, `socat` scripts, libvirt-style
//! clients) drive pcierc unchanged.
//!
//! Pure state machines, I/O at the edge: [`qmp::QmpSession`] turns the bytes a client sends into
//! reply lines, calling [`ControlOps`] for everything that touches the hierarchy; the service's
//! event loop owns the sockets and implements [`ControlOps`]. [`query_pci`] builds QEMU-shaped
//! `query-pci` results, [`aer`] resolves QEMU's AER error names, [`stream`] splits the byte
//! stream into JSON values as QEMU's streamer does.

pub mod aer;
mod args;
pub mod qmp;
pub mod query_pci;
pub mod stream;

use serde::{Serialize, Serializer};

pub use aer::AerInject;
pub use qmp::{event, QmpSession};

use crate::topology::DevFn;

/// A command's failure, as the QMP error `class` and `desc` it becomes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// `GenericError` with this description (QEMU's class for nearly every failure).
    #[error("{0}")]
    Generic(String),
    /// `DeviceNotFound`: no device has this id (`Device 'ID' not found`, as QEMU's `device_del`).
    #[error("Device '{0}' not found")]
    DeviceNotFound(String),
}

impl ControlError {
    /// The QMP error class.
    pub fn class(&self) -> &'static str {
        match self {
            ControlError::Generic(_) => "GenericError",
            ControlError::DeviceNotFound(_) => "DeviceNotFound",
        }
    }
}

impl From<String> for ControlError {
    fn from(desc: String) -> Self {
        ControlError::Generic(desc)
    }
}

impl From<&str> for ControlError {
    fn from(desc: &str) -> Self {
        ControlError::Generic(desc.to_string())
    }
}

/// What the service does for the control plane. Arguments arrive validated (types, ranges,
/// well-formed ids and addresses); whether they make sense for the hierarchy is the service's
/// call.
pub trait ControlOps {
    /// QEMU's `query-pci` result: an array of `PciInfo` (bus 0, bridges' buses nested). Build it
    /// with [`query_pci::from_hierarchy`] and [`query_pci::to_json`].
    fn query_pci(&mut self) -> serde_json::Value;
    /// `device_add`: plug a function another emulator serves into a root port's slot.
    fn device_add(&mut self, req: &DeviceAdd) -> Result<(), ControlError>;
    /// `device_del`: start the removal (attention button). `Ok` means accepted; `DEVICE_DELETED`
    /// follows as an event once the guest has powered the slot off.
    fn device_del(&mut self, id: &str) -> Result<(), ControlError>;
    /// `pcie-aer-inject-error` (QEMU's HMP `pcie_aer_inject_error` semantics): the target is a
    /// root or switch port id, a `pcie-pci-bridge` id, or a device id.
    fn inject_aer(&mut self, req: &AerInject) -> Result<(), ControlError>;
    /// `x-pcierc-inject-pme`: a PME message from the device `id` behind a port.
    fn inject_pme(&mut self, id: &str) -> Result<(), ControlError>;
    /// `x-pcierc-surprise-remove`: the device `id` leaves its slot at once (surprise removal).
    fn surprise_remove(&mut self, id: &str) -> Result<(), ControlError>;
    /// `x-pcierc-query-slots`: every root port's slot and the functions plugged into it.
    fn query_slots(&mut self) -> Vec<SlotInfo>;
    /// `query-status`: the run state (`"running"`; QEMU's RunState names).
    fn status(&mut self) -> String;
    /// `quit`: exit after the reply is sent (see [`QmpSession::quit_requested`]).
    fn quit(&mut self);
    /// `x-pcierc-query-stats`: the operator's counters (`docs/control-socket.md`). Default:
    /// none (an empty object).
    fn query_stats(&mut self) -> serde_json::Value {
        serde_json::json!({})
    }
    /// A command was answered, successfully (`ok`) or with an error. For accounting; default:
    /// nothing.
    fn command_done(&mut self, _ok: bool) {}
}

/// `device_add` arguments (QEMU's shape plus pcierc's `owner`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAdd {
    /// The QEMU driver name the owning emulator instantiates (informational to pcierc).
    pub driver: String,
    /// The new function's id: a letter first, then letters, digits, `-`, `.`, `_`; at most 32.
    pub id: String,
    /// The root port id (or `pcie.0`) it plugs into.
    pub bus: String,
    /// Device/function on that bus (`addr`, QEMU syntax `SLOT[.FN]`); `None` is 00.0.
    pub addr: Option<DevFn>,
    /// The emulator that serves it; `None` is the topology's default owner.
    pub owner: Option<String>,
    /// Header type bit 7 (`multifunction`), for function 0 of a multifunction device.
    pub multifunction: bool,
}

/// A root port's hot-plug slot, as `x-pcierc-query-slots` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotInfo {
    /// The root port's id.
    pub port: String,
    /// Chassis number (the port's `chassis` property).
    pub chassis: u8,
    /// Physical slot number (Slot Capabilities; the port's `slot` property).
    pub slot: u16,
    /// The port's secondary bus number (0 until the guest enumerates).
    pub bus: u8,
    /// Slot power on (Slot Control's Power Controller Control).
    pub powered: bool,
    /// The functions plugged into the slot, by devfn.
    pub devices: Vec<SlotDevice>,
}

/// A function in a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotDevice {
    /// Its id.
    pub id: String,
    /// Its QEMU driver name.
    pub driver: String,
    /// The emulator that serves it.
    pub owner: String,
    /// Device/function on the port's secondary bus, as `"00.0"`.
    #[serde(serialize_with = "devfn_string")]
    pub addr: DevFn,
    /// Where it is in its hot-plug life.
    pub state: DeviceState,
}

/// A plugged function's hot-plug state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceState {
    /// Plugged and not being removed.
    Present,
    /// `device_del` accepted; waiting for the guest to power the slot off (then
    /// `DEVICE_DELETED`).
    UnplugPending,
}

fn devfn_string<S: Serializer>(d: &DevFn, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(d)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn errors_know_their_class() {
        let e: ControlError = "no".into();
        assert_eq!((e.class(), e.to_string()), ("GenericError", "no".into()));
        let e = ControlError::DeviceNotFound("n1".into());
        assert_eq!(
            (e.class(), e.to_string()),
            ("DeviceNotFound", "Device 'n1' not found".into())
        );
    }

    #[test]
    fn slot_info_serializes_in_kebab_case() {
        let s = SlotInfo {
            port: "rp1".into(),
            chassis: 1,
            slot: 1,
            bus: 0,
            powered: true,
            devices: vec![SlotDevice {
                id: "net0".into(),
                driver: "virtio-net-pci".into(),
                owner: "vmm".into(),
                addr: DevFn(1),
                state: DeviceState::UnplugPending,
            }],
        };
        assert_eq!(
            serde_json::to_value(&s).ok(),
            Some(
                json!({"port": "rp1", "chassis": 1, "slot": 1, "bus": 0, "powered": true,
                "devices": [{"id": "net0", "driver": "virtio-net-pci", "owner": "vmm",
                             "addr": "00.1", "state": "unplug-pending"}]})
            )
        );
    }
}
