//! Message framing shared by both ends: the fixed header, request codes, flags and status codes.
//!
//! See `docs/protocol.md` for the normative description. The header keeps vhost-user's first three
//! fields and flag bits (`vhost::vhost_user::message::VhostUserHeaderFlag`) and adds vfio-user's
//! request id and errno-style status, so every request gets a reply that names it.

use vhost::vhost_user::message::VhostUserHeaderFlag;
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
/// A received header is checked in one place, [`crate::frame::validate_header`].
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

crate::wire_enum! {
    /// Requests a frontend sends to the backend on the main socket.
    pub enum FrontendReq: u32 {
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

crate::wire_enum! {
    /// Requests the backend sends to a frontend on the backend channel.
    pub enum BackendReq: u32 {
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
        /// Payload: [`crate::messages::LayoutChange`] followed by an encoded
        /// [`crate::layout_delta::LayoutDelta`]: what changed since the previous layout
        /// notification on this channel (only with `LAYOUT_DELTA`).
        LayoutDelta = 9,
    }
}

crate::wire_enum! {
    /// Reply status: 0 or a Linux errno value, so a C peer can use `strerror()`. Decode a received
    /// one with `Status::try_from(header.status)` (unknown values are kept in the error).
    pub enum Status: i32 {
        /// Success.
        Ok = 0 => ("OK", "success"),
        /// I/O error inside the backend.
        Io = libc::EIO => ("EIO", "backend I/O error"),
        /// Payload too large for this request.
        TooBig = libc::E2BIG => ("E2BIG", "payload too large"),
        /// The resource is busy.
        Busy = libc::EBUSY => ("EBUSY", "busy"),
        /// No such function or address is not claimed by the backend.
        NoDevice = libc::ENODEV => ("ENODEV", "no such function or unclaimed address"),
        /// A field of the payload is invalid (width, alignment, reserved bits, size).
        Invalid = libc::EINVAL => ("EINVAL", "invalid argument"),
        /// Offset or address out of range.
        OutOfRange = libc::ERANGE => ("ERANGE", "offset or address out of range"),
        /// Unknown request code.
        NotSupported = libc::ENOSYS => ("ENOSYS", "unknown request"),
        /// The function is served by another emulator.
        Remote = libc::EREMOTE => ("EREMOTE", "function is served by another emulator"),
        /// Request out of sequence, or needs a protocol feature that was not negotiated.
        Protocol = libc::EPROTO => ("EPROTO", "out of sequence or feature not negotiated"),
        /// A payload that is malformed beyond a single bad field (e.g. a state blob that does not parse).
        BadMessage = libc::EBADMSG => ("EBADMSG", "malformed payload"),
        /// The frontend may not do this (e.g. report an error for a function it does not own).
        Permission = libc::EACCES => ("EACCES", "not permitted for this frontend"),
        /// The name is already taken (e.g. a function id already in the hierarchy).
        Exists = libc::EEXIST => ("EEXIST", "already exists"),
    }
}
