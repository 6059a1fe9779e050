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
//! [`Frame::Push`]: crate::codec::Frame::Push
//! [`Frame::IHave`]: crate::codec::Frame::IHave
//! [`Frame::Prune`]: crate::codec::Frame::Prune
//! [`Frame::Graft`]: crate::codec::Frame::Graft

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use statusmesh_crdt::liveness::Fnv64;
use statusmesh_crdt::ChangeHash;

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
    /// How long announcements wait to be batched into one [`Frame::IHave`] per peer, in ms.
    /// LAN 5, WAN 10.
    pub ihave_interval_ms: u64,
    /// How long an announced change may take to arrive by push before it is grafted from the
    /// announcer, in ms; the next announcer is asked after as long again. Longer than the
    /// spread of eager-path latencies. LAN 50, WAN 300.
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
    /// from the defaults when its root writes again). Default 1,024.
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
pub struct EntryCandidate {
    pub peer: String,
    pub region: String,
    /// Suspected by the failure detector (and not heard from directly since).
    pub failing: bool,
}

/// A change that was announced but has not arrived.
#[derive(Debug, Clone)]
struct Missing {
    root: String,
    /// Who announced it and when (ms), oldest first; grafted from in turn.
    announcers: VecDeque<(String, u64)>,
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
}

impl Plumtree {
    /// Empty state with these bounds.
    pub fn new(bounds: BroadcastConfig) -> Self {
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
            while self.trees.len() >= self.bounds.roots_max.max(1) {
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
            missing.announcers.retain(|(p, _)| p != peer);
        }
        self.rtt.remove(peer);
    }

    /// Whether `id` was seen (pushed, repaired or made here).
    pub fn has_seen(&self, id: MessageId) -> bool {
        self.seen.contains_key(&id)
    }

    /// A seen change, with its bytes while they are cached.
    pub fn seen(&self, id: MessageId) -> Option<&Seen> {
        self.seen.get(&id)
    }

    /// Records a change as seen (first pushed by `pushed_by`) and caches its bytes; evicts the oldest beyond `seen_max`
    /// entries or `payload_cache_bytes_max` bytes. Returns when it was announced and by whom
    /// first, if it was missing.
    pub fn remember(
        &mut self,
        id: MessageId,
        service: &str,
        root: &str,
        bytes: Vec<u8>,
        pushed_by: Option<&str>,
    ) -> Option<(String, u64)> {
        let missing = self.missing.remove(&id);
        if self.seen.contains_key(&id) {
            return None;
        }
        let bytes = (bytes.len() <= self.bounds.payload_cache_bytes_max).then_some(bytes);
        self.payload_bytes += bytes.as_ref().map_or(0, Vec::len);
        self.seen.insert(
            id,
            Seen {
                service: service.to_owned(),
                root: root.to_owned(),
                bytes,
                pushed_by: pushed_by.map(str::to_owned),
            },
        );
        self.seen_order.push_back(id);
        while self.seen.len() > self.bounds.seen_max
            || self.payload_bytes > self.bounds.payload_cache_bytes_max
        {
            let Some(oldest) = self.seen_order.pop_front() else {
                break;
            };
            if let Some(evicted) = self.seen.remove(&oldest) {
                self.payload_bytes -= evicted.bytes.map_or(0, |b| b.len());
            }
        }
        missing.and_then(|m| m.announcers.front().cloned())
    }

    /// Notes that `from` announced `id` of `root` at `now_ms`. A change not seen yet becomes
    /// missing, to be grafted after `graft_timeout_ms` unless it arrives first.
    pub fn announced(&mut self, now_ms: u64, from: &str, root: &str, id: MessageId) {
        if self.seen.contains_key(&id) {
            return;
        }
        if let Some(missing) = self.missing.get_mut(&id) {
            let known = missing.announcers.iter().any(|(p, _)| p == from);
            if !known && missing.announcers.len() < ANNOUNCERS_MAX {
                missing.announcers.push_back((from.to_owned(), now_ms));
            }
            return;
        }
        if self.missing.len() >= self.bounds.missing_max {
            return;
        }
        self.missing.insert(
            id,
            Missing {
                root: root.to_owned(),
                announcers: VecDeque::from([(from.to_owned(), now_ms)]),
                graft_at_ms: now_ms + self.bounds.graft_timeout_ms,
            },
        );
    }

    /// The grafts due at `now_ms`: each missing change is requested from its oldest
    /// announcer not yet asked, who also becomes an eager peer of its root. A change whose
    /// announcers were all asked is forgotten (anti-entropy is the backstop).
    pub fn due_grafts(&mut self, now_ms: u64) -> Grafts {
        let mut grafts = Grafts::default();
        let due: Vec<MessageId> = self
            .missing
            .iter()
            .filter(|(_, m)| m.graft_at_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        let mut made_eager = Vec::new();
        for id in due {
            let Some(missing) = self.missing.get_mut(&id) else {
                continue;
            };
            match missing.announcers.pop_front() {
                Some((peer, _)) => {
                    made_eager.push((missing.root.clone(), peer.clone()));
                    grafts.by_peer.entry(peer).or_default().push(id);
                    missing.graft_at_ms = now_ms + self.bounds.graft_timeout_ms;
                    if missing.announcers.is_empty() {
                        self.missing.remove(&id);
                    }
                }
                None => {
                    self.missing.remove(&id);
                }
            }
        }
        for (root, peer) in made_eager {
            if let Some(tree) = self.trees.get_mut(&root) {
                // The grafted peer now pushes to this node; pushing back would be a duplicate.
                tree.lazy.remove(&peer);
            }
        }
        grafts
    }

    /// Queues an announcement of `ids` of `root` for `peer`, sent at the next flush. Beyond
    /// `ihave_per_peer_max` pending ids for one peer the rest are dropped and counted.
    pub fn queue_announcement(&mut self, now_ms: u64, peer: &str, root: &str, ids: &[MessageId]) {
        let count = self.pending_count.entry(peer.to_owned()).or_default();
        let room = self.bounds.ihave_per_peer_max.saturating_sub(*count);
        let taken = ids.len().min(room);
        self.announcements_dropped += (ids.len() - taken) as u64;
        if taken == 0 {
            return;
        }
        *count += taken;
        self.pending
            .entry(peer.to_owned())
            .or_default()
            .entry(root.to_owned())
            .or_default()
            .extend_from_slice(&ids[..taken]);
        if self.next_flush_ms.is_none() {
            self.next_flush_ms = Some(now_ms + self.bounds.ihave_interval_ms);
        }
    }

    /// The announcements to send at `now_ms`, per peer, if the flush is due.
    pub fn due_announcements(
        &mut self,
        now_ms: u64,
    ) -> BTreeMap<String, BTreeMap<String, Vec<MessageId>>> {
        if self.next_flush_ms.is_none_or(|at| at > now_ms) {
            return BTreeMap::new();
        }
        self.next_flush_ms = None;
        self.pending_count.clear();
        std::mem::take(&mut self.pending)
    }

    /// When the next flush or graft is due (ms).
    pub fn next_timeout(&self) -> Option<u64> {
        let graft = self.missing.values().map(|m| m.graft_at_ms).min();
        match (self.next_flush_ms, graft) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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

    /// Re-chooses `root`'s entry into each region of `candidates` (the live peers of other
    /// regions, each marked failing when suspected by the failure detector): a failing
    /// entry gives way to the best peer of its region that is not failing; a measured entry
    /// gives way to a measured peer whose round trip is clearly lower (see
    /// [`RTT_SWAP_MIN_PERCENT`]). The best peer is the lowest measured round trip, then the
    /// lowest [`spread_rank`]. The old entry becomes lazy. Work is linear in `candidates`.
    /// Returns the swaps made, (old, new).
    pub fn rechoose_entries(
        &mut self,
        root: &str,
        candidates: &[EntryCandidate],
    ) -> Vec<(String, String)> {
        let mut swaps = Vec::new();
        let Some(tree) = self.trees.get(root) else {
            return swaps;
        };
        let mut by_region: BTreeMap<&str, Vec<&EntryCandidate>> = BTreeMap::new();
        for candidate in candidates {
            by_region
                .entry(candidate.region.as_str())
                .or_default()
                .push(candidate);
        }
        for peers in by_region.values() {
            // The worst entry: a failing one first, then the slowest measured one.
            let entry = peers
                .iter()
                .filter(|c| tree.eager.contains(&c.peer))
                .max_by_key(|c| (c.failing, self.rtt_ms(&c.peer)));
            let Some(entry) = entry else {
                continue;
            };
            let best = peers
                .iter()
                .filter(|c| !c.failing && !tree.eager.contains(&c.peer))
                .min_by_key(|c| {
                    (
                        self.rtt_ms(&c.peer).unwrap_or(u64::MAX),
                        spread_rank(root, &c.peer),
                    )
                });
            let Some(best) = best else {
                continue;
            };
            let clearly_faster = match (self.rtt_ms(&entry.peer), self.rtt_ms(&best.peer)) {
                (Some(old), Some(new)) => {
                    new.saturating_mul(100) <= old.saturating_mul(100 - RTT_SWAP_MIN_PERCENT)
                        && old.saturating_sub(new) >= RTT_SWAP_MIN_MS
                }
                _ => false,
            };
            if entry.failing || clearly_faster {
                swaps.push((entry.peer.clone(), best.peer.clone()));
            }
        }
        let lazy_max = self.bounds.lazy_peers_max;
        if let Some(tree) = self.trees.get_mut(root) {
            for (old, new) in &swaps {
                tree.eager.remove(old);
                tree.lazy.remove(new);
                tree.eager.insert(new.clone());
                if tree.lazy.len() < lazy_max {
                    tree.lazy.insert(old.clone());
                }
            }
        }
        if !swaps.is_empty() {
            self.last_root = Some(root.to_owned());
        }
        swaps
    }

    /// Changes announced but not arrived.
    pub fn missing_count(&self) -> usize {
        self.missing.len()
    }

    /// Bytes of cached change payloads.
    pub fn payload_bytes(&self) -> usize {
        self.payload_bytes
    }

    /// Checks the bounds, and that the last changed tree is disjoint and free of `me`. Cheap
    /// (one tree), for the invariant checker after every input.
    pub fn check(&self, me: &str) -> Result<(), String> {
        let b = &self.bounds;
        if self.trees.len() > b.roots_max.max(1) {
            return Err(format!(
                "{} root trees, above roots_max {}",
                self.trees.len(),
                b.roots_max
            ));
        }
        if self.seen.len() > b.seen_max {
            return Err(format!(
                "{} seen ids, above seen_max {}",
                self.seen.len(),
                b.seen_max
            ));
        }
        if self.payload_bytes > b.payload_cache_bytes_max {
            return Err(format!(
                "{} cached payload bytes, above payload_cache_bytes_max {}",
                self.payload_bytes, b.payload_cache_bytes_max
            ));
        }
        if self.missing.len() > b.missing_max {
            return Err(format!(
                "{} missing changes, above missing_max {}",
                self.missing.len(),
                b.missing_max
            ));
        }
        if let Some((peer, count)) = self
            .pending_count
            .iter()
            .find(|(_, c)| **c > b.ihave_per_peer_max)
        {
            return Err(format!(
                "{count} announcements pending for {peer}, above ihave_per_peer_max {}",
                b.ihave_per_peer_max
            ));
        }
        if let Some(root) = &self.last_root {
            if let Some(tree) = self.trees.get(root) {
                self.check_tree(me, root, tree)?;
            }
        }
        Ok(())
    }

    /// [`Self::check`] over every tree: linear in roots × peers, for tests.
    pub fn check_all(&self, me: &str) -> Result<(), String> {
        self.check(me)?;
        for (root, tree) in &self.trees {
            self.check_tree(me, root, tree)?;
        }
        Ok(())
    }

    fn check_tree(&self, me: &str, root: &str, tree: &RootTree) -> Result<(), String> {
        if let Some(both) = tree.eager.intersection(&tree.lazy).next() {
            return Err(format!("{both} is both eager and lazy for root {root}"));
        }
        if tree.eager.contains(me) || tree.lazy.contains(me) {
            return Err(format!("{me} is its own peer in the tree of root {root}"));
        }
        if tree.eager.len() > self.bounds.eager_peers_max {
            return Err(format!(
                "{} eager peers for root {root}, above eager_peers_max {}",
                tree.eager.len(),
                self.bounds.eager_peers_max
            ));
        }
        if tree.lazy.len() > self.bounds.lazy_peers_max {
            return Err(format!(
                "{} lazy peers for root {root}, above lazy_peers_max {}",
                tree.lazy.len(),
                self.bounds.lazy_peers_max
            ));
        }
        Ok(())
    }
}

/// A stable pseudo-random rank of `peer` for `root`: spreads the roots' choice among equal
/// peers of a region, so that one node is not every root's entry into its region.
pub fn spread_rank(root: &str, peer: &str) -> u64 {
    let mut hash = Fnv64::new();
    hash.write(root.as_bytes());
    hash.write(&[0]);
    hash.write(peer.as_bytes());
    hash.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> BroadcastConfig {
        BroadcastConfig {
            roots_max: 2,
            seen_max: 3,
            payload_cache_bytes_max: 10,
            missing_max: 2,
            ihave_per_peer_max: 4,
            lazy_peers_max: 1,
            eager_peers_max: 1,
            ..BroadcastConfig::lan()
        }
    }

    #[test]
    fn seen_changes_and_their_bytes_stay_within_their_bounds() {
        let mut p = Plumtree::new(small());
        for id in 0..5u64 {
            p.remember(id, "api", "n1", vec![0; 4], None);
            assert_eq!(p.check_all("n0"), Ok(()));
        }
        // Three ids fit, but only two payloads of four bytes fit ten bytes.
        assert!(!p.has_seen(0) && !p.has_seen(1) && !p.has_seen(2));
        assert!(p.has_seen(3) && p.has_seen(4));
        assert_eq!(p.payload_bytes(), 8);
        // A payload larger than the whole cache is remembered without its bytes.
        p.remember(9, "api", "n1", vec![0; 11], None);
        assert!(p.seen(9).is_some_and(|s| s.bytes.is_none()));
    }

    #[test]
    fn missing_announcements_roots_and_batches_stay_within_their_bounds() {
        let mut p = Plumtree::new(small());
        for id in 0..5u64 {
            p.announced(0, "n1", "n2", id);
        }
        assert_eq!(p.missing_count(), 2);
        p.queue_announcement(0, "n1", "n2", &[1, 2, 3, 4, 5, 6]);
        assert_eq!(p.announcements_dropped, 2);
        for root in ["a", "b", "c"] {
            p.tree_or_insert(0, root, RootTree::default);
        }
        assert_eq!(p.trees().len(), 2);
        assert!(
            p.tree("a").is_none(),
            "the least recently used root went first"
        );
        p.make_eager(0, "b", "x");
        p.make_eager(0, "b", "y");
        p.make_lazy("b", "z");
        p.make_lazy("b", "w");
        assert_eq!(p.check_all("n0"), Ok(()));
        let tree = p.tree("b").expect("tree");
        assert_eq!((tree.eager.len(), tree.lazy.len()), (1, 1));
    }

    #[test]
    fn a_missing_change_is_grafted_from_each_announcer_in_turn_then_forgotten() {
        let mut p = Plumtree::new(BroadcastConfig::lan());
        let timeout = BroadcastConfig::lan().graft_timeout_ms;
        p.announced(0, "n1", "n9", 7);
        p.announced(1, "n2", "n9", 7);
        assert!(p.due_grafts(timeout - 1).by_peer.is_empty());
        let first = p.due_grafts(timeout);
        assert_eq!(first.by_peer.get("n1"), Some(&vec![7]));
        let second = p.due_grafts(2 * timeout);
        assert_eq!(second.by_peer.get("n2"), Some(&vec![7]));
        assert_eq!(p.missing_count(), 0);
        assert_eq!(p.next_timeout(), None);
        // Once it arrives, announcements of it are ignored.
        p.remember(7, "api", "n9", vec![1], Some("n3"));
        p.announced(3 * timeout, "n4", "n9", 7);
        assert_eq!(p.missing_count(), 0);
    }

    fn candidates(failing: &[&str]) -> Vec<EntryCandidate> {
        ["a", "b", "c"]
            .iter()
            .map(|p| EntryCandidate {
                peer: (*p).to_owned(),
                region: "far".to_owned(),
                failing: failing.contains(p),
            })
            .collect()
    }

    fn sample(p: &mut Plumtree, peer: &str, rtt_ms: u64) {
        for _ in 0..RTT_SAMPLES_MIN {
            p.sample_rtt(peer, rtt_ms);
        }
    }

    fn entry_tree(p: &mut Plumtree, entry: &str) {
        p.tree_or_insert(0, "root", || RootTree {
            eager: BTreeSet::from([entry.to_owned()]),
            ..RootTree::default()
        });
    }

    #[test]
    fn an_entry_gives_way_only_to_a_clearly_faster_peer_of_its_region() {
        let mut p = Plumtree::new(BroadcastConfig::wan());
        entry_tree(&mut p, "a");
        sample(&mut p, "a", 100);
        // Too few samples: unknown, so labels keep choosing.
        p.sample_rtt("b", 85);
        assert_eq!(p.rtt_ms("b"), None);
        assert!(p.rechoose_entries("root", &candidates(&[])).is_empty());
        // 15% faster is within the hysteresis.
        sample(&mut p, "b", 85);
        assert_eq!(p.rtt_ms("b"), Some(85));
        assert!(p.rechoose_entries("root", &candidates(&[])).is_empty());
        // 25% faster swaps, and the old entry stays as a lazy back-up.
        sample(&mut p, "c", 75);
        assert_eq!(
            p.rechoose_entries("root", &candidates(&[])),
            vec![("a".to_owned(), "c".to_owned())]
        );
        let tree = p.tree("root").expect("tree");
        assert!(tree.eager.contains("c") && tree.lazy.contains("a"));
        assert!(!tree.eager.contains("a"));
        assert_eq!(p.check_all("root"), Ok(()));
        // The swapped-out peer, slightly faster now, does not take the entry back.
        for _ in 0..40 {
            p.sample_rtt("a", 70);
        }
        assert_eq!(p.rtt_ms("a"), Some(70));
        assert!(p.rechoose_entries("root", &candidates(&[])).is_empty());
    }

    #[test]
    fn round_trips_below_the_minimum_difference_never_swap() {
        let mut p = Plumtree::new(BroadcastConfig::lan());
        entry_tree(&mut p, "a");
        sample(&mut p, "a", 4);
        sample(&mut p, "b", 2);
        // Half the round trip and 2 ms less swaps; 1 ms less never does, whatever the share.
        assert_eq!(p.rechoose_entries("root", &candidates(&[])).len(), 1);
        sample(&mut p, "a", 1);
        assert!(p.rechoose_entries("root", &candidates(&[])).is_empty());
    }

    #[test]
    fn a_failing_entry_gives_way_at_once_even_to_an_unmeasured_peer() {
        let mut p = Plumtree::new(BroadcastConfig::wan());
        entry_tree(&mut p, "a");
        sample(&mut p, "a", 10);
        assert_eq!(
            p.rechoose_entries("root", &candidates(&["a", "b"])),
            vec![("a".to_owned(), "c".to_owned())]
        );
        // Every other peer failing: nobody better to take over.
        assert!(p
            .rechoose_entries("root", &candidates(&["c", "a", "b"]))
            .is_empty());
    }

    #[test]
    fn message_ids_are_the_first_eight_bytes_of_the_hash() {
        let mut hash = [0u8; 32];
        hash[0] = 1;
        hash[8] = 0xff;
        assert_eq!(message_id(&ChangeHash(hash)), 1);
    }
}
