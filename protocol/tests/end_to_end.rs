//! Both ends of the protocol in one process: a single-threaded poll(2) loop serves a fake
//! [`BackendHandler`] through [`Connection`]s (FrameReader + Session + FrameWriter) on a real
//! listening socket, and the tests talk to it with [`Frontend`].

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pcierc_protocol::*;

const PORT_DEVFN: u8 = 0x10;
/// Type 1 header: Secondary Bus Number register.
const SECONDARY_BUS: u16 = 0x19;
/// Q35 MCH PAM0.
const PAM0: u16 = 0x90;

/// A host bridge and one root port with plain config space, a few ports and an MMIO store.
#[derive(Default)]
struct Fake {
    config: HashMap<u8, Vec<u8>>,
    io: HashMap<u64, u64>,
    mmio: HashMap<u64, u64>,
    channels: HashMap<ConnectionId, BackendChannelSender>,
    identified: Vec<FrontendIdentity>,
    disconnected: Vec<ConnectionId>,
}

impl Fake {
    fn new() -> Self {
        let mut config = HashMap::new();
        for (devfn, id) in [(0u8, 0x29c0_8086u32), (PORT_DEVFN, 0x000c_1b36)] {
            let mut space = vec![0u8; 4096];
            space[..4].copy_from_slice(&id.to_le_bytes());
            config.insert(devfn, space);
        }
        Fake {
            config,
            ..Default::default()
        }
    }

    fn name(s: &str) -> [u8; NAME_LEN] {
        encode_name(s).unwrap()
    }

    fn notify(&mut self, f: impl Fn(&mut BackendChannelSender) -> Result<()>) {
        self.channels.retain(|_, tx| f(tx).is_ok());
    }
}

impl BackendHandler for Fake {
    fn features(&mut self) -> Features {
        Features::all()
    }
    fn topology(&mut self) -> Topology {
        let sec = self.config[&PORT_DEVFN][usize::from(SECONDARY_BUS)];
        let base = |kind: FunctionKind| FunctionRecord {
            kind: kind as u8,
            flags: function_flags::PRESENT | function_flags::EMULATED,
            parent: NO_PARENT,
            owner: Self::name("pcierc"),
            ..Default::default()
        };
        let port = FunctionRecord {
            devfn: PORT_DEVFN,
            secondary_bus: sec,
            subordinate_bus: sec,
            id: Self::name("rp1"),
            ..base(FunctionKind::RootPort)
        };
        Topology {
            generation: u64::from(sec),
            functions: vec![
                FunctionRecord {
                    id: Self::name("mch"),
                    ..base(FunctionKind::HostBridge)
                },
                port,
            ],
            ..Default::default()
        }
    }
    fn config_read(&mut self, a: ConfigAddress, width: u8) -> Result<u32, Status> {
        let space = self
            .config
            .get(&a.devfn)
            .filter(|_| a.segment == 0 && a.bus == 0)
            .ok_or(Status::NoDevice)?;
        let at = usize::from(a.offset);
        let mut b = [0u8; 4];
        b[..usize::from(width)].copy_from_slice(&space[at..at + usize::from(width)]);
        Ok(u32::from_le_bytes(b))
    }
    fn config_write(&mut self, a: ConfigAddress, width: u8, value: u32) -> Result<(), Status> {
        let space = self
            .config
            .get_mut(&a.devfn)
            .filter(|_| a.segment == 0 && a.bus == 0)
            .ok_or(Status::NoDevice)?;
        let (at, w) = (usize::from(a.offset), usize::from(width));
        space[at..at + w].copy_from_slice(&value.to_le_bytes()[..w]);
        let touches =
            |reg: u16, len: u16| a.offset < reg + len && reg < a.offset + u16::from(width);
        if a.devfn == PORT_DEVFN && touches(SECONDARY_BUS, 1) {
            let topo = self.topology();
            self.notify(|tx| tx.layout_changed(LayoutChanges::BUS_NUMBERS, &topo));
        }
        if a.devfn == 0 && touches(PAM0, 7) {
            let mem = self.chipset_memory();
            self.notify(|tx| tx.chipset_memory_changed(&mem));
        }
        Ok(())
    }
    fn pio_read(&mut self, port: u64, _width: u8) -> Result<u64, Status> {
        self.io.get(&port).copied().ok_or(Status::NoDevice)
    }
    fn pio_write(&mut self, port: u64, _width: u8, value: u64) -> Result<(), Status> {
        self.io.insert(port, value);
        Ok(())
    }
    fn mmio_read(&mut self, addr: u64, _width: u8) -> Result<u64, Status> {
        Ok(self.mmio.get(&addr).copied().unwrap_or(u64::MAX))
    }
    fn mmio_write(&mut self, addr: u64, _width: u8, value: u64) -> Result<(), Status> {
        self.mmio.insert(addr, value);
        Ok(())
    }
    fn reset(&mut self) -> Result<(), Status> {
        *self = Fake {
            channels: std::mem::take(&mut self.channels),
            ..Fake::new()
        };
        Ok(())
    }
    fn save_state(&mut self) -> Result<Vec<u8>, Status> {
        let mut blob = b"FAKE\x01\x00\x00\x00".to_vec();
        blob.extend_from_slice(&self.config[&0][usize::from(PAM0)..usize::from(PAM0) + 7]);
        Ok(blob)
    }
    fn load_state(&mut self, blob: &[u8]) -> Result<(), Status> {
        match blob.strip_prefix(b"FAKE\x01\x00\x00\x00") {
            Some(pam) if pam.len() == 7 => {
                self.config.get_mut(&0).ok_or(Status::Io)?
                    [usize::from(PAM0)..usize::from(PAM0) + 7]
                    .copy_from_slice(pam);
                Ok(())
            }
            _ => Err(Status::BadMessage),
        }
    }
    fn chipset_memory(&mut self) -> ChipsetMemory {
        let mut pam = [0u8; 7];
        pam.copy_from_slice(&self.config[&0][usize::from(PAM0)..usize::from(PAM0) + 7]);
        ChipsetMemory {
            pam,
            ..Default::default()
        }
    }
    fn frontend_identified(&mut self, _conn: ConnectionId, info: &FrontendIdentity) {
        self.identified.push(info.clone());
    }
    fn backend_channel(&mut self, conn: ConnectionId, sender: BackendChannelSender) {
        self.channels.insert(conn, sender);
    }
    fn disconnected(&mut self, conn: ConnectionId) {
        self.channels.remove(&conn);
        self.disconnected.push(conn);
    }
}

/// A socket path removed when the test ends.
struct SocketPath(PathBuf);

impl AsRef<Path> for SocketPath {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for SocketPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Start a backend on a fresh socket path; the returned handler is shared with its thread.
fn start_backend(name: &str) -> (SocketPath, Arc<Mutex<Fake>>) {
    let path = std::env::temp_dir().join(format!(
        "pcierc-protocol-{}-{name}.sock",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let shared = Arc::new(Mutex::new(Fake::new()));
    let handler = shared.clone();
    std::thread::spawn(move || serve(listener, handler));
    (SocketPath(path), shared)
}

/// The event loop a backend service runs: one thread, every connection non-blocking.
fn serve(listener: UnixListener, handler: Arc<Mutex<Fake>>) {
    let mut conns: Vec<Connection> = Vec::new();
    let mut next = 0;
    loop {
        let mut fds = vec![libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        for c in &conns {
            // Requests left buffered by the per-call budget come back through writability
            // (`Connection::has_buffered_requests`).
            let events = if c.wants_read() { libc::POLLIN } else { 0 }
                | if c.wants_write() || c.has_buffered_requests() {
                    libc::POLLOUT
                } else {
                    0
                };
            fds.push(libc::pollfd {
                fd: c.as_raw_fd(),
                events,
                revents: 0,
            });
        }
        // SAFETY: `fds` is a valid array of pollfd of the given length.
        assert!(unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) } >= 0);
        if fds[0].revents != 0 {
            while let Ok((s, _)) = listener.accept() {
                next += 1;
                conns.push(Connection::new(s, ConnectionId(next)).unwrap());
            }
        }
        // The handler itself serves (`&mut Fake`), locked while this thread works with it.
        let mut fake = handler.lock().unwrap_or_else(PoisonError::into_inner);
        let mut i = 0;
        for pfd in &fds[1..] {
            let c = &mut conns[i];
            let r = if pfd.revents != 0 {
                c.process_ready(&mut *fake, pfd.revents & libc::POLLIN != 0)
                    .and_then(|()| c.flush().map(drop))
            } else {
                Ok(())
            };
            if r.is_err() {
                conns.remove(i).close(&mut *fake);
            } else {
                i += 1;
            }
        }
    }
}

fn connect(path: &SocketPath, opts: FrontendOptions) -> Frontend {
    let mut fe = Frontend::connect(path, opts).unwrap();
    fe.set_timeout(Some(Duration::from_secs(10)));
    fe
}

fn status<T: std::fmt::Debug>(r: Result<T>) -> Status {
    r.unwrap_err().status().expect("a status from the backend")
}

/// The peer closes the connection within a few seconds.
fn closed_by_peer(mut s: &UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(0))
}

#[test]
fn handshake_config_and_guest_accesses() {
    let (path, shared) = start_backend("basic");
    let mut fe = connect(&path, FrontendOptions::tool("dump"));
    assert_eq!(fe.features(), Features::all());
    assert_eq!(
        fe.protocol_features(),
        ProtocolFeatures::all() - ProtocolFeatures::CONFIG_ADDRESS_LATCH,
        "everything but the latch, which a frontend asks for itself"
    );
    assert!(fe.take_backend_channel().is_none());
    assert_eq!(
        shared.lock().unwrap().identified[0],
        FrontendIdentity {
            name: "dump".into(),
            role: FrontendRole::Tool
        }
    );

    assert_eq!(fe.config_read(0, 0, 0, 0, 4).unwrap(), 0x29c0_8086);
    assert_eq!(fe.config_read(0, 0, PORT_DEVFN, 2, 2).unwrap(), 0x000c);
    fe.config_write(0, 0, 0, 0x40, 4, 0x1234_5678).unwrap();
    assert_eq!(fe.config_read(0, 0, 0, 0x41, 1).unwrap(), 0x56);
    assert_eq!(status(fe.config_read(0, 0, 0x18, 0, 4)), Status::NoDevice);
    let topo = fe.topology().unwrap();
    assert_eq!(topo.functions.len(), 2);

    fe.pio_write(0xcf8, 4, 0x8000_0000).unwrap();
    assert_eq!(fe.pio_read(0xcf8, 4).unwrap(), 0x8000_0000);
    fe.mmio_write(0xb000_0000, 8, u64::MAX).unwrap();
    assert_eq!(fe.mmio_read(0xb000_0000, 8).unwrap(), u64::MAX);
    assert_eq!(fe.chipset_memory().unwrap(), ChipsetMemory::default());
    fe.reset().unwrap();
}

#[test]
fn invalid_requests_get_error_statuses() {
    let (path, _shared) = start_backend("errors");
    let mut fe = connect(&path, FrontendOptions::tool("errors"));
    assert_eq!(status(fe.config_read(0, 0, 0, 0, 3)), Status::Invalid);
    assert_eq!(status(fe.config_read(0, 0, 0, 2, 4)), Status::Invalid);
    assert_eq!(status(fe.config_read(0, 0, 0, 4096, 4)), Status::OutOfRange);
    assert_eq!(
        status(fe.config_write(0, 0, 0, 0, 1, 0x100)),
        Status::Invalid
    );
    assert_eq!(status(fe.pio_read(0xcf8, 8)), Status::Invalid);
    assert_eq!(status(fe.pio_read(0xffff, 4)), Status::OutOfRange);
    assert_eq!(status(fe.mmio_read(u64::MAX, 4)), Status::OutOfRange);
    assert_eq!(
        fe.request(999, &[], &[]).unwrap(),
        (Status::NotSupported, vec![])
    );
    assert_eq!(
        fe.request(FrontendReq::ConfigRead as u32, &[0; 15], &[])
            .unwrap()
            .0,
        Status::Invalid
    );
    assert_eq!(
        fe.request(FrontendReq::Reset as u32, &[0; 4], &[])
            .unwrap()
            .0,
        Status::Invalid
    );
    let (a, _b) = UnixStream::pair().unwrap();
    let access = ConfigAccess {
        width: 4,
        ..Default::default()
    };
    let fds = [a.as_raw_fd()];
    assert_eq!(
        fe.request(
            FrontendReq::ConfigRead as u32,
            vm_memory::ByteValued::as_slice(&access),
            &fds
        )
        .unwrap()
        .0,
        Status::Invalid
    );
    assert_eq!(status(fe.load_state(b"garbage")), Status::BadMessage);
    // The connection survived every error.
    assert_eq!(fe.config_read(0, 0, 0, 0, 2).unwrap(), 0x8086);
}

#[test]
fn features_gate_requests() {
    let (path, _shared) = start_backend("gating");
    let opts = FrontendOptions {
        protocol_features: ProtocolFeatures::empty(),
        ..FrontendOptions::tool("bare")
    };
    let mut fe = connect(&path, opts);
    assert_eq!(fe.protocol_features(), ProtocolFeatures::empty());
    assert_eq!(status(fe.pio_read(0xcf8, 4)), Status::Protocol);
    assert_eq!(status(fe.save_state()), Status::Protocol);
    assert_eq!(fe.config_read(0, 0, 0, 0, 2).unwrap(), 0x8086);
    // Nothing but the handshake requests before SetProtocolFeatures.
    let mut raw = Frontend::unnegotiated(UnixStream::connect(&path).unwrap()).unwrap();
    assert_eq!(status(raw.config_read(0, 0, 0, 0, 4)), Status::Protocol);
    assert_eq!(status(raw.topology()), Status::Protocol);
}

#[test]
fn state_round_trip() {
    let (path, _shared) = start_backend("state");
    let mut fe = connect(&path, FrontendOptions::tool("state"));
    fe.config_write(0, 0, 0, PAM0, 1, 0x30).unwrap();
    let blob = fe.save_state().unwrap();
    assert!(blob.starts_with(b"FAKE"));
    fe.reset().unwrap();
    assert_eq!(fe.config_read(0, 0, 0, PAM0, 1).unwrap(), 0);
    fe.load_state(&blob).unwrap();
    assert_eq!(fe.chipset_memory().unwrap().pam[0], 0x30);
}

#[test]
fn pipelined_requests_are_matched_by_id() {
    let (path, _shared) = start_backend("pipeline");
    let mut fe = connect(&path, FrontendOptions::tool("pipeline"));
    let access = |offset: u16| ConfigAccess {
        offset,
        width: 1,
        ..Default::default()
    };
    // 20000 replies (800 KB) overflow the socket buffers and the backend's back-pressure
    // threshold: the frontend must read replies while it is still sending requests.
    let ids: Vec<u64> = (0..20000u16)
        .map(|i| {
            fe.submit(
                FrontendReq::ConfigRead as u32,
                vm_memory::ByteValued::as_slice(&access(i % 4)),
                &[],
            )
            .unwrap()
        })
        .collect();
    for (i, id) in ids.iter().enumerate().rev() {
        let (st, payload) = fe.wait(*id).unwrap();
        let reply: ConfigAccess = read_obj(&payload).unwrap();
        assert_eq!((st, reply.offset), (Status::Ok, (i % 4) as u16));
        assert_eq!(reply.data, u64::from(0x29c0_8086u32.to_le_bytes()[i % 4]));
    }
    assert!(fe.wait(ids[0]).is_err(), "a reply is delivered once");
}

#[test]
fn malformed_header_closes_only_that_connection() {
    let (path, shared) = start_backend("malformed");
    let mut good = connect(&path, FrontendOptions::tool("good"));
    let mut bad = UnixStream::connect(&path).unwrap();
    let garbage = MsgHeader {
        flags: 0xffff_fff1,
        ..MsgHeader::request(1, 0, 1)
    };
    bad.write_all(vm_memory::ByteValued::as_slice(&garbage))
        .unwrap();
    assert!(closed_by_peer(&bad));
    // A request with the REPLY flag is just as fatal.
    let mut liar = UnixStream::connect(&path).unwrap();
    let reply = MsgHeader::request(1, 0, 1).reply(Status::Ok, 0);
    liar.write_all(vm_memory::ByteValued::as_slice(&reply))
        .unwrap();
    assert!(closed_by_peer(&liar));
    // Half a header, then silence: the loop keeps serving everyone else.
    let mut half = UnixStream::connect(&path).unwrap();
    half.write_all(&[1, 0, 0, 0, 9]).unwrap();
    // An oversized payload announcement is refused as soon as the header is in.
    let mut big = UnixStream::connect(&path).unwrap();
    let huge = MsgHeader {
        size: MAX_PAYLOAD_SIZE as u32 + 1,
        ..MsgHeader::request(16, 0, 1)
    };
    big.write_all(vm_memory::ByteValued::as_slice(&huge))
        .unwrap();
    assert!(closed_by_peer(&big));
    for _ in 0..10 {
        assert_eq!(good.config_read(0, 0, 0, 0, 4).unwrap(), 0x29c0_8086);
    }
    // None of the broken peers sent a request the handler saw: it never heard of them.
    assert_eq!(shared.lock().unwrap().disconnected.len(), 0);
    drop(half);
    // The good frontend did: its departure is reported.
    drop(good);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while shared.lock().unwrap().disconnected.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(shared.lock().unwrap().disconnected.len(), 1);
}

#[test]
fn backend_channel_delivers_notifications() {
    let (path, shared) = start_backend("channel");
    let mut fe = connect(&path, FrontendOptions::vmm("vmm"));
    let mut channel = fe.take_backend_channel().expect("a backend channel");
    assert!(channel
        .recv_timeout(Duration::from_millis(20))
        .unwrap()
        .is_none());
    // A channel without LAYOUT_EVENTS gets no layout notifications.
    let quiet_opts = FrontendOptions {
        protocol_features: ProtocolFeatures::all()
            - ProtocolFeatures::LAYOUT_EVENTS
            - ProtocolFeatures::CONFIG_ADDRESS_LATCH,
        ..FrontendOptions::vmm("quiet")
    };
    let mut quiet = connect(&path, quiet_opts);
    let mut quiet_channel = quiet.take_backend_channel().expect("a backend channel");
    fe.config_write(0, 0, PORT_DEVFN, 0x18, 4, 0x0005_0500)
        .unwrap();
    match channel.recv_timeout(Duration::from_secs(5)).unwrap() {
        Some(Notification::LayoutChanged { changes, topology }) => {
            assert_eq!(changes, LayoutChanges::BUS_NUMBERS);
            assert_eq!(topology.functions[1].secondary_bus, 5);
            assert_eq!(topology, fe.topology().unwrap());
        }
        other => panic!("expected LayoutChanged, got {other:?}"),
    }
    fe.config_write(0, 0, 0, PAM0 + 1, 1, 0x33).unwrap();
    let n = channel.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        n,
        Some(Notification::ChipsetMemoryChanged(ChipsetMemory {
            pam: [0, 0x33, 0, 0, 0, 0, 0],
            ..Default::default()
        }))
    );
    assert!(quiet_channel
        .recv_timeout(Duration::from_millis(50))
        .unwrap()
        .is_none());
    // When the frontends go away the backend forgets their channels.
    drop(fe);
    drop(quiet);
    for _ in 0..500 {
        if shared.lock().unwrap().channels.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(shared.lock().unwrap().channels.is_empty());
}
