//! Acknowledgements: which peers hold each of this node's own recent changes. An origin
//! learns it from [`Frame::Ack`]s, so that a write can wait for copies in other regions
//! (`regions_holding`) and the driver can show each peer's replication lag (`peer_lag`).
//! An ack from a peer this node pushed to directly also times a round trip for the tree
//! policy.
//!
//! [`Frame::Ack`]: crate::codec::Frame::Ack

use std::collections::BTreeSet;

use statusmesh_crdt::ChangeHash;

use super::{Node, NodeId};

/// Most local changes whose acknowledgements are tracked; the oldest is forgotten beyond it.
pub const PENDING_ACKS_MAX: usize = 65_536;

/// Who holds one of this node's own changes.
#[derive(Debug, Clone)]
pub(super) struct PendingAck {
    made_at_ms: u64,
    acked_by: BTreeSet<NodeId>,
}

impl Node {
    /// The hash of this node's most recent local change, if it made one.
    pub fn last_local_change(&self) -> Option<ChangeHash> {
        self.last_local_change
    }

    /// How many distinct regions (this node's included) are known to hold local change
    /// `hash`; `None` for a change this node did not make or no longer tracks (the oldest
    /// beyond [`PENDING_ACKS_MAX`]).
    #[must_use]
    pub fn regions_holding(&self, hash: &ChangeHash) -> Option<usize> {
        if self.peers.is_empty() {
            return Some(1);
        }
        let pending = self.pending_acks.get(hash)?;
        let mut regions: BTreeSet<&str> = BTreeSet::from([self.region.as_str()]);
        regions.extend(
            pending
                .acked_by
                .iter()
                .filter_map(|p| self.peers.get(p).map(|s| s.region.as_str())),
        );
        Some(regions.len())
    }

    /// Replication lag of `peer`: how many of this node's tracked changes it has not
    /// acknowledged, and since when the oldest of them waits (ms).
    #[must_use]
    pub fn peer_lag(&self, peer: &str) -> (usize, Option<u64>) {
        let mut count = 0;
        let mut oldest: Option<u64> = None;
        for pending in self.pending_acks.values() {
            if !pending.acked_by.contains(peer) {
                count += 1;
                oldest = Some(oldest.map_or(pending.made_at_ms, |o| o.min(pending.made_at_ms)));
            }
        }
        (count, oldest)
    }

    /// Notes that `from` holds `changes` (those of this node's that it still tracks).
    pub(super) fn on_ack(&mut self, from: &str, changes: &[[u8; 32]]) {
        // Entries stay after every peer acknowledged them (until evicted by age), so that a
        // late question about a change still gets the right answer.
        // An acknowledgement from a peer this node pushed to directly times a round trip.
        let pushed_to = self
            .plumtree
            .tree(&self.id)
            .is_some_and(|t| t.eager.contains(from));
        for hash in changes {
            if let Some(pending) = self.pending_acks.get_mut(&ChangeHash(*hash)) {
                let first = pending.acked_by.insert(from.to_owned());
                if first && pushed_to {
                    let rtt_ms = self.now_ms.saturating_sub(pending.made_at_ms);
                    self.plumtree.sample_rtt(from, rtt_ms);
                }
            }
        }
    }

    /// Starts tracking who holds local change `hash`, made at `now_ms`; forgets the oldest
    /// beyond [`PENDING_ACKS_MAX`]. Nothing is tracked without peers (nobody to ack).
    pub(super) fn track_ack(&mut self, now_ms: u64, hash: ChangeHash) {
        self.last_local_change = Some(hash);
        if self.peers.is_empty() {
            return;
        }
        while self.pending_acks.len() >= PENDING_ACKS_MAX {
            let Some(oldest) = self.pending_order.pop_front() else {
                break;
            };
            self.pending_acks.remove(&oldest);
        }
        self.pending_acks.insert(
            hash,
            PendingAck {
                made_at_ms: now_ms,
                acked_by: BTreeSet::new(),
            },
        );
        self.pending_order.push_back(hash);
        debug_assert!(self.pending_acks.len() <= PENDING_ACKS_MAX);
    }
}
