//! Liveness repair by ranges: when two nodes' liveness digests differ, they compare a hash
//! per bucket of keys and exchange only the entries of the buckets that differ, so a repair
//! costs about what differs instead of the whole map.
//!
//! # Flow
//! 1. A sends [`Frame::Digest`] to B; B's liveness digest differs. A map of at most
//!    [`WHOLE_MAP_MAX`] entries is sent whole (cheaper than its bucket hashes); a larger one
//!    as [`Frame::LivenessBuckets`]: one hash per bucket.
//! 2. A compares with its own buckets, sends its entries of the buckets that differ
//!    ([`Frame::Liveness`]) and asks for B's ([`Frame::LivenessWant`]).
//! 3. B sends its entries of those buckets. Merge is max-wins, so both now agree there.
//!
//! [`Frame::Digest`]: crate::codec::Frame::Digest
//! [`Frame::LivenessBuckets`]: crate::codec::Frame::LivenessBuckets
//! [`Frame::Liveness`]: crate::codec::Frame::Liveness
//! [`Frame::LivenessWant`]: crate::codec::Frame::LivenessWant

use std::collections::BTreeSet;

use statusmesh_crdt::liveness::Fnv64;
use statusmesh_crdt::Liveness;

/// Buckets keys are spread over; a [`crate::codec::Frame::LivenessBuckets`] carries exactly
/// this many hashes (about 1.3 KB).
pub const BUCKETS: usize = 256;

/// Maps of at most this many entries are repaired whole.
pub const WHOLE_MAP_MAX: usize = BUCKETS;

/// The bucket of a liveness key.
pub fn bucket_of(key: &str) -> u16 {
    let mut hash = Fnv64::new();
    hash.write(key.as_bytes());
    (hash.finish() % BUCKETS as u64) as u16
}

/// One hash per bucket over its entries (in key order), truncated to 32 bits: enough to
/// tell buckets apart, and a clash only delays a repair to a later round.
pub fn bucket_hashes(liveness: &Liveness) -> Vec<u32> {
    let mut hashes: Vec<Fnv64> = (0..BUCKETS).map(|_| Fnv64::new()).collect();
    for (key, seen_ms) in liveness.iter() {
        let hash = &mut hashes[usize::from(bucket_of(key))];
        hash.write(key.as_bytes());
        hash.write(&seen_ms.to_le_bytes());
    }
    hashes.iter().map(|h| h.finish() as u32).collect()
}

/// The buckets whose hashes differ between `ours` and `theirs` (both [`BUCKETS`] long).
pub fn differing(ours: &[u32], theirs: &[u32]) -> Vec<u16> {
    (0..BUCKETS.min(ours.len()).min(theirs.len()))
        .filter(|&i| ours[i] != theirs[i])
        .map(|i| i as u16)
        .collect()
}

/// The entries of `liveness` in `buckets`.
pub fn entries_in(liveness: &Liveness, buckets: &[u16]) -> Vec<(String, u64)> {
    let wanted: BTreeSet<u16> = buckets.iter().copied().collect();
    liveness
        .iter()
        .filter(|(key, _)| wanted.contains(&bucket_of(key)))
        .map(|(key, seen_ms)| (key.to_owned(), seen_ms))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_bucket_of_a_changed_entry_differs() {
        let ours: Liveness = (0..1_000).map(|i| (format!("api/c{i}/r"), 5)).collect();
        let mut theirs = ours.clone();
        theirs.observe("api/c7/r", 6);
        let differ = differing(&bucket_hashes(&ours), &bucket_hashes(&theirs));
        assert_eq!(differ, vec![bucket_of("api/c7/r")]);
        let entries = entries_in(&theirs, &differ);
        assert!(entries.contains(&("api/c7/r".to_owned(), 6)));
        assert!(
            entries.len() < 20,
            "{} entries for one change",
            entries.len()
        );
    }
}
