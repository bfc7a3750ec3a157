//! The backend channel: a second stream socket, sent by the frontend with `SetBackendReqFd`, on
//! which the backend sends notifications ([`BackendReq`]) so they never interleave with replies.
//!
//! [`BackendChannelSender`] is the backend's end: non-blocking with a bounded queue, so a frontend
//! that stops reading loses its notifications (and the channel) instead of stalling the backend.
//! [`BackendChannel`] is the frontend's end: blocking or timed receive of [`Notification`]s.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use log::{info, warn};
use vm_memory::ByteValued;

use crate::error::{Error, Result};
use crate::frame::{
    decode_payload, encode, FrameReader, FrameWriter, Message, MessageKind, DEFAULT_WRITE_LIMIT,
};
use crate::frontend::Frontend;
use crate::layout_delta::{LayoutDelta, LayoutNotice};
use crate::messages::{
    ChipsetMemory, FunctionReset, IntxLevel, LayoutChange, MsiMessage, MsiRoute,
};
use crate::topology::FunctionRecord;
use crate::topology::Topology;
use crate::wire::{BackendReq, MsgHeader, Status};
use crate::LayoutChanges;

/// Is `fd` a connected-or-not unix stream socket?
pub(crate) fn is_unix_stream(fd: RawFd) -> bool {
    let opt = |name| {
        let mut v: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `v`, which outlives the call.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (r == 0).then_some(v)
    };
    opt(libc::SO_DOMAIN) == Some(libc::AF_UNIX) && opt(libc::SO_TYPE) == Some(libc::SOCK_STREAM)
}

/// A backend-initiated message, decoded and validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notification {
    /// The guest changed routing: what changed and the whole new topology (sent whole, or
    /// rebuilt by [`BackendChannel`] from a `LayoutDelta` and the topology it had).
    LayoutChanged {
        /// What changed.
        changes: LayoutChanges,
        /// The topology after the change.
        topology: Topology,
    },
    /// A `LayoutDelta` arrived that the channel cannot apply: it does not hold the topology the
    /// delta starts from (an earlier layout notification was refused). The layout the frontend
    /// knows is stale: it MUST NOT act on it, and fetches the topology (`GetTopology`), e.g.
    /// with [`BackendChannel::resync`].
    LayoutResync {
        /// What changed.
        changes: LayoutChanges,
        /// The generation of the layout the delta produced.
        generation: u64,
    },
    /// The guest reprogrammed the MCH's PAM/SMRAM registers.
    ChipsetMemoryChanged(ChipsetMemory),
    /// A function pcierc emulates sent an MSI/MSI-X message.
    Msi(MsiMessage),
    /// A function's INTx level changed.
    Intx(IntxLevel),
    /// A function this frontend owns was hot-added.
    FunctionAdded(FunctionRecord),
    /// A function this frontend owns is gone.
    FunctionRemoved(FunctionRecord),
    /// The message of an MSI-X vector this frontend delivers through an eventfd.
    MsiRoute(MsiRoute),
    /// A function this frontend owns was reset (Secondary Bus Reset, slot power-off, platform
    /// reset): reset the device and the state kept for it.
    FunctionReset(FunctionReset),
}

impl Notification {
    /// Decode a backend-channel message (header already validated as a request). A
    /// `LayoutDelta` needs the topology it applies to, which only a [`BackendChannel`] holds:
    /// here it is refused (`InvalidTopology`).
    pub fn decode(msg: &Message) -> Result<Notification> {
        let code = msg.header.request;
        match BackendReq::try_from(code).map_err(|e| Error::UnknownRequest(e.raw))? {
            BackendReq::LayoutChanged => {
                let (changes, rest) = layout_head(code, &msg.payload)?;
                Ok(Notification::LayoutChanged {
                    changes,
                    topology: Topology::decode(rest)?,
                })
            }
            BackendReq::LayoutDelta => Err(Error::InvalidTopology(
                "a layout delta without the topology it applies to",
            )),
            BackendReq::ChipsetMemoryChanged => Ok(Notification::ChipsetMemoryChanged(
                decode_payload(code, &msg.payload)?,
            )),
            BackendReq::Msi => Ok(Notification::Msi(decode_payload(code, &msg.payload)?)),
            BackendReq::Intx => Ok(Notification::Intx(decode_payload(code, &msg.payload)?)),
            BackendReq::FunctionAdded => Ok(Notification::FunctionAdded(decode_payload(
                code,
                &msg.payload,
            )?)),
            BackendReq::FunctionRemoved => Ok(Notification::FunctionRemoved(decode_payload(
                code,
                &msg.payload,
            )?)),
            BackendReq::MsiRoute => Ok(Notification::MsiRoute(decode_payload(code, &msg.payload)?)),
            BackendReq::FunctionReset => Ok(Notification::FunctionReset(decode_payload(
                code,
                &msg.payload,
            )?)),
        }
    }
}

/// The `LayoutChange` head of a layout notification, and the bytes after it.
fn layout_head(code: u32, payload: &[u8]) -> Result<(LayoutChanges, &[u8])> {
    let n = std::mem::size_of::<LayoutChange>();
    let head = payload.get(..n).ok_or(Error::PayloadSize {
        request: code,
        expected: n,
        got: payload.len(),
    })?;
    let lc: LayoutChange = decode_payload(code, head)?;
    Ok((LayoutChanges::from_bits_retain(lc.changes), &payload[n..]))
}

/// The frontend's end of the backend channel.
///
/// It keeps the last topology a layout notification gave it, to rebuild whole topologies from
/// `LayoutDelta`s. A layout notification that does not decode or apply drops it, so the next
/// delta yields [`Notification::LayoutResync`] instead of a layout built on a stale base.
#[derive(Debug)]
pub struct BackendChannel {
    stream: UnixStream,
    reader: FrameReader,
    writer: FrameWriter,
    layout: Option<Topology>,
    layout_bytes: u64,
}

impl BackendChannel {
    /// Wrap the frontend's end of the socket pair (made non-blocking).
    pub fn new(stream: UnixStream) -> Result<Self> {
        stream.set_nonblocking(true).map_err(Error::Socket)?;
        Ok(BackendChannel {
            stream,
            reader: FrameReader::new(MessageKind::Request),
            writer: FrameWriter::default(),
            layout: None,
            layout_bytes: 0,
        })
    }

    /// The topology of the last layout notification (or [`BackendChannel::set_layout`]), if
    /// the channel holds one.
    pub fn layout(&self) -> Option<&Topology> {
        self.layout.as_ref()
    }

    /// Payload bytes of the layout notifications received so far (`LayoutChanged`,
    /// `LayoutDelta`), whole or delta as they came.
    pub fn layout_bytes(&self) -> u64 {
        self.layout_bytes
    }

    /// Give the channel the topology `GetTopology` returned, the base for later deltas.
    /// Deltas that end at or before its generation are then skipped (it is newer).
    pub fn set_layout(&mut self, topology: Topology) {
        self.layout = Some(topology);
    }

    /// Answer a [`Notification::LayoutResync`]: fetch the topology from `frontend`
    /// (`GetTopology`), keep it as the base for later deltas and return it as the
    /// `LayoutChanged` to act on.
    pub fn resync(
        &mut self,
        frontend: &mut Frontend,
        changes: LayoutChanges,
    ) -> Result<Notification> {
        let topology = frontend.topology()?;
        self.layout = Some(topology.clone());
        Ok(Notification::LayoutChanged { changes, topology })
    }

    /// Wait for the next notification.
    pub fn recv(&mut self) -> Result<Notification> {
        loop {
            if let Some(n) = self.recv_inner(None)? {
                return Ok(n);
            }
        }
    }

    /// Wait up to `timeout` for the next notification; `Ok(None)` on timeout. A notification that
    /// arrived partly stays buffered for the next call.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Notification>> {
        self.recv_inner(Some(timeout))
    }

    /// Take a notification if one is complete now, without waiting (for event loops polling
    /// [`AsRawFd::as_raw_fd`]).
    pub fn try_recv(&mut self) -> Result<Option<Notification>> {
        self.recv_inner(Some(Duration::ZERO))
    }

    /// Receive one message, answer it if NEED_REPLY is set, and decode it. A notification that
    /// fails validation is answered with an error status and returned as a non-fatal error.
    fn recv_inner(&mut self, timeout: Option<Duration>) -> Result<Option<Notification>> {
        self.writer.flush(&self.stream)?;
        loop {
            let Some(msg) = self.reader.recv_timeout(&self.stream, timeout)? else {
                return Ok(None);
            };
            if let Some(n) = self.handle(msg)? {
                return Ok(Some(n));
            }
        }
    }

    /// Decode (with the layout held for deltas), answer if asked; `None` for a delta that
    /// ends at or before the layout held (already known after a resync).
    fn handle(&mut self, msg: Message) -> Result<Option<Notification>> {
        let code = msg.header.request;
        let layout =
            code == BackendReq::LayoutDelta as u32 || code == BackendReq::LayoutChanged as u32;
        if layout {
            self.layout_bytes += msg.payload.len() as u64;
        }
        let decoded = if !msg.fds.is_empty() {
            if layout {
                // A layout change refused: the layout held no longer follows.
                self.layout = None;
            }
            Err(Error::InvalidPayload("fds"))
        } else if code == BackendReq::LayoutDelta as u32 {
            self.apply_delta(code, &msg.payload)
        } else {
            let n = Notification::decode(&msg);
            if code == BackendReq::LayoutChanged as u32 {
                self.layout = match &n {
                    Ok(Notification::LayoutChanged { topology, .. }) => Some(topology.clone()),
                    _ => None,
                };
            }
            n.map(Some)
        };
        if msg.header.needs_reply() {
            let status = match &decoded {
                Ok(_) => Status::Ok,
                Err(Error::UnknownRequest(_)) => Status::NotSupported,
                Err(_) => Status::Invalid,
            };
            self.writer
                .queue(&encode(msg.header.reply(status, 0), &[])?)?;
            self.writer.flush(&self.stream)?;
        }
        decoded
    }

    /// A `LayoutDelta` applied to the layout held. Whatever fails (a malformed delta, one that
    /// does not fit the base) drops the layout, so nothing is ever built on a stale base.
    fn apply_delta(&mut self, code: u32, payload: &[u8]) -> Result<Option<Notification>> {
        let decoded = layout_head(code, payload)
            .and_then(|(c, rest)| LayoutDelta::decode(rest).map(|d| (c, d)));
        let (changes, delta) = match decoded {
            Ok(d) => d,
            Err(e) => {
                self.layout = None;
                return Err(e);
            }
        };
        let Some(layout) = self.layout.as_mut() else {
            return Ok(Some(Notification::LayoutResync {
                changes,
                generation: delta.generation,
            }));
        };
        if layout.generation != delta.base_generation {
            if delta.generation <= layout.generation {
                // A resync fetched this layout or a newer one already.
                return Ok(None);
            }
            self.layout = None;
            return Ok(Some(Notification::LayoutResync {
                changes,
                generation: delta.generation,
            }));
        }
        match delta.apply(layout) {
            Ok(()) => Ok(Some(Notification::LayoutChanged {
                changes,
                topology: layout.clone(),
            })),
            Err(e) => {
                self.layout = None;
                Err(e)
            }
        }
    }
}

impl AsRawFd for BackendChannel {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

/// The backend's end of a frontend's backend channel.
///
/// Never blocks: messages go through a bounded [`FrameWriter`]. If the frontend stops reading
/// and the queue passes its limit, or the frontend closed its end, the sender logs a warning,
/// shuts the socket down (the frontend sees end-of-file) and every later call fails with
/// [`Error::ChannelClosed`]. Notifications are posted (no NEED_REPLY); anything the frontend
/// writes back is read and discarded. A sender made by [`crate::Session`] for a frontend that did
/// not negotiate `LAYOUT_EVENTS` silently drops layout and chipset-memory notifications.
#[derive(Debug)]
pub struct BackendChannelSender {
    stream: UnixStream,
    writer: FrameWriter,
    next_id: u64,
    closed: bool,
    layout_events: bool,
    interrupts: bool,
    hotplug_events: bool,
    reset_events: bool,
    layout_delta: bool,
    /// The frontend negotiated `PROXIMITY`: records keep their `proximity`.
    proximity: bool,
    /// The serial of the last [`LayoutNotice`] sent (its topology is what the frontend holds);
    /// `None` before the first one and after a whole topology sent outside notices.
    layout_serial: Option<u64>,
}

impl BackendChannelSender {
    /// Wrap a connected unix stream socket (made non-blocking).
    pub fn new(stream: UnixStream) -> Result<Self> {
        Self::with_limit(stream, DEFAULT_WRITE_LIMIT)
    }

    /// As [`BackendChannelSender::new`], letting at most `limit` bytes wait for the frontend.
    pub fn with_limit(stream: UnixStream, limit: usize) -> Result<Self> {
        if !is_unix_stream(stream.as_raw_fd()) {
            return Err(Error::InvalidArgument(
                "backend channel is not a unix stream socket",
            ));
        }
        stream.set_nonblocking(true).map_err(Error::Socket)?;
        Ok(BackendChannelSender {
            stream,
            writer: FrameWriter::new(limit),
            next_id: 1,
            closed: false,
            layout_events: true,
            interrupts: true,
            hotplug_events: true,
            reset_events: true,
            layout_delta: false,
            proximity: true,
            layout_serial: None,
        })
    }

    /// Wrap the fd a frontend sent with `SetBackendReqFd`.
    pub fn from_file(file: File) -> Result<Self> {
        Self::new(UnixStream::from(OwnedFd::from(file)))
    }

    /// Does this frontend get `LayoutChanged` / `ChipsetMemoryChanged` (it negotiated
    /// `LAYOUT_EVENTS`)? True for senders not made by a `Session`.
    pub fn layout_events(&self) -> bool {
        self.layout_events
    }

    pub(crate) fn set_layout_events(&mut self, enabled: bool) {
        self.layout_events = enabled;
    }

    /// Set whether the frontend negotiated `LAYOUT_DELTA` (false for a new sender).
    pub fn set_layout_delta(&mut self, on: bool) {
        self.layout_delta = on;
    }

    /// Set whether the frontend negotiated `PROXIMITY` (true for a new sender): without it
    /// the records it is sent carry `proximity` 0.
    pub fn set_proximity(&mut self, on: bool) {
        self.proximity = on;
    }

    /// `topology` encoded as this frontend may see it (see [`Self::set_proximity`]).
    fn encode_topology(&self, topology: &Topology) -> Vec<u8> {
        if self.proximity || !topology.has_proximity() {
            topology.encode()
        } else {
            topology.without_proximity().encode()
        }
    }

    /// An encoded `LayoutDelta` as this frontend may see it: re-encoded with `proximity` 0
    /// when it carries one the frontend did not negotiate (a delta that does not decode is
    /// passed on as it is: the frontend refuses it as it would have).
    fn delta_for_peer<'a>(&self, delta: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        if self.proximity {
            return delta.into();
        }
        match LayoutDelta::decode(delta) {
            Ok(mut d) if d.updates.iter().any(|u| u.record.proximity != 0) => {
                for u in &mut d.updates {
                    u.record.proximity = 0;
                }
                d.encode().into()
            }
            _ => delta.into(),
        }
    }

    /// Send `LayoutChanged`: what changed and the whole new topology.
    pub fn layout_changed(&mut self, changes: LayoutChanges, topology: &Topology) -> Result<()> {
        self.layout_serial = None;
        let body = self.encode_topology(topology);
        self.send_layout(changes, BackendReq::LayoutChanged, &body)
    }

    /// Does this channel need the whole topology for notice `serial` (it takes layout events,
    /// and did not negotiate `LAYOUT_DELTA` or was not sent notice `serial - 1`)?
    pub fn needs_whole_layout(&self, serial: u64) -> bool {
        !self.closed && self.layout_events && !self.follows(serial)
    }

    fn follows(&self, serial: u64) -> bool {
        self.layout_delta
            && self
                .layout_serial
                .is_some_and(|s| s.wrapping_add(1) == serial)
    }

    /// Send one layout change: as `LayoutDelta` when the frontend negotiated `LAYOUT_DELTA`,
    /// the notice has a delta and this channel was sent the notice before it; otherwise as
    /// `LayoutChanged` with the whole topology (the first layout notification on a channel is
    /// always whole). A notice without the topology a channel needs is refused
    /// (`InvalidArgument`) and the channel gets whole topologies from then on.
    pub fn layout_notice(&mut self, notice: &LayoutNotice<'_>) -> Result<()> {
        if self.closed {
            return Err(Error::ChannelClosed);
        }
        let follows = self.follows(notice.serial);
        self.layout_serial = Some(notice.serial);
        match (notice.delta, notice.topology) {
            (Some(delta), _) if follows => {
                let delta = self.delta_for_peer(delta);
                self.send_layout(notice.changes, BackendReq::LayoutDelta, &delta)
            }
            (_, Some(t)) => {
                let body = self.encode_topology(t);
                self.send_layout(notice.changes, BackendReq::LayoutChanged, &body)
            }
            (_, None) if !self.layout_events => {
                self.send_layout(notice.changes, BackendReq::LayoutChanged, &[])
            }
            (_, None) => {
                self.layout_serial = None;
                Err(Error::InvalidArgument(
                    "layout notice without the whole topology",
                ))
            }
        }
    }

    fn send_layout(&mut self, changes: LayoutChanges, code: BackendReq, body: &[u8]) -> Result<()> {
        if !self.layout_events {
            return if self.closed {
                Err(Error::ChannelClosed)
            } else {
                Ok(())
            };
        }
        let head = LayoutChange {
            changes: changes.bits(),
            reserved: 0,
        };
        let mut payload = Vec::with_capacity(head.as_slice().len() + body.len());
        payload.extend_from_slice(head.as_slice());
        payload.extend_from_slice(body);
        self.send(code, &payload)
    }

    /// Send `ChipsetMemoryChanged` with the new PAM/SMRAM routing.
    pub fn chipset_memory_changed(&mut self, mem: &ChipsetMemory) -> Result<()> {
        if !self.layout_events {
            return if self.closed {
                Err(Error::ChannelClosed)
            } else {
                Ok(())
            };
        }
        self.send(BackendReq::ChipsetMemoryChanged, mem.as_slice())
    }

    /// Set which notification classes the frontend negotiated (`INTERRUPTS`, `HOTPLUG_EVENTS`);
    /// the others are dropped silently.
    pub(crate) fn set_event_classes(&mut self, interrupts: bool, hotplug_events: bool) {
        self.interrupts = interrupts;
        self.hotplug_events = hotplug_events;
    }

    /// Set whether the frontend negotiated `RESET_EVENTS` (`FunctionReset` is dropped otherwise).
    pub(crate) fn set_reset_events(&mut self, on: bool) {
        self.reset_events = on;
    }

    /// Does the frontend take interrupt notifications?
    pub fn wants_interrupts(&self) -> bool {
        self.interrupts && !self.closed
    }

    /// Send an `Msi` notification (dropped unless `INTERRUPTS` was negotiated).
    pub fn msi(&mut self, msg: &MsiMessage) -> Result<()> {
        self.send_if(self.interrupts, BackendReq::Msi, msg.as_slice())
    }

    /// Send an `MsiRoute` notification (dropped unless `INTERRUPTS` was negotiated).
    pub fn msi_route(&mut self, route: &MsiRoute) -> Result<()> {
        self.send_if(self.interrupts, BackendReq::MsiRoute, route.as_slice())
    }

    /// Send an `Intx` notification (dropped unless `INTERRUPTS` was negotiated).
    pub fn intx(&mut self, level: &IntxLevel) -> Result<()> {
        self.send_if(self.interrupts, BackendReq::Intx, level.as_slice())
    }

    /// Send `FunctionAdded` (dropped unless `HOTPLUG_EVENTS` was negotiated).
    pub fn function_added(&mut self, f: &FunctionRecord) -> Result<()> {
        self.send_if(self.hotplug_events, BackendReq::FunctionAdded, f.as_slice())
    }

    /// Send `FunctionRemoved` (dropped unless `HOTPLUG_EVENTS` was negotiated).
    pub fn function_removed(&mut self, f: &FunctionRecord) -> Result<()> {
        self.send_if(
            self.hotplug_events,
            BackendReq::FunctionRemoved,
            f.as_slice(),
        )
    }

    /// Send `FunctionReset` (dropped unless `RESET_EVENTS` was negotiated).
    pub fn function_reset(&mut self, r: &FunctionReset) -> Result<()> {
        self.send_if(self.reset_events, BackendReq::FunctionReset, r.as_slice())
    }

    fn send_if(&mut self, enabled: bool, code: BackendReq, payload: &[u8]) -> Result<()> {
        if self.closed {
            return Err(Error::ChannelClosed);
        }
        if !enabled {
            return Ok(());
        }
        self.send(code, payload)
    }

    /// Send what is queued, without blocking; `Ok(true)` when nothing is left. Call it when the
    /// socket becomes writable while [`BackendChannelSender::pending`] is non-zero.
    pub fn flush(&mut self) -> Result<bool> {
        if self.closed {
            return Err(Error::ChannelClosed);
        }
        let r = self
            .drain_input()
            .and_then(|()| self.writer.flush(&self.stream));
        r.map_err(|e| self.fail(e))
    }

    /// Bytes queued for a frontend that is slow to read.
    pub fn pending(&self) -> usize {
        self.writer.pending()
    }

    /// Was the channel shut down after a failure?
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    fn send(&mut self, code: BackendReq, payload: &[u8]) -> Result<()> {
        if self.closed {
            return Err(Error::ChannelClosed);
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let r = encode(MsgHeader::notification(code as u32, false, 0, id), payload)
            .and_then(|bytes| self.drain_input().and_then(|()| self.writer.queue(&bytes)))
            .and_then(|()| self.writer.flush(&self.stream).map(drop));
        r.map_err(|e| self.fail(e))
    }

    /// Read and discard what the frontend wrote (stray replies), noticing when it hung up.
    fn drain_input(&mut self) -> Result<()> {
        let mut buf = [0u8; 4096];
        for _ in 0..16 {
            match (&self.stream).read(&mut buf) {
                Ok(0) => return Err(Error::PeerClosed),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(e)),
            }
        }
        Ok(())
    }

    fn fail(&mut self, e: Error) -> Error {
        if e.should_disconnect() {
            match e {
                Error::PeerClosed => info!("backend channel: frontend closed it"),
                _ => warn!("backend channel: {e}; the frontend no longer gets notifications"),
            }
            self.closed = true;
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
        }
        e
    }
}

impl AsRawFd for BackendChannelSender {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::send_message;
    use crate::topology::tests::sample;

    #[test]
    fn interrupt_and_hotplug_notifications_round_trip_and_honour_features() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut tx = BackendChannelSender::new(a).unwrap();
        let mut rx = BackendChannel::new(b).unwrap();
        let msi = MsiMessage {
            address: 0xfee0_0000,
            data: 0x4041,
            devfn: 0x10,
            ..Default::default()
        };
        let intx = IntxLevel {
            devfn: 0x10,
            pin: 1,
            level: 1,
            ..Default::default()
        };
        let f = FunctionRecord {
            kind: 3,
            bus: 2,
            id: crate::messages::encode_name("net0").unwrap(),
            owner: crate::messages::encode_name("qemu").unwrap(),
            ..Default::default()
        };
        tx.msi(&msi).unwrap();
        tx.intx(&intx).unwrap();
        tx.function_added(&f).unwrap();
        tx.function_removed(&f).unwrap();
        let t = Duration::from_secs(5);
        assert_eq!(rx.recv_timeout(t).unwrap(), Some(Notification::Msi(msi)));
        assert_eq!(rx.recv_timeout(t).unwrap(), Some(Notification::Intx(intx)));
        assert_eq!(
            rx.recv_timeout(t).unwrap(),
            Some(Notification::FunctionAdded(f))
        );
        assert_eq!(
            rx.recv_timeout(t).unwrap(),
            Some(Notification::FunctionRemoved(f))
        );
        // Classes the frontend did not negotiate are dropped.
        tx.set_event_classes(false, false);
        assert!(!tx.wants_interrupts());
        tx.msi(&msi).unwrap();
        tx.function_added(&f).unwrap();
        tx.chipset_memory_changed(&ChipsetMemory::default())
            .unwrap();
        assert_eq!(
            rx.recv_timeout(t).unwrap(),
            Some(Notification::ChipsetMemoryChanged(ChipsetMemory::default()))
        );
        // An invalid INTx payload is refused by the receiver.
        let bad = IntxLevel { pin: 0, ..intx };
        tx.set_event_classes(true, true);
        tx.intx(&bad).unwrap();
        assert!(rx.recv_timeout(t).is_err());
    }

    #[test]
    fn function_reset_round_trips_honours_its_feature_and_is_validated() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut tx = BackendChannelSender::new(a).unwrap();
        let mut rx = BackendChannel::new(b).unwrap();
        let t = Duration::from_secs(5);
        let r = FunctionReset {
            function: FunctionRecord {
                kind: 3,
                bus: 1,
                id: crate::messages::encode_name("gpu0").unwrap(),
                owner: crate::messages::encode_name("vmm").unwrap(),
                ..Default::default()
            },
            reason: crate::messages::ResetReason::SecondaryBusReset as u32,
            reserved: 0,
        };
        tx.function_reset(&r).unwrap();
        assert_eq!(
            rx.recv_timeout(t).unwrap(),
            Some(Notification::FunctionReset(r))
        );
        // Not negotiated: dropped (the next message is what arrives).
        tx.set_reset_events(false);
        tx.function_reset(&r).unwrap();
        tx.chipset_memory_changed(&ChipsetMemory::default())
            .unwrap();
        assert_eq!(
            rx.recv_timeout(t).unwrap(),
            Some(Notification::ChipsetMemoryChanged(ChipsetMemory::default()))
        );
        // An unknown reason is refused by the receiver.
        tx.set_reset_events(true);
        tx.function_reset(&FunctionReset { reason: 9, ..r })
            .unwrap();
        assert!(rx.recv_timeout(t).is_err());
    }

    #[test]
    fn notifications_round_trip() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut tx = BackendChannelSender::new(a).unwrap();
        let mut rx = BackendChannel::new(b).unwrap();
        assert!(rx.try_recv().unwrap().is_none());
        let topo = sample();
        tx.layout_changed(LayoutChanges::BUS_NUMBERS, &topo)
            .unwrap();
        let mem = ChipsetMemory {
            pam: [0x30; 7],
            smram: 2,
            ..Default::default()
        };
        tx.chipset_memory_changed(&mem).unwrap();
        let got = rx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
        assert_eq!(
            got,
            Notification::LayoutChanged {
                changes: LayoutChanges::BUS_NUMBERS,
                topology: topo
            }
        );
        assert_eq!(rx.recv().unwrap(), Notification::ChipsetMemoryChanged(mem));
        assert!(rx
            .recv_timeout(Duration::from_millis(10))
            .unwrap()
            .is_none());
    }

    /// A notice of `t` after `last` (serial `serial`), with its delta and the whole topology.
    fn notice_of(
        tx: &mut BackendChannelSender,
        last: &Topology,
        t: &Topology,
        serial: u64,
    ) -> Result<()> {
        let delta = LayoutDelta::between(last, t).encode();
        tx.layout_notice(&LayoutNotice {
            changes: LayoutChanges::BUS_NUMBERS,
            topology: Some(t),
            serial,
            delta: Some(&delta),
        })
    }

    fn next(t: &Topology, bus: u8) -> Topology {
        let mut n = t.clone();
        n.functions[1].secondary_bus = bus;
        n.functions[1].subordinate_bus = bus;
        n.generation += 1;
        n
    }

    fn layout(n: Option<Notification>) -> Topology {
        match n {
            Some(Notification::LayoutChanged { topology, .. }) => topology,
            other => panic!("expected LayoutChanged, got {other:?}"),
        }
    }

    /// How long a test waits for a notification.
    const WAIT: Duration = Duration::from_secs(5);

    /// A channel with `LAYOUT_DELTA` negotiated whose frontend side got `sample()` (its first
    /// notice, whole).
    fn delta_channel() -> (BackendChannelSender, BackendChannel, Topology) {
        let (a, b) = UnixStream::pair().unwrap();
        let mut tx = BackendChannelSender::new(a).unwrap();
        tx.set_layout_delta(true);
        let mut rx = BackendChannel::new(b).unwrap();
        let t0 = sample();
        // The first notice on a channel is whole, even with a delta at hand.
        assert!(tx.needs_whole_layout(1));
        notice_of(&mut tx, &Topology::default(), &t0, 1).unwrap();
        assert_eq!(layout(rx.recv_timeout(WAIT).unwrap()), t0);
        (tx, rx, t0)
    }

    /// A `LayoutDelta` payload: the change bits, then the encoded delta.
    fn delta_payload(changes: u32, delta: &[u8]) -> Vec<u8> {
        let head = LayoutChange {
            changes,
            reserved: 0,
        };
        [head.as_slice(), delta].concat()
    }

    #[test]
    fn layout_deltas_rebuild_the_whole_topology() {
        let (mut tx, mut rx, t0) = delta_channel();
        let t = WAIT;
        let whole = rx.layout_bytes();
        let (t1, t2) = (next(&t0, 2), next(&next(&t0, 2), 3));
        assert!(!tx.needs_whole_layout(2));
        notice_of(&mut tx, &t0, &t1, 2).unwrap();
        assert_eq!(layout(rx.recv_timeout(t).unwrap()), t1);
        let delta = rx.layout_bytes() - whole;
        assert!(delta < whole, "delta {delta} bytes, whole {whole}");
        // A delta needs no whole topology from the sender.
        let d = LayoutDelta::between(&t1, &t2).encode();
        tx.layout_notice(&LayoutNotice {
            changes: LayoutChanges::BUS_NUMBERS,
            topology: None,
            serial: 3,
            delta: Some(&d),
        })
        .unwrap();
        assert_eq!(layout(rx.recv_timeout(t).unwrap()), t2);
        assert_eq!(rx.layout(), Some(&t2));
        // A sender that skipped a notice (serial 4 never sent here) sends the whole form.
        let t3 = next(&t2, 4);
        assert!(tx.needs_whole_layout(5));
        notice_of(&mut tx, &t2, &t3, 5).unwrap();
        assert_eq!(layout(rx.recv_timeout(t).unwrap()), t3);
        // Without LAYOUT_DELTA every notice is whole.
        tx.set_layout_delta(false);
        assert!(tx.needs_whole_layout(6));
        let t4 = next(&t3, 5);
        notice_of(&mut tx, &t3, &t4, 6).unwrap();
        assert_eq!(layout(rx.recv_timeout(t).unwrap()), t4);
    }

    #[test]
    fn a_missed_layout_forces_a_resync() {
        let t = WAIT;
        let (mut other, mut other_rx, t0) = delta_channel();
        let (t1, t2) = (next(&t0, 2), next(&next(&t0, 2), 3));
        // The frontend misses t1 (here: a delta from t1 to t2 reaches it while it holds t0).
        notice_of(&mut other, &t0, &t1, 7).unwrap();
        notice_of(&mut other, &t1, &t2, 8).unwrap();
        assert_eq!(layout(other_rx.recv_timeout(t).unwrap()), t1);
        other_rx.set_layout(t0.clone());
        assert_eq!(
            other_rx.recv_timeout(t).unwrap(),
            Some(Notification::LayoutResync {
                changes: LayoutChanges::BUS_NUMBERS,
                generation: t2.generation
            })
        );
        assert_eq!(other_rx.layout(), None, "the stale layout is dropped");
        // Until it resynchronises, later deltas are not applied either.
        let t3 = next(&t2, 4);
        notice_of(&mut other, &t2, &t3, 9).unwrap();
        assert!(matches!(
            other_rx.recv_timeout(t).unwrap(),
            Some(Notification::LayoutResync { .. })
        ));
        // After a resync to t3 (GetTopology), deltas that end at or before it are skipped and
        // the next one applies.
        other_rx.set_layout(t3.clone());
        let t4 = next(&t3, 5);
        let stale = LayoutDelta::between(&t1, &t2).encode();
        let payload = delta_payload(LayoutChanges::BUS_NUMBERS.bits(), &stale);
        other.send(BackendReq::LayoutDelta, &payload).unwrap();
        notice_of(&mut other, &t3, &t4, 10).unwrap();
        assert_eq!(layout(other_rx.recv_timeout(t).unwrap()), t4);
    }

    #[test]
    fn malformed_layout_deltas_are_refused_and_drop_the_layout() {
        let (mut tx, mut rx, t0) = delta_channel();
        let t = WAIT;
        let t1 = next(&t0, 2);
        let good = LayoutDelta::between(&t0, &t1).encode();
        let mut hostile = Vec::new();
        // Cut short, unknown change bits, an update index past the functions, a parent that
        // is not a port, kept ranges the base does not have.
        hostile.push(delta_payload(2, &good[..good.len() - 1]));
        hostile.push(delta_payload(1 << 20, &good));
        let mut d = LayoutDelta::between(&t0, &t1);
        d.updates[0].index = 1000;
        hostile.push(delta_payload(2, &d.encode()));
        let mut d = LayoutDelta::between(&t0, &t1);
        d.updates[0].record.kind = crate::topology::FunctionKind::Endpoint as u8;
        hostile.push(delta_payload(2, &d.encode()));
        let mut d = LayoutDelta::between(&t0, &t1);
        d.ranges_kept_front = 100;
        hostile.push(delta_payload(2, &d.encode()));
        for payload in hostile {
            rx.set_layout(t0.clone());
            tx.send(BackendReq::LayoutDelta, &payload).unwrap();
            let e = rx.recv_timeout(t).unwrap_err();
            assert!(!e.should_disconnect(), "{e}");
            assert_eq!(rx.layout(), None, "a refused delta drops the layout");
        }
        // The channel still works: a whole topology, then deltas again.
        tx.layout_changed(LayoutChanges::BUS_NUMBERS, &t0).unwrap();
        assert_eq!(layout(rx.recv_timeout(t).unwrap()), t0);
        tx.send(BackendReq::LayoutDelta, &delta_payload(2, &good))
            .unwrap();
        assert_eq!(layout(rx.recv_timeout(t).unwrap()), t1);
        // Stateless decoding refuses a delta.
        let msg = Message {
            header: MsgHeader::notification(BackendReq::LayoutDelta as u32, false, 0, 1),
            payload: delta_payload(2, &[]),
            fds: Vec::new(),
        };
        assert!(Notification::decode(&msg).is_err());
    }

    #[test]
    fn frontend_replies_when_asked() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut rx = BackendChannel::new(b).unwrap();
        let mem = ChipsetMemory::default();
        let hdr = MsgHeader::notification(BackendReq::ChipsetMemoryChanged as u32, true, 0, 9);
        send_message(&a, hdr, mem.as_slice(), &[], None).unwrap();
        send_message(&a, MsgHeader::notification(77, true, 0, 10), &[], &[], None).unwrap();
        assert!(rx.recv().is_ok());
        let e = rx.recv().unwrap_err();
        assert!(matches!(e, Error::UnknownRequest(77)) && !e.should_disconnect());
        let mut r = FrameReader::new(MessageKind::Reply);
        let ok = r
            .recv_timeout(&a, Some(Duration::from_secs(5)))
            .unwrap()
            .unwrap();
        assert_eq!((ok.header.id, ok.header.status), (9, 0));
        let nosys = r
            .recv_timeout(&a, Some(Duration::from_secs(5)))
            .unwrap()
            .unwrap();
        assert_eq!((nosys.header.id, nosys.header.status), (10, libc::ENOSYS));
    }

    #[test]
    fn stuck_frontend_is_cut_off() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut tx = BackendChannelSender::with_limit(a, 64 << 10).unwrap();
        let topo = sample();
        let mut failed = None;
        for _ in 0..100_000 {
            if let Err(e) = tx.layout_changed(LayoutChanges::WINDOWS, &topo) {
                failed = Some(e);
                break;
            }
        }
        assert!(matches!(failed, Some(Error::OutputOverflow(_))));
        assert!(tx.is_closed());
        assert!(matches!(
            tx.chipset_memory_changed(&ChipsetMemory::default()),
            Err(Error::ChannelClosed)
        ));
        drop(b);
    }

    #[test]
    fn closed_frontend_is_noticed() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut tx = BackendChannelSender::new(a).unwrap();
        drop(b);
        assert!(tx
            .chipset_memory_changed(&ChipsetMemory::default())
            .is_err());
        assert!(tx.is_closed());
    }

    #[test]
    fn only_unix_stream_sockets() {
        let (d, _e) = std::os::unix::net::UnixDatagram::pair().unwrap();
        assert!(!is_unix_stream(d.as_raw_fd()));
        let f = File::open("/dev/null").unwrap();
        assert!(!is_unix_stream(f.as_raw_fd()));
        assert!(BackendChannelSender::from_file(f).is_err());
    }
}
