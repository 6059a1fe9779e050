//! Liveness repair: reporter heartbeats (key → last seen, max wins) ride outside Automerge
//! history, and anti-entropy repairs them apart from the documents.
//!
//! # Flow
//! 1. A digest whose liveness hash differs from ours is answered with our whole map while it
//!    is small ([`liveness_range::WHOLE_MAP_MAX`]), as a [`Frame::Liveness`] that wants a
//!    reply: the peer merges it and sends back the entries it holds newer.
//! 2. A larger map is compared by buckets: [`Frame::LivenessBuckets`] carries a hash per
//!    bucket; the peer sends its entries of the buckets that differ and asks for ours
//!    ([`Frame::LivenessWant`]).
//!
//! [`Frame::Liveness`]: crate::codec::Frame::Liveness
//! [`Frame::LivenessBuckets`]: crate::codec::Frame::LivenessBuckets
//! [`Frame::LivenessWant`]: crate::codec::Frame::LivenessWant

use statusmesh_crdt::Liveness;

use super::{Event, Node};
use crate::codec::Frame;
use crate::liveness_range;

impl Node {
    /// Answers a digest whose liveness hash is `liveness` (see the module docs, step 1 and 2).
    pub(super) fn on_liveness_digest(&mut self, from: &str, liveness: u64) {
        if liveness != self.replica.liveness().digest() {
            let map = self.replica.liveness();
            if map.len() <= liveness_range::WHOLE_MAP_MAX {
                let entries: Vec<(String, u64)> =
                    map.iter().map(|(k, v)| (k.to_owned(), v)).collect();
                self.send_liveness(from, entries, true);
            } else {
                let hashes = liveness_range::bucket_hashes(map);
                self.send(from, &Frame::LivenessBuckets { hashes });
            }
        }
    }

    /// Compares a peer's liveness buckets with ours: sends our entries of the buckets that
    /// differ and asks for theirs.
    pub(super) fn on_liveness_buckets(&mut self, from: &str, hashes: &[u32]) {
        let ours = liveness_range::bucket_hashes(self.replica.liveness());
        let buckets = liveness_range::differing(&ours, hashes);
        if buckets.is_empty() {
            return;
        }
        let entries = liveness_range::entries_in(self.replica.liveness(), &buckets);
        self.send_liveness(from, entries, false);
        self.send(from, &Frame::LivenessWant { buckets });
    }

    /// Sends our entries of the buckets a peer asked for.
    pub(super) fn on_liveness_want(&mut self, from: &str, buckets: &[u16]) {
        let entries = liveness_range::entries_in(self.replica.liveness(), buckets);
        self.send_liveness(from, entries, false);
    }

    /// Merges a peer's entries (max wins) and reports the heartbeats that moved; answers with
    /// the entries held newer here when the peer wants a reply.
    pub(super) fn on_liveness(
        &mut self,
        from: &str,
        entries: Vec<(String, u64)>,
        reply_wanted: bool,
    ) {
        let theirs: Liveness = entries.into_iter().collect();
        for (key, last_seen_ms) in self.replica.merge_liveness(&theirs) {
            self.push_event(Event::Heartbeat { key, last_seen_ms });
        }
        if reply_wanted {
            let newer: Vec<(String, u64)> = self
                .replica
                .liveness()
                .iter()
                .filter(|(k, v)| theirs.last_seen(k).is_none_or(|t| t < *v))
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
            if !newer.is_empty() {
                self.send_liveness(from, newer, false);
            }
        }
    }

    /// Sends `entries` to `to` in frames of at most `liveness_per_frame_max` entries.
    pub(super) fn send_liveness(
        &mut self,
        to: &str,
        entries: Vec<(String, u64)>,
        reply_wanted: bool,
    ) {
        for chunk in entries.chunks(self.config.liveness_per_frame_max) {
            let frame = Frame::Liveness {
                entries: chunk.to_vec(),
                reply_wanted,
            };
            self.send(to, &frame);
        }
    }
}
