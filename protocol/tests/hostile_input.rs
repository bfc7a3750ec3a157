//! Hostile input against the backend side of the protocol (`docs/protocol.md` sections 2, 3, 6
//! and 9), as property tests: random bytes, truncated headers, headers whose `size` lies, unknown
//! codes, wrong descriptor counts and wrong payload sizes for every request code.
//!
//! Each case serves one socket-pair connection with the real [`Connection::serve`] on its own
//! thread (a small [`BackendHandler`] behind it) and checks that:
//! - every reply is well-formed (header flags, size = bytes that follow, empty payload on error);
//! - each malformed, well-framed request gets one error reply with its code and id, and every
//!   descriptor it carried is closed by the time the reply arrives;
//! - broken framing closes the connection, and the backend thread ends (nothing hangs, a panic
//!   fails the case: the thread is joined), telling the handler `disconnected` once;
//! - a well-formed request on a fresh connection to the same handler still works.
//!
//! Every wait is bounded by [`WAIT`]. Pure decoder properties (header, payloads, topology,
//! notifications, the frame assembler) follow at the end. Failing cases are persisted in
//! `tests/proptest-regressions/hostile_input.txt`.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use pcierc_protocol::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{FileFailurePersistence, TestCaseError};
use vm_memory::ByteValued;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Upper bound of every wait: a backend that takes longer to answer or to close has hung.
const WAIT: Duration = Duration::from_secs(5);

/// Where proptest records failing cases (its default for a `tests/` file would be
/// `tests/hostile_input.proptest-regressions`, since no `lib.rs` is beside or above it).
const REGRESSIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/proptest-regressions/hostile_input.txt"
);

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        max_shrink_iters: 1024,
        ..ProptestConfig::default()
    }
}

type CaseResult<T = ()> = Result<T, TestCaseError>;

fn fail<T>(why: impl std::fmt::Display) -> CaseResult<T> {
    Err(TestCaseError::fail(why.to_string()))
}

/// Harness set-up failures (socket pairs, eventfds) fail the case instead of panicking.
fn setup<T, E: std::fmt::Display>(r: Result<T, E>) -> CaseResult<T> {
    r.or_else(|e| fail(format!("test set-up: {e}")))
}

// ---------------------------------------------------------------------------------------------
// The backend under test.

/// A small handler: answers what it is asked, records the connections that went away. Each
/// serving thread has its own clone; the clones share the record.
#[derive(Clone, Default)]
struct Probe {
    disconnected: Arc<Mutex<Vec<ConnectionId>>>,
    /// Size of the `SaveState` blob (0: [`BLOB`]).
    state_size: usize,
}

/// What the probe returns for config reads of devfn 0: wider than any access (the session masks).
const PROBE_WORD: u32 = 0xdead_beef;
/// The only blob `LoadState` accepts.
const BLOB: &[u8] = b"blob";

impl BackendHandler for Probe {
    fn features(&mut self) -> Features {
        Features::all()
    }
    fn topology(&mut self) -> Topology {
        Topology::default()
    }
    fn config_read(&mut self, addr: ConfigAddress, _width: u8) -> Result<u32, Status> {
        if addr.devfn == 0 {
            Ok(PROBE_WORD)
        } else {
            Err(Status::NoDevice)
        }
    }
    fn config_write(&mut self, _: ConfigAddress, _: u8, _: u32) -> Result<(), Status> {
        Ok(())
    }
    fn pio_read(&mut self, _: u64, _: u8) -> Result<u64, Status> {
        Ok(u64::MAX)
    }
    fn pio_write(&mut self, _: u64, _: u8, _: u64) -> Result<(), Status> {
        Ok(())
    }
    fn mmio_read(&mut self, _: u64, _: u8) -> Result<u64, Status> {
        Ok(u64::MAX)
    }
    fn mmio_write(&mut self, _: u64, _: u8, _: u64) -> Result<(), Status> {
        Ok(())
    }
    fn reset(&mut self) -> Result<(), Status> {
        Ok(())
    }
    fn save_state(&mut self) -> Result<Vec<u8>, Status> {
        Ok(match self.state_size {
            0 => BLOB.to_vec(),
            n => vec![0x5a; n],
        })
    }
    fn load_state(&mut self, blob: &[u8]) -> Result<(), Status> {
        if blob == BLOB {
            Ok(())
        } else {
            Err(Status::BadMessage)
        }
    }
    fn chipset_memory(&mut self) -> ChipsetMemory {
        ChipsetMemory::default()
    }
    fn report_error(&mut self, _: ConnectionId, _: &ErrorReport) -> Result<(), Status> {
        Ok(())
    }
    fn raise_pme(&mut self, _: ConnectionId, _: &FunctionAddress) -> Result<(), Status> {
        Ok(())
    }
    fn set_interrupt_fd(
        &mut self,
        _: ConnectionId,
        _: &InterruptFd,
        _: Option<EventFd>,
    ) -> Result<(), Status> {
        Ok(())
    }
    fn claim_function(&mut self, _: ConnectionId, _: &FunctionClaim) -> Result<(), Status> {
        Ok(())
    }
    fn release_function(&mut self, _: ConnectionId, _: &FunctionRelease) -> Result<(), Status> {
        Ok(())
    }
    fn set_config_snapshot(&mut self, _: ConnectionId, _: File) -> Result<(), Status> {
        Ok(())
    }
    fn disconnected(&mut self, conn: ConnectionId) {
        self.disconnected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
    }
}

fn next_id() -> ConnectionId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    ConnectionId(NEXT.fetch_add(1, Ordering::Relaxed))
}

/// One connection served by [`Connection::serve`] on its own thread.
struct Served {
    id: ConnectionId,
    handler: Probe,
    done: mpsc::Receiver<Result<(), String>>,
    thread: JoinHandle<()>,
}

/// Serve `stream` with `handler`; the client gets the other end (blocking, bounded timeouts).
fn serve(handler: &Probe) -> CaseResult<(UnixStream, Served)> {
    let (client, backend) = setup(UnixStream::pair())?;
    setup(client.set_read_timeout(Some(WAIT)))?;
    setup(client.set_write_timeout(Some(WAIT)))?;
    let (tx, done) = mpsc::channel();
    let id = next_id();
    let mut h = handler.clone();
    let thread = thread::spawn(move || {
        let r = Connection::new(backend, id).and_then(|c| c.serve(&mut h));
        // `serve` only gives up on errors that must drop the connection.
        let r = r.map_err(|e| format!("{e} (fatal: {})", e.should_disconnect()));
        let _ = tx.send(r);
    });
    let served = Served {
        id,
        handler: handler.clone(),
        done,
        thread,
    };
    Ok((client, served))
}

impl Served {
    /// Wait (bounded) for the serving thread to end. A hang or a panic fails the case; a
    /// protocol error that closed the connection is returned as `Err` inside.
    fn finish(self) -> CaseResult<Result<(), String>> {
        let outcome = match self.done.recv_timeout(WAIT) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => return fail("the backend did not end within 5 s"),
            Err(RecvTimeoutError::Disconnected) => Err(String::new()),
        };
        if let Err(panic) = self.thread.join() {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            return fail(format!("the backend panicked: {msg}"));
        }
        let gone = self
            .handler
            .disconnected
            .lock()
            .map(|d| d.iter().filter(|&&c| c == self.id).count())
            .unwrap_or(0);
        prop_assert_eq!(gone, 1, "`disconnected` must be called once per connection");
        Ok(outcome)
    }
}

/// A well-formed exchange on a fresh connection to the same handler.
fn fresh_connection_works(handler: &Probe) -> CaseResult {
    let (client, served) = serve(handler)?;
    // Without the shared-memory read path: every read must be a message the backend answers.
    let opts = FrontendOptions {
        protocol_features: ProtocolFeatures::all() - ProtocolFeatures::CONFIG_SNAPSHOT,
        ..FrontendOptions::tool("after")
    };
    let mut fe = match Frontend::from_stream(client, opts) {
        Ok(fe) => fe,
        Err(e) => return fail(format!("handshake on a fresh connection failed: {e}")),
    };
    fe.set_timeout(Some(WAIT));
    prop_assert!(!fe.snapshot_active());
    let word = fe.config_read(0, 0, 0, 0, 4);
    let byte = fe.config_read(0, 0, 0, 1, 1);
    drop(fe);
    prop_assert_eq!(word.ok(), Some(PROBE_WORD));
    prop_assert_eq!(
        byte.ok(),
        Some(PROBE_WORD & 0xff),
        "the session masks to the width"
    );
    prop_assert_eq!(served.finish()?, Ok(()));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The hostile client.

/// A descriptor to attach to a message.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum FdKind {
    /// One end of a unix stream pair (what `SetBackendReqFd` wants); the test keeps the other
    /// end to see when the backend closes its copy.
    Stream,
    /// An eventfd (what `SetInterruptFd` wants).
    Event,
    /// A plain file.
    DevNull,
}

fn fd_kind() -> impl Strategy<Value = FdKind> {
    prop_oneof![
        Just(FdKind::Stream),
        Just(FdKind::Event),
        Just(FdKind::DevNull)
    ]
}

/// Descriptors made for one message, and the peers of its stream ends.
#[derive(Default)]
struct Fds {
    sent: Vec<Box<dyn AsRawFd>>,
    peers: Vec<UnixStream>,
}

impl Fds {
    fn new(kinds: &[FdKind]) -> CaseResult<Self> {
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

    fn raw(&self) -> Vec<RawFd> {
        self.sent.iter().map(|f| f.as_raw_fd()).collect()
    }

    /// Close our copies after sending: from then on only the backend holds them.
    fn sent(self) -> Vec<UnixStream> {
        self.peers
    }
}

/// Has every holder of the other end of `peer` closed it (it reads end-of-file at once)?
fn closed(peer: &UnixStream) -> bool {
    let mut buf = [0u8; 8];
    peer.set_nonblocking(true).is_ok() && matches!((&*peer).read(&mut buf), Ok(0))
}

/// Send `bytes` with `fds` on the first piece. `Err` when the backend closed the connection
/// first (a hostile client does not care).
fn send(s: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
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
fn read_to_close(mut s: &UnixStream) -> CaseResult<Vec<u8>> {
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
struct Answer {
    request: u32,
    id: u64,
    status: Status,
    payload: Vec<u8>,
}

/// Split the backend's byte stream into replies; anything malformed fails the case.
fn parse_replies(mut bytes: &[u8]) -> CaseResult<Vec<Answer>> {
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

fn check_reply(h: &MsgHeader, payload: &[u8]) -> CaseResult<Answer> {
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
fn read_one(s: &UnixStream) -> CaseResult<Option<Answer>> {
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

fn request(code: u32, id: u64, payload: &[u8]) -> Vec<u8> {
    let mut b = MsgHeader::request(code, payload.len() as u32, id)
        .as_slice()
        .to_vec();
    b.extend_from_slice(payload);
    b
}

const HANDSHAKE_ID: u64 = 0x5e7;

/// `SetProtocolFeatures` with everything, so every request passes the feature checks.
fn handshake() -> Vec<u8> {
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
fn handshake_done(s: &UnixStream) -> CaseResult {
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

// ---------------------------------------------------------------------------------------------
// Requests: what each code takes, a valid payload, and ways to get it wrong.

/// Every request code this version of the crate knows.
fn known_codes() -> Vec<FrontendReq> {
    (0..=u8::MAX)
        .filter_map(|c| FrontendReq::try_from(u32::from(c)).ok())
        .collect()
}

/// The exact payload size of `code`, `None` for `LoadState` (a blob of any size). Exhaustive on
/// purpose: a new request code must be described here before these tests build.
fn payload_size(code: FrontendReq) -> Option<usize> {
    use std::mem::size_of;
    use FrontendReq::*;
    Some(match code {
        SetFeatures | SetProtocolFeatures => size_of::<U64>(),
        SetFrontendInfo => size_of::<FrontendInfo>(),
        ConfigRead | ConfigWrite => size_of::<ConfigAccess>(),
        PioRead | PioWrite | MmioRead | MmioWrite => size_of::<GuestAccess>(),
        ReportError => size_of::<ErrorReport>(),
        RaisePme => size_of::<FunctionAddress>(),
        SetInterruptFd => size_of::<InterruptFd>(),
        ClaimFunction => size_of::<FunctionClaim>(),
        ReleaseFunction => size_of::<FunctionRelease>(),
        LoadState => return None,
        GetFeatures | GetProtocolFeatures | SetBackendReqFd | GetTopology | Reset | SaveState
        | GetChipsetMemory | SetConfigSnapshot => 0,
    })
}

/// A payload `code` accepts (with the descriptors of [`valid_fds`]).
fn valid_payload(code: FrontendReq) -> Vec<u8> {
    use FrontendReq::*;
    let guest = |addr| GuestAccess {
        addr,
        width: 4,
        ..Default::default()
    };
    match code {
        SetFeatures | SetProtocolFeatures => U64::default().as_slice().to_vec(),
        SetFrontendInfo => FrontendInfo {
            role: FrontendRole::Tool as u32,
            flags: 0,
            name: encode_name("hostile").unwrap_or_default(),
        }
        .as_slice()
        .to_vec(),
        ConfigRead | ConfigWrite => ConfigAccess {
            width: 4,
            ..Default::default()
        }
        .as_slice()
        .to_vec(),
        PioRead | PioWrite => guest(0xcf8).as_slice().to_vec(),
        MmioRead | MmioWrite => guest(0xb000_0000).as_slice().to_vec(),
        ReportError => ErrorReport {
            status: 1,
            ..Default::default()
        }
        .as_slice()
        .to_vec(),
        RaisePme => FunctionAddress::default().as_slice().to_vec(),
        SetInterruptFd => InterruptFd::default().as_slice().to_vec(),
        ClaimFunction => FunctionClaim {
            port: encode_name("rp1").unwrap_or_default(),
            id: encode_name("net0").unwrap_or_default(),
            ..Default::default()
        }
        .as_slice()
        .to_vec(),
        ReleaseFunction => FunctionRelease {
            id: encode_name("net0").unwrap_or_default(),
            ..Default::default()
        }
        .as_slice()
        .to_vec(),
        LoadState => BLOB.to_vec(),
        _ => Vec::new(),
    }
}

/// The descriptors `code` takes with [`valid_payload`].
fn valid_fds(code: FrontendReq) -> Vec<FdKind> {
    match code {
        FrontendReq::SetBackendReqFd => vec![FdKind::Stream],
        FrontendReq::SetInterruptFd => vec![FdKind::Event],
        // The session only counts it; what the descriptor is, is the handler's business.
        FrontendReq::SetConfigSnapshot => vec![FdKind::DevNull],
        _ => Vec::new(),
    }
}

/// A well-framed request that must fail, and the status it must fail with (`None`: any error).
#[derive(Clone, Debug)]
struct Bad {
    code: u32,
    payload: Vec<u8>,
    fds: Vec<FdKind>,
    expect: Option<Status>,
}

/// A second `SetProtocolFeatures` or `SetFrontendInfo` (the handshake sent the first) is out of
/// sequence (EPROTO, section 7) and its payload or descriptors are wrong too (EINVAL): the order
/// of those checks is left open here.
fn expected(code: FrontendReq, status: Status) -> Option<Status> {
    let again = matches!(
        code,
        FrontendReq::SetProtocolFeatures | FrontendReq::SetFrontendInfo
    );
    (!again).then_some(status)
}

/// A request code no version-1 backend knows.
fn unknown_code() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0u32), 1u32..64, Just(u32::MAX), any::<u32>()]
        .prop_filter("known code", |c| FrontendReq::try_from(*c).is_err())
}

/// Malformed requests, each a small mutation of a valid one (docs/protocol.md section 9).
fn bad_request() -> impl Strategy<Value = Bad> {
    let code = prop::sample::select(known_codes());
    let unknown = (
        unknown_code(),
        vec(any::<u8>(), 0..48),
        vec(fd_kind(), 0..=8),
    )
        .prop_map(|(code, payload, fds)| Bad {
            code,
            payload,
            fds,
            expect: Some(Status::NotSupported),
        });
    // Every code but LoadState has an exact size.
    let wrong_size = (code.clone(), 0usize..80, any::<u8>()).prop_filter_map(
        "right size",
        |(code, len, fill)| {
            let size = payload_size(code)?;
            (len != size).then(|| Bad {
                code: code as u32,
                payload: vec![fill; len],
                fds: Vec::new(),
                expect: expected(code, Status::Invalid),
            })
        },
    );
    // Descriptors on a request that takes none: EINVAL before anything else is looked at.
    let unexpected_fds =
        (code, vec(fd_kind(), 1..=8)).prop_filter_map("takes descriptors", |(code, fds)| {
            valid_fds(code).is_empty().then(|| Bad {
                code: code as u32,
                payload: valid_payload(code),
                fds,
                expect: expected(code, Status::Invalid),
            })
        });
    // SetBackendReqFd: empty payload and exactly one unix stream socket.
    let channel = (0usize..16, vec(fd_kind(), 0..=8)).prop_filter_map(
        "valid SetBackendReqFd",
        |(len, fds)| {
            (len != 0 || fds != [FdKind::Stream]).then(|| Bad {
                code: FrontendReq::SetBackendReqFd as u32,
                payload: vec![0; len],
                fds,
                expect: Some(Status::Invalid),
            })
        },
    );
    // SetConfigSnapshot: empty payload and exactly one descriptor.
    let snapshot = (0usize..16, vec(fd_kind(), 0..=8)).prop_filter_map(
        "valid SetConfigSnapshot",
        |(len, fds)| {
            (len != 0 || fds.len() != 1).then(|| Bad {
                code: FrontendReq::SetConfigSnapshot as u32,
                payload: vec![0; len],
                fds,
                expect: Some(Status::Invalid),
            })
        },
    );
    // SetInterruptFd: one eventfd to register, none to unregister, no other flag.
    let irqfd = (any::<u16>(), vec(fd_kind(), 0..=8)).prop_filter_map(
        "valid SetInterruptFd",
        |(flags, fds)| {
            let unregister = flags == InterruptFd::UNREGISTER;
            let fine = flags & !InterruptFd::UNREGISTER == 0
                && if unregister {
                    fds.is_empty()
                } else {
                    fds == [FdKind::Event]
                };
            let payload = InterruptFd {
                flags,
                ..Default::default()
            };
            (!fine).then(|| Bad {
                code: FrontendReq::SetInterruptFd as u32,
                payload: payload.as_slice().to_vec(),
                fds,
                expect: Some(Status::Invalid),
            })
        },
    );
    // LoadState takes any size: the handler decides.
    let blob = vec(any::<u8>(), 0..64).prop_filter_map("the valid blob", |b| {
        (b != BLOB).then(|| Bad {
            code: FrontendReq::LoadState as u32,
            payload: b,
            fds: Vec::new(),
            expect: Some(Status::BadMessage),
        })
    });
    prop_oneof![
        unknown,
        wrong_size,
        unexpected_fds,
        channel,
        snapshot,
        irqfd,
        blob
    ]
}

// ---------------------------------------------------------------------------------------------
// Fuzzed framing.

/// How a header's `size` relates to the payload bytes that follow it.
#[derive(Copy, Clone, Debug)]
enum Size {
    Exact,
    Delta(i8),
    Raw(u32),
    OverMax(u32),
}

impl Size {
    fn resolve(self, len: usize) -> u32 {
        match self {
            Size::Exact => len as u32,
            Size::Delta(d) => (len as i64 + i64::from(d)).max(0) as u32,
            Size::Raw(v) => v,
            Size::OverMax(k) => (MAX_PAYLOAD_SIZE as u32)
                .saturating_add(1)
                .saturating_add(k),
        }
    }
}

fn size_field() -> impl Strategy<Value = Size> {
    prop_oneof![
        6 => Just(Size::Exact),
        3 => any::<i8>().prop_map(Size::Delta),
        1 => any::<u32>().prop_map(Size::Raw),
        1 => (0u32..4).prop_map(Size::OverMax),
    ]
}

/// One message as a hostile peer would frame it: every header field may be wrong.
fn hostile_frame() -> impl Strategy<Value = Vec<u8>> {
    let known = prop::sample::select(known_codes()).prop_map(|c| c as u32);
    let code = prop_oneof![6 => known, 1 => unknown_code()];
    let flag_bits = prop_oneof![
        6 => Just(PROTOCOL_VERSION | flags::NEED_REPLY),
        1 => Just(PROTOCOL_VERSION),
        1 => Just(PROTOCOL_VERSION | flags::REPLY),
        1 => any::<u32>(),
    ];
    let status = prop_oneof![8 => Just(0i32), 1 => any::<i32>()];
    let header = (code, flag_bits, size_field(), status, any::<u64>());
    prop_oneof![
        1 => vec(any::<u8>(), 0..48),
        4 => (header, vec(any::<u8>(), 0..48)).prop_map(
            |((request, flags, size, status, id), payload)| {
                let h = MsgHeader {
                    request,
                    flags,
                    size: size.resolve(payload.len()),
                    status,
                    id,
                };
                let mut b = h.as_slice().to_vec();
                b.extend_from_slice(&payload);
                b
            }
        ),
    ]
}

/// Descriptors attached to one send: usually none, sometimes a few, sometimes over MAX_FDS.
fn fd_set() -> impl Strategy<Value = Vec<FdKind>> {
    prop_oneof![
        6 => Just(Vec::new()),
        3 => vec(fd_kind(), 1..=3),
        1 => vec(fd_kind(), MAX_FDS + 1..=MAX_FDS + 3),
    ]
}

/// A frame sent as one or two `sendmsg` calls, descriptors with the first or (`late`) the
/// second, i.e. in the middle of the header or payload.
#[derive(Clone, Debug)]
struct Frame {
    bytes: Vec<u8>,
    fds: Vec<FdKind>,
    split: Option<Index>,
    late: bool,
}

fn hostile_send() -> impl Strategy<Value = Frame> {
    let split = proptest::option::of(any::<Index>());
    (hostile_frame(), fd_set(), split, any::<bool>()).prop_map(|(bytes, fds, split, late)| Frame {
        bytes,
        fds,
        split,
        late,
    })
}

// ---------------------------------------------------------------------------------------------
// Properties: the serving side.

proptest! {
    #![proptest_config(config(160))]

    /// Whatever bytes and descriptors arrive, the backend answers with well-formed replies,
    /// closes the connection when it must, ends without panicking, leaks no descriptor, and
    /// keeps serving fresh connections.
    #[test]
    fn hostile_streams_never_break_the_backend(
        negotiate in any::<bool>(),
        sends in vec(hostile_send(), 0..8),
    ) {
        let handler = Probe::default();
        let (client, served) = serve(&handler)?;
        let mut peers = Vec::new();
        let first = if negotiate { handshake() } else { Vec::new() };
        let mut pieces = vec![(first, Fds::default())];
        for s in &sends {
            let cut = s.split.map_or(s.bytes.len(), |i| i.index(s.bytes.len() + 1));
            let (mut early, mut late) = (Fds::new(&s.fds)?, Fds::default());
            if s.late {
                std::mem::swap(&mut early, &mut late);
            }
            pieces.push((s.bytes[..cut].to_vec(), early));
            pieces.push((s.bytes[cut..].to_vec(), late));
        }
        for (bytes, fds) in pieces {
            // Descriptors need at least one byte to travel with.
            let raw = if bytes.is_empty() { Vec::new() } else { fds.raw() };
            let gone = send(&client, &bytes, &raw).is_err();
            peers.extend(fds.sent());
            if gone {
                break;
            }
        }
        let _ = client.shutdown(std::net::Shutdown::Write);
        let replies = parse_replies(&read_to_close(&client)?)?;
        if negotiate {
            prop_assert_eq!(
                replies.first().map(|a| (a.id, a.status)),
                Some((HANDSHAKE_ID, Status::Ok))
            );
        }
        // Closed by the backend (a framing error) or by us (end of file): both are fine here.
        let _closed = served.finish()?;
        prop_assert!(peers.iter().all(closed), "the backend kept a descriptor");
        fresh_connection_works(&handler)?;
    }

    /// Each well-framed but malformed request gets exactly one reply: its code and id, the
    /// status section 9 prescribes, no payload; every descriptor it carried is closed by then.
    /// A message with more than MAX_FDS descriptors closes the connection instead.
    #[test]
    fn malformed_requests_get_error_replies(
        bad in vec(bad_request(), 1..8),
        too_many in proptest::option::of(vec(fd_kind(), MAX_FDS + 1..=MAX_FDS + 4)),
    ) {
        let handler = Probe::default();
        let (client, served) = serve(&handler)?;
        handshake_done(&client)?;
        for (i, b) in bad.iter().enumerate() {
            let id = 1000 + i as u64;
            let fds = Fds::new(&b.fds)?;
            setup(send(&client, &request(b.code, id, &b.payload), &fds.raw()))?;
            let peers = fds.sent();
            let Some(got) = read_one(&client)? else {
                return fail(format!("the connection closed instead of answering {b:?}"));
            };
            prop_assert_eq!((got.request, got.id), (b.code, id), "{:?}", b);
            prop_assert_ne!(got.status, Status::Ok, "{:?}", b);
            if let Some(status) = b.expect {
                prop_assert_eq!(got.status, status, "{:?}", b);
            }
            prop_assert!(peers.iter().all(closed), "descriptors of {:?} left open", b);
        }
        let mut peers = Vec::new();
        if let Some(kinds) = &too_many {
            let fds = Fds::new(kinds)?;
            let msg = request(FrontendReq::GetFeatures as u32, 1, &[]);
            // The backend may close before all of it is sent.
            let _ = send(&client, &msg, &fds.raw());
            peers = fds.sent();
            prop_assert_eq!(read_one(&client)?, None, "a reply to {} descriptors", kinds.len());
        }
        let _ = client.shutdown(std::net::Shutdown::Write);
        prop_assert_eq!(parse_replies(&read_to_close(&client)?)?, vec![]);
        let outcome = served.finish()?;
        prop_assert_eq!(outcome.is_err(), too_many.is_some(), "{:?}", outcome);
        prop_assert!(peers.iter().all(closed), "descriptors left open after the close");
        fresh_connection_works(&handler)?;
    }

    /// A `ConfigRead` whose header lies about its size: a smaller size is a payload-size error
    /// (the rest is then read as the next header), a larger one swallows what follows, and the
    /// request is answered only once `size` bytes arrived; above the request's payload limit
    /// (`max_request_payload`: 4 KiB for all but `LoadState`) the connection is closed at once.
    /// Never a reply for bytes that did not arrive, never a hang.
    #[test]
    fn lying_sizes_are_never_trusted(
        size in prop_oneof![
            4 => 0u32..64,
            1 => 4032u32..=4096,
            1 => 4097u32..=(MAX_PAYLOAD_SIZE as u32),
            1 => (MAX_PAYLOAD_SIZE as u32 + 1)..=u32::MAX,
        ],
        trailer in any::<bool>(),
    ) {
        let handler = Probe::default();
        let (client, served) = serve(&handler)?;
        handshake_done(&client)?;
        let access = ConfigAccess { width: 4, ..Default::default() };
        let mut bytes = MsgHeader::request(FrontendReq::ConfigRead as u32, size, 7)
            .as_slice()
            .to_vec();
        bytes.extend_from_slice(access.as_slice());
        if trailer {
            bytes.extend_from_slice(&request(FrontendReq::GetFeatures as u32, 8, &[]));
        }
        let _ = send(&client, &bytes, &[]);
        let _ = client.shutdown(std::net::Shutdown::Write);
        let replies = parse_replies(&read_to_close(&client)?)?;
        let outcome = served.finish()?;
        let arrived = bytes.len() - HEADER_SIZE;
        let size = size as usize;
        if size > max_request_payload(FrontendReq::ConfigRead as u32) {
            prop_assert_eq!(replies, vec![]);
            prop_assert!(outcome.is_err(), "an oversized header must close the connection");
        } else if size > arrived {
            prop_assert_eq!(replies, vec![], "a reply before the payload arrived");
            prop_assert_eq!(outcome, Ok(()), "end of file mid-message is a clean close");
        } else {
            let first = replies.first().map(|a| (a.request, a.id, a.status));
            let status = if size == access.as_slice().len() { Status::Ok } else { Status::Invalid };
            prop_assert_eq!(first, Some((FrontendReq::ConfigRead as u32, 7, status)));
            if size == arrived || (size == 16 && trailer) {
                // In sync again: nothing else, or exactly the trailer's reply.
                let want = usize::from(size == 16 && trailer) + 1;
                prop_assert_eq!(replies.len(), want);
                prop_assert_eq!(outcome, Ok(()));
            }
        }
        fresh_connection_works(&handler)?;
    }

    /// Part of a header, then silence or end of file: no reply, a clean close on end of file,
    /// and other connections are served meanwhile.
    #[test]
    fn truncated_headers_wait_or_close_cleanly(cut in 0usize..HEADER_SIZE, close in any::<bool>()) {
        let handler = Probe::default();
        let (client, served) = serve(&handler)?;
        let msg = request(FrontendReq::GetFeatures as u32, 1, &[]);
        setup(send(&client, &msg[..cut], &[]))?;
        if !close {
            // A peer stalled in the middle of a header must not hold anyone else up.
            fresh_connection_works(&handler)?;
        }
        let _ = client.shutdown(std::net::Shutdown::Write);
        prop_assert_eq!(parse_replies(&read_to_close(&client)?)?, vec![]);
        prop_assert_eq!(served.finish()?, Ok(()));
        fresh_connection_works(&handler)?;
    }
}

proptest! {
    #![proptest_config(config(6))]

    /// A flood of pipelined requests, good and bad, from a peer that starts reading replies only
    /// after a while: the backend's back-pressure (it stops reading while 256 KiB of replies
    /// wait) must neither lose, reorder nor duplicate a reply, nor deadlock.
    #[test]
    fn pipelined_floods_are_answered_in_order(
        kinds in vec(0u8..3, 1..8),
        count in 15_000usize..25_000,
    ) {
        let handler = Probe::default();
        let (client, served) = serve(&handler)?;
        handshake_done(&client)?;
        let read = ConfigAccess { width: 1, ..Default::default() };
        let mut bytes = Vec::new();
        let mut want = Vec::with_capacity(count);
        for i in 0..count {
            let id = i as u64 + 1;
            let (code, payload, status) = match kinds[i % kinds.len()] {
                0 => (FrontendReq::ConfigRead as u32, read.as_slice(), Status::Ok),
                1 => (FrontendReq::ConfigRead as u32, &read.as_slice()[1..], Status::Invalid),
                _ => (0xdead, &[][..], Status::NotSupported),
            };
            bytes.extend_from_slice(&request(code, id, payload));
            want.push((code, id, status));
        }
        let tx = setup(client.try_clone())?;
        let writer = thread::spawn(move || send(&tx, &bytes, &[]));
        // Let replies pile up past the socket buffer and the back-pressure threshold. (The
        // write side stays open: see `half_closed_peer_gets_every_reply`.)
        thread::sleep(Duration::from_millis(100));
        let mut got = Vec::with_capacity(count);
        while got.len() < count {
            match read_one(&client)? {
                Some(a) => got.push((a.request, a.id, a.status)),
                None => break,
            }
        }
        match writer.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return fail(format!("the backend stopped reading: {e}")),
            Err(_) => return fail("the writer panicked"),
        }
        prop_assert_eq!(got.len(), want.len());
        prop_assert!(got == want, "replies lost, reordered or wrong");
        drop(client);
        prop_assert_eq!(served.finish()?, Ok(()));
    }
}

/// A peer that sends its last request and then shuts down its write side (`shutdown(SHUT_WR)`,
/// "no more requests") must still get every reply, whole. Here one `SaveState` reply of 1 MiB
/// does not fit the socket buffer, so the backend reads the end of file while most of it is
/// still queued. (Regression: the connection used to close there and drop the rest, leaving the
/// peer a reply whose header announced more bytes than ever arrived.)
#[test]
fn half_closed_peer_gets_every_reply() -> CaseResult {
    let handler = Probe {
        state_size: 1 << 20,
        ..Probe::default()
    };
    let (client, served) = serve(&handler)?;
    handshake_done(&client)?;
    let save = request(FrontendReq::SaveState as u32, 1, &[]);
    setup(send(&client, &save, &[]))?;
    setup(client.shutdown(std::net::Shutdown::Write))?;
    // Give the backend time to queue the reply and read the end of file.
    thread::sleep(Duration::from_millis(100));
    let replies = parse_replies(&read_to_close(&client)?)?;
    let got: Vec<_> = replies
        .iter()
        .map(|a| (a.id, a.status, a.payload.len()))
        .collect();
    prop_assert_eq!(got, vec![(1, Status::Ok, 1 << 20)]);
    prop_assert_eq!(served.finish()?, Ok(()));
    Ok(())
}

/// The control for `malformed_requests_get_error_replies`: the valid form of every request
/// succeeds, so each malformed variant fails because of its defect.
#[test]
fn valid_form_of_every_request_succeeds() -> CaseResult {
    let handler = Probe::default();
    let (client, served) = serve(&handler)?;
    handshake_done(&client)?;
    for (i, code) in known_codes().into_iter().enumerate() {
        let fds = Fds::new(&valid_fds(code))?;
        setup(send(
            &client,
            &request(code as u32, i as u64, &valid_payload(code)),
            &fds.raw(),
        ))?;
        let _peers = fds.sent();
        let Some(answer) = read_one(&client)? else {
            return fail(format!("no reply to {code:?}"));
        };
        // A second SetProtocolFeatures or SetFrontendInfo is out of sequence.
        let want = match expected(code, Status::Ok) {
            Some(ok) => ok,
            None => Status::Protocol,
        };
        prop_assert_eq!((answer.id, answer.status), (i as u64, want), "{:?}", code);
    }
    drop(client);
    prop_assert_eq!(served.finish()?, Ok(()));
    Ok(())
}

/// Every known code with every wrong payload size from 0 to 72 bytes and a few large ones:
/// `EINVAL` (any error for the out-of-sequence `SetProtocolFeatures` and `SetFrontendInfo`), on
/// one connection that survives all of them.
#[test]
fn every_code_rejects_every_wrong_size() -> CaseResult {
    let handler = Probe::default();
    let (client, served) = serve(&handler)?;
    handshake_done(&client)?;
    let mut id = 0;
    for code in known_codes() {
        let Some(size) = payload_size(code) else {
            continue;
        };
        for len in (0..=72).chain([255, 4096, 65_537, 1 << 20]) {
            // Past the code's payload limit the connection closes (checked below).
            if len == size || len > max_request_payload(code as u32) {
                continue;
            }
            id += 1;
            setup(send(
                &client,
                &request(code as u32, id, &vec![0xa5; len]),
                &[],
            ))?;
            let Some(got) = read_one(&client)? else {
                return fail(format!(
                    "the connection closed on {code:?} with {len} bytes"
                ));
            };
            prop_assert_eq!((got.request, got.id), (code as u32, id));
            prop_assert_ne!(got.status, Status::Ok, "{:?} with {} bytes", code, len);
            if let Some(want) = expected(code, Status::Invalid) {
                prop_assert_eq!(got.status, want, "{:?} with {} bytes", code, len);
            }
        }
    }
    drop(client);
    prop_assert_eq!(served.finish()?, Ok(()));
    // One byte past the limit: closed at the header, nothing buffered, no reply.
    for code in known_codes() {
        let limit = max_request_payload(code as u32);
        if limit >= MAX_PAYLOAD_SIZE {
            continue;
        }
        let (client, served) = serve(&handler)?;
        handshake_done(&client)?;
        let header = MsgHeader::request(code as u32, (limit + 1) as u32, 1);
        setup(send(&client, header.as_slice(), &[]))?;
        prop_assert_eq!(read_one(&client)?.map(|r| r.status), None, "{:?}", code);
        prop_assert!(
            served.finish()?.is_err(),
            "{:?}: the connection must close",
            code
        );
    }
    fresh_connection_works(&handler)
}

// ---------------------------------------------------------------------------------------------
// Properties: pure decoders.

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

fn kind() -> impl Strategy<Value = MessageKind> {
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
