//! Plumtree broadcast state (Leitão, Pereira, Rodrigues: "Epidemic Broadcast Trees", 2007):
//! eager push along a tree, lazy announcements elsewhere.
//!
//! The tree is kept per root (the node that made a change), as riak_core's broadcast does:
//! every root's changes then follow their own low-latency tree instead of one tree shared by
//! all origins, whose paths between two far leaves can be much longer than the direct one.
//!
//! # Flow
//! 1. A node that makes a change, or sees one first, pushes it ([`Frame::Push`]) to the
//!    eager peers of the change's root (never back to the sender) and queues an
//!    announcement ([`Frame::IHave`], batched per tick) for the root's lazy peers.
//! 2. A push whose every change was already held is a duplicate: the receiver answers
//!    [`Frame::Prune`] and both sides move the edge to lazy.
//! 3. An announced change that does not arrive within `graft_timeout_ms` is grafted
//!    ([`Frame::Graft`]): the announcer sends it and makes the grafter an eager peer.
//! 4. An announcement that came `optimize_threshold_ms` before the eager copy names a faster
//!    path: the node grafts the announcer and prunes the slower parent, so trees converge to
//!    low-latency paths.
//! 5. A peer declared down leaves every tree; its eager role moves to a lazy peer of its
//!    region.
//!
//! The first tree of a root is chosen from regions and measured round trips: the root
//! pushes to every peer of its own region and to the nearest peer of every other region;
//! that peer pushes on to its region. So a change reaches every node in about the one-way
//! latency of the direct path plus one hop inside the region, with one copy per node.
//! Region labels and a rank only choose while round trips are unknown: the root keeps
//! re-choosing its entry into each region ([`Plumtree::rechoose_entries`]) as samples come
//! in, and swaps an entry that is failing or clearly slower than a peer of its region.
//!
//! # Layout
//! This file holds the state ([`Plumtree`]: trees per root, round trips) and the moves on a
//! tree (graft, prune, a peer leaving); `cache.rs` the changes seen, the announcements
//! missing and the batches waiting; `tree_policy.rs` the policy above (first trees, entries
//! re-chosen by round trip, a peer down or back up), reading the mesh through `MeshView`;
//! `check.rs` the bounds and tree invariants ([`BroadcastViolation`]).
//!
//! [`Frame::Push`]: crate::codec::Frame::Push
//! [`Frame::IHave`]: crate::codec::Frame::IHave
//! [`Frame::Prune`]: crate::codec::Frame::Prune
//! [`Frame::Graft`]: crate::codec::Frame::Graft

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use statusmesh_crdt::ChangeHash;

use crate::error::ConfigError;

mod cache;
mod check;
#[cfg(test)]
mod tests;
mod tree_policy;

pub use check::BroadcastViolation;
pub use tree_policy::spread_rank;
pub(crate) use tree_policy::{pick_random, MeshView};

/// A compact message id: the first 8 bytes of the change hash. Two changes share one with
/// probability 2^-64 per pair; a clash only makes a node skip a push, which anti-entropy
/// repairs.
pub type MessageId = u64;

/// The message id of a change.
pub fn message_id(hash: &ChangeHash) -> MessageId {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&hash.0[..8]);
    u64::from_le_bytes(bytes)
}

/// Most peers that announced one missing change and are kept to graft from, in turn.
pub const ANNOUNCERS_MAX: usize = 4;

/// Round-trip samples a peer needs before its estimate counts: one sample may be a queue
/// spike; below this, region labels and ranks choose.
pub const RTT_SAMPLES_MIN: u32 = 3;

/// An entry is swapped for a peer of its region only if the peer's round trip is lower by
/// both this share (percent) and [`RTT_SWAP_MIN_MS`]: peers of similar round trip never
/// take turns.
pub const RTT_SWAP_MIN_PERCENT: u64 = 20;

/// See [`RTT_SWAP_MIN_PERCENT`].
pub const RTT_SWAP_MIN_MS: u64 = 2;

/// Timing and bounds of the broadcast, part of [`crate::Config`].
///
/// [`Frame::IHave`]: crate::codec::Frame::IHave
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BroadcastConfig {
    /// How long announcements wait to be batched into one
    /// [`Frame::IHave`](crate::codec::Frame::IHave) per peer, in ms.
    /// LAN 5, WAN 10.
    pub ihave_interval_ms: u64,
    /// How long an announced change may take to arrive by push before it is grafted from the
    /// announcer, in ms; the next announcer is asked after as long again. Longer than the
    /// spread of eager-path latencies; it also paces the re-choice of entries. At least 1.
    /// LAN 50, WAN 300.
    pub graft_timeout_ms: u64,
    /// An announcement this much earlier than the eager copy (ms) names a faster path: the
    /// announcer is grafted and the slower parent pruned. LAN 5, WAN 20.
    pub optimize_threshold_ms: u64,
    /// Lazy peers a root's tree starts with at a node that is not the root. Default 3.
    pub lazy_fanout: usize,
    /// Most eager peers per root tree; beyond it a graft is answered but not kept (the
    /// grafter is reached lazily). Default 256.
    pub eager_peers_max: usize,
    /// Most lazy peers per root tree; a prune beyond it forgets the peer. Default 64.
    pub lazy_peers_max: usize,
    /// Most root trees kept; the least recently used is forgotten beyond it (and rebuilt
    /// from the defaults when its root writes again). At least 1. Default 1,024.
    pub roots_max: usize,
    /// Most change ids remembered as seen; the oldest is forgotten beyond it (the replica
    /// still knows the change, so a late copy is still a duplicate). Default 65,536.
    pub seen_max: usize,
    /// Most bytes of recent changes kept to answer grafts, in bytes; the oldest are
    /// forgotten beyond it (a graft for them is left to anti-entropy). Default 16 MiB.
    pub payload_cache_bytes_max: usize,
    /// Most changes announced but not arrived; further announcements are ignored until it
    /// drains (anti-entropy repairs them). Default 4,096.
    pub missing_max: usize,
    /// Most announcements waiting for one peer's next batch; the rest are dropped and
    /// counted. Default 4,096 (one full frame, `codec::IDS_PER_FRAME_MAX`).
    pub ihave_per_peer_max: usize,
}

impl BroadcastConfig {
    /// Settings for nodes on one local network.
    pub fn lan() -> Self {
        Self {
            ihave_interval_ms: 5,
            graft_timeout_ms: 50,
            optimize_threshold_ms: 5,
            ..Self::wan()
        }
    }

    /// Settings for nodes across regions.
    pub fn wan() -> Self {
        Self {
            ihave_interval_ms: 10,
            graft_timeout_ms: 300,
            optimize_threshold_ms: 20,
            lazy_fanout: 3,
            eager_peers_max: 256,
            lazy_peers_max: 64,
            roots_max: 1_024,
            seen_max: 65_536,
            payload_cache_bytes_max: 16 * 1024 * 1024,
            missing_max: 4_096,
            ihave_per_peer_max: crate::codec::IDS_PER_FRAME_MAX,
        }
    }

    /// Checks the rules the fields' docs state; the error names the first field that breaks
    /// one (as `broadcast.<field>`, its path in [`crate::Config`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        ConfigError::at_least("broadcast.graft_timeout_ms", self.graft_timeout_ms, 1)?;
        ConfigError::at_least("broadcast.roots_max", self.roots_max as u64, 1)
    }
}

/// The eager and lazy peers of one root at this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RootTree {
    /// Peers this node pushes the root's changes to.
    pub eager: BTreeSet<String>,
    /// Peers this node announces the root's changes to.
    pub lazy: BTreeSet<String>,
    /// When the tree was last used (ms), for eviction beyond `roots_max`.
    used_ms: u64,
}

/// A change this node has seen: where it belongs, and its bytes while they fit the cache.
#[derive(Debug, Clone)]
pub struct Seen {
    pub service: String,
    pub root: String,
    pub bytes: Option<Vec<u8>>,
    /// The peer whose push brought it first; `None` when it was made here or repaired.
    pub pushed_by: Option<String>,
}

/// A peer's smoothed round trip and how many samples it rests on.
#[derive(Debug, Clone, Copy)]
struct Rtt {
    smoothed_ms: u64,
    samples: u32,
}

/// A live peer of another region, as a possible entry of a root's tree into its region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryCandidate<'a> {
    pub peer: &'a str,
    pub region: &'a str,
    /// Suspected by the failure detector (and not heard from directly since).
    pub failing: bool,
}

/// A peer that announced a change, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcer {
    pub peer: String,
    /// When its announcement arrived (ms).
    pub at_ms: u64,
}

/// A change that was announced but has not arrived.
#[derive(Debug, Clone)]
struct Missing {
    root: String,
    /// Who announced it, oldest first; grafted from in turn.
    announcers: VecDeque<Announcer>,
    graft_at_ms: u64,
}

/// What a due graft timer asks the node to send.
#[derive(Debug, Default)]
pub struct Grafts {
    /// Per announcer, the ids to request from it.
    pub by_peer: BTreeMap<String, Vec<MessageId>>,
}

/// The broadcast state of one node. Every collection is bounded by [`BroadcastConfig`].
#[derive(Debug)]
pub struct Plumtree {
    bounds: BroadcastConfig,
    trees: BTreeMap<String, RootTree>,
    seen: BTreeMap<MessageId, Seen>,
    seen_order: VecDeque<MessageId>,
    payload_bytes: usize,
    missing: BTreeMap<MessageId, Missing>,
    /// Announcements waiting for the next flush: peer → root → ids.
    pending: BTreeMap<String, BTreeMap<String, Vec<MessageId>>>,
    pending_count: BTreeMap<String, usize>,
    next_flush_ms: Option<u64>,
    /// Smoothed round-trip time per peer, from request → response pairs.
    rtt: BTreeMap<String, Rtt>,
    /// Announcements dropped because a peer's batch was full (anti-entropy repairs).
    pub announcements_dropped: u64,
    /// The root whose tree changed last, for the invariant checker.
    last_root: Option<String>,
    /// When this node next re-chooses its own tree's entries into other regions (ms).
    next_entry_check_ms: u64,
}

impl Plumtree {
    /// Empty state with these bounds.
    ///
    /// # Panics
    /// When `bounds` is not valid ([`BroadcastConfig::validate`]): a caller contract.
    pub fn new(bounds: BroadcastConfig) -> Self {
        if let Err(error) = bounds.validate() {
            panic!("invalid broadcast config: {error}");
        }
        Self {
            bounds,
            trees: BTreeMap::new(),
            seen: BTreeMap::new(),
            seen_order: VecDeque::new(),
            payload_bytes: 0,
            missing: BTreeMap::new(),
            pending: BTreeMap::new(),
            pending_count: BTreeMap::new(),
            next_flush_ms: None,
            rtt: BTreeMap::new(),
            announcements_dropped: 0,
            last_root: None,
            next_entry_check_ms: 0,
        }
    }

    /// Installs `tree` for `root` unless one exists; evicts the least recently used tree
    /// beyond `roots_max`. Returns the root's tree.
    pub fn tree_or_insert(
        &mut self,
        now_ms: u64,
        root: &str,
        make: impl FnOnce() -> RootTree,
    ) -> &mut RootTree {
        if !self.trees.contains_key(root) {
            while self.trees.len() >= self.bounds.roots_max {
                let oldest = self
                    .trees
                    .iter()
                    .min_by_key(|(_, t)| t.used_ms)
                    .map(|(r, _)| r.clone());
                match oldest {
                    Some(r) => self.trees.remove(&r),
                    None => break,
                };
            }
            let mut tree = make();
            tree.eager = tree
                .eager
                .into_iter()
                .take(self.bounds.eager_peers_max)
                .collect();
            tree.lazy = tree
                .lazy
                .into_iter()
                .filter(|p| !tree.eager.contains(p))
                .take(self.bounds.lazy_peers_max)
                .collect();
            self.trees.insert(root.to_owned(), tree);
        }
        self.last_root = Some(root.to_owned());
        let tree = self.trees.entry(root.to_owned()).or_default();
        tree.used_ms = now_ms;
        tree
    }

    /// The tree of `root`, if this node has one.
    pub fn tree(&self, root: &str) -> Option<&RootTree> {
        self.trees.get(root)
    }

    /// Every root's tree.
    pub fn trees(&self) -> &BTreeMap<String, RootTree> {
        &self.trees
    }

    /// Makes `peer` an eager peer of `root` (a graft): out of the lazy set, into the eager
    /// one while it has room.
    pub fn make_eager(&mut self, now_ms: u64, root: &str, peer: &str) {
        debug_assert!(root != peer, "nothing is pushed back to a root");
        let eager_max = self.bounds.eager_peers_max;
        let tree = self.tree_or_insert(now_ms, root, RootTree::default);
        tree.lazy.remove(peer);
        if tree.eager.len() < eager_max {
            tree.eager.insert(peer.to_owned());
        }
    }

    /// Makes `peer` a lazy peer of `root` (a prune): out of the eager set, into the lazy one
    /// while it has room. A root without a tree is left without one.
    pub fn make_lazy(&mut self, root: &str, peer: &str) {
        debug_assert!(root != peer, "nothing is announced back to a root");
        let Some(tree) = self.trees.get_mut(root) else {
            return;
        };
        tree.eager.remove(peer);
        if tree.lazy.len() < self.bounds.lazy_peers_max {
            tree.lazy.insert(peer.to_owned());
        }
        self.last_root = Some(root.to_owned());
    }

    /// Makes each of `peers` that is in neither set of `root`'s tree an eager peer, while the
    /// tree has room (a lazy peer stays lazy: it pruned this node, or was made lazy).
    pub fn add_eager_unless_lazy(&mut self, root: &str, peers: &[String]) {
        let Some(tree) = self.trees.get_mut(root) else {
            return;
        };
        for peer in peers {
            if tree.eager.len() >= self.bounds.eager_peers_max {
                break;
            }
            if !tree.lazy.contains(peer) {
                tree.eager.insert(peer.clone());
            }
        }
        self.last_root = Some(root.to_owned());
    }

    /// Removes a peer declared down from every tree; where it was eager, `replace` picks
    /// who takes its role (given the tree), which moves from lazy to eager.
    pub fn remove_peer(&mut self, peer: &str, replace: impl Fn(&RootTree) -> Option<String>) {
        for tree in self.trees.values_mut() {
            tree.lazy.remove(peer);
            if tree.eager.remove(peer) {
                if let Some(next) = replace(tree) {
                    tree.lazy.remove(&next);
                    tree.eager.insert(next);
                }
            }
        }
        self.pending.remove(peer);
        self.pending_count.remove(peer);
        for missing in self.missing.values_mut() {
            missing.announcers.retain(|a| a.peer != peer);
        }
        self.rtt.remove(peer);
    }

    /// Feeds a round-trip sample for `peer` into its smoothed estimate (7/8 old, 1/8 new,
    /// as TCP's SRTT).
    pub fn sample_rtt(&mut self, peer: &str, rtt_ms: u64) {
        self.rtt
            .entry(peer.to_owned())
            .and_modify(|r| {
                r.smoothed_ms = (r.smoothed_ms.saturating_mul(7).saturating_add(rtt_ms)) / 8;
                r.samples = r.samples.saturating_add(1);
            })
            .or_insert(Rtt {
                smoothed_ms: rtt_ms,
                samples: 1,
            });
    }

    /// The smoothed round-trip time to `peer` (ms), once it has [`RTT_SAMPLES_MIN`] samples.
    pub fn rtt_ms(&self, peer: &str) -> Option<u64> {
        self.rtt
            .get(peer)
            .filter(|r| r.samples >= RTT_SAMPLES_MIN)
            .map(|r| r.smoothed_ms)
    }

    /// Changes announced but not arrived.
    pub fn missing_count(&self) -> usize {
        self.missing.len()
    }

    /// Bytes of cached change payloads.
    pub fn payload_bytes(&self) -> usize {
        self.payload_bytes
    }
}
