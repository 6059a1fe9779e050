//! The cluster: one slot per member holding its running node (or none while crashed), its
//! incarnation, clock skew and disk; crashes (planned and right after a rollover proposal),
//! restarts from the disk or from nothing, and failure detection figures.
//!
//! A node incarnation gets its actor id and gossip seed from the run's seed, so restarts are
//! as reproducible as the rest of the run.

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;
use statusmesh_crdt::liveness::Fnv64;
use statusmesh_crdt::{ActorId, Name, Replica, ServiceDoc, State};
use statusmesh_gossip::topology::Member;
use statusmesh_gossip::{Config, Node, Peer, Ranges};

use crate::failure::Failure;
use crate::network::Arrival;
use crate::outcome::{CrashRecord, Spec};
use crate::scenario::{Plan, ProposerCrash};
use crate::sim::{Ev, Sim};
use crate::workload::PendingWrite;

/// One member of the topology, across its incarnations.
#[derive(Debug)]
pub(crate) struct Slot {
    /// The running incarnation; `None` while crashed.
    pub(crate) node: Option<Node>,
    /// Incremented at every crash: frames and timers of an older incarnation are dropped.
    pub(crate) incarnation: u32,
    pub(crate) skew_ms: i64,
    /// The timer the simulator has scheduled for this incarnation, in the node's clock.
    pub(crate) timer_local_ms: Option<u64>,
    /// The saved documents of a crashed node that kept its disk, each with its previous
    /// epoch's document when it held one.
    disk: Option<Vec<SavedDoc>>,
    /// Tracked writes the disk holds, for the lost-write accounting.
    disk_writes: BTreeSet<usize>,
    /// Last state this node wrote per (service, component), to repeat it as a heartbeat.
    pub(crate) last_written: BTreeMap<(usize, usize), (State, String)>,
    /// While crashed: since when, and which crash.
    down_since: Option<DownSince>,
    /// Rollovers this incarnation proposed so far (to crash it right after a new one).
    proposed_seen: u64,
    /// Frames delivered since the last driver iteration (at most `driver::INBOX_MAX`).
    pub(crate) inbox: Vec<Arrival>,
    /// Client writes submitted since the last driver iteration.
    pub(crate) pending_writes: Vec<PendingWrite>,
    /// A driver iteration of this incarnation is scheduled.
    pub(crate) iteration_pending: bool,
    /// The virtual webhook senders of this incarnation (`webhooks` scenario only).
    pub(crate) senders: BTreeMap<crate::senders::PairKey, crate::senders::SenderState>,
}

impl Slot {
    /// A slot with its first incarnation running.
    pub(crate) fn new(node: Node, skew_ms: i64) -> Self {
        Self {
            node: Some(node),
            incarnation: 0,
            skew_ms,
            timer_local_ms: None,
            disk: None,
            disk_writes: BTreeSet::new(),
            last_written: BTreeMap::new(),
            down_since: None,
            proposed_seen: 0,
            inbox: Vec::new(),
            pending_writes: Vec::new(),
            iteration_pending: false,
            senders: BTreeMap::new(),
        }
    }
}

/// When a crashed node went down, and the index of its crash in the outcome.
#[derive(Debug, Clone, Copy)]
struct DownSince {
    at_us: u64,
    crash: usize,
}

/// A proposer crash `proposer_crash_due` decided on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PlannedCrash {
    pub(crate) empty_disk: bool,
    /// The proposal's frames are lost with the node.
    pub(crate) drop_frames: bool,
    pub(crate) down_ms: u64,
}

/// One document on a crashed node's disk.
#[derive(Debug)]
struct SavedDoc {
    service: Name,
    bytes: Vec<u8>,
    prev: Option<Vec<u8>>,
}

impl Sim {
    /// The indices of the running nodes, in order.
    pub(crate) fn live_nodes(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].node.is_some())
            .collect()
    }

    /// The plan's crash event: crashes a random live node (unless `down_max` are down) and
    /// schedules the next crash.
    pub(crate) fn crash(&mut self) {
        let Some(plan) = self.spec.plan.faults.crash.clone() else {
            return;
        };
        if !self.faults_on {
            return;
        }
        let next = self
            .rng
            .random_range(plan.interval_ms / 2..=plan.interval_ms + plan.interval_ms / 2);
        self.schedule(self.now_us + next.max(1) * 1_000, Ev::Crash);
        let live = self.live_nodes();
        let down = self.slots.len() - live.len();
        if down >= plan.down_max || live.len() <= 1 {
            return;
        }
        let node = live[self.rng.random_range(0..live.len())];
        let empty_disk = self
            .rng
            .random_bool(plan.empty_disk_probability.clamp(0.0, 1.0));
        let down_ms = self
            .rng
            .random_range(plan.down_ms.0..=plan.down_ms.1.max(plan.down_ms.0));
        self.crash_node(node, empty_disk, down_ms);
    }

    /// Crashes `node` now (with or without its disk) and restarts it after `down_ms`.
    pub(crate) fn crash_node(&mut self, node: usize, empty_disk: bool, down_ms: u64) {
        self.slots[node].down_since = Some(DownSince {
            at_us: self.now_us,
            crash: self.out.crashes.len(),
        });
        self.out.crashes.push(CrashRecord {
            at_us: self.now_us,
            node,
            empty_disk,
        });
        let held: BTreeSet<usize> = (0..self.out.writes.len())
            .filter(|&w| self.holds(node, w))
            .collect();
        let Some(crashed) = self.slots[node].node.take() else {
            return;
        };
        self.retire(&crashed);
        if empty_disk {
            self.slots[node].disk = None;
            self.slots[node].disk_writes.clear();
            for w in held {
                if !self.out.writes[w].lost_with_disk && !self.held_elsewhere(w, node) {
                    self.out.writes[w].lost_with_disk = true;
                }
            }
        } else {
            let docs = crashed
                .replica()
                .docs()
                .map(|d| SavedDoc {
                    service: d.service().clone(),
                    bytes: d.save(),
                    prev: d.save_prev(),
                })
                .collect();
            self.slots[node].disk = Some(docs);
            self.slots[node].disk_writes = held;
        }
        // What the driver had not handed to the core yet dies with the process.
        self.webhook_crashed(node);
        let slot = &mut self.slots[node];
        self.out.dropped_down += slot.inbox.len() as u64;
        slot.inbox.clear();
        slot.pending_writes.clear();
        slot.iteration_pending = false;
        slot.incarnation += 1;
        slot.timer_local_ms = None;
        self.schedule(self.now_us + down_ms * 1_000, Ev::Restart { node });
        for s in 0..self.subscribers.len() {
            if self.subscribers[s].node == node {
                self.reconnect(s, node);
            }
        }
    }

    /// Restarts a crashed node from its disk (or empty), as its next incarnation.
    pub(crate) fn restart(&mut self, node: usize) {
        if self.slots[node].node.is_some() {
            return;
        }
        self.slots[node].down_since = None;
        let incarnation = self.slots[node].incarnation;
        let actor = actor_id(self.spec.seed, node, incarnation);
        let id = self.members[node].id.clone();
        let replica = match self.slots[node].disk.take() {
            Some(saved) => {
                let mut docs = Vec::with_capacity(saved.len());
                for SavedDoc {
                    service,
                    bytes,
                    prev,
                } in saved
                {
                    let mut doc = match ServiceDoc::load(service.clone(), &bytes, actor.clone()) {
                        Ok(doc) => doc,
                        Err(e) => {
                            self.fail(Failure::SavedDocUnloadable {
                                node: id,
                                service,
                                error: e.to_string(),
                            });
                            return;
                        }
                    };
                    if let Some(prev) = prev {
                        if let Err(e) = doc.attach_prev(&prev) {
                            self.fail(Failure::SavedPrevUnloadable {
                                node: id,
                                service,
                                error: e.to_string(),
                            });
                            return;
                        }
                    }
                    docs.push(doc);
                }
                Replica::from_docs(&id, actor, docs)
            }
            None => Replica::new(&id, actor),
        };
        self.slots[node].disk_writes.clear();
        self.slots[node].proposed_seen = 0;
        self.slots[node].node = Some(Node::new(
            id,
            node_config(&self.spec.plan, incarnation),
            self.peers.clone(),
            replica,
            node_seed(self.spec.seed, node, incarnation),
        ));
        self.after_call(node);
    }

    /// Whether node `i`, which has now proposed `proposed` rollovers, crashes right after a
    /// new one (the plan's proposer crash), and how. Every other proposer crash loses the
    /// disk; at most `down_max` nodes are down at once.
    pub(crate) fn proposer_crash_due(&mut self, i: usize, proposed: u64) -> Option<PlannedCrash> {
        if proposed <= self.slots[i].proposed_seen {
            return None;
        }
        self.slots[i].proposed_seen = proposed;
        let ProposerCrash {
            down_ms,
            drop_frames_probability,
            down_max,
        } = self.spec.plan.epochs.proposer_crash.clone()?;
        let live = self.live_nodes().len();
        if !self.faults_on || self.slots.len() - live >= down_max || live <= 1 {
            return None;
        }
        let drop_frames = self
            .rng
            .random_bool(drop_frames_probability.clamp(0.0, 1.0));
        Some(PlannedCrash {
            empty_disk: self.out.epochs.proposer_crashes % 2 == 1,
            drop_frames,
            down_ms: self.rng.random_range(down_ms.0..=down_ms.1.max(down_ms.0)),
        })
    }

    /// Adds a node incarnation's epoch counters to the run's (before it crashes or at the
    /// end: a restart starts them from zero).
    pub(crate) fn retire(&mut self, node: &Node) {
        let stats = node.stats();
        self.out.versions_refused += stats.versions_refused;
        let epochs = &mut self.out.epochs;
        epochs.proposed += stats.rollovers_proposed;
        epochs.adopted += stats.rollovers;
        epochs.carried += node
            .replica()
            .docs()
            .map(|d| d.epoch_stats().carried)
            .sum::<u64>();
    }

    /// Failure detection: the first time each observer declares a crashed node down counts
    /// as a detection; declaring a running node down counts as a false suspicion.
    pub(crate) fn note_peer_down(&mut self, observer: usize, peer: &str) {
        let Some(&down) = self.index.get(peer) else {
            return;
        };
        match self.slots[down].down_since {
            Some(DownSince { at_us, crash }) => {
                if self.detected.insert((crash, observer)) {
                    self.out.detection_us.push(self.now_us - at_us);
                }
            }
            None => self.out.false_downs += 1,
        }
    }

    /// True when a node other than `except` holds write `w`, running or on a kept disk.
    fn held_elsewhere(&self, w: usize, except: usize) -> bool {
        (0..self.slots.len()).filter(|&i| i != except).any(|i| {
            self.holds(i, w)
                || (self.slots[i].node.is_none()
                    && self.slots[i].disk.is_some()
                    && self.slots[i].disk_writes.contains(&w))
        })
    }
}

/// The node of the first incarnation of member `i`.
pub(crate) fn first_node(spec: &Spec, members: &[Member], peers: &[Peer], i: usize) -> Node {
    let member = &members[i];
    let replica = Replica::new(&member.id, actor_id(spec.seed, i, 0));
    Node::new(
        member.id.clone(),
        node_config(&spec.plan, 0),
        peers.to_vec(),
        replica,
        node_seed(spec.seed, i, 0),
    )
}

/// A fresh actor id per node and incarnation, never reused: the index and incarnation are in
/// the bytes, the rest comes from the seed.
pub(crate) fn actor_id(seed: u64, node: usize, incarnation: u32) -> ActorId {
    let mut bytes = Vec::with_capacity(16);
    bytes.extend_from_slice(&(node as u32).to_be_bytes());
    bytes.extend_from_slice(&incarnation.to_be_bytes());
    bytes.extend_from_slice(&node_seed(seed, node, incarnation).to_be_bytes());
    ActorId::from(bytes)
}

/// The protocol settings of a node incarnation: the WAN defaults with the plan's rollover
/// triggers and versions, and the incarnation as the SWIM generation (as the node driver builds it from its
/// start count), so that peers that declared the previous life down take the new one.
fn node_config(plan: &Plan, incarnation: u32) -> Config {
    // A rolling upgrade: the first life emulates the previous release (`Plan::upgrade`).
    let versions = if plan.upgrade && incarnation == 0 {
        Ranges::CURRENT.with_frame_max(2)
    } else {
        Ranges::CURRENT
    };
    Config {
        epoch: plan.epochs.config.clone(),
        versions,
        ..Config::wan()
    }
    .with_incarnation(u64::from(incarnation))
}

/// The gossip RNG seed of a node incarnation, derived from the run's seed.
fn node_seed(seed: u64, node: usize, incarnation: u32) -> u64 {
    let mut hash = Fnv64::new();
    hash.write(&seed.to_le_bytes());
    hash.write(&(node as u64).to_le_bytes());
    hash.write(&incarnation.to_le_bytes());
    hash.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actor_ids_differ_per_node_and_incarnation() {
        let mut seen = BTreeSet::new();
        for node in 0..50 {
            for incarnation in 0..20 {
                assert!(seen.insert(actor_id(7, node, incarnation).to_bytes().to_vec()));
            }
        }
        assert_eq!(actor_id(7, 3, 1), actor_id(7, 3, 1));
    }
}
