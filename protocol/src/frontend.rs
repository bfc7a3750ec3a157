//! [`Frontend`]: a blocking client of the main socket with the handshake and typed requests.
//!
//! Every reply is checked: REPLY bit, an id that is outstanding, the same request code, a known
//! status, and the exact payload size for the code. Requests can be pipelined with
//! [`Frontend::submit`] and [`Frontend::wait`]; replies are matched by id.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use vm_memory::ByteValued;

use crate::channel::BackendChannel;

mod config_address;
mod platform;
use crate::error::{Error, Result};
use crate::frame::{decode_payload, sys, wait_fd, Fill, Frame, FrameReader, Message, MessageKind};
use crate::messages::{
    encode_name, ChipsetMemory, ConfigAccess, FrontendInfo, FrontendRole, GuestAccess, U64,
};
use crate::snapshot::SnapshotReader;
use crate::topology::FunctionKind;
use crate::topology::Topology;
use crate::wire::{FrontendReq, MsgHeader, Status};
use crate::{Features, ProtocolFeatures};

/// How long a [`Frontend`] waits for the backend by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// What a frontend asks for in the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendOptions {
    /// Name sent with `SetFrontendInfo`: 1 to 32 printable ASCII characters.
    pub name: String,
    /// Role sent with `SetFrontendInfo`.
    pub role: FrontendRole,
    /// Emulation features wanted; the backend's offer is intersected with them.
    pub features: Features,
    /// Protocol features wanted; the backend's offer is intersected with them.
    pub protocol_features: ProtocolFeatures,
    /// Open a backend channel if the backend offers `BACKEND_CHANNEL` (implies asking for it).
    pub backend_channel: bool,
}

impl FrontendOptions {
    /// Everything the backend offers except `CONFIG_ADDRESS_LATCH` (who owns CONFIG_ADDRESS
    /// is the frontend's choice: add it to `protocol_features`), no backend channel.
    pub fn new(name: impl Into<String>, role: FrontendRole) -> Self {
        FrontendOptions {
            name: name.into(),
            role,
            features: Features::all(),
            protocol_features: ProtocolFeatures::all() - ProtocolFeatures::CONFIG_ADDRESS_LATCH,
            backend_channel: false,
        }
    }

    /// A tool (dump, qtest, monitoring): everything offered, no backend channel.
    pub fn tool(name: impl Into<String>) -> Self {
        Self::new(name, FrontendRole::Tool)
    }

    /// A VMM: everything offered, with a backend channel.
    pub fn vmm(name: impl Into<String>) -> Self {
        FrontendOptions {
            backend_channel: true,
            ..Self::new(name, FrontendRole::Vmm)
        }
    }
}

/// A connection to a backend's main socket.
///
/// A request costs one `sendmsg` and, for its reply, one blocking `recvmsg` into the reader's
/// buffer (the socket is in blocking mode with the frontend's timeout as its receive timeout;
/// sends and reads that must not wait pass `MSG_DONTWAIT`); nothing is allocated for requests
/// and replies of a fixed size.
#[derive(Debug)]
pub struct Frontend {
    stream: UnixStream,
    reader: FrameReader,
    /// The request being sent, encoded (kept for its capacity).
    out: Vec<u8>,
    timeout: Option<Duration>,
    /// The receive timeout (`SO_RCVTIMEO`) set on the socket, once set.
    receive_timeout: Option<Option<Duration>>,
    next_id: u64,
    /// Request code of every request sent and not yet answered, by id.
    outstanding: HashMap<u64, u32>,
    /// Replies received while waiting for another one.
    arrived: HashMap<u64, Message>,
    offered: (Features, ProtocolFeatures),
    negotiated: (Features, ProtocolFeatures),
    channel: Option<BackendChannel>,
    broken: bool,
    /// The configuration snapshot reads are served from, when negotiated.
    snapshot: Option<SnapshotReader>,
    /// CONFIG_ADDRESS as this frontend latched it, when `CONFIG_ADDRESS_LATCH` was negotiated.
    latch: Option<config_address::Latch>,
}

impl Frontend {
    /// Connect to the backend at `path` and perform the handshake.
    pub fn connect(path: impl AsRef<Path>, opts: FrontendOptions) -> Result<Self> {
        Self::from_stream(UnixStream::connect(path).map_err(Error::Socket)?, opts)
    }

    /// Perform the handshake on a connected stream (e.g. an inherited fd).
    pub fn from_stream(stream: UnixStream, opts: FrontendOptions) -> Result<Self> {
        let mut fe = Self::unnegotiated(stream)?;
        fe.handshake(&opts)?;
        Ok(fe)
    }

    /// Wrap a connected stream without any handshake (tests that send requests out of order).
    pub fn unnegotiated(stream: UnixStream) -> Result<Self> {
        stream.set_nonblocking(false).map_err(Error::Socket)?;
        Ok(Frontend {
            stream,
            reader: FrameReader::new(MessageKind::Reply),
            out: Vec::new(),
            timeout: Some(DEFAULT_TIMEOUT),
            receive_timeout: None,
            next_id: 1,
            outstanding: HashMap::new(),
            arrived: HashMap::new(),
            offered: (Features::empty(), ProtocolFeatures::empty()),
            negotiated: (Features::empty(), ProtocolFeatures::empty()),
            channel: None,
            broken: false,
            snapshot: None,
            latch: None,
        })
    }

    /// `GetProtocolFeatures`, `SetProtocolFeatures` (intersection), `GetFeatures`, `SetFeatures`
    /// (intersection), `SetFrontendInfo`, and `SetBackendReqFd` if asked for and negotiated.
    pub fn handshake(&mut self, opts: &FrontendOptions) -> Result<()> {
        let name = encode_name(&opts.name)
            .filter(|_| !opts.name.is_empty())
            .ok_or(Error::InvalidArgument(
                "frontend name must be 1 to 32 printable ASCII characters",
            ))?;
        let offered_pf =
            ProtocolFeatures::from_bits_truncate(self.get_u64(FrontendReq::GetProtocolFeatures)?);
        let mut wanted_pf = opts.protocol_features;
        if opts.backend_channel {
            wanted_pf |= ProtocolFeatures::BACKEND_CHANNEL;
        }
        let pf = wanted_pf & offered_pf;
        self.call(
            FrontendReq::SetProtocolFeatures,
            U64 { value: pf.bits() }.as_slice(),
            &[],
            Some(0),
        )?;
        let offered_f = Features::from_bits_truncate(self.get_u64(FrontendReq::GetFeatures)?);
        let f = opts.features & offered_f;
        self.call(
            FrontendReq::SetFeatures,
            U64 { value: f.bits() }.as_slice(),
            &[],
            Some(0),
        )?;
        self.offered = (offered_f, offered_pf);
        self.negotiated = (f, pf);
        let info = FrontendInfo {
            role: opts.role as u32,
            flags: 0,
            name,
        };
        self.call(FrontendReq::SetFrontendInfo, info.as_slice(), &[], Some(0))?;
        if opts.backend_channel && pf.contains(ProtocolFeatures::BACKEND_CHANNEL) {
            let (ours, theirs) = UnixStream::pair().map_err(Error::Socket)?;
            self.call(
                FrontendReq::SetBackendReqFd,
                &[],
                &[theirs.as_raw_fd()],
                Some(0),
            )?;
            self.channel = Some(BackendChannel::new(ours)?);
        }
        if pf.contains(ProtocolFeatures::CONFIG_SNAPSHOT) {
            self.enable_snapshot()?;
        }
        if pf.contains(ProtocolFeatures::CONFIG_ADDRESS_LATCH) {
            let topology = self.topology()?;
            let segment = topology
                .functions
                .iter()
                .find(|f| f.kind == FunctionKind::HostBridge as u8)
                .map_or(0, |f| f.segment);
            self.start_latching(segment)?;
        }
        Ok(())
    }

    /// `SetConfigSnapshot`: create the shared region for the functions the backend emulates
    /// (host bridges and root ports in its topology) and hand it over. A backend that refuses
    /// it leaves every read on the socket.
    fn enable_snapshot(&mut self) -> Result<()> {
        let topology = self.topology()?;
        let local = topology
            .functions
            .iter()
            .filter(|f| f.kind != FunctionKind::Endpoint as u8)
            .count();
        let (reader, file) = SnapshotReader::create(local).map_err(Error::Socket)?;
        match self.call(
            FrontendReq::SetConfigSnapshot,
            &[],
            &[file.as_raw_fd()],
            Some(0),
        ) {
            Ok(_) => self.snapshot = Some(reader),
            // The backend offered the feature but refused this region: carry on without it.
            Err(Error::Status { .. }) => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Are configuration reads served from the shared snapshot (no message)?
    pub fn snapshot_active(&self) -> bool {
        self.snapshot.is_some()
    }

    /// The shared snapshot, when negotiated (to map its pages into a guest:
    /// [`SnapshotReader::ecam_layout`], [`SnapshotReader::try_clone`]).
    pub fn snapshot(&self) -> Option<&SnapshotReader> {
        self.snapshot.as_ref()
    }

    /// The snapshot, when nothing is in flight (so a read never overtakes a pipelined write).
    fn fast(&self) -> Option<&SnapshotReader> {
        self.snapshot
            .as_ref()
            .filter(|_| self.outstanding.is_empty())
    }

    /// How long to wait for the socket to take a request or for a reply (`None`: forever).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// Negotiated emulation features.
    pub fn features(&self) -> Features {
        self.negotiated.0
    }

    /// Negotiated protocol features.
    pub fn protocol_features(&self) -> ProtocolFeatures {
        self.negotiated.1
    }

    /// Emulation features the backend offered.
    pub fn offered_features(&self) -> Features {
        self.offered.0
    }

    /// Protocol features the backend offered.
    pub fn offered_protocol_features(&self) -> ProtocolFeatures {
        self.offered.1
    }

    /// The backend channel, if one was opened.
    pub fn backend_channel(&mut self) -> Option<&mut BackendChannel> {
        self.channel.as_mut()
    }

    /// Take the backend channel (e.g. to receive notifications on another thread).
    pub fn take_backend_channel(&mut self) -> Option<BackendChannel> {
        self.channel.take()
    }

    /// The underlying socket, for tests that write raw bytes. It is in blocking mode (with a
    /// receive timeout); the frontend passes `MSG_DONTWAIT` where it must not wait.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Send a request without waiting for its reply; returns its id for [`Frontend::wait`].
    pub fn submit(&mut self, code: u32, payload: &[u8], fds: &[RawFd]) -> Result<u64> {
        self.usable()?;
        if payload.len() > crate::wire::MAX_PAYLOAD_SIZE {
            return Err(Error::PayloadTooBig(payload.len() as u64));
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        out.extend_from_slice(MsgHeader::request(code, payload.len() as u32, id).as_slice());
        out.extend_from_slice(payload);
        let sent = self.send(&out, fds);
        self.out = out;
        if let Err(e) = sent {
            self.broken |= e.should_disconnect();
            return Err(e);
        }
        self.outstanding.insert(id, code);
        Ok(id)
    }

    /// Wait for the reply to request `id`: its status and payload (not checked against the code).
    pub fn wait(&mut self, id: u64) -> Result<(Status, Vec<u8>)> {
        self.wait_with(id, |status, payload| Ok((status, payload.to_vec())))
    }

    /// Send a request and wait for its reply (any code, payload and fds, for tests).
    pub fn request(
        &mut self,
        code: u32,
        payload: &[u8],
        fds: &[RawFd],
    ) -> Result<(Status, Vec<u8>)> {
        let id = self.submit(code, payload, fds)?;
        self.wait(id)
    }

    /// `GetTopology`.
    pub fn topology(&mut self) -> Result<Topology> {
        Topology::decode(&self.call(FrontendReq::GetTopology, &[], &[], None)?)
    }

    /// `ConfigRead` of `width` bytes at `offset` of function `segment:bus:devfn`.
    pub fn config_read(
        &mut self,
        segment: u16,
        bus: u8,
        devfn: u8,
        offset: u16,
        width: u8,
    ) -> Result<u32> {
        if let Some(r) = self
            .fast()
            .and_then(|s| s.config_read(segment, bus, devfn, offset, width))
        {
            return r.map_err(|status| Error::Status {
                request: FrontendReq::ConfigRead as u32,
                status,
            });
        }
        let req = ConfigAccess {
            segment,
            bus,
            devfn,
            offset,
            width,
            reserved: 0,
            data: 0,
        };
        let reply: ConfigAccess = self.call_obj(FrontendReq::ConfigRead, req.as_slice())?;
        if (ConfigAccess { data: 0, ..reply }) != req {
            return Err(Error::InvalidPayload(
                "ConfigRead reply does not match the request",
            ));
        }
        Ok(reply.data as u32)
    }

    /// `ConfigWrite` of the low `width` bytes of `value`.
    pub fn config_write(
        &mut self,
        segment: u16,
        bus: u8,
        devfn: u8,
        offset: u16,
        width: u8,
        value: u32,
    ) -> Result<()> {
        let req = ConfigAccess {
            segment,
            bus,
            devfn,
            offset,
            width,
            reserved: 0,
            data: u64::from(value),
        };
        self.call_empty(FrontendReq::ConfigWrite, req.as_slice(), &[])
    }

    /// `PioRead`: a trapped port-I/O read. With `CONFIG_ADDRESS_LATCH`, a dword read of 0xCF8
    /// answers the latch and a CONFIG_DATA read is the `ConfigRead` it selects (no message
    /// when the snapshot serves it).
    pub fn pio_read(&mut self, port: u64, width: u8) -> Result<u64> {
        if let Some(r) = self.latched_pio_read(port, width) {
            return r;
        }
        if let Some(r) = self.fast().and_then(|s| s.config_data_read(port, width)) {
            return r.map_err(|status| Error::Status {
                request: FrontendReq::PioRead as u32,
                status,
            });
        }
        self.guest_read(FrontendReq::PioRead, port, width)
    }

    /// `PioWrite`: a trapped port-I/O write. With `CONFIG_ADDRESS_LATCH`, a dword write to
    /// 0xCF8 only latches (no message) and a CONFIG_DATA write is the `ConfigWrite` it selects.
    pub fn pio_write(&mut self, port: u64, width: u8, value: u64) -> Result<()> {
        if let Some(r) = self.latched_pio_write(port, width, value) {
            return r;
        }
        self.guest_write(FrontendReq::PioWrite, port, width, value)
    }

    /// `MmioRead`: a trapped MMIO read.
    pub fn mmio_read(&mut self, addr: u64, width: u8) -> Result<u64> {
        if let Some(r) = self.fast().and_then(|s| s.ecam_read(addr, width)) {
            return r.map_err(|status| Error::Status {
                request: FrontendReq::MmioRead as u32,
                status,
            });
        }
        self.guest_read(FrontendReq::MmioRead, addr, width)
    }

    /// `MmioWrite`: a trapped MMIO write.
    pub fn mmio_write(&mut self, addr: u64, width: u8, value: u64) -> Result<()> {
        self.guest_write(FrontendReq::MmioWrite, addr, width, value)
    }

    /// `Reset`: platform reset of the hierarchy. A CONFIG_ADDRESS this frontend latches
    /// resets to 0 with it, as the backend's own register does.
    pub fn reset(&mut self) -> Result<()> {
        self.call_empty(FrontendReq::Reset, &[], &[])?;
        self.set_config_address_latch(0);
        Ok(())
    }

    /// `SaveState`: the backend's device state blob.
    pub fn save_state(&mut self) -> Result<Vec<u8>> {
        self.call(FrontendReq::SaveState, &[], &[], None)
    }

    /// `LoadState`: restore a blob from `save_state`.
    pub fn load_state(&mut self, blob: &[u8]) -> Result<()> {
        self.call_empty(FrontendReq::LoadState, blob, &[])
    }

    /// `GetChipsetMemory`: the MCH's PAM/SMRAM routing.
    pub fn chipset_memory(&mut self) -> Result<ChipsetMemory> {
        self.call_obj(FrontendReq::GetChipsetMemory, &[])
    }

    fn guest_read(&mut self, req: FrontendReq, addr: u64, width: u8) -> Result<u64> {
        let access = GuestAccess {
            addr,
            data: 0,
            width,
            reserved: [0; 7],
        };
        let reply: GuestAccess = self.call_obj(req, access.as_slice())?;
        if (GuestAccess { data: 0, ..reply }) != access {
            return Err(Error::InvalidPayload(
                "read reply does not match the request",
            ));
        }
        Ok(reply.data)
    }

    fn guest_write(&mut self, req: FrontendReq, addr: u64, width: u8, data: u64) -> Result<()> {
        let access = GuestAccess {
            addr,
            data,
            width,
            reserved: [0; 7],
        };
        self.call_empty(req, access.as_slice(), &[])
    }

    fn get_u64(&mut self, req: FrontendReq) -> Result<u64> {
        Ok(self.call_obj::<U64>(req, &[])?.value)
    }

    /// Request and a fixed-size reply, decoded straight out of the reader's buffer.
    fn call_obj<T: vhost::vhost_user::message::VhostUserMsgValidator + Default>(
        &mut self,
        req: FrontendReq,
        payload: &[u8],
    ) -> Result<T> {
        let id = self.submit(req as u32, payload, &[])?;
        self.wait_with(id, |status, p| {
            let p = successful(req, status, p, Some(std::mem::size_of::<T>()))?;
            decode_payload(req as u32, p)
        })
    }

    /// Request and reply; a non-zero status becomes [`Error::Status`], a successful reply's size
    /// must be `reply_len` when given.
    fn call(
        &mut self,
        req: FrontendReq,
        payload: &[u8],
        fds: &[RawFd],
        reply_len: Option<usize>,
    ) -> Result<Vec<u8>> {
        let id = self.submit(req as u32, payload, fds)?;
        self.wait_with(id, |status, p| {
            successful(req, status, p, reply_len).map(<[u8]>::to_vec)
        })
    }

    /// [`Frontend::call`] for a request whose reply has no payload (nothing allocated).
    fn call_empty(&mut self, req: FrontendReq, payload: &[u8], fds: &[RawFd]) -> Result<()> {
        let id = self.submit(req as u32, payload, fds)?;
        self.wait_with(id, |status, p| {
            successful(req, status, p, Some(0)).map(drop)
        })
    }

    fn usable(&self) -> Result<()> {
        if self.broken {
            return Err(Error::Socket(io::Error::new(
                io::ErrorKind::NotConnected,
                "connection unusable after an error",
            )));
        }
        Ok(())
    }

    /// Wait for the reply to request `id` and hand its status and payload to `reply`: straight
    /// out of the reader's buffer when it is read now, or from the replies filed while waiting
    /// for others. Replies to other requests that arrive first are checked and filed.
    fn wait_with<R>(
        &mut self,
        id: u64,
        reply: impl FnOnce(Status, &[u8]) -> Result<R>,
    ) -> Result<R> {
        self.usable()?;
        if let Some(m) = self.arrived.remove(&id) {
            return reply(reply_status(&m.header)?, &m.payload);
        }
        if !self.outstanding.contains_key(&id) {
            return Err(Error::InvalidArgument(
                "no request with this id is outstanding",
            ));
        }
        let deadline = self.timeout.and_then(|t| Instant::now().checked_add(t));
        let mut blocking_read = self.timeout != Some(Duration::ZERO);
        loop {
            loop {
                let frame = match self.reader.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        self.broken |= e.should_disconnect();
                        return Err(e);
                    }
                };
                if let Err(e) = check_reply(&mut self.outstanding, &frame) {
                    self.broken |= e.should_disconnect();
                    return Err(e);
                }
                if frame.header.id == id {
                    return reply(reply_status(&frame.header)?, frame.payload);
                }
                self.arrived.insert(frame.header.id, frame.to_message());
            }
            let filled = if std::mem::take(&mut blocking_read) {
                // The common case: one blocking read brings the whole reply.
                self.set_receive_timeout()
                    .and_then(|()| self.reader.fill(&self.stream, true))
            } else {
                // A reply arriving in pieces, or a read interrupted by a signal: wait for the
                // rest until the deadline.
                match wait_fd(self.stream.as_raw_fd(), libc::POLLIN, deadline) {
                    Ok(true) => self.reader.fill(&self.stream, false),
                    Ok(false) => Ok(Fill::Empty),
                    Err(e) => Err(Error::Socket(e)),
                }
            };
            match filled {
                Ok(Fill::Data { .. }) => {}
                Ok(Fill::Interrupted) => {}
                Ok(Fill::Empty) if deadline.is_some_and(|d| Instant::now() >= d) => {
                    // Nothing lost: the reply may still come.
                    return Err(Error::Timeout);
                }
                Ok(Fill::Empty) => {}
                Err(e) => {
                    self.broken |= e.should_disconnect();
                    return Err(e);
                }
            }
        }
    }

    /// Make the socket's receive timeout the frontend's timeout (a system call only when it
    /// changed).
    fn set_receive_timeout(&mut self) -> Result<()> {
        if self.receive_timeout != Some(self.timeout) {
            self.stream
                .set_read_timeout(self.timeout)
                .map_err(Error::Socket)?;
            self.receive_timeout = Some(self.timeout);
        }
        Ok(())
    }

    /// Send a whole message. While the socket is full, replies are read and filed, so a frontend
    /// that pipelines many requests never deadlocks against a backend waiting for it to read.
    fn send(&mut self, bytes: &[u8], fds: &[RawFd]) -> Result<()> {
        let deadline = self.timeout.and_then(|t| Instant::now().checked_add(t));
        let mut sent = 0;
        while sent < bytes.len() {
            let with = if sent == 0 { fds } else { &[] };
            match sys::send(
                self.stream.as_raw_fd(),
                &bytes[sent..],
                with,
                libc::MSG_DONTWAIT,
            ) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let fd = self.stream.as_raw_fd();
                    if !wait_fd(fd, libc::POLLIN | libc::POLLOUT, deadline)
                        .map_err(Error::Socket)?
                    {
                        return Err(Error::Timeout);
                    }
                    loop {
                        while let Some(frame) = self.reader.next_frame()? {
                            check_reply(&mut self.outstanding, &frame)?;
                            self.arrived.insert(frame.header.id, frame.to_message());
                        }
                        match self.reader.fill(&self.stream, false)? {
                            Fill::Data { .. } | Fill::Interrupted => {}
                            Fill::Empty => break,
                        }
                    }
                }
                Err(e) => return Err(Error::io(e)),
            }
        }
        Ok(())
    }
}

/// Check a received reply against the requests outstanding (id, code; replies carry no fds)
/// and take its request off the list.
fn check_reply(outstanding: &mut HashMap<u64, u32>, frame: &Frame<'_>) -> Result<()> {
    let (id, got) = (frame.header.id, frame.header.request);
    let expected = outstanding
        .remove(&id)
        .ok_or(Error::UnexpectedReply { request: got, id })?;
    if expected != got {
        return Err(Error::ReplyMismatch { id, expected, got });
    }
    if !frame.fds.is_empty() {
        return Err(Error::TooManyFds(frame.fds.len()));
    }
    Ok(())
}

/// The status of a reply, which must be one the protocol defines.
fn reply_status(header: &MsgHeader) -> Result<Status> {
    Status::try_from(header.status).map_err(|e| Error::UnknownStatus {
        request: header.request,
        raw: e.raw,
    })
}

/// The payload of a successful reply to `req` (of `len` bytes when given); an error status is
/// [`Error::Status`].
fn successful(
    req: FrontendReq,
    status: Status,
    payload: &[u8],
    len: Option<usize>,
) -> Result<&[u8]> {
    let request = req as u32;
    match (status, len) {
        (Status::Ok, Some(expected)) if payload.len() != expected => Err(Error::PayloadSize {
            request,
            expected,
            got: payload.len(),
        }),
        (Status::Ok, _) => Ok(payload),
        (status, _) => Err(Error::Status { request, status }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{recv_message, send_message};

    /// A frontend whose peer answers its first request with `answer(request header)`.
    fn scripted(
        answer: impl FnOnce(MsgHeader) -> (MsgHeader, Vec<u8>) + Send + 'static,
    ) -> Frontend {
        let (a, b) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            let req = recv_message(&b, MessageKind::Request, Some(Duration::from_secs(5))).unwrap();
            let (h, p) = answer(req.header);
            send_message(&b, h, &p, &[], None).unwrap();
            // Keep the socket open until the frontend is done.
            let _ = recv_message(&b, MessageKind::Request, Some(Duration::from_secs(5)));
        });
        let mut fe = Frontend::unnegotiated(a).unwrap();
        fe.set_timeout(Some(Duration::from_secs(5)));
        fe
    }

    #[test]
    fn replies_are_checked() {
        let mut fe = scripted(|h| {
            (
                MsgHeader {
                    id: h.id + 1,
                    ..h.reply(Status::Ok, 0)
                },
                vec![],
            )
        });
        let e = fe.reset().unwrap_err();
        assert!(matches!(e, Error::UnexpectedReply { .. }) && e.should_disconnect());
        assert!(fe.reset().is_err(), "the connection is unusable afterwards");

        let mut fe = scripted(|h| {
            (
                MsgHeader {
                    request: 1,
                    ..h.reply(Status::Ok, 0)
                },
                vec![],
            )
        });
        assert!(matches!(
            fe.reset(),
            Err(Error::ReplyMismatch {
                expected: 14,
                got: 1,
                ..
            })
        ));

        let mut fe = scripted(|h| (MsgHeader { flags: 1, ..h }, vec![]));
        assert!(matches!(fe.reset(), Err(Error::MissingReplyFlag(14))));

        let mut fe = scripted(|h| (h.reply(Status::Ok, 0), vec![0; 4]));
        assert!(matches!(
            fe.reset(),
            Err(Error::PayloadSize {
                request: 14,
                expected: 0,
                got: 4
            })
        ));

        let mut fe = scripted(|h| {
            (
                MsgHeader {
                    status: 1234,
                    ..h.reply(Status::Ok, 0)
                },
                vec![],
            )
        });
        let e = fe.reset().unwrap_err();
        assert!(matches!(e, Error::UnknownStatus { raw: 1234, .. }) && !e.should_disconnect());

        let mut fe = scripted(|h| (h.reply(Status::Busy, 0), vec![]));
        assert_eq!(fe.reset().unwrap_err().status(), Some(Status::Busy));
    }

    #[test]
    fn read_replies_must_match_the_request() {
        let mut fe = scripted(|h| {
            let reply = ConfigAccess {
                offset: 8,
                width: 4,
                data: 1,
                ..Default::default()
            };
            (h.reply(Status::Ok, 16), reply.as_slice().to_vec())
        });
        assert!(matches!(
            fe.config_read(0, 0, 0, 0, 4),
            Err(Error::InvalidPayload(_))
        ));
        let mut fe = scripted(|h| {
            let reply = GuestAccess {
                addr: 0xcf8,
                width: 4,
                data: 1 << 40,
                reserved: [0; 7],
            };
            (h.reply(Status::Ok, 24), reply.as_slice().to_vec())
        });
        assert!(matches!(
            fe.pio_read(0xcf8, 4),
            Err(Error::InvalidPayload(_))
        ));
    }

    #[test]
    fn silent_backend_times_out() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut fe = Frontend::unnegotiated(a).unwrap();
        fe.set_timeout(Some(Duration::from_millis(50)));
        let id = fe.submit(FrontendReq::Reset as u32, &[], &[]).unwrap();
        assert!(matches!(fe.wait(id), Err(Error::Timeout)));
        assert!(matches!(fe.wait(id + 100), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn options() {
        assert!(!FrontendOptions::tool("t").backend_channel);
        assert!(FrontendOptions::vmm("v").backend_channel);
        let (a, _b) = UnixStream::pair().unwrap();
        let bad = FrontendOptions::tool("has space");
        assert!(matches!(
            Frontend::from_stream(a, bad),
            Err(Error::InvalidArgument(_))
        ));
    }
}
