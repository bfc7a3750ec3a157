//! Unit tests of the framing: header validation, partial and hostile input, fds, bounded output.

use super::*;
use std::io::Write;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

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
    assert!(r.has_partial() && !r.has_frame());
    assert!(r.buffer_capacity() <= 2 * reader::READ_CHUNK);
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

/// Three messages of different sizes, as one byte string, and what each must decode to.
fn three_messages() -> (Vec<u8>, Vec<(u64, Vec<u8>)>) {
    let msgs: Vec<(u64, Vec<u8>)> = vec![(1, b"first".to_vec()), (2, vec![]), (3, vec![7; 100])];
    let bytes = msgs
        .iter()
        .flat_map(|(id, p)| encode(MsgHeader::request(9, 0, *id), p).unwrap())
        .collect();
    (bytes, msgs)
}

fn drain(r: &mut FrameReader) -> Vec<(u64, Vec<u8>, usize)> {
    std::iter::from_fn(|| {
        r.next_frame()
            .unwrap()
            .map(|f| (f.header.id, f.payload.to_vec(), f.fds.len()))
    })
    .collect()
}

#[test]
fn split_at_every_byte_boundary() {
    let (bytes, want) = three_messages();
    let want: Vec<_> = want.into_iter().map(|(id, p)| (id, p, 0)).collect();
    for cut in 0..=bytes.len() {
        let (mut a, b) = pair();
        let mut r = FrameReader::new(MessageKind::Request);
        let mut got = Vec::new();
        for piece in [&bytes[..cut], &bytes[cut..]] {
            a.write_all(piece).unwrap();
            while let Some(m) = r.poll_message(&b).unwrap() {
                got.push((m.header.id, m.payload, m.fds.len()));
            }
        }
        assert_eq!(got, want, "cut at {cut}");
        assert!(!r.has_partial(), "cut at {cut}");
    }
}

#[test]
fn several_messages_in_one_read() {
    let (mut a, b) = pair();
    let (bytes, want) = three_messages();
    a.write_all(&bytes).unwrap();
    let mut r = FrameReader::new(MessageKind::Request);
    assert!(r.next_frame().unwrap().is_none() && !r.has_frame());
    // One read takes all three, and says the socket is empty: no read that returns EAGAIN is
    // needed to find out.
    assert_eq!(r.fill(&b, false).unwrap(), Fill::Data { more: false });
    assert!(r.has_frame());
    let got = drain(&mut r);
    assert_eq!(
        got,
        want.into_iter()
            .map(|(id, p)| (id, p, 0))
            .collect::<Vec<_>>()
    );
    assert!(!r.has_partial() && !r.has_frame());
    assert_eq!(r.fill(&b, false).unwrap(), Fill::Empty);
    drop(a);
    assert!(matches!(r.fill(&b, false), Err(Error::PeerClosed)));
}

#[test]
fn a_read_that_fills_the_buffer_asks_for_more() {
    let (mut a, b) = pair();
    // More than the reader's first buffer: the first read fills it and says so.
    let big = encode(MsgHeader::request(9, 0, 1), &[1; 3000]).unwrap();
    for _ in 0..4 {
        a.write_all(&big).unwrap();
    }
    let mut r = FrameReader::new(MessageKind::Request);
    assert_eq!(r.fill(&b, false).unwrap(), Fill::Data { more: true });
    let mut got = 0;
    loop {
        while let Some(f) = r.next_frame().unwrap() {
            assert_eq!(f.payload, &[1; 3000][..]);
            got += 1;
        }
        if let Fill::Data { more: false } | Fill::Empty = r.fill(&b, false).unwrap() {
            break;
        }
    }
    got += drain(&mut r).len();
    assert_eq!(got, 4);
}

#[test]
fn fds_with_partial_messages() {
    let (a, b) = pair();
    let (x, _y) = UnixStream::pair().unwrap();
    let xfd = x.as_raw_fd();
    let m1 = encode(MsgHeader::request(1, 0, 1), b"one").unwrap();
    let m2 = encode(MsgHeader::request(6, 0, 2), b"two").unwrap();
    let m3 = encode(MsgHeader::request(1, 0, 3), b"three").unwrap();
    let m4 = encode(MsgHeader::request(6, 0, 4), b"four").unwrap();
    let send = |bytes: &[u8], fds: &[RawFd]| {
        assert_eq!(
            sys::send(a.as_raw_fd(), bytes, fds, 0).unwrap(),
            bytes.len()
        );
    };
    let mut r = FrameReader::new(MessageKind::Request);
    // m1 in two pieces; m2 (with two fds) sent behind the second piece: one read takes the end
    // of m1 and m2 whole, and the fds belong to m2, whose first byte they came with.
    send(&m1[..10], &[]);
    assert!(r.poll_message(&b).unwrap().is_none());
    send(&m1[10..], &[]);
    send(&m2, &[xfd, xfd]);
    // m3 without fds, and m4 whose fds come with its second piece (mid-header): they belong
    // to m4.
    send(&m3, &[]);
    send(&m4[..5], &[]);
    send(&m4[5..], &[xfd]);
    let mut got = Vec::new();
    while let Some(m) = r.poll_message(&b).unwrap() {
        got.push((m.header.id, m.payload, m.fds.len()));
    }
    assert_eq!(
        got,
        vec![
            (1, b"one".to_vec(), 0),
            (2, b"two".to_vec(), 2),
            (3, b"three".to_vec(), 0),
            (4, b"four".to_vec(), 1)
        ]
    );
    // A message whose fds come in two sends, MAX_FDS in all: accepted; one more is fatal.
    let m5 = encode(MsgHeader::request(6, 0, 5), b"five").unwrap();
    send(&m5[..3], &[xfd; MAX_FDS - 1]);
    send(&m5[3..], &[xfd]);
    let m = r.poll_message(&b).unwrap().unwrap();
    assert_eq!((m.header.id, m.fds.len()), (5, MAX_FDS));
    send(&m5[..3], &[xfd; MAX_FDS]);
    send(&m5[3..], &[xfd]);
    let e = loop {
        match r.poll_message(&b) {
            Ok(None) => continue,
            Ok(Some(m)) => panic!("message {} with too many fds", m.header.id),
            Err(e) => break e,
        }
    };
    assert!(matches!(e, Error::TooManyFds(n) if n == MAX_FDS + 1));
}

#[test]
fn buffer_shrinks_after_a_large_message() {
    let (mut a, b) = pair();
    let t = std::thread::spawn(move || {
        a.write_all(&encode(MsgHeader::request(16, 0, 1), &vec![3; 1 << 20]).unwrap())
            .unwrap();
        a.write_all(&encode(MsgHeader::request(16, 0, 2), b"small").unwrap())
            .unwrap();
        a
    });
    let mut r = FrameReader::new(MessageKind::Request);
    let big = r
        .recv_timeout(&b, Some(Duration::from_secs(10)))
        .unwrap()
        .unwrap();
    assert_eq!(big.payload.len(), 1 << 20);
    let _a = t.join().unwrap();
    let small = r
        .recv_timeout(&b, Some(Duration::from_secs(10)))
        .unwrap()
        .unwrap();
    assert_eq!(small.payload, b"small");
    // The next read starts from a small buffer again.
    assert_eq!(r.fill(&b, false).unwrap(), Fill::Empty);
    assert!(r.buffer_capacity() <= 2 * reader::READ_CHUNK);
}

#[test]
fn too_many_fds_behind_a_good_message_fail_after_it() {
    let (a, b) = pair();
    let (x, _y) = UnixStream::pair().unwrap();
    let good = encode(MsgHeader::request(1, 0, 1), b"ok").unwrap();
    let bad = encode(MsgHeader::request(6, 0, 2), &[]).unwrap();
    a.send_with_fds(&[&good[..]], &[]).unwrap();
    a.send_with_fds(&[&bad[..]], &[x.as_raw_fd(); MAX_FDS + 1])
        .unwrap();
    let mut r = FrameReader::new(MessageKind::Request);
    // One read takes both; the first is still handed out whole, then the stream breaks.
    let m = r.poll_message(&b).unwrap().unwrap();
    assert_eq!((m.header.id, m.payload.as_slice()), (1, &b"ok"[..]));
    let e = r.poll_message(&b).unwrap_err();
    assert!(matches!(e, Error::TooManyFds(_)) && e.should_disconnect());
}
