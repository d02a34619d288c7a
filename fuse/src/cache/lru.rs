//! A byte-weighted least-recently-used order over digests, shared by the memory tier and the disk
//! index.
//!
//! Hand-written rather than the `lru` crate because both tiers are bounded by bytes, not by entry
//! count, and the disk index must be rebuilt in a given order (oldest file first) at open; a map
//! plus a `BTreeMap` of use ticks does both in a few dozen lines, with O(log n) per touch.

use std::collections::{BTreeMap, HashMap};

use lazypull_converter::Digest;

struct Slot<V> {
    value: V,
    weight: u64,
    tick: u64,
}

/// Entries keyed by digest, each with a weight in bytes, ordered by last use.
pub(crate) struct ByteLru<V> {
    slots: HashMap<Digest, Slot<V>>,
    /// Use tick → key; the first entry is the least recently used.
    order: BTreeMap<u64, Digest>,
    bytes: u64,
    next_tick: u64,
}

impl<V> Default for ByteLru<V> {
    fn default() -> Self {
        ByteLru {
            slots: HashMap::new(),
            order: BTreeMap::new(),
            bytes: 0,
            next_tick: 0,
        }
    }
}

impl<V> ByteLru<V> {
    fn tick(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }

    /// Insert or replace `key` as the most recently used entry. Returns whether it is new.
    pub(crate) fn insert(&mut self, key: Digest, value: V, weight: u64) -> bool {
        let tick = self.tick();
        let old = self.slots.insert(
            key,
            Slot {
                value,
                weight,
                tick,
            },
        );
        self.order.insert(tick, key);
        self.bytes += weight;
        match old {
            Some(old) => {
                self.order.remove(&old.tick);
                self.bytes -= old.weight;
                false
            }
            None => true,
        }
    }

    /// The entry for `key`, marked as just used.
    pub(crate) fn touch(&mut self, key: &Digest) -> Option<&mut V> {
        let tick = self.tick();
        let slot = self.slots.get_mut(key)?;
        self.order.remove(&slot.tick);
        slot.tick = tick;
        self.order.insert(tick, *key);
        Some(&mut slot.value)
    }

    /// Remove `key`, returning its value and weight.
    pub(crate) fn remove(&mut self, key: &Digest) -> Option<(V, u64)> {
        let slot = self.slots.remove(key)?;
        self.order.remove(&slot.tick);
        self.bytes -= slot.weight;
        Some((slot.value, slot.weight))
    }

    /// The least recently used key, if any.
    pub(crate) fn oldest(&self) -> Option<Digest> {
        self.order.first_key_value().map(|(_, k)| *k)
    }

    pub(crate) fn contains(&self, key: &Digest) -> bool {
        self.slots.contains_key(key)
    }

    /// Sum of the weights.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Keys from least to most recently used (for tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn keys_oldest_first(&self) -> Vec<Digest> {
        self.order.values().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::of(&[n])
    }

    #[test]
    fn order_follows_use_and_weights_add_up() {
        let mut lru = ByteLru::default();
        assert!(lru.insert(d(1), (), 10));
        assert!(lru.insert(d(2), (), 20));
        assert!(lru.insert(d(3), (), 30));
        assert_eq!(lru.bytes(), 60);
        assert_eq!(lru.oldest(), Some(d(1)));
        lru.touch(&d(1));
        assert_eq!(lru.keys_oldest_first(), vec![d(2), d(3), d(1)]);
        // Replacing keeps one entry and swaps the weight.
        assert!(!lru.insert(d(2), (), 5));
        assert_eq!(lru.bytes(), 45);
        assert_eq!(lru.len(), 3);
        assert_eq!(lru.keys_oldest_first(), vec![d(3), d(1), d(2)]);
        assert_eq!(lru.remove(&d(3)).map(|(_, w)| w), Some(30));
        assert_eq!(lru.bytes(), 15);
        assert!(lru.remove(&d(3)).is_none());
        assert!(lru.touch(&d(9)).is_none());
    }
}
