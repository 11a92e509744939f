//! Test data: pseudo-random bytes (xorshift64), the same for the same seed on every run.

/// `len` bytes that deflate cannot shrink, from `seed` (any; 0 is taken as 1).
pub(crate) fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
