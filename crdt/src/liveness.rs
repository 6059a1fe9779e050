//! Liveness kept out of history: cell key → last time its reporter was heard, max wins.
//!
//! A reporter that re-asserts the same state must not grow the Automerge history, yet every
//! replica must learn that it is still alive. This map is a state-based CRDT (a grow-only map
//! of max-registers): merge is commutative, associative and idempotent, so gossip may carry
//! entries in any order, any number of times.

use std::collections::BTreeMap;

/// Default bound on the number of entries; the oldest are evicted beyond it.
pub const LIVENESS_ENTRIES_MAX: usize = 200_000;

/// Cell key → last seen, in milliseconds since the Unix epoch (the origin's clock).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Liveness {
    entries: BTreeMap<String, u64>,
}

impl Liveness {
    /// Raises `key` to `seen_ms` if that is newer. Returns true when the map changed.
    pub fn observe(&mut self, key: &str, seen_ms: u64) -> bool {
        match self.entries.get_mut(key) {
            Some(current) if *current >= seen_ms => false,
            Some(current) => {
                *current = seen_ms;
                true
            }
            None => {
                if self.entries.len() >= LIVENESS_ENTRIES_MAX {
                    self.evict_oldest();
                }
                self.entries.insert(key.to_owned(), seen_ms);
                true
            }
        }
    }

    /// Merges another map in; returns the entries that moved forward here.
    pub fn merge(&mut self, other: &Liveness) -> Vec<(String, u64)> {
        other
            .entries
            .iter()
            .filter(|(k, v)| self.observe(k, **v))
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// When `key` was last seen, if ever.
    pub fn last_seen(&self, key: &str) -> Option<u64> {
        self.entries.get(key).copied()
    }

    /// Every entry, ordered by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A 64-bit digest of the whole map, for cheap comparison in anti-entropy.
    pub fn digest(&self) -> u64 {
        let mut hash = Fnv64::new();
        for (k, v) in &self.entries {
            hash.write(k.as_bytes());
            hash.write(&v.to_le_bytes());
        }
        hash.finish()
    }

    fn evict_oldest(&mut self) {
        if let Some(oldest) = self
            .entries
            .iter()
            .min_by_key(|(_, v)| **v)
            .map(|(k, _)| k.clone())
        {
            self.entries.remove(&oldest);
        }
    }
}

impl FromIterator<(String, u64)> for Liveness {
    fn from_iter<T: IntoIterator<Item = (String, u64)>>(iter: T) -> Self {
        let mut map = Liveness::default();
        for (k, v) in iter {
            map.observe(&k, v);
        }
        map
    }
}

/// FNV-1a, 64 bit: a stable, dependency-free hash for digests (not for security).
#[derive(Debug)]
pub struct Fnv64(u64);

impl Fnv64 {
    /// A fresh hasher.
    pub fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    /// Feeds bytes in.
    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// The hash so far.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for Fnv64 {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn map(entries: &[(u8, u64)]) -> Liveness {
        entries.iter().map(|(k, v)| (format!("k{k}"), *v)).collect()
    }

    proptest! {
        #[test]
        fn merge_is_commutative_associative_and_idempotent(
            a in proptest::collection::vec((0u8..8, 0u64..100), 0..10),
            b in proptest::collection::vec((0u8..8, 0u64..100), 0..10),
            c in proptest::collection::vec((0u8..8, 0u64..100), 0..10),
        ) {
            let (a, b, c) = (map(&a), map(&b), map(&c));
            let mut ab = a.clone(); ab.merge(&b);
            let mut ba = b.clone(); ba.merge(&a);
            prop_assert_eq!(&ab, &ba);
            let mut ab_c = ab.clone(); ab_c.merge(&c);
            let mut bc = b.clone(); bc.merge(&c);
            let mut a_bc = a.clone(); a_bc.merge(&bc);
            prop_assert_eq!(&ab_c, &a_bc);
            let mut aa = a.clone(); aa.merge(&a);
            prop_assert_eq!(&aa, &a);
        }
    }

    #[test]
    fn older_observation_does_not_move_an_entry_back() {
        let mut live = Liveness::default();
        assert!(live.observe("a", 10));
        assert!(!live.observe("a", 5));
        assert_eq!(live.last_seen("a"), Some(10));
    }
}
