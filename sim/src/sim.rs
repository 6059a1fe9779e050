//! The discrete-event simulator: real [`Node`]s on virtual time over a simulated network.
//! This module owns the [`Sim`] struct, its events and its run loop; the rooms beside it
//! own the rest (see the crate doc).
//!
//! # Flow of a run
//! 1. Every member of the topology gets a [`Node`] with a fresh `Replica`; all randomness
//!    (latency jitter, faults, workload, node seeds, actor ids) comes from one ChaCha RNG
//!    seeded with the run's seed.
//! 2. Safety phase: the workload writes, the faults of the [`Plan`] are on, and after every
//!    event the simulator runs `gossip::invariants::check` on the node it touched and the
//!    subscriber checks on its event stream.
//! 3. Heal: faults off, crashed nodes restart, writes stop. Liveness phase: every node must
//!    hold the same heads and liveness within `liveness_bound_ms`.
//! 4. After an idle window (which measures idle traffic), the final checks: equal cursors,
//!    equal views at equal time, every acknowledged write present everywhere.
//!
//! [`Plan`]: crate::scenario::Plan
//! [`Node`]: statusmesh_gossip::Node

use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use statusmesh_crdt::liveness::Fnv64;
use statusmesh_crdt::ChangeHash;
use statusmesh_gossip::topology::Member;
use statusmesh_gossip::Peer;

use crate::checker::Subscriber;
use crate::clock;
use crate::cluster::{first_node, Slot};
use crate::failure::{Failure, Moment, RunFailure};
use crate::network::{Network, Payload};
use crate::queue::Queue;
use crate::scenario::{Faults, Workload};

pub use crate::network::CHANGES_KINDS;
pub use crate::outcome::{
    CrashRecord, DriverFigures, EpochFigures, Outcome, PartitionSpan, Sent, Spec, WriteRecord,
};

/// How often the liveness phase checks for convergence, in microseconds.
const PROBE_INTERVAL_US: u64 = 10_000;
/// Most events one run may process; a run that needs more is reported as a failure rather
/// than left to spin.
const EVENTS_MAX: u64 = 100_000_000;
/// The scenario that runs the virtual webhook senders (`crate::senders`); no other
/// scenario schedules their events.
pub const WEBHOOKS_SCENARIO: &str = "webhooks";
/// How often a long run reports progress, in simulated seconds.
pub const PROGRESS_INTERVAL_S: u64 = 60;

/// What can happen at an instant of virtual time.
#[derive(Debug)]
pub(crate) enum Ev {
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
    /// A node's driver takes its inbox and pending writes to the core.
    Iteration {
        node: usize,
        incarnation: u32,
    },
    /// A subscriber told to wait asks the node's core again (`retry_at_ms` of its `Wait`).
    ResumeRetry {
        subscriber: usize,
        node: usize,
        incarnation: u32,
        retry_at_ms: u64,
    },
    /// The `webhooks` scenario writes its subscriptions.
    WebhookSetup,
    /// Every node's virtual webhook senders look at their assignments.
    WebhookTick,
    /// A virtual webhook delivery completes (its sender learns the receiver got it).
    WebhookDone {
        node: usize,
        incarnation: u32,
        pair: crate::senders::PairKey,
    },
}

impl Ev {
    /// The event's kind in the trace digest.
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
            Ev::Iteration { .. } => 13,
            Ev::ResumeRetry { .. } => 14,
            Ev::WebhookSetup => 15,
            Ev::WebhookTick => 16,
            Ev::WebhookDone { .. } => 17,
        }
    }
}

/// Where the idle window started: when, and the bytes sent until then.
#[derive(Debug, Clone, Copy)]
struct IdleStart {
    at_us: u64,
    bytes_sent: u64,
}

/// The simulator of one run.
#[derive(Debug)]
pub struct Sim {
    pub(crate) spec: Spec,
    pub(crate) members: Vec<Member>,
    pub(crate) rng: ChaCha8Rng,
    pub(crate) now_us: u64,
    queue: Queue<Ev>,
    pub(crate) slots: Vec<Slot>,
    pub(crate) index: HashMap<String, usize>,
    pub(crate) peers: Vec<Peer>,
    pub(crate) net: Network,
    /// False from the heal on.
    pub(crate) faults_on: bool,
    /// The plan has faults at all (writes under them are left out of latency figures).
    pub(crate) faulty: bool,
    pub(crate) safety_end_us: u64,
    /// Tracked writes per change (a group commit puts several writes in one change).
    pub(crate) write_by_hash: HashMap<ChangeHash, Vec<usize>>,
    pub(crate) subscribers: Vec<Subscriber>,
    /// (crash, observer) pairs already detected.
    pub(crate) detected: BTreeSet<(usize, usize)>,
    /// Values written so far, numbering each write's message.
    pub(crate) messages_written: u64,
    pub(crate) trace: Fnv64,
    pub(crate) out: Outcome,
    idle_start: Option<IdleStart>,
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
        let net = Network::new(&spec, &members, &mut rng);
        let shortest_ms = net.shortest_paths_ms();
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
        let mut slots = Vec::with_capacity(members.len());
        for i in 0..members.len() {
            let skew_ms = clock::draw_skew_ms(&mut rng, spec.plan.faults.clock_skew_ms);
            slots.push(Slot::new(first_node(&spec, &members, &peers, i), skew_ms));
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
            .map(|k| Subscriber::new(k * members.len() / spec.plan.subscribers.max(1)))
            .collect();
        let region_names = spec
            .topology
            .regions
            .iter()
            .map(|r| r.name.clone())
            .collect();
        let out = Outcome::new(members.clone(), region_names, shortest_ms, safety_end_us);
        let mut sim = Self {
            members,
            rng,
            now_us: 0,
            queue: Queue::new(),
            slots,
            index,
            peers,
            net,
            faults_on: true,
            faulty: spec.plan.faults != Faults::none(),
            safety_end_us,
            write_by_hash: HashMap::new(),
            subscribers,
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
        while let Some(scheduled) = self.queue.pop() {
            if self.out.failure.is_some() {
                break;
            }
            while scheduled.at_us / 1_000_000 >= next_progress_s {
                progress(next_progress_s);
                next_progress_s += PROGRESS_INTERVAL_S;
            }
            self.out.events_processed += 1;
            if self.out.events_processed > EVENTS_MAX {
                self.fail(Failure::EventBudgetExhausted {
                    events_max: EVENTS_MAX,
                });
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
            if self.now_us >= self.out.probes.next_sample_us {
                self.sample_probes();
            }
        }
        if self.out.failure.is_none() && self.out.end_us == 0 {
            self.fail(Failure::NoEndEvent);
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

    /// Schedules `ev` at `at_us` (or now, if that is past).
    pub(crate) fn schedule(&mut self, at_us: u64, ev: Ev) {
        self.queue.push(self.now_us, at_us, ev);
    }

    /// Records the run's first failure (later ones are consequences).
    pub(crate) fn fail(&mut self, failure: Failure) {
        if self.out.failure.is_none() {
            self.out.failure = Some(RunFailure {
                at_ms: self.now_us / 1_000,
                failure,
                seed: self.spec.seed,
                replay: self.spec.replay_command(),
            });
        }
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
        if plan.scenario == WEBHOOKS_SCENARIO {
            self.schedule(crate::senders::SETUP_US, Ev::WebhookSetup);
        }
        self.schedule(self.safety_end_us, Ev::Heal);
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver {
                from,
                to,
                incarnation,
                payload,
            } => self.deliver(from, to, incarnation, payload),
            Ev::Timer {
                node,
                incarnation,
                local_ms,
            } => self.timer(node, incarnation, local_ms),
            Ev::Write => self.workload_tick(),
            Ev::BroadcastWrite { node } => self.broadcast_write(node),
            Ev::PartitionOn => self.partition_on(),
            Ev::PartitionOff => self.partition_off(),
            Ev::Crash => self.crash(),
            Ev::Restart { node } => self.restart(node),
            Ev::Roam => self.roam(),
            Ev::Heal => self.heal(),
            Ev::Probe => self.probe(),
            Ev::End => {}
            Ev::ForceRollovers => self.force_rollovers(),
            Ev::Iteration { node, incarnation } => self.iteration(node, incarnation),
            Ev::ResumeRetry {
                subscriber,
                node,
                incarnation,
                retry_at_ms,
            } => self.resume_retry(subscriber, node, incarnation, retry_at_ms),
            Ev::WebhookSetup => self.webhook_setup(),
            Ev::WebhookTick => self.webhook_tick(),
            Ev::WebhookDone {
                node,
                incarnation,
                pair,
            } => self.webhook_done(node, incarnation, pair),
        }
    }

    /// The first subscriber moves to another node, resuming with its cursor.
    fn roam(&mut self) {
        if let Some(sub) = self.subscribers.first() {
            let from = sub.node;
            self.reconnect(0, from);
        }
        let interval = self.spec.plan.roam_interval_ms.max(1) * 1_000;
        if self.now_us + interval < self.safety_end_us {
            self.schedule(self.now_us + interval, Ev::Roam);
        }
    }

    /// The end of the safety phase: faults off, every crashed node restarts, probing starts.
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

    /// Liveness: converged (then the idle window starts), or failed past the bound.
    fn probe(&mut self) {
        if self.out.heads_converged_us.is_none() && self.heads_converged() {
            self.out.heads_converged_us = Some(self.now_us - self.out.heal_us);
        }
        if self.converged() {
            self.out.converged_us = Some(self.now_us - self.out.heal_us);
            self.idle_start = Some(IdleStart {
                at_us: self.now_us,
                bytes_sent: self.out.bytes_sent,
            });
            self.schedule(self.now_us + self.spec.plan.idle_ms * 1_000, Ev::End);
            return;
        }
        if self.now_us - self.out.heal_us > self.spec.plan.liveness_bound_ms * 1_000 {
            self.fail(Failure::NoConvergence {
                bound_ms: self.spec.plan.liveness_bound_ms,
                reference: self.members[0].id.clone(),
                differing: self.divergent_nodes(),
            });
            return;
        }
        self.schedule(self.now_us + PROBE_INTERVAL_US, Ev::Probe);
    }

    /// The end event: the final checks, or back to probing when a late frame moved a node.
    fn finish(&mut self) {
        self.out.end_us = self.now_us;
        if let Some(idle) = self.idle_start {
            self.out.idle_bytes = self.out.bytes_sent - idle.bytes_sent;
            self.out.idle_us = self.now_us - idle.at_us;
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
        if !self.check_probe_owners() {
            // Membership has not settled (a stale suspicion after the heal): converge again,
            // within the liveness bound.
            if self.out.failure.is_none() {
                self.out.end_us = 0;
                self.idle_start = None;
                self.schedule(self.now_us + PROBE_INTERVAL_US, Ev::Probe);
            }
            return;
        }
        if self.spec.plan.scenario == WEBHOOKS_SCENARIO && !self.check_webhooks() {
            // A sender is still catching up after the heal: converge again, within the
            // liveness bound.
            if self.out.failure.is_none() {
                self.out.end_us = 0;
                self.idle_start = None;
                self.schedule(self.now_us + PROBE_INTERVAL_US, Ev::Probe);
            }
            return;
        }
        if !self.check_views() || !self.check_acknowledged_writes() {
            return;
        }
        for s in 0..self.subscribers.len() {
            if self.subscribers[s].is_waiting() {
                // Told to wait moments ago (a cursor naming writes lost with a disk waits
                // RESUME_WAIT_MS for a snapshot): it has no stream to check yet.
                self.out.driver.waiting_at_end += 1;
                continue;
            }
            let node = self.subscribers[s].node;
            self.check_subscriber_state(s, node, Moment::AtTheEnd);
        }
        if self.out.failure.is_none() {
            self.check_histories();
        }
    }
}
