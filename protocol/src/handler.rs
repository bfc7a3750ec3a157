//! What a backend service implements: [`BackendHandler`] (`&mut self`) and its shared twin
//! [`SharedBackendHandler`] (`&self`), as vhost pairs `VhostUserBackendMut`/`VhostUserBackend`.
//!
//! A single-threaded service passes its handler to [`crate::Session::handle`] directly. A service
//! that serves connections from several threads wraps it in a `Mutex` (which is a
//! [`SharedBackendHandler`]) and passes `&mut &mutex` or `&mut arc.clone()` (both are
//! [`BackendHandler`]s that lock for each call).

use std::fs::File;
use std::sync::{Arc, Mutex, PoisonError};

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
    /// The connection is gone: forget its channel and identity.
    fn disconnected(&mut self, _conn: ConnectionId) {}
    /// A request from `conn` was answered with `status` (every request [`crate::Session::handle`]
    /// replies to, refused ones included; `request` is the raw code, which may be unknown).
    /// For accounting; default: nothing.
    fn request_done(&mut self, _conn: ConnectionId, _request: u32, _status: Status) {}
}

/// The `&self` twin of [`BackendHandler`], for handlers shared between threads.
#[allow(missing_docs)] // Each method is documented on its `BackendHandler` twin.
pub trait SharedBackendHandler {
    fn features(&self) -> Features;
    fn protocol_features(&self) -> ProtocolFeatures;
    fn topology(&self) -> Topology;
    fn config_read(&self, addr: ConfigAddress, width: u8) -> Result<u32, Status>;
    fn config_write(&self, addr: ConfigAddress, width: u8, value: u32) -> Result<(), Status>;
    fn pio_read(&self, port: u64, width: u8) -> Result<u64, Status>;
    fn pio_write(&self, port: u64, width: u8, value: u64) -> Result<(), Status>;
    fn mmio_read(&self, addr: u64, width: u8) -> Result<u64, Status>;
    fn mmio_write(&self, addr: u64, width: u8, value: u64) -> Result<(), Status>;
    fn reset(&self) -> Result<(), Status>;
    fn save_state(&self) -> Result<Vec<u8>, Status>;
    fn load_state(&self, blob: &[u8]) -> Result<(), Status>;
    fn chipset_memory(&self) -> ChipsetMemory;
    fn report_error(&self, conn: ConnectionId, report: &ErrorReport) -> Result<(), Status>;
    fn raise_pme(&self, conn: ConnectionId, from: &FunctionAddress) -> Result<(), Status>;
    fn set_interrupt_fd(
        &self,
        conn: ConnectionId,
        req: &InterruptFd,
        fd: Option<EventFd>,
    ) -> Result<(), Status>;
    fn claim_function(&self, conn: ConnectionId, claim: &FunctionClaim) -> Result<(), Status>;
    fn release_function(&self, conn: ConnectionId, release: &FunctionRelease)
        -> Result<(), Status>;
    fn set_config_snapshot(&self, conn: ConnectionId, file: File) -> Result<(), Status>;
    fn frontend_identified(&self, conn: ConnectionId, info: &FrontendIdentity);
    fn backend_channel(&self, conn: ConnectionId, sender: BackendChannelSender);
    fn disconnected(&self, conn: ConnectionId);
    fn request_done(&self, conn: ConnectionId, request: u32, status: Status);
}

/// The handler methods, listed once and expanded for each forwarding impl.
macro_rules! forward_all {
    ($self_:ident, $recv:ty, $target:expr) => {
        fn features($self_: $recv) -> Features {
            $target.features()
        }
        fn protocol_features($self_: $recv) -> ProtocolFeatures {
            $target.protocol_features()
        }
        fn topology($self_: $recv) -> Topology {
            $target.topology()
        }
        fn config_read($self_: $recv, addr: ConfigAddress, width: u8) -> Result<u32, Status> {
            $target.config_read(addr, width)
        }
        fn config_write(
            $self_: $recv,
            addr: ConfigAddress,
            width: u8,
            value: u32,
        ) -> Result<(), Status> {
            $target.config_write(addr, width, value)
        }
        fn pio_read($self_: $recv, port: u64, width: u8) -> Result<u64, Status> {
            $target.pio_read(port, width)
        }
        fn pio_write($self_: $recv, port: u64, width: u8, value: u64) -> Result<(), Status> {
            $target.pio_write(port, width, value)
        }
        fn mmio_read($self_: $recv, addr: u64, width: u8) -> Result<u64, Status> {
            $target.mmio_read(addr, width)
        }
        fn mmio_write($self_: $recv, addr: u64, width: u8, value: u64) -> Result<(), Status> {
            $target.mmio_write(addr, width, value)
        }
        fn reset($self_: $recv) -> Result<(), Status> {
            $target.reset()
        }
        fn save_state($self_: $recv) -> Result<Vec<u8>, Status> {
            $target.save_state()
        }
        fn load_state($self_: $recv, blob: &[u8]) -> Result<(), Status> {
            $target.load_state(blob)
        }
        fn chipset_memory($self_: $recv) -> ChipsetMemory {
            $target.chipset_memory()
        }
        fn report_error(
            $self_: $recv,
            conn: ConnectionId,
            report: &ErrorReport,
        ) -> Result<(), Status> {
            $target.report_error(conn, report)
        }
        fn raise_pme(
            $self_: $recv,
            conn: ConnectionId,
            from: &FunctionAddress,
        ) -> Result<(), Status> {
            $target.raise_pme(conn, from)
        }
        fn set_interrupt_fd(
            $self_: $recv,
            conn: ConnectionId,
            req: &InterruptFd,
            fd: Option<EventFd>,
        ) -> Result<(), Status> {
            $target.set_interrupt_fd(conn, req, fd)
        }
        fn claim_function(
            $self_: $recv,
            conn: ConnectionId,
            claim: &FunctionClaim,
        ) -> Result<(), Status> {
            $target.claim_function(conn, claim)
        }
        fn release_function(
            $self_: $recv,
            conn: ConnectionId,
            release: &FunctionRelease,
        ) -> Result<(), Status> {
            $target.release_function(conn, release)
        }
        fn set_config_snapshot(
            $self_: $recv,
            conn: ConnectionId,
            file: File,
        ) -> Result<(), Status> {
            $target.set_config_snapshot(conn, file)
        }
        fn frontend_identified($self_: $recv, conn: ConnectionId, info: &FrontendIdentity) {
            $target.frontend_identified(conn, info)
        }
        fn backend_channel($self_: $recv, conn: ConnectionId, sender: BackendChannelSender) {
            $target.backend_channel(conn, sender)
        }
        fn disconnected($self_: $recv, conn: ConnectionId) {
            $target.disconnected(conn)
        }
        fn request_done($self_: $recv, conn: ConnectionId, request: u32, status: Status) {
            $target.request_done(conn, request, status)
        }
    };
}

/// A `Mutex` shares a [`BackendHandler`]: each call locks it. A poisoned lock (a handler call
/// panicked on another thread) is taken over rather than propagated.
impl<T: BackendHandler> SharedBackendHandler for Mutex<T> {
    forward_all!(
        self,
        &Self,
        self.lock().unwrap_or_else(PoisonError::into_inner)
    );
}

/// A reference to a shared handler is a handler.
impl<T: SharedBackendHandler + ?Sized> BackendHandler for &T {
    forward_all!(self, &mut Self, (**self));
}

/// An `Arc` of a shared handler is a handler.
impl<T: SharedBackendHandler + ?Sized> BackendHandler for Arc<T> {
    forward_all!(self, &mut Self, (**self));
}
