//! The deterministic pseudo-random numbers of the workloads: which key an operation picks,
//! and the bytes of the values written.

use bytes::Bytes;

/// A small, fast, deterministic PRNG (xorshift64*), one per client task.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Printable pseudo-random bytes (incompressible enough for a storage engine).
pub fn random_value(size: usize, seed: u64) -> Bytes {
    let mut rng = Rng::new(seed);
    let v: Vec<u8> = (0..size)
        .map(|_| b'!' + (rng.next_u64() % 94) as u8)
        .collect();
    Bytes::from(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_spreads() {
        let mut r = Rng::new(1);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            seen[r.below(10) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}
