//! The round trip's hot path on both ends: a [`Frontend`] and a [`Connection`] (served by
//! [`Connection::serve`] on its own thread) allocate nothing per request once warmed up, and a
//! connection handles requests that arrived in one read (more than it handles per call) without
//! the socket's readiness to remind it.
//!
//! Allocations are counted per thread by this test binary's global allocator, so each end is
//! measured alone.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use pcierc_protocol::*;
use vm_memory::ByteValued;

/// The system allocator, counting allocations of the calling thread.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counter is a
// const-initialised thread local, which needs no allocation.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded with the caller's arguments.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// A root port's worth of configuration space, served without allocating.
struct Plain {
    config: [u8; 4096],
}

impl BackendHandler for Plain {
    fn features(&mut self) -> Features {
        Features::all()
    }
    fn topology(&mut self) -> Topology {
        Topology::default()
    }
    fn config_read(&mut self, a: ConfigAddress, width: u8) -> Result<u32, Status> {
        let at = usize::from(a.offset);
        let mut v = [0u8; 4];
        v[..usize::from(width)].copy_from_slice(&self.config[at..at + usize::from(width)]);
        Ok(u32::from_le_bytes(v))
    }
    fn config_write(&mut self, a: ConfigAddress, width: u8, value: u32) -> Result<(), Status> {
        let at = usize::from(a.offset);
        self.config[at..at + usize::from(width)]
            .copy_from_slice(&value.to_le_bytes()[..usize::from(width)]);
        Ok(())
    }
    fn pio_read(&mut self, _port: u64, _width: u8) -> Result<u64, Status> {
        Ok(0)
    }
    fn pio_write(&mut self, _port: u64, _width: u8, _value: u64) -> Result<(), Status> {
        Ok(())
    }
    fn mmio_read(&mut self, _addr: u64, _width: u8) -> Result<u64, Status> {
        Ok(0)
    }
    fn mmio_write(&mut self, _addr: u64, _width: u8, _value: u64) -> Result<(), Status> {
        Ok(())
    }
    fn reset(&mut self) -> Result<(), Status> {
        Ok(())
    }
    fn save_state(&mut self) -> Result<Vec<u8>, Status> {
        Ok(Vec::new())
    }
    fn load_state(&mut self, _blob: &[u8]) -> Result<(), Status> {
        Ok(())
    }
    fn chipset_memory(&mut self) -> ChipsetMemory {
        ChipsetMemory::default()
    }
}

fn plain() -> Plain {
    Plain { config: [0; 4096] }
}

/// Serve `stream` on a thread; the thread returns the allocations it made while serving the
/// requests after the first `warmup` (counted from the handler's `config_write` of offset 0x40,
/// which the client sends once warmed up).
fn serve_counting(stream: UnixStream) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let conn = Connection::new(stream, ConnectionId(1)).unwrap();
        let mut h = Marking {
            inner: plain(),
            mark: None,
        };
        let _ = conn.serve(&mut h);
        h.mark.map_or(u64::MAX, |m| allocations() - m)
    })
}

/// [`Plain`], noting the thread's allocation count when offset 0x40 is written.
struct Marking {
    inner: Plain,
    mark: Option<u64>,
}

impl BackendHandler for Marking {
    fn features(&mut self) -> Features {
        self.inner.features()
    }
    fn topology(&mut self) -> Topology {
        self.inner.topology()
    }
    fn config_read(&mut self, a: ConfigAddress, width: u8) -> Result<u32, Status> {
        self.inner.config_read(a, width)
    }
    fn config_write(&mut self, a: ConfigAddress, width: u8, value: u32) -> Result<(), Status> {
        if a.offset == 0x40 {
            self.mark = Some(allocations());
        }
        self.inner.config_write(a, width, value)
    }
    fn pio_read(&mut self, port: u64, width: u8) -> Result<u64, Status> {
        self.inner.pio_read(port, width)
    }
    fn pio_write(&mut self, port: u64, width: u8, value: u64) -> Result<(), Status> {
        self.inner.pio_write(port, width, value)
    }
    fn mmio_read(&mut self, addr: u64, width: u8) -> Result<u64, Status> {
        self.inner.mmio_read(addr, width)
    }
    fn mmio_write(&mut self, addr: u64, width: u8, value: u64) -> Result<(), Status> {
        self.inner.mmio_write(addr, width, value)
    }
    fn reset(&mut self) -> Result<(), Status> {
        self.inner.reset()
    }
    fn save_state(&mut self) -> Result<Vec<u8>, Status> {
        self.inner.save_state()
    }
    fn load_state(&mut self, blob: &[u8]) -> Result<(), Status> {
        self.inner.load_state(blob)
    }
    fn chipset_memory(&mut self) -> ChipsetMemory {
        self.inner.chipset_memory()
    }
}

#[test]
fn round_trips_allocate_nothing_on_either_end() {
    let (a, b) = UnixStream::pair().unwrap();
    let backend = serve_counting(b);
    let mut opts = FrontendOptions::tool("hot-path");
    opts.protocol_features -= ProtocolFeatures::CONFIG_SNAPSHOT;
    let mut fe = Frontend::from_stream(a, opts).unwrap();
    let round = |fe: &mut Frontend, i: u32| {
        fe.config_write(0, 0, 0x10, 0x1c, 2, i & 0xffff).unwrap();
        assert_eq!(fe.config_read(0, 0, 0x10, 0x1c, 2).unwrap(), i & 0xffff);
        fe.mmio_write(0xe000_0000, 4, 1).unwrap();
        fe.mmio_read(0xe000_0000, 4).unwrap();
        fe.pio_write(0xcf8, 4, 0x8000_0000).unwrap();
    };
    for i in 0..100 {
        round(&mut fe, i);
    }
    fe.config_write(0, 0, 0x10, 0x40, 4, 0).unwrap();
    let before = allocations();
    for i in 0..1000 {
        round(&mut fe, i);
    }
    let frontend = allocations() - before;
    drop(fe);
    let backend = backend.join().unwrap();
    assert_eq!(
        (frontend, backend),
        (0, 0),
        "allocations in 5000 requests (frontend, backend)"
    );
}

fn request(code: FrontendReq, id: u64, payload: &[u8]) -> Vec<u8> {
    encode(MsgHeader::request(code as u32, 0, id), payload).unwrap()
}

/// Handshake bytes: `SetProtocolFeatures` with none.
fn negotiate(client: &mut UnixStream, conn: &mut Connection, h: &mut Plain) {
    let none = U64 { value: 0 };
    client
        .write_all(&request(
            FrontendReq::SetProtocolFeatures,
            0,
            none.as_slice(),
        ))
        .unwrap();
    conn.process(h).unwrap();
    let mut reply = [0u8; HEADER_SIZE];
    client.read_exact(&mut reply).unwrap();
}

#[test]
fn requests_read_together_are_all_answered_beyond_the_per_call_budget() {
    let (mut client, server) = UnixStream::pair().unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut conn = Connection::new(server, ConnectionId(1)).unwrap();
    let mut h = plain();
    negotiate(&mut client, &mut conn, &mut h);
    // More requests than one call handles, in one write: one read takes them all.
    let n = connection::MAX_REQUESTS_PER_CALL as u64 + 36;
    let access = ConfigAccess {
        offset: 0x10,
        width: 4,
        ..Default::default()
    };
    let bytes: Vec<u8> = (1..=n)
        .flat_map(|id| request(FrontendReq::ConfigRead, id, access.as_slice()))
        .collect();
    client.write_all(&bytes).unwrap();
    conn.process_ready(&mut h, true).unwrap();
    assert!(
        conn.has_buffered_requests(),
        "the budget left requests in the buffer"
    );
    // The socket is empty now: only the connection knows there is work left.
    conn.process_ready(&mut h, false).unwrap();
    assert!(!conn.has_buffered_requests());
    let reply_len = HEADER_SIZE + access.as_slice().len();
    let mut replies = vec![0u8; reply_len * n as usize];
    client.read_exact(&mut replies).unwrap();
    let ids: Vec<u64> = replies
        .chunks(reply_len)
        .map(|r| {
            let h = read_obj::<MsgHeader>(&r[..HEADER_SIZE]).unwrap();
            assert_eq!((h.status, h.size), (0, 16));
            h.id
        })
        .collect();
    assert_eq!(ids, (1..=n).collect::<Vec<_>>());
}

#[test]
fn a_served_connection_answers_a_burst_sent_in_one_write() {
    let (mut client, server) = UnixStream::pair().unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let t = std::thread::spawn(move || {
        let conn = Connection::new(server, ConnectionId(1)).unwrap();
        conn.serve(&mut plain())
    });
    let none = U64 { value: 0 };
    let mut bytes = request(FrontendReq::SetProtocolFeatures, 0, none.as_slice());
    let n = 3 * connection::MAX_REQUESTS_PER_CALL as u64;
    for id in 1..=n {
        bytes.extend(request(FrontendReq::Reset, id, &[]));
    }
    client.write_all(&bytes).unwrap();
    let mut replies = vec![0u8; HEADER_SIZE * (n as usize + 1)];
    client.read_exact(&mut replies).unwrap();
    let last = read_obj::<MsgHeader>(&replies[replies.len() - HEADER_SIZE..]).unwrap();
    assert_eq!((last.id, last.status), (n, 0));
    drop(client);
    assert!(t.join().unwrap().is_ok());
}
