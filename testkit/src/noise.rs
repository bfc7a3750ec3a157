//! Deterministic noise for hostile peers: xorshift32 bytes, the same sequence for the same seed
//! on every run, so a failure replays.

/// A xorshift32 generator (Marsaglia 2003, shifts 13, 17, 5).
pub struct Noise(u32);

impl Noise {
    /// A generator from `seed`, which must not be zero (zero stays zero).
    pub fn new(seed: u32) -> Noise {
        assert_ne!(seed, 0, "xorshift needs a seed other than zero");
        Noise(seed)
    }

    /// The next `n` bytes (the low byte of each step).
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                let x = &mut self.0;
                *x ^= *x << 13;
                *x ^= *x >> 17;
                *x ^= *x << 5;
                *x as u8
            })
            .collect()
    }
}
