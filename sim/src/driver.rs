//! Driving one node the way the node driver does: feed it an input, then drain what it
//! produced in the documented order (invariants while the queues are still full, transmits,
//! events), then re-arm its one timer at `poll_timeout()`.

use statusmesh_crdt::{Cursor, StatusEvent};
use statusmesh_gossip::{invariants, Event};

use crate::clock;
use crate::failure::Failure;
use crate::sim::{Ev, Sim};

impl Sim {
    /// The node's clock now.
    pub(crate) fn local_ms(&self, node: usize) -> u64 {
        clock::local_ms(self.now_us, self.slots[node].skew_ms)
    }

    /// A timer event: fires the node's timeout unless a newer deadline or a crash replaced it.
    pub(crate) fn timer(&mut self, node: usize, incarnation: u32, local_ms: u64) {
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
        let mut status: Vec<(StatusEvent, Cursor)> = Vec::new();
        for event in events {
            match event {
                Event::Status { event, cursor } => status.push((event, cursor)),
                Event::FrameRejected { from, reason } => {
                    // Only honest nodes exist here, so a rejected frame is a bug.
                    self.fail(Failure::FrameRejected {
                        node: self.members[i].id.clone(),
                        from,
                        reason: reason.to_string(),
                    });
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
