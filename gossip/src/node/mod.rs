//! The protocol state machine of one node.
//!
//! # Flow
//! 1. The driver calls [`Node::local_write`] when a client writes. A changed value becomes an
//!    Automerge change that is broadcast by Plumtree ([`crate::plumtree`]): pushed at once
//!    ([`Frame::Push`]) along this node's tree and announced ([`Frame::IHave`]) to a few lazy
//!    peers. A value that did not change only refreshes liveness, pushed as
//!    [`Frame::Liveness`].
//! 2. The driver calls [`Node::handle_frame`] for every frame a peer sent. Changes are
//!    validated and applied; a change seen for the first time (pushed or repaired) is pushed
//!    on along its root's tree; liveness merges (max wins).
//! 3. The driver calls [`Node::handle_timeout`] when [`Node::poll_timeout`] says so: it sends
//!    the batched announcements, grafts what was announced and did not arrive, and runs the
//!    anti-entropy round: a [`Frame::Digest`] (a few bytes) to one random peer; a peer whose
//!    digest differs answers with its heads, and each side then sends the changes the other
//!    lacks. This repairs lost pushes, partitions and restarts with an empty disk.
//! 4. After every call the driver drains [`Node::poll_transmit`] (frames to send) and then
//!    [`Node::poll_event`] (what happened), and re-arms its timer from [`Node::poll_timeout`].
//!
//! # Layout
//! This file holds [`Node`] and its entry points; each concern has a file beside it:
//! `config.rs` (settings and their rules), `peers.rs` (the peer table, the failure
//! detector's glue, the mesh view the tree policy reads), `broadcast.rs` (Plumtree's pushes,
//! announcements, grafts and prunes), `anti_entropy.rs` (digests, heads, repair),
//! `liveness.rs` (heartbeat repair), `acks.rs` (who holds this node's changes),
//! `rollover.rs` (the rollover trigger and proposer rule), `versions.rs` (what each peer
//! speaks, refusals) and `outbox.rs` (the transmit and event queues). The tree policy lives in [`crate::plumtree`], next to the doc that
//! describes it. Private fields stay private to this module; its files use them directly.

use std::collections::{BTreeMap, VecDeque};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use statusmesh_crdt::{
    ChangeHash, CrdtError, Name, Observation, Replica, StatusWrite, WriteOutcome,
};

use crate::codec::{self, Frame, ROOT_BYTES_MAX};
use crate::error::GossipError;
use crate::membership::Membership;
use crate::plumtree::{self, Plumtree};

mod acks;
mod anti_entropy;
mod broadcast;
mod config;
mod liveness;
mod members;
mod outbox;
mod peers;
mod rollover;
#[cfg(test)]
mod tests;
mod versions;

use acks::PendingAck;
use anti_entropy::DigestSent;
use peers::mesh_view;
use rollover::RolloverCut;

pub use acks::PENDING_ACKS_MAX;
pub use config::{Config, EpochConfig};
pub use members::JOINED_MEMBERS_MAX;
pub use outbox::{Event, Transmit};
pub use peers::{Peer, PeerState};

/// A node's identity: its id from regions.toml, bound to its certificate by the transport.
pub type NodeId = String;

/// Counters for metrics; they only grow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub frames_rejected: u64,
    pub changes_applied: u64,
    pub transmits_dropped: u64,
    pub events_dropped: u64,
    pub anti_entropy_rounds: u64,
    /// Pushes that brought nothing new; those from a redundant path are answered with a prune.
    pub pushes_duplicate: u64,
    /// Changes requested by graft after an announcement (not the tree optimisation's).
    pub grafts_sent: u64,
    /// Announcements dropped because a peer's batch was full.
    pub announcements_dropped: u64,
    /// Entries of this node's tree into other regions swapped for a faster or live peer.
    pub entries_swapped: u64,
    /// Rollovers this node proposed (each made a base change).
    pub rollovers_proposed: u64,
    /// Rollovers this node went through (proposed here or adopted from a peer).
    pub rollovers: u64,
    /// Frames refused on their versions ([`Event::VersionRefused`]).
    pub versions_refused: u64,
    /// Frames not sent because the peer's versions do not meet this node's.
    pub transmits_refused: u64,
}

/// Peers a starting node announces itself to.
pub const ANNOUNCE_SEEDS: usize = 3;

/// One node's protocol state machine. See the module docs for the flow.
#[derive(Debug)]
pub struct Node {
    id: NodeId,
    region: String,
    /// Whether this node counts toward a rollover's majority (see `members.rs`).
    voter: bool,
    config: Config,
    replica: Replica,
    peers: BTreeMap<NodeId, PeerState>,
    rng: ChaCha8Rng,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    next_anti_entropy_ms: u64,
    stats: Stats,
    /// This node's own recent changes and the peers that acknowledged them, oldest first.
    pending_acks: BTreeMap<ChangeHash, PendingAck>,
    pending_order: VecDeque<ChangeHash>,
    last_local_change: Option<ChangeHash>,
    membership: Membership,
    /// Whether this node announced itself to its seeds yet (on the first timeout).
    announced: bool,
    /// The seeds to announce to (`--join`); empty: a few peers at random.
    seeds: Vec<NodeId>,
    /// Plumtree: trees per root, seen changes, missing announcements.
    plumtree: Plumtree,
    /// When a graft was last sent to each peer (ms), to time its answer (a round trip).
    graft_sent_ms: BTreeMap<NodeId, u64>,
    /// The last anti-entropy digest, to time the answer.
    digest_sent: Option<DigestSent>,
    /// The latest time the driver gave (ms).
    now_ms: u64,
    /// Per document: the cut this node would roll over at once every live peer holds it.
    rollover_cuts: BTreeMap<Name, RolloverCut>,
}

impl Node {
    /// A node with identity `id`, the other members `peers`, its replica and an RNG seed.
    /// Nothing is sent until the driver calls [`Node::handle_timeout`].
    ///
    /// # Panics
    /// The caller's contract, asserted here: `config` is valid ([`Config::validate`]; a driver
    /// that reads settings from a user validates them first and reports the error), and `id`
    /// is a node id of 1 to [`ROOT_BYTES_MAX`] bytes (it names this node's tree on the wire;
    /// [`crate::Topology`] ensures it).
    pub fn new(id: NodeId, config: Config, peers: Vec<Peer>, replica: Replica, seed: u64) -> Self {
        if let Err(error) = config.validate() {
            panic!("invalid gossip config: {error}");
        }
        assert!(!id.is_empty(), "a node id is never empty");
        assert!(id.len() <= ROOT_BYTES_MAX, "node id {id:?} is too long");
        // The member list may name this node too: that is where its own region comes from.
        let region = peers
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.region.clone())
            .unwrap_or_default();
        // A node built here is listed (a voter); [`Node::new_joined`] makes one that is not.
        let voter = true;
        let membership = Membership::new(
            &id,
            config.generation,
            peers.len().max(1),
            config.failure_detector,
            seed ^ 0x5357_494d, // "SWIM": its own stream, derived from the one seed
        );
        let peers = peers
            .into_iter()
            .filter(|p| p.id != id)
            .map(|p| {
                (
                    p.id,
                    PeerState {
                        region: p.region,
                        voter: true,
                        ..PeerState::default()
                    },
                )
            })
            .collect();
        let config_broadcast = config.broadcast.clone();
        Self {
            id,
            region,
            voter,
            config,
            replica,
            peers,
            rng: ChaCha8Rng::seed_from_u64(seed),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_anti_entropy_ms: 0,
            stats: Stats::default(),
            pending_acks: BTreeMap::new(),
            pending_order: VecDeque::new(),
            last_local_change: None,
            membership,
            announced: false,
            seeds: Vec::new(),
            plumtree: Plumtree::new(config_broadcast),
            graft_sent_ms: BTreeMap::new(),
            digest_sent: None,
            now_ms: 0,
            rollover_cuts: BTreeMap::new(),
        }
    }

    /// Applies a client's write. A changed value is broadcast at once (see the module docs);
    /// an unchanged one refreshes liveness only. Errors leave the state unchanged.
    pub fn local_write(&mut self, now_ms: u64, write: &StatusWrite) -> Result<bool, GossipError> {
        self.now_ms = self.now_ms.max(now_ms);
        let outcome = self.replica.write_status(now_ms, write)?;
        if let (Some(hash), Some(change)) = (outcome.change_hash, outcome.change) {
            self.track_ack(now_ms, hash);
            self.publish(&write.service, hash, change);
            self.emit_transitions(outcome.transitions);
        } else {
            let key = write.cell_key();
            let frame = Frame::Liveness {
                entries: vec![(key.clone(), now_ms)],
                reply_wanted: false,
            };
            self.broadcast(&frame);
            self.push_event(Event::Heartbeat {
                key,
                last_seen_ms: now_ms,
            });
        }
        debug_assert_invariants(self);
        Ok(outcome.changed)
    }

    /// Applies many client writes at once (group commit): one Automerge change per service
    /// for the whole batch, one broadcast per service, one liveness frame for the
    /// heartbeats. Returns, per write, whether it changed the value it found (the value
    /// before it in the batch, or the replica's) and the change that carries it. All writes
    /// are validated first; an error leaves the state unchanged.
    pub fn local_write_batch(
        &mut self,
        now_ms: u64,
        writes: &[StatusWrite],
    ) -> Result<Vec<(bool, Option<ChangeHash>)>, GossipError> {
        self.now_ms = self.now_ms.max(now_ms);
        let mut latest: BTreeMap<String, &Observation> = BTreeMap::new();
        let mut changed = Vec::with_capacity(writes.len());
        for write in writes {
            let key = write.cell_key();
            let before = match latest.get(&key) {
                Some(observation) => Some((*observation).clone()),
                None => self
                    .replica
                    .doc(&write.service)
                    .and_then(|d| d.cell(&write.component, &write.region))
                    .filter(|cell| cell.conflicts.is_empty())
                    .map(|cell| cell.value),
            };
            changed.push(!before.is_some_and(|b| b.same_value(&write.observation)));
            latest.insert(key, &write.observation);
        }
        let outcomes = self.replica.write_status_batch(now_ms, writes)?;
        let mut hashes: BTreeMap<Name, ChangeHash> = BTreeMap::new();
        for outcome in outcomes {
            let (Some(hash), Some(bytes)) = (outcome.change_hash, outcome.change) else {
                continue;
            };
            self.track_ack(now_ms, hash);
            hashes.insert(outcome.service.clone(), hash);
            self.publish(&outcome.service, hash, bytes);
            self.emit_transitions(outcome.transitions);
        }
        let heartbeats: Vec<(String, u64)> = writes
            .iter()
            .zip(&changed)
            .filter(|(_, changed)| !**changed)
            .map(|(w, _)| (w.cell_key(), now_ms))
            .collect();
        if !heartbeats.is_empty() {
            for chunk in heartbeats.chunks(self.config.liveness_per_frame_max) {
                let frame = Frame::Liveness {
                    entries: chunk.to_vec(),
                    reply_wanted: false,
                };
                self.broadcast(&frame);
            }
            for (key, last_seen_ms) in heartbeats {
                self.push_event(Event::Heartbeat { key, last_seen_ms });
            }
        }
        debug_assert_invariants(self);
        Ok(writes
            .iter()
            .zip(changed)
            .map(|(w, changed)| {
                let hash = if changed {
                    hashes.get(&w.service).copied()
                } else {
                    None
                };
                (changed, hash)
            })
            .collect())
    }

    /// Applies a local change to `service` that `change` makes on the replica (opening or
    /// updating an incident, a maintenance window, an override): broadcast at once like a
    /// status write, acknowledged the same way. Returns the change's hash, or
    /// `None` when nothing changed. Errors leave the state unchanged.
    ///
    /// # Panics
    /// When `change` wrote to another service than `service` (a caller contract).
    pub fn local_change(
        &mut self,
        now_ms: u64,
        service: &Name,
        change: impl FnOnce(&mut Replica) -> Result<WriteOutcome, CrdtError>,
    ) -> Result<Option<ChangeHash>, GossipError> {
        self.now_ms = self.now_ms.max(now_ms);
        let outcome = change(&mut self.replica)?;
        // The caller's contract: `change` writes to `service`, whose tree carries it.
        assert!(
            outcome.service == *service,
            "a local change of {service} was made to {}",
            outcome.service
        );
        let (Some(hash), Some(bytes)) = (outcome.change_hash, outcome.change) else {
            return Ok(None);
        };
        self.track_ack(now_ms, hash);
        self.publish(service, hash, bytes);
        self.emit_transitions(outcome.transitions);
        debug_assert_invariants(self);
        Ok(Some(hash))
    }

    /// Handles a frame that arrived from `from` (the transport vouches for the identity).
    /// Bad frames are counted, reported as [`Event::FrameRejected`] and otherwise ignored;
    /// a frame of a peer outside this node's version ranges is refused unread
    /// ([`Event::VersionRefused`]).
    pub fn handle_frame(&mut self, now_ms: u64, from: &str, bytes: &[u8]) {
        if let Some(frame) = self.receive(now_ms, from, bytes) {
            self.dispatch(now_ms, from, frame);
        }
    }

    /// The first half of [`Node::handle_frame`]: counts the frame, notes the contact,
    /// decodes it and checks its versions (`versions.rs`). `None` when it was rejected or
    /// refused (and counted and reported as such).
    pub(crate) fn receive(&mut self, now_ms: u64, from: &str, bytes: &[u8]) -> Option<Frame> {
        self.now_ms = self.now_ms.max(now_ms);
        self.stats.frames_in += 1;
        self.stats.bytes_in += bytes.len() as u64;
        let Some(peer) = self.peers.get_mut(from) else {
            self.reject(from, GossipError::UnknownPeer(from.to_owned()));
            return None;
        };
        let first_contact = peer.last_heard_ms.is_none();
        peer.last_heard_ms = Some(now_ms);
        if first_contact {
            self.push_event(Event::PeerContact {
                peer: from.to_owned(),
            });
        }
        let decoded = match codec::decode_envelope(bytes) {
            Ok(decoded) => decoded,
            Err(GossipError::Version { got, advertised }) => {
                self.refuse_version(now_ms, from, got, advertised);
                return None;
            }
            Err(e) => {
                self.reject(from, e);
                return None;
            }
        };
        self.check_versions(now_ms, from, decoded.version, decoded.ranges)
            .then_some(decoded.frame)
    }

    /// The second half of [`Node::handle_frame`]: acts on a frame that was received whole.
    pub(crate) fn dispatch(&mut self, now_ms: u64, from: &str, frame: Frame) {
        match frame {
            Frame::Changes { service, changes } => {
                self.on_changes(from, &service, changes, false);
            }
            Frame::Push { service, changes } => self.on_changes(from, &service, changes, true),
            Frame::IHave { roots } => self.on_ihave(now_ms, from, roots),
            Frame::Graft { roots, ids } => self.on_graft(from, &roots, &ids),
            Frame::LivenessBuckets { hashes } => {
                self.sample_digest_rtt(from, true);
                self.on_liveness_buckets(from, &hashes);
            }
            Frame::LivenessWant { buckets } => self.on_liveness_want(from, &buckets),
            Frame::Prune { roots } => self.on_prune(from, &roots),
            Frame::Ack { changes, .. } => self.on_ack(from, &changes),
            Frame::Swim { data } => {
                if let Err(reason) = self.membership.handle_data(now_ms, from, &data) {
                    self.reject(from, GossipError::Decode(reason));
                }
                self.flush_membership();
            }
            Frame::Digest { docs, liveness } => self.on_digest(from, docs, liveness),
            Frame::Heads { docs, reply_wanted } => {
                self.sample_digest_rtt(from, reply_wanted);
                self.on_heads(from, docs, reply_wanted);
            }
            Frame::Liveness {
                entries,
                reply_wanted,
            } => {
                self.sample_digest_rtt(from, reply_wanted);
                self.on_liveness(from, entries, reply_wanted);
            }
        }
        debug_assert_invariants(self);
    }

    /// Runs what is due at `now_ms`: the first announcement to the seeds, the failure
    /// detector's timers, batched announcements and grafts, the re-choice of this node's
    /// entries into other regions, the anti-entropy round (with the rollover trigger), and the
    /// version probes of peers known only by their version-2 frames.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        if !self.announced {
            self.announced = true;
            // A few seeds are enough: each answers with the members it knows, and SWIM spreads
            // the rest. Announcing to everyone makes every node answer every node at start
            // (quadratic in the mesh size).
            let seeds = if self.seeds.is_empty() {
                let peers: Vec<NodeId> = self.peers.keys().cloned().collect();
                plumtree::pick_random(&mut self.rng, peers, ANNOUNCE_SEEDS)
            } else {
                self.seeds.clone()
            };
            for seed in seeds {
                self.membership.announce(now_ms, &seed);
            }
        }
        self.membership.handle_timeout(now_ms);
        self.flush_membership();
        self.forget_dead_members(now_ms);
        self.flush_broadcast(now_ms);
        let mesh = mesh_view!(self);
        let swaps = self.plumtree.rechoose_own_entries(&mesh, now_ms);
        self.stats.entries_swapped += swaps as u64;
        self.anti_entropy_round(now_ms);
        self.probe_versions(now_ms);
        debug_assert_invariants(self);
    }

    /// Runs an anti-entropy round with every peer now, instead of one random peer on the
    /// next tick: for when this node knows it lacks something (a client resumed with a cursor
    /// naming changes it has not seen yet). Costs one digest frame per peer.
    pub fn sync_now(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        let frame = self.digest_frame();
        self.broadcast(&frame);
    }

    /// Rolls `service` over to a new epoch now, at this node's current heads, whatever the
    /// triggers and the proposer rule say: for operators and for tests of concurrent
    /// proposals. The base and the writes carried on top are broadcast like local changes.
    /// Returns the new epoch, or `None` when there was nothing to compact.
    pub fn propose_rollover(
        &mut self,
        now_ms: u64,
        service: &Name,
    ) -> Result<Option<u32>, GossipError> {
        self.now_ms = self.now_ms.max(now_ms);
        let Some(heads) = self.replica.doc(service).map(|d| d.heads()) else {
            return Ok(None);
        };
        let epoch = self.roll_over_at(service, &heads)?;
        debug_assert_invariants(self);
        Ok(epoch)
    }

    /// The next frame to send, oldest first.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event, oldest first. Drain after [`Node::poll_transmit`].
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Node::handle_timeout`] should be called next (ms): the earliest of the
    /// anti-entropy round, the failure detector's timers, the next batch of announcements and
    /// the next graft. Any input may bring it forward (a change to announce, an announcement
    /// to graft); only `handle_timeout` moves it back.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<u64> {
        if !self.announced {
            return Some(0);
        }
        let swim = self.membership.next_timeout().unwrap_or(u64::MAX);
        let broadcast = self.plumtree.next_timeout().unwrap_or(u64::MAX);
        Some(self.next_anti_entropy_ms.min(swim).min(broadcast))
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// This node's region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The replica, for local reads.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// The peers and what is known of them.
    pub fn peers(&self) -> &BTreeMap<NodeId, PeerState> {
        &self.peers
    }

    /// Counters since start.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The settings this node runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Frames waiting in the transmit queue (bounded by `transmit_queue_max`).
    pub fn transmits_queued(&self) -> usize {
        self.transmits.len()
    }

    /// Events waiting in the event queue (bounded by `event_queue_max`).
    pub fn events_queued(&self) -> usize {
        self.events.len()
    }

    /// The Plumtree state: trees per root, seen and missing changes.
    pub fn broadcast_state(&self) -> &Plumtree {
        &self.plumtree
    }

    /// The smoothed round-trip time to `peer` (ms), once measured (acknowledged pushes,
    /// answered grafts and digests).
    pub fn rtt_ms(&self, peer: &str) -> Option<u64> {
        self.plumtree.rtt_ms(peer)
    }
}

/// The cheap protocol invariants after every input, in debug builds.
fn debug_assert_invariants(node: &Node) {
    if cfg!(debug_assertions) {
        if let Err(broken) = crate::invariants::check(node) {
            debug_assert!(false, "gossip invariant broken: {broken}");
        }
    }
}
