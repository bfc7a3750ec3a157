//! The read fast path: a configuration read served from the shared snapshot, next to its
//! baseline, a plain read of a `u32` from memory, measured in the same run.

use std::hint::black_box;
use std::time::Instant;

use std::path::Path;

use crate::affinity::{Pinned, Placement};
use crate::backend::Pcierc;
use crate::error::{Context, Error, Result};
use crate::report::{Ratio, Reporter, Samples};

/// rp1 of the embedded default topology: 00:02.0.
const RP1_DEVFN: u8 = 2 << 3;
/// Fast-path reads timed together.
const FAST_BATCH: usize = 1000;
/// Issue 7's target for the fast-path median.
const FAST_TARGET_NS: f64 = 100.0;

/// Words in the buffer read: one 4 KiB configuration space, so it stays in the L1 cache as a
/// snapshot of the registers being read would.
const WORDS: usize = 1024;
/// Reads timed together (one timer reading is ~20 ns, far more than a read).
const BATCH: usize = 10_000;

/// Median time of one volatile `u32` read, from `batches` timed batches; then the fast path
/// against a real `pcierc` when `bin` is given.
pub fn run(
    rep: &mut Reporter,
    batches: usize,
    bin: Option<&Path>,
    placement: Placement,
) -> Result<()> {
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
    let plain = s.median();
    rep.figure("plain_memory_read_ns", plain, "ns", Ratio::Baseline);
    let Some(bin) = bin else {
        return Ok(());
    };
    let pinned = Pinned::new(placement)?;
    let rc = pinned.spawn_peers(|| Pcierc::start(bin, &[]))?;
    let mut vmm = rc.connect("bench-fast")?;
    let f = vmm.frontend();
    let id = f
        .config_read(0, 0, RP1_DEVFN, 0, 4)
        .context("reading rp1's ids")?;
    if id != 0x000c_1b36 {
        return Err(Error::Other(format!(
            "rp1 reads {id:#x}, not QEMU's 1b36:000c"
        )));
    }
    let mut per_read = Vec::with_capacity(batches);
    for b in 0..=batches {
        let t = Instant::now();
        for i in 0..FAST_BATCH {
            let off = ((i % 64) * 4) as u16;
            black_box(
                f.config_read(0, 0, RP1_DEVFN, off, 4)
                    .context("fast-path read")?,
            );
        }
        if b > 0 {
            per_read.push(t.elapsed().as_nanos() as f64 / FAST_BATCH as f64);
        }
    }
    let s = Samples::new(per_read);
    rep.note(format!(
        "config_read_fastpath_ns: Frontend::config_read of rp1's first 256 bytes from the \
         shared snapshot (no message), median of {} batches of {FAST_BATCH}; target < \
         {FAST_TARGET_NS} ns (ratio to the target: {:.2})",
        s.len(),
        s.median() / FAST_TARGET_NS
    ));
    rep.figure(
        "config_read_fastpath_ns",
        s.median(),
        "ns",
        Ratio::Of(plain),
    );
    Ok(())
}
