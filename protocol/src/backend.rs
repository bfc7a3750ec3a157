//! The backend side of one connection, independent of the transport: [`Session`] checks each
//! request against the handshake state and the payload rules of `docs/protocol.md`, calls the
//! [`BackendHandler`] and builds the [`Reply`].

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};

use log::{debug, error};
use vhost::vhost_user::message::VhostUserMsgValidator;
use vm_memory::ByteValued;
use vmm_sys_util::eventfd::EventFd;

use crate::channel::{is_unix_stream, BackendChannelSender};
use crate::error::Result;
use crate::frame::{read_obj, validate_header, Frame, Message, MessageKind};
use crate::handler::{BackendHandler, ConfigAddress, ConnectionId, FrontendIdentity};
use crate::messages::{
    decode_name, fits_width, width_mask, AccessKind, ConfigAccess, ErrorReport, FrontendInfo,
    FrontendRole, FunctionAddress, FunctionClaim, FunctionRelease, GuestAccess, InterruptFd,
    CONFIG_SPACE_SIZE, U64,
};
use crate::wire::{FrontendReq, MsgHeader, Status, HEADER_SIZE, MAX_PAYLOAD_SIZE};
use crate::{Features, ProtocolFeatures};

/// Size of the x86 port-I/O space.
pub const PIO_SPACE_SIZE: u64 = 0x1_0000;

/// Where a connection is in the handshake.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Only `Get/SetFeatures`, `Get/SetProtocolFeatures` and `SetFrontendInfo` are accepted.
    Connected,
    /// `SetProtocolFeatures` was accepted: every request is (subject to its feature).
    Negotiated,
}

/// A reply ready to be sent (replies never carry fds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Header: the request's code and id, REPLY set, the status, the payload size.
    pub header: MsgHeader,
    /// Payload (empty unless the status is `Ok`).
    pub payload: Vec<u8>,
}

impl Reply {
    /// The reply's status.
    pub fn status(&self) -> Status {
        Status::try_from(self.header.status).unwrap_or(Status::Io)
    }

    /// Header and payload, ready to write.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.header.as_slice().to_vec();
        out.extend_from_slice(&self.payload);
        out
    }
}

/// A request's outcome; on success its reply payload has been appended to the output.
type Answer = std::result::Result<(), Status>;

/// Per-connection protocol state: handshake stage, negotiated features, the frontend's identity.
#[derive(Debug)]
pub struct Session {
    conn: ConnectionId,
    stage: Stage,
    features: Features,
    protocol_features: ProtocolFeatures,
    identity: Option<FrontendIdentity>,
    /// A request reached the handler (see [`Session::reached_handler`]).
    reached_handler: bool,
    disconnected: bool,
}

/// Decode a fixed-size payload; wrong size or invalid field is `Invalid`.
fn payload<T: VhostUserMsgValidator + Default>(p: &[u8]) -> std::result::Result<T, Status> {
    read_obj::<T>(p)
        .filter(|p| p.is_valid())
        .ok_or(Status::Invalid)
}

fn empty(p: &[u8]) -> std::result::Result<(), Status> {
    if p.is_empty() {
        Ok(())
    } else {
        Err(Status::Invalid)
    }
}

/// The reply to a request without payload that answers with a [`U64`].
fn u64_reply(p: &[u8], out: &mut Vec<u8>, value: impl FnOnce() -> u64) -> Answer {
    empty(p)?;
    out.extend_from_slice(U64 { value: value() }.as_slice());
    Ok(())
}

/// A config access: size, width, reserved, offset range (ERANGE), alignment, data; with the
/// address it names.
fn config_access(p: &[u8]) -> std::result::Result<(ConfigAccess, ConfigAddress), Status> {
    let a: ConfigAccess = read_obj(p).ok_or(Status::Invalid)?;
    AccessKind::Config.check_width(a.width)?;
    if a.reserved != 0 {
        return Err(Status::Invalid);
    }
    if a.offset >= CONFIG_SPACE_SIZE {
        return Err(Status::OutOfRange);
    }
    if !a.is_valid() {
        return Err(Status::Invalid);
    }
    let addr = ConfigAddress {
        segment: a.segment,
        bus: a.bus,
        devfn: a.devfn,
        offset: a.offset,
    };
    Ok((a, addr))
}

/// A trapped access of `kind` (`Pio` or `Mmio`): size, width, reserved, data (EINVAL), address
/// range (ERANGE).
fn guest_access(p: &[u8], kind: AccessKind) -> std::result::Result<GuestAccess, Status> {
    let a: GuestAccess = read_obj(p).ok_or(Status::Invalid)?;
    kind.check_width(a.width)?;
    if a.reserved != [0; 7] || !fits_width(a.data, a.width) {
        return Err(Status::Invalid);
    }
    let end = a
        .addr
        .checked_add(u64::from(a.width) - 1)
        .ok_or(Status::OutOfRange)?;
    if kind == AccessKind::Pio && end >= PIO_SPACE_SIZE {
        return Err(Status::OutOfRange);
    }
    if !a.is_valid() {
        return Err(Status::Invalid);
    }
    Ok(a)
}

/// The kind of a trapped-access request.
fn kind_of(req: FrontendReq) -> AccessKind {
    if matches!(req, FrontendReq::PioRead | FrontendReq::PioWrite) {
        AccessKind::Pio
    } else {
        AccessKind::Mmio
    }
}

impl Session {
    /// A new connection in [`Stage::Connected`].
    pub fn new(conn: ConnectionId) -> Self {
        Session {
            conn,
            stage: Stage::Connected,
            features: Features::empty(),
            protocol_features: ProtocolFeatures::empty(),
            identity: None,
            reached_handler: false,
            disconnected: false,
        }
    }

    /// The connection's id.
    pub fn id(&self) -> ConnectionId {
        self.conn
    }

    /// Handshake stage.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// Emulation features the frontend acknowledged (`SetFeatures`).
    pub fn features(&self) -> Features {
        self.features
    }

    /// Negotiated protocol features (`SetProtocolFeatures`).
    pub fn protocol_features(&self) -> ProtocolFeatures {
        self.protocol_features
    }

    /// Has a request reached the handler (a well-formed request header arrived)? Until then the
    /// session never called the handler, and [`Session::disconnect`] does not either: a peer
    /// that connects and sends garbage costs the handler nothing (no lock taken, no hook run).
    pub fn reached_handler(&self) -> bool {
        self.reached_handler
    }

    /// The frontend's identity, once it sent `SetFrontendInfo`.
    pub fn identity(&self) -> Option<&FrontendIdentity> {
        self.identity.as_ref()
    }

    /// Handle one request and build its reply. `Err` only for a message that is not a valid
    /// request (REPLY flag, bad header; always [`crate::Error::should_disconnect`]): the caller must
    /// close the connection (and then call [`Session::disconnect`]). Every other problem is an
    /// error status in the reply; fds the request did not consume are closed.
    pub fn handle<H: BackendHandler + ?Sized>(
        &mut self,
        handler: &mut H,
        msg: Message,
    ) -> Result<Reply> {
        let frame = Frame {
            header: msg.header,
            payload: &msg.payload,
            fds: msg.fds,
        };
        let mut out = Vec::new();
        self.handle_into(handler, frame, &mut out)?;
        let payload = out.split_off(HEADER_SIZE);
        let header = read_obj(&out).ok_or(crate::Error::InvalidPayload("reply header"))?;
        Ok(Reply { header, payload })
    }

    /// As [`Session::handle`], for a request borrowed from a [`crate::FrameReader`]'s buffer,
    /// with the encoded reply (header and payload) appended to `out`: nothing is allocated for a
    /// request whose reply has a fixed size once `out` has room. Returns the reply's status.
    pub fn handle_into<H: BackendHandler + ?Sized>(
        &mut self,
        handler: &mut H,
        frame: Frame<'_>,
        out: &mut Vec<u8>,
    ) -> Result<Status> {
        validate_header(&frame.header, MessageKind::Request)?;
        self.reached_handler = true;
        let Frame {
            header,
            payload,
            mut fds,
        } = frame;
        let at = out.len();
        out.extend_from_slice(&[0; HEADER_SIZE]);
        let answer = match FrontendReq::try_from(header.request) {
            // Only a hand-built Message can disagree with its header; FrameReader's never do.
            _ if header.payload_len() != payload.len() => Err(Status::Invalid),
            Err(e) => {
                debug!("{}: {e}", self.conn);
                Err(Status::NotSupported)
            }
            Ok(req) => self.dispatch(handler, req, payload, &mut fds, out),
        };
        // Unconsumed fds are closed here, before the reply goes out.
        drop(fds);
        let len = out.len() - at - HEADER_SIZE;
        let status = match answer {
            Ok(()) if len > MAX_PAYLOAD_SIZE => Status::TooBig,
            Ok(()) => Status::Ok,
            Err(Status::Ok) => Status::Io,
            Err(s) => s,
        };
        if status != Status::Ok {
            debug!(
                "{}: request {} (id {}) failed: {status}",
                self.conn, header.request, header.id
            );
            out.truncate(at + HEADER_SIZE);
        }
        let size = (out.len() - at - HEADER_SIZE) as u32;
        out[at..at + HEADER_SIZE].copy_from_slice(header.reply(status, size).as_slice());
        handler.request_done(self.conn, header.request, status);
        Ok(status)
    }

    /// Tell the handler the connection is gone (once; later calls do nothing; never for a
    /// session that no request of reached the handler, [`Session::reached_handler`]).
    pub fn disconnect<H: BackendHandler + ?Sized>(&mut self, handler: &mut H) {
        if !std::mem::replace(&mut self.disconnected, true) && self.reached_handler {
            handler.disconnected(self.conn);
        }
    }

    /// Sequence and feature checks, then the request itself.
    fn dispatch<H: BackendHandler + ?Sized>(
        &mut self,
        h: &mut H,
        req: FrontendReq,
        p: &[u8],
        fds: &mut Vec<File>,
        out: &mut Vec<u8>,
    ) -> Answer {
        use FrontendReq::*;
        let needs = match req {
            GetFeatures | SetFeatures | GetProtocolFeatures | SetProtocolFeatures
            | SetFrontendInfo => None,
            SetBackendReqFd => Some(ProtocolFeatures::BACKEND_CHANNEL),
            PioRead | PioWrite | MmioRead | MmioWrite => Some(ProtocolFeatures::GUEST_ACCESS),
            SaveState | LoadState => Some(ProtocolFeatures::DEVICE_STATE),
            ReportError | RaisePme => Some(ProtocolFeatures::ERROR_REPORTING),
            SetInterruptFd => Some(ProtocolFeatures::INTERRUPTS),
            ClaimFunction | ReleaseFunction => Some(ProtocolFeatures::OWNERSHIP),
            SetConfigSnapshot => Some(ProtocolFeatures::CONFIG_SNAPSHOT),
            GetTopology | ConfigRead | ConfigWrite | Reset | GetChipsetMemory => {
                Some(ProtocolFeatures::empty())
            }
        };
        if let Some(feature) = needs {
            if self.stage != Stage::Negotiated || !self.protocol_features.contains(feature) {
                return Err(Status::Protocol);
            }
        }
        if req == SetBackendReqFd {
            return self.set_backend_channel(h, p, fds);
        }
        if req == SetInterruptFd {
            return self.set_interrupt_fd(h, p, fds);
        }
        if req == SetConfigSnapshot {
            empty(p)?;
            if fds.len() != 1 {
                return Err(Status::Invalid);
            }
            let file = fds.pop().ok_or(Status::Invalid)?;
            return h.set_config_snapshot(self.conn, file);
        }
        if !fds.is_empty() {
            return Err(Status::Invalid);
        }
        let none = |()| ();
        match req {
            GetFeatures => u64_reply(p, out, || h.features().bits()),
            SetFeatures => {
                let v = payload::<U64>(p)?.value;
                let f = Features::from_bits(v)
                    .filter(|f| h.features().contains(*f))
                    .ok_or(Status::Invalid)?;
                self.features = f;
                Ok(())
            }
            GetProtocolFeatures => u64_reply(p, out, || h.protocol_features().bits()),
            SetProtocolFeatures => {
                if self.stage == Stage::Negotiated {
                    return Err(Status::Protocol);
                }
                let v = payload::<U64>(p)?.value;
                let offered = h.protocol_features();
                self.protocol_features = ProtocolFeatures::from_bits(v)
                    .filter(|f| offered.contains(*f))
                    .ok_or(Status::Invalid)?;
                self.stage = Stage::Negotiated;
                Ok(())
            }
            SetFrontendInfo => self.set_frontend_info(h, p),
            GetTopology => {
                empty(p)?;
                let mut topo = h.topology();
                if !self.protocol_features.contains(ProtocolFeatures::PROXIMITY)
                    && topo.has_proximity()
                {
                    topo = topo.without_proximity();
                }
                topo.validate().map_err(|e| {
                    error!("{}: the handler's topology is invalid: {e}", self.conn);
                    Status::Io
                })?;
                out.extend_from_slice(&topo.encode());
                Ok(())
            }
            ConfigRead => {
                let (a, addr) = config_access(p)?;
                let data = u64::from(h.config_read(addr, a.width)?) & width_mask(a.width);
                out.extend_from_slice(ConfigAccess { data, ..a }.as_slice());
                Ok(())
            }
            ConfigWrite => {
                let (a, addr) = config_access(p)?;
                h.config_write(addr, a.width, a.data as u32)
            }
            PioRead | MmioRead => {
                let a = guest_access(p, kind_of(req))?;
                let v = if req == PioRead {
                    h.pio_read(a.addr, a.width)?
                } else {
                    h.mmio_read(a.addr, a.width)?
                };
                let reply = GuestAccess {
                    data: v & width_mask(a.width),
                    ..a
                };
                out.extend_from_slice(reply.as_slice());
                Ok(())
            }
            PioWrite => {
                guest_access(p, AccessKind::Pio).and_then(|a| h.pio_write(a.addr, a.width, a.data))
            }
            MmioWrite => guest_access(p, AccessKind::Mmio)
                .and_then(|a| h.mmio_write(a.addr, a.width, a.data)),
            Reset => empty(p).and_then(|()| h.reset()),
            SaveState => {
                empty(p)?;
                out.extend_from_slice(&h.save_state()?);
                Ok(())
            }
            LoadState => h.load_state(p),
            GetChipsetMemory => {
                empty(p)?;
                let mem = h.chipset_memory();
                if !mem.is_valid() {
                    error!(
                        "{}: the handler's chipset memory record is invalid",
                        self.conn
                    );
                    return Err(Status::Io);
                }
                out.extend_from_slice(mem.as_slice());
                Ok(())
            }
            ReportError => {
                let r = payload::<ErrorReport>(p)?;
                h.report_error(self.conn, &r)
            }
            RaisePme => {
                let a = payload::<FunctionAddress>(p)?;
                h.raise_pme(self.conn, &a)
            }
            ClaimFunction | ReleaseFunction if self.identity.is_none() => {
                // Ownership is by name: a frontend must say who it is first.
                Err(Status::Protocol)
            }
            ClaimFunction => {
                let c = payload::<FunctionClaim>(p)?;
                h.claim_function(self.conn, &c)
            }
            ReleaseFunction => {
                let r = payload::<FunctionRelease>(p)?;
                h.release_function(self.conn, &r)
            }
            SetBackendReqFd | SetInterruptFd | SetConfigSnapshot => Err(Status::Protocol), // above
        }
        .map(none)
    }

    fn set_frontend_info<H: BackendHandler + ?Sized>(&mut self, h: &mut H, p: &[u8]) -> Answer {
        if self.identity.is_some() {
            return Err(Status::Protocol);
        }
        let info = payload::<FrontendInfo>(p)?;
        let name = decode_name(&info.name).ok_or(Status::Invalid)?.to_string();
        let role = FrontendRole::try_from(info.role).map_err(|_| Status::Invalid)?;
        let identity = FrontendIdentity { name, role };
        h.frontend_identified(self.conn, &identity);
        self.identity = Some(identity);
        Ok(())
    }

    /// `SetInterruptFd`: exactly one eventfd to register, none to unregister.
    fn set_interrupt_fd<H: BackendHandler + ?Sized>(
        &mut self,
        h: &mut H,
        p: &[u8],
        fds: &mut Vec<File>,
    ) -> Answer {
        let req = payload::<InterruptFd>(p)?;
        let fd = if req.flags & InterruptFd::UNREGISTER != 0 {
            if !fds.is_empty() {
                return Err(Status::Invalid);
            }
            None
        } else {
            if fds.len() != 1 || !is_eventfd(fds[0].as_raw_fd()) {
                return Err(Status::Invalid);
            }
            let file = fds.pop().ok_or(Status::Invalid)?;
            // SAFETY: the fd is an eventfd (checked above) that we own; EventFd takes it over.
            Some(unsafe { EventFd::from_raw_fd(file.into_raw_fd()) })
        };
        h.set_interrupt_fd(self.conn, &req, fd)
    }

    fn set_backend_channel<H: BackendHandler + ?Sized>(
        &mut self,
        h: &mut H,
        p: &[u8],
        fds: &mut Vec<File>,
    ) -> Answer {
        empty(p)?;
        if fds.len() != 1 || !is_unix_stream(fds[0].as_raw_fd()) {
            return Err(Status::Invalid);
        }
        let file = fds.pop().ok_or(Status::Invalid)?;
        let mut sender = BackendChannelSender::from_file(file).map_err(|_| Status::Io)?;
        sender.set_layout_events(
            self.protocol_features
                .contains(ProtocolFeatures::LAYOUT_EVENTS),
        );
        sender.set_event_classes(
            self.protocol_features
                .contains(ProtocolFeatures::INTERRUPTS),
            self.protocol_features
                .contains(ProtocolFeatures::HOTPLUG_EVENTS),
        );
        sender.set_reset_events(
            self.protocol_features
                .contains(ProtocolFeatures::RESET_EVENTS),
        );
        sender.set_layout_delta(
            self.protocol_features
                .contains(ProtocolFeatures::LAYOUT_DELTA),
        );
        sender.set_proximity(self.protocol_features.contains(ProtocolFeatures::PROXIMITY));
        h.backend_channel(self.conn, sender);
        Ok(())
    }
}

/// Is `fd` an eventfd? (Its /proc link names the anonymous inode.)
fn is_eventfd(fd: RawFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .is_ok_and(|p| p.as_os_str() == "anon_inode:[eventfd]")
}

#[cfg(test)]
mod tests;
