//! Properties of the pure decoders: header, payloads, topology, notifications and the frame
//! assembler.

use std::os::unix::net::UnixStream;

use pcierc_protocol::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use vm_memory::ByteValued;

use crate::{
    client::{check_reply, send},
    config, fail,
    probe::{next_id, Probe},
    setup, CaseResult,
};

/// A header a well-behaved peer sends: version 1, known flag bits only.
fn valid_header(kind: MessageKind) -> impl Strategy<Value = MsgHeader> {
    let need = prop_oneof![Just(0), Just(flags::NEED_REPLY)];
    (any::<u32>(), need, any::<i32>(), any::<u64>()).prop_map(move |(request, need, st, id)| {
        let (reply, status) = match kind {
            MessageKind::Request => (0, 0),
            MessageKind::Reply => (flags::REPLY, st),
        };
        MsgHeader {
            request,
            flags: PROTOCOL_VERSION | reply | need,
            size: 0,
            status,
            id,
        }
    })
}

pub(crate) fn kind() -> impl Strategy<Value = MessageKind> {
    prop_oneof![Just(MessageKind::Request), Just(MessageKind::Reply)]
}

/// A non-blocking socket pair for feeding a [`FrameReader`].
fn reader_pair() -> CaseResult<(UnixStream, UnixStream)> {
    let (tx, rx) = setup(UnixStream::pair())?;
    setup(rx.set_nonblocking(true))?;
    Ok((tx, rx))
}

proptest! {
    #![proptest_config(config(512))]

    /// decode(encode(x)) == x, through both `read_obj` and the real frame assembler, whatever
    /// pieces the bytes arrive in.
    #[test]
    fn header_and_payload_round_trip(
        (kind, header) in kind().prop_flat_map(|k| (Just(k), valid_header(k))),
        payload in vec(any::<u8>(), 0..200),
        cuts in vec(any::<Index>(), 0..4),
    ) {
        let bytes = encode(header, &payload).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let want = MsgHeader { size: payload.len() as u32, ..header };
        prop_assert_eq!(bytes.len(), HEADER_SIZE + payload.len());
        prop_assert_eq!(read_obj::<MsgHeader>(&bytes[..HEADER_SIZE]), Some(want));
        prop_assert!(validate_header(&want, kind).is_ok());
        prop_assert_eq!(&bytes[HEADER_SIZE..], &payload[..]);

        let (tx, rx) = reader_pair()?;
        let mut reader = FrameReader::new(kind);
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        at.push(bytes.len());
        at.sort_unstable();
        let (mut from, mut got) = (0, None);
        for to in at {
            setup(send(&tx, &bytes[from..to], &[]))?;
            from = to;
            if let Some(m) = reader.poll_message(&rx).map_err(|e| TestCaseError::fail(e.to_string()))? {
                prop_assert!(got.is_none(), "two messages from one");
                got = Some(m);
            }
        }
        let Some(m) = got else {
            return fail("the whole message arrived but was not assembled");
        };
        prop_assert_eq!(m.header, want);
        prop_assert_eq!(m.payload, payload);
        prop_assert!(m.fds.is_empty());
    }

    /// Any 24 bytes decode to a header, and validation accepts exactly what section 3 allows.
    #[test]
    fn header_validation_is_exact(raw in any::<[u8; HEADER_SIZE]>(), kind in kind()) {
        let Some(h) = read_obj::<MsgHeader>(&raw) else {
            return fail("24 bytes did not decode");
        };
        let ok = h.flags & 3 == PROTOCOL_VERSION
            && h.flags & flags::RESERVED == 0
            && h.payload_len() <= MAX_PAYLOAD_SIZE
            && match kind {
                MessageKind::Request => !h.is_reply() && h.status == 0,
                MessageKind::Reply => h.is_reply(),
            };
        prop_assert_eq!(validate_header(&h, kind).is_ok(), ok, "{:?}", h);
    }

    /// Fixed-size payload decoders: `Ok` only for exactly the right size and a valid value,
    /// otherwise `Err`; never a panic.
    #[test]
    fn payload_decoders_are_total(bytes in vec(any::<u8>(), 0..64), code in any::<u32>()) {
        fn check<T: ByteValued + Default + PartialEq + std::fmt::Debug + vhost::vhost_user::message::VhostUserMsgValidator>(
            code: u32,
            bytes: &[u8],
        ) -> CaseResult {
            match decode_payload::<T>(code, bytes) {
                Ok(v) => {
                    prop_assert_eq!(bytes.len(), std::mem::size_of::<T>());
                    prop_assert!(v.is_valid());
                    prop_assert_eq!(v.as_slice(), bytes);
                }
                Err(e) => prop_assert!(!e.should_disconnect(), "{}", e),
            }
            Ok(())
        }
        check::<U64>(code, &bytes)?;
        check::<FrontendInfo>(code, &bytes)?;
        check::<ConfigAccess>(code, &bytes)?;
        check::<GuestAccess>(code, &bytes)?;
        check::<ChipsetMemory>(code, &bytes)?;
        check::<LayoutChange>(code, &bytes)?;
        check::<FunctionAddress>(code, &bytes)?;
        check::<InterruptFd>(code, &bytes)?;
        check::<MsiRoute>(code, &bytes)?;
        check::<MsiMessage>(code, &bytes)?;
        check::<IntxLevel>(code, &bytes)?;
        check::<ErrorReport>(code, &bytes)?;
        check::<FunctionRecord>(code, &bytes)?;
        check::<EcamWindow>(code, &bytes)?;
        check::<AddressRange>(code, &bytes)?;
        check::<FunctionClaim>(code, &bytes)?;
        check::<FunctionRelease>(code, &bytes)?;
    }

    /// Topology decoding never panics, and what it accepts re-encodes to the same bytes.
    #[test]
    fn topology_decode_is_total_and_canonical(
        functions in 0usize..4,
        ranges in 0usize..4,
        edits in vec((any::<Index>(), any::<u8>()), 0..6),
        cut in proptest::option::of(any::<Index>()),
        noise in vec(any::<u8>(), 0..16),
    ) {
        let name = |s| encode_name(s).unwrap_or_default();
        let record = FunctionRecord {
            kind: FunctionKind::RootPort as u8,
            parent: NO_PARENT,
            id: name("rp"),
            owner: name("pcierc"),
            ..Default::default()
        };
        let range = AddressRange {
            base: 0xcf8,
            size: 4,
            space: AddressSpace::Pio as u8,
            kind: RangeKind::ConfigAddress as u8,
            ..Default::default()
        };
        let topo = Topology {
            generation: 9,
            functions: vec![record; functions],
            ecam: vec![EcamWindow { base: 0xb000_0000, size: 256 << 20, end_bus: 255, ..Default::default() }],
            ranges: vec![range; ranges],
        };
        let mut bytes = topo.encode();
        prop_assert_eq!(Topology::decode(&bytes).ok(), Some(topo));
        for (at, v) in edits {
            let i = at.index(bytes.len());
            bytes[i] = v;
        }
        if let Some(c) = cut {
            bytes.truncate(c.index(bytes.len() + 1));
        }
        bytes.extend_from_slice(&noise);
        if let Ok(t) = Topology::decode(&bytes) {
            prop_assert_eq!(t.encode(), bytes);
        }
    }

    /// Layout deltas with bytes edited, cut or extended: decoding never panics, what it accepts
    /// re-encodes to the same bytes, and applying it to the base either gives a topology that
    /// validates or fails leaving the base unchanged.
    #[test]
    fn layout_delta_decode_and_apply_are_total(
        functions in 1usize..5,
        ranges in 0usize..5,
        edits in vec((any::<Index>(), any::<u8>()), 0..6),
        cut in proptest::option::of(any::<Index>()),
        noise in vec(any::<u8>(), 0..16),
    ) {
        let name = |s| encode_name(s).unwrap_or_default();
        let port = FunctionRecord {
            kind: FunctionKind::RootPort as u8,
            parent: NO_PARENT,
            id: name("rp"),
            owner: name("pcierc"),
            ..Default::default()
        };
        let range = |base| AddressRange {
            base,
            size: 4,
            space: AddressSpace::Pio as u8,
            kind: RangeKind::ConfigAddress as u8,
            ..Default::default()
        };
        let base = Topology {
            generation: 9,
            functions: vec![port; functions],
            ecam: Vec::new(),
            ranges: (0..ranges as u64).map(range).collect(),
        };
        let mut new = base.clone();
        new.generation = 10;
        new.functions[0].secondary_bus = 1;
        new.functions.push(FunctionRecord { kind: FunctionKind::Endpoint as u8, parent: 0, ..port });
        new.ranges.insert(ranges / 2, range(0x100));
        let delta = LayoutDelta::between(&base, &new);
        let mut bytes = delta.encode();
        let mut applied = base.clone();
        prop_assert!(LayoutDelta::decode(&bytes).and_then(|d| d.apply(&mut applied)).is_ok());
        prop_assert_eq!(&applied, &new);
        for (at, v) in edits {
            let i = at.index(bytes.len());
            bytes[i] = v;
        }
        if let Some(c) = cut {
            bytes.truncate(c.index(bytes.len() + 1));
        }
        bytes.extend_from_slice(&noise);
        if let Ok(d) = LayoutDelta::decode(&bytes) {
            prop_assert_eq!(d.encode(), bytes);
            let mut t = base.clone();
            match d.apply(&mut t) {
                Ok(()) => prop_assert!(t.validate().is_ok()),
                Err(_) => prop_assert_eq!(&t, &base),
            }
        }
    }

    /// Backend-channel notifications: any code and payload decode or fail, never panic.
    #[test]
    fn notification_decode_is_total(code in 0u32..12, payload in vec(any::<u8>(), 0..160)) {
        let msg = Message {
            header: MsgHeader::notification(code, false, payload.len() as u32, 1),
            payload,
            fds: Vec::new(),
        };
        let _ = Notification::decode(&msg);
    }

    /// `FunctionReset` with bytes edited, cut or extended: it decodes only to a validated
    /// notification that encodes back to the same bytes, and never panics.
    #[test]
    fn function_reset_decode_validates(
        edits in vec((any::<Index>(), any::<u8>()), 0..4),
        cut in proptest::option::of(any::<Index>()),
        extra in vec(any::<u8>(), 0..8),
    ) {
        let ok = FunctionReset {
            function: topology::FunctionRecord {
                kind: topology::FunctionKind::Endpoint as u8,
                bus: 1,
                id: encode_name("gpu0").unwrap(),
                owner: encode_name("vmm").unwrap(),
                ..Default::default()
            },
            reason: ResetReason::SecondaryBusReset as u32,
            reserved: 0,
        };
        let mut payload = ok.as_slice().to_vec();
        for (at, v) in edits {
            let i = at.index(payload.len());
            payload[i] = v;
        }
        if let Some(c) = cut {
            payload.truncate(c.index(payload.len() + 1));
        }
        payload.extend_from_slice(&extra);
        let msg = Message {
            header: MsgHeader::notification(
                wire::BackendReq::FunctionReset as u32, false, payload.len() as u32, 1,
            ),
            payload: payload.clone(),
            fds: Vec::new(),
        };
        match Notification::decode(&msg) {
            Ok(Notification::FunctionReset(r)) => {
                prop_assert!(r.reason().is_some() && r.reserved == 0);
                prop_assert_eq!(r.as_slice(), &payload[..]);
            }
            Ok(other) => prop_assert!(false, "decoded as {:?}", other),
            Err(_) => {}
        }
    }

    /// The frame assembler on a random byte stream: every message it returns has exactly the
    /// payload its validated header announced; it stops with an error or for want of bytes.
    #[test]
    fn frame_reader_on_noise(bytes in vec(any::<u8>(), 0..2048), kind in kind()) {
        let (tx, rx) = reader_pair()?;
        setup(send(&tx, &bytes, &[]))?;
        let mut reader = FrameReader::new(kind);
        let mut consumed = 0;
        // Each message consumes at least a header, so this ends.
        for _ in 0..=bytes.len() / HEADER_SIZE {
            match reader.poll_message(&rx) {
                Ok(Some(m)) => {
                    prop_assert!(validate_header(&m.header, kind).is_ok());
                    prop_assert_eq!(m.payload.len(), m.header.payload_len());
                    consumed += HEADER_SIZE + m.payload.len();
                    prop_assert_eq!(&bytes[consumed - m.payload.len()..consumed], &m.payload[..]);
                }
                Ok(None) | Err(_) => break,
            }
        }
        prop_assert!(consumed <= bytes.len());
    }

    /// `Session::handle` on hand-built messages, including ones whose header disagrees with
    /// their payload: a reply with the request's code and id and a truthful size, or `Err` only
    /// for a header that is not a valid request.
    #[test]
    fn session_replies_are_well_formed(
        code in prop_oneof![4 => 0u32..32, 1 => any::<u32>()],
        flag_bits in prop_oneof![4 => Just(PROTOCOL_VERSION | flags::NEED_REPLY), 1 => any::<u32>()],
        size in prop_oneof![4 => Just(None), 1 => any::<u32>().prop_map(Some)],
        payload in vec(any::<u8>(), 0..48),
        negotiate in any::<bool>(),
    ) {
        let mut probe = Probe::default();
        let mut session = Session::new(next_id());
        if negotiate {
            let all = U64 { value: ProtocolFeatures::all().bits() };
            let hs = Message {
                header: MsgHeader::request(FrontendReq::SetProtocolFeatures as u32, 8, 1),
                payload: all.as_slice().to_vec(),
                fds: Vec::new(),
            };
            let ok = session.handle(&mut probe, hs).map(|r| r.status());
            prop_assert_eq!(ok.ok(), Some(Status::Ok));
        }
        let header = MsgHeader {
            flags: flag_bits,
            ..MsgHeader::request(code, size.unwrap_or(payload.len() as u32), 77)
        };
        let lies = header.payload_len() != payload.len();
        match session.handle(&mut probe, Message { header, payload, fds: Vec::new() }) {
            Ok(r) => {
                prop_assert!(validate_header(&header, MessageKind::Request).is_ok());
                check_reply(&r.header, &r.payload)?;
                prop_assert_eq!((r.header.request, r.header.id), (code, 77));
                prop_assert_eq!(r.header.payload_len(), r.payload.len());
                prop_assert_eq!(r.encode().len(), HEADER_SIZE + r.payload.len());
                if lies {
                    prop_assert_eq!(r.status(), Status::Invalid);
                }
            }
            Err(e) => {
                prop_assert!(validate_header(&header, MessageKind::Request).is_err());
                prop_assert!(e.should_disconnect(), "{}", e);
            }
        }
    }
}
