//! Message framing shared by both ends: the fixed header, request codes, flags and status codes.
//!
//! See `docs/protocol.md` for the normative description. The header keeps vhost-user's first three
//! fields and flag bits (`vhost::vhost_user::message::VhostUserHeaderFlag`) and adds vfio-user's
//! request id and errno-style status, so every request gets a reply that names it.

use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserMsgValidator};
use vm_memory::ByteValued;

#[cfg(not(target_endian = "little"))]
compile_error!("pcierc's wire format is little-endian and is encoded in native order");

/// Protocol version carried in header flag bits 0-1.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest payload a peer may announce. A header announcing more closes the connection.
pub const MAX_PAYLOAD_SIZE: usize = 16 << 20;

/// Most file descriptors accepted with one message.
pub const MAX_FDS: usize = 8;

/// Fixed message header (24 bytes, little-endian).
///
/// `request`, `flags` and `size` have vhost-user's meaning; `status` is 0 in requests and an errno
/// value in replies ([`Status`]); `id` is chosen by the requester and echoed in the reply.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct MsgHeader {
    /// Request code ([`FrontendReq`] on the main socket, [`BackendReq`] on the backend channel).
    pub request: u32,
    /// Version (bits 0-1), REPLY (bit 2), NEED_REPLY (bit 3); other bits reserved, must be 0.
    pub flags: u32,
    /// Payload size in bytes, not counting the header.
    pub size: u32,
    /// 0 in requests; in replies 0 for success or a positive errno ([`Status`]).
    pub status: i32,
    /// Request id, echoed in the reply.
    pub id: u64,
}

// SAFETY: MsgHeader is repr(C), made only of integers, and has no padding (4+4+4+4+8 = 24).
unsafe impl ByteValued for MsgHeader {}

/// Size of [`MsgHeader`] on the wire.
pub const HEADER_SIZE: usize = std::mem::size_of::<MsgHeader>();

impl MsgHeader {
    /// A request header: current version, NEED_REPLY set (always, on the main socket), status 0.
    pub fn request(request: u32, size: u32, id: u64) -> Self {
        Self::notification(request, true, size, id)
    }

    /// A request header with NEED_REPLY set only if `need_reply` (backend channel messages).
    pub fn notification(request: u32, need_reply: bool, size: u32, id: u64) -> Self {
        let need = if need_reply { flags::NEED_REPLY } else { 0 };
        MsgHeader {
            request,
            flags: PROTOCOL_VERSION | need,
            size,
            status: 0,
            id,
        }
    }

    /// The reply to this request: same code and id, REPLY set, the given status and size.
    pub fn reply(&self, status: Status, size: u32) -> Self {
        MsgHeader {
            request: self.request,
            flags: PROTOCOL_VERSION | flags::REPLY,
            size,
            status: status.raw(),
            id: self.id,
        }
    }

    /// The version field (flag bits 0-1).
    pub fn version(&self) -> u32 {
        self.flags & flags::VERSION_MASK
    }

    /// Is the REPLY bit set?
    pub fn is_reply(&self) -> bool {
        self.flags & flags::REPLY != 0
    }

    /// Is the NEED_REPLY bit set?
    pub fn needs_reply(&self) -> bool {
        self.flags & flags::NEED_REPLY != 0
    }

    /// Payload size as a `usize`.
    pub fn payload_len(&self) -> usize {
        self.size as usize
    }
}

impl VhostUserMsgValidator for MsgHeader {
    /// Version, reserved flag bits and size only; whether REPLY may be set depends on the
    /// direction and is checked by the framing code.
    fn is_valid(&self) -> bool {
        self.version() == PROTOCOL_VERSION
            && self.flags & flags::RESERVED == 0
            && self.payload_len() <= MAX_PAYLOAD_SIZE
    }
}

/// Header flag bits, as vhost-user defines them.
pub mod flags {
    use super::VhostUserHeaderFlag;
    /// Version field mask (bits 0-1).
    pub const VERSION_MASK: u32 = VhostUserHeaderFlag::VERSION.bits();
    /// The message is a reply.
    pub const REPLY: u32 = VhostUserHeaderFlag::REPLY.bits();
    /// The sender wants a reply. Always set on main-socket requests; optional on the backend channel.
    pub const NEED_REPLY: u32 = VhostUserHeaderFlag::NEED_REPLY.bits();
    /// Reserved bits: a header with any of them set is malformed.
    pub const RESERVED: u32 = VhostUserHeaderFlag::RESERVED_BITS.bits();
}

/// Requests a frontend sends to the backend on the main socket.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum FrontendReq {
    /// Reply: [`crate::messages::U64`] with the backend's emulation features ([`crate::Features`]).
    GetFeatures = 1,
    /// Payload: [`crate::messages::U64`], the subset the frontend acknowledges.
    SetFeatures = 2,
    /// Reply: [`crate::messages::U64`] with the backend's protocol features ([`crate::ProtocolFeatures`]).
    GetProtocolFeatures = 3,
    /// Payload: [`crate::messages::U64`], the protocol features the frontend will use.
    SetProtocolFeatures = 4,
    /// Payload: [`crate::messages::FrontendInfo`]: the frontend's name and role.
    SetFrontendInfo = 5,
    /// No payload; one fd (a connected unix stream socket) for backend-initiated messages.
    SetBackendReqFd = 6,
    /// Reply: the encoded [`crate::topology::Topology`].
    GetTopology = 7,
    /// Payload and reply: [`crate::messages::ConfigAccess`] (the reply carries the data read).
    ConfigRead = 8,
    /// Payload: [`crate::messages::ConfigAccess`].
    ConfigWrite = 9,
    /// Payload and reply: [`crate::messages::GuestAccess`], a trapped port-I/O read.
    PioRead = 10,
    /// Payload: [`crate::messages::GuestAccess`], a trapped port-I/O write.
    PioWrite = 11,
    /// Payload and reply: [`crate::messages::GuestAccess`], a trapped MMIO read.
    MmioRead = 12,
    /// Payload: [`crate::messages::GuestAccess`], a trapped MMIO write.
    MmioWrite = 13,
    /// Reset the whole hierarchy to its power-on state (a platform reset).
    Reset = 14,
    /// Reply: the versioned device state blob.
    SaveState = 15,
    /// Payload: a blob produced by `SaveState`.
    LoadState = 16,
    /// Reply: [`crate::messages::ChipsetMemory`] (PAM and SMRAM routing of the MCH).
    GetChipsetMemory = 17,
    /// Payload: [`crate::messages::ErrorReport`]: an error a function this frontend owns detected
    /// (AER), signalled to the guest through the root port above it.
    ReportError = 18,
    /// Payload: [`crate::messages::FunctionAddress`]: a PME message from a function this
    /// frontend owns, signalled through the root port above it.
    RaisePme = 19,
    /// Payload: [`crate::messages::InterruptFd`] with one eventfd, or none to unregister: MSI-X
    /// `vector` of a function pcierc emulates is delivered by writing to that eventfd (KVM irqfd
    /// style) instead of an `Msi` notification; `MsiRoute` notifications keep its message
    /// current.
    SetInterruptFd = 20,
    /// Payload: [`crate::messages::FunctionClaim`]: the frontend serves a new function behind a
    /// root port (hot-added, or present from power-on with `COLDPLUG`).
    ClaimFunction = 21,
    /// Payload: [`crate::messages::FunctionRelease`]: take a function this frontend serves out
    /// (through the guest's hot-plug driver, or at once with `SURPRISE`).
    ReleaseFunction = 22,
    /// Empty payload and one sealed memfd: the backend keeps a copy of the configuration
    /// space of its functions there ([`crate::snapshot`]).
    SetConfigSnapshot = 23,
}

/// Largest payload a backend accepts for a request code on its main socket: only `LoadState`
/// carries a large blob; every other request has a small fixed payload (the largest,
/// `FunctionClaim`, is 104 bytes), and unknown codes get the same small limit.
pub fn max_request_payload(code: u32) -> usize {
    if code == FrontendReq::LoadState as u32 {
        MAX_PAYLOAD_SIZE
    } else {
        4096
    }
}

impl TryFrom<u32> for FrontendReq {
    type Error = u32;
    fn try_from(v: u32) -> Result<Self, u32> {
        use FrontendReq::*;
        Ok(match v {
            1 => GetFeatures,
            2 => SetFeatures,
            3 => GetProtocolFeatures,
            4 => SetProtocolFeatures,
            5 => SetFrontendInfo,
            6 => SetBackendReqFd,
            7 => GetTopology,
            8 => ConfigRead,
            9 => ConfigWrite,
            10 => PioRead,
            11 => PioWrite,
            12 => MmioRead,
            13 => MmioWrite,
            14 => Reset,
            15 => SaveState,
            16 => LoadState,
            17 => GetChipsetMemory,
            18 => ReportError,
            19 => RaisePme,
            20 => SetInterruptFd,
            21 => ClaimFunction,
            22 => ReleaseFunction,
            23 => SetConfigSnapshot,
            other => return Err(other),
        })
    }
}

/// Requests the backend sends to a frontend on the backend channel.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum BackendReq {
    /// Payload: [`crate::messages::LayoutChange`] followed by the encoded new topology.
    LayoutChanged = 1,
    /// Payload: [`crate::messages::ChipsetMemory`], the new PAM/SMRAM routing.
    ChipsetMemoryChanged = 2,
    /// Payload: [`crate::messages::MsiMessage`]: a function pcierc emulates sends an MSI/MSI-X
    /// message; the frontend injects it into the guest.
    Msi = 3,
    /// Payload: [`crate::messages::IntxLevel`]: the level of a function's INTx pin changed.
    Intx = 4,
    /// Payload: [`crate::topology::FunctionRecord`]: a function this frontend owns was hot-added.
    FunctionAdded = 5,
    /// Payload: [`crate::topology::FunctionRecord`]: a function this frontend owns is gone (the
    /// guest released the slot, or it was surprise-removed); stop serving it.
    FunctionRemoved = 6,
    /// Payload: [`crate::messages::MsiRoute`]: the message (address, data) and mask of an MSI-X
    /// vector this frontend registered an eventfd for, sent at registration and whenever the
    /// guest changes it, so the frontend can keep its interrupt routing (a KVM GSI route) right.
    MsiRoute = 7,
    /// Payload: [`crate::messages::FunctionReset`]: a function this frontend owns was reset
    /// (Secondary Bus Reset of the port above it, its slot powered off, platform reset); reset
    /// the device and the state kept for it.
    FunctionReset = 8,
}

impl TryFrom<u32> for BackendReq {
    type Error = u32;
    fn try_from(v: u32) -> Result<Self, u32> {
        match v {
            1 => Ok(BackendReq::LayoutChanged),
            2 => Ok(BackendReq::ChipsetMemoryChanged),
            3 => Ok(BackendReq::Msi),
            4 => Ok(BackendReq::Intx),
            5 => Ok(BackendReq::FunctionAdded),
            6 => Ok(BackendReq::FunctionRemoved),
            7 => Ok(BackendReq::MsiRoute),
            8 => Ok(BackendReq::FunctionReset),
            other => Err(other),
        }
    }
}

/// Reply status: 0 or a Linux errno value, so a C peer can use `strerror()`.
#[repr(i32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// I/O error inside the backend.
    Io = libc::EIO,
    /// Payload too large for this request.
    TooBig = libc::E2BIG,
    /// The resource is busy.
    Busy = libc::EBUSY,
    /// No such function or address is not claimed by the backend.
    NoDevice = libc::ENODEV,
    /// A field of the payload is invalid (width, alignment, reserved bits, size).
    Invalid = libc::EINVAL,
    /// Offset or address out of range.
    OutOfRange = libc::ERANGE,
    /// Unknown request code.
    NotSupported = libc::ENOSYS,
    /// The function is served by another emulator.
    Remote = libc::EREMOTE,
    /// Request out of sequence, or needs a protocol feature that was not negotiated.
    Protocol = libc::EPROTO,
    /// A payload that is malformed beyond a single bad field (e.g. a state blob that does not parse).
    BadMessage = libc::EBADMSG,
    /// The frontend may not do this (e.g. report an error for a function it does not own).
    Permission = libc::EACCES,
    /// The name is already taken (e.g. a function id already in the hierarchy).
    Exists = libc::EEXIST,
}

impl Status {
    /// Decode a status received from a peer. Unknown values are kept as `Err(raw)`.
    pub fn from_raw(v: i32) -> Result<Self, i32> {
        // Not `use Status::*`: its `Ok` variant would shadow `Result::Ok`.
        Ok(match v {
            0 => Status::Ok,
            libc::EIO => Status::Io,
            libc::E2BIG => Status::TooBig,
            libc::EBUSY => Status::Busy,
            libc::ENODEV => Status::NoDevice,
            libc::EINVAL => Status::Invalid,
            libc::ERANGE => Status::OutOfRange,
            libc::ENOSYS => Status::NotSupported,
            libc::EREMOTE => Status::Remote,
            libc::EPROTO => Status::Protocol,
            libc::EBADMSG => Status::BadMessage,
            libc::EACCES => Status::Permission,
            libc::EEXIST => Status::Exists,
            other => return Err(other),
        })
    }

    /// The raw value carried in [`MsgHeader::status`].
    pub fn raw(self) -> i32 {
        self as i32
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Status::Ok => "success",
            Status::Io => "backend I/O error",
            Status::TooBig => "payload too large",
            Status::Busy => "busy",
            Status::NoDevice => "no such function or unclaimed address",
            Status::Invalid => "invalid argument",
            Status::OutOfRange => "offset or address out of range",
            Status::NotSupported => "unknown request",
            Status::Remote => "function is served by another emulator",
            Status::Protocol => "out of sequence or feature not negotiated",
            Status::BadMessage => "malformed payload",
            Status::Permission => "not permitted for this frontend",
            Status::Exists => "already exists",
        };
        write!(f, "{s} (errno {})", *self as i32)
    }
}
