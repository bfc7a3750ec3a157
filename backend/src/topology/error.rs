//! Errors of the topology layer: a description that does not validate ([`TopologyError`]) and
//! saved state that does not restore ([`StateError`]). Each message names the offending item.

use thiserror::Error;

use super::addr::{DevFn, ParseError};
use super::spec::ROOT_BUS;

/// Why a topology (embedded, TOML or `--device`) is invalid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TopologyError {
    /// A machine type pcierc does not reproduce.
    #[error(transparent)]
    Machine(#[from] crate::devices::machine::UnknownMachine),
    /// The TOML file does not parse (or has unknown keys or wrong types).
    #[error(
        "{}{message}",
        location.map(|(line, column)| format!("line {line}, column {column}: ")).unwrap_or_default()
    )]
    Toml {
        /// Line and column (from 1) where the parser stopped, when it says.
        location: Option<(usize, usize)>,
        /// The parser's message.
        message: String,
    },
    /// A `--device` option that starts with a property other than `driver=`.
    #[error("'{opt}': the driver name comes first")]
    DriverNotFirst {
        /// The option as given.
        opt: String,
    },
    /// A `--device` option with an empty driver name.
    #[error("'{opt}': missing driver name")]
    MissingDriver {
        /// The option as given.
        opt: String,
    },
    /// A `--device` property without `=`.
    #[error("'{opt}': '{part}' is not key=value")]
    NotKeyValue {
        /// The option as given.
        opt: String,
        /// The offending property.
        part: String,
    },
    /// A `--device` property given twice.
    #[error("'{opt}': '{key}' given twice")]
    DuplicateProperty {
        /// The option as given.
        opt: String,
        /// The property.
        key: String,
    },
    /// A `--device` option without `id=`.
    #[error("'{opt}': missing id=")]
    MissingId {
        /// The option as given.
        opt: String,
    },
    /// A property the driver does not have.
    #[error("{id}: unknown property '{key}' for {driver}")]
    UnknownProperty {
        /// The function.
        id: String,
        /// The property.
        key: String,
        /// Its driver.
        driver: String,
    },
    /// A boolean property that is not on/off.
    #[error("{id}: {key}='{value}' is not on/off")]
    NotOnOff {
        /// The function.
        id: String,
        /// The property.
        key: String,
        /// The value given.
        value: String,
    },
    /// A required property is missing (`addr=` of a root port, `bus=` of a function).
    #[error("{id}: {property}= is required")]
    MissingProperty {
        /// The function.
        id: String,
        /// The property.
        property: &'static str,
    },
    /// A `[[root-port]]` or `[[switch-port]]` whose `driver` is not a port pcierc emulates.
    #[error(
        "{id}: '{driver}' is not a port pcierc emulates \
         (pcie-root-port, ioh3420, x3130-upstream, xio3130-downstream)"
    )]
    PortDriver {
        /// The port.
        id: String,
        /// The driver given.
        driver: String,
    },
    /// A port pcierc emulates declared as a `[[device]]` (or hot-plugged).
    #[error("{id}: declare ports as [[root-port]] or [[switch-port]] when pcierc starts")]
    PortAsDevice {
        /// The port.
        id: String,
    },
    /// A `pcie-pci-bridge` declared as a `[[device]]` (or hot-plugged).
    #[error("{id}: declare pcie-pci-bridges as [[bridge]] or --device when pcierc starts")]
    BridgeAsDevice {
        /// The bridge.
        id: String,
    },
    /// A `pxb-pcie` declared as a `[[device]]` (or hot-plugged: QEMU's expanders are not
    /// hot-pluggable either).
    #[error("{id}: declare pxb-pcie expanders as [[expander]] or --device when pcierc starts")]
    ExpanderAsDevice {
        /// The expander.
        id: String,
    },
    /// A function other than a bridge on an expander's root bus (QEMU 7.2's message).
    #[error("{id}: PCI: Only PCI/PCIe bridges can be plugged into pxb-pcie")]
    OnlyBridgesOnExpander {
        /// The function.
        id: String,
        /// The expander.
        expander: String,
    },
    /// A `pxb-pcie` on a bus other than `pcie.0` (QEMU 7.2's `pxb_register_bus()` message).
    #[error("{id}: PXB devices can be attached only to root bus")]
    ExpanderNotOnRootBus {
        /// The expander.
        id: String,
    },
    /// Two `pxb-pcie`s with one `bus_nr` (QEMU 7.2's `pxb_register_bus()` message).
    #[error("{id}: Bus {bus_nr} is already in use (by {other})")]
    ExpanderBusInUse {
        /// The expander declared later.
        id: String,
        /// The bus number.
        bus_nr: u8,
        /// The expander that has it.
        other: String,
    },
    /// A function at device 0 below a `pcie-pci-bridge`, which has no hot-plug slot there (QEMU
    /// 7.2's `shpc_device_get_slot()` message).
    #[error(
        "{id}: Unsupported PCI slot 0 for standard hotplug controller. \
         Valid slots are between 1 and 31."
    )]
    BridgeSlotZero {
        /// The function.
        id: String,
        /// The bridge.
        bridge: String,
    },
    /// A switch port or function placed where it cannot sit: an upstream port not at device 0
    /// below a root or downstream port, a downstream port not on an upstream port's bus, a
    /// function on a switch's internal bus, or a chain of parents that never reaches the root bus.
    #[error("{id}: cannot sit on bus '{bus}': {reason}")]
    Placement {
        /// The port or function.
        id: String,
        /// The bus (parent id) given.
        bus: String,
        /// Why not.
        reason: &'static str,
    },
    /// A root port on a bus other than the root bus or an expander's.
    #[error("{id}: root ports sit on {ROOT_BUS} or a pxb-pcie's bus, not '{bus}'")]
    PortBus {
        /// The port.
        id: String,
        /// The bus given.
        bus: String,
    },
    /// An `addr` that does not parse.
    #[error("{id}: {source}")]
    Address {
        /// The function.
        id: String,
        /// Why.
        #[source]
        source: ParseError,
    },
    /// A numeric or size property that does not parse.
    #[error("{id}: {property}: {source}")]
    Value {
        /// The function.
        id: String,
        /// The property.
        property: &'static str,
        /// Why.
        #[source]
        source: ParseError,
    },
    /// A numeric property beyond its range.
    #[error("{id}: {property}={value} is out of range (0-{max})")]
    OutOfRange {
        /// The function.
        id: String,
        /// The property.
        property: &'static str,
        /// The value given.
        value: u64,
        /// The largest allowed.
        max: u64,
    },
    /// A root port's reserve properties QEMU refuses (`pci_bridge_qemu_reserve_cap_init()`).
    #[error("{id}: PCI resource reserve cap: {reason}")]
    ResourceReserve {
        /// The port.
        id: String,
        /// QEMU's message.
        reason: &'static str,
    },
    /// A root port property value QEMU 7.2 refuses, with QEMU's message (`aer_log_max` above
    /// 128, `acpi-index` above 16383, a `romsize` that is not a power of two, an `x-speed` or
    /// `x-width` outside QEMU's lists, `failover_pair_id` on a port).
    #[error("{id}: {reason}")]
    PortProperty {
        /// The port.
        id: String,
        /// The property.
        property: &'static str,
        /// QEMU's message.
        reason: String,
    },
    /// A root port property QEMU accepts that pcierc cannot honour (an option ROM file).
    #[error("{id}: {property}: {reason}")]
    Unsupported {
        /// The port.
        id: String,
        /// The property.
        property: &'static str,
        /// Why pcierc cannot apply it.
        reason: &'static str,
    },
    /// Two root ports with one `acpi-index` (QEMU requires it unique).
    #[error("{id}: a PCI device with acpi-index = {index} already exist")]
    AcpiIndexInUse {
        /// The port.
        id: String,
        /// The index.
        index: u32,
    },
    /// A top-level `segment` other than 0 (the Q35 hierarchy is segment 0; more segments are
    /// `[[segment]]` tables).
    #[error("segment {0} is not supported: the Q35 hierarchy is segment 0 (declare more segments with [[segment]])")]
    Segment(u16),
    /// A `[[segment]]` numbered 0, or two with one number.
    #[error("{id}: segment {segment} is already the Q35 hierarchy's or another [[segment]]'s")]
    SegmentInUse {
        /// The segment's id.
        id: String,
        /// Its number.
        segment: u16,
    },
    /// A `[[segment]]` whose ECAM window is not 1 MiB-aligned, wraps, or is empty.
    #[error("{id}: ECAM window {base:#x} for buses 0-{end_bus}: {reason}")]
    SegmentWindow {
        /// The segment's id.
        id: String,
        /// The window's base.
        base: u64,
        /// Its last bus.
        end_bus: u8,
        /// What is wrong.
        reason: &'static str,
    },
    /// Two `[[segment]]`s' ECAM windows overlap.
    #[error("{id}: ECAM window overlaps {other}'s")]
    SegmentOverlap {
        /// The segment.
        id: String,
        /// The other one.
        other: String,
    },
    /// A `default-owner` that is not a valid emulator name.
    #[error("default-owner '{0}' is not a valid emulator name")]
    DefaultOwner(String),
    /// A function's `owner` that is not a valid emulator name.
    #[error("{id}: owner '{owner}' is not a valid emulator name")]
    Owner {
        /// The function.
        id: String,
        /// The owner given.
        owner: String,
    },
    /// An id that is not a valid name.
    #[error(
        "id '{0}' must start with a letter and hold at most 32 letters, digits, '-', '.', '_'"
    )]
    InvalidId(String),
    /// An id used twice.
    #[error("id '{0}' is used twice")]
    DuplicateId(String),
    /// A function at 00.0 of the root bus, the host bridge's address.
    #[error("{id}: 00.0 is the host bridge")]
    HostBridgeAddress {
        /// The function.
        id: String,
    },
    /// Two root ports at one address.
    #[error("{id}: address {addr} is already used by {other}")]
    PortAddressInUse {
        /// The port.
        id: String,
        /// The address.
        addr: DevFn,
        /// The port already there.
        other: String,
    },
    /// Two root ports with one chassis and slot number.
    #[error("{id}: chassis {chassis} slot {slot} is already used by {other}")]
    ChassisSlotInUse {
        /// The port.
        id: String,
        /// Chassis number.
        chassis: u8,
        /// Slot number.
        slot: u16,
        /// The port that has them.
        other: String,
    },
    /// A function or switch port on a bus that is neither the root bus nor a port with a slot
    /// (or no port at all).
    #[error(
        "{id}: bus '{bus}' is neither {ROOT_BUS} nor the id of a root or switch downstream port \
         or pcie-pci-bridge"
    )]
    UnknownBus {
        /// The function.
        id: String,
        /// The bus given.
        bus: String,
    },
    /// A function behind a root port at a device number other than 0 (PCIe Base 6.0 §2.2.6.2).
    #[error("{id}: behind root port {port} only device 0 exists")]
    DeviceBehindPort {
        /// The function.
        id: String,
        /// The port.
        port: String,
    },
    /// Two functions at one address of a bus.
    #[error("{id}: address {addr} on {bus} is already used by {other}")]
    AddressInUse {
        /// The function.
        id: String,
        /// The address.
        addr: DevFn,
        /// The bus.
        bus: String,
        /// The function already there.
        other: String,
    },
    /// A function other than 0 whose function 0 is not multifunction.
    #[error(
        "{id}: function {function} needs multifunction=on on {function0} (function 0 of slot {device:02x})"
    )]
    NeedsMultifunction {
        /// The function.
        id: String,
        /// Its function number.
        function: u8,
        /// Function 0 of its slot.
        function0: String,
        /// The slot's device number.
        device: u8,
    },
    /// A function other than 0 without a function 0.
    #[error("{id}: function {function} of slot {device:02x} on {bus} has no function 0")]
    NoFunctionZero {
        /// The function.
        id: String,
        /// Its function number.
        function: u8,
        /// The slot's device number.
        device: u8,
        /// The bus.
        bus: String,
    },
}

impl TopologyError {
    /// The error of parsing `text` as TOML, on one line (the parser's own rendering quotes the
    /// offending line with a caret under it).
    pub fn toml(text: &str, e: &toml::de::Error) -> Self {
        let location = e.span().and_then(|span| {
            let before = text.get(..span.start)?;
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            Some((line, column))
        });
        let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
        TopologyError::Toml { location, message }
    }
}

/// Why saved state (`LoadState`, the state file) cannot be restored.
#[derive(Debug, Error)]
pub enum StateError {
    /// Not JSON with a format and a version.
    #[error("not a pcierc state blob: {0}")]
    NotABlob(#[source] serde_json::Error),
    /// Another program's JSON.
    #[error("format '{0}' is not '{format}'", format = super::state::STATE_FORMAT)]
    Format(String),
    /// A version this pcierc does not read.
    #[error(
        "state version {0} is not supported (this pcierc reads version {version})",
        version = super::state::STATE_VERSION
    )]
    Version(u32),
    /// The right format and version, but the contents do not decode.
    #[error("{0}")]
    Malformed(#[source] serde_json::Error),
    /// The state was saved under another machine type: its registers have that machine's
    /// behaviour (masks included), so it is not loaded.
    #[error("state was saved under machine type {saved}, this pcierc runs {running}")]
    Machine {
        /// The machine type in the state (`pc-q35-7.2` for state from before it was recorded).
        saved: crate::devices::MachineType,
        /// The running machine type.
        running: crate::devices::MachineType,
    },
    /// The state is for other functions than this topology's.
    #[error("state is for functions {got:?}, this topology has {expected:?}")]
    Functions {
        /// The functions in the state.
        got: Vec<String>,
        /// The functions of the running hierarchy.
        expected: Vec<String>,
    },
    /// The functions other emulators serve, as saved, do not fit the topology.
    #[error("invalid topology: {0}")]
    Topology(#[source] TopologyError),
    /// A function's state does not decode.
    #[error("{id}: {source}")]
    Function {
        /// The function.
        id: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A port's state was saved with other properties.
    #[error("{id}: state is for a port with other properties: {other}")]
    PortProperties {
        /// The port.
        id: String,
        /// The properties in the state, as `Debug` prints them.
        other: String,
    },
    /// A function's registers do not restore (the configuration-space engine's reason).
    #[error("{id}: {source}")]
    Registers {
        /// The function.
        id: String,
        /// Why.
        #[source]
        source: pcierc_config_space::StateError,
    },
}
