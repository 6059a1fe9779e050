//! The workload: what clients write (status flips, bursts, heartbeats that repeat a value,
//! the all-regions broadcast) and the forced concurrent rollover proposals of the epoch
//! scenarios; and the acknowledgement bookkeeping of every write a node accepted.
//!
//! A write is submitted to a node's pending list and applied by its next driver iteration,
//! together with every other write pending there (the core's group commit), as the node
//! driver does with the writes of one loop iteration.

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;
use statusmesh_crdt::epoch::{Lineage, WriteId};
use statusmesh_crdt::{
    transition_id, ChangeHash, Name, Observation, RecordKey, State, StatusWrite,
};
use statusmesh_gossip::{GossipError, LocalWrite, WriteResult};

use crate::failure::Failure;
use crate::outcome::WriteRecord;
use crate::scenario::Workload;
use crate::sim::{Ev, Sim};

/// Time-to-live of written observations: longer than any phase, so staleness flips only
/// where a reporter's clock is skewed far.
pub(crate) const OBSERVATION_TTL_MS: u64 = 600_000;
/// Most writes a run tracks for the acknowledgement and delivery checks.
const WRITES_TRACKED_MAX: usize = 200_000;
/// Services and components the workload writes to.
pub(crate) const SERVICES: [&str; 4] = ["checkout", "search", "payments", "identity"];
const COMPONENTS: [&str; 6] = ["api", "db", "web", "queue", "cache", "auth"];

impl Sim {
    /// The broadcast workload: node `node` writes once to the first service.
    pub(crate) fn broadcast_write(&mut self, node: usize) {
        let state = State::ALL[self.rng.random_range(1..State::ALL.len())];
        let message = self.next_message();
        self.write(node, 0, 0, state, message);
    }

    /// all hold the service in one lineage: a contest must be decided before the next one,
    /// or two lineages could both advance past a contested epoch (the crdt's documented
    /// limit, which the gossip proposer rule prevents for its own proposals).
    pub(crate) fn force_rollovers(&mut self) {
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
                    self.fail(Failure::ForcedRolloverFailed {
                        node: self.members[node].id.clone(),
                        service,
                        error: e.to_string(),
                    });
                    return;
                }
            }
        }
        // Only now do their frames leave: the proposals are concurrent.
        for node in chosen {
            self.after_call(node);
        }
    }

    pub(crate) fn workload_tick(&mut self) {
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
            let cut_live: Vec<usize> = if self.net.partition_active && share > 0.0 {
                live.iter().copied().filter(|&i| self.net.cut[i]).collect()
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

    /// A client submits a status write to `node`: it waits in the node's pending list for
    /// the next driver iteration, which applies every pending write as one group commit.
    pub(crate) fn write(
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
                self.fail(Failure::InvalidWorkloadWrite {
                    error: e.to_string(),
                });
                return;
            }
        };
        if self.slots[node].node.is_none() {
            return;
        }
        self.slots[node].pending_writes.push(PendingWrite {
            write: LocalWrite::Status(write),
            cell: Some(WrittenCell {
                service,
                component,
                state,
                message,
            }),
        });
        self.wake(node);
    }

    /// The bookkeeping of one group commit, per write as the node answers each: an
    /// acknowledged change is tracked for the delivery and lost-write checks, an unchanged
    /// value counts as a heartbeat, a refusal of a valid write fails the run. Then the last
    /// change of each service must be its only head (a local change depends on every head).
    /// False after a failure.
    pub(crate) fn acknowledge(
        &mut self,
        node: usize,
        writes: &[PendingWrite],
        results: Vec<Result<WriteResult, GossipError>>,
    ) -> bool {
        if results.len() != writes.len() {
            self.fail(Failure::WriteResultsMiscounted {
                node: self.members[node].id.clone(),
                writes: writes.len(),
                results: results.len(),
            });
            return false;
        }
        let mut last_change: BTreeMap<Name, ChangeHash> = BTreeMap::new();
        for (pending, result) in writes.iter().zip(results) {
            let service = service_of(&pending.write).clone();
            let hash = match result {
                Ok(WriteResult {
                    changed: true,
                    change: Some(hash),
                }) => hash,
                Ok(WriteResult { changed: false, .. }) => {
                    self.out.heartbeats += 1;
                    continue;
                }
                Ok(WriteResult {
                    changed: true,
                    change: None,
                }) => {
                    self.fail(Failure::ChangeWithoutHash {
                        node: self.members[node].id.clone(),
                        service,
                    });
                    return false;
                }
                Err(e) => {
                    self.fail(Failure::WriteRefused {
                        node: self.members[node].id.clone(),
                        error: e.to_string(),
                    });
                    return false;
                }
            };
            last_change.insert(service.clone(), hash);
            let write_id = self.slots[node]
                .node
                .as_ref()
                .and_then(|n| n.replica().doc(&service))
                .and_then(|d| d.write_of(&hash));
            let Some(write_id) = write_id else {
                self.fail(Failure::NoWriteIdentity {
                    node: self.members[node].id.clone(),
                    hash,
                });
                return false;
            };
            if self.net.partition_active && self.net.cut[node] {
                self.out.epochs.cut_writes += 1;
            }
            if self.out.writes.len() < WRITES_TRACKED_MAX {
                let mut delivered_us = vec![None; self.slots.len()];
                delivered_us[node] = Some(0);
                self.write_by_hash
                    .entry(hash)
                    .or_default()
                    .push(self.out.writes.len());
                self.out.writes.push(WriteRecord {
                    node,
                    service,
                    hash,
                    id: write_id,
                    transition: status_transition(&pending.write, &write_id),
                    at_us: self.now_us,
                    delivered_us,
                    copies: 0,
                    lost_with_disk: false,
                    under_faults: self.faulty && self.faults_on,
                });
            }
            if let Some(cell) = &pending.cell {
                self.slots[node].last_written.insert(
                    (cell.service, cell.component),
                    (cell.state, cell.message.clone()),
                );
            }
        }
        for (service, hash) in last_change {
            let heads = self.slots[node]
                .node
                .as_ref()
                .and_then(|n| n.replica().doc(&service))
                .map(|d| d.heads())
                .unwrap_or_default();
            if heads != [hash] {
                self.fail(Failure::HeadsAfterLocalWrite {
                    node: self.members[node].id.clone(),
                    heads,
                });
                return false;
            }
        }
        true
    }
}

/// A client write waiting for the node's next driver iteration.
#[derive(Debug)]
pub(crate) struct PendingWrite {
    pub(crate) write: LocalWrite,
    /// For a status write: the cell and value, remembered once acknowledged (heartbeats
    /// repeat it).
    cell: Option<WrittenCell>,
}

/// The cell a status write wrote, and its value.
#[derive(Debug)]
struct WrittenCell {
    service: usize,
    component: usize,
    state: State,
    message: String,
}

impl PendingWrite {
    /// A record write (no cell to remember).
    pub(crate) fn record(write: LocalWrite) -> Self {
        Self { write, cell: None }
    }
}

/// The identity of the transition a status write makes (record writes are checked for
/// order and duplicates only).
fn status_transition(write: &LocalWrite, id: &WriteId) -> Option<String> {
    let LocalWrite::Status(status) = write else {
        return None;
    };
    let record = RecordKey::Observation {
        component: status.component.clone(),
        region: status.region.clone(),
    };
    Some(transition_id(id, &status.service, &record.to_key()))
}

/// The service a local write is about.
fn service_of(write: &LocalWrite) -> &Name {
    match write {
        LocalWrite::Status(status) => &status.service,
        LocalWrite::Record { service, .. } => service,
    }
}
