//! Transitions: every change of a record, in causal order, one event each, with a stable
//! identity and the heads after it, so that a client told of it can resume exactly there.
//!
//! A transition is the record as it reads right after one change (the value that change wrote,
//! or the winner of a concurrent write with `conflict` set). The same change gives the same
//! transition on every node: its identity names the write (its writer's incarnation and its
//! number among that writer's writes), which a write keeps when it is carried into a new epoch.
//!
//! Coalescing is never silent. When more transitions are due than a client may be sent at
//! once ([`TRANSITIONS_MAX`]), or it asked for state only, each record is sent once with its
//! latest value and the number of transitions folded into it; so is the difference a
//! rollover makes to a node that learned of writes only through the new epoch's base.

use std::collections::{BTreeMap, BTreeSet};

use automerge::legacy::Key;
use automerge::{Change, ChangeHash, ReadDoc};
use serde::Serialize;

use super::events::{events_for_keys_in, DocEvent};
use super::reads::Source;
use super::rollover::write_ids;
use super::schema::{incident_key, RecordKey};
use super::ServiceDoc;
use crate::cursor::Within;
use crate::epoch::{ActorKind, WriteId};
use crate::model::Name;

/// Most transitions one resume replays one by one; beyond it the client gets each record once,
/// coalesced (a status page that was away for a day does not need 100,000 events, and
/// replaying that many costs the node a historical read each).
pub const TRANSITIONS_MAX: usize = 5_000;

/// Why events were folded into one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CoalesceReason {
    /// More transitions were due than [`TRANSITIONS_MAX`] (a long absence, a slow reader).
    Backlog,
    /// The client asked for state only (`?coalesce=state`).
    Requested,
    /// The document rolled over and this node learned of the writes only through the base.
    Rollover,
    /// A write of the closed epoch that this node learned of only after later values of its
    /// record (the base covered it): told once with its identity, folded into the record as
    /// it reads now, and so out of its writer's order.
    Late,
}

/// How many transitions one event stands for, when more than its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Coalesced {
    /// Transitions folded into the event (at least 1).
    pub count: u64,
    pub reason: CoalesceReason,
}

/// One event a client is told, with what it needs to order, deduplicate and resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub event: DocEvent,
    /// `<writer>-<n>:<service>/<record key>`: the same on every node for the same transition; `None` for
    /// an event that is no single transition (coalesced, or a state correction).
    pub id: Option<String>,
    /// Set when the event folds several transitions (or an unknown number) into one.
    pub coalesced: Option<Coalesced>,
    /// The document's epoch and heads once the client has this event.
    pub epoch: u32,
    pub heads: Vec<ChangeHash>,
    /// On every transition of a change that writes several records but its last: `heads`
    /// are those before the change, and this says how much of it the client then has.
    pub within: Option<Within>,
}

/// How a client wants the transitions after its cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delivery {
    /// Every transition, coalesced only beyond [`TRANSITIONS_MAX`].
    #[default]
    Every,
    /// The latest value of each record that changed.
    StateOnly,
    /// Every transition, never coalesced: at most [`TRANSITIONS_MAX`] of a document per
    /// answer, the first ones, and the asker asks again from the last. For a subscriber that
    /// keeps reading but fell behind the live feed (a burst larger than the node's ring).
    Pages,
}

/// A change after a cursor and the records it wrote.
struct Step {
    change: Change,
    keys: BTreeSet<String>,
    /// What a write left out as known (a restatement) writes: told nothing, but it moves
    /// those records after the steps before it.
    restated: BTreeSet<String>,
}

impl ServiceDoc {
    /// Every transition after `before` (heads of the current epoch, or empty for the whole
    /// document), in causal order, one per record a change wrote. The base of the epoch is
    /// no transition (it restates). `None` when this document does not hold `before`.
    /// `within`: the client has part of the change right after `before` (see [`Within`]).
    pub fn transitions_after(
        &self,
        before: &[ChangeHash],
        within: Option<Within>,
        delivery: Delivery,
    ) -> Option<Vec<Transition>> {
        if !self.has_all(before) {
            return None;
        }
        let skip = self.told_before(before);
        let steps = steps_after(self.source(), before, &skip);
        // A partial page is followed by another ask: corrections come with the last page.
        let partial = delivery == Delivery::Pages && count(&steps) > TRANSITIONS_MAX;
        if skip.is_empty() || partial {
            return Some(self.deliver(self.source(), (before, within), steps, delivery));
        }
        // Restated copies tell nothing, but a carried copy may resolve a record otherwise on
        // top of the base than the client holds it: then one correction, as after a rollover.
        let restated: BTreeSet<String> = steps
            .iter()
            .flat_map(|s| s.restated.iter().map(|k| record_of(k)))
            .collect();
        let mut out = self.deliver(self.source(), (before, within), steps, delivery);
        let told: BTreeSet<String> = out.iter().map(|t| t.event.record_key()).collect();
        let untold: BTreeSet<String> = restated.difference(&told).cloned().collect();
        if !untold.is_empty() {
            let held: BTreeMap<String, DocEvent> =
                events_for_keys_in(self.source(), &untold, Some(before))
                    .into_iter()
                    .map(|e| (e.record_key(), e))
                    .collect();
            let now = events_for_keys_in(self.source(), &untold, None);
            let changed: Vec<DocEvent> = now
                .into_iter()
                .filter(|e| {
                    held.get(&e.record_key())
                        .is_none_or(|h| !same_record_state(h, e))
                })
                .collect();
            out.extend(self.coalesced_now(changed, CoalesceReason::Rollover));
        }
        self.settle(&mut out);
        Some(out)
    }

    /// Writes a client at `before` (heads of this epoch) was told already, when a change
    /// after it is a carried copy: a copy of a write of the previous epoch, of a replaced
    /// document, or of one this epoch holds before `before` restates, and is no transition.
    /// Empty (and free) when no carried copy follows `before`, the common case.
    fn told_before(&self, before: &[ChangeHash]) -> BTreeSet<WriteId> {
        let after = self.doc.get_changes_meta(before);
        let carried = |actor: &automerge::ActorId| {
            matches!(ActorKind::parse(actor), Some(ActorKind::Carried { .. }))
        };
        if !after.iter().any(|m| carried(&m.actor)) {
            return BTreeSet::new();
        }
        let later: BTreeSet<ChangeHash> = after.iter().map(|m| m.hash).collect();
        let mut told: BTreeSet<WriteId> = self
            .doc
            .get_changes_meta(&[])
            .into_iter()
            .filter(|m| !later.contains(&m.hash))
            .filter_map(|m| ActorKind::parse(&m.actor)?.write_id(m.seq))
            .collect();
        if let Some(prev) = self.prev_source() {
            told.extend(write_ids(prev.doc));
        }
        told.extend(self.replaced_writes.keys().copied());
        told
    }

    /// The transitions a client at `before`, heads of the previous epoch, has not seen: those
    /// of the previous epoch's document after `before`, then those of the current epoch that
    /// are not restatements of writes the client has (a carried write keeps its identity).
    /// `None` when the previous epoch's document does not hold `before`.
    pub fn transitions_since_prev(
        &self,
        before: &[ChangeHash],
        within: Option<Within>,
        delivery: Delivery,
    ) -> Option<Vec<Transition>> {
        let prev = self.prev_source()?;
        if !self.prev_has_all(before) {
            return None;
        }
        let prev_steps = steps_after(prev, before, &BTreeSet::new());
        // Writes the client holds or is about to be told of: their carried copies in this
        // epoch are no new transitions.
        let mut known: BTreeSet<WriteId> = write_ids(prev.doc).collect();
        known.extend(prev_steps.iter().filter_map(|s| write_of(&s.change)));
        let current_steps = steps_after(self.source(), &[], &known);
        let total = count(&prev_steps) + count(&current_steps);
        let paged = delivery == Delivery::Pages && total > TRANSITIONS_MAX;
        if paged && count(&prev_steps) > 0 {
            // A page that ends in the closed epoch; the next ask starts from its end.
            return Some(replay(prev, (before, within), prev_steps, TRANSITIONS_MAX));
        }
        if !paged && (delivery == Delivery::StateOnly || total > TRANSITIONS_MAX) {
            let mut steps = prev_steps;
            steps.extend(current_steps);
            return Some(self.coalesce(&steps, (before, within), delivery));
        }
        let mut out = replay(prev, (before, within), prev_steps, usize::MAX);
        self.tell_folded_by_base(&mut out);
        let room = TRANSITIONS_MAX.saturating_sub(out.len()).max(1);
        let partial = paged && count(&current_steps) > room;
        let limit = if paged { room } else { usize::MAX };
        out.extend(replay(self.source(), (&[], None), current_steps, limit));
        // A partial page's records may change again after it: the correction waits for the
        // page that ends at the heads.
        if !partial {
            self.settle(&mut out);
        }
        Some(out)
    }

    /// The transitions an apply made visible, from the heads `before` it: every change of a
    /// record that entered the document (a batch, changes released from holding, writes
    /// carried here), one event each. After a rollover, the previous epoch's changes that
    /// came with it and the writes new here, then each record the new base changed otherwise
    /// (`changed_keys`), coalesced for the rollover.
    pub fn transitions_of_apply(
        &self,
        before: &[ChangeHash],
        changed_keys: &BTreeSet<String>,
        rolled_over: bool,
        late: &[(WriteId, BTreeSet<String>)],
    ) -> Vec<Transition> {
        // A document that rolled over (even one that was empty) holds a new base: what it
        // restates is told below, never skipped as a base.
        let mut out = if !rolled_over && self.has_all(before) {
            self.transitions_after(before, None, Delivery::Every)
                .unwrap_or_default()
        } else {
            let mut out = self
                .transitions_since_prev(before, None, Delivery::Every)
                .unwrap_or_default();
            let told: BTreeSet<String> = out.iter().map(|t| t.event.record_key()).collect();
            let rest: BTreeSet<String> = changed_keys
                .iter()
                .filter(|key| !told.contains(&record_of(key)))
                .cloned()
                .collect();
            let events = self.events_for_keys(&rest, None);
            out.extend(self.coalesced_now(events, CoalesceReason::Rollover));
            out
        };
        self.tell_late(late, &mut out);
        out
    }

    /// Records whose value the base restates otherwise than this node's previous epoch holds
    /// them (after `out`, its replay): the base folded writes this node never held (made in
    /// an epoch it skipped, or not yet come here). Each is told once as the base has it,
    /// coalesced for the rollover, with the base as its heads so that a client cut off after
    /// it is replayed the writes carried on top.
    fn tell_folded_by_base(&self, out: &mut Vec<Transition>) {
        let (Some(prev), Some(base)) = (self.prev_source(), self.base) else {
            return;
        };
        let mut records = record_keys_of(prev.doc, None);
        records.extend(record_keys_of(self.source().doc, Some(&[base])));
        let held: BTreeMap<String, DocEvent> = events_for_keys_in(prev, &records, None)
            .into_iter()
            .map(|e| (e.record_key(), e))
            .collect();
        for event in events_for_keys_in(self.source(), &records, Some(&[base])) {
            let folded = held
                .get(&event.record_key())
                .is_none_or(|h| !same_record_state(h, &event));
            if folded {
                out.push(Transition {
                    event,
                    id: None,
                    coalesced: Some(Coalesced {
                        count: 1,
                        reason: CoalesceReason::Rollover,
                    }),
                    epoch: self.epoch(),
                    heads: vec![base],
                    within: None,
                });
            }
        }
    }

    /// Writes of the previous epoch that its base already covers, learned here only now:
    /// each record one wrote is told with the write's identity and the record as it reads
    /// now (the base restated it without that write), marked [`CoalesceReason::Late`],
    /// unless a replay above told it.
    fn tell_late(&self, late: &[(WriteId, BTreeSet<String>)], out: &mut Vec<Transition>) {
        if late.is_empty() {
            return;
        }
        let told: BTreeSet<String> = out.iter().filter_map(|t| t.id.clone()).collect();
        let heads = self.heads();
        for (write, keys) in late {
            let records: BTreeSet<String> = keys
                .iter()
                .filter(|k| RecordKey::parse(k).is_some())
                .map(|k| record_of(k))
                .collect();
            for event in events_for_keys_in(self.source(), &records, None) {
                let id = transition_id_of(write, &event);
                if told.contains(&id) {
                    continue;
                }
                out.push(Transition {
                    event,
                    id: Some(id),
                    coalesced: Some(Coalesced {
                        count: 1,
                        reason: CoalesceReason::Late,
                    }),
                    epoch: self.epoch(),
                    heads: heads.clone(),
                    within: None,
                });
            }
        }
    }

    /// The transitions of a local write just made: one per record the change `hash` wrote,
    /// with the events the write computed (cheaper than reading them back).
    /// In record order, as every node replays the change, so that a cursor within it means
    /// the same everywhere.
    pub fn transitions_of_local(
        &self,
        hash: &ChangeHash,
        mut events: Vec<DocEvent>,
    ) -> Vec<Transition> {
        let write = self.write_of(hash);
        events.sort_by_cached_key(DocEvent::record_key);
        // A local change depends on every head it was made on: after it, it is the one head.
        let before: Vec<ChangeHash> = self
            .doc
            .get_change_by_hash(hash)
            .map(|c| c.deps().to_vec())
            .unwrap_or_default();
        let total = events.len();
        events
            .into_iter()
            .enumerate()
            .map(|(i, event)| {
                let (heads, within) = within_change(*hash, i, total, &before, &[*hash]);
                Transition {
                    id: write.map(|w| transition_id_of(&w, &event)),
                    event,
                    coalesced: None,
                    epoch: self.epoch(),
                    heads,
                    within,
                }
            })
            .collect()
    }

    /// Events that are the difference of two states, not transitions (a rollover): each marked
    /// as coalesced for `reason`, at the current heads.
    pub fn coalesced_now(&self, events: Vec<DocEvent>, reason: CoalesceReason) -> Vec<Transition> {
        let heads = self.heads();
        events
            .into_iter()
            .map(|event| Transition {
                event,
                id: None,
                coalesced: Some(Coalesced { count: 1, reason }),
                epoch: self.epoch(),
                heads: heads.clone(),
                within: None,
            })
            .collect()
    }

    fn deliver(
        &self,
        src: Source<'_>,
        from: From<'_>,
        steps: Vec<Step>,
        delivery: Delivery,
    ) -> Vec<Transition> {
        let beyond = count(&steps) > TRANSITIONS_MAX;
        if delivery == Delivery::Pages {
            return replay(src, from, steps, TRANSITIONS_MAX);
        }
        if delivery == Delivery::StateOnly || beyond {
            return self.coalesce(&steps, from, delivery);
        }
        // Within one epoch the last read of each record is its value now: nothing to settle.
        replay(src, from, steps, usize::MAX)
    }

    /// Each record the steps wrote, once, with its value now and how many transitions it
    /// folds. All but the last event keep the client's `before` heads, so that a client cut
    /// off in the middle asks again for the rest; the last carries the current heads.
    fn coalesce(&self, steps: &[Step], from: From<'_>, delivery: Delivery) -> Vec<Transition> {
        let (before, within) = from;
        let reason = match delivery {
            Delivery::StateOnly => CoalesceReason::Requested,
            Delivery::Every | Delivery::Pages => CoalesceReason::Backlog,
        };
        let mut folded: BTreeMap<String, u64> = BTreeMap::new();
        for step in steps {
            let records: BTreeSet<String> = step.keys.iter().map(|k| record_of(k)).collect();
            // What the client has of a change it was cut off in is not folded again.
            let told = within
                .filter(|w| w.change == step.change.hash())
                .map_or(0, |w| w.told as usize);
            for record in records.into_iter().skip(told) {
                *folded.entry(record).or_default() += 1;
            }
        }
        let keys: BTreeSet<String> = steps.iter().flat_map(|s| s.keys.iter().cloned()).collect();
        let events = events_for_keys_in(self.source(), &keys, None);
        let last = events.len().saturating_sub(1);
        let (epoch_before, heads_now) = (self.prev_epoch().unwrap_or(self.epoch()), self.heads());
        let resumes_in_prev = !before.is_empty() && !self.has_all(before);
        events
            .into_iter()
            .enumerate()
            .map(|(i, event)| {
                let count = folded.get(&event.record_key()).copied().unwrap_or(1).max(1);
                let (epoch, heads, within) = if i == last {
                    (self.epoch(), heads_now.clone(), None)
                } else if resumes_in_prev {
                    (epoch_before, before.to_vec(), within)
                } else {
                    (self.epoch(), before.to_vec(), within)
                };
                Transition {
                    event,
                    id: None,
                    coalesced: Some(Coalesced { count, reason }),
                    epoch,
                    heads,
                    within,
                }
            })
            .collect()
    }

    /// Makes the last event of each record agree with the record now, after a replay that
    /// crossed epochs: they differ when the base covered writes this node was never told of
    /// one by one, or a carried write resolved a conflict differently on top of the base. The
    /// correction is one more event, coalesced for the rollover, with no transition identity.
    fn settle(&self, out: &mut Vec<Transition>) {
        let mut last: BTreeMap<String, usize> = BTreeMap::new();
        for (i, t) in out.iter().enumerate() {
            last.insert(t.event.record_key(), i);
        }
        let keys: BTreeSet<String> = last.keys().cloned().collect();
        let heads = self.heads();
        for event in events_for_keys_in(self.source(), &keys, None) {
            let key = event.record_key();
            let stale = last
                .get(&key)
                .is_some_and(|&i| !same_record_state(&out[i].event, &event));
            if stale {
                out.push(Transition {
                    event,
                    id: None,
                    coalesced: Some(Coalesced {
                        count: 1,
                        reason: CoalesceReason::Rollover,
                    }),
                    epoch: self.epoch(),
                    heads: heads.clone(),
                    within: None,
                });
            }
        }
    }
}

/// The changes after `before` in `src` (Automerge's topological order), each with the records
/// it wrote; bases and writes in `skip` left out (the heads still move past them).
fn steps_after(src: Source<'_>, before: &[ChangeHash], skip: &BTreeSet<WriteId>) -> Vec<Step> {
    // A write's second copy among the steps (the original and a carried one) restates it.
    let mut seen: BTreeSet<WriteId> = BTreeSet::new();
    src.doc
        .get_changes(before)
        .into_iter()
        .map(|change| {
            let write = write_of(&change);
            // A base comes before everything else of its epoch: it moves no record after a
            // step, so its keys need not be known.
            let keys = if ServiceDoc::is_base(&change) {
                BTreeSet::new()
            } else {
                root_keys(&change)
            };
            if write.is_some_and(|w| skip.contains(&w) || !seen.insert(w)) {
                Step {
                    change,
                    keys: BTreeSet::new(),
                    restated: keys,
                }
            } else {
                Step {
                    change,
                    keys,
                    restated: BTreeSet::new(),
                }
            }
        })
        .collect()
}

/// One transition per record of each step, read at the heads right after its change. A
/// record that only one step touches reads the same then as now (nothing after it in the
/// steps changed it), so it is read now, which costs Automerge no historical clock: a push
/// of one change, the common case, makes no historical read at all.
///
/// At most `limit` transitions, those of the first steps (always at least one step's): the
/// heads then end after the last step told, so that the rest is what comes after them.
fn replay(src: Source<'_>, from: From<'_>, steps: Vec<Step>, limit: usize) -> Vec<Transition> {
    let (before, within) = from;
    let mut touches: BTreeMap<String, usize> = BTreeMap::new();
    for step in &steps {
        let records: BTreeSet<String> = step
            .keys
            .iter()
            .chain(&step.restated)
            .map(|k| record_of(k))
            .collect();
        for record in records {
            *touches.entry(record).or_default() += 1;
        }
    }
    let mut heads: BTreeSet<ChangeHash> = before.iter().copied().collect();
    let mut out = Vec::new();
    for Step { change, keys, .. } in steps {
        if !out.is_empty() && out.len() + keys.len() > limit {
            break;
        }
        let prefix: Vec<ChangeHash> = heads.iter().copied().collect();
        // The heads of a prefix of a topological order: the change replaces its deps.
        for dep in change.deps() {
            heads.remove(dep);
        }
        heads.insert(change.hash());
        if keys.is_empty() {
            continue;
        }
        let at: Vec<ChangeHash> = heads.iter().copied().collect();
        let (once, again): (BTreeSet<String>, BTreeSet<String>) = keys
            .into_iter()
            .partition(|k| touches.get(&record_of(k)).is_some_and(|&n| n == 1));
        let write = write_of(&change);
        let mut events = events_for_keys_in(src, &once, None);
        events.extend(events_for_keys_in(src, &again, Some(&at)));
        // Record order, the same on every node: a cursor within the change names a prefix.
        events.sort_by_cached_key(DocEvent::record_key);
        let total = events.len();
        let told = within
            .filter(|w| w.change == change.hash())
            .map_or(0, |w| w.told as usize);
        for (i, event) in events.into_iter().enumerate().skip(told) {
            let (heads, within) = within_change(change.hash(), i, total, &prefix, &at);
            out.push(Transition {
                id: write.map(|w| transition_id_of(&w, &event)),
                event,
                coalesced: None,
                epoch: src.meta.epoch,
                heads,
                within,
            });
        }
    }
    // Later steps moved the heads past the last event's: the last one carries them all, so
    // that a client that has every event resumes at the end.
    if let Some(last) = out.last_mut().filter(|t| t.within.is_none()) {
        last.heads = heads.into_iter().collect();
    }
    out
}

/// A change's first heads and part told: the whole change is the heads `after` it once the
/// client has its last transition (`i` of `total`); before that, the heads `before` it and
/// how many of its transitions the client has.
fn within_change(
    change: ChangeHash,
    i: usize,
    total: usize,
    before: &[ChangeHash],
    after: &[ChangeHash],
) -> (Vec<ChangeHash>, Option<Within>) {
    if i + 1 >= total {
        return (after.to_vec(), None);
    }
    let told = u32::try_from(i + 1).unwrap_or(u32::MAX);
    (before.to_vec(), Some(Within { change, told }))
}

/// Where a client is: the heads it has, and the part of the change after them it has.
type From<'a> = (&'a [ChangeHash], Option<Within>);

fn count(steps: &[Step]) -> usize {
    steps.iter().map(|s| s.keys.len()).sum()
}

/// The schema's root keys a change writes.
fn root_keys(change: &Change) -> BTreeSet<String> {
    change
        .decode()
        .operations
        .into_iter()
        .filter_map(|op| match op.key {
            Key::Map(key) => Some(key.to_string()),
            Key::Seq(_) => None,
        })
        .filter(|key| RecordKey::parse(key).is_some())
        .collect()
}

fn write_of(change: &Change) -> Option<WriteId> {
    ActorKind::parse(change.actor_id())?.write_id(change.seq())
}

/// `<writer>-<n>:<service>/<record key>`: unique mesh-wide (a write numbers its changes per
/// document, and one change may write several records). A client that made the write can
/// name the transition it will be told of: its write's identity and the record's root key.
pub fn transition_id(write: &WriteId, service: &Name, record_key: &str) -> String {
    let mut id = String::with_capacity(2 * write.writer.len() + 24 + record_key.len());
    for byte in write.writer {
        id.push_str(&format!("{byte:02x}"));
    }
    id.push_str(&format!("-{}:{service}/{record_key}", write.n));
    id
}

fn transition_id_of(write: &WriteId, event: &DocEvent) -> String {
    transition_id(write, event.service(), &event.record_key())
}

impl DocEvent {
    /// The root key of the record this event is about (an incident's updates are part of
    /// the incident's record): what a transition identity ends with.
    pub fn record_key(&self) -> String {
        match self {
            DocEvent::Status(e) => RecordKey::Observation {
                component: e.component.clone(),
                region: e.region.clone(),
            }
            .to_key(),
            DocEvent::Incident(e) => incident_key(&e.id),
            DocEvent::Maintenance(e) => RecordKey::Maintenance { id: e.id.clone() }.to_key(),
            DocEvent::Override(e) => RecordKey::Override {
                component: e.component.clone(),
            }
            .to_key(),
            DocEvent::Flag(e) => RecordKey::Flag { key: e.key.clone() }.to_key(),
            DocEvent::Check(e) => RecordKey::Check {
                component: e.component.clone(),
            }
            .to_key(),
        }
    }
}

/// The record a root key belongs to (an update belongs to its incident).
/// The records a document holds (at `heads`, now when `None`).
fn record_keys_of(doc: &automerge::Automerge, heads: Option<&[ChangeHash]>) -> BTreeSet<String> {
    let keys: Vec<String> = match heads {
        Some(heads) => doc.keys_at(automerge::ROOT, heads).collect(),
        None => doc.keys(automerge::ROOT).collect(),
    };
    keys.iter()
        .filter(|k| RecordKey::parse(k).is_some())
        .map(|k| record_of(k))
        .collect()
}

fn record_of(key: &str) -> String {
    match RecordKey::parse(key) {
        Some(RecordKey::Update { incident, .. }) => incident_key(&incident),
        _ => key.to_owned(),
    }
}

/// Whether two events leave a client with the same record (an incident's new updates are
/// news, not state).
fn same_record_state(a: &DocEvent, b: &DocEvent) -> bool {
    match (a, b) {
        (DocEvent::Status(a), DocEvent::Status(b)) => {
            a.observation == b.observation && a.conflict == b.conflict
        }
        (DocEvent::Incident(a), DocEvent::Incident(b)) => a.incident == b.incident,
        _ => a == b,
    }
}
