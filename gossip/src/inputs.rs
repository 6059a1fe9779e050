//! The batched inputs both drivers call: a driver iteration's frames, its local writes, a
//! client's resume, and the configuration of a restarted node.
//!
//! The node process and the simulator hand the core the same things in the same shape, so the
//! simulator runs what production runs: frame merging, group commit and the resume decision
//! are protocol, not driver code.
//!
//! # Flow of one driver iteration
//! 1. Collect what arrived (frames, client writes) without blocking, up to the driver's bounds.
//! 2. [`Node::local_writes`] with the writes, then [`Node::handle_frames`] with the frames.
//! 3. Make the iteration durable (the node fsyncs; the simulator's disk keeps the replica).
//! 4. Drain `poll_transmit`, then `poll_event`; answer pending resumes with [`Node::resume`].

use std::collections::BTreeSet;

use statusmesh_crdt::doc::REMOTE_BATCH_MAX;
use statusmesh_crdt::{
    ChangeHash, Cursor, Delivery, Incident, IncidentChange, Name, Put, StatusWrite, Transition,
};

use crate::codec::{Frame, FRAME_BYTES_MAX};
use crate::error::GossipError;
use crate::node::{Config, Node, NodeId};

/// How long a client whose cursor names changes this node lacks waits for them to arrive
/// before it is given a fresh snapshot instead (ms). Long enough for an anti-entropy round
/// with every peer across regions, short enough that a client is not left without state.
pub const RESUME_WAIT_MS: u64 = 3_000;

/// A frame as the transport delivered it; the transport vouches for `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundFrame {
    pub from: NodeId,
    pub bytes: Vec<u8>,
}

/// Remote changes the core accepted into one document in one merged batch, with the heads
/// before and after: the node driver appends these bytes to its log as they came instead of
/// re-encoding them from the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedBatch {
    pub service: Name,
    pub heads_before: Vec<ChangeHash>,
    pub heads_after: Vec<ChangeHash>,
    pub changes: Vec<Vec<u8>>,
}

/// A change to an incident, a maintenance window or an override.
#[derive(Debug, Clone)]
pub enum RecordOp {
    OpenIncident {
        id: Name,
        incident: Incident,
        text: String,
    },
    ChangeIncident {
        id: Name,
        change: IncidentChange,
    },
    /// A maintenance window or an override, written as the crdt's own record put.
    Put(Put),
    /// Several records of one service in one change (a webhook subscription and where its
    /// deliveries start): all of them, or none when one is invalid.
    Puts(Vec<Put>),
}

/// One local write, as a client (or a prober) submits it.
#[derive(Debug, Clone)]
pub enum LocalWrite {
    Status(StatusWrite),
    Record { service: Name, op: RecordOp },
}

/// What one local write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteResult {
    /// False when the value was already there (a status write then refreshes liveness only).
    pub changed: bool,
    /// The change that carries the write; `None` when nothing changed.
    pub change: Option<ChangeHash>,
}

/// What a client resuming after a cursor gets.
#[derive(Debug, Clone)]
pub enum Resume {
    /// The transitions after the cursor (possibly none), each with the cursor a client holds
    /// once it has it: send them, then the live events.
    Events(Vec<(Transition, Cursor)>),
    /// A fresh snapshot: no cursor, a cursor of a compacted epoch, or one this node still
    /// lacks after [`RESUME_WAIT_MS`].
    Snapshot,
    /// The cursor names changes this node lacks; the core asked its peers for them. Ask again
    /// after the next input, and at `retry_at_ms` at the latest.
    Wait { retry_at_ms: u64 },
}

/// The change frames of one peer for one service in one iteration, merged into one batch.
struct MergedChanges {
    from: NodeId,
    service: String,
    /// Pushes and repairs are merged apart: a push of nothing new prunes its sender.
    pushed: bool,
    changes: Vec<Vec<u8>>,
    bytes: usize,
}

impl Config {
    /// This configuration for a process's `incarnation` (its start count, kept on its disk):
    /// the SWIM generation, so that peers that declared the previous life down take this one.
    #[must_use]
    pub fn with_incarnation(mut self, incarnation: u64) -> Self {
        self.generation = u32::try_from(incarnation).unwrap_or(u32::MAX);
        self
    }
}

impl Node {
    /// Handles every frame of one driver iteration. The change frames of one peer for one
    /// service are merged into one batch (pushes with pushes, repairs with repairs, at most
    /// `REMOTE_BATCH_MAX` changes and half a frame's bytes): Automerge applies a batch in about
    /// the time of one change, which is what lets a node keep up with peers that push one
    /// change per write. A merged batch is rejected whole if one change in it is bad (all of it
    /// came from one peer; anti-entropy repairs the rest). Other frames, and frames that do
    /// not decode, are handled in their order of arrival, before the merged batches, so that
    /// the core judges and counts them.
    ///
    /// Returns the merged batches that moved a document's heads.
    pub fn handle_frames(&mut self, now_ms: u64, frames: Vec<InboundFrame>) -> Vec<AcceptedBatch> {
        let mut merged: Vec<MergedChanges> = Vec::new();
        let mut others = Vec::new();
        for frame in frames {
            // Counted, checked for its versions and decoded once, here.
            let Some(decoded) = self.receive(now_ms, &frame.from, &frame.bytes) else {
                continue;
            };
            let (service, changes, pushed) = match decoded {
                Frame::Changes { service, changes } => (service, changes, false),
                Frame::Push { service, changes } => (service, changes, true),
                other => {
                    others.push((frame.from, other));
                    continue;
                }
            };
            let bytes: usize = changes.iter().map(Vec::len).sum();
            let slot = merged.iter_mut().find(|m| {
                m.from == frame.from
                    && m.service == service
                    && m.pushed == pushed
                    && m.changes.len() + changes.len() <= REMOTE_BATCH_MAX
                    && m.bytes + bytes <= FRAME_BYTES_MAX / 2
            });
            match slot {
                Some(m) => {
                    m.changes.extend(changes);
                    m.bytes += bytes;
                }
                None => merged.push(MergedChanges {
                    from: frame.from,
                    service,
                    pushed,
                    changes,
                    bytes,
                }),
            }
        }
        for (from, frame) in others {
            self.dispatch(now_ms, &from, frame);
        }
        let mut accepted = Vec::new();
        for batch in merged {
            let name = Name::parse("service", &batch.service).ok();
            let heads_before = self.heads_of_doc(name.as_ref());
            let changes = batch.changes.clone();
            let frame = if batch.pushed {
                Frame::Push {
                    service: batch.service,
                    changes: batch.changes,
                }
            } else {
                Frame::Changes {
                    service: batch.service,
                    changes: batch.changes,
                }
            };
            self.dispatch(now_ms, &batch.from, frame);
            let Some(service) = name else {
                continue;
            };
            let heads_after = self.heads_of_doc(Some(&service));
            // Unchanged heads: the batch was rejected whole, or held nothing new.
            if heads_after != heads_before {
                accepted.push(AcceptedBatch {
                    service,
                    heads_before,
                    heads_after,
                    changes,
                });
            }
        }
        accepted
    }

    /// Applies every local write of one driver iteration (group commit), in order. A run of
    /// consecutive status writes becomes one Automerge change per service and one broadcast
    /// (a run is cut where a cell repeats, so that each write stays a transition of its own);
    /// when one write of a run breaks a rule for the whole run (a limit), the run is applied
    /// one write at a time so that each gets its own answer. Record writes are applied one by
    /// one. Results are in input order; an error leaves the state unchanged for that write.
    pub fn local_writes(
        &mut self,
        now_ms: u64,
        writes: Vec<LocalWrite>,
    ) -> Vec<Result<WriteResult, GossipError>> {
        let mut results = Vec::with_capacity(writes.len());
        let mut run: Vec<StatusWrite> = Vec::new();
        let mut cells: BTreeSet<String> = BTreeSet::new();
        for write in writes {
            match write {
                LocalWrite::Status(status) => {
                    if !cells.insert(status.cell_key()) {
                        self.apply_status_run(now_ms, std::mem::take(&mut run), &mut results);
                        cells = BTreeSet::from([status.cell_key()]);
                    }
                    run.push(status);
                }
                LocalWrite::Record { service, op } => {
                    self.apply_status_run(now_ms, std::mem::take(&mut run), &mut results);
                    cells.clear();
                    results.push(self.apply_record(now_ms, &service, op));
                }
            }
        }
        self.apply_status_run(now_ms, run, &mut results);
        results
    }

    /// What a client resuming after `cursor` gets, decided in one place for both drivers:
    /// every transition after it (`delivery` says whether the client wants state only).
    /// `waiting_since_ms` is when this client first asked (`now_ms` on its first call): the
    /// first call of a cursor this node lacks asks every peer for what it holds
    /// ([`Node::sync_now`]), later calls wait for the answer until [`RESUME_WAIT_MS`] has
    /// passed, then give a snapshot.
    pub fn resume(
        &mut self,
        now_ms: u64,
        cursor: Option<&Cursor>,
        waiting_since_ms: u64,
        delivery: Delivery,
    ) -> Resume {
        assert!(
            waiting_since_ms <= now_ms,
            "a client cannot have started waiting in the future"
        );
        let Some(cursor) = cursor else {
            return Resume::Snapshot;
        };
        if let Some(events) = self.replica().transitions_since(cursor, delivery) {
            return Resume::Events(events);
        }
        let retry_at_ms = waiting_since_ms.saturating_add(RESUME_WAIT_MS);
        if self.replica().cursor_is_compacted(cursor) || now_ms >= retry_at_ms {
            return Resume::Snapshot;
        }
        if now_ms == waiting_since_ms {
            self.sync_now(now_ms);
        }
        Resume::Wait { retry_at_ms }
    }

    fn apply_status_run(
        &mut self,
        now_ms: u64,
        run: Vec<StatusWrite>,
        results: &mut Vec<Result<WriteResult, GossipError>>,
    ) {
        if run.is_empty() {
            return;
        }
        if let Ok(batch) = self.local_write_batch(now_ms, &run) {
            results.extend(
                batch
                    .into_iter()
                    .map(|(changed, change)| Ok(WriteResult { changed, change })),
            );
            return;
        }
        // The batch was refused whole and left the state unchanged: one by one, so that only
        // the write that breaks the rule is refused.
        for write in &run {
            let result = self.local_write(now_ms, write).map(|changed| WriteResult {
                changed,
                change: if changed {
                    self.last_local_change()
                } else {
                    None
                },
            });
            results.push(result);
        }
    }

    fn apply_record(
        &mut self,
        now_ms: u64,
        service: &Name,
        op: RecordOp,
    ) -> Result<WriteResult, GossipError> {
        let change = self.local_change(now_ms, service, |replica| match op {
            RecordOp::OpenIncident { id, incident, text } => {
                replica.open_incident(now_ms, service, &id, incident, &text)
            }
            RecordOp::ChangeIncident { id, change } => {
                replica.change_incident(now_ms, service, &id, change)
            }
            RecordOp::Put(put) => replica.write_records(now_ms, service, &[put]),
            RecordOp::Puts(puts) => replica.write_records(now_ms, service, &puts),
        })?;
        Ok(WriteResult {
            changed: change.is_some(),
            change,
        })
    }

    fn heads_of_doc(&self, service: Option<&Name>) -> Vec<ChangeHash> {
        service
            .and_then(|s| self.replica().doc(s))
            .map(|d| d.heads())
            .unwrap_or_default()
    }
}

#[cfg(test)]
#[path = "inputs_tests.rs"]
mod tests;
