//! Unit tests of the framing: header validation, partial and hostile input, fds, bounded output.

use super::*;
use std::io::Write;

fn pair() -> (UnixStream, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    b.set_nonblocking(true).unwrap();
    (a, b)
}

#[test]
fn header_validation() {
    let ok = MsgHeader::request(8, 16, 1);
    assert!(validate_header(&ok, MessageKind::Request).is_ok());
    assert!(matches!(
        validate_header(&ok, MessageKind::Reply),
        Err(Error::MissingReplyFlag(8))
    ));
    let bad = |h: MsgHeader| validate_header(&h, MessageKind::Request).unwrap_err();
    assert!(matches!(
        bad(MsgHeader { flags: 2, ..ok }),
        Error::BadVersion(2)
    ));
    assert!(matches!(
        bad(MsgHeader { flags: 0x11, ..ok }),
        Error::ReservedFlags(0x10)
    ));
    assert!(matches!(
        bad(ok.reply(crate::Status::Ok, 0)),
        Error::UnexpectedReplyFlag(8)
    ));
    assert!(matches!(
        bad(MsgHeader { status: 5, ..ok }),
        Error::StatusInRequest(5)
    ));
    let big = MsgHeader {
        size: MAX_PAYLOAD_SIZE as u32 + 1,
        ..ok
    };
    assert!(matches!(bad(big), Error::PayloadTooBig(_)));
    assert!(bad(big).should_disconnect());
    let reply = ok.reply(crate::Status::Invalid, 0);
    assert!(validate_header(&reply, MessageKind::Reply).is_ok());
    assert_eq!(
        (reply.id, reply.request, reply.status),
        (1, 8, libc::EINVAL)
    );
}

#[test]
fn one_byte_at_a_time() {
    let (mut a, b) = pair();
    let mut r = FrameReader::new(MessageKind::Request);
    let bytes = encode(MsgHeader::request(9, 0, 7), b"hello").unwrap();
    for (i, byte) in bytes.iter().enumerate() {
        assert!(
            r.poll_message(&b).unwrap().is_none(),
            "complete too early at {i}"
        );
        a.write_all(&[*byte]).unwrap();
    }
    let m = r.poll_message(&b).unwrap().unwrap();
    assert_eq!((m.header.request, m.header.id, m.header.size), (9, 7, 5));
    assert_eq!(m.payload, b"hello");
    assert!(!r.has_partial() && r.poll_message(&b).unwrap().is_none());
}

#[test]
fn fds_attach_to_their_message() {
    let (a, b) = pair();
    let (x, _y) = UnixStream::pair().unwrap();
    send_message(&a, MsgHeader::request(1, 0, 1), &[], &[], None).unwrap();
    send_message(
        &a,
        MsgHeader::request(6, 0, 2),
        &[],
        &[x.as_raw_fd(), x.as_raw_fd()],
        None,
    )
    .unwrap();
    send_message(&a, MsgHeader::request(1, 0, 3), b"abc", &[], None).unwrap();
    let mut r = FrameReader::new(MessageKind::Request);
    let got: Vec<_> = std::iter::from_fn(|| r.poll_message(&b).unwrap()).collect();
    assert_eq!(
        got.iter()
            .map(|m| (m.header.id, m.fds.len()))
            .collect::<Vec<_>>(),
        [(1, 0), (2, 2), (3, 0)]
    );
}

#[test]
fn too_many_fds_is_fatal() {
    let (a, b) = pair();
    let (x, _y) = UnixStream::pair().unwrap();
    let fds = [x.as_raw_fd(); MAX_FDS + 1];
    let bytes = encode(MsgHeader::request(6, 0, 1), &[]).unwrap();
    a.send_with_fds(&[&bytes[..]], &fds).unwrap();
    let e = FrameReader::new(MessageKind::Request)
        .poll_message(&b)
        .unwrap_err();
    assert!(matches!(e, Error::TooManyFds(_)) && e.should_disconnect());
}

#[test]
fn garbage_header_and_half_header() {
    let (mut a, b) = pair();
    let mut r = FrameReader::new(MessageKind::Request);
    a.write_all(&[0xff; 12]).unwrap();
    assert!(
        r.poll_message(&b).unwrap().is_none(),
        "half a header must not block or fail"
    );
    assert!(r.has_partial());
    a.write_all(&[0xff; 12]).unwrap();
    assert!(r.poll_message(&b).unwrap_err().should_disconnect());
    // A complete message, then EOF: the message, then PeerClosed.
    let (mut a, b) = pair();
    let mut r = FrameReader::new(MessageKind::Request);
    a.write_all(&encode(MsgHeader::request(16, 0, 1), &[]).unwrap())
        .unwrap();
    drop(a);
    assert!(matches!(r.poll_message(&b), Ok(Some(_))));
    assert!(matches!(r.poll_message(&b), Err(Error::PeerClosed)));
    // A header announcing 16 MiB followed by 3 bytes costs a read chunk or two, not 16 MiB.
    let (mut a, b) = pair();
    let hdr = MsgHeader {
        size: MAX_PAYLOAD_SIZE as u32,
        ..MsgHeader::request(16, 0, 1)
    };
    a.write_all(hdr.as_slice()).unwrap();
    a.write_all(b"abc").unwrap();
    let mut r = FrameReader::new(MessageKind::Request);
    assert!(r.poll_message(&b).unwrap().is_none());
    assert_eq!(r.payload.len(), 3);
    assert!(r.payload.capacity() <= 2 * READ_CHUNK);
}

#[test]
fn writer_is_bounded() {
    let (a, b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    let mut w = FrameWriter::new(4096);
    let msg = encode(MsgHeader::request(1, 0, 1), &[0u8; 1000]).unwrap();
    let mut overflowed = false;
    for _ in 0..100_000 {
        match w.queue(&msg) {
            Ok(()) => {
                w.flush(&a).unwrap();
            }
            Err(e) => {
                assert!(matches!(e, Error::OutputOverflow(_)) && e.should_disconnect());
                overflowed = true;
                break;
            }
        }
    }
    assert!(
        overflowed,
        "a peer that never reads must overflow the writer"
    );
    drop(b);
}

#[test]
fn recv_timeout_keeps_partial_message() {
    let (mut a, b) = pair();
    let bytes = encode(MsgHeader::request(3, 0, 4), &[]).unwrap();
    a.write_all(&bytes[..10]).unwrap();
    let mut r = FrameReader::new(MessageKind::Request);
    assert!(r
        .recv_timeout(&b, Some(Duration::from_millis(20)))
        .unwrap()
        .is_none());
    a.write_all(&bytes[10..]).unwrap();
    let m = r
        .recv_timeout(&b, Some(Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    assert_eq!(m.header.id, 4);
}

#[test]
fn payload_decoding() {
    use crate::messages::ConfigAccess;
    let ok = ConfigAccess {
        offset: 4,
        width: 4,
        ..Default::default()
    };
    assert_eq!(
        decode_payload::<ConfigAccess>(8, ok.as_slice()).unwrap(),
        ok
    );
    assert!(matches!(
        decode_payload::<ConfigAccess>(8, &[0; 15]),
        Err(Error::PayloadSize {
            request: 8,
            expected: 16,
            got: 15
        })
    ));
    let bad = ConfigAccess { width: 3, ..ok };
    assert!(matches!(
        decode_payload::<ConfigAccess>(8, bad.as_slice()),
        Err(Error::InvalidPayload("ConfigAccess"))
    ));
}
