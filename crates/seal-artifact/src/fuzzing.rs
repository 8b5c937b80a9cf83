//! Input strategies shared by the fuzz targets (`tests/fuzz.rs` here, in
//! `seal-trust` and in `seal-control`); built only with the `fuzzing`
//! feature, which only tests turn on.

use proptest::prelude::*;

/// A valid sample with up to 8 random edits (a byte overwritten, inserted,
/// or the rest cut), so a parser is driven past its first checks.
pub fn mutated(sample: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((any::<u16>(), any::<u8>(), 0u8..3), 0..8).prop_map(move |edits| {
        let mut b = sample.clone();
        for (at, byte, op) in edits {
            let i = if b.is_empty() {
                0
            } else {
                at as usize % b.len()
            };
            match op {
                0 if !b.is_empty() => b[i] = byte,
                1 => b.insert(i, byte),
                _ if !b.is_empty() => b.truncate(i),
                _ => {}
            }
        }
        b
    })
}

/// Arbitrary bytes (up to `max`) or a mutation of `sample`.
pub fn input(sample: Vec<u8>, max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![prop::collection::vec(any::<u8>(), 0..max), mutated(sample)]
}
