//! Hash maps keyed by blob ids for walks that touch millions of them (`fleet_usage`).
//!
//! Ids are BLAKE3 hashes, so 16 of their bytes, folded with a per-process random key, make a
//! good hash at a fraction of SipHash's cost. The key matters: a customer can choose file
//! contents, and so grind chunk ids whose unkeyed low bits collide, to slow a fleet report
//! down; without the key there is nothing to aim at.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

use xstore_chunker::ChunkId;

/// A map from blob ids.
pub(crate) type IdMap<V> = HashMap<ChunkId, V, IdHash>;

/// Builds [`IdHasher`]s with this process's key.
#[derive(Clone, Copy)]
pub(crate) struct IdHash {
    key: (u64, u64),
}

impl Default for IdHash {
    fn default() -> Self {
        static KEY: OnceLock<(u64, u64)> = OnceLock::new();
        let key = *KEY.get_or_init(|| {
            let random = std::collections::hash_map::RandomState::new();
            (random.hash_one(1u8), random.hash_one(2u8))
        });
        IdHash { key }
    }
}

impl BuildHasher for IdHash {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher {
            key: self.key,
            state: 0,
        }
    }
}

/// Folds the first 16 bytes written (the start of an id) with the key.
pub(crate) struct IdHasher {
    key: (u64, u64),
    state: u64,
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        let word = |at: usize| {
            let mut w = [0u8; 8];
            if let Some(b) = bytes.get(at..(at + 8).min(bytes.len())) {
                if let Some(dst) = w.get_mut(..b.len()) {
                    dst.copy_from_slice(b);
                }
            }
            u64::from_le_bytes(w)
        };
        let product = u128::from(word(0) ^ self.key.0) * u128::from(word(8) ^ self.key.1);
        self.state ^= (product as u64) ^ ((product >> 64) as u64);
    }

    /// The length prefix of the id's bytes: the same for every id.
    fn write_usize(&mut self, _: usize) {}

    fn finish(&self) -> u64 {
        self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_ids_spread_and_equal_ids_agree() {
        let ids: Vec<ChunkId> = (0u32..10_000)
            .map(|i| ChunkId::of(&i.to_le_bytes()))
            .collect();
        let h = IdHash::default();
        let mut buckets = vec![0u32; 1024];
        for id in &ids {
            assert_eq!(h.hash_one(id), h.hash_one(*id));
            if let Some(b) = buckets.get_mut((h.hash_one(id) % 1024) as usize) {
                *b += 1;
            }
        }
        // 10,000 ids into 1024 buckets: about 10 each, none wildly off.
        assert!(buckets.iter().all(|&n| n < 40), "{buckets:?}");
        let mut map: IdMap<u32> = IdMap::default();
        for (i, id) in ids.iter().enumerate() {
            map.insert(*id, i as u32);
        }
        assert!(ids
            .iter()
            .enumerate()
            .all(|(i, id)| map.get(id) == Some(&(i as u32))));
    }
}
