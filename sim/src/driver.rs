//! Driving one node the way the node driver does, one iteration at a time.
//!
//! # One driver iteration
//! 1. Something wakes the driver: a frame in its inbox, a client write, or its timer. The
//!    driver is busy for a moment (the previous iteration's commit, modelled as 0 to
//!    [`DRIVER_BUSY_US_MAX`] µs from the RNG), so more frames and writes queue up meanwhile.
//! 2. The iteration hands the core everything queued, in the node driver's order: the
//!    timeout (when the timer woke it), the pending writes as one `local_writes` call (group
//!    commit), the inbox as one `handle_frames` call (the core merges the change frames of
//!    one peer for one service).
//! 3. It drains what the core produced: invariants while the queues are still full, then
//!    transmits, then events; then re-arms the one timer at `poll_timeout()`.
//! 4. It asks the core again for every subscriber waiting on this node (`resume`).
//!
//! A crash loses the inbox and the pending writes, as a process loses its queues.

use std::collections::BTreeMap;

use rand::Rng;
use statusmesh_crdt::DocEvent;
use statusmesh_gossip::{invariants, Event, InboundFrame, LocalWrite};

use crate::checker::subscribers::Delivered;
use crate::clock;
use crate::failure::Failure;
use crate::network::{Arrival, ChangeBatch};
use crate::sim::{Ev, Sim};
use crate::workload::PendingWrite;

/// Longest the driver is busy before an iteration starts, in microseconds.
const DRIVER_BUSY_US_MAX: u64 = 500;
/// Most frames waiting in a node's inbox (the node's inbound queue bound); more are lost.
pub(crate) const INBOX_MAX: usize = 8_192;
/// Most frames one iteration hands the core (the node takes one, then drains up to 1024).
const FRAMES_PER_ITERATION_MAX: usize = 1_025;
/// Most writes one iteration applies (the node's default `writes_per_commit_max`).
const WRITES_PER_ITERATION_MAX: usize = 512;

impl Sim {
    /// The node's clock now.
    pub(crate) fn local_ms(&self, node: usize) -> u64 {
        clock::local_ms(self.now_us, self.slots[node].skew_ms)
    }

    /// A timer event: an iteration with the node's timeout, unless a newer deadline or a
    /// crash replaced it.
    pub(crate) fn timer(&mut self, node: usize, incarnation: u32, local_ms: u64) {
        let slot = &self.slots[node];
        if slot.incarnation != incarnation || slot.timer_local_ms != Some(local_ms) {
            return;
        }
        if slot.node.is_some() {
            self.iterate(node, true);
        }
    }

    /// Something arrived for `node`: its driver runs an iteration shortly, unless one is
    /// already on its way.
    pub(crate) fn wake(&mut self, node: usize) {
        let slot = &mut self.slots[node];
        if slot.iteration_pending || slot.node.is_none() {
            return;
        }
        slot.iteration_pending = true;
        let incarnation = slot.incarnation;
        let busy_us = self.rng.random_range(0..=DRIVER_BUSY_US_MAX);
        self.schedule(self.now_us + busy_us, Ev::Iteration { node, incarnation });
    }

    /// A scheduled iteration: hands the core what queued up since the driver woke (a timer
    /// iteration in between may have taken it already).
    pub(crate) fn iteration(&mut self, node: usize, incarnation: u32) {
        let slot = &mut self.slots[node];
        if slot.incarnation != incarnation || slot.node.is_none() {
            return;
        }
        slot.iteration_pending = false;
        if slot.inbox.is_empty() && slot.pending_writes.is_empty() {
            return;
        }
        self.iterate(node, false);
    }

    /// One driver iteration of `node` (see the module doc).
    fn iterate(&mut self, node: usize, timeout: bool) {
        let now_ms = self.local_ms(node);
        let slot = &mut self.slots[node];
        let frames_taken = slot.inbox.len().min(FRAMES_PER_ITERATION_MAX);
        let arrivals: Vec<Arrival> = slot.inbox.drain(..frames_taken).collect();
        let writes_taken = slot.pending_writes.len().min(WRITES_PER_ITERATION_MAX);
        let writes: Vec<PendingWrite> = slot.pending_writes.drain(..writes_taken).collect();
        let more = !slot.inbox.is_empty() || !slot.pending_writes.is_empty();
        let incarnation = slot.incarnation;
        let Some(n) = slot.node.as_mut() else {
            return;
        };
        self.out.driver.iterations += 1;
        if timeout {
            n.handle_timeout(now_ms);
        }
        if !writes.is_empty() {
            let local: Vec<LocalWrite> = writes.iter().map(|w| w.write.clone()).collect();
            let results = n.local_writes(now_ms, local);
            let figures = &mut self.out.driver;
            figures.write_calls += 1;
            figures.writes += writes.len() as u64;
            figures.group_commits += u64::from(writes.len() > 1);
            if !self.acknowledge(node, &writes, results) {
                return;
            }
        }
        if !arrivals.is_empty() {
            self.note_frame_batch(&arrivals);
            let frames = arrivals
                .iter()
                .map(|a| InboundFrame {
                    from: self.members[a.from].id.clone(),
                    bytes: a.payload.bytes.clone(),
                })
                .collect();
            let Some(n) = self.slots[node].node.as_mut() else {
                return;
            };
            let accepted = n.handle_frames(now_ms, frames);
            self.out.driver.accepted_batches += accepted.len() as u64;
            for arrival in &arrivals {
                for &w in &arrival.payload.writes {
                    self.note_delivery(w, node);
                }
            }
        }
        self.after_call(node);
        if self.slots[node].incarnation != incarnation {
            // It crashed right after the iteration (a proposer crash).
            return;
        }
        if more {
            self.wake(node);
        }
        self.answer_waiting_resumes(node);
    }

    /// Counts one `handle_frames` call: its frames, and the change frames that share it with
    /// another of the same peer and service (what the core merges into one batch).
    fn note_frame_batch(&mut self, arrivals: &[Arrival]) {
        let mut by_batch: BTreeMap<(usize, &ChangeBatch), u64> = BTreeMap::new();
        for arrival in arrivals {
            if let Some(batch) = &arrival.payload.batch {
                *by_batch.entry((arrival.from, batch)).or_default() += 1;
            }
        }
        let figures = &mut self.out.driver;
        figures.frame_calls += 1;
        figures.frames += arrivals.len() as u64;
        figures.frame_batches += u64::from(arrivals.len() > 1);
        figures.change_frames_merged += by_batch.values().map(|n| n - 1).sum::<u64>();
    }

    /// Drains what a node produced after an input: invariants first (the queues are still
    /// full), then frames, then events; then re-arms its timer.
    pub(crate) fn after_call(&mut self, i: usize) {
        let Some(node) = self.slots[i].node.as_mut() else {
            return;
        };
        if let Err(broken) = invariants::check(node) {
            let id = node.id().to_owned();
            self.fail(Failure::InvariantBroken {
                node: id,
                violation: broken.to_string(),
            });
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
        let mut delivered: Vec<Delivered> = Vec::new();
        for event in events {
            match event {
                Event::Status {
                    event,
                    cursor,
                    transition,
                    coalesced,
                } => delivered.push(Delivered {
                    event: DocEvent::Status(event),
                    cursor,
                    transition,
                    coalesced: coalesced.is_some(),
                }),
                Event::Record {
                    event,
                    cursor,
                    transition,
                    coalesced,
                } => delivered.push(Delivered {
                    event,
                    cursor,
                    transition,
                    coalesced: coalesced.is_some(),
                }),
                Event::FrameRejected { from, error } => {
                    // Only honest nodes exist here, so a rejected frame is a bug.
                    self.fail(Failure::FrameRejected {
                        node: self.members[i].id.clone(),
                        from,
                        reason: error.to_string(),
                    });
                    return;
                }
                Event::PeerDown { peer } => self.note_peer_down(i, &peer),
                // Liveness and contact events carry nothing the checkers use.
                _ => {}
            }
        }
        self.check_subscribers(i, delivered);
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

    /// Schedules the node's timer at its `poll_timeout()`, unless that one is already armed.
    pub(crate) fn rearm(&mut self, i: usize) {
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
            let at_us = clock::at_us(local_ms, self.slots[i].skew_ms);
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
}
