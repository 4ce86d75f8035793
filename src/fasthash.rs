//! A cheap hasher for the small keys looked up on every transaction: a
//! client's prepared-statement names and the statement ids a server
//! connection has prepared.
//!
//! The standard library's SipHash costs several hundred instructions per
//! lookup, a measurable share of a pooled transaction (callgrind, pgbench
//! `-M prepared`). These maps are per client or per server connection, so a
//! client that chose colliding names would only slow its own lookups; the
//! seed is still random per process so that collisions cannot be prepared
//! in advance. The mixing step is the multiply-and-rotate used by the Rust
//! compiler's own hasher.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::LazyLock;

/// A `HashMap` with [`FastState`].
pub type FastMap<K, V> = HashMap<K, V, FastState>;

/// A random odd constant with well-spread bits (the Rust compiler's).
const MULTIPLIER: u64 = 0xf135_7aea_2e62_a9c5;

static SEED: LazyLock<u64> =
    LazyLock::new(|| std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64));

/// Builds [`FastHasher`]s seeded once per process.
#[derive(Debug, Clone, Copy)]
pub struct FastState {
    seed: u64,
}

impl Default for FastState {
    fn default() -> Self {
        FastState { seed: *SEED }
    }
}

impl BuildHasher for FastState {
    type Hasher = FastHasher;

    fn build_hasher(&self) -> FastHasher {
        FastHasher { hash: self.seed }
    }
}

/// Multiply-and-rotate over 8-byte words.
#[derive(Debug, Clone, Copy)]
pub struct FastHasher {
    hash: u64,
}

impl FastHasher {
    fn add(&mut self, word: u64) {
        self.hash = self.hash.wrapping_add(word).wrapping_mul(MULTIPLIER);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            // The length keeps "a" and "a\0" apart.
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        // The multiply leaves the best-mixed bits at the top; the table
        // uses the bottom ones for the bucket and the top 7 for the tag.
        self.hash.rotate_left(26)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash<T: std::hash::Hash + ?Sized>(v: &T) -> u64 {
        FastState::default().hash_one(v)
    }

    #[test]
    fn equal_keys_hash_equal_and_different_keys_differ() {
        assert_eq!(hash("P0_1"), hash(&String::from("P0_1")));
        assert_ne!(hash("P0_1"), hash("P0_2"));
        assert_ne!(hash("a"), hash("a\0"));
        assert_ne!(hash("abcdefgh"), hash("abcdefgh\0"));
        assert_ne!(hash(&1u64), hash(&2u64));
    }

    #[test]
    fn sequential_ids_spread_over_buckets_and_tags() {
        // Low bits pick the bucket, the top 7 the control tag: both must
        // vary for sequential statement ids.
        let low: std::collections::HashSet<u64> = (0..1024u64).map(|i| hash(&i) & 1023).collect();
        let top: std::collections::HashSet<u64> = (0..1024u64).map(|i| hash(&i) >> 57).collect();
        assert!(low.len() > 600, "{} distinct buckets", low.len());
        assert!(top.len() > 64, "{} distinct tags", top.len());
    }

    #[test]
    fn a_map_works() {
        let mut m: FastMap<String, u32> = FastMap::default();
        for i in 0..1000 {
            m.insert(format!("stmt_{i}"), i);
        }
        assert_eq!(m.get("stmt_517"), Some(&517));
        assert_eq!(m.len(), 1000);
    }
}
