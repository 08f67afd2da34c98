//! Unit tests of the crate, by area, with fixtures written from the
//! providers' documented wire formats.

mod errors;
mod misc;
mod price;
mod request;
mod response;
mod sse;
mod stream;
mod tokens;

use serde_json::Value;

/// A tiny deterministic generator for split points (no dev-dependency).
pub(crate) struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        Self(
            seed.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407),
        )
    }

    pub fn next_below(&mut self, bound: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % bound.max(1) as u64) as usize
    }
}

/// Splits `bytes` into pieces in several ways: whole, byte by byte, fixed
/// sizes, and pseudo-random cuts.
pub(crate) fn splits(bytes: &[u8]) -> Vec<Vec<&[u8]>> {
    let mut ways: Vec<Vec<&[u8]>> = vec![vec![bytes], bytes.chunks(1).collect()];
    for size in [2, 3, 7, 64] {
        ways.push(bytes.chunks(size).collect());
    }
    for seed in 0..8 {
        let mut rng = Lcg::new(seed);
        let mut pieces = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let take = 1 + rng.next_below(rest.len().min(40));
            let (piece, tail) = rest.split_at(take);
            pieces.push(piece);
            rest = tail;
        }
        ways.push(pieces);
    }
    ways
}

/// Removes `created` (a clock reading) from a response for comparison.
pub(crate) fn without_created(mut value: Value) -> Value {
    if let Some(object) = value.as_object_mut() {
        object.remove("created");
    }
    value
}
