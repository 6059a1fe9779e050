//! The discrete-event simulator: real [`Node`]s on virtual time over a simulated network.
//!
//! # Flow of a run
//! 1. Every member of the topology gets a [`Node`] with a fresh [`Replica`]; all randomness
//!    (latency jitter, faults, workload, node seeds, actor ids) comes from one ChaCha RNG
//!    seeded with the run's seed.
//! 2. Safety phase: the workload writes, the faults of the [`Plan`] are on, and after every
//!    event the simulator runs [`invariants::check`] on the node it touched and the
//!    subscriber checks on its event stream.
//! 3. Heal: faults off, crashed nodes restart, writes stop. Liveness phase: every node must
//!    hold the same heads and liveness within `liveness_bound_ms`.
//! 4. After an idle window (which measures idle traffic), the final checks: equal cursors,
//!    equal views at equal time, every acknowledged write present everywhere.
//!
//! Time is kept in microseconds so that 1 ms intra-region latencies can carry jitter; nodes
//! see milliseconds since the Unix epoch, shifted by their clock skew.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::rc::Rc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use statusmesh_crdt::doc::CellRead;
use statusmesh_crdt::epoch::{ActorKind, Lineage, WriteId};
use statusmesh_crdt::liveness::Fnv64;
use statusmesh_crdt::{
    ActorId, ChangeHash, Cursor, Name, Observation, Replica, ServiceDoc, State, StatusEvent,
    StatusWrite,
};
use statusmesh_gossip::topology::{LatencyModel, Member, Topology};
use statusmesh_gossip::{codec, invariants, Config, Event, Node, Peer};

use crate::scenario::{PartitionMode, Plan, ProposerCrash, Workload};

/// Node clocks read as milliseconds since the Unix epoch; the run starts here (Nov 2023).
const CLOCK_BASE_MS: u64 = 1_700_000_000_000;
/// How often the liveness phase checks for convergence, in microseconds.
const PROBE_INTERVAL_US: u64 = 10_000;
/// Most events one run may process; a run that needs more is reported as a failure rather
/// than left to spin.
const EVENTS_MAX: u64 = 100_000_000;
/// How often a long run reports progress, in simulated seconds.
pub const PROGRESS_INTERVAL_S: u64 = 60;
/// Nodes a subscriber tries before it accepts a snapshot on reconnect.
const RECONNECT_ATTEMPTS: usize = 3;
/// Jitter on top of every one-way latency: up to this fraction of it...
const JITTER_FRACTION: f64 = 0.05;
/// ...plus up to this many microseconds (queueing inside a data centre).
const JITTER_US: u64 = 100;
/// Time-to-live of written observations: longer than any phase, so staleness flips only
/// where a reporter's clock is skewed far.
const OBSERVATION_TTL_MS: u64 = 600_000;
/// Most writes a run tracks for the acknowledgement and delivery checks.
const WRITES_TRACKED_MAX: usize = 200_000;
/// Services and components the workload writes to.
const SERVICES: [&str; 4] = ["checkout", "search", "payments", "identity"];
const COMPONENTS: [&str; 6] = ["api", "db", "web", "queue", "cache", "auth"];

/// The frame kinds that carry changes (`Frame::kind`): repair and broadcast push.
pub const CHANGES_KINDS: [&str; 2] = ["changes", "push"];

/// A run's inputs: everything that determines its output.
#[derive(Debug, Clone)]
pub struct Spec {
    pub seed: u64,
    pub topology: Topology,
    /// How the topology was named on the command line, for the replay command.
    pub topology_arg: String,
    pub plan: Plan,
    /// Extra flags the replay command must repeat (`--nodes 50 --duration-s 60`).
    pub replay_flags: String,
}

/// One partition interval, for the timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionSpan {
    pub start_us: u64,
    pub end_us: u64,
    /// Regions with at least one node on the cut-off side.
    pub regions: Vec<usize>,
}

/// One acknowledged write: `local_write` returned `Ok(true)`.
#[derive(Debug, Clone)]
pub struct WriteRecord {
    pub node: usize,
    pub service: Name,
    pub hash: ChangeHash,
    /// The write's identity, which survives rollovers (its change may be compacted into a
    /// base or carried under another hash): "present" means `holds_write(&id)`.
    pub id: WriteId,
    pub at_us: u64,
    /// When each node first held the change, microseconds after the write.
    pub delivered_us: Vec<Option<u64>>,
    /// Frames that carried this change.
    pub copies: u64,
    /// Every node that held it lost its disk before it spread: it may be gone.
    pub lost_with_disk: bool,
    /// Written during the safety phase with faults on (excluded from latency figures).
    pub under_faults: bool,
}

/// Everything a run measured; [`crate::report`] turns it into text, JSON and SVG.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub failure: Option<String>,
    pub members: Vec<Member>,
    pub region_names: Vec<String>,
    /// Shortest-path one-way latency between regions, in milliseconds.
    pub shortest_ms: Vec<Vec<f64>>,
    pub writes: Vec<WriteRecord>,
    pub heartbeats: u64,
    /// Frames and bytes sent, per frame kind (`Frame::kind`).
    pub sent_by_kind: BTreeMap<&'static str, (u64, u64)>,
    pub bytes_sent: u64,
    pub bytes_sent_safety: u64,
    pub dropped_partition: u64,
    pub dropped_loss: u64,
    pub dropped_down: u64,
    pub duplicated: u64,
    pub crashes: Vec<(u64, usize, bool)>,
    /// Per (crash, observer): how long until the observer declared the crashed node down.
    pub detection_us: Vec<u64>,
    /// Running nodes declared down (partitions and loss make these expected).
    pub false_downs: u64,
    pub partitions: Vec<PartitionSpan>,
    pub heal_us: u64,
    pub converged_us: Option<u64>,
    /// Times the mesh diverged after converging (late frames) and had to converge again.
    pub reconvergences: u64,
    /// When every node first held the same heads after the heal (liveness may still differ).
    pub heads_converged_us: Option<u64>,
    pub idle_bytes: u64,
    pub idle_us: u64,
    pub end_us: u64,
    pub subscriber_events: u64,
    pub reconnects: u64,
    pub snapshots: u64,
    /// Cells whose conflict flag changed without an event (see `check_subscriber_state`).
    pub conflict_flags_missed: u64,
    /// Events that repeated a winner because a losing concurrent value arrived.
    pub conflict_reannouncements: u64,
    pub events_processed: u64,
    pub frames_rejected: u64,
    pub trace_digest: u64,
    pub epochs: EpochFigures,
}

/// What the epoch machinery did in a run (summed over every node and incarnation).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EpochFigures {
    /// The epoch of each service on the first node at the end.
    pub reached: BTreeMap<Name, u32>,
    /// Rollovers proposed (`Stats::rollovers_proposed`), forced ones included.
    pub proposed: u64,
    /// Epochs moved to, proposed or adopted (`Stats::rollovers`), over all nodes.
    pub adopted: u64,
    /// Forced proposals that rolled over, and forced moments skipped because the nodes did
    /// not agree on the service's epoch yet (a contest still open; see `force_rollovers`).
    pub forced: u64,
    pub forced_skipped: u64,
    /// Writes carried into a newer epoch (`EpochStats::carried`), over all nodes.
    pub carried: u64,
    /// Proposers that crashed right after proposing, and how many of those lost the disk.
    pub proposer_crashes: u64,
    pub proposer_crashes_empty_disk: u64,
    /// Changes in the first node's documents at the end, and what they would be without
    /// rollover: one per acknowledged write (the histories are equal at convergence).
    pub history_len: usize,
    pub history_len_without: usize,
    /// At the heal: how many epochs the rest of the mesh was ahead of the cut-off side, the
    /// most over services (a node partitioned through that many rollovers).
    pub gap_at_heal: u32,
    /// Acknowledged writes made by a node of the cut-off side while the partition was on.
    pub cut_writes: u64,
}

#[derive(Debug)]
struct Payload {
    bytes: Vec<u8>,
    kind: &'static str,
    /// Indices of tracked writes whose changes the frame carries.
    writes: Vec<usize>,
}

#[derive(Debug)]
enum Ev {
    Deliver {
        from: usize,
        to: usize,
        incarnation: u32,
        payload: Rc<Payload>,
    },
    Timer {
        node: usize,
        incarnation: u32,
        local_ms: u64,
    },
    Write,
    BroadcastWrite {
        node: usize,
    },
    PartitionOn,
    PartitionOff,
    Crash,
    Restart {
        node: usize,
    },
    Roam,
    Heal,
    Probe,
    End,
    ForceRollovers,
}

impl Ev {
    fn tag(&self) -> u8 {
        match self {
            Ev::Deliver { .. } => 0,
            Ev::Timer { .. } => 1,
            Ev::Write => 2,
            Ev::BroadcastWrite { .. } => 3,
            Ev::PartitionOn => 4,
            Ev::PartitionOff => 5,
            Ev::Crash => 6,
            Ev::Restart { .. } => 7,
            Ev::Roam => 8,
            Ev::Heal => 9,
            Ev::Probe => 10,
            Ev::End => 11,
            Ev::ForceRollovers => 12,
        }
    }
}

/// An event in the heap; equal times are broken by the order of scheduling.
#[derive(Debug)]
struct Scheduled {
    at_us: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at_us, self.seq) == (other.at_us, other.seq)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at_us, self.seq).cmp(&(other.at_us, other.seq))
    }
}

/// What a subscriber holds of one cell: the event's value without its key.
type CellState = (Observation, bool, Option<String>, Option<u64>);
type CellKey = (Name, Name, Name);

#[derive(Debug)]
struct Slot {
    node: Option<Node>,
    incarnation: u32,
    skew_ms: i64,
    timer_local_ms: Option<u64>,
    /// The saved documents of a crashed node that kept its disk, each with its previous
    /// epoch's document when it held one.
    disk: Option<Vec<SavedDoc>>,
    /// Tracked writes the disk holds, for the lost-write accounting.
    disk_writes: BTreeSet<usize>,
    /// Last state this node wrote per (service, component), to repeat it as a heartbeat.
    last_written: BTreeMap<(usize, usize), (State, String)>,
    /// While crashed: since when, and the index of the crash.
    down_since: Option<(u64, usize)>,
    /// Rollovers this incarnation proposed so far (to crash it right after a new one).
    proposed_seen: u64,
}

/// A proposer crash `after_call` decided on.
#[derive(Debug, Clone, Copy)]
struct PlannedCrash {
    empty_disk: bool,
    drop_frames: bool,
    down_ms: u64,
}

/// One document on a crashed node's disk.
#[derive(Debug)]
struct SavedDoc {
    service: Name,
    bytes: Vec<u8>,
    prev: Option<Vec<u8>>,
}

#[derive(Debug)]
struct Subscriber {
    node: usize,
    cursor: Cursor,
    /// The epoch lineage of each service when the cursor was taken.
    lineages: BTreeMap<Name, Lineage>,
    cells: BTreeMap<CellKey, CellState>,
    /// The losing values of each cell at the last check (events do not carry them).
    conflicts: BTreeMap<CellKey, Vec<Observation>>,
}

/// The simulator of one run.
#[derive(Debug)]
pub struct Sim {
    spec: Spec,
    members: Vec<Member>,
    latency: LatencyModel,
    rng: ChaCha8Rng,
    now_us: u64,
    seq: u64,
    heap: BinaryHeap<Reverse<Scheduled>>,
    slots: Vec<Slot>,
    index: HashMap<String, usize>,
    peers: Vec<Peer>,
    /// True for nodes on the cut-off side of the plan's partition.
    cut: Vec<bool>,
    cut_regions: Vec<usize>,
    partition_active: bool,
    faults_on: bool,
    /// The plan has faults at all (writes under them are left out of latency figures).
    faulty: bool,
    safety_end_us: u64,
    write_by_hash: HashMap<ChangeHash, usize>,
    subscribers: Vec<Subscriber>,
    last_payload: Option<Rc<Payload>>,
    /// (crash, observer) pairs already detected.
    detected: BTreeSet<(usize, usize)>,
    /// Values written so far, numbering each write's message.
    messages_written: u64,
    /// Frame kind per leading (version, variant) bytes, learned from full decodes.
    kind_by_tag: HashMap<(u8, u8), &'static str>,
    trace: Fnv64,
    out: Outcome,
    idle_start: Option<(u64, u64)>,
}

impl Sim {
    /// A simulator for `spec`, with every node constructed and its first timer armed.
    pub fn new(spec: Spec) -> Result<Self, String> {
        let members = spec.topology.members();
        if members.is_empty() {
            return Err("the topology has no nodes".to_owned());
        }
        let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
        // Draw the plan's choices first, so a plan reads the same RNG stream every time.
        let (cut, cut_regions) = choose_cut(&spec, &members, &mut rng);
        let latency = LatencyModel::new(&spec.topology.regions);
        let shortest_ms = latency.shortest_paths_ms();
        let peers: Vec<Peer> = members
            .iter()
            .map(|m| Peer {
                id: m.id.clone(),
                region: spec.topology.regions[m.region].name.clone(),
            })
            .collect();
        let index = members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.id.clone(), i))
            .collect();
        let skew = spec.plan.faults.clock_skew_ms as i64;
        let mut slots = Vec::with_capacity(members.len());
        for (i, member) in members.iter().enumerate() {
            let skew_ms = if skew > 0 {
                rng.random_range(-skew..=skew)
            } else {
                0
            };
            let replica = Replica::new(&member.id, actor_id(spec.seed, i, 0));
            let node = Node::new(
                member.id.clone(),
                node_config(&spec.plan),
                peers.clone(),
                replica,
                node_seed(spec.seed, i, 0),
            );
            slots.push(Slot {
                node: Some(node),
                incarnation: 0,
                skew_ms,
                timer_local_ms: None,
                disk: None,
                disk_writes: BTreeSet::new(),
                last_written: BTreeMap::new(),
                down_since: None,
                proposed_seen: 0,
            });
        }
        let regions_with_nodes = spec
            .topology
            .regions
            .iter()
            .enumerate()
            .filter(|(r, _)| members.iter().any(|m| m.region == *r))
            .count() as u64;
        let safety_end_us = match spec.plan.workload {
            Workload::Broadcast { spacing_ms } => {
                (1_000 + regions_with_nodes * spacing_ms + 2_000).max(spec.plan.safety_ms) * 1_000
            }
            Workload::Flips { .. } => spec.plan.safety_ms * 1_000,
        };
        let subscribers = (0..spec.plan.subscribers.min(members.len()))
            .map(|k| Subscriber {
                node: k * members.len() / spec.plan.subscribers.max(1),
                cursor: Cursor::default(),
                lineages: BTreeMap::new(),
                cells: BTreeMap::new(),
                conflicts: BTreeMap::new(),
            })
            .collect();
        let out = Outcome {
            failure: None,
            members: members.clone(),
            region_names: spec
                .topology
                .regions
                .iter()
                .map(|r| r.name.clone())
                .collect(),
            shortest_ms,
            writes: Vec::new(),
            heartbeats: 0,
            sent_by_kind: BTreeMap::new(),
            bytes_sent: 0,
            bytes_sent_safety: 0,
            dropped_partition: 0,
            dropped_loss: 0,
            dropped_down: 0,
            duplicated: 0,
            crashes: Vec::new(),
            detection_us: Vec::new(),
            false_downs: 0,
            partitions: Vec::new(),
            heal_us: safety_end_us,
            converged_us: None,
            reconvergences: 0,
            heads_converged_us: None,
            idle_bytes: 0,
            idle_us: 0,
            end_us: 0,
            subscriber_events: 0,
            reconnects: 0,
            snapshots: 0,
            conflict_flags_missed: 0,
            conflict_reannouncements: 0,
            events_processed: 0,
            frames_rejected: 0,
            trace_digest: 0,
            epochs: EpochFigures::default(),
        };
        let mut sim = Self {
            members,
            latency,
            rng,
            now_us: 0,
            seq: 0,
            heap: BinaryHeap::new(),
            slots,
            index,
            peers,
            cut,
            cut_regions,
            partition_active: false,
            faults_on: true,
            faulty: spec.plan.faults != crate::scenario::Faults::none(),
            safety_end_us,
            write_by_hash: HashMap::new(),
            subscribers,
            last_payload: None,
            kind_by_tag: HashMap::new(),
            detected: BTreeSet::new(),
            messages_written: 0,
            trace: Fnv64::new(),
            out,
            idle_start: None,
            spec,
        };
        sim.schedule_start();
        Ok(sim)
    }

    /// Runs to the end (or the first failure) and returns what was measured.
    pub fn run(self) -> Outcome {
        self.run_with_progress(&mut |_| {})
    }

    /// Runs like [`Sim::run`], calling `progress` with the simulated time in seconds each
    /// time another [`PROGRESS_INTERVAL_S`] simulated seconds have passed (for long runs).
    pub fn run_with_progress(mut self, progress: &mut dyn FnMut(u64)) -> Outcome {
        let mut next_progress_s = PROGRESS_INTERVAL_S;
        while let Some(Reverse(scheduled)) = self.heap.pop() {
            if self.out.failure.is_some() {
                break;
            }
            while scheduled.at_us / 1_000_000 >= next_progress_s {
                progress(next_progress_s);
                next_progress_s += PROGRESS_INTERVAL_S;
            }
            self.out.events_processed += 1;
            if self.out.events_processed > EVENTS_MAX {
                self.fail(format!("event budget of {EVENTS_MAX} exhausted"));
                break;
            }
            debug_assert!(scheduled.at_us >= self.now_us, "time went backwards");
            self.now_us = scheduled.at_us;
            self.trace.write(&scheduled.at_us.to_le_bytes());
            self.trace.write(&[scheduled.ev.tag()]);
            if matches!(scheduled.ev, Ev::End) {
                self.finish();
                if self.out.end_us > 0 {
                    break;
                }
                continue;
            }
            self.handle(scheduled.ev);
        }
        if self.out.failure.is_none() && self.out.end_us == 0 {
            self.fail("the run ended without reaching its end event".to_owned());
        }
        self.out.trace_digest = self.trace.finish();
        for i in 0..self.slots.len() {
            if let Some(node) = self.slots[i].node.take() {
                self.out.frames_rejected += node.stats().frames_rejected;
                self.retire(&node);
                if i == 0 {
                    let epochs = &mut self.out.epochs;
                    for doc in node.replica().docs() {
                        epochs.reached.insert(doc.service().clone(), doc.epoch());
                        epochs.history_len += doc.history_len();
                    }
                }
                self.slots[i].node = Some(node);
            }
        }
        self.out.epochs.history_len_without =
            self.out.writes.iter().filter(|w| !w.lost_with_disk).count();
        self.out
    }

    fn schedule_start(&mut self) {
        for i in 0..self.slots.len() {
            self.rearm(i);
        }
        let plan = self.spec.plan.clone();
        match plan.workload {
            Workload::Flips { .. } => self.schedule(1_000_000, Ev::Write),
            Workload::Broadcast { spacing_ms } => {
                let mut at_us = 1_000_000;
                for region in 0..self.spec.topology.regions.len() {
                    if let Some(node) = self.members.iter().position(|m| m.region == region) {
                        self.schedule(at_us, Ev::BroadcastWrite { node });
                        at_us += spacing_ms * 1_000;
                    }
                }
            }
        }
        if let Some(partition) = &plan.faults.partition {
            if partition.start_ms * 1_000 < self.safety_end_us {
                self.schedule(partition.start_ms * 1_000, Ev::PartitionOn);
            }
        }
        if let Some(crash) = &plan.faults.crash {
            let first = self
                .rng
                .random_range(crash.interval_ms / 2..=crash.interval_ms);
            self.schedule(first * 1_000, Ev::Crash);
        }
        if let Some(forced) = &plan.epochs.forced {
            if forced.first_ms * 1_000 < self.safety_end_us {
                self.schedule(forced.first_ms * 1_000, Ev::ForceRollovers);
            }
        }
        if !self.subscribers.is_empty() {
            self.schedule(plan.roam_interval_ms.max(1) * 1_000, Ev::Roam);
        }
        self.schedule(self.safety_end_us, Ev::Heal);
    }

    fn schedule(&mut self, at_us: u64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse(Scheduled {
            at_us: at_us.max(self.now_us),
            seq: self.seq,
            ev,
        }));
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver {
                from,
                to,
                incarnation,
                payload,
            } => self.deliver(from, to, incarnation, &payload),
            Ev::Timer {
                node,
                incarnation,
                local_ms,
            } => {
                let slot = &self.slots[node];
                if slot.incarnation != incarnation || slot.timer_local_ms != Some(local_ms) {
                    return;
                }
                let now_ms = self.local_ms(node);
                if let Some(n) = self.slots[node].node.as_mut() {
                    n.handle_timeout(now_ms);
                    self.after_call(node);
                }
            }
            Ev::Write => self.workload_tick(),
            Ev::BroadcastWrite { node } => {
                let state = State::ALL[self.rng.random_range(1..State::ALL.len())];
                let message = self.next_message();
                self.write(node, 0, 0, state, message);
            }
            Ev::PartitionOn => {
                if !self.faults_on {
                    return;
                }
                self.partition_active = true;
                self.out.partitions.push(PartitionSpan {
                    start_us: self.now_us,
                    end_us: self.safety_end_us,
                    regions: self.cut_regions.clone(),
                });
                if let Some((on_ms, _)) = self.flapping() {
                    self.schedule(self.now_us + on_ms * 1_000, Ev::PartitionOff);
                }
            }
            Ev::PartitionOff => {
                self.end_partition();
                if let Some((_, off_ms)) = self.flapping() {
                    if self.faults_on {
                        self.schedule(self.now_us + off_ms * 1_000, Ev::PartitionOn);
                    }
                }
            }
            Ev::Crash => self.crash(),
            Ev::Restart { node } => self.restart(node),
            Ev::Roam => {
                if let Some(sub) = self.subscribers.first() {
                    let from = sub.node;
                    self.reconnect(0, from);
                }
                let interval = self.spec.plan.roam_interval_ms.max(1) * 1_000;
                if self.now_us + interval < self.safety_end_us {
                    self.schedule(self.now_us + interval, Ev::Roam);
                }
            }
            Ev::Heal => self.heal(),
            Ev::Probe => self.probe(),
            Ev::End => {}
            Ev::ForceRollovers => self.force_rollovers(),
        }
    }

    fn flapping(&self) -> Option<(u64, u64)> {
        self.spec
            .plan
            .faults
            .partition
            .as_ref()
            .and_then(|p| p.flapping)
    }

    fn end_partition(&mut self) {
        if self.partition_active {
            self.partition_active = false;
            if let Some(span) = self.out.partitions.last_mut() {
                span.end_us = self.now_us;
            }
        }
    }

    fn local_ms(&self, node: usize) -> u64 {
        let ms = (CLOCK_BASE_MS + self.now_us / 1_000) as i64 + self.slots[node].skew_ms;
        ms.max(0) as u64
    }

    /// Drains what a node produced after an input: invariants first (the queues are still
    /// full), then frames, then events; then re-arms its timer.
    fn after_call(&mut self, i: usize) {
        let Some(node) = self.slots[i].node.as_mut() else {
            return;
        };
        if let Err(broken) = invariants::check(node) {
            let id = node.id().to_owned();
            self.fail(format!("invariant broken on {id}: {broken}"));
            return;
        }
        let mut transmits = Vec::new();
        while let Some(t) = node.poll_transmit() {
            transmits.push(t);
        }
        let mut events = Vec::new();
        while let Some(e) = node.poll_event() {
            events.push(e);
        }
        let proposed = node.stats().rollovers_proposed;
        let crash = self.proposer_crash_due(i, proposed);
        if crash.is_some_and(|c| c.drop_frames) {
            // It crashed before its broadcast left: the frames never reach anyone.
            self.out.dropped_down += transmits.len() as u64;
            transmits.clear();
        }
        for t in transmits {
            self.send(i, t.to, t.bytes);
        }
        let mut status: Vec<(StatusEvent, Cursor)> = Vec::new();
        for event in events {
            match event {
                Event::Status { event, cursor } => status.push((event, cursor)),
                Event::FrameRejected { from, reason } => {
                    // Only honest nodes exist here, so a rejected frame is a bug.
                    let id = self.members[i].id.clone();
                    self.fail(format!("{id} rejected a frame from {from}: {reason}"));
                    return;
                }
                Event::PeerDown { peer } => self.note_peer_down(i, &peer),
                // Liveness and contact events carry nothing the checkers use.
                _ => {}
            }
        }
        self.check_subscribers(i, status);
        match crash {
            Some(c) => {
                let epochs = &mut self.out.epochs;
                epochs.proposer_crashes += 1;
                epochs.proposer_crashes_empty_disk += u64::from(c.empty_disk);
                self.crash_node(i, c.empty_disk, c.down_ms);
            }
            None => self.rearm(i),
        }
    }

    /// Whether node `i`, which has now proposed `proposed` rollovers, crashes right after a
    /// new one (the plan's proposer crash), and how. Every other proposer crash loses the
    /// disk; at most `down_max` nodes are down at once.
    fn proposer_crash_due(&mut self, i: usize, proposed: u64) -> Option<PlannedCrash> {
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
    fn retire(&mut self, node: &Node) {
        let stats = node.stats();
        let epochs = &mut self.out.epochs;
        epochs.proposed += stats.rollovers_proposed;
        epochs.adopted += stats.rollovers;
        epochs.carried += node
            .replica()
            .docs()
            .map(|d| d.epoch_stats().carried)
            .sum::<u64>();
    }

    /// At several moments two or three live nodes in different regions propose a rollover
    /// of one service at the same instant. A moment is skipped while the live nodes do not
    /// all hold the service in one lineage: a contest must be decided before the next one,
    /// or two lineages could both advance past a contested epoch (the crdt's documented
    /// limit, which the gossip proposer rule prevents for its own proposals).
    fn force_rollovers(&mut self) {
        let Some(forced) = self.spec.plan.epochs.forced.clone() else {
            return;
        };
        let interval_us = forced.interval_ms.max(1) * 1_000;
        if self.now_us + interval_us < self.safety_end_us {
            self.schedule(self.now_us + interval_us, Ev::ForceRollovers);
        }
        if !self.faults_on {
            return;
        }
        let services = match self.spec.plan.workload {
            Workload::Flips { services, .. } => services.clamp(1, SERVICES.len()),
            Workload::Broadcast { .. } => 1,
        };
        let Ok(service) = Name::parse("service", SERVICES[self.rng.random_range(0..services)])
        else {
            return;
        };
        let live = self.live_nodes();
        let lineages: BTreeSet<Lineage> = live
            .iter()
            .filter_map(|&i| self.slots[i].node.as_ref())
            .filter_map(|n| n.replica().doc(&service).map(|d| d.lineage()))
            .collect();
        if lineages.len() > 1 {
            self.out.epochs.forced_skipped += 1;
            return;
        }
        let (low, high) = forced.proposers;
        let count = self.rng.random_range(low.max(1)..=high.max(low).max(1));
        // Distinct regions first (in a seeded order), then any node left.
        let mut candidates = live.clone();
        let mut chosen: Vec<usize> = Vec::new();
        while chosen.len() < count && !candidates.is_empty() {
            let fresh: Vec<usize> = candidates
                .iter()
                .copied()
                .filter(|&c| {
                    !chosen
                        .iter()
                        .any(|&o| self.members[o].region == self.members[c].region)
                })
                .collect();
            let pool = if fresh.is_empty() {
                &candidates
            } else {
                &fresh
            };
            let pick = pool[self.rng.random_range(0..pool.len())];
            chosen.push(pick);
            candidates.retain(|&c| c != pick);
        }
        for &node in &chosen {
            let now_ms = self.local_ms(node);
            let Some(n) = self.slots[node].node.as_mut() else {
                continue;
            };
            match n.propose_rollover(now_ms, &service) {
                Ok(Some(_)) => self.out.epochs.forced += 1,
                Ok(None) => {}
                Err(e) => {
                    let id = self.members[node].id.clone();
                    self.fail(format!("{id}: a forced rollover of {service} failed: {e}"));
                    return;
                }
            }
        }
        // Only now do their frames leave: the proposals are concurrent.
        for node in chosen {
            self.after_call(node);
        }
    }

    fn rearm(&mut self, i: usize) {
        let slot = &self.slots[i];
        let Some(node) = slot.node.as_ref() else {
            return;
        };
        let next = node.poll_timeout();
        if next == slot.timer_local_ms {
            return;
        }
        self.slots[i].timer_local_ms = next;
        if let Some(local_ms) = next {
            let sim_ms = local_ms as i64 - CLOCK_BASE_MS as i64 - self.slots[i].skew_ms;
            let at_us = (sim_ms.max(0) as u64).saturating_mul(1_000);
            let incarnation = self.slots[i].incarnation;
            self.schedule(
                at_us,
                Ev::Timer {
                    node: i,
                    incarnation,
                    local_ms,
                },
            );
        }
    }

    fn send(&mut self, from: usize, to_id: String, bytes: Vec<u8>) {
        let Some(&to) = self.index.get(&to_id) else {
            self.fail(format!(
                "{} sent to unknown node {to_id}",
                self.members[from].id
            ));
            return;
        };
        let payload = match &self.last_payload {
            // A broadcast queues the same bytes for every peer: decode them once.
            Some(p) if p.bytes == bytes => Rc::clone(p),
            _ => match self.decode_payload(bytes) {
                Ok(p) => {
                    let p = Rc::new(p);
                    self.last_payload = Some(Rc::clone(&p));
                    p
                }
                Err(e) => {
                    self.fail(format!(
                        "{} sent a frame that does not decode: {e}",
                        self.members[from].id
                    ));
                    return;
                }
            },
        };
        let len = payload.bytes.len() as u64;
        let sent = self.out.sent_by_kind.entry(payload.kind).or_default();
        sent.0 += 1;
        sent.1 += len;
        self.out.bytes_sent += len;
        if self.now_us < self.safety_end_us {
            self.out.bytes_sent_safety += len;
        }
        for &w in &payload.writes {
            self.out.writes[w].copies += 1;
        }
        self.trace.write(&(from as u32).to_le_bytes());
        self.trace.write(&(to as u32).to_le_bytes());
        self.trace.write(&len.to_le_bytes());
        if self.faults_on && self.partition_active && self.blocked(from, to) {
            self.out.dropped_partition += 1;
            return;
        }
        let faults = &self.spec.plan.faults;
        if self.faults_on && faults.loss > 0.0 && self.rng.random_bool(faults.loss) {
            self.out.dropped_loss += 1;
            return;
        }
        let copies =
            if self.faults_on && faults.duplicate > 0.0 && self.rng.random_bool(faults.duplicate) {
                self.out.duplicated += 1;
                2
            } else {
                1
            };
        for _ in 0..copies {
            let delay = self.delay_us(from, to);
            let incarnation = self.slots[to].incarnation;
            self.schedule(
                self.now_us + delay,
                Ev::Deliver {
                    from,
                    to,
                    incarnation,
                    payload: Rc::clone(&payload),
                },
            );
        }
    }

    fn decode_payload(&mut self, bytes: Vec<u8>) -> Result<Payload, String> {
        // Only change frames need a full decode (for their hashes). The envelope starts with
        // the version and the variant index, so the kind of a frame is learned from the first
        // full decode of each tag and reused; debug builds decode everything and compare.
        let tag = bytes.get(..2).map(|b| (b[0], b[1]));
        let learned = tag.and_then(|t| self.kind_by_tag.get(&t).copied());
        if let Some(kind) = learned.filter(|k| !CHANGES_KINDS.contains(k)) {
            if cfg!(debug_assertions) {
                let decoded = codec::decode(&bytes).map_err(|e| e.to_string())?;
                debug_assert_eq!(
                    decoded.kind(),
                    kind,
                    "frame kinds are not a function of the tag"
                );
            }
            return Ok(Payload {
                bytes,
                kind,
                writes: Vec::new(),
            });
        }
        let frame = codec::decode(&bytes).map_err(|e| e.to_string())?;
        let kind = frame.kind();
        if let Some(tag) = tag {
            self.kind_by_tag.insert(tag, kind);
        }
        let mut writes = Vec::new();
        if let Some((_, changes)) = frame.changes() {
            for change in changes {
                let change = automerge::Change::try_from(change.as_slice())
                    .map_err(|e| format!("change does not parse: {e}"))?;
                if let Some(&w) = self.write_by_hash.get(&change.hash()) {
                    writes.push(w);
                }
            }
        }
        Ok(Payload {
            bytes,
            kind,
            writes,
        })
    }

    fn blocked(&self, from: usize, to: usize) -> bool {
        let symmetric = self
            .spec
            .plan
            .faults
            .partition
            .as_ref()
            .is_none_or(|p| p.symmetric);
        self.cut[from] != self.cut[to] && (symmetric || self.cut[from])
    }

    fn delay_us(&mut self, from: usize, to: usize) -> u64 {
        let (a, b) = (self.members[from].region, self.members[to].region);
        let base_us = self.latency.one_way_ms(a, b) * 1_000.0;
        let jitter = self.rng.random_range(0.0..=JITTER_FRACTION) * base_us;
        let mut delay = (base_us + jitter) as u64 + self.rng.random_range(0..=JITTER_US);
        if self.faults_on {
            let faults = &self.spec.plan.faults;
            if faults.reorder_ms > 0 {
                delay += self.rng.random_range(0..=faults.reorder_ms * 1_000);
            }
            if faults.spike_probability > 0.0 && self.rng.random_bool(faults.spike_probability) {
                let (low, high) = faults.spike_ms;
                delay += self.rng.random_range(low..=high.max(low)) * 1_000;
            }
        }
        delay.max(1)
    }

    fn deliver(&mut self, from: usize, to: usize, incarnation: u32, payload: &Payload) {
        if self.slots[to].incarnation != incarnation || self.slots[to].node.is_none() {
            self.out.dropped_down += 1;
            return;
        }
        let now_ms = self.local_ms(to);
        let from_id = self.members[from].id.clone();
        if let Some(node) = self.slots[to].node.as_mut() {
            node.handle_frame(now_ms, &from_id, &payload.bytes);
        }
        for &w in &payload.writes {
            self.note_delivery(w, to);
        }
        self.after_call(to);
    }

    fn note_delivery(&mut self, w: usize, to: usize) {
        let record = &self.out.writes[w];
        if record.delivered_us[to].is_some() {
            return;
        }
        if self.holds(to, w) {
            let delay = self.now_us - record.at_us;
            self.out.writes[w].delivered_us[to] = Some(delay);
        }
    }

    fn holds(&self, node: usize, w: usize) -> bool {
        let record = &self.out.writes[w];
        self.slots[node]
            .node
            .as_ref()
            .and_then(|n| n.replica().doc(&record.service))
            // A change that just arrived is usually a head, which is much cheaper to ask; after
            // a rollover the write is covered by a base or carried under another hash.
            .is_some_and(|d| {
                d.heads().contains(&record.hash)
                    || d.has_all(&[record.hash])
                    || d.holds_write(&record.id)
            })
    }

    fn live_nodes(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].node.is_some())
            .collect()
    }

    fn workload_tick(&mut self) {
        if self.now_us >= self.safety_end_us {
            return;
        }
        let Workload::Flips {
            interval_ms,
            services,
            components,
            burst_probability,
            burst_size,
            heartbeat_probability,
        } = self.spec.plan.workload
        else {
            return;
        };
        let count = if burst_probability > 0.0 && self.rng.random_bool(burst_probability) {
            burst_size.max(1)
        } else {
            1
        };
        for _ in 0..count {
            let live = self.live_nodes();
            if live.is_empty() {
                break;
            }
            let share = self.spec.plan.epochs.cut_write_share;
            let cut_live: Vec<usize> = if self.partition_active && share > 0.0 {
                live.iter().copied().filter(|&i| self.cut[i]).collect()
            } else {
                Vec::new()
            };
            let pool = if !cut_live.is_empty() && self.rng.random_bool(share.clamp(0.0, 1.0)) {
                &cut_live
            } else {
                &live
            };
            let node = pool[self.rng.random_range(0..pool.len())];
            let service = self.rng.random_range(0..services.clamp(1, SERVICES.len()));
            let component = self
                .rng
                .random_range(0..components.clamp(1, COMPONENTS.len()));
            let repeat = self.slots[node]
                .last_written
                .get(&(service, component))
                .cloned()
                .filter(|_| self.rng.random_bool(heartbeat_probability.clamp(0.0, 1.0)));
            let (state, message) = repeat.unwrap_or_else(|| {
                let state = State::ALL[self.rng.random_range(0..State::ALL.len())];
                (state, self.next_message())
            });
            self.write(node, service, component, state, message);
        }
        let interval_us = interval_ms.max(1) * 1_000;
        let next = self
            .rng
            .random_range(interval_us / 2..=interval_us + interval_us / 2);
        self.schedule(self.now_us + next.max(1), Ev::Write);
    }

    /// A message unique to each new value: two writes in one millisecond with the same state
    /// must still differ, or a coalesced event could not be told from a duplicate.
    fn next_message(&mut self) -> String {
        self.messages_written += 1;
        format!("write {}", self.messages_written)
    }

    fn write(
        &mut self,
        node: usize,
        service: usize,
        component: usize,
        state: State,
        message: String,
    ) {
        let now_ms = self.local_ms(node);
        let member = &self.members[node];
        let region = &self.spec.topology.regions[member.region].name;
        let observation = Observation {
            state,
            message: message.clone(),
            reporter: member.id.clone(),
            observed_at_ms: now_ms,
            ttl_ms: OBSERVATION_TTL_MS,
        };
        let write = match StatusWrite::parse(
            SERVICES[service],
            COMPONENTS[component],
            region,
            observation,
        ) {
            Ok(w) => w,
            Err(e) => {
                self.fail(format!("the workload made an invalid write: {e}"));
                return;
            }
        };
        let Some(n) = self.slots[node].node.as_mut() else {
            return;
        };
        match n.local_write(now_ms, &write) {
            Ok(true) => {
                let heads = n
                    .replica()
                    .doc(&write.service)
                    .map(|d| d.heads())
                    .unwrap_or_default();
                // A local change depends on every head, so it is the only head now.
                let [hash] = heads.as_slice() else {
                    let id = n.id().to_owned();
                    self.fail(format!("{id}: after a local write the heads are {heads:?}"));
                    return;
                };
                let Some(write_id) = n
                    .replica()
                    .doc(&write.service)
                    .and_then(|d| d.write_of(hash))
                else {
                    let id = n.id().to_owned();
                    self.fail(format!("{id}: a local write {hash} has no write identity"));
                    return;
                };
                if self.partition_active && self.cut[node] {
                    self.out.epochs.cut_writes += 1;
                }
                if self.out.writes.len() < WRITES_TRACKED_MAX {
                    let mut delivered_us = vec![None; self.slots.len()];
                    delivered_us[node] = Some(0);
                    self.write_by_hash.insert(*hash, self.out.writes.len());
                    self.out.writes.push(WriteRecord {
                        node,
                        service: write.service.clone(),
                        hash: *hash,
                        id: write_id,
                        at_us: self.now_us,
                        delivered_us,
                        copies: 0,
                        lost_with_disk: false,
                        under_faults: self.faulty && self.faults_on,
                    });
                }
                self.slots[node]
                    .last_written
                    .insert((service, component), (state, message));
            }
            Ok(false) => self.out.heartbeats += 1,
            Err(e) => {
                let id = self.members[node].id.clone();
                self.fail(format!("{id} refused a valid write: {e}"));
                return;
            }
        }
        self.after_call(node);
    }

    fn crash(&mut self) {
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
    fn crash_node(&mut self, node: usize, empty_disk: bool, down_ms: u64) {
        self.slots[node].down_since = Some((self.now_us, self.out.crashes.len()));
        self.out.crashes.push((self.now_us, node, empty_disk));
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
        self.slots[node].incarnation += 1;
        self.slots[node].timer_local_ms = None;
        self.schedule(self.now_us + down_ms * 1_000, Ev::Restart { node });
        for s in 0..self.subscribers.len() {
            if self.subscribers[s].node == node {
                self.reconnect(s, node);
            }
        }
    }

    fn held_elsewhere(&self, w: usize, except: usize) -> bool {
        (0..self.slots.len()).filter(|&i| i != except).any(|i| {
            self.holds(i, w)
                || (self.slots[i].node.is_none()
                    && self.slots[i].disk.is_some()
                    && self.slots[i].disk_writes.contains(&w))
        })
    }

    fn restart(&mut self, node: usize) {
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
                            self.fail(format!("{id}: saved document {service} does not load: {e}"));
                            return;
                        }
                    };
                    if let Some(prev) = prev {
                        if let Err(e) = doc.attach_prev(&prev) {
                            self.fail(format!(
                                "{id}: the saved previous epoch of {service} does not load: {e}"
                            ));
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
            node_config(&self.spec.plan),
            self.peers.clone(),
            replica,
            node_seed(self.spec.seed, node, incarnation),
        ));
        self.after_call(node);
    }

    fn heal(&mut self) {
        self.out.epochs.gap_at_heal = self.epoch_gap();
        self.faults_on = false;
        self.end_partition();
        for node in 0..self.slots.len() {
            self.restart(node);
        }
        self.out.heal_us = self.now_us;
        self.schedule(self.now_us + PROBE_INTERVAL_US, Ev::Probe);
    }

    fn probe(&mut self) {
        if self.out.heads_converged_us.is_none() && self.heads_converged() {
            self.out.heads_converged_us = Some(self.now_us - self.out.heal_us);
        }
        if self.converged() {
            self.out.converged_us = Some(self.now_us - self.out.heal_us);
            let sent = self.out.bytes_sent;
            self.idle_start = Some((self.now_us, sent));
            self.schedule(self.now_us + self.spec.plan.idle_ms * 1_000, Ev::End);
            return;
        }
        if self.now_us - self.out.heal_us > self.spec.plan.liveness_bound_ms * 1_000 {
            let behind = self.divergent_nodes();
            self.fail(format!(
                "no convergence within {} ms of the heal; nodes that differ from {}: {}",
                self.spec.plan.liveness_bound_ms,
                self.members[0].id,
                behind.join(", ")
            ));
            return;
        }
        self.schedule(self.now_us + PROBE_INTERVAL_US, Ev::Probe);
    }

    /// How many epochs the nodes outside the partition's cut-off side are ahead of those on
    /// it (running nodes only), the most over services; 0 without a partition on.
    fn epoch_gap(&self) -> u32 {
        if !self.partition_active {
            return 0;
        }
        let mut rest: BTreeMap<Name, u32> = BTreeMap::new();
        let mut cut: BTreeMap<Name, u32> = BTreeMap::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(node) = &slot.node else { continue };
            let side = if self.cut[i] { &mut cut } else { &mut rest };
            for doc in node.replica().docs() {
                let epoch = side.entry(doc.service().clone()).or_default();
                *epoch = (*epoch).max(doc.epoch());
            }
        }
        rest.iter()
            .map(|(service, e)| e.saturating_sub(cut.get(service).copied().unwrap_or(0)))
            .max()
            .unwrap_or(0)
    }

    /// Failure detection: the first time each observer declares a crashed node down counts
    /// as a detection; declaring a running node down counts as a false suspicion.
    fn note_peer_down(&mut self, observer: usize, peer: &str) {
        let Some(&down) = self.index.get(peer) else {
            return;
        };
        match self.slots[down].down_since {
            Some((since_us, crash)) => {
                if self.detected.insert((crash, observer)) {
                    self.out.detection_us.push(self.now_us - since_us);
                }
            }
            None => self.out.false_downs += 1,
        }
    }

    fn heads_converged(&self) -> bool {
        let Some(first) = self.slots[0].node.as_ref() else {
            return false;
        };
        let cursor = cursor_of(first.replica());
        self.slots.iter().skip(1).all(|slot| {
            slot.node
                .as_ref()
                .is_some_and(|n| cursor_of(n.replica()) == cursor)
        })
    }

    /// Equal heads and equal liveness everywhere: the views are equal at equal time.
    fn converged(&self) -> bool {
        let Some(first) = self.slots[0].node.as_ref() else {
            return false;
        };
        let cursor = cursor_of(first.replica());
        let liveness = first.replica().liveness();
        self.slots.iter().skip(1).all(|slot| {
            slot.node.as_ref().is_some_and(|n| {
                cursor_of(n.replica()) == cursor && n.replica().liveness() == liveness
            })
        })
    }

    /// Nodes whose heads or liveness differ from the first node's (at most ten named).
    fn divergent_nodes(&self) -> Vec<String> {
        let Some(first) = self.slots[0].node.as_ref() else {
            return vec![self.members[0].id.clone()];
        };
        let cursor = cursor_of(first.replica());
        let liveness = first.replica().liveness().digest();
        let mut differ = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let same = slot.node.as_ref().is_some_and(|n| {
                n.replica().liveness().digest() == liveness && cursor_of(n.replica()) == cursor
            });
            if !same {
                differ.push(self.members[i].id.clone());
                if differ.len() >= 10 {
                    break;
                }
            }
        }
        differ
    }

    fn finish(&mut self) {
        self.out.end_us = self.now_us;
        if let Some((start_us, sent_before)) = self.idle_start {
            let sent = self.out.bytes_sent;
            self.out.idle_bytes = sent - sent_before;
            self.out.idle_us = self.now_us - start_us;
        }
        if !self.converged() {
            // A frame delayed past the heal (a delay spike) can still move one node forward,
            // e.g. a liveness entry whose origin restarted without it. That is not a failure
            // while the mesh converges again within the liveness bound.
            self.out.end_us = 0;
            self.out.reconvergences += 1;
            self.idle_start = None;
            self.schedule(self.now_us + PROBE_INTERVAL_US, Ev::Probe);
            return;
        }
        // Equal views at equal time: the same JSON on every node.
        let now_ms = CLOCK_BASE_MS + self.now_us / 1_000;
        let mut first_view: Option<String> = None;
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(node) = &slot.node else {
                continue;
            };
            let view = match serde_json::to_string(&node.replica().view(now_ms, None)) {
                Ok(v) => v,
                Err(e) => {
                    self.fail(format!("view does not serialize: {e}"));
                    return;
                }
            };
            match &first_view {
                None => first_view = Some(view),
                Some(first) if *first != view => {
                    let id = self.members[i].id.clone();
                    self.fail(format!(
                        "{id} shows another view than {} at the same time",
                        self.members[0].id
                    ));
                    return;
                }
                Some(_) => {}
            }
        }
        // Every acknowledged write that did not go down with every disk that held it.
        for w in 0..self.out.writes.len() {
            if self.out.writes[w].lost_with_disk {
                continue;
            }
            // Equal cursors were checked above: equal heads mean equal histories, so the
            // first node stands for all.
            if !self.holds(0, w) {
                let record = &self.out.writes[w];
                self.fail(format!(
                    "acknowledged write #{w} by {} at {} ms is missing everywhere",
                    self.members[record.node].id,
                    record.at_us / 1_000,
                ));
                return;
            }
        }
        for s in 0..self.subscribers.len() {
            let node = self.subscribers[s].node;
            self.check_subscriber_state(s, node, "at the end");
        }
    }

    /// Feeds a node's status events to its subscribers and checks each stream: no duplicate,
    /// no gap (the subscriber's cells equal the node's after the batch), never backwards
    /// (the new cursor covers the old).
    fn check_subscribers(&mut self, node: usize, events: Vec<(StatusEvent, Cursor)>) {
        for s in 0..self.subscribers.len() {
            if self.subscribers[s].node != node || self.out.failure.is_some() {
                continue;
            }
            let Some(n) = self.slots[node].node.as_ref() else {
                continue;
            };
            let node_cursor = cursor_of(n.replica());
            if events.is_empty() && node_cursor == self.subscribers[s].cursor {
                continue;
            }
            for (event, _) in &events {
                if let Err(e) = self.feed(s, node, event) {
                    self.fail(format!("subscriber {s} on {}: {e}", self.members[node].id));
                    return;
                }
                self.out.subscriber_events += 1;
            }
            let new_cursor = events
                .last()
                .map(|(_, c)| normalized(c))
                .unwrap_or(node_cursor.clone());
            if new_cursor != node_cursor {
                // One call may change heads after its last event without changing a value
                // (a second document rolling over in the same tick): resuming from the last
                // event's cursor must then miss nothing.
                let missed = self.slots[node]
                    .node
                    .as_ref()
                    .and_then(|n| n.replica().events_since(&new_cursor));
                if missed.as_ref().is_none_or(|m| !m.is_empty()) {
                    let differ: Vec<String> = node_cursor
                        .iter()
                        .filter(|(service, heads)| new_cursor.heads_of(service) != *heads)
                        .map(|(service, _)| service.to_string())
                        .collect();
                    self.fail(format!(
                        "subscriber {s} on {}: the last event's cursor is not the node's cursor (services {}), and resuming from it would give {}",
                        self.members[node].id,
                        differ.join(", "),
                        missed.map_or("a snapshot".to_owned(), |m| format!("{} events", m.len()))
                    ));
                    return;
                }
            }
            self.advance_cursor(s, node, node_cursor);
            self.check_subscriber_state(s, node, "after an event batch");
        }
    }

    /// Applies one event to a subscriber. An event that repeats the cell's value is a
    /// duplicate, unless the node's cell has other losing concurrent values than at the last
    /// check: then it re-announces the winner, which is news (the conflict changed), not a
    /// repeat.
    fn feed(&mut self, s: usize, node: usize, event: &StatusEvent) -> Result<(), String> {
        let Err(duplicate) = apply_event(&mut self.subscribers[s].cells, event) else {
            return Ok(());
        };
        let key = (
            event.service.clone(),
            event.component.clone(),
            event.region.clone(),
        );
        let now = self.slots[node]
            .node
            .as_ref()
            .and_then(|n| n.replica().doc(&key.0).map(|d| d.cells()))
            .and_then(|cells| {
                cells
                    .get(&(key.1.clone(), key.2.clone()))
                    .map(|c| c.conflicts.clone())
            })
            .unwrap_or_default();
        let before = self.subscribers[s]
            .conflicts
            .get(&key)
            .cloned()
            .unwrap_or_default();
        if now == before {
            return Err(duplicate);
        }
        self.out.conflict_reannouncements += 1;
        self.subscribers[s].conflicts.insert(key, now);
        Ok(())
    }

    fn advance_cursor(&mut self, s: usize, node: usize, new_cursor: Cursor) {
        let Some(n) = self.slots[node].node.as_ref() else {
            return;
        };
        let sub = &self.subscribers[s];
        if let Err(e) = covers(n.replica(), &sub.cursor, &sub.lineages, &new_cursor) {
            self.fail(format!(
                "subscriber {s} on {} went backwards: {e}",
                self.members[node].id
            ));
            return;
        }
        let lineages = lineages_of(n.replica());
        let sub = &mut self.subscribers[s];
        sub.cursor = new_cursor;
        sub.lineages = lineages;
    }

    fn check_subscriber_state(&mut self, s: usize, node: usize, when: &str) {
        let Some(n) = self.slots[node].node.as_ref() else {
            return;
        };
        let (truth, conflict_counts) = node_cells(n.replica());
        self.subscribers[s].conflicts = conflict_counts;
        // A concurrent write that loses to the current value changes no winner, so no event
        // says the cell is now in conflict (a known gap of the crdt's events). Count it and
        // adopt the flag, so the value checks below stay strict.
        for (key, value) in &truth {
            if let Some(held) = self.subscribers[s].cells.get_mut(key) {
                if held.1 != value.1
                    && (&held.0, &held.2, &held.3) == (&value.0, &value.2, &value.3)
                {
                    held.1 = value.1;
                    self.out.conflict_flags_missed += 1;
                }
            }
        }
        let sub = &self.subscribers[s];
        if sub.cells != truth {
            let missing = truth
                .iter()
                .find(|(k, v)| sub.cells.get(*k) != Some(*v))
                .map(|(k, v)| {
                    format!(
                        "{}/{}/{}: node {} but subscriber {}",
                        k.0,
                        k.1,
                        k.2,
                        describe(Some(v)),
                        describe(sub.cells.get(k))
                    )
                })
                .or_else(|| {
                    sub.cells
                        .keys()
                        .find(|k| !truth.contains_key(*k))
                        .map(|k| format!("{}/{}/{} (extra)", k.0, k.1, k.2))
                })
                .unwrap_or_default();
            self.fail(format!(
                "subscriber {s} on {} has a gap {when}: cell {missing} differs from the node",
                self.members[node].id
            ));
        }
    }

    /// The subscriber reconnects with its cursor (through its text form, as `Last-Event-ID`)
    /// to another live node; after a few nodes that cannot tell, it accepts a snapshot.
    fn reconnect(&mut self, s: usize, from: usize) {
        let live: Vec<usize> = self
            .live_nodes()
            .into_iter()
            .filter(|&i| i != from)
            .collect();
        if live.is_empty() {
            return;
        }
        self.out.reconnects += 1;
        let text = self.subscribers[s].cursor.encode();
        let cursor = match Cursor::decode(&text) {
            Ok(c) => c,
            Err(e) => {
                self.fail(format!("subscriber {s}: its cursor does not decode: {e}"));
                return;
            }
        };
        if cursor != self.subscribers[s].cursor {
            self.fail(format!("subscriber {s}: its cursor does not round-trip"));
            return;
        }
        for _ in 0..RECONNECT_ATTEMPTS {
            let target = live[self.rng.random_range(0..live.len())];
            let Some(n) = self.slots[target].node.as_ref() else {
                continue;
            };
            let Some(events) = n.replica().events_since(&cursor) else {
                continue;
            };
            let target_cursor = cursor_of(n.replica());
            self.subscribers[s].node = target;
            for event in &events {
                if let Err(e) = self.feed(s, target, event) {
                    self.fail(format!(
                        "subscriber {s} resuming on {}: {e}",
                        self.members[target].id
                    ));
                    return;
                }
                self.out.subscriber_events += 1;
            }
            self.advance_cursor(s, target, target_cursor);
            self.check_subscriber_state(s, target, "after resuming with its cursor");
            return;
        }
        // Nobody could tell: a fresh snapshot, as the SSE contract allows.
        let target = live[self.rng.random_range(0..live.len())];
        if let Some(n) = self.slots[target].node.as_ref() {
            self.out.snapshots += 1;
            let sub = &mut self.subscribers[s];
            sub.node = target;
            (sub.cells, sub.conflicts) = node_cells(n.replica());
            sub.cursor = cursor_of(n.replica());
            sub.lineages = lineages_of(n.replica());
        }
    }

    fn fail(&mut self, reason: String) {
        if self.out.failure.is_none() {
            self.out.failure = Some(format!("at {} ms: {reason}", self.now_us / 1_000));
        }
    }
}

/// Picks the cut-off side of the plan's partition from the RNG.
fn choose_cut(spec: &Spec, members: &[Member], rng: &mut ChaCha8Rng) -> (Vec<bool>, Vec<usize>) {
    let n = members.len();
    let regions = &spec.topology.regions;
    let Some(plan) = &spec.plan.faults.partition else {
        return (vec![false; n], Vec::new());
    };
    let populated: Vec<usize> = (0..regions.len())
        .filter(|r| members.iter().any(|m| m.region == *r))
        .collect();
    let region_cut = |rng: &mut ChaCha8Rng| {
        let region = populated[rng.random_range(0..populated.len())];
        members
            .iter()
            .map(|m| m.region == region)
            .collect::<Vec<bool>>()
    };
    let mut cut = match plan.mode {
        PartitionMode::Region => region_cut(rng),
        PartitionMode::Continent => {
            let americas = rng.random_bool(0.5);
            let side: Vec<bool> = members
                .iter()
                .map(|m| {
                    let lon = regions[m.region].lon;
                    if americas {
                        lon < -30.0
                    } else {
                        lon > 60.0
                    }
                })
                .collect();
            if side.iter().all(|&c| c) || side.iter().all(|&c| !c) {
                region_cut(rng)
            } else {
                side
            }
        }
        PartitionMode::IsolateNode => {
            let node = rng.random_range(0..n);
            (0..n).map(|i| i == node).collect()
        }
        PartitionMode::RandomHalves => (0..n).map(|_| rng.random_bool(0.5)).collect(),
    };
    // A partition needs two sides; with one node or an unlucky coin, cut node 0 off.
    if n > 1 && (cut.iter().all(|&c| c) || cut.iter().all(|&c| !c)) {
        cut = (0..n).map(|i| i == 0).collect();
    }
    let cut_regions: BTreeSet<usize> = members
        .iter()
        .zip(&cut)
        .filter(|(_, &c)| c)
        .map(|(m, _)| m.region)
        .collect();
    (cut, cut_regions.into_iter().collect())
}

/// A fresh actor id per node and incarnation, never reused: the index and incarnation are in
/// the bytes, the rest comes from the seed.
fn actor_id(seed: u64, node: usize, incarnation: u32) -> ActorId {
    let mut bytes = Vec::with_capacity(16);
    bytes.extend_from_slice(&(node as u32).to_be_bytes());
    bytes.extend_from_slice(&incarnation.to_be_bytes());
    bytes.extend_from_slice(&node_seed(seed, node, incarnation).to_be_bytes());
    ActorId::from(bytes)
}

/// The protocol settings of every node: the WAN defaults with the plan's rollover triggers.
fn node_config(plan: &Plan) -> Config {
    Config {
        epoch: plan.epochs.config.clone(),
        ..Config::wan()
    }
}

/// The gossip RNG seed of a node incarnation, derived from the run's seed.
fn node_seed(seed: u64, node: usize, incarnation: u32) -> u64 {
    let mut hash = Fnv64::new();
    hash.write(&seed.to_le_bytes());
    hash.write(&(node as u64).to_le_bytes());
    hash.write(&incarnation.to_le_bytes());
    hash.finish()
}

fn apply_event(
    cells: &mut BTreeMap<CellKey, CellState>,
    event: &StatusEvent,
) -> Result<(), String> {
    let key = (
        event.service.clone(),
        event.component.clone(),
        event.region.clone(),
    );
    let value = event.observation.clone().map(|o| {
        (
            o,
            event.conflict,
            event.origin_node.clone(),
            event.changed_at_ms,
        )
    });
    if cells.get(&key) == value.as_ref() {
        return Err(format!(
            "duplicate event for {}/{}/{}: {}",
            key.0,
            key.1,
            key.2,
            describe(value.as_ref())
        ));
    }
    match value {
        Some(v) => {
            cells.insert(key, v);
        }
        None => {
            cells.remove(&key);
        }
    }
    Ok(())
}

fn describe(cell: Option<&CellState>) -> String {
    match cell {
        None => "nothing".to_owned(),
        Some((observation, conflict, origin, changed_at_ms)) => format!(
            "{} by {} at {} (origin {}, changed at {}{})",
            observation.state,
            observation.reporter,
            observation.observed_at_ms,
            origin.as_deref().unwrap_or("?"),
            changed_at_ms.map_or("?".to_owned(), |t| t.to_string()),
            if *conflict { ", conflict" } else { "" }
        ),
    }
}

type CellConflicts = BTreeMap<CellKey, Vec<Observation>>;

/// A replica's cursor without services whose heads are empty (a document created by a batch
/// whose dependencies are still missing): the text form drops them, and they mean the same
/// as an absent service.
fn cursor_of(replica: &Replica) -> Cursor {
    normalized(&replica.cursor())
}

fn normalized(cursor: &Cursor) -> Cursor {
    Cursor::new(
        cursor
            .iter()
            .filter(|(_, heads)| !heads.is_empty())
            .map(|(service, heads)| (service.clone(), heads.to_vec()))
            .collect(),
    )
}

/// Every cell of a replica as a subscriber should hold it, and the losing values of each.
fn node_cells(replica: &Replica) -> (BTreeMap<CellKey, CellState>, CellConflicts) {
    let mut cells = BTreeMap::new();
    let mut conflict_counts = BTreeMap::new();
    for doc in replica.docs() {
        for ((component, region), read) in doc.cells() {
            let CellRead {
                value,
                conflicts,
                origin_node,
                changed_at_ms,
            } = read;
            let key = (doc.service().clone(), component, region);
            let conflicted = !conflicts.is_empty();
            conflict_counts.insert(key.clone(), conflicts);
            cells.insert(key, (value, conflicted, origin_node, changed_at_ms));
        }
    }
    (cells, conflict_counts)
}

/// The epoch lineage of every document of a replica.
fn lineages_of(replica: &Replica) -> BTreeMap<Name, Lineage> {
    replica
        .docs()
        .map(|d| (d.service().clone(), d.lineage()))
        .collect()
}

/// True when `new` names every change `old` names, or a descendant of it: everything `new`
/// lacks, `old` lacked too. Judged on `replica`, which must hold both, and whose heads `new`
/// names. `old_lineages` are the epoch lineages the old cursor was taken in: when a service's
/// document has moved to a later epoch since (or adopted the winning base of the same one),
/// the old heads are of an older epoch and cannot be compared change by change; then the
/// new cursor covers the old when every write of the previous epoch (which holds the old
/// heads, when the node kept it) is still held.
fn covers(
    replica: &Replica,
    old: &Cursor,
    old_lineages: &BTreeMap<Name, Lineage>,
    new: &Cursor,
) -> Result<(), String> {
    for (service, old_heads) in old.iter() {
        let doc = replica
            .doc(service)
            .ok_or_else(|| format!("the node does not hold service {service}"))?;
        let new_heads = new.heads_of(service);
        if !doc.has_all(new_heads) {
            return Err(format!("the node lacks the new heads of {service}"));
        }
        let lineage = doc.lineage();
        if let Some(old_lineage) = old_lineages.get(service).filter(|l| **l != lineage) {
            if lineage.epoch < old_lineage.epoch {
                return Err(format!(
                    "the new cursor of {service} is of epoch {}, the old one of epoch {}",
                    lineage.epoch, old_lineage.epoch
                ));
            }
            if doc.prev_has_all(old_heads) {
                let lost = doc.prev_writes().into_iter().find_map(|c| {
                    ActorKind::parse(c.actor_id())
                        .and_then(|k| k.write_id(c.seq()))
                        .filter(|w| !doc.holds_write(w))
                });
                if let Some(write) = lost {
                    return Err(format!(
                        "the new cursor of {service} (epoch {}) lost write #{} of a writer of the previous epoch",
                        lineage.epoch, write.n
                    ));
                }
            }
            continue;
        }
        if !doc.has_all(old_heads) {
            return Err(format!("the node lacks the old heads of {service}"));
        }
        let lacked_before: BTreeSet<Vec<u8>> = doc.changes_since(old_heads).into_iter().collect();
        if doc
            .changes_since(new_heads)
            .iter()
            .any(|c| !lacked_before.contains(c))
        {
            return Err(format!("the new cursor of {service} lost changes"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(component: &str, state: State, at_ms: u64) -> StatusWrite {
        StatusWrite::parse(
            "api",
            component,
            "eu-west",
            Observation {
                state,
                message: String::new(),
                reporter: "probe".into(),
                observed_at_ms: at_ms,
                ttl_ms: OBSERVATION_TTL_MS,
            },
        )
        .expect("valid write")
    }

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

    #[test]
    fn an_event_that_repeats_the_cell_is_a_duplicate() {
        let mut replica = Replica::new("n1", actor_id(1, 0, 0));
        let outcome = replica
            .write_status(1_000, &write("db", State::MajorOutage, 1_000))
            .expect("write");
        let event = outcome.events.first().expect("an event").clone();
        let mut cells = BTreeMap::new();
        assert_eq!(apply_event(&mut cells, &event), Ok(()));
        let err = apply_event(&mut cells, &event).expect_err("duplicate");
        assert!(err.contains("api/db/eu-west"), "{err}");
        assert_eq!(cells, node_cells(&replica).0);
    }

    #[test]
    fn a_cursor_that_forgets_a_change_goes_backwards() {
        let mut replica = Replica::new("n1", actor_id(1, 0, 0));
        replica
            .write_status(1_000, &write("db", State::MajorOutage, 1_000))
            .expect("write");
        let old = replica.cursor();
        replica
            .write_status(2_000, &write("web", State::Operational, 2_000))
            .expect("write");
        let new = replica.cursor();
        let lineages = lineages_of(&replica);
        assert_eq!(covers(&replica, &old, &lineages, &new), Ok(()));
        assert_eq!(covers(&replica, &new, &lineages, &new), Ok(()));
        let err = covers(&replica, &new, &lineages, &old).expect_err("backwards");
        assert!(err.contains("lost changes"), "{err}");
    }
}
