//! What a backend service implements: [`BackendHandler`], called with `&mut self` by
//! [`crate::Session::handle`] (through [`crate::Connection`] or directly).
//!
//! A service that serves connections from several threads shares its handler behind a lock and
//! lets the connection take it only when a request needs it
//! ([`crate::Connection::process_ready_with`], [`crate::Connection::serve_shared`]: a peer that
//! never sends a well-formed request never takes the lock), or gives each thread a handler of
//! its own that shares the state it must. pcierc serves each negotiated frontend on a thread of
//! its own and the handshakes on its event loop, all sharing one handler.

use std::fs::File;

use crate::channel::BackendChannelSender;
use vmm_sys_util::eventfd::EventFd;

use crate::messages::{
    ChipsetMemory, ErrorReport, FrontendRole, FunctionAddress, FunctionClaim, FunctionRelease,
    InterruptFd,
};
use crate::topology::Topology;
use crate::wire::Status;
use crate::{Features, ProtocolFeatures};

/// Identifies one frontend connection for the handler's lifecycle hooks.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

impl std::fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// Who a frontend said it is (`SetFrontendInfo`), validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendIdentity {
    /// Name: 1 to 32 printable ASCII characters.
    pub name: String,
    /// Role.
    pub role: FrontendRole,
}

/// A configuration-space address whose fields were validated (offset < 4096 and aligned to the
/// access width).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConfigAddress {
    /// PCI segment group.
    pub segment: u16,
    /// Bus number.
    pub bus: u8,
    /// Device (bits 7-3) and function (bits 2-0).
    pub devfn: u8,
    /// Register offset.
    pub offset: u16,
}

/// The backend service, called by [`crate::Session`] with requests that already passed every
/// protocol check: widths are valid, offsets aligned and in range, values fit their width, and
/// the needed protocol features were negotiated. Errors are reply statuses (see [`Status`]).
pub trait BackendHandler {
    /// Emulation features offered in `GetFeatures`.
    fn features(&mut self) -> Features;
    /// Protocol features offered in `GetProtocolFeatures` (default: all this crate implements).
    fn protocol_features(&mut self) -> ProtocolFeatures {
        ProtocolFeatures::all()
    }
    /// The current topology (`GetTopology`).
    fn topology(&mut self) -> Topology;
    /// Configuration read of `width` (1, 2, 4) bytes.
    fn config_read(&mut self, addr: ConfigAddress, width: u8) -> Result<u32, Status>;
    /// Configuration write of `width` (1, 2, 4) bytes.
    fn config_write(&mut self, addr: ConfigAddress, width: u8, value: u32) -> Result<(), Status>;
    /// Trapped port-I/O read (`width` 1, 2 or 4; `port + width <= 0x10000`).
    fn pio_read(&mut self, port: u64, width: u8) -> Result<u64, Status>;
    /// Trapped port-I/O write.
    fn pio_write(&mut self, port: u64, width: u8, value: u64) -> Result<(), Status>;
    /// Trapped MMIO read (`width` 1, 2, 4 or 8; not necessarily aligned).
    fn mmio_read(&mut self, addr: u64, width: u8) -> Result<u64, Status>;
    /// Trapped MMIO write.
    fn mmio_write(&mut self, addr: u64, width: u8, value: u64) -> Result<(), Status>;
    /// Platform reset of the whole hierarchy.
    fn reset(&mut self) -> Result<(), Status>;
    /// The device state blob (starts with the backend's magic and version).
    fn save_state(&mut self) -> Result<Vec<u8>, Status>;
    /// Restore a blob from `save_state` (`BadMessage` if it does not parse).
    fn load_state(&mut self, blob: &[u8]) -> Result<(), Status>;
    /// The MCH's PAM/SMRAM routing.
    fn chipset_memory(&mut self) -> ChipsetMemory;
    /// An error a function owned by frontend `conn` detected (`ReportError`; the payload passed
    /// `is_valid()`). Default: not supported.
    fn report_error(&mut self, _conn: ConnectionId, _report: &ErrorReport) -> Result<(), Status> {
        Err(Status::NotSupported)
    }
    /// A PME from a function owned by frontend `conn` (`RaisePme`). Default: not supported.
    fn raise_pme(&mut self, _conn: ConnectionId, _from: &FunctionAddress) -> Result<(), Status> {
        Err(Status::NotSupported)
    }
    /// Frontend `conn` wants MSI-X `req.vector` of a function delivered by writing to `fd`
    /// (an eventfd, checked) rather than as `Msi` notifications, or (`fd` is `None`,
    /// [`InterruptFd::UNREGISTER`]) no longer. Default: not supported.
    fn set_interrupt_fd(
        &mut self,
        _conn: ConnectionId,
        _req: &InterruptFd,
        _fd: Option<EventFd>,
    ) -> Result<(), Status> {
        Err(Status::NotSupported)
    }
    /// Frontend `conn` serves a new function (`ClaimFunction`; payload validated). Default: not
    /// supported.
    fn claim_function(
        &mut self,
        _conn: ConnectionId,
        _claim: &FunctionClaim,
    ) -> Result<(), Status> {
        Err(Status::NotSupported)
    }
    /// Frontend `conn` takes a function it serves out (`ReleaseFunction`). Default: not
    /// supported.
    fn release_function(
        &mut self,
        _conn: ConnectionId,
        _release: &FunctionRelease,
    ) -> Result<(), Status> {
        Err(Status::NotSupported)
    }
    /// Frontend `conn` wants configuration reads served from `file` (`SetConfigSnapshot`; a
    /// memfd, not yet checked: see [`crate::snapshot::SnapshotWriter::new`]). Default: not
    /// supported.
    fn set_config_snapshot(&mut self, _conn: ConnectionId, _file: File) -> Result<(), Status> {
        Err(Status::NotSupported)
    }
    /// A frontend identified itself (once per connection).
    fn frontend_identified(&mut self, _conn: ConnectionId, _info: &FrontendIdentity) {}
    /// A frontend sent its backend channel; a later call for the same connection replaces it.
    fn backend_channel(&mut self, _conn: ConnectionId, _sender: BackendChannelSender) {}
    /// The connection is gone: forget its channel and identity. Called once per connection, and
    /// only for one whose requests reached the handler (a well-formed header was received,
    /// [`crate::Session::reached_handler`]): a peer that sent nothing or only garbage was never
    /// seen by the handler and leaves without a call.
    fn disconnected(&mut self, _conn: ConnectionId) {}
    /// A request from `conn` was answered with `status` (every request [`crate::Session::handle`]
    /// replies to, refused ones included; `request` is the raw code, which may be unknown).
    /// For accounting; default: nothing.
    fn request_done(&mut self, _conn: ConnectionId, _request: u32, _status: Status) {}
}
