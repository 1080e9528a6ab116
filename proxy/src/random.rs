//! A fast per-thread pseudo-random source for request ids, weighted picks and sampling.
//! Not for secrets: nothing here needs cryptographic strength.

use std::cell::Cell;

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x5eed);
    h.finish() | 1
}

/// xorshift64*.
pub fn next_u64() -> u64 {
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// Uniform in `0..bound` (bound > 0); the modulo bias is negligible for 64-bit draws.
pub fn below(bound: u64) -> u64 {
    next_u64() % bound.max(1)
}
