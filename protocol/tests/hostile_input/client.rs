//! The hostile client: descriptors to attach, sending with them, and reading replies back
//! checked for well-formedness.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use pcierc_protocol::*;
use proptest::prelude::*;
use vm_memory::ByteValued;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::{fail, requests::valid_payload, setup, CaseResult, WAIT};

/// A descriptor to attach to a message.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum FdKind {
    /// One end of a unix stream pair (what `SetBackendReqFd` wants); the test keeps the other
    /// end to see when the backend closes its copy.
    Stream,
    /// An eventfd (what `SetInterruptFd` wants).
    Event,
    /// A plain file.
    DevNull,
}

pub(crate) fn fd_kind() -> impl Strategy<Value = FdKind> {
    prop_oneof![
        Just(FdKind::Stream),
        Just(FdKind::Event),
        Just(FdKind::DevNull)
    ]
}

/// Descriptors made for one message, and the peers of its stream ends.
#[derive(Default)]
pub(crate) struct Fds {
    sent: Vec<Box<dyn AsRawFd>>,
    peers: Vec<UnixStream>,
}

impl Fds {
    pub(crate) fn new(kinds: &[FdKind]) -> CaseResult<Self> {
        let mut fds = Fds::default();
        for k in kinds {
            let fd: Box<dyn AsRawFd> = match k {
                FdKind::Stream => {
                    let (ours, peer) = setup(UnixStream::pair())?;
                    fds.peers.push(peer);
                    Box::new(ours)
                }
                FdKind::Event => Box::new(setup(EventFd::new(0))?),
                FdKind::DevNull => Box::new(setup(File::open("/dev/null"))?),
            };
            fds.sent.push(fd);
        }
        Ok(fds)
    }

    pub(crate) fn raw(&self) -> Vec<RawFd> {
        self.sent.iter().map(|f| f.as_raw_fd()).collect()
    }

    /// Close our copies after sending: from then on only the backend holds them.
    pub(crate) fn sent(self) -> Vec<UnixStream> {
        self.peers
    }
}

/// Has every holder of the other end of `peer` closed it (it reads end-of-file at once)?
pub(crate) fn closed(peer: &UnixStream) -> bool {
    let mut buf = [0u8; 8];
    peer.set_nonblocking(true).is_ok() && matches!((&*peer).read(&mut buf), Ok(0))
}

/// Send `bytes` with `fds` on the first piece. `Err` when the backend closed the connection
/// first (a hostile client does not care).
pub(crate) fn send(s: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut sent = 0;
    while sent < bytes.len() {
        let with = if sent == 0 { fds } else { &[] };
        match s.send_with_fds(&[&bytes[sent..]], with) {
            Ok(n) => sent += n,
            Err(e) if e.errno() == libc::EINTR => {}
            Err(e) => return Err(io::Error::from(e)),
        }
    }
    Ok(())
}

/// Everything the backend sends until it closes the connection (bounded by [`WAIT`]).
pub(crate) fn read_to_close(mut s: &UnixStream) -> CaseResult<Vec<u8>> {
    let deadline = Instant::now() + WAIT;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return fail("the backend did not close the connection within 5 s");
        }
        setup(s.set_read_timeout(Some(left)))?;
        match s.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(out),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return fail(format!("reading replies: {e}")),
        }
    }
}

/// One reply read back, checked for well-formedness.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) request: u32,
    pub(crate) id: u64,
    pub(crate) status: Status,
    pub(crate) payload: Vec<u8>,
}

/// Split the backend's byte stream into replies; anything malformed fails the case.
pub(crate) fn parse_replies(mut bytes: &[u8]) -> CaseResult<Vec<Answer>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let Some(h) = bytes.get(..HEADER_SIZE).and_then(read_obj::<MsgHeader>) else {
            return fail(format!("{} stray bytes after the last reply", bytes.len()));
        };
        let Some(payload) = bytes.get(HEADER_SIZE..HEADER_SIZE + h.payload_len()) else {
            return fail(format!("reply {h:?} announces more bytes than were sent"));
        };
        out.push(check_reply(&h, payload)?);
        bytes = &bytes[HEADER_SIZE + h.payload_len()..];
    }
    Ok(out)
}

pub(crate) fn check_reply(h: &MsgHeader, payload: &[u8]) -> CaseResult<Answer> {
    prop_assert_eq!(
        h.flags,
        PROTOCOL_VERSION | flags::REPLY,
        "reply flags of {:?}",
        h
    );
    prop_assert!(validate_header(h, MessageKind::Reply).is_ok(), "{:?}", h);
    let Ok(status) = Status::try_from(h.status) else {
        return fail(format!("unknown status in {h:?}"));
    };
    prop_assert!(
        status == Status::Ok || payload.is_empty(),
        "error reply with a payload"
    );
    Ok(Answer {
        request: h.request,
        id: h.id,
        status,
        payload: payload.to_vec(),
    })
}

/// Read exactly one reply (bounded), for request-by-request exchanges.
pub(crate) fn read_one(s: &UnixStream) -> CaseResult<Option<Answer>> {
    let mut header = [0u8; HEADER_SIZE];
    if !read_exact_or_eof(s, &mut header)? {
        return Ok(None);
    }
    let Some(h) = read_obj::<MsgHeader>(&header) else {
        return fail("short header");
    };
    prop_assert!(h.payload_len() <= MAX_PAYLOAD_SIZE, "{:?}", h);
    let mut payload = vec![0u8; h.payload_len()];
    if !read_exact_or_eof(s, &mut payload)? {
        return fail(format!("the backend closed in the middle of reply {h:?}"));
    }
    check_reply(&h, &payload).map(Some)
}

/// Fill `buf`; `false` on a clean end of file before the first byte.
fn read_exact_or_eof(mut s: &UnixStream, buf: &mut [u8]) -> CaseResult<bool> {
    setup(s.set_read_timeout(Some(WAIT)))?;
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return fail("end of file in the middle of a reply"),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset && got == 0 => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return fail(format!("no reply within 5 s: {e}")),
        }
    }
    Ok(true)
}

pub(crate) fn request(code: u32, id: u64, payload: &[u8]) -> Vec<u8> {
    let mut b = MsgHeader::request(code, payload.len() as u32, id)
        .as_slice()
        .to_vec();
    b.extend_from_slice(payload);
    b
}

pub(crate) const HANDSHAKE_ID: u64 = 0x5e7;

/// `SetProtocolFeatures` with everything, so every request passes the feature checks.
pub(crate) fn handshake() -> Vec<u8> {
    let all = U64 {
        value: ProtocolFeatures::all().bits(),
    };
    request(
        FrontendReq::SetProtocolFeatures as u32,
        HANDSHAKE_ID,
        all.as_slice(),
    )
}

/// The handshake and `SetFrontendInfo` (ownership requests need a name).
pub(crate) fn handshake_done(s: &UnixStream) -> CaseResult {
    let mut bytes = handshake();
    let info = valid_payload(FrontendReq::SetFrontendInfo);
    bytes.extend(request(
        FrontendReq::SetFrontendInfo as u32,
        HANDSHAKE_ID + 1,
        &info,
    ));
    setup(send(s, &bytes, &[]))?;
    for (code, id) in [
        (FrontendReq::SetProtocolFeatures, HANDSHAKE_ID),
        (FrontendReq::SetFrontendInfo, HANDSHAKE_ID + 1),
    ] {
        let want = Answer {
            request: code as u32,
            id,
            status: Status::Ok,
            payload: Vec::new(),
        };
        prop_assert_eq!(read_one(s)?, Some(want));
    }
    Ok(())
}
