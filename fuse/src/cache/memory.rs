//! The hot tier: verified chunks kept in memory, least recently used dropped first, bounded by bytes.
//!
//! Everything in it was verified before it got in (by `put`, by a fetch, or by a disk read), so a
//! memory hit is served without hashing again.

use std::sync::Arc;

use lazypull_converter::Digest;

use super::lru::ByteLru;

pub(crate) struct MemoryTier {
    lru: ByteLru<Arc<[u8]>>,
    capacity: u64,
}

impl MemoryTier {
    pub(crate) fn new(capacity: u64) -> Self {
        MemoryTier {
            lru: ByteLru::default(),
            capacity,
        }
    }

    pub(crate) fn get(&mut self, digest: &Digest) -> Option<Arc<[u8]>> {
        self.lru.touch(digest).cloned()
    }

    pub(crate) fn contains(&self, digest: &Digest) -> bool {
        self.lru.contains(digest)
    }

    /// Keep `data` as the most recently used entry, dropping older ones to fit. A chunk larger
    /// than the whole tier is not kept: it would only flush everything else.
    pub(crate) fn insert(&mut self, digest: Digest, data: Arc<[u8]>) {
        let weight = data.len() as u64;
        if weight > self.capacity {
            return;
        }
        self.lru.insert(digest, data, weight);
        while self.lru.bytes() > self.capacity {
            match self.lru.oldest() {
                Some(old) => {
                    self.lru.remove(&old);
                }
                None => break,
            }
        }
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.lru.bytes()
    }

    pub(crate) fn len(&self) -> usize {
        self.lru.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(fill: u8, len: usize) -> (Digest, Arc<[u8]>) {
        let data = vec![fill; len];
        (Digest::of(&data), data.into())
    }

    #[test]
    fn bounded_by_bytes_and_drops_least_recently_used() {
        let mut tier = MemoryTier::new(100);
        let (a, da) = chunk(1, 40);
        let (b, db) = chunk(2, 40);
        let (c, dc) = chunk(3, 40);
        tier.insert(a, da);
        tier.insert(b, db);
        assert!(tier.get(&a).is_some()); // a is now newer than b
        tier.insert(c, dc);
        assert!(tier.contains(&a) && tier.contains(&c) && !tier.contains(&b));
        assert_eq!(tier.bytes(), 80);
        let (big, dbig) = chunk(4, 101);
        tier.insert(big, dbig);
        assert!(!tier.contains(&big));
        assert_eq!(tier.len(), 2);
    }

    #[test]
    fn zero_capacity_keeps_nothing_but_empty_chunks() {
        let mut tier = MemoryTier::new(0);
        let (a, da) = chunk(1, 1);
        tier.insert(a, da);
        assert!(!tier.contains(&a));
        let (e, de) = chunk(0, 0);
        tier.insert(e, de);
        assert!(tier.get(&e).is_some_and(|d| d.is_empty()));
    }
}
