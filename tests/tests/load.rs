//! Load: 64 frontends at once, each doing mixed reads and writes on its own root port and
//! checking every read against what it wrote. Zero lost writes, zero errors, bounded memory;
//! latency percentiles are printed (never asserted). `PCIERC_LOAD_OPS` sets the operations per
//! frontend (default 2000; the long run is 100000).

use std::time::{Duration, Instant};

use pcierc_protocol::{Frontend, FrontendOptions};
use pcierc_tests::process::{root_port_options, Backend};

const FRONTENDS: usize = 64;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

#[test]
fn sixty_four_frontends_lose_no_write() {
    let ops: usize = std::env::var("PCIERC_LOAD_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let mut args = vec!["-n".to_string()];
    args.extend(root_port_options(FRONTENDS));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let b = Backend::start(&args);
    let rss_before = b.rss_kib();
    let started = Instant::now();
    let workers: Vec<_> = (0..FRONTENDS)
        .map(|i| {
            let socket = b.socket.clone();
            std::thread::spawn(move || {
                let mut f = Frontend::connect(&socket, FrontendOptions::tool(format!("load{i}")))
                    .expect("connect");
                let devfn = (((2 + i / 8) << 3) | (i % 8)) as u8;
                // The free writable dwords after the capabilities (0x200..0x300), mirrored here.
                let mut mirror = [0u32; 64];
                let mut lat = Vec::with_capacity(ops);
                let mut x = 0x9e37_79b9u32 ^ i as u32;
                for n in 0..ops {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    let slot = (x >> 8) as usize % mirror.len();
                    let off = 0x200 + 4 * slot as u16;
                    let t = Instant::now();
                    if n % 2 == 0 {
                        f.config_write(0, 0, devfn, off, 4, x).expect("write");
                        mirror[slot] = x;
                    } else {
                        let v = f.config_read(0, 0, devfn, off, 4).expect("read");
                        assert_eq!(v, mirror[slot], "frontend {i}: lost write at {off:#x}");
                    }
                    lat.push(t.elapsed());
                }
                for (slot, want) in mirror.iter().enumerate() {
                    let off = 0x200 + 4 * slot as u16;
                    assert_eq!(f.config_read(0, 0, devfn, off, 4).expect("read"), *want);
                }
                lat
            })
        })
        .collect();
    let mut lat: Vec<Duration> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("a frontend failed"))
        .collect();
    let elapsed = started.elapsed();
    lat.sort_unstable();
    let rss_after = b.rss_kib();
    eprintln!(
        "load: {FRONTENDS} frontends x {ops} ops = {} requests in {elapsed:.2?} ({:.0}/s); latency p50 {:?} p99 {:?} p99.9 {:?} max {:?}; pcierc RSS {rss_before:?} -> {rss_after:?} KiB",
        lat.len(),
        lat.len() as f64 / elapsed.as_secs_f64(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat, 0.999),
        lat.last().copied().unwrap_or_default(),
    );
    if let Some(kib) = rss_after {
        assert!(kib < 64 * 1024, "pcierc grew to {kib} KiB under load");
    }
}
