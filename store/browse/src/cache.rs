//! Caches bounded by bytes, not by count: what a view keeps of trees, chunks and listings is
//! sized by what the snapshots hold, and a customer's host decides that (a directory whose
//! entries carry large xattrs decodes to hundreds of MB).

use std::hash::Hash;
use std::sync::Arc;

/// A least-recently-used map whose values' sizes (given at insertion) stay under a limit.
/// A value larger than a quarter of the limit is not kept at all: it would push out
/// everything else and be pushed out itself soon after.
pub(crate) struct ByteLru<K: Hash + Eq, V> {
    lru: lru::LruCache<K, (Arc<V>, usize)>,
    bytes: usize,
    limit: usize,
}

impl<K: Hash + Eq, V> ByteLru<K, V> {
    pub(crate) fn new(limit: usize) -> Self {
        ByteLru {
            lru: lru::LruCache::unbounded(),
            bytes: 0,
            limit,
        }
    }

    pub(crate) fn get(&mut self, key: &K) -> Option<Arc<V>> {
        self.lru.get(key).map(|(v, _)| v.clone())
    }

    pub(crate) fn put(&mut self, key: K, value: Arc<V>, size: usize) {
        if size > self.limit / 4 {
            return;
        }
        self.bytes += size;
        if let Some((_, old)) = self.lru.put(key, (value, size)) {
            self.bytes -= old;
        }
        while self.bytes > self.limit {
            match self.lru.pop_lru() {
                Some((_, (_, n))) => self.bytes -= n,
                None => break,
            }
        }
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_holds_and_large_values_are_not_kept() {
        let mut c: ByteLru<u32, Vec<u8>> = ByteLru::new(1000);
        for i in 0..100 {
            c.put(i, Arc::new(vec![0; 100]), 100);
            assert!(c.bytes() <= 1000);
        }
        assert!(c.get(&99).is_some() && c.get(&0).is_none());
        c.put(500, Arc::new(Vec::new()), 251);
        assert!(c.get(&500).is_none());
        // Replacing a key counts its new size only.
        c.put(99, Arc::new(Vec::new()), 10);
        assert!(c.bytes() <= 1000);
    }
}
