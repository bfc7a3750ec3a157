//! The baseline of the (not yet implemented) fast path: a plain read of a `u32` from memory.

use std::hint::black_box;
use std::time::Instant;

use crate::report::{Ratio, Reporter, Samples};

/// Words in the buffer read: one 4 KiB configuration space, so it stays in the L1 cache as a
/// snapshot of the registers being read would.
const WORDS: usize = 1024;
/// Reads timed together (one timer reading is ~20 ns, far more than a read).
const BATCH: usize = 10_000;

/// Median time of one volatile `u32` read, from `batches` timed batches.
pub fn run(rep: &mut Reporter, batches: usize) {
    let buf: Vec<u32> = (0..WORDS as u32).collect();
    let base = black_box(buf.as_ptr());
    let mut per_read = Vec::with_capacity(batches);
    let mut sum = 0u32;
    for b in 0..=batches {
        let t = Instant::now();
        for i in 0..BATCH {
            // SAFETY: `i % WORDS` is in bounds of `buf`, which outlives the loop and is not
            // written while it runs; the pointer is aligned for u32.
            sum = sum.wrapping_add(unsafe { base.add(i % WORDS).read_volatile() });
        }
        let ns = t.elapsed().as_nanos() as f64 / BATCH as f64;
        if b > 0 {
            // The first batch warms the cache and is not counted.
            per_read.push(ns);
        }
    }
    black_box(sum);
    let s = Samples::new(per_read);
    rep.note(format!(
        "plain_memory_read_ns: volatile u32 reads cycling through a 4 KiB buffer, median of {} \
         batches of {BATCH}; the baseline of the fast-path figure (target: fast path median < 100 ns)",
        s.len()
    ));
    rep.figure("plain_memory_read_ns", s.median(), "ns", Ratio::Baseline);
    rep.note(
        "missing: config_read_fastpath_ns (the shared-memory fast path of issue 7 is not \
         implemented; no figure is printed for it)",
    );
}
