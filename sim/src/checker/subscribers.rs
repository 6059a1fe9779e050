//! Simulated SSE subscribers and the checks on their streams: no duplicate event, no gap
//! (after each batch the subscriber's cells equal the node's), never backwards (each new
//! cursor covers the old one), live and across reconnects with a cursor.

use std::collections::BTreeMap;

use rand::Rng;
use statusmesh_crdt::doc::CellRead;
use statusmesh_crdt::epoch::Lineage;
use statusmesh_crdt::{Cursor, Name, Observation, Replica, StatusEvent};

use crate::checker::cursor::{covers, lineages_of};
use crate::checker::{cursor_of, normalized};
use crate::failure::{DuplicateEvent, Failure, Moment};
use crate::sim::Sim;

/// Nodes a subscriber tries before it accepts a snapshot on reconnect.
const RECONNECT_ATTEMPTS: usize = 3;

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
    pub(crate) node: usize,
    cursor: Cursor,
    /// The epoch lineage of each service when the cursor was taken.
    lineages: BTreeMap<Name, Lineage>,
    cells: BTreeMap<CellKey, Cell>,
    /// The losing values of each cell at the last check (events do not carry them).
    conflicts: CellConflicts,
}

impl Subscriber {
    /// A subscriber of `node` that has seen nothing yet.
    pub(crate) fn new(node: usize) -> Self {
        Self {
            node,
            cursor: Cursor::default(),
            lineages: BTreeMap::new(),
            cells: BTreeMap::new(),
            conflicts: BTreeMap::new(),
        }
    }
}

impl Sim {
    /// Feeds a node's status events to its subscribers and checks each stream: no duplicate,
    /// no gap (the subscriber's cells equal the node's after the batch), never backwards
    /// (the new cursor covers the old).
    pub(crate) fn check_subscribers(&mut self, node: usize, events: Vec<(StatusEvent, Cursor)>) {
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
                if let Err(duplicate) = self.feed(s, node, event) {
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
    /// to another live node; after a few nodes that cannot tell, it accepts a snapshot.
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
                if let Err(duplicate) = self.feed(s, target, event) {
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

    /// Applies one event to a subscriber. An event that repeats the cell's value is a
    /// duplicate, unless the node's cell has other losing concurrent values than at the last
    /// check: then it re-announces the winner, which is news (the conflict changed), not a
    /// repeat.
    fn feed(&mut self, s: usize, node: usize, event: &StatusEvent) -> Result<(), DuplicateEvent> {
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
