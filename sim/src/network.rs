//! The simulated network and its faults: sending, delays (latency model, jitter, reordering,
//! spikes), partitions (which side is cut off, symmetric or one-way, flapping), loss,
//! duplication, and delivery into a running incarnation's inbox.
//!
//! Latencies come from the same `regions.toml` model as the node's topology. Every random
//! choice is drawn from the simulator's one RNG, in a fixed order per frame.

use std::collections::BTreeSet;
use std::rc::Rc;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use statusmesh_gossip::codec;
use statusmesh_gossip::topology::{LatencyModel, Member};

use crate::driver::INBOX_MAX;
use crate::failure::Failure;
use crate::outcome::{PartitionSpan, Spec};
use crate::scenario::PartitionMode;
use crate::sim::{Ev, Sim};

/// Jitter on top of every one-way latency: up to this fraction of it...
const JITTER_FRACTION: f64 = 0.05;
/// ...plus up to this many microseconds (queueing inside a data centre).
const JITTER_US: u64 = 100;

/// The frame kinds that carry changes (`Frame::kind`): repair and broadcast push.
pub const CHANGES_KINDS: [&str; 2] = ["changes", "push"];

/// A frame in flight, shared by every copy of a broadcast.
#[derive(Debug)]
pub(crate) struct Payload {
    pub(crate) bytes: Vec<u8>,
    pub(crate) kind: &'static str,
    /// Indices of tracked writes whose changes the frame carries.
    pub(crate) writes: Vec<usize>,
    /// For a change frame: what the core merges it by, with the peer it came from.
    pub(crate) batch: Option<ChangeBatch>,
}

/// The service of a change frame, and whether it is a push (pushes merge with pushes,
/// repairs with repairs).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ChangeBatch {
    pub(crate) service: String,
    pub(crate) pushed: bool,
}

/// A frame that arrived at a node and waits in its inbox for the next driver iteration.
#[derive(Debug)]
pub(crate) struct Arrival {
    pub(crate) from: usize,
    pub(crate) payload: Rc<Payload>,
}

/// The network's state: the latency model and the plan's partition.
#[derive(Debug)]
pub(crate) struct Network {
    latency: LatencyModel,
    /// True for nodes on the cut-off side of the plan's partition.
    pub(crate) cut: Vec<bool>,
    cut_regions: Vec<usize>,
    pub(crate) partition_active: bool,
    /// A broadcast queues the same bytes for every peer: they are decoded once.
    last_payload: Option<Rc<Payload>>,
}

impl Network {
    /// The network of `spec`; draws the cut-off side of the plan's partition from `rng`.
    pub(crate) fn new(spec: &Spec, members: &[Member], rng: &mut ChaCha8Rng) -> Self {
        let (cut, cut_regions) = choose_cut(spec, members, rng);
        Self {
            latency: LatencyModel::new(&spec.topology.regions),
            cut,
            cut_regions,
            partition_active: false,
            last_payload: None,
        }
    }

    /// Shortest-path one-way latency between regions, in milliseconds.
    pub(crate) fn shortest_paths_ms(&self) -> Vec<Vec<f64>> {
        self.latency.shortest_paths_ms()
    }
}

impl Sim {
    /// Sends `bytes` from node `from` to the node named `to_id`, through the faults.
    pub(crate) fn send(&mut self, from: usize, to_id: String, bytes: Vec<u8>) {
        let Some(&to) = self.index.get(&to_id) else {
            self.fail(Failure::UnknownDestination {
                from: self.members[from].id.clone(),
                to: to_id,
            });
            return;
        };
        let payload = match &self.net.last_payload {
            Some(p) if p.bytes == bytes => Rc::clone(p),
            _ => match self.decode_payload(bytes) {
                Ok(p) => {
                    let p = Rc::new(p);
                    self.net.last_payload = Some(Rc::clone(&p));
                    p
                }
                Err(error) => {
                    self.fail(Failure::UndecodableFrame {
                        from: self.members[from].id.clone(),
                        error,
                    });
                    return;
                }
            },
        };
        let len = payload.bytes.len() as u64;
        let sent = self.out.sent_by_kind.entry(payload.kind).or_default();
        sent.frames += 1;
        sent.bytes += len;
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
        if self.faults_on && self.net.partition_active && self.blocked(from, to) {
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

    /// A frame arrives at node `to`: lost when the incarnation it was sent to is gone (or its
    /// inbox is full, which pushes back on peers as the node's bounded queue does); otherwise
    /// it waits in the inbox for the node's next driver iteration.
    pub(crate) fn deliver(
        &mut self,
        from: usize,
        to: usize,
        incarnation: u32,
        payload: Rc<Payload>,
    ) {
        let slot = &mut self.slots[to];
        if slot.incarnation != incarnation || slot.node.is_none() {
            self.out.dropped_down += 1;
            return;
        }
        if slot.inbox.len() >= INBOX_MAX {
            self.out.driver.inbox_overflows += 1;
            return;
        }
        slot.inbox.push(Arrival { from, payload });
        self.wake(to);
    }

    /// The partition starts (or flaps on again), unless the faults are already off.
    pub(crate) fn partition_on(&mut self) {
        if !self.faults_on {
            return;
        }
        self.net.partition_active = true;
        self.out.partitions.push(PartitionSpan {
            start_us: self.now_us,
            end_us: self.safety_end_us,
            regions: self.net.cut_regions.clone(),
        });
        if let Some((on_ms, _)) = self.flapping() {
            self.schedule(self.now_us + on_ms * 1_000, Ev::PartitionOff);
        }
    }

    /// A flapping partition lifts for a while.
    pub(crate) fn partition_off(&mut self) {
        self.end_partition();
        if let Some((_, off_ms)) = self.flapping() {
            if self.faults_on {
                self.schedule(self.now_us + off_ms * 1_000, Ev::PartitionOn);
            }
        }
    }

    pub(crate) fn end_partition(&mut self) {
        if self.net.partition_active {
            self.net.partition_active = false;
            if let Some(span) = self.out.partitions.last_mut() {
                span.end_us = self.now_us;
            }
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

    fn decode_payload(&self, bytes: Vec<u8>) -> Result<Payload, String> {
        // Only change frames need a full decode (for their hashes); the kind of the others
        // comes from the envelope's header, which only the codec knows how to read.
        let kind = codec::peek_kind(&bytes).map_err(|e| e.to_string())?;
        if !CHANGES_KINDS.contains(&kind) {
            if cfg!(debug_assertions) {
                let decoded = codec::decode(&bytes).map_err(|e| e.to_string())?;
                debug_assert_eq!(decoded.kind(), kind, "peek_kind and decode disagree");
            }
            return Ok(Payload {
                bytes,
                kind,
                writes: Vec::new(),
                batch: None,
            });
        }
        let frame = codec::decode(&bytes).map_err(|e| e.to_string())?;
        debug_assert_eq!(frame.kind(), kind, "peek_kind and decode disagree");
        let mut writes = Vec::new();
        let mut batch = None;
        if let Some((service, changes)) = frame.changes() {
            batch = Some(ChangeBatch {
                service: service.to_owned(),
                pushed: kind == "push",
            });
            for change in changes {
                let change = automerge::Change::try_from(change.as_slice())
                    .map_err(|e| format!("change does not parse: {e}"))?;
                if let Some(tracked) = self.write_by_hash.get(&change.hash()) {
                    writes.extend_from_slice(tracked);
                }
            }
        }
        Ok(Payload {
            bytes,
            kind,
            writes,
            batch,
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
        let cut = &self.net.cut;
        cut[from] != cut[to] && (symmetric || cut[from])
    }

    fn delay_us(&mut self, from: usize, to: usize) -> u64 {
        let (a, b) = (self.members[from].region, self.members[to].region);
        let base_us = self.net.latency.one_way_ms(a, b) * 1_000.0;
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
