//! The backend under test: a small [`BackendHandler`] served by the real
//! [`Connection::serve`] on its own thread, one socket pair per connection.

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};

use pcierc_protocol::*;
use proptest::prelude::*;
use vmm_sys_util::eventfd::EventFd;

use crate::{fail, setup, CaseResult, WAIT};

/// A small handler: answers what it is asked, records the connections whose requests reached
/// it and those that went away. Each serving thread has its own clone; the clones share the
/// records.
#[derive(Clone, Default)]
pub(crate) struct Probe {
    pub(crate) disconnected: Arc<Mutex<Vec<ConnectionId>>>,
    /// Connections a request of which was answered (`request_done`), each once.
    pub(crate) seen: Arc<Mutex<Vec<ConnectionId>>>,
    /// Size of the `SaveState` blob (0: [`BLOB`]).
    pub(crate) state_size: usize,
}

/// What the probe returns for config reads of devfn 0: wider than any access (the session masks).
const PROBE_WORD: u32 = 0xdead_beef;
/// The only blob `LoadState` accepts.
pub(crate) const BLOB: &[u8] = b"blob";

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
    fn request_done(&mut self, conn: ConnectionId, _request: u32, _status: Status) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if !seen.contains(&conn) {
            seen.push(conn);
        }
    }
}

pub(crate) fn next_id() -> ConnectionId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    ConnectionId(NEXT.fetch_add(1, Ordering::Relaxed))
}

/// One connection served by [`Connection::serve`] on its own thread.
pub(crate) struct Served {
    id: ConnectionId,
    handler: Probe,
    done: mpsc::Receiver<Result<(), String>>,
    thread: JoinHandle<()>,
}

/// Serve `stream` with `handler`; the client gets the other end (blocking, bounded timeouts).
pub(crate) fn serve(handler: &Probe) -> CaseResult<(UnixStream, Served)> {
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
    pub(crate) fn finish(self) -> CaseResult<Result<(), String>> {
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
        // Once for a connection the handler heard from, never for one it did not (garbage
        // that broke the framing before any request was whole).
        let seen = self
            .handler
            .seen
            .lock()
            .map(|s| s.contains(&self.id))
            .unwrap_or(false);
        prop_assert_eq!(
            gone,
            usize::from(seen),
            "`disconnected` once per connection whose requests reached the handler (reached: {})",
            seen
        );
        Ok(outcome)
    }
}

/// A well-formed exchange on a fresh connection to the same handler.
pub(crate) fn fresh_connection_works(handler: &Probe) -> CaseResult {
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
