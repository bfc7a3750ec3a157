//! pcierc's socket protocol: framing, payloads, and both ends.
//!
//! - [`wire`], [`messages`], [`topology`]: the header, request and status codes, payloads; the
//!   code enums are declared with [`wire_enum!`] ([`codes`]). [`layout_delta`]: a topology
//!   change as what changed (`LAYOUT_DELTA`).
//! - [`frame`]: header validation, the non-blocking [`FrameReader`] / [`FrameWriter`], blocking
//!   send/receive with timeouts; [`error`]: the [`Error`] type and its classification.
//! - Frontend side: [`Frontend`] (blocking client with the handshake), [`BackendChannel`]
//!   (receives [`Notification`]s) and [`ResumableFrontend`] (reconnects and re-sends its setup).
//! - Backend side: [`BackendHandler`] (what the service implements), [`Session`] (per-connection
//!   checks and dispatch), [`Connection`] (a `Session` over a non-blocking unix socket) and
//!   [`BackendChannelSender`].
//!
//! The normative specification is `docs/protocol.md` in the repository.
//!
//! ```no_run
//! use pcierc_protocol::{Frontend, FrontendOptions};
//!
//! let mut fe = Frontend::connect("/run/pcierc.sock", FrontendOptions::tool("probe"))?;
//! let id = fe.config_read(0, 0, 0, 0, 4)?; // vendor and device id of 00:00.0
//! println!("{id:#010x}, {} functions", fe.topology()?.functions.len());
//! # Ok::<(), pcierc_protocol::Error>(())
//! ```
#![deny(missing_docs)]

pub mod backend;
pub mod channel;
pub mod codes;
pub mod connection;
pub mod error;
pub mod frame;
pub mod frontend;
pub mod handler;
pub mod layout_delta;
pub mod messages;
pub mod resume;
pub mod snapshot;
pub mod topology;
pub mod wire;

pub use backend::{Reply, Session, Stage, PIO_SPACE_SIZE};
pub use channel::{BackendChannel, BackendChannelSender, Notification};
pub use codes::UnknownCode;
pub use connection::Connection;
pub use error::{Error, Result};
pub use frame::{
    decode_payload, encode, read_obj, recv_message, send_message, validate_header, FrameReader,
    FrameWriter, Message, MessageKind, DEFAULT_WRITE_LIMIT,
};
pub use frontend::{Frontend, FrontendOptions, DEFAULT_TIMEOUT};
pub use handler::{BackendHandler, ConfigAddress, ConnectionId, FrontendIdentity};
pub use layout_delta::{FunctionUpdate, LayoutDelta, LayoutDeltaHeader, LayoutNotice};
pub use messages::*;
pub use resume::{ResumableFrontend, Resumed};
pub use topology::*;
pub use wire::*;

bitflags::bitflags! {
    /// Emulation features (`GetFeatures` / `SetFeatures`).
    #[derive(Copy, Clone, Debug, PartialEq, Eq)]
    pub struct Features: u64 {
        /// A Q35 MCH host bridge at 00:00.0.
        const Q35_HOST_BRIDGE = 1 << 0;
        /// ECAM through the MCH's PCIEXBAR.
        const ECAM = 1 << 1;
        /// PCIe root ports compatible with QEMU's `pcie-root-port`.
        const ROOT_PORTS = 1 << 2;
        /// Configuration mechanism #1 at 0xCF8/0xCFC.
        const CONFIG_MECHANISM_1 = 1 << 3;
    }
}

bitflags::bitflags! {
    /// Protocol features (`GetProtocolFeatures` / `SetProtocolFeatures`).
    #[derive(Copy, Clone, Debug, PartialEq, Eq)]
    pub struct ProtocolFeatures: u64 {
        /// The frontend may send a backend channel (`SetBackendReqFd`).
        const BACKEND_CHANNEL = 1 << 0;
        /// `LayoutChanged` / `ChipsetMemoryChanged` on the backend channel.
        const LAYOUT_EVENTS = 1 << 1;
        /// `SaveState` / `LoadState`.
        const DEVICE_STATE = 1 << 2;
        /// Raw trapped accesses (`PioRead`..`MmioWrite`).
        const GUEST_ACCESS = 1 << 3;
        /// Interrupts of the backend's functions (`Msi`, `Intx`) on the backend channel.
        const INTERRUPTS = 1 << 4;
        /// `FunctionAdded` / `FunctionRemoved` on the backend channel for functions this
        /// frontend owns (hot-add, completed hot-remove, surprise removal).
        const HOTPLUG_EVENTS = 1 << 5;
        /// `ReportError` / `RaisePme` for functions this frontend owns.
        const ERROR_REPORTING = 1 << 6;
        /// `ClaimFunction` / `ReleaseFunction`: the frontend plugs functions it serves into
        /// the hierarchy and takes them out.
        const OWNERSHIP = 1 << 7;
        /// `SetConfigSnapshot`: configuration reads served from shared memory (the fast path;
        /// leave it out of the wanted features to turn it off).
        const CONFIG_SNAPSHOT = 1 << 8;
        /// `FunctionReset` on the backend channel for functions this frontend owns (Secondary
        /// Bus Reset, slot power-off, platform reset).
        const RESET_EVENTS = 1 << 9;
        /// The frontend latches CONFIG_ADDRESS (0xCF8) itself and sends CONFIG_DATA accesses
        /// as the `ConfigRead` / `ConfigWrite` they select; the backend's register stays for
        /// frontends that did not negotiate it. Not asked for by default
        /// ([`FrontendOptions::new`](crate::FrontendOptions::new)).
        const CONFIG_ADDRESS_LATCH = 1 << 10;
        /// Layout changes may come as `LayoutDelta` (the function records, ECAM windows and
        /// ranges that changed since the previous layout notification on the channel) instead
        /// of `LayoutChanged` with the whole topology. [`BackendChannel`] applies them and
        /// hands out whole topologies either way.
        const LAYOUT_DELTA = 1 << 11;
        /// Host bridge records may carry a proximity domain (`proximity`: a `pxb-pcie`
        /// expander's `numa_node` + 1, for the VMM's `_PXM`); without it those bytes stay 0
        /// (reserved), as peers of the first version require.
        const PROXIMITY = 1 << 12;
    }
}

bitflags::bitflags! {
    /// What a `LayoutChanged` notification reports.
    #[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
    pub struct LayoutChanges: u32 {
        /// ECAM windows moved, resized, enabled or disabled (PCIEXBAR).
        const ECAM = 1 << 0;
        /// A port's primary/secondary/subordinate bus numbers changed.
        const BUS_NUMBERS = 1 << 1;
        /// A port's I/O or memory windows changed (or their decode was enabled/disabled).
        const WINDOWS = 1 << 2;
        /// A BAR of a function pcierc emulates moved or its decode changed.
        const BARS = 1 << 3;
        /// Functions appeared or left.
        const FUNCTIONS = 1 << 4;
    }
}
