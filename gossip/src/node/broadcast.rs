//! Broadcast: Plumtree's push and announcement of changes along per-root trees (see
//! [`crate::plumtree`] for the protocol and the tree policy; this file moves the frames).
//!
//! # Flow
//! 1. A change made here is published: remembered as seen and forwarded along this node's
//!    own tree (`publish`).
//! 2. A change that arrives (pushed, or repaired by anti-entropy) is applied and, when seen
//!    for the first time, forwarded along its root's tree (`on_changes`, `forward`); a push
//!    of nothing new by a redundant path prunes its sender.
//! 3. Announcements are batched and sent, and what was announced and did not arrive is
//!    grafted, on the timer (`flush_broadcast`); a graft is answered from the cache
//!    (`on_graft`).

use std::collections::{BTreeMap, BTreeSet};

use statusmesh_crdt::{ChangeHash, CrdtError, Name};

use super::peers::mesh_view;
use super::{Node, NodeId};
use crate::codec::{Frame, IDS_PER_FRAME_MAX, ROOTS_PER_FRAME_MAX};
use crate::error::GossipError;
use crate::plumtree::{self, MessageId, RootTree};

/// A change of a received frame, parsed before anything is applied.
struct ParsedChange {
    hash: ChangeHash,
    /// The change's root: its origin when a member, else the sender.
    root: String,
}

/// The fresh changes of one root in a received frame, pushed on along that root's tree.
#[derive(Debug, Default)]
struct RootBatch {
    changes: Vec<Vec<u8>>,
    ids: Vec<MessageId>,
}

impl Node {
    /// Applies changes that came by push (`pushed`) or repair, and broadcasts on those seen
    /// for the first time. A push that brings nothing new by a redundant path prunes its
    /// sender.
    pub(super) fn on_changes(
        &mut self,
        from: &str,
        service: &str,
        changes: Vec<Vec<u8>>,
        pushed: bool,
    ) {
        // Ids and roots first: a change that does not parse rejects the frame before anything
        // is applied.
        let mut parsed = Vec::with_capacity(changes.len());
        for bytes in &changes {
            match automerge::Change::try_from(bytes.as_slice()) {
                // The root is the origin the change names, when it is a member; otherwise
                // (an origin since removed from the mesh) the sender stands in for it.
                Ok(change) => {
                    let root = change
                        .message()
                        .filter(|o| *o == self.id || self.peers.contains_key(*o))
                        .unwrap_or(from);
                    parsed.push(ParsedChange {
                        hash: change.hash(),
                        root: root.to_owned(),
                    });
                }
                Err(e) => {
                    let error = CrdtError::ChangeDecode(e.to_string());
                    self.reject(from, GossipError::Crdt(error));
                    return;
                }
            }
        }
        let doc = Name::parse("service", service)
            .ok()
            .and_then(|name| self.replica.doc(&name));
        let fresh: Vec<bool> = parsed
            .iter()
            .map(|p| {
                !self.plumtree.has_seen(plumtree::message_id(&p.hash))
                    && !doc.is_some_and(|d| d.has_all(&[p.hash]))
            })
            .collect();
        if !self.apply_changes(from, service, &changes) {
            return;
        }
        if pushed {
            if let Some(sent_ms) = self.graft_sent_ms.remove(from) {
                self.plumtree
                    .sample_rtt(from, self.now_ms.saturating_sub(sent_ms));
            }
            if !fresh.contains(&true) {
                self.stats.pushes_duplicate += 1;
                // A redundant path is one whose copy came after another peer's push. A second
                // copy from the same peer is the network repeating itself, and a copy that a
                // repair brought first says nothing about the tree: neither is pruned.
                let roots: BTreeSet<String> = parsed
                    .into_iter()
                    .filter(|p| {
                        self.plumtree
                            .seen(plumtree::message_id(&p.hash))
                            .is_none_or(|seen| seen.pushed_by.as_ref().is_some_and(|p| p != from))
                    })
                    .map(|p| p.root)
                    .collect();
                if !roots.is_empty() {
                    self.prune(from, roots);
                }
                return;
            }
        }
        // Per root: the fresh changes and their ids, pushed on along that root's tree.
        let mut by_root: BTreeMap<String, RootBatch> = BTreeMap::new();
        let mut faster: BTreeMap<String, NodeId> = BTreeMap::new();
        for ((ParsedChange { hash, root }, bytes), fresh) in
            parsed.into_iter().zip(changes).zip(fresh)
        {
            if !fresh {
                continue;
            }
            let id = plumtree::message_id(&hash);
            let pushed_by = pushed.then_some(from);
            let announced = self
                .plumtree
                .remember(id, service, &root, bytes.clone(), pushed_by);
            if let Some(announcer) = announced {
                let earlier_ms = self.now_ms.saturating_sub(announcer.at_ms);
                if pushed
                    && announcer.peer != from
                    && earlier_ms >= self.config.broadcast.optimize_threshold_ms
                {
                    faster.insert(root.clone(), announcer.peer);
                }
            }
            let batch = by_root.entry(root).or_default();
            batch.changes.push(bytes);
            batch.ids.push(id);
        }
        // The tree optimisation: an announcement that beat the push by the threshold names a
        // faster path; take it and prune the slower parent.
        for (root, announcer) in faster {
            self.send(
                &announcer,
                &Frame::Graft {
                    roots: vec![root.clone()],
                    ids: Vec::new(),
                },
            );
            self.prune(from, BTreeSet::from([root]));
        }
        for (root, batch) in by_root {
            self.forward(
                &root,
                Some(from),
                service,
                batch.changes,
                &batch.ids,
                pushed,
            );
        }
    }

    /// Applies remote changes to the replica, acknowledges them to their origins and reports
    /// their events. False when the replica refused them (counted as a rejected frame).
    fn apply_changes(&mut self, from: &str, service: &str, changes: &[Vec<u8>]) -> bool {
        match self.replica.apply_remote(service, changes) {
            Ok(outcome) => {
                self.stats.changes_applied += outcome.new_changes as u64;
                // Acknowledge to each change's origin (not to whoever relayed it): the
                // origin is the one waiting to know which regions hold its change.
                let mut by_origin: BTreeMap<String, Vec<[u8; 32]>> = BTreeMap::new();
                for (hash, origin) in outcome.held {
                    if let Some(origin) = origin.filter(|o| self.peers.contains_key(o)) {
                        by_origin.entry(origin).or_default().push(hash.0);
                    }
                }
                for (origin, changes) in by_origin {
                    let frame = Frame::Ack {
                        service: service.to_owned(),
                        changes,
                    };
                    self.send(&origin, &frame);
                }
                if outcome.rolled_over.is_some() {
                    self.stats.rollovers += 1;
                    if let Ok(name) = Name::parse("service", service) {
                        self.rollover_cuts.remove(&name);
                    }
                }
                self.publish_made(service, outcome.made);
                self.emit_transitions(outcome.transitions);
                true
            }
            Err(e) => {
                self.reject(from, GossipError::Crdt(e));
                false
            }
        }
    }

    /// Broadcasts a change made here: this node is its root.
    pub(super) fn publish(&mut self, service: &Name, hash: ChangeHash, bytes: Vec<u8>) {
        let id = plumtree::message_id(&hash);
        let root = self.id.clone();
        let service = service.to_string();
        self.plumtree
            .remember(id, &service, &root, bytes.clone(), None);
        self.forward(&root, None, &service, vec![bytes], &[id], true);
    }

    /// Broadcasts changes the replica made while applying (a base, carried writes): this node
    /// is their root, as for a local write.
    pub(super) fn publish_made(&mut self, service: &str, made: Vec<Vec<u8>>) {
        let Ok(name) = Name::parse("service", service) else {
            return;
        };
        for bytes in made {
            if let Ok(change) = automerge::Change::try_from(bytes.as_slice()) {
                self.publish(&name, change.hash(), bytes);
            }
        }
    }

    /// Pushes changes of `root` to the root's eager peers and queues their announcement for
    /// its lazy peers, never back to `sender` or to the root. A root seen for the first time
    /// gets its tree from [`crate::plumtree::Plumtree::default_tree`]. Changes a repair brought (not `pushed`)
    /// are also announced along this node's own tree: after a heal, this node may be the
    /// first of its side to hold them, and its own tree reaches the whole side fast.
    fn forward(
        &mut self,
        root: &str,
        sender: Option<&str>,
        service: &str,
        changes: Vec<Vec<u8>>,
        ids: &[MessageId],
        pushed: bool,
    ) {
        debug_assert_eq!(changes.len(), ids.len(), "one id per change");
        // A repair's sender is a random peer, not a parent in the root's tree.
        let parent = if pushed { sender } else { None };
        let mesh = mesh_view!(self);
        self.plumtree
            .prepare_tree(&mesh, &mut self.rng, self.now_ms, root, parent, sender);
        let tree = self
            .plumtree
            .tree_or_insert(self.now_ms, root, RootTree::default);
        let skip = |peer: &String| Some(peer.as_str()) == sender || peer == root;
        let eager: Vec<NodeId> = tree.eager.iter().filter(|p| !skip(p)).cloned().collect();
        let lazy: Vec<NodeId> = tree.lazy.iter().filter(|p| !skip(p)).cloned().collect();
        let skip_root_tree =
            |peer: &String| skip(peer) || eager.contains(peer) || lazy.contains(peer);
        self.push_to(&eager, service, &changes);
        for peer in &lazy {
            self.plumtree
                .queue_announcement(self.now_ms, peer, root, ids);
        }
        if pushed || root == self.id {
            return;
        }
        let me = self.id.clone();
        let mesh = mesh_view!(self);
        self.plumtree
            .ensure_tree(&mesh, &mut self.rng, self.now_ms, &me, None);
        // Its eager peers, and the lazy ones that back them up, per region.
        let own: Vec<NodeId> = self
            .plumtree
            .tree(&me)
            .map(|t| {
                t.eager
                    .iter()
                    .chain(&t.lazy)
                    .filter(|p| !skip_root_tree(p))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for peer in &own {
            self.plumtree
                .queue_announcement(self.now_ms, peer, root, ids);
        }
    }

    /// Notes the changes a peer announced; those not seen yet are grafted unless they arrive
    /// first.
    pub(super) fn on_ihave(&mut self, now_ms: u64, from: &str, roots: Vec<(String, Vec<u64>)>) {
        for (root, ids) in roots {
            for id in ids {
                self.plumtree.announced(now_ms, from, &root, id);
            }
        }
    }

    /// A peer stops pushing changes of `roots` here: it becomes lazy in their trees.
    pub(super) fn on_prune(&mut self, from: &str, roots: &[String]) {
        for root in roots.iter().filter(|r| *r != from) {
            self.plumtree.make_lazy(root, from);
        }
    }

    /// Answers a graft: `from` becomes an eager peer of each root named and of the root of
    /// each change requested, and gets the requested changes still cached.
    pub(super) fn on_graft(&mut self, from: &str, roots: &[String], ids: &[MessageId]) {
        let mut by_service: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        let mut eager_for: BTreeSet<String> = roots.iter().cloned().collect();
        for id in ids {
            let Some(seen) = self.plumtree.seen(*id) else {
                continue;
            };
            eager_for.insert(seen.root.clone());
            if let Some(bytes) = &seen.bytes {
                by_service
                    .entry(seen.service.clone())
                    .or_default()
                    .push(bytes.clone());
            }
        }
        for root in eager_for.iter().filter(|r| *r != from) {
            self.plumtree.make_eager(self.now_ms, root, from);
        }
        for (service, changes) in by_service {
            self.push_to(&[from.to_owned()], &service, &changes);
        }
    }

    /// Pushes `changes` of `service` to each of `peers`, in frames of at most
    /// `changes_per_frame_max` changes.
    fn push_to(&mut self, peers: &[NodeId], service: &str, changes: &[Vec<u8>]) {
        for chunk in changes.chunks(self.config.changes_per_frame_max) {
            let frame = Frame::Push {
                service: service.to_owned(),
                changes: chunk.to_vec(),
            };
            for peer in peers {
                self.send(peer, &frame);
            }
        }
    }

    /// Tells `peer` to stop pushing changes of `roots` here, and stops pushing them to it.
    fn prune(&mut self, peer: &str, roots: BTreeSet<String>) {
        let roots: Vec<String> = roots.into_iter().collect();
        // Nothing is pushed back to a root, so the root itself needs no lazy entry here.
        for root in roots.iter().filter(|r| *r != peer) {
            self.plumtree.make_lazy(root, peer);
        }
        for chunk in roots.chunks(ROOTS_PER_FRAME_MAX) {
            self.send(
                peer,
                &Frame::Prune {
                    roots: chunk.to_vec(),
                },
            );
        }
    }

    /// Sends the announcements and grafts that are due.
    pub(super) fn flush_broadcast(&mut self, now_ms: u64) {
        for (peer, roots) in self.plumtree.due_announcements(now_ms) {
            let mut frame_roots: Vec<(String, Vec<u64>)> = Vec::new();
            let mut frame_ids = 0;
            for (root, ids) in roots {
                for chunk in ids.chunks(IDS_PER_FRAME_MAX) {
                    if frame_ids + chunk.len() > IDS_PER_FRAME_MAX
                        || frame_roots.len() == ROOTS_PER_FRAME_MAX
                    {
                        let roots = std::mem::take(&mut frame_roots);
                        self.send(&peer, &Frame::IHave { roots });
                        frame_ids = 0;
                    }
                    frame_ids += chunk.len();
                    frame_roots.push((root.clone(), chunk.to_vec()));
                }
            }
            if !frame_roots.is_empty() {
                self.send(&peer, &Frame::IHave { roots: frame_roots });
            }
        }
        self.stats.announcements_dropped = self.plumtree.announcements_dropped;
        for (peer, ids) in self.plumtree.due_grafts(now_ms).by_peer {
            self.stats.grafts_sent += ids.len() as u64;
            self.graft_sent_ms.insert(peer.clone(), now_ms);
            for chunk in ids.chunks(IDS_PER_FRAME_MAX) {
                let frame = Frame::Graft {
                    roots: Vec::new(),
                    ids: chunk.to_vec(),
                };
                self.send(&peer, &frame);
            }
        }
    }
}
