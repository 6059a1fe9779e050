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

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use statusmesh_crdt::liveness::Fnv64;
use statusmesh_crdt::{
    ChangeHash, CrdtError, Cursor, DocEvent, Liveness, Name, Observation, Replica, StatusEvent,
    StatusWrite, WriteOutcome,
};

use crate::codec::{self, Frame, IDS_PER_FRAME_MAX, ROOTS_PER_FRAME_MAX};
use crate::error::GossipError;
use crate::liveness_range;
use crate::membership::{MemberState, Membership, Preset};
use crate::plumtree::{self, BroadcastConfig, EntryCandidate, MessageId, Plumtree, RootTree};

/// A node's identity: its id from regions.toml, bound to its certificate by the transport.
pub type NodeId = String;

/// Tuning and bounds of the protocol. Every queue has a bound here.
#[derive(Debug, Clone)]
pub struct Config {
    /// Time between anti-entropy rounds, in milliseconds. Default 1,000.
    pub anti_entropy_interval_ms: u64,
    /// Most frames waiting for the driver to send; the oldest is dropped (and counted) beyond
    /// it, since anti-entropy repairs whatever is dropped. Default 65,536.
    pub transmit_queue_max: usize,
    /// Most events waiting for the driver; the oldest is dropped (and counted) beyond it.
    /// Default 65,536.
    pub event_queue_max: usize,
    /// Most changes per [`Frame::Changes`]; larger repairs are split. Default 512.
    pub changes_per_frame_max: usize,
    /// Most liveness entries per [`Frame::Liveness`]; larger maps are split. Default 4,096.
    pub liveness_per_frame_max: usize,
    /// Timing of the SWIM failure detector.
    pub failure_detector: Preset,
    /// This node's generation in SWIM: a node that restarts with a higher one is a new life
    /// (foca renews it by itself when it finds itself declared down). Default 0.
    pub generation: u32,
    /// Timing and bounds of the Plumtree broadcast.
    pub broadcast: BroadcastConfig,
    /// When documents roll over to a new epoch (bounded history).
    pub epoch: EpochConfig,
}

/// When a document's history is compacted into a new epoch (see `statusmesh_crdt::epoch`).
/// A rollover is proposed by the live member with the smallest id, only while a majority of
/// the mesh is alive, at a cut every live member was seen to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochConfig {
    /// Roll over when the live epoch holds more than this many changes; 0 never does on
    /// count. Default 2,000 (Automerge holds ~2 KB of memory per change).
    pub history_changes_max: usize,
    /// Roll over when the live epoch's changes add up to more than this many bytes; 0 never
    /// does on size. Default 8 MiB.
    pub history_bytes_max: u64,
    /// Roll over when the live epoch is older than this (ms) and has changes of its own; 0
    /// never does on age. Default 0.
    pub age_ms_max: u64,
    /// Least time between two proposals for one document (ms). Default 5,000.
    pub propose_interval_ms: u64,
}

impl EpochConfig {
    /// Rollover switched off: history grows without bound (the behaviour before epochs).
    pub fn off() -> Self {
        Self {
            history_changes_max: 0,
            history_bytes_max: 0,
            age_ms_max: 0,
            ..Self::default()
        }
    }

    fn enabled(&self) -> bool {
        self.history_changes_max > 0 || self.history_bytes_max > 0 || self.age_ms_max > 0
    }
}

impl Default for EpochConfig {
    fn default() -> Self {
        Self {
            history_changes_max: 2_000,
            history_bytes_max: 8 << 20,
            age_ms_max: 0,
            propose_interval_ms: 5_000,
        }
    }
}

impl Config {
    /// Settings for nodes on one local network: frequent repair.
    pub fn lan() -> Self {
        Self {
            anti_entropy_interval_ms: 500,
            failure_detector: Preset::Lan,
            broadcast: BroadcastConfig::lan(),
            ..Self::wan()
        }
    }

    /// Settings for nodes across regions.
    pub fn wan() -> Self {
        Self {
            anti_entropy_interval_ms: 1_000,
            transmit_queue_max: 65_536,
            event_queue_max: 65_536,
            changes_per_frame_max: 512,
            liveness_per_frame_max: 4_096,
            failure_detector: Preset::Wan,
            generation: 0,
            broadcast: BroadcastConfig::wan(),
            epoch: EpochConfig::default(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::wan()
    }
}

/// Another member of the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: NodeId,
    pub region: String,
}

/// A frame for the driver to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: NodeId,
    pub bytes: Vec<u8>,
}

/// Something the driver (and its clients) may want to know.
#[derive(Debug, Clone)]
pub enum Event {
    /// A cell changed here, by a local write or a remote change. `cursor` is the replica's
    /// cursor after the change: a client that has seen this event resumes from it.
    Status { event: StatusEvent, cursor: Cursor },
    /// An incident, maintenance window or override changed here; `cursor` as for `Status`.
    Record { event: DocEvent, cursor: Cursor },
    /// Liveness of a cell moved forward (a heartbeat, no value change).
    Heartbeat { key: String, last_seen_ms: u64 },
    /// The first frame from a peer, or the first after it was silent.
    PeerContact { peer: NodeId },
    /// A peer sent a frame that does not decode or breaks the schema; it was ignored.
    FrameRejected { from: NodeId, reason: String },
    /// The failure detector found a peer alive (first contact, or back after being down).
    PeerUp { peer: NodeId },
    /// The failure detector declared a peer down (it did not refute a suspicion in time).
    PeerDown { peer: NodeId },
}

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
}

/// What a peer is known to hold, and when it was last heard.
#[derive(Debug, Clone, Default)]
pub struct PeerState {
    pub region: String,
    pub last_heard_ms: Option<u64>,
    /// Heads per service the peer reported in its last [`Frame::Heads`].
    pub heads: BTreeMap<Name, Vec<ChangeHash>>,
}

/// Peers a starting node announces itself to.
pub const ANNOUNCE_SEEDS: usize = 3;

/// Most local changes whose acknowledgements are tracked; the oldest is forgotten beyond it.
pub const PENDING_ACKS_MAX: usize = 65_536;

/// Who holds one of this node's own changes.
#[derive(Debug, Clone)]
struct PendingAck {
    made_at_ms: u64,
    acked_by: BTreeSet<NodeId>,
}

/// One node's protocol state machine. See the module docs for the flow.
#[derive(Debug)]
pub struct Node {
    id: NodeId,
    region: String,
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
    /// Plumtree: trees per root, seen changes, missing announcements.
    plumtree: Plumtree,
    /// When a graft was last sent to each peer (ms), to time its answer (a round trip).
    graft_sent_ms: BTreeMap<NodeId, u64>,
    /// The last anti-entropy digest: to whom and when (ms), to time the answer.
    digest_sent: Option<(NodeId, u64)>,
    /// When this node next re-chooses its tree's entries into other regions (ms).
    next_entry_check_ms: u64,
    /// The latest time the driver gave (ms).
    now_ms: u64,
    /// Per document: the cut this node would roll over at once every live peer holds it,
    /// and when it was chosen (ms).
    rollover_cuts: BTreeMap<Name, (Vec<ChangeHash>, u64)>,
}

impl Node {
    /// A node with identity `id`, the other members `peers`, its replica and an RNG seed.
    /// Nothing is sent until the driver calls [`Node::handle_timeout`].
    pub fn new(id: NodeId, config: Config, peers: Vec<Peer>, replica: Replica, seed: u64) -> Self {
        // The member list may name this node too: that is where its own region comes from.
        let region = peers
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.region.clone())
            .unwrap_or_default();
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
                        ..PeerState::default()
                    },
                )
            })
            .collect();
        let config_broadcast = config.broadcast.clone();
        Self {
            id,
            region,
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
            plumtree: Plumtree::new(config_broadcast),
            graft_sent_ms: BTreeMap::new(),
            digest_sent: None,
            next_entry_check_ms: 0,
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
            self.emit_doc_events(outcome.doc_events);
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
            self.emit_doc_events(outcome.doc_events);
        }
        let heartbeats: Vec<(String, u64)> = writes
            .iter()
            .zip(&changed)
            .filter(|(_, changed)| !**changed)
            .map(|(w, _)| (w.cell_key(), now_ms))
            .collect();
        if !heartbeats.is_empty() {
            for chunk in heartbeats.chunks(self.config.liveness_per_frame_max.max(1)) {
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
    pub fn local_change(
        &mut self,
        now_ms: u64,
        service: &Name,
        change: impl FnOnce(&mut Replica) -> Result<WriteOutcome, CrdtError>,
    ) -> Result<Option<ChangeHash>, GossipError> {
        self.now_ms = self.now_ms.max(now_ms);
        let outcome = change(&mut self.replica)?;
        let (Some(hash), Some(bytes)) = (outcome.change_hash, outcome.change) else {
            return Ok(None);
        };
        self.track_ack(now_ms, hash);
        self.publish(service, hash, bytes);
        self.emit_doc_events(outcome.doc_events);
        debug_assert_invariants(self);
        Ok(Some(hash))
    }

    /// Handles a frame that arrived from `from` (the transport vouches for the identity).
    /// Bad frames are counted, reported as [`Event::FrameRejected`] and otherwise ignored.
    pub fn handle_frame(&mut self, now_ms: u64, from: &str, bytes: &[u8]) {
        self.now_ms = self.now_ms.max(now_ms);
        self.stats.frames_in += 1;
        self.stats.bytes_in += bytes.len() as u64;
        let Some(peer) = self.peers.get_mut(from) else {
            self.reject(from, &GossipError::UnknownPeer(from.to_owned()));
            return;
        };
        let first_contact = peer.last_heard_ms.is_none();
        peer.last_heard_ms = Some(now_ms);
        if first_contact {
            self.push_event(Event::PeerContact {
                peer: from.to_owned(),
            });
        }
        let frame = match codec::decode(bytes) {
            Ok(frame) => frame,
            Err(e) => {
                self.reject(from, &e);
                return;
            }
        };
        match frame {
            Frame::Changes { service, changes } => {
                self.on_changes(from, &service, changes, false);
            }
            Frame::Push { service, changes } => self.on_changes(from, &service, changes, true),
            Frame::IHave { roots } => {
                for (root, ids) in roots {
                    for id in ids {
                        self.plumtree.announced(now_ms, from, &root, id);
                    }
                }
            }
            Frame::Graft { roots, ids } => self.on_graft(from, &roots, &ids),
            Frame::LivenessBuckets { hashes } => {
                self.sample_digest_rtt(from, true);
                self.on_liveness_buckets(from, &hashes);
            }
            Frame::LivenessWant { buckets } => {
                let entries = liveness_range::entries_in(self.replica.liveness(), &buckets);
                self.send_liveness(from, entries, false);
            }
            Frame::Prune { roots } => {
                for root in roots.iter().filter(|r| *r != from) {
                    self.plumtree.make_lazy(root, from);
                }
            }
            Frame::Ack { changes, .. } => self.on_ack(from, &changes),
            Frame::Swim { data } => {
                if let Err(reason) = self.membership.handle_data(now_ms, from, &data) {
                    self.reject(from, &GossipError::Decode(reason));
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

    /// Runs what is due at `now_ms`: batched announcements, grafts, the anti-entropy round.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        if !self.announced {
            self.announced = true;
            // A few seeds are enough: each answers with the members it knows, and SWIM spreads
            // the rest. Announcing to everyone makes every node answer every node at start
            // (quadratic in the mesh size).
            let peers: Vec<NodeId> = self.peers.keys().cloned().collect();
            for seed in self.pick_random(peers, ANNOUNCE_SEEDS) {
                self.membership.announce(now_ms, &seed);
            }
        }
        self.membership.handle_timeout(now_ms);
        self.flush_membership();
        self.flush_broadcast(now_ms);
        self.rechoose_own_entries(now_ms);
        if now_ms < self.next_anti_entropy_ms {
            return;
        }
        // Jitter of ±25% keeps nodes from running rounds in lockstep.
        let interval = self.config.anti_entropy_interval_ms.max(1);
        let jitter = self.rng.random_range(0..=interval / 2);
        self.next_anti_entropy_ms = now_ms + interval - interval / 4 + jitter;
        if self.peers.is_empty() {
            return;
        }
        let index = self.rng.random_range(0..self.peers.len());
        let Some(peer) = self.peers.keys().nth(index).cloned() else {
            return;
        };
        self.maybe_roll_over(now_ms);
        self.stats.anti_entropy_rounds += 1;
        self.digest_sent = Some((peer.clone(), now_ms));
        let frame = Frame::Digest {
            docs: self.docs_digest(),
            liveness: self.replica.liveness().digest(),
        };
        self.send(&peer, &frame);
        debug_assert_invariants(self);
    }

    /// Runs an anti-entropy round with every peer now, instead of one random peer on the
    /// next tick: for when this node knows it lacks something (a client resumed with a cursor
    /// naming changes it has not seen yet). Costs one digest frame per peer.
    pub fn sync_now(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        let frame = Frame::Digest {
            docs: self.docs_digest(),
            liveness: self.replica.liveness().digest(),
        };
        let peers: Vec<NodeId> = self.peers.keys().cloned().collect();
        for peer in peers {
            self.send(&peer, &frame);
        }
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
        match self.config.failure_detector {
            Preset::Lan => 3_000,
            Preset::Wan => 4_500,
        }
    }

    fn heard_recently(&self, peer: &str) -> bool {
        self.peers
            .get(peer)
            .and_then(|p| p.last_heard_ms)
            .is_some_and(|t| self.now_ms.saturating_sub(t) <= self.direct_evidence_ms())
    }

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

    /// Every region of the mesh, this node's included.
    pub fn region_count(&self) -> usize {
        let mut regions: BTreeSet<&str> = BTreeSet::from([self.region.as_str()]);
        regions.extend(self.peers.values().map(|p| p.region.as_str()));
        regions.len()
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

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.id
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

    /// Applies changes that came by push (`pushed`) or repair, and broadcasts on those seen
    /// for the first time. A push that brings nothing new by a redundant path prunes its
    /// sender.
    fn on_changes(&mut self, from: &str, service: &str, changes: Vec<Vec<u8>>, pushed: bool) {
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
                    parsed.push((change.hash(), root.to_owned()));
                }
                Err(e) => {
                    let error = CrdtError::ChangeDecode(e.to_string());
                    self.reject(from, &GossipError::Crdt(error));
                    return;
                }
            }
        }
        let doc = Name::parse("service", service)
            .ok()
            .and_then(|name| self.replica.doc(&name));
        let fresh: Vec<bool> = parsed
            .iter()
            .map(|(hash, _)| {
                !self.plumtree.has_seen(plumtree::message_id(hash))
                    && !doc.is_some_and(|d| d.has_all(&[*hash]))
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
                    .filter(|(hash, _)| {
                        self.plumtree
                            .seen(plumtree::message_id(hash))
                            .is_none_or(|seen| seen.pushed_by.as_ref().is_some_and(|p| p != from))
                    })
                    .map(|(_, root)| root)
                    .collect();
                if !roots.is_empty() {
                    self.prune(from, roots);
                }
                return;
            }
        }
        // Per root: the fresh changes and their ids, pushed on along that root's tree.
        let mut by_root: BTreeMap<String, (Vec<Vec<u8>>, Vec<MessageId>)> = BTreeMap::new();
        let mut faster: BTreeMap<String, NodeId> = BTreeMap::new();
        for (((hash, root), bytes), fresh) in parsed.into_iter().zip(changes).zip(fresh) {
            if !fresh {
                continue;
            }
            let id = plumtree::message_id(&hash);
            let pushed_by = pushed.then_some(from);
            let announced = self
                .plumtree
                .remember(id, service, &root, bytes.clone(), pushed_by);
            if let Some((announcer, at_ms)) = announced {
                let earlier_ms = self.now_ms.saturating_sub(at_ms);
                if pushed
                    && announcer != from
                    && earlier_ms >= self.config.broadcast.optimize_threshold_ms
                {
                    faster.insert(root.clone(), announcer);
                }
            }
            let entry = by_root.entry(root).or_default();
            entry.0.push(bytes);
            entry.1.push(id);
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
        for (root, (changes, ids)) in by_root {
            self.forward(&root, Some(from), service, changes, &ids, pushed);
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
                self.emit_doc_events(outcome.doc_events);
                true
            }
            Err(e) => {
                self.reject(from, &GossipError::Crdt(e));
                false
            }
        }
    }

    /// Broadcasts a change made here: this node is its root.
    fn publish(&mut self, service: &Name, hash: ChangeHash, bytes: Vec<u8>) {
        let id = plumtree::message_id(&hash);
        let root = self.id.clone();
        let service = service.to_string();
        self.plumtree
            .remember(id, &service, &root, bytes.clone(), None);
        self.forward(&root, None, &service, vec![bytes], &[id], true);
    }

    /// Pushes changes of `root` to the root's eager peers and queues their announcement for
    /// its lazy peers, never back to `sender` or to the root. A root seen for the first time
    /// gets its tree from [`Node::default_tree`]. Changes a repair brought (not `pushed`)
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
        // A repair's sender is a random peer, not a parent in the root's tree.
        let parent = if pushed { sender } else { None };
        if self.plumtree.tree(root).is_none() {
            let tree = self.default_tree(root, parent);
            self.plumtree.tree_or_insert(self.now_ms, root, || tree);
        } else if root != self.id && self.is_of_another_region(parent) {
            // A change that came from another region makes this node its region's entry for
            // the root, whatever role it had (the root's choice moves after a peer went down
            // or came back, and a heal brings changes in anywhere): it pushes on to the
            // region, except to peers that pruned it.
            let mates = self.candidates(root, sender, true);
            self.plumtree.add_eager_unless_lazy(root, &mates);
        }
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
        if self.plumtree.tree(&me).is_none() {
            let tree = self.default_tree(&me, None);
            self.plumtree.tree_or_insert(self.now_ms, &me, || tree);
        }
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

    /// The first tree of `root` at this node, given who sent its first change (`None` for
    /// this node's own changes, and for a tree made by a graft).
    ///
    /// - The root pushes to every peer of its region and to the best peer of every other
    ///   region (alive, lowest measured round trip, then a rank that spreads roots over the
    ///   region's peers); the second best of each region is lazy, ready to take over.
    /// - A node that got the change from another region pushes on to its own region.
    /// - Any other node is a leaf that announces to a few peers of its region.
    fn default_tree(&mut self, root: &str, sender: Option<&str>) -> RootTree {
        let mut tree = RootTree::default();
        let fanout = self.config.broadcast.lazy_fanout;
        if root == self.id {
            let mut by_region: BTreeMap<&str, Vec<(bool, u64, u64, &NodeId)>> = BTreeMap::new();
            for (id, peer) in &self.peers {
                if peer.region == self.region {
                    tree.eager.insert(id.clone());
                    continue;
                }
                let down = self.membership.state_of(id) == MemberState::Down;
                let rtt = self.plumtree.rtt_ms(id).unwrap_or(u64::MAX);
                by_region.entry(&peer.region).or_default().push((
                    down,
                    rtt,
                    plumtree::spread_rank(root, id),
                    id,
                ));
            }
            for mut ranked in by_region.into_values() {
                ranked.sort();
                let mut best = ranked.into_iter().map(|(_, _, _, id)| id.clone());
                tree.eager.extend(best.next());
                tree.lazy.extend(best.next());
            }
            return tree;
        }
        let entry = self.is_of_another_region(sender);
        let mates = self.candidates(root, sender, true);
        let others = self.candidates(root, sender, false);
        if entry {
            tree.eager.extend(mates);
            tree.lazy.extend(self.pick_random(others, fanout));
        } else {
            let mut lazy = self.pick_random(mates, fanout);
            let short = fanout.saturating_sub(lazy.len());
            lazy.extend(self.pick_random(others, short));
            tree.lazy.extend(lazy);
        }
        tree
    }

    /// Answers a graft: `from` becomes an eager peer of each root named and of the root of
    /// each change requested, and gets the requested changes still cached.
    fn on_graft(&mut self, from: &str, roots: &[String], ids: &[MessageId]) {
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
        for chunk in changes.chunks(self.config.changes_per_frame_max.max(1)) {
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
    fn flush_broadcast(&mut self, now_ms: u64) {
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

    /// Whether `sender` is a peer of another region than this node's.
    fn is_of_another_region(&self, sender: Option<&str>) -> bool {
        sender
            .and_then(|s| self.peers.get(s))
            .is_some_and(|p| p.region != self.region)
    }

    /// The peers of this node's region (`same_region`) or of the others, but `root` and
    /// `sender`.
    fn candidates(&self, root: &str, sender: Option<&str>, same_region: bool) -> Vec<NodeId> {
        self.peers
            .iter()
            .filter(|(id, p)| {
                (p.region == self.region) == same_region
                    && id.as_str() != root
                    && Some(id.as_str()) != sender
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// A peer back up rejoins this node's own tree where the default tree would have it: as
    /// a peer of this region, or as the entry of a region left without one (its entry went
    /// down, or a partition cut the whole region off).
    fn restore_in_own_tree(&mut self, up: &str) {
        let Some(region) = self.peers.get(up).map(|p| p.region.clone()) else {
            return;
        };
        let Some(tree) = self.plumtree.tree(&self.id) else {
            return;
        };
        let region_served = tree
            .eager
            .iter()
            .any(|p| self.peers.get(p).is_some_and(|s| s.region == region));
        if region == self.region || !region_served {
            let root = self.id.clone();
            self.plumtree.make_eager(self.now_ms, &root, up);
        }
    }

    /// A peer declared down leaves every tree; where it was eager, a lazy peer of its region
    /// (or else any other live peer of its region) takes its role.
    fn remove_from_trees(&mut self, down: &str) {
        let Some(region) = self.peers.get(down).map(|p| p.region.clone()) else {
            return;
        };
        let peers = &self.peers;
        let membership = &self.membership;
        let me = &self.id;
        let alive_in_region = |id: &String| {
            id != down
                && id != me
                && peers.get(id).is_some_and(|p| p.region == region)
                && membership.state_of(id) != MemberState::Down
        };
        self.plumtree.remove_peer(down, |tree| {
            tree.lazy
                .iter()
                .find(|id| alive_in_region(id))
                .cloned()
                .or_else(|| {
                    peers
                        .keys()
                        .find(|id| !tree.eager.contains(*id) && alive_in_region(id))
                        .cloned()
                })
        });
        self.graft_sent_ms.remove(down);
    }

    /// Re-chooses this node's entry into each other region by measured round trip and
    /// failure ([`Plumtree::rechoose_entries`]), once per graft timeout: linear in peers.
    /// A suspected entry gives way before it is declared down, so its region keeps getting
    /// pushes meanwhile. (Missing acks were tried as a second sign: under 20% loss a lost
    /// ack swapped live entries and cost copies, and it did not help crash-restart.)
    fn rechoose_own_entries(&mut self, now_ms: u64) {
        if now_ms < self.next_entry_check_ms || self.plumtree.tree(&self.id).is_none() {
            return;
        }
        self.next_entry_check_ms = now_ms + self.config.broadcast.graft_timeout_ms.max(1);
        let candidates: Vec<EntryCandidate> = self
            .peers
            .iter()
            .filter(|(id, p)| {
                p.region != self.region && self.membership.state_of(id) != MemberState::Down
            })
            .map(|(id, p)| EntryCandidate {
                peer: id.clone(),
                region: p.region.clone(),
                failing: self.membership.state_of(id) == MemberState::Suspect
                    && !self.heard_recently(id),
            })
            .collect();
        let me = self.id.clone();
        let swaps = self.plumtree.rechoose_entries(&me, &candidates);
        self.stats.entries_swapped += swaps.len() as u64;
    }

    /// Up to `count` of `candidates`, picked at random (a partial Fisher–Yates shuffle).
    fn pick_random(&mut self, mut candidates: Vec<NodeId>, count: usize) -> Vec<NodeId> {
        let count = count.min(candidates.len());
        for i in 0..count {
            let j = self.rng.random_range(i..candidates.len());
            candidates.swap(i, j);
        }
        candidates.truncate(count);
        candidates
    }

    /// An answer to this node's last digest is a round-trip sample.
    fn sample_digest_rtt(&mut self, from: &str, reply_wanted: bool) {
        if !reply_wanted {
            return;
        }
        if let Some((peer, sent_ms)) = self.digest_sent.take() {
            if peer == from {
                self.plumtree
                    .sample_rtt(from, self.now_ms.saturating_sub(sent_ms));
            } else {
                self.digest_sent = Some((peer, sent_ms));
            }
        }
    }

    /// Sends what the failure detector wants sent and reports who came up or went down.
    fn flush_membership(&mut self) {
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
            if change.up {
                self.restore_in_own_tree(&change.node);
            } else {
                self.remove_from_trees(&change.node);
            }
            self.push_event(if change.up {
                Event::PeerUp { peer: change.node }
            } else {
                Event::PeerDown { peer: change.node }
            });
        }
    }

    /// Broadcasts changes the replica made while applying (a base, carried writes): this node
    /// is their root, as for a local write.
    fn publish_made(&mut self, service: &str, made: Vec<Vec<u8>>) {
        let Ok(name) = Name::parse("service", service) else {
            return;
        };
        for bytes in made {
            if let Ok(change) = automerge::Change::try_from(bytes.as_slice()) {
                self.publish(&name, change.hash(), bytes);
            }
        }
    }

    /// Rolls `service` over at `cut`, broadcasts what that made and reports the events.
    fn roll_over_at(
        &mut self,
        service: &Name,
        cut: &[ChangeHash],
    ) -> Result<Option<u32>, GossipError> {
        let Some(outcome) = self.replica.rollover(service, cut)? else {
            return Ok(None);
        };
        self.stats.rollovers_proposed += 1;
        self.stats.rollovers += 1;
        self.rollover_cuts.remove(service);
        self.publish_made(service.as_str(), outcome.made);
        self.emit_doc_events(outcome.doc_events);
        Ok(outcome.rolled_over)
    }

    /// Proposes rollovers that are due (see [`EpochConfig`]). The proposer is the live member
    /// with the smallest id, while a majority is alive; it first chooses a cut (its heads)
    /// and asks every live peer for its heads, and rolls over at that cut once every live
    /// peer was seen to hold it. Concurrent proposals are still possible (a split view of who
    /// is alive); the crdt's rule picks one winner everywhere.
    fn maybe_roll_over(&mut self, now_ms: u64) {
        let config = self.config.epoch.clone();
        if !config.enabled() {
            return;
        }
        let alive: Vec<NodeId> = self
            .peers
            .keys()
            .filter(|p| self.member_state(p) == MemberState::Alive)
            .cloned()
            .collect();
        let members = self.peers.len() + 1;
        if alive.iter().any(|p| *p < self.id) || (alive.len() + 1) * 2 <= members {
            return;
        }
        let due: Vec<Name> = self
            .replica
            .docs()
            .filter(|d| {
                let history = d.history_len();
                let by_count =
                    config.history_changes_max > 0 && history > config.history_changes_max;
                let by_size =
                    config.history_bytes_max > 0 && d.history_bytes() > config.history_bytes_max;
                let by_age = config.age_ms_max > 0
                    && history > 1
                    && d.epoch_started_ms()
                        .is_some_and(|t| now_ms.saturating_sub(t) > config.age_ms_max);
                by_count || by_size || by_age
            })
            .map(|d| d.service().clone())
            .collect();
        let mut ask = false;
        for service in due {
            let Some(doc) = self.replica.doc(&service) else {
                continue;
            };
            match self.rollover_cuts.get(&service) {
                Some((cut, _)) if doc.has_all(cut) => {
                    let held_everywhere = alive.iter().all(|p| {
                        self.peers
                            .get(p)
                            .and_then(|state| state.heads.get(&service))
                            .is_some_and(|heads| doc.covered_by(cut, heads))
                    });
                    if held_everywhere {
                        let cut = cut.clone();
                        if let Err(e) = self.roll_over_at(&service, &cut) {
                            let id = self.id.clone();
                            self.reject(&id, &e);
                        }
                        continue;
                    }
                    ask = true;
                }
                Some((_, chosen_ms))
                    if now_ms.saturating_sub(*chosen_ms) < config.propose_interval_ms =>
                {
                    ask = true;
                }
                _ => {
                    self.rollover_cuts
                        .insert(service.clone(), (doc.heads(), now_ms));
                    ask = true;
                }
            }
        }
        if ask {
            // Every live peer answers with its heads (see `on_heads`), so the next round
            // knows whether it holds the cut.
            let frame = Frame::Heads {
                docs: self.all_heads(),
                reply_wanted: true,
            };
            for peer in alive {
                self.send(&peer, &frame);
            }
        }
    }

    fn on_ack(&mut self, from: &str, changes: &[[u8; 32]]) {
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

    fn track_ack(&mut self, now_ms: u64, hash: ChangeHash) {
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
    }

    fn on_digest(&mut self, from: &str, docs: u64, liveness: u64) {
        if docs != self.docs_digest() {
            let frame = Frame::Heads {
                docs: self.all_heads(),
                reply_wanted: true,
            };
            self.send(from, &frame);
        } else {
            // Equal digests: the peer holds what this node holds.
            let heads: BTreeMap<Name, Vec<ChangeHash>> = self
                .replica
                .docs()
                .map(|d| (d.service().clone(), d.heads()))
                .collect();
            if let Some(peer) = self.peers.get_mut(from) {
                peer.heads = heads;
            }
        }
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
    fn on_liveness_buckets(&mut self, from: &str, hashes: &[u32]) {
        let ours = liveness_range::bucket_hashes(self.replica.liveness());
        let buckets = liveness_range::differing(&ours, hashes);
        if buckets.is_empty() {
            return;
        }
        let entries = liveness_range::entries_in(self.replica.liveness(), &buckets);
        self.send_liveness(from, entries, false);
        self.send(from, &Frame::LivenessWant { buckets });
    }

    fn on_heads(&mut self, from: &str, docs: Vec<(String, Vec<[u8; 32]>)>, reply_wanted: bool) {
        let mut theirs: BTreeMap<Name, Vec<ChangeHash>> = BTreeMap::new();
        for (service, heads) in docs {
            match Name::parse("service", &service) {
                Ok(name) => {
                    theirs.insert(name, heads.into_iter().map(ChangeHash).collect());
                }
                Err(e) => {
                    self.reject(from, &GossipError::Crdt(e));
                    return;
                }
            }
        }
        // Send what they lack, service by service, in bounded frames.
        let services: Vec<Name> = self.replica.docs().map(|d| d.service().clone()).collect();
        for service in &services {
            let their_heads = theirs.get(service).cloned().unwrap_or_default();
            let changes = self.replica.changes_since(service, &their_heads);
            for chunk in changes.chunks(self.config.changes_per_frame_max.max(1)) {
                let frame = Frame::Changes {
                    service: service.to_string(),
                    changes: chunk.to_vec(),
                };
                self.send(from, &frame);
            }
        }
        // Our heads ask for what we lack (they hold heads we do not know), and are sent even
        // when nothing is lacking: the asker learns what this node holds, which a rollover
        // proposer waits for.
        if reply_wanted {
            let frame = Frame::Heads {
                docs: self.all_heads(),
                reply_wanted: false,
            };
            self.send(from, &frame);
        }
        if let Some(peer) = self.peers.get_mut(from) {
            peer.heads = theirs;
        }
    }

    fn on_liveness(&mut self, from: &str, entries: Vec<(String, u64)>, reply_wanted: bool) {
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

    fn send_liveness(&mut self, to: &str, entries: Vec<(String, u64)>, reply_wanted: bool) {
        for chunk in entries.chunks(self.config.liveness_per_frame_max.max(1)) {
            let frame = Frame::Liveness {
                entries: chunk.to_vec(),
                reply_wanted,
            };
            self.send(to, &frame);
        }
    }

    fn emit_doc_events(&mut self, events: Vec<DocEvent>) {
        if events.is_empty() {
            return;
        }
        let cursor = self.replica.cursor();
        for event in events {
            self.push_event(match event {
                DocEvent::Status(event) => Event::Status {
                    event,
                    cursor: cursor.clone(),
                },
                event => Event::Record {
                    event,
                    cursor: cursor.clone(),
                },
            });
        }
    }

    fn all_heads(&self) -> Vec<(String, Vec<[u8; 32]>)> {
        self.replica
            .docs()
            .map(|d| {
                (
                    d.service().to_string(),
                    d.heads().into_iter().map(|h| h.0).collect(),
                )
            })
            .collect()
    }

    fn docs_digest(&self) -> u64 {
        let mut hash = Fnv64::new();
        for doc in self.replica.docs() {
            hash.write(doc.service().as_str().as_bytes());
            for head in doc.heads() {
                hash.write(&head.0);
            }
        }
        hash.finish()
    }

    fn broadcast(&mut self, frame: &Frame) {
        let peers: Vec<NodeId> = self.peers.keys().cloned().collect();
        for peer in peers {
            self.send(&peer, frame);
        }
    }

    fn send(&mut self, to: &str, frame: &Frame) {
        let bytes = match codec::encode(frame) {
            Ok(bytes) => bytes,
            Err(e) => {
                // Only an oversized frame fails, which chunking prevents; count it as a drop.
                debug_assert!(false, "frame does not encode: {e}");
                self.stats.transmits_dropped += 1;
                return;
            }
        };
        if self.transmits.len() >= self.config.transmit_queue_max {
            self.transmits.pop_front();
            self.stats.transmits_dropped += 1;
        }
        self.stats.frames_out += 1;
        self.stats.bytes_out += bytes.len() as u64;
        self.transmits.push_back(Transmit {
            to: to.to_owned(),
            bytes,
        });
    }

    fn push_event(&mut self, event: Event) {
        if self.events.len() >= self.config.event_queue_max {
            self.events.pop_front();
            self.stats.events_dropped += 1;
        }
        self.events.push_back(event);
    }

    fn reject(&mut self, from: &str, error: &GossipError) {
        self.stats.frames_rejected += 1;
        self.push_event(Event::FrameRejected {
            from: from.to_owned(),
            reason: error.to_string(),
        });
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

#[cfg(test)]
mod tests {
    use super::*;
    use statusmesh_crdt::{ActorId, Observation, State};

    /// A tiny network on virtual time: every frame takes `latency_ms`; `drop_every` > 0
    /// drops every n-th frame; pushes to the nodes in `drop_pushes_to` are lost. Node `i` is
    /// in region `r{i % 3}`.
    struct Harness {
        nodes: Vec<Node>,
        in_flight: Vec<(u64, usize, String, Vec<u8>)>,
        now_ms: u64,
        latency_ms: u64,
        /// Latencies of particular links (either way), instead of `latency_ms`.
        link_latency_ms: BTreeMap<(usize, usize), u64>,
        cut: Option<usize>,
        drop_every: u64,
        drop_pushes_to: BTreeSet<usize>,
        sent: u64,
        /// Frames delivered, per (receiver, frame kind).
        delivered: BTreeMap<(usize, &'static str), u64>,
    }

    impl Harness {
        fn new(count: usize) -> Self {
            Self::with_config(count, Config::lan())
        }

        /// A harness whose anti-entropy rounds are a day apart: whatever converges, the
        /// broadcast did.
        fn without_anti_entropy(count: usize) -> Self {
            Self::with_config(
                count,
                Config {
                    anti_entropy_interval_ms: 86_400_000,
                    ..Config::lan()
                },
            )
        }

        fn with_config(count: usize, config: Config) -> Self {
            let peers: Vec<Peer> = (0..count)
                .map(|i| Peer {
                    id: format!("n{i}"),
                    region: format!("r{}", i % 3),
                })
                .collect();
            let nodes = (0..count)
                .map(|i| {
                    let replica =
                        Replica::new(&format!("n{i}"), ActorId::from(vec![i as u8 + 1; 16]));
                    Node::new(
                        format!("n{i}"),
                        config.clone(),
                        peers.clone(),
                        replica,
                        i as u64,
                    )
                })
                .collect();
            Self {
                nodes,
                in_flight: Vec::new(),
                now_ms: 1_000,
                latency_ms: 5,
                link_latency_ms: BTreeMap::new(),
                cut: None,
                drop_every: 0,
                drop_pushes_to: BTreeSet::new(),
                sent: 0,
                delivered: BTreeMap::new(),
            }
        }

        fn index(id: &str) -> usize {
            id[1..].parse().expect("node id")
        }

        fn drain(&mut self, i: usize) {
            let node = &self.nodes[i];
            assert_eq!(crate::invariants::check(node), Ok(()));
            assert_eq!(node.broadcast_state().check_all(node.id()), Ok(()));
            while let Some(t) = self.nodes[i].poll_transmit() {
                self.sent += 1;
                let to = Self::index(&t.to);
                let cut = self.cut.is_some_and(|c| c == i || c == to);
                let kind = codec::decode(&t.bytes).expect("own frames decode").kind();
                let dropped = (self.drop_every > 0 && self.sent.is_multiple_of(self.drop_every))
                    || (kind == "push" && self.drop_pushes_to.contains(&to));
                if !cut && !dropped {
                    let from = self.nodes[i].id().to_owned();
                    let latency_ms = self
                        .link_latency_ms
                        .get(&(i.min(to), i.max(to)))
                        .copied()
                        .unwrap_or(self.latency_ms);
                    self.in_flight
                        .push((self.now_ms + latency_ms, to, from, t.bytes));
                }
            }
            while self.nodes[i].poll_event().is_some() {}
        }

        /// A status write of `api/{component}/r0`, observed now.
        fn status_write(&self, component: &str, state: State) -> StatusWrite {
            StatusWrite::parse(
                "api",
                component,
                "r0",
                Observation {
                    state,
                    message: String::new(),
                    reporter: "probe".into(),
                    observed_at_ms: self.now_ms,
                    ttl_ms: 60_000,
                },
            )
            .expect("valid")
        }

        /// Three nodes without anti-entropy, n0 having written `db`; its push to n1 is taken
        /// from its queue (not delivered) and returned with the time of the write.
        fn with_push_from_n0_to_n1() -> (Self, u64, Vec<u8>) {
            let mut h = Harness::without_anti_entropy(3);
            h.run_for(100);
            let write = h.status_write("db", State::MajorOutage);
            let now = h.now_ms;
            h.nodes[0].local_write(now, &write).expect("write");
            let push = h.take_push(0, "n1");
            (h, now, push)
        }

        /// Node `i`'s push of its last write to `to`, taken from its queue (the rest of the
        /// queue is dropped).
        fn take_push(&mut self, i: usize, to: &str) -> Vec<u8> {
            std::iter::from_fn(|| self.nodes[i].poll_transmit())
                .find(|t| t.to == to && matches!(codec::decode(&t.bytes), Ok(Frame::Push { .. })))
                .expect("a push")
                .bytes
        }

        fn write(&mut self, i: usize, component: &str, state: State) {
            let write = self.status_write(component, state);
            self.nodes[i]
                .local_write(self.now_ms, &write)
                .expect("write");
            self.drain(i);
        }

        fn run_for(&mut self, duration_ms: u64) {
            let end = self.now_ms + duration_ms;
            while self.now_ms < end {
                self.now_ms += 1;
                let due: Vec<_> = {
                    let now = self.now_ms;
                    let (due, rest) = std::mem::take(&mut self.in_flight)
                        .into_iter()
                        .partition(|f| f.0 <= now);
                    self.in_flight = rest;
                    due
                };
                for (_, to, from, bytes) in due {
                    let kind = codec::decode(&bytes).expect("frames decode").kind();
                    *self.delivered.entry((to, kind)).or_default() += 1;
                    self.nodes[to].handle_frame(self.now_ms, &from, &bytes);
                    self.drain(to);
                }
                for i in 0..self.nodes.len() {
                    if self.nodes[i]
                        .poll_timeout()
                        .is_some_and(|t| t <= self.now_ms)
                    {
                        self.nodes[i].handle_timeout(self.now_ms);
                        self.drain(i);
                    }
                }
            }
        }

        fn converged(&self) -> bool {
            let first = self.nodes[0].replica().cursor();
            self.nodes.iter().all(|n| n.replica().cursor() == first)
        }

        /// Whether every node but `except` holds node `writer`'s last change.
        fn all_hold_last_change_of(&self, writer: usize, except: Option<usize>) -> bool {
            let hash = self.nodes[writer].last_local_change().expect("a change");
            let api = Name::parse("service", "api").expect("name");
            (0..self.nodes.len())
                .filter(|i| Some(*i) != except)
                .all(|i| {
                    self.nodes[i]
                        .replica()
                        .doc(&api)
                        .is_some_and(|d| d.has_all(&[hash]))
                })
        }

        fn delivered(&self, to: usize, kind: &'static str) -> u64 {
            self.delivered.get(&(to, kind)).copied().unwrap_or(0)
        }

        /// Runs until `done` holds, one millisecond at a time, for at most `limit_ms`;
        /// returns how long it took.
        fn run_until(&mut self, limit_ms: u64, done: impl Fn(&Self) -> bool) -> Option<u64> {
            for elapsed in 0..=limit_ms {
                if done(self) {
                    return Some(elapsed);
                }
                self.run_for(1);
            }
            None
        }
    }

    #[test]
    fn a_change_reaches_every_node_with_one_copy_each_within_two_hops() {
        let mut h = Harness::without_anti_entropy(9);
        h.run_for(100);
        h.write(0, "db", State::MajorOutage);
        // The root pushes to its region and to one node of each other region, which pushes
        // on to its own: two hops, not nine copies from the root.
        let pushed_by_root = h.nodes[0].stats().frames_out;
        h.run_for(2 * h.latency_ms + 1);
        assert!(h.all_hold_last_change_of(0, None));
        for i in 1..9 {
            assert_eq!(h.delivered(i, "push"), 1, "pushes delivered to n{i}");
        }
        assert_eq!(h.delivered(0, "push"), 0);
        let tree = h.nodes[0].broadcast_state().tree("n0").expect("own tree");
        assert_eq!(tree.eager.len(), 4, "{tree:?}");
        assert!(pushed_by_root > 0);
        // The tree is kept: a second change costs one copy per node too, and nothing is pruned.
        h.write(0, "db", State::Operational);
        h.run_for(2 * h.latency_ms + 1);
        assert!(h.all_hold_last_change_of(0, None));
        for i in 1..9 {
            assert_eq!(h.delivered(i, "push"), 2, "pushes delivered to n{i}");
            assert_eq!(h.nodes[i].stats().pushes_duplicate, 0);
        }
    }

    #[test]
    fn a_lost_push_is_recovered_by_graft_not_by_anti_entropy() {
        let mut h = Harness::without_anti_entropy(9);
        h.run_for(100);
        let rounds_before: u64 = h.nodes.iter().map(|n| n.stats().anti_entropy_rounds).sum();
        // n4 (region r1) is the region's entry or a leaf there: either way its push is lost,
        // and a peer that has the change announces it.
        h.drop_pushes_to.insert(4);
        h.write(0, "db", State::MajorOutage);
        h.run_for(2 * h.latency_ms + 1);
        assert!(!h.all_hold_last_change_of(0, None));
        h.drop_pushes_to.clear();
        let took = h.run_until(1_000, |h| h.all_hold_last_change_of(0, None));
        assert!(took.is_some(), "n4 never got the change");
        assert!(h.nodes[4].stats().grafts_sent >= 1);
        let rounds_after: u64 = h.nodes.iter().map(|n| n.stats().anti_entropy_rounds).sum();
        assert_eq!(rounds_after, rounds_before, "no anti-entropy round ran");
    }

    #[test]
    fn a_duplicate_push_prunes_its_sender() {
        let mut h = Harness::without_anti_entropy(9);
        h.run_for(100);
        h.write(0, "db", State::MajorOutage);
        h.run_for(20);
        // n2 (region r2) is told to push n0's changes to n1 as well: n1 now has two parents.
        let graft = codec::encode(&Frame::Graft {
            roots: vec!["n0".into()],
            ids: Vec::new(),
        })
        .expect("encode");
        h.nodes[2].handle_frame(h.now_ms, "n1", &graft);
        h.drain(2);
        let n2_pushes_to_n1 = |h: &Harness| {
            h.nodes[2]
                .broadcast_state()
                .tree("n0")
                .expect("tree")
                .eager
                .contains("n1")
        };
        assert!(n2_pushes_to_n1(&h));
        h.write(0, "db", State::Operational);
        h.run_for(20);
        assert_eq!(h.nodes[1].stats().pushes_duplicate, 1);
        assert!(!n2_pushes_to_n1(&h), "the prune reached n2");
        // The edge is gone: the next change reaches n1 once.
        h.write(0, "db", State::DegradedPerformance);
        h.run_for(20);
        assert!(h.all_hold_last_change_of(0, None));
        assert_eq!(h.nodes[1].stats().pushes_duplicate, 1);
    }

    #[test]
    fn a_push_the_network_repeats_does_not_prune_its_sender() {
        let (mut h, now, push) = Harness::with_push_from_n0_to_n1();
        for _ in 0..2 {
            h.nodes[1].handle_frame(now, "n0", &push);
        }
        assert_eq!(h.nodes[1].stats().pushes_duplicate, 1);
        let prunes = std::iter::from_fn(|| h.nodes[1].poll_transmit())
            .filter(|t| matches!(codec::decode(&t.bytes), Ok(Frame::Prune { .. })))
            .count();
        assert_eq!(prunes, 0);
        let tree = h.nodes[0].broadcast_state().tree("n0").expect("tree");
        assert!(tree.eager.contains("n1"));
    }

    #[test]
    fn a_change_repaired_after_a_heal_is_announced_on_and_reaches_the_rest_without_more_rounds() {
        let mut h = Harness::without_anti_entropy(9);
        h.run_for(100);
        h.cut = Some(3);
        h.write(3, "db", State::MajorOutage);
        h.run_for(100);
        h.cut = None;
        assert!(!h.all_hold_last_change_of(3, None));
        // One exchange: n1 syncs, and only n3 differs from it.
        let now = h.now_ms;
        h.nodes[1].sync_now(now);
        h.drain(1);
        // n1 announces it along its own tree: one graft round (virtual time) brings it to
        // every region, where entries push on; an epidemic of announcements alone needs more.
        let bound_ms = 2 * Config::lan().broadcast.graft_timeout_ms;
        let took = h.run_until(bound_ms, |h| h.all_hold_last_change_of(3, None));
        assert!(
            took.is_some(),
            "the rest got n3's change from n1 within {bound_ms} ms"
        );
        let heads_frames: u64 = (0..9).map(|i| h.delivered(i, "heads")).sum();
        assert!(
            heads_frames <= 2,
            "{heads_frames} heads frames: only n1 and n3 compared"
        );
        let rounds: u64 = h.nodes.iter().map(|n| n.stats().anti_entropy_rounds).sum();
        assert_eq!(rounds, 9, "one round per node at start, none since");
    }

    #[test]
    fn an_announcement_that_beats_the_push_grafts_the_faster_path_and_prunes_the_slower() {
        let (mut h, now, push) = Harness::with_push_from_n0_to_n1();
        let hash = h.nodes[0].last_local_change().expect("a change");
        let ihave = codec::encode(&Frame::IHave {
            roots: vec![("n0".into(), vec![plumtree::message_id(&hash)])],
        })
        .expect("encode");
        // n2 announces it; n0's push reaches n1 only the optimisation threshold later.
        h.nodes[1].handle_frame(now, "n2", &ihave);
        let threshold = Config::lan().broadcast.optimize_threshold_ms;
        h.nodes[1].handle_frame(now + threshold, "n0", &push);
        let sent: Vec<(String, Frame)> = std::iter::from_fn(|| h.nodes[1].poll_transmit())
            .map(|t| (t.to, codec::decode(&t.bytes).expect("decodes")))
            .collect();
        let roots = vec!["n0".to_owned()];
        assert!(sent.contains(&(
            "n2".into(),
            Frame::Graft {
                roots: roots.clone(),
                ids: vec![]
            }
        )));
        assert!(sent.contains(&("n0".into(), Frame::Prune { roots })));
    }

    /// Node 0's entries into region r1 (nodes 1, 4 and 7) in its own tree.
    fn r1_entries(h: &Harness) -> Vec<usize> {
        let tree = h.nodes[0].broadcast_state().tree("n0");
        [1, 4, 7]
            .into_iter()
            .filter(|i| tree.is_some_and(|t| t.eager.contains(&format!("n{i}"))))
            .collect()
    }

    /// One round of the RTT tests: node 0 writes a new state (acks time its entries) and
    /// the mesh runs an anti-entropy interval (probes and digests time the other peers).
    fn rtt_round(h: &mut Harness, round: usize) {
        let state = [State::Operational, State::DegradedPerformance][round % 2];
        h.write(0, "db", state);
        h.run_for(Config::lan().anti_entropy_interval_ms);
    }

    /// Nine nodes in three regions, 5 ms apart inside one and 40 ms across, but node 0 is
    /// `to_r1_ms` from nodes 1, 4 and 7 (region r1); node 0 writes once and the tree it
    /// builds is returned with the harness. Region labels and ranks choose that first tree:
    /// no round trip is known yet.
    fn rtt_mesh(to_r1_ms: [u64; 3]) -> Harness {
        let mut h = Harness::new(9);
        h.latency_ms = 40;
        for i in 0..9 {
            for j in (i + 1..9).filter(|j| j % 3 == i % 3) {
                h.link_latency_ms.insert((i, j), 5);
            }
        }
        for (peer, ms) in [1, 4, 7].into_iter().zip(to_r1_ms) {
            h.link_latency_ms.insert((0, peer), ms);
        }
        h.run_for(100);
        h.write(0, "db", State::Operational);
        h
    }

    #[test]
    fn the_entry_into_a_region_moves_to_its_peer_with_the_lowest_measured_round_trip() {
        // The entry its rank picks first is made the slowest peer, and the last the fastest:
        // whatever the labels say, only measured round trips can find the fast one.
        let mut by_rank = [1, 4, 7];
        by_rank.sort_by_key(|i| plumtree::spread_rank("n0", &format!("n{i}")));
        let mut to_r1_ms = [0; 3];
        for (i, ms) in by_rank.iter().zip([60, 40, 5]) {
            to_r1_ms[[1, 4, 7].iter().position(|p| p == i).expect("r1")] = ms;
        }
        let fastest = by_rank[2];
        let mut h = rtt_mesh(to_r1_ms);
        assert_eq!(
            r1_entries(&h),
            vec![by_rank[0]],
            "labels and ranks chose first"
        );
        // A round is one write and one anti-entropy interval: acks time the entry, digest
        // replies time the other peers.
        let rounds = (0..100).find(|round| {
            rtt_round(&mut h, *round);
            r1_entries(&h) == vec![fastest]
        });
        assert!(
            rounds.is_some(),
            "entries stayed {:?}; by rank {by_rank:?}; rtt {:?}",
            r1_entries(&h),
            by_rank.map(|i| h.nodes[0].rtt_ms(&format!("n{i}")))
        );
        for round in 0..20 {
            rtt_round(&mut h, round);
            assert_eq!(r1_entries(&h), vec![fastest], "the entry stays");
        }
        assert!(h.all_hold_last_change_of(0, None));
        assert!((1..=2).contains(&h.nodes[0].stats().entries_swapped));
    }

    #[test]
    fn a_suspected_entry_gives_way_before_it_is_declared_down() {
        let mut h = rtt_mesh([40, 40, 40]);
        h.run_for(3_000);
        let [entry] = r1_entries(&h)[..] else {
            panic!("one entry into r1: {:?}", r1_entries(&h));
        };
        h.cut = Some(entry);
        let moved_ms = h.run_until(30_000, |h| !r1_entries(h).contains(&entry));
        assert!(moved_ms.is_some(), "the cut entry stayed");
        let state = h.nodes[0].member_state(&format!("n{entry}"));
        assert_eq!(state, MemberState::Suspect, "moved after {moved_ms:?} ms");
        assert_eq!(r1_entries(&h).len(), 1);
        assert_eq!(h.nodes[0].stats().entries_swapped, 1);
        // The new entry gets the next write by push and passes it on to the rest of r1 (by
        // push, or by announcement and one graft where it was a lazy peer of a mate).
        h.write(0, "db", State::MajorOutage);
        let graft_ms = Config::lan().broadcast.graft_timeout_ms;
        let within_ms = 2 * 40 + graft_ms + 4 * 10;
        let took = h.run_until(within_ms, |h| h.all_hold_last_change_of(0, Some(entry)));
        assert!(
            took.is_some(),
            "r1 did not get the write within {within_ms} ms"
        );
    }

    #[test]
    fn peers_of_similar_round_trip_do_not_take_turns_as_the_entry() {
        let mut h = rtt_mesh([40, 37, 38]);
        let first = r1_entries(&h);
        assert_eq!(first.len(), 1);
        for round in 0..60 {
            rtt_round(&mut h, round);
            assert_eq!(r1_entries(&h), first);
        }
        assert_eq!(h.nodes[0].stats().entries_swapped, 0);
        // Every peer of r1 was measured by then, so the labels were not what kept it.
        for i in [1, 4, 7] {
            assert!(
                h.nodes[0].rtt_ms(&format!("n{i}")).is_some(),
                "n{i} measured"
            );
        }
    }

    #[test]
    fn an_eager_peer_declared_down_is_replaced_and_changes_still_reach_everyone() {
        let mut h = Harness::without_anti_entropy(9);
        h.run_for(3_000);
        h.write(0, "db", State::MajorOutage);
        h.run_for(20);
        // n0's entry into region r1 (n1, n4 or n7) dies.
        let tree = h.nodes[0]
            .broadcast_state()
            .tree("n0")
            .expect("tree")
            .clone();
        let entry = [1, 4, 7]
            .into_iter()
            .find(|i| tree.eager.contains(&format!("n{i}")))
            .expect("an entry into r1");
        h.cut = Some(entry);
        let dead = format!("n{entry}");
        let declared = h.run_until(20_000, |h| {
            h.nodes[0].member_state(&dead) == MemberState::Down
        });
        assert!(declared.is_some(), "{dead} declared down");
        let tree = h.nodes[0].broadcast_state().tree("n0").expect("tree");
        assert!(!tree.eager.contains(&dead));
        assert!(
            [1, 4, 7]
                .iter()
                .any(|i| *i != entry && tree.eager.contains(&format!("n{i}"))),
            "another node of r1 took the role: {tree:?}"
        );
        h.write(0, "db", State::Operational);
        let took = h.run_until(1_000, |h| h.all_hold_last_change_of(0, Some(entry)));
        assert!(took.is_some(), "every living node got the change");
    }

    #[test]
    fn a_lost_broadcast_is_repaired_by_anti_entropy() {
        let mut h = Harness::new(4);
        h.drop_every = 1; // every push is lost
        h.write(1, "db", State::PartialOutage);
        h.drop_every = 0;
        h.run_for(20);
        assert!(!h.converged());
        h.run_for(10_000);
        assert!(h.converged());
    }

    #[test]
    fn a_partitioned_node_catches_up_after_heal() {
        let mut h = Harness::new(4);
        h.cut = Some(3);
        for (i, c) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            h.write(i % 3, c, State::DegradedPerformance);
            h.run_for(50);
        }
        h.write(3, "z", State::MajorOutage);
        h.run_for(2_000);
        assert!(!h.converged());
        h.cut = None;
        h.run_for(10_000);
        assert!(h.converged());
        let view = serde_json::to_value(h.nodes[3].replica().view(h.now_ms, None)).expect("json");
        assert_eq!(
            view["services"][0]["components"].as_array().map(Vec::len),
            Some(6)
        );
    }

    #[test]
    fn liveness_heartbeats_spread_without_history() {
        let mut h = Harness::new(3);
        h.write(0, "db", State::Operational);
        h.run_for(10);
        h.now_ms += 5_000;
        h.write(0, "db", State::Operational);
        h.run_for(10);
        let key = "api/db/r0";
        for node in &h.nodes {
            assert_eq!(
                node.replica().liveness().last_seen(key),
                Some(h.now_ms - 10)
            );
            let doc = node.replica().docs().next().expect("doc");
            assert_eq!(doc.history_len(), 1);
        }
    }

    #[test]
    fn a_large_liveness_map_is_repaired_by_the_buckets_that_differ() {
        let mut h = Harness::without_anti_entropy(2);
        h.run_for(100);
        let entries: Vec<(String, u64)> = (0..2_000).map(|i| (format!("api/c{i}/r0"), 5)).collect();
        let whole = codec::encode(&Frame::Liveness {
            entries,
            reply_wanted: false,
        })
        .expect("encode");
        let newer = codec::encode(&Frame::Liveness {
            entries: vec![("api/c7/r0".into(), 9)],
            reply_wanted: false,
        })
        .expect("encode");
        let now = h.now_ms;
        h.nodes[0].handle_frame(now, "n1", &whole);
        h.nodes[1].handle_frame(now, "n0", &whole);
        h.nodes[1].handle_frame(now, "n0", &newer);
        h.drain(0);
        h.drain(1);
        let bytes_before: u64 = h.nodes.iter().map(|n| n.stats().bytes_out).sum();
        h.nodes[0].sync_now(now);
        h.drain(0);
        h.run_for(50);
        assert_eq!(
            h.nodes[0].replica().liveness(),
            h.nodes[1].replica().liveness()
        );
        let bytes: u64 = h.nodes.iter().map(|n| n.stats().bytes_out).sum::<u64>() - bytes_before;
        // The whole map is about 27 KB; the bucket hashes and one bucket's entries are a
        // small part of it.
        assert!(whole.len() > 20_000, "{}", whole.len());
        assert!(bytes < 3_000, "{bytes} bytes to repair one entry");
    }

    #[test]
    fn a_writer_learns_which_regions_hold_its_change() {
        let mut h = Harness::new(3);
        h.cut = Some(2);
        h.write(0, "db", State::MajorOutage);
        let hash = h.nodes[0].last_local_change().expect("a change");
        assert_eq!(h.nodes[0].regions_holding(&hash), Some(1));
        h.run_for(50);
        assert_eq!(h.nodes[0].regions_holding(&hash), Some(2));
        assert_eq!(h.nodes[0].peer_lag("n2").0, 1);
        assert_eq!(h.nodes[0].peer_lag("n1").0, 0);
        h.cut = None;
        // The node that missed the first push holds the second back until anti-entropy
        // (from any node) repairs the first; it then acknowledges both to their origin.
        h.write(0, "web", State::Operational);
        h.run_for(50);
        let second = h.nodes[0].last_local_change().expect("a change");
        assert_eq!(h.nodes[0].regions_holding(&second), Some(2));
        h.run_for(5_000);
        assert_eq!(h.nodes[0].regions_holding(&second), Some(3));
        assert_eq!(h.nodes[0].regions_holding(&hash), Some(3));
        assert_eq!(h.nodes[0].region_count(), 3);
    }

    #[test]
    fn a_dead_node_is_reported_down_and_the_living_stay_up() {
        let mut h = Harness::new(5);
        let living_see_each_other_up = |h: &Harness| {
            (0..4).all(|i| {
                (0..4)
                    .filter(|j| *j != i)
                    .all(|j| h.nodes[i].member_state(&format!("n{j}")) == MemberState::Alive)
            })
        };
        h.run_for(3_000);
        assert!(living_see_each_other_up(&h));
        h.cut = Some(4);
        let mut detected_after_ms = None;
        for step in 1..=60 {
            h.run_for(250);
            assert!(
                living_see_each_other_up(&h),
                "a living node reported down {}ms into the cut",
                step * 250
            );
            let all_see_down = (0..4).all(|i| h.nodes[i].member_state("n4") == MemberState::Down);
            if all_see_down && detected_after_ms.is_none() {
                detected_after_ms = Some(step * 250);
            }
        }
        let detected = detected_after_ms.expect("n4 declared down by every living node");
        assert!(detected <= 10_000, "declared down after {detected} ms");
        // Back from the dead: it learns it was declared down, renews its identity and rejoins;
        // the "everyone is down" view it formed while cut off must not take the living down.
        h.cut = None;
        let mut rejoined = false;
        for step in 1..=120 {
            h.run_for(250);
            assert!(
                living_see_each_other_up(&h),
                "a living node reported down {}ms after the heal",
                step * 250
            );
            if (0..4).all(|i| h.nodes[i].member_state("n4") == MemberState::Alive) {
                rejoined = true;
                break;
            }
        }
        assert!(rejoined, "n4 rejoined within 30 s of the heal");
    }

    #[test]
    fn a_swim_message_that_claims_another_sender_is_rejected() {
        let mut h = Harness::new(3);
        h.run_for(2_000);
        // n1 relays a SWIM message that n2 made: its header names n2, the transport says n1.
        let mut from_n2 = Vec::new();
        while let Some(t) = h.nodes[2].poll_transmit() {
            from_n2.push(t);
        }
        h.nodes[2].handle_timeout(h.now_ms + 10_000);
        while let Some(t) = h.nodes[2].poll_transmit() {
            from_n2.push(t);
        }
        let swim = from_n2
            .into_iter()
            .find(|t| matches!(codec::decode(&t.bytes), Ok(Frame::Swim { .. })))
            .expect("n2 sends SWIM messages");
        let before = h.nodes[0].stats().frames_rejected;
        h.nodes[0].handle_frame(h.now_ms, "n1", &swim.bytes);
        assert_eq!(h.nodes[0].stats().frames_rejected, before + 1);
    }

    #[test]
    fn an_incident_opened_on_one_node_reaches_the_others_as_a_record_event() {
        use statusmesh_crdt::{Impact, Incident, IncidentStatus};
        let mut h = Harness::new(3);
        let api = Name::parse("service", "api").expect("name");
        let id = Name::parse("incident", "inc-1").expect("name");
        let incident = Incident {
            title: "Errors".into(),
            impact: Impact::Minor,
            status: IncidentStatus::Investigating,
            components: vec![],
            opened_at_ms: h.now_ms,
            resolved_at_ms: None,
            author: "oncall".into(),
        };
        let now = h.now_ms;
        let hash = h.nodes[0]
            .local_change(now, &api, |r| {
                r.open_incident(now, &api, &id, incident, "looking")
            })
            .expect("opened")
            .expect("a change");
        let mut records = 0;
        while let Some(e) = h.nodes[0].poll_event() {
            records += usize::from(matches!(e, Event::Record { .. }));
        }
        assert_eq!(records, 1);
        // Deliver n0's push by hand, to see the receiver's event before the harness drains it.
        h.drain(0);
        let mut seen = false;
        for (_, to, from, bytes) in std::mem::take(&mut h.in_flight) {
            h.nodes[to].handle_frame(h.now_ms, &from, &bytes);
            while let Some(e) = h.nodes[to].poll_event() {
                seen |= to == 1
                    && matches!(
                        e,
                        Event::Record {
                            event: DocEvent::Incident(_),
                            ..
                        }
                    );
            }
            while let Some(t) = h.nodes[to].poll_transmit() {
                let sender = h.nodes[to].id().to_owned();
                h.in_flight
                    .push((h.now_ms, Harness::index(&t.to), sender, t.bytes));
            }
        }
        assert!(seen, "n1 reported the incident as a record event");
        h.run_for(50);
        assert!(h.nodes[2]
            .replica()
            .doc(&api)
            .and_then(|d| d.incident(&id))
            .is_some());
        assert_eq!(h.nodes[0].regions_holding(&hash), Some(3));
    }

    #[test]
    fn a_batch_of_writes_is_one_change_per_service_and_reaches_everyone() {
        let mut h = Harness::new(3);
        h.write(0, "db", State::Operational);
        let batch = [
            h.status_write("db", State::Operational),
            h.status_write("db", State::MajorOutage),
            h.status_write("db", State::Operational),
            h.status_write("web", State::PartialOutage),
        ];
        let now = h.now_ms;
        let result = h.nodes[0].local_write_batch(now, &batch).expect("batch");
        let changed: Vec<bool> = result.iter().map(|(c, _)| *c).collect();
        assert_eq!(changed, [false, true, true, true]);
        h.drain(0);
        h.run_for(20);
        assert!(h.converged());
        let api = Name::parse("service", "api").expect("name");
        for node in &h.nodes {
            let doc = node.replica().doc(&api).expect("doc");
            // The first write, then the whole batch as one change.
            assert_eq!(doc.history_len(), 2);
            let db = doc
                .cell(
                    &Name::parse("c", "db").expect("name"),
                    &Name::parse("r", "r0").expect("name"),
                )
                .expect("cell");
            assert_eq!(db.value.state, State::Operational);
        }
        let hash = result[1].1.expect("a change");
        assert_eq!(h.nodes[0].regions_holding(&hash), Some(3));
    }

    #[test]
    fn garbage_broadcast_frames_change_nothing_and_are_counted() {
        let mut h = Harness::without_anti_entropy(3);
        h.run_for(100);
        h.write(0, "db", State::Operational);
        h.run_for(20);
        let before = h.nodes[1].replica().cursor();
        let tree_before = h.nodes[1].broadcast_state().trees().clone();
        let missing_before = h.nodes[1].broadcast_state().missing_count();
        let rejected_before = h.nodes[1].stats().frames_rejected;
        let bad_push = codec::encode(&Frame::Push {
            service: "api".into(),
            changes: vec![vec![0xde, 0xad]],
        })
        .expect("encode");
        let ihave = codec::encode(&Frame::IHave {
            roots: vec![("n0".into(), vec![1, 2, 3])],
        })
        .expect("encode");
        let truncated_ihave = ihave[..ihave.len() - 1].to_vec();
        // Version, then the variant index of each broadcast frame, then noise.
        let noise: Vec<Vec<u8>> = (6u8..=9)
            .map(|tag| [vec![codec::WIRE_VERSION, tag], vec![0xff; 40]].concat())
            .collect();
        let garbage: Vec<Vec<u8>> = [vec![bad_push, truncated_ihave], noise].concat();
        let count = garbage.len() as u64;
        for bytes in garbage {
            h.nodes[1].handle_frame(h.now_ms, "n0", &bytes);
        }
        assert_eq!(h.nodes[1].stats().frames_rejected, rejected_before + count);
        assert_eq!(
            h.nodes[1].transmits_queued(),
            0,
            "nothing forwarded or answered"
        );
        assert_eq!(h.nodes[1].replica().cursor(), before);
        assert_eq!(h.nodes[1].broadcast_state().trees(), &tree_before);
        assert_eq!(h.nodes[1].broadcast_state().missing_count(), missing_before);
        h.drain(1);
        h.run_for(1_000);
        assert!(h.converged());
    }

    #[test]
    fn garbage_frames_change_nothing_and_are_counted() {
        let mut h = Harness::new(2);
        h.write(0, "db", State::Operational);
        h.run_for(10);
        let before = h.nodes[1].replica().cursor();
        let bad_changes = codec::encode(&Frame::Changes {
            service: "api".into(),
            changes: vec![vec![0xde, 0xad]],
        })
        .expect("encode");
        for bytes in [vec![], vec![0xff; 100], bad_changes] {
            h.nodes[1].handle_frame(h.now_ms, "n0", &bytes);
        }
        h.nodes[1].handle_frame(h.now_ms, "stranger", &[1, 2, 3]);
        assert_eq!(h.nodes[1].stats().frames_rejected, 4);
        assert_eq!(h.nodes[1].replica().cursor(), before);
        let mut rejected = 0;
        while let Some(e) = h.nodes[1].poll_event() {
            if matches!(e, Event::FrameRejected { .. }) {
                rejected += 1;
            }
        }
        assert_eq!(rejected, 4);
    }

    fn epoch_config(history_changes_max: usize) -> Config {
        Config {
            epoch: EpochConfig {
                history_changes_max,
                propose_interval_ms: 1_000,
                ..EpochConfig::default()
            },
            ..Config::lan()
        }
    }

    fn api_doc(node: &Node) -> Option<&statusmesh_crdt::ServiceDoc> {
        node.replica()
            .doc(&Name::parse("service", "api").expect("name"))
    }

    #[test]
    fn a_mesh_rolls_over_under_load_and_every_write_survives() {
        let mut h = Harness::with_config(5, epoch_config(10));
        h.run_for(2_000);
        let mut written = Vec::new();
        let states = [State::MajorOutage, State::Operational];
        for round in 0..120_usize {
            let i = round % 5;
            h.write(i, &format!("c{}", round % 7), states[round % 2]);
            let hash = h.nodes[i].last_local_change().expect("a change");
            written.push(
                api_doc(&h.nodes[i])
                    .and_then(|d| d.write_of(&hash))
                    .expect("a write"),
            );
            h.run_for(50);
        }
        assert!(
            h.run_until(20_000, Harness::converged).is_some(),
            "the mesh converges"
        );
        let first =
            serde_json::to_string(&h.nodes[0].replica().view(h.now_ms, None)).expect("json");
        for node in &h.nodes {
            let doc = api_doc(node).expect("doc");
            assert!(
                doc.epoch() >= 3,
                "{} is in epoch {}",
                node.id(),
                doc.epoch()
            );
            assert!(
                doc.history_len() < 60,
                "history stays bounded: {}",
                doc.history_len()
            );
            for write in &written {
                assert!(doc.holds_write(write), "{} lost {write:?}", node.id());
            }
            let view = serde_json::to_string(&node.replica().view(h.now_ms, None)).expect("json");
            assert_eq!(view, first);
        }
        // Only the smallest live id proposes.
        assert!(h.nodes[0].stats().rollovers_proposed >= 3);
        assert!(h.nodes[1..]
            .iter()
            .all(|n| n.stats().rollovers_proposed == 0));
    }

    #[test]
    fn a_node_cut_off_through_two_rollovers_converges_and_keeps_its_writes() {
        let mut h = Harness::with_config(5, epoch_config(8));
        h.run_for(2_000);
        h.cut = Some(4);
        let mut island = Vec::new();
        for round in 0..6 {
            h.write(4, &format!("island{round}"), State::PartialOutage);
            let hash = h.nodes[4].last_local_change().expect("a change");
            island.push(
                api_doc(&h.nodes[4])
                    .and_then(|d| d.write_of(&hash))
                    .expect("a write"),
            );
        }
        for round in 0..60_usize {
            h.write(
                round % 4,
                &format!("c{}", round % 5),
                [State::MajorOutage, State::Operational][round % 2],
            );
            h.run_for(100);
        }
        let epoch = api_doc(&h.nodes[0]).map(|d| d.epoch()).unwrap_or_default();
        assert!(epoch >= 2, "the rest rolled over twice: epoch {epoch}");
        assert_eq!(api_doc(&h.nodes[4]).map(|d| d.epoch()), Some(0));
        h.cut = None;
        assert!(
            h.run_until(30_000, Harness::converged).is_some(),
            "the cut-off node converges after the heal"
        );
        for node in &h.nodes {
            let doc = api_doc(node).expect("doc");
            for write in &island {
                assert!(doc.holds_write(write), "{} lost {write:?}", node.id());
            }
            assert_eq!(doc.cells().len(), 6 + 5);
        }
    }

    #[test]
    fn a_node_without_a_live_majority_does_not_propose() {
        let mut h = Harness::with_config(3, epoch_config(3));
        h.run_for(2_000);
        // n0 alone: n1 and n2 are cut off from it and declared down.
        h.cut = Some(0);
        for round in 0..10 {
            h.write(0, &format!("c{round}"), State::MajorOutage);
        }
        h.run_for(30_000);
        assert_eq!(h.nodes[0].stats().rollovers_proposed, 0);
        assert_eq!(api_doc(&h.nodes[0]).map(|d| d.epoch()), Some(0));
    }
}
