//! Fairness under a flood: a good frontend writing and reading back a register, with
//! `--state-file` (every write persisted before its reply), keeps at least half of its own
//! throughput while three peers flood both sockets with garbage connections (connect, a burst
//! of random bytes, close, as fast as the kernel lets them, on the protocol and the QMP socket).
//! Both rates are measured in the same run against the same pcierc, in alternating slices (alone,
//! flooded, alone, ...) so that a disk whose fsync slows down or speeds up during the run
//! weighs on both alike; only the ratio of the totals is asserted. It is printed with the
//! totals and the number of garbage connections made.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pcierc_protocol::{Frontend, FrontendOptions};
use pcierc_tests::noise::Noise;
use pcierc_tests::process::{Backend, ScratchDir};

/// How long each slice measures.
const SLICE: Duration = Duration::from_millis(500);
/// Slices of each kind (alone, flooded), alternating.
const SLICES: usize = 5;
/// Peers flooding.
const FLOODERS: usize = 3;
/// rp1's free writable dword.
const SCRATCH: u16 = 0x204;

/// Write+read pairs the good frontend completes in a slice (every read checked).
fn good_pairs(f: &mut Frontend, start: u32) -> u32 {
    let deadline = Instant::now() + SLICE;
    let mut n = 0u32;
    while Instant::now() < deadline {
        let v = start.wrapping_add(n);
        f.config_write(0, 0, 0x10, SCRATCH, 4, v)
            .expect("a good write failed");
        assert_eq!(f.config_read(0, 0, 0x10, SCRATCH, 4).expect("read"), v);
        n += 1;
    }
    n
}

/// One flooding peer: garbage connections to both sockets while `flooding`, until `stop`.
fn flood(
    socket: PathBuf,
    control: PathBuf,
    seed: u32,
    flooding: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    made: Arc<AtomicU64>,
) {
    let mut noise = Noise::new(seed | 1);
    let mut garbage = move || noise.bytes(64);
    let throw = |path: &Path, bytes: &[u8]| {
        if let Ok(mut s) = UnixStream::connect(path) {
            let _ = s.set_nonblocking(true);
            let _ = s.write_all(bytes);
            let _ = s.read(&mut [0u8; 256]);
        }
    };
    while !stop.load(Ordering::Relaxed) {
        if !flooding.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        throw(&socket, &garbage());
        throw(&control, &garbage());
        made.fetch_add(2, Ordering::Relaxed);
    }
}

#[test]
fn a_good_frontend_keeps_half_its_throughput_under_a_garbage_connection_flood() {
    let dir = ScratchDir::new("fairness");
    let state = dir.0.join("pcierc.state");
    let b = Backend::start_with_control(&["--state-file", state.to_str().expect("utf-8 path")]);
    let control = b.control.clone().expect("control socket");
    let mut f = Frontend::connect(&b.socket, FrontendOptions::tool("good")).expect("frontend");

    let stop = Arc::new(AtomicBool::new(false));
    let flooding = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    let flooders: Vec<_> = (0..FLOODERS)
        .map(|i| {
            let (s, c) = (b.socket.clone(), control.clone());
            let (flooding, stop, made) = (flooding.clone(), stop.clone(), made.clone());
            std::thread::spawn(move || flood(s, c, 0x9e37_79b9 ^ i as u32, flooding, stop, made))
        })
        .collect();
    let (mut alone, mut flooded) = (0u32, 0u32);
    for slice in 0..SLICES {
        alone += good_pairs(&mut f, alone + flooded);
        flooding.store(true, Ordering::Relaxed);
        // Let the flood reach its pace before counting.
        std::thread::sleep(Duration::from_millis(50));
        flooded += good_pairs(&mut f, (slice as u32 + 1) << 20);
        flooding.store(false, Ordering::Relaxed);
        // Let the backlog of garbage drain before the next quiet slice.
        std::thread::sleep(Duration::from_millis(50));
    }
    let garbage = made.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for t in flooders {
        t.join().expect("a flooder panicked");
    }

    let ratio = f64::from(flooded) / f64::from(alone.max(1));
    eprintln!(
        "fairness: good frontend {alone} write+read pairs in {SLICES} x {SLICE:?} alone, {flooded} \
         in as long while {FLOODERS} peers made {garbage} garbage connections: ratio {ratio:.2}"
    );
    let mut b = b;
    assert!(b.alive(), "pcierc survived the flood");
    assert!(alone > 0, "the good frontend made progress alone");
    assert!(
        ratio >= 0.5,
        "the good frontend kept {ratio:.2} of its throughput under the flood (at least 0.5 wanted)"
    );
}
