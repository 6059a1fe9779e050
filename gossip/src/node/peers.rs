//! The peer table and its glue to the failure detector ([`crate::membership`]): who the
//! other members are, where, what they hold and when they were last heard; SWIM's verdicts
//! corrected by direct evidence; and the view of the mesh the tree policy reads
//! ([`MeshView`], implemented by [`MeshRef`]).

use std::collections::{BTreeMap, BTreeSet};

use statusmesh_crdt::{ChangeHash, Name};

use super::{Event, Node, NodeId};
use crate::codec::Frame;
use crate::membership::{MemberState, Membership, Preset};
use crate::plumtree::MeshView;

/// Another member of the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: NodeId,
    pub region: String,
}

/// What a peer is known to hold, and when it was last heard.
#[derive(Debug, Clone, Default)]
pub struct PeerState {
    pub region: String,
    pub last_heard_ms: Option<u64>,
    /// Heads per service the peer reported in its last [`Frame::Heads`].
    pub heads: BTreeMap<Name, Vec<ChangeHash>>,
    /// What the peer speaks, as far as this node knows (`versions.rs`).
    pub version: crate::version::PeerVersion,
    /// Whether the peer counts toward a rollover's majority: the members given to
    /// [`Node::new`] (listed in regions.toml) do, members added at runtime do not
    /// (`members.rs`).
    pub voter: bool,
    /// Since when the failure detector holds a joined peer down (ms), for
    /// [`super::Config::forget_after_ms`].
    pub down_since_ms: Option<u64>,
}

/// The node's mesh as the tree policy sees it, borrowed from the node's fields.
#[derive(Debug, Clone, Copy)]
pub(super) struct MeshRef<'a> {
    pub(super) id: &'a str,
    pub(super) region: &'a str,
    pub(super) peers: &'a BTreeMap<NodeId, PeerState>,
    pub(super) membership: &'a Membership,
    /// The latest time the driver gave (ms).
    pub(super) now_ms: u64,
    /// See [`Node::direct_evidence_ms`].
    pub(super) evidence_ms: u64,
}

/// The [`MeshRef`] of a node, borrowed field by field, so that the node's Plumtree state and
/// RNG stay free to be borrowed mutably beside it.
macro_rules! mesh_view {
    ($node:ident) => {
        $crate::node::peers::MeshRef {
            id: &$node.id,
            region: &$node.region,
            peers: &$node.peers,
            membership: &$node.membership,
            now_ms: $node.now_ms,
            evidence_ms: $crate::node::peers::direct_evidence_ms($node.config.failure_detector),
        }
    };
}
pub(super) use mesh_view;

impl MeshView for MeshRef<'_> {
    fn me(&self) -> &str {
        self.id
    }

    fn region(&self) -> &str {
        self.region
    }

    fn peers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.peers
            .iter()
            .map(|(id, peer)| (id.as_str(), peer.region.as_str()))
    }

    fn region_of(&self, peer: &str) -> Option<&str> {
        self.peers.get(peer).map(|p| p.region.as_str())
    }

    fn swim_state(&self, peer: &str) -> MemberState {
        self.membership.state_of(peer)
    }

    fn heard_recently(&self, peer: &str) -> bool {
        self.peers
            .get(peer)
            .and_then(|p| p.last_heard_ms)
            .is_some_and(|t| self.now_ms.saturating_sub(t) <= self.evidence_ms)
    }
}

/// How recent a frame from a peer must be to prove it alive under `preset` (ms): three probe
/// periods of the failure detector.
pub(super) fn direct_evidence_ms(preset: Preset) -> u64 {
    match preset {
        Preset::Lan => 3_000,
        Preset::Wan => 4_500,
    }
}

impl Node {
    /// What this node knows of `peer`: the SWIM failure detector's verdict, except that a
    /// frame from the peer itself within [`Node::direct_evidence_ms`] proves it alive,
    /// whatever hearsay says. (A node cut off from everyone declares everyone down, and
    /// after the heal that view spreads until each member has refuted it.)
    pub fn member_state(&self, peer: &str) -> MemberState {
        let swim = self.membership.state_of(peer);
        if swim != MemberState::Alive && self.heard_recently(peer) {
            return MemberState::Alive;
        }
        swim
    }

    /// How recent a frame from a peer must be to count as proof that it is alive (ms):
    /// three probe periods of the failure detector.
    pub fn direct_evidence_ms(&self) -> u64 {
        direct_evidence_ms(self.config.failure_detector)
    }

    /// Every region of the mesh, this node's included.
    pub fn region_count(&self) -> usize {
        let mut regions: BTreeSet<&str> = BTreeSet::from([self.region.as_str()]);
        regions.extend(self.peers.values().map(|p| p.region.as_str()));
        regions.len()
    }

    /// Whether a frame from `peer` itself arrived within [`Node::direct_evidence_ms`].
    fn heard_recently(&self, peer: &str) -> bool {
        mesh_view!(self).heard_recently(peer)
    }

    /// Sends what the failure detector wants sent and reports who came up or went down; a
    /// peer that came up rejoins this node's own tree, one that went down leaves every tree.
    pub(super) fn flush_membership(&mut self) {
        for (to, data) in self.membership.take_outbox() {
            if self.peers.contains_key(&to) {
                self.send(&to, &Frame::Swim { data });
            }
        }
        for (peer, rtt_ms) in self.membership.take_rtt_samples() {
            if self.peers.contains_key(&peer) {
                self.plumtree.sample_rtt(&peer, rtt_ms);
            }
        }
        for change in self.membership.take_changes() {
            if !self.peers.contains_key(&change.node) {
                continue;
            }
            if !change.up && self.heard_recently(&change.node) {
                // Hearsay against direct evidence: not reported.
                continue;
            }
            if let Some(peer) = self.peers.get_mut(&change.node) {
                peer.down_since_ms = (!change.up).then_some(self.now_ms);
            }
            let mesh = mesh_view!(self);
            if change.up {
                self.plumtree
                    .restore_in_own_tree(&mesh, self.now_ms, &change.node);
            } else {
                self.plumtree.remove_from_trees(&mesh, &change.node);
                self.graft_sent_ms.remove(&change.node);
            }
            self.push_event(if change.up {
                Event::PeerUp { peer: change.node }
            } else {
                Event::PeerDown { peer: change.node }
            });
        }
    }
}
