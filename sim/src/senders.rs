//! The virtual webhook senders of the `webhooks` scenario: the sender rule of
//! `gossip::webhooks` driven on virtual time, delivering to the receiver of
//! `checker::webhooks`.
//!
//! # Flow
//! 1. Setup ([`SETUP_US`]): one node writes [`SUBSCRIPTIONS`] real subscriptions
//!    (`Put::Webhook`, validated) into each service of the workload, each with its progress
//!    at the replica's cursor then (`Put::WebhookProgress`), as one local write per service
//!    through the pending-write path of every other write; they replicate by gossip.
//! 2. Every [`TICK_US`], every live node asks `gossip::webhooks::assignments` which pairs it
//!    sends on its own view. A pair it newly sends starts at the replicated progress; one it
//!    keeps goes on from its in-memory position; one it lost is dropped (after the delivery
//!    in flight, if any, completes).
//! 3. A sender delivers the transitions after its position one at a time: the receiver gets
//!    one when it starts, the sender learns of it a virtual [`DELIVERY_US`] later and only
//!    then writes the progress record (a local write) and starts the next. A crash in between
//!    leaves a delivery the receiver has but the progress does not cover.
//!
//! Only the `webhooks` scenario schedules these events, so other scenarios' runs (and their
//! RNG streams) are untouched.

use std::collections::{BTreeMap, VecDeque};

use rand::Rng;
use statusmesh_crdt::webhooks::{WebhookProgress, WebhookSpec};
use statusmesh_crdt::{Cursor, Delivery, Name, Put};
use statusmesh_gossip::inputs::RecordOp;
use statusmesh_gossip::{rendezvous, webhooks, LocalWrite};

use crate::checker::webhooks::{subscription_id, Delivered, SUBSCRIPTIONS};
use crate::failure::Failure;
use crate::scenario::Workload;
use crate::sim::{Ev, Sim};
use crate::workload::{PendingWrite, SERVICES};

/// When the subscriptions are written, in microseconds (before the first workload write).
pub(crate) const SETUP_US: u64 = 500_000;
/// How often every node's senders look at their assignments, in microseconds.
pub(crate) const TICK_US: u64 = 200_000;
/// How long one delivery takes, uniform in this range, in microseconds: a remote receiver
/// over TLS, slow enough that some crashes land while one is in flight.
const DELIVERY_US: (u64, u64) = (20_000, 400_000);
/// The subscriptions' URL and signing secret (32 bytes of base64).
const URL: &str = "http://127.0.0.1:9/x";
const SECRET: &str = "whsec_c3RhdHVzbWVzaC1zaW0td2ViaG9va3Mtc2VjcmV0ISE=";

/// One (subscription index, service) pair.
pub(crate) type PairKey = (usize, Name);

/// What one node's sender of one pair holds in memory (lost with a crash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SenderState {
    /// The node's incarnation when it became the sender.
    incarnation: u32,
    /// After the last transition delivered (or passed over).
    position: Cursor,
    /// Transitions after `position` not delivered yet: (identity, cursor once delivered).
    queue: VecDeque<(Option<String>, Cursor)>,
    /// The delivery under way and the position once it completes.
    in_flight: Option<(Option<usize>, Cursor)>,
    /// Completed deliveries no progress write covers yet (held for the rest of a change).
    held: Vec<usize>,
    /// The delivery the last submitted progress write covers.
    last_submitted: Option<usize>,
    delivered: u64,
}

impl Sim {
    /// Writes the subscriptions and their starting progress on the first live node, and
    /// starts the senders' tick.
    pub(crate) fn webhook_setup(&mut self) {
        self.schedule(self.now_us + TICK_US, Ev::WebhookTick);
        let services = match self.spec.plan.workload {
            Workload::Flips { services, .. } => services.clamp(1, SERVICES.len()),
            Workload::Broadcast { .. } => 1,
        };
        let Some(node) = self.live_nodes().first().copied() else {
            return;
        };
        let now_ms = self.local_ms(node);
        let me = self.members[node].id.clone();
        let spec = WebhookSpec {
            url: URL.to_owned(),
            secret: Some(SECRET.to_owned()),
            events: None,
            services: SERVICES[..services]
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            min_state: None,
            format: None,
            rotation_grace_s: None,
        };
        let made = spec
            .into_webhook(None, SECRET, &me, now_ms)
            .and_then(|webhook| {
                let ids = (0..SUBSCRIPTIONS)
                    .map(|k| Name::parse("id", &subscription_id(k)))
                    .collect::<Result<Vec<_>, _>>()?;
                let names = SERVICES[..services]
                    .iter()
                    .map(|s| Name::parse("service", s))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((webhook, ids, names))
            });
        let (webhook, ids, names) = match made {
            Ok(m) => m,
            Err(e) => {
                self.fail(Failure::InvalidWorkloadWrite {
                    error: e.to_string(),
                });
                return;
            }
        };
        let Some(replica_cursor) = self.slots[node].node.as_ref().map(|n| n.replica().cursor())
        else {
            return;
        };
        for service in names {
            let start = replica_cursor.only(&service);
            let mut puts = Vec::with_capacity(2 * ids.len());
            for id in &ids {
                puts.push(Put::Webhook {
                    id: id.clone(),
                    value: Some(webhook.clone()),
                });
                puts.push(Put::WebhookProgress {
                    id: id.clone(),
                    value: Some(WebhookProgress {
                        cursor: start.encode(),
                        delivered: 0,
                        coalesced: 0,
                        by_node: me.clone(),
                        at_ms: now_ms,
                        maintenance_told_ms: now_ms,
                    }),
                });
            }
            self.out.webhooks.started.push((service.clone(), start));
            self.submit(node, service, RecordOp::Puts(puts));
        }
    }

    /// Every live node looks at its assignments and starts what is due.
    pub(crate) fn webhook_tick(&mut self) {
        self.schedule(self.now_us + TICK_US, Ev::WebhookTick);
        for node in 0..self.slots.len() {
            self.webhook_step(node);
        }
    }

    /// A delivery completed, or its sender crashed meanwhile.
    pub(crate) fn webhook_done(&mut self, node: usize, incarnation: u32, pair: PairKey) {
        if self.slots[node].node.is_none() || self.slots[node].incarnation != incarnation {
            // A crash cut it: `webhook_crashed` counted it.
            return;
        }
        let senders = &mut self.slots[node].senders;
        let Some(state) = senders
            .get_mut(&pair)
            .filter(|s| s.incarnation == incarnation)
        else {
            return;
        };
        let Some((delivery, after)) = state.in_flight.take() else {
            return;
        };
        state.held.extend(delivery);
        state.position = after.clone();
        state.delivered += 1;
        let delivered = state.delivered;
        // A cursor names whole changes: progress between two transitions of one change would
        // make a successor skip the rest of it.
        let same_change = state
            .queue
            .front()
            .is_some_and(|(_, next)| next.heads_of(&pair.1) == after.heads_of(&pair.1));
        if same_change {
            self.out.webhooks.progress_held += 1;
        } else {
            state.last_submitted = state.held.pop();
            state.held.clear();
            self.write_progress(node, &pair, &after, delivered);
        }
        if self.sends(node, &pair) {
            self.start_next(node, pair);
        } else {
            self.slots[node].senders.remove(&pair);
        }
    }

    /// `node` crashes now: every delivery of its senders that no applied progress covers was
    /// in flight (the one under way, those held for the rest of a change, and the last one
    /// when its progress write still waits for the driver). Called before the crash drops
    /// the pending writes.
    pub(crate) fn webhook_crashed(&mut self, node: usize) {
        let slot = &mut self.slots[node];
        let senders = std::mem::take(&mut slot.senders);
        for ((k, service), state) in senders {
            let pending = slot.pending_writes.iter().any(|w| match &w.write {
                LocalWrite::Record {
                    service: s,
                    op: RecordOp::Put(Put::WebhookProgress { id, .. }),
                } => s == &service && id.as_str() == subscription_id(k),
                _ => false,
            });
            let mut cut: Vec<usize> = state.held;
            cut.extend(state.in_flight.and_then(|(d, _)| d));
            if pending {
                cut.extend(state.last_submitted);
            }
            for d in cut {
                self.out.webhooks.interrupt(d);
            }
        }
    }

    /// One node's tick: drop the pairs it no longer sends, take up new ones, start what is due.
    fn webhook_step(&mut self, node: usize) {
        let incarnation = self.slots[node].incarnation;
        let Some(n) = self.slots[node].node.as_ref() else {
            return;
        };
        let mut assigned: BTreeMap<PairKey, Option<WebhookProgress>> = BTreeMap::new();
        for a in webhooks::assignments(n) {
            if let Some(k) = (0..SUBSCRIPTIONS).find(|&k| subscription_id(k) == a.id.as_str()) {
                assigned.insert((k, a.service), a.progress);
            }
        }
        self.slots[node].senders.retain(|pair, s| {
            s.incarnation == incarnation && (s.in_flight.is_some() || assigned.contains_key(pair))
        });
        for (pair, progress) in assigned {
            let senders = &mut self.slots[node].senders;
            if !senders.contains_key(&pair) {
                let Some(position) = progress.and_then(|p| {
                    Cursor::decode(&p.cursor)
                        .ok()
                        .map(|c| (c.only(&pair.1), p.delivered))
                }) else {
                    continue;
                };
                self.out.webhooks.sender_starts += 1;
                senders.insert(
                    pair.clone(),
                    SenderState {
                        incarnation,
                        position: position.0,
                        queue: VecDeque::new(),
                        in_flight: None,
                        held: Vec::new(),
                        last_submitted: None,
                        delivered: position.1,
                    },
                );
            }
            self.start_next(node, pair);
        }
    }

    /// Starts the next delivery of `pair` on `node`, unless one is under way or none is due.
    fn start_next(&mut self, node: usize, pair: PairKey) {
        let slot = &mut self.slots[node];
        let Some(n) = slot.node.as_ref() else {
            return;
        };
        let replica = n.replica();
        let Some(state) = slot.senders.get_mut(&pair) else {
            return;
        };
        if state.in_flight.is_some() {
            return;
        }
        if state.queue.is_empty() {
            let cursor = webhooks::resume_cursor(&replica.cursor(), &pair.1, &state.position);
            let Some(after) = replica.transitions_since(&cursor, Delivery::Every) else {
                return;
            };
            if after.is_empty() {
                // Nothing after it but changes that tell nothing (progress writes): move to
                // the heads, so that the next look does not walk them again.
                state.position = replica.cursor().only(&pair.1);
                return;
            }
            state.queue = after
                .into_iter()
                .map(|(t, c)| (t.id, c.only(&pair.1)))
                .collect();
        }
        // Unnamed transitions (never expected here) are passed over; bounded by the queue.
        let next = loop {
            match state.queue.pop_front() {
                None => return,
                Some((None, after)) => {
                    state.position = after;
                    self.out.webhooks.unnamed += 1;
                }
                Some((Some(id), after)) => break (id, after),
            }
        };
        let (id, after) = next;
        let incarnation = state.incarnation;
        let concurrent = self.slots.iter().enumerate().any(|(o, slot)| {
            o != node
                && slot.node.is_some()
                && slot
                    .senders
                    .get(&pair)
                    .is_some_and(|s| s.incarnation == slot.incarnation)
        });
        let delivery = self.out.webhooks.record(
            &id,
            Delivered {
                subscription: pair.0,
                service: pair.1.clone(),
                node,
                at_us: self.now_us,
                concurrent,
                crashed: false,
            },
        );
        if let Some(state) = self.slots[node].senders.get_mut(&pair) {
            state.in_flight = Some((delivery, after));
        }
        let duration_us = self.rng.random_range(DELIVERY_US.0..=DELIVERY_US.1);
        self.schedule(
            self.now_us + duration_us,
            Ev::WebhookDone {
                node,
                incarnation,
                pair,
            },
        );
    }

    /// Whether `node` sends `pair` by its view now.
    fn sends(&self, node: usize, pair: &PairKey) -> bool {
        let Some(n) = self.slots[node].node.as_ref() else {
            return false;
        };
        let members = rendezvous::live_members(n);
        webhooks::sender_of(&members, &subscription_id(pair.0), pair.1.as_str()) == Some(n.id())
    }

    /// Submits the progress record of `pair` at `position` as a local write of `node`.
    fn write_progress(&mut self, node: usize, pair: &PairKey, position: &Cursor, delivered: u64) {
        let Ok(id) = Name::parse("id", &subscription_id(pair.0)) else {
            return;
        };
        let progress = WebhookProgress {
            cursor: position.encode(),
            delivered,
            coalesced: 0,
            by_node: self.members[node].id.clone(),
            at_ms: self.local_ms(node),
            maintenance_told_ms: self.local_ms(node),
        };
        self.out.webhooks.progress_writes += 1;
        let op = RecordOp::Put(Put::WebhookProgress {
            id,
            value: Some(progress),
        });
        self.submit(node, pair.1.clone(), op);
    }

    /// A record write waits in the node's pending list for its next driver iteration.
    fn submit(&mut self, node: usize, service: Name, op: RecordOp) {
        if self.slots[node].node.is_none() {
            return;
        }
        self.slots[node]
            .pending_writes
            .push(PendingWrite::record(LocalWrite::Record { service, op }));
        self.wake(node);
    }
}
