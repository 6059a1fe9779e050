//! Simulated SSE subscribers and the checks on their streams: no duplicate event, no gap
//! (after each batch the subscriber's cells equal the node's), never backwards (each new
//! cursor covers the old one), live and across reconnects with a cursor. What a reconnecting
//! subscriber gets is the core's decision (`Node::resume`), exactly as in the node driver.

use std::collections::BTreeMap;

use rand::Rng;
use statusmesh_crdt::doc::CellRead;
use statusmesh_crdt::epoch::Lineage;
use statusmesh_crdt::{Cursor, Delivery, DocEvent, Name, Observation, Replica, StatusEvent};
use statusmesh_gossip::Resume;

use crate::checker::cursor::{covers, lineages_of};
use crate::checker::history::StreamHistory;
use crate::checker::{cursor_of, normalized};
use crate::clock;
use crate::failure::{DuplicateEvent, Failure, Moment};
use crate::sim::{Ev, Sim};

/// Transition identities a subscriber remembers for the duplicate check; beyond, later ones
/// are checked by value only (a bound on the checker's memory, far above any fixed-seed run).
const TRANSITIONS_SEEN_MAX: usize = 1_000_000;

/// A cell's key: service, component, region.
pub(crate) type CellKey = (Name, Name, Name);
type CellConflicts = BTreeMap<CellKey, Vec<Observation>>;

/// What a subscriber holds of one cell: the event's value without its key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Cell {
    observation: Observation,
    conflict: bool,
    origin_node: Option<String>,
    changed_at_ms: Option<u64>,
}

/// One subscriber: the node it listens to, its cursor, and the cells its events built.
#[derive(Debug)]
pub(crate) struct Subscriber {
    /// The node it listens to, or waits on.
    pub(crate) node: usize,
    /// Told to wait by the node's core: it has no stream until the core answers otherwise.
    waiting: Option<Waiting>,
    cursor: Cursor,
    /// The epoch lineage of each service when the cursor was taken.
    lineages: BTreeMap<Name, Lineage>,
    cells: BTreeMap<CellKey, Cell>,
    /// The losing values of each cell at the last check (events do not carry them).
    conflicts: CellConflicts,
    /// Service and identity of the transitions it was told (at most
    /// [`TRANSITIONS_SEEN_MAX`]).
    /// With the node that told each.
    transitions_seen: BTreeMap<(Name, String), usize>,
    /// What its current stream told of each record, for the history check.
    pub(crate) history: StreamHistory,
}

/// An event as the node reported it to its subscribers (a status or a record event).
#[derive(Debug)]
pub(crate) struct Delivered {
    pub(crate) event: DocEvent,
    /// Where a subscriber that has seen the event resumes.
    pub(crate) cursor: Cursor,
    /// The transition's identity, the same on every node; `None` for a coalesced event.
    pub(crate) transition: Option<String>,
    /// The event says it folds transitions.
    pub(crate) coalesced: bool,
}

impl Subscriber {
    /// A subscriber of `node` that has seen nothing yet.
    pub(crate) fn new(node: usize) -> Self {
        Self {
            node,
            waiting: None,
            cursor: Cursor::default(),
            lineages: BTreeMap::new(),
            cells: BTreeMap::new(),
            conflicts: BTreeMap::new(),
            transitions_seen: BTreeMap::new(),
            history: StreamHistory::new(0),
        }
    }

    /// Told to wait by its node's core (it has no stream yet).
    pub(crate) fn is_waiting(&self) -> bool {
        self.waiting.is_some()
    }

    /// Whether it was told transition `id` of `service` in its current stream.
    pub(crate) fn was_told(&self, service: &Name, id: &str) -> bool {
        self.transitions_seen
            .contains_key(&(service.clone(), id.to_owned()))
    }

    /// Whether every transition it was told is remembered (below [`TRANSITIONS_SEEN_MAX`]).
    pub(crate) fn remembers_every_transition(&self) -> bool {
        self.transitions_seen.len() < TRANSITIONS_SEEN_MAX
    }
}

/// A subscriber the core told to wait.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    /// When it first asked this node, in the node's clock.
    since_ms: u64,
    /// When to ask again at the latest, in the node's clock.
    retry_at_ms: u64,
}

impl Sim {
    /// Feeds a node's status events to its subscribers and checks each stream: no duplicate,
    /// no gap (the subscriber's cells equal the node's after the batch), never backwards
    /// (the new cursor covers the old).
    pub(crate) fn check_subscribers(&mut self, node: usize, events: Vec<Delivered>) {
        for s in 0..self.subscribers.len() {
            let sub = &self.subscribers[s];
            if sub.node != node || sub.waiting.is_some() || self.out.failure.is_some() {
                continue;
            }
            let Some(n) = self.slots[node].node.as_ref() else {
                continue;
            };
            let node_cursor = cursor_of(n.replica());
            if events.is_empty() && node_cursor == self.subscribers[s].cursor {
                continue;
            }
            for delivered in &events {
                let transition = delivered.transition.as_deref();
                let coalesced = delivered.coalesced;
                if let Err(duplicate) =
                    self.feed(s, node, &delivered.event, transition, coalesced, false)
                {
                    self.fail(Failure::DuplicateEvent {
                        subscriber: s,
                        node: self.members[node].id.clone(),
                        resuming: false,
                        duplicate,
                    });
                    return;
                }
                self.out.subscriber_events += 1;
            }
            let new_cursor = events
                .last()
                .map(|d| normalized(&d.cursor))
                .unwrap_or(node_cursor.clone());
            if new_cursor != node_cursor {
                // One call may change heads after its last event without changing a value
                // (a second document rolling over in the same tick): resuming from the last
                // event's cursor must then miss nothing.
                let missed = self.slots[node]
                    .node
                    .as_ref()
                    .and_then(|n| n.replica().transitions_since(&new_cursor, Delivery::Every));
                if missed.as_ref().is_none_or(|m| !m.is_empty()) {
                    let services: Vec<String> = node_cursor
                        .iter()
                        .filter(|(service, heads)| new_cursor.heads_of(service) != *heads)
                        .map(|(service, _)| service.to_string())
                        .collect();
                    self.fail(Failure::EventCursorBehind {
                        subscriber: s,
                        node: self.members[node].id.clone(),
                        services,
                        missed: missed.map(|m| m.len()),
                    });
                    return;
                }
            }
            self.advance_cursor(s, node, node_cursor);
            self.check_subscriber_state(s, node, Moment::AfterEventBatch);
        }
    }

    /// Checks that subscriber `s` holds exactly the cells of `node`.
    pub(crate) fn check_subscriber_state(&mut self, s: usize, node: usize, moment: Moment) {
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
                if held.conflict != value.conflict
                    && (&held.observation, &held.origin_node, &held.changed_at_ms)
                        == (&value.observation, &value.origin_node, &value.changed_at_ms)
                {
                    held.conflict = value.conflict;
                    self.out.conflict_flags_missed += 1;
                }
            }
        }
        let sub = &self.subscribers[s];
        if sub.cells != truth {
            let cell = truth
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
            self.fail(Failure::SubscriberGap {
                subscriber: s,
                node: self.members[node].id.clone(),
                moment,
                cell,
            });
        }
    }

    /// The subscriber reconnects with its cursor (through its text form, as `Last-Event-ID`)
    /// to another live node, whose core decides what it gets ([`Sim::resume_subscriber`]).
    pub(crate) fn reconnect(&mut self, s: usize, from: usize) {
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
                self.fail(Failure::CursorUndecodable {
                    subscriber: s,
                    error: e.to_string(),
                });
                return;
            }
        };
        if cursor != self.subscribers[s].cursor {
            self.fail(Failure::CursorRoundTrip { subscriber: s });
            return;
        }
        let target = live[self.rng.random_range(0..live.len())];
        let since_ms = self.local_ms(target);
        let sub = &mut self.subscribers[s];
        sub.node = target;
        sub.waiting = None;
        self.resume_subscriber(s, since_ms);
    }

    /// Asks the core of the subscriber's node what it gets after its cursor, as the node
    /// driver does: events (fed and checked), a snapshot (taken), or wait (asked again after
    /// the node's next iteration, and at `retry_at_ms` at the latest). `since_ms` is when it
    /// first asked this node.
    pub(crate) fn resume_subscriber(&mut self, s: usize, since_ms: u64) {
        let target = self.subscribers[s].node;
        let now_ms = self.local_ms(target);
        let waited = self.subscribers[s].waiting.is_some();
        let Some(n) = self.slots[target].node.as_mut() else {
            return;
        };
        let answer = n.resume(
            now_ms,
            Some(&self.subscribers[s].cursor),
            since_ms.min(now_ms),
            Delivery::Every,
        );
        match answer {
            Resume::Events(events) => {
                let target_cursor = cursor_of(n.replica());
                self.subscribers[s].waiting = None;
                self.out.driver.resumes_events += 1;
                self.out.driver.waits_then_events += u64::from(waited);
                for (transition, _) in &events {
                    let id = transition.id.as_deref();
                    let coalesced = transition.coalesced.is_some();
                    if let Err(duplicate) =
                        self.feed(s, target, &transition.event, id, coalesced, true)
                    {
                        self.fail(Failure::DuplicateEvent {
                            subscriber: s,
                            node: self.members[target].id.clone(),
                            resuming: true,
                            duplicate,
                        });
                        return;
                    }
                    self.out.subscriber_events += 1;
                }
                self.advance_cursor(s, target, target_cursor);
                self.check_subscriber_state(s, target, Moment::AfterResume);
            }
            Resume::Snapshot => {
                self.out.snapshots += 1;
                self.out.driver.waits_then_snapshot += u64::from(waited);
                let (cells, conflicts) = node_cells(n.replica());
                let sub = &mut self.subscribers[s];
                sub.waiting = None;
                // A snapshot starts a new stream: it may lack what the subscriber saw before
                // (the node never got it), which is then news again when it arrives.
                sub.transitions_seen.clear();
                sub.history = StreamHistory::new(self.now_us);
                (sub.cells, sub.conflicts) = (cells, conflicts);
                sub.cursor = cursor_of(n.replica());
                sub.lineages = lineages_of(n.replica());
            }
            Resume::Wait { retry_at_ms } => {
                let sub = &mut self.subscribers[s];
                let rescheduled = sub.waiting.is_none_or(|w| w.retry_at_ms != retry_at_ms);
                sub.waiting = Some(Waiting {
                    since_ms: since_ms.min(now_ms),
                    retry_at_ms,
                });
                self.out.driver.resumes_wait += u64::from(!waited);
                if rescheduled {
                    let slot = &self.slots[target];
                    let at_us = clock::at_us(retry_at_ms, slot.skew_ms);
                    let incarnation = slot.incarnation;
                    self.schedule(
                        at_us,
                        Ev::ResumeRetry {
                            subscriber: s,
                            node: target,
                            incarnation,
                            retry_at_ms,
                        },
                    );
                }
            }
        }
        // The first wait asked the node's peers for what it lacks: those frames leave now.
        self.after_call(target);
    }

    /// After an iteration of `node`: asks its core again for every subscriber waiting there.
    pub(crate) fn answer_waiting_resumes(&mut self, node: usize) {
        for s in 0..self.subscribers.len() {
            let sub = &self.subscribers[s];
            if sub.node != node || self.out.failure.is_some() {
                continue;
            }
            if let Some(waiting) = sub.waiting {
                self.resume_subscriber(s, waiting.since_ms);
            }
        }
    }

    /// A waiting subscriber's `retry_at_ms` came: asks again, unless it is no longer waiting
    /// on that incarnation for that deadline.
    pub(crate) fn resume_retry(
        &mut self,
        s: usize,
        node: usize,
        incarnation: u32,
        retry_at_ms: u64,
    ) {
        let sub = &self.subscribers[s];
        let Some(waiting) = sub.waiting else {
            return;
        };
        if sub.node != node
            || waiting.retry_at_ms != retry_at_ms
            || self.slots[node].incarnation != incarnation
        {
            return;
        }
        self.resume_subscriber(s, waiting.since_ms);
    }

    /// Applies one event to a subscriber. An event of a transition the subscriber was told
    /// already is a duplicate. An event that repeats the cell's value is news when it is
    /// another transition (a losing concurrent write re-announces the winner); without a
    /// transition identity (a coalesced event, a state correction) it is a duplicate, unless
    /// the node's cell has other losing concurrent values than at the last check. Record
    /// events (incidents, maintenance, overrides) are checked for duplicates only.
    fn feed(
        &mut self,
        s: usize,
        node: usize,
        event: &DocEvent,
        transition: Option<&str>,
        coalesced: bool,
        resuming: bool,
    ) -> Result<(), DuplicateEvent> {
        if let Some(id) = transition {
            // An identity names a transition within its service's document (`<writer>-<n>`
            // counts the writer's changes to that document), so it is unique per service.
            let key = (event.service().clone(), id.to_owned());
            let seen = &mut self.subscribers[s].transitions_seen;
            if let Some(&first) = seen.get(&key) {
                if !resuming && first != node {
                    // A write of a closed epoch that this node learned only after adopting
                    // the next base: told live with its identity, which the subscriber had
                    // from the node it followed before (see `ServiceDoc::take_older`).
                    self.out.late_retold += 1;
                    return Ok(());
                }
                let cell = match event {
                    DocEvent::Status(e) => format!("{}/{}/{}", e.service, e.component, e.region),
                    other => format!("a record of {}", other.service()),
                };
                return Err(DuplicateEvent {
                    cell,
                    value: format!("transition {id} again"),
                });
            }
            if seen.len() < TRANSITIONS_SEEN_MAX {
                seen.insert(key, node);
            }
        }
        let now_us = self.now_us;
        if let Err(finding) = self.subscribers[s].history.tell(
            now_us,
            &self.members[node].id,
            event,
            transition,
            coalesced,
        ) {
            let failure = Failure::History {
                subscriber: s,
                node: self.members[node].id.clone(),
                finding,
            };
            self.fail(failure);
            return Ok(());
        }
        let DocEvent::Status(event) = event else {
            return Ok(());
        };
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
        if transition.is_none() && now == before {
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
        if let Err(regression) = covers(n.replica(), &sub.cursor, &sub.lineages, &new_cursor) {
            self.fail(Failure::WentBackwards {
                subscriber: s,
                node: self.members[node].id.clone(),
                regression,
            });
            return;
        }
        let lineages = lineages_of(n.replica());
        let sub = &mut self.subscribers[s];
        sub.cursor = new_cursor;
        sub.lineages = lineages;
    }
}

/// Applies `event` to `cells`; an event that repeats the cell's value is a duplicate.
pub(crate) fn apply_event(
    cells: &mut BTreeMap<CellKey, Cell>,
    event: &StatusEvent,
) -> Result<(), DuplicateEvent> {
    let key = (
        event.service.clone(),
        event.component.clone(),
        event.region.clone(),
    );
    let value = event.observation.clone().map(|observation| Cell {
        observation,
        conflict: event.conflict,
        origin_node: event.origin_node.clone(),
        changed_at_ms: event.changed_at_ms,
    });
    if cells.get(&key) == value.as_ref() {
        return Err(DuplicateEvent {
            cell: format!("{}/{}/{}", key.0, key.1, key.2),
            value: describe(value.as_ref()),
        });
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

fn describe(cell: Option<&Cell>) -> String {
    match cell {
        None => "nothing".to_owned(),
        Some(cell) => format!(
            "{} by {} at {} (origin {}, changed at {}{})",
            cell.observation.state,
            cell.observation.reporter,
            cell.observation.observed_at_ms,
            cell.origin_node.as_deref().unwrap_or("?"),
            cell.changed_at_ms.map_or("?".to_owned(), |t| t.to_string()),
            if cell.conflict { ", conflict" } else { "" }
        ),
    }
}

/// Every cell of a replica as a subscriber should hold it, and the losing values of each.
pub(crate) fn node_cells(replica: &Replica) -> (BTreeMap<CellKey, Cell>, CellConflicts) {
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
            let conflict = !conflicts.is_empty();
            conflict_counts.insert(key.clone(), conflicts);
            cells.insert(
                key,
                Cell {
                    observation: value,
                    conflict,
                    origin_node,
                    changed_at_ms,
                },
            );
        }
    }
    (cells, conflict_counts)
}
