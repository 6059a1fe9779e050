//! Dynamic membership: members added and removed at runtime, and the voter set.
//!
//! The members a node is built with ([`Node::new`], the nodes listed in regions.toml) are
//! its *voters*; a node not listed there is built with [`Node::new_joined`] and is not one.
//! A driver adds a member once the transport authenticated it ([`Node::add_member`]: a
//! certificate from the cluster CA naming its id and region) and removes it when it leaves
//! ([`Node::remove_member`]). A joined member down for longer than
//! [`super::Config::forget_after_ms`] is removed here, in the core, so both drivers forget
//! alike ([`Event::MemberRemoved`]).
//!
//! # The voter rule (epoch rollovers)
//! A rollover needs a majority of the voters alive (`rollover.rs`): voters are the listed
//! nodes, a fixed set every node agrees on from the same regions.toml, so two sides of a
//! partition can never both hold a majority, however many nodes join either side. Joined
//! members never propose and never count toward the majority; a live joined member must
//! still hold a cut before the proposer rolls over at it (as every live peer must).
//! Listed members are never removed at runtime: changing the voter set means changing
//! regions.toml.

use super::{Event, Node, NodeId, Peer, PeerState};
use crate::codec::ROOT_BYTES_MAX;
use crate::error::GossipError;
use crate::membership::MemberState;
use crate::version::PeerVersion;
use statusmesh_crdt::Replica;

/// Most members added at runtime a node keeps (each holds a peer entry, SWIM state and a
/// link in the driver); [`Node::add_member`] refuses more.
pub const JOINED_MEMBERS_MAX: usize = 1_024;

impl Node {
    /// A node that is not listed in the topology: as [`Node::new`] with the listed members
    /// `peers` (its seeds, all voters), itself in `region`, and not a voter.
    ///
    /// # Panics
    /// As [`Node::new`].
    pub fn new_joined(
        id: NodeId,
        region: String,
        config: super::Config,
        peers: Vec<Peer>,
        replica: Replica,
        seed: u64,
    ) -> Self {
        let mut node = Self::new(id, config, peers, replica, seed);
        node.region = region;
        node.voter = false;
        node
    }

    /// Makes `seeds` (members given to [`Node::new_joined`]) the ones this node announces
    /// itself to on its first timeout, instead of a few chosen at random.
    #[must_use]
    pub fn with_seeds(mut self, seeds: Vec<NodeId>) -> Self {
        self.seeds = seeds
            .into_iter()
            .filter(|s| self.peers.contains_key(s))
            .collect();
        self
    }

    /// Adds `peer`, a member not listed in the topology, once the driver authenticated it.
    /// Returns whether it is new (false: it was a member already, nothing changed). It takes
    /// part in broadcast, anti-entropy and failure detection from now on, as a non-voter.
    ///
    /// # Errors
    /// [`GossipError::Membership`] when `peer` is this node, is already a member in another
    /// region, or [`JOINED_MEMBERS_MAX`] are already joined; nothing changed.
    pub fn add_member(&mut self, now_ms: u64, peer: Peer) -> Result<bool, GossipError> {
        self.now_ms = self.now_ms.max(now_ms);
        let refuse = |reason: String| GossipError::Membership {
            node: peer.id.clone(),
            reason,
        };
        if peer.id == self.id || peer.id.is_empty() || peer.id.len() > ROOT_BYTES_MAX {
            return Err(refuse("not a valid id for another member".to_owned()));
        }
        if let Some(known) = self.peers.get(&peer.id) {
            if known.region != peer.region {
                return Err(refuse(format!(
                    "a member already, in region {:?}, not {:?}",
                    known.region, peer.region
                )));
            }
            return Ok(false);
        }
        if self.peers.values().filter(|p| !p.voter).count() >= JOINED_MEMBERS_MAX {
            return Err(refuse(format!(
                "{JOINED_MEMBERS_MAX} joined members already"
            )));
        }
        self.peers.insert(
            peer.id.clone(),
            PeerState {
                region: peer.region,
                voter: false,
                version: PeerVersion::default(),
                ..PeerState::default()
            },
        );
        // SWIM hears of it from the member itself (its announcement); announcing back makes
        // sure, and the first anti-entropy round brings it every document.
        self.membership.announce(now_ms, &peer.id);
        self.flush_membership();
        let mesh = super::peers::mesh_view!(self);
        self.plumtree.restore_in_own_tree(&mesh, now_ms, &peer.id);
        let frame = self.digest_frame();
        self.send(&peer.id, &frame);
        Ok(true)
    }

    /// Removes `peer`, a joined member that left (or was forgotten): it leaves every tree
    /// and the peer table. Returns whether it was a member.
    ///
    /// # Errors
    /// [`GossipError::Membership`] when `peer` is a voter (listed in the topology); nothing
    /// changed.
    pub fn remove_member(&mut self, peer: &str) -> Result<bool, GossipError> {
        let Some(state) = self.peers.get(peer) else {
            return Ok(false);
        };
        if state.voter {
            return Err(GossipError::Membership {
                node: peer.to_owned(),
                reason: "listed in the topology (a voter); remove it from regions.toml instead"
                    .to_owned(),
            });
        }
        let mesh = super::peers::mesh_view!(self);
        self.plumtree.remove_from_trees(&mesh, peer);
        self.peers.remove(peer);
        self.graft_sent_ms.remove(peer);
        self.push_event(Event::MemberRemoved {
            peer: peer.to_owned(),
        });
        Ok(true)
    }

    /// Announces that this node leaves the mesh (SWIM declares it down to every member it
    /// knows); the driver sends what this queues, then stops.
    pub fn leave(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        self.membership.leave(now_ms);
        self.flush_membership();
    }

    /// Whether this node counts toward a rollover's majority (listed in the topology).
    pub fn is_voter(&self) -> bool {
        self.voter
    }

    /// Removes the joined members that have been down longer than
    /// [`super::Config::forget_after_ms`] (none when it is 0).
    pub(super) fn forget_dead_members(&mut self, now_ms: u64) {
        let after_ms = self.config.forget_after_ms;
        if after_ms == 0 {
            return;
        }
        let dead: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(id, p)| {
                !p.voter
                    && p.down_since_ms
                        .is_some_and(|t| now_ms.saturating_sub(t) >= after_ms)
                    && self.member_state(id) != MemberState::Alive
            })
            .map(|(id, _)| id.clone())
            .collect();
        for peer in dead {
            // A joined member is never a voter, so this does not fail.
            let _ = self.remove_member(&peer);
        }
    }
}
