//! What clients are told: the events of local writes, of remote changes and of the changes
//! after a cursor, coalesced to the latest value per record.
//!
//! Events are computed from keys (a write or an apply knows which keys it touched, so the
//! cost follows the keys, not the document) or from two sets of heads (a diff, for cursors
//! and for the rare apply that lost track of its keys).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use automerge::{ChangeHash, PatchAction, ReadDoc, ROOT};
use serde::Serialize;

use super::reads::{changed_keys, read_in, reads_of, CellRead, Read, Source};
use super::schema::{incident_key, Put, RecordKey};
use super::ServiceDoc;
use crate::checks::Check;
use crate::flags::Flag;
use crate::model::{Name, Observation};
use crate::records::{Incident, IncidentUpdate, Maintenance, Override};

/// A change to one observation cell, as clients see it on the event stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusEvent {
    pub service: Name,
    pub component: Name,
    pub region: Name,
    /// The winning value now; `None` when the cell was removed.
    pub observation: Option<Observation>,
    /// True when concurrent writes left more than one value in the cell.
    pub conflict: bool,
    /// The node whose change set the winning value (from the change's message), if known.
    pub origin_node: Option<String>,
    /// When that change was made, on its origin's clock, in milliseconds since the epoch.
    pub changed_at_ms: Option<u64>,
}

/// A change to an incident: its header now, and the updates that are new.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IncidentEvent {
    pub service: Name,
    pub id: Name,
    /// The header now; `None` when updates arrived before the header did.
    pub incident: Option<Incident>,
    /// Updates that appeared with this change, oldest first.
    pub new_updates: Vec<IncidentUpdate>,
}

/// A change to a maintenance window (`None`: cancelled).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MaintenanceEvent {
    pub service: Name,
    pub id: Name,
    pub window: Option<Maintenance>,
}

/// A change to an operator override (`None`: cleared).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OverrideEvent {
    pub service: Name,
    pub component: Name,
    pub value: Option<Override>,
}

/// A change to a feature flag (`None`: deleted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlagEvent {
    pub service: Name,
    pub key: Name,
    pub value: Option<Flag>,
}

/// A change to a regional probe check (`None`: removed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckEvent {
    pub service: Name,
    pub component: Name,
    pub check: Option<Check>,
}

/// Anything a client may be told about a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DocEvent {
    Status(StatusEvent),
    Incident(IncidentEvent),
    Maintenance(MaintenanceEvent),
    Override(OverrideEvent),
    Flag(FlagEvent),
    Check(CheckEvent),
}

impl DocEvent {
    /// The service the event is about.
    pub fn service(&self) -> &Name {
        match self {
            DocEvent::Status(e) => &e.service,
            DocEvent::Incident(e) => &e.service,
            DocEvent::Maintenance(e) => &e.service,
            DocEvent::Override(e) => &e.service,
            DocEvent::Flag(e) => &e.service,
            DocEvent::Check(e) => &e.service,
        }
    }
}

impl ServiceDoc {
    /// The events a client whose cursor names `heads` of the previous epoch has not seen:
    /// every record whose value, losing values or origin differ from then, coalesced.
    /// `None` when the previous epoch's document does not hold those heads.
    pub fn events_since_prev(&self, heads: &[ChangeHash]) -> Option<Vec<DocEvent>> {
        let prev = self.prev.as_ref()?;
        if !self.prev_has_all(heads) {
            return None;
        }
        let then = reads_of(&prev.doc, Some(heads), prev.base.as_ref(), &prev.meta);
        let keys = changed_keys(&then, &self.reads());
        Some(self.events_for_keys(&keys, None))
    }

    /// The events between two sets of heads, both held by this document, coalesced to the
    /// latest value per record (an incident's new updates are listed in full).
    pub fn doc_events_between(&self, before: &[ChangeHash], after: &[ChangeHash]) -> Vec<DocEvent> {
        let keys: BTreeSet<String> = self
            .doc
            .diff(before, after)
            .into_iter()
            .filter(|patch| patch.path.is_empty())
            .filter_map(|patch| match patch.action {
                PatchAction::PutMap { key, .. } | PatchAction::DeleteMap { key } => Some(key),
                _ => None,
            })
            .collect();
        // Causal order: each record at the position of the change that wrote its value, in
        // the topological order Automerge gives the changes after `before`.
        let position: HashMap<ChangeHash, usize> = self
            .doc
            .get_changes_meta(before)
            .iter()
            .enumerate()
            .map(|(i, meta)| (meta.hash, i))
            .collect();
        let mut ranked: Vec<(usize, String)> = keys
            .into_iter()
            .map(|key| {
                let rank = self
                    .doc
                    .get_at(ROOT, key.as_str(), after)
                    .ok()
                    .flatten()
                    .and_then(|(_, id)| self.doc.hash_for_opid(&id))
                    .and_then(|hash| position.get(&hash).copied())
                    .unwrap_or(usize::MAX);
                (rank, key)
            })
            .collect();
        ranked.sort();
        ranked
            .into_iter()
            .flat_map(|(_, key)| self.events_for_keys(&BTreeSet::from([key]), Some(after)))
            .collect()
    }

    /// The events of a local write: built from the puts themselves (the values, the origin and
    /// the time are known), so a write costs nothing more to announce. `keys` are those the
    /// write actually changed. A local put overwrites every visible value: no conflict remains.
    pub fn events_for_local_puts(
        &self,
        puts: &[Put],
        keys: &BTreeSet<String>,
        origin_node: &str,
        now_ms: u64,
    ) -> Vec<DocEvent> {
        let mut events = Vec::with_capacity(keys.len());
        let mut other_keys = BTreeSet::new();
        for put in puts {
            let key = put.key().to_key();
            if !keys.contains(&key) {
                continue;
            }
            match put {
                Put::Observation {
                    component,
                    region,
                    observation,
                } => events.push(DocEvent::Status(StatusEvent {
                    service: self.service.clone(),
                    component: component.clone(),
                    region: region.clone(),
                    observation: Some(observation.clone()),
                    conflict: false,
                    origin_node: Some(origin_node.to_owned()),
                    changed_at_ms: Some(now_ms),
                })),
                _ => {
                    other_keys.insert(key);
                }
            }
        }
        if !other_keys.is_empty() {
            events.extend(self.events_for_keys(&other_keys, None));
        }
        events
    }

    /// The events for records whose keys changed, with their values at `heads` (now when
    /// `None`). This costs in proportion to the keys, not to the document: local writes and
    /// remote changes know which keys they touched.
    pub fn events_for_keys(
        &self,
        keys: &BTreeSet<String>,
        heads: Option<&[ChangeHash]>,
    ) -> Vec<DocEvent> {
        events_for_keys_in(self.source(), keys, heads)
    }

    /// The observation events between two sets of heads (see [`Self::doc_events_between`]).
    pub fn events_between(&self, before: &[ChangeHash], after: &[ChangeHash]) -> Vec<StatusEvent> {
        self.doc_events_between(before, after)
            .into_iter()
            .filter_map(|e| match e {
                DocEvent::Status(s) => Some(s),
                _ => None,
            })
            .collect()
    }
}

/// [`ServiceDoc::events_for_keys`] over one epoch's document.
pub(super) fn events_for_keys_in(
    src: Source<'_>,
    keys: &BTreeSet<String>,
    heads: Option<&[ChangeHash]>,
) -> Vec<DocEvent> {
    let mut events = Vec::new();
    let mut incidents: BTreeMap<Name, Vec<IncidentUpdate>> = BTreeMap::new();
    for key in keys {
        let Some(record) = RecordKey::parse(key) else {
            continue;
        };
        match record {
            RecordKey::Observation { component, region } => {
                let read: Option<CellRead> = read_in(src, key, heads);
                events.push(DocEvent::Status(StatusEvent {
                    service: src.service.clone(),
                    component,
                    region,
                    conflict: read.as_ref().is_some_and(|r| !r.conflicts.is_empty()),
                    origin_node: read.as_ref().and_then(|r| r.origin_node.clone()),
                    changed_at_ms: read.as_ref().and_then(|r| r.changed_at_ms),
                    observation: read.map(|r| r.value),
                }));
            }
            RecordKey::Incident { id } => {
                incidents.entry(id).or_default();
            }
            RecordKey::Update { incident, .. } => {
                let update: Option<Read<IncidentUpdate>> = read_in(src, key, heads);
                let updates = incidents.entry(incident).or_default();
                updates.extend(update.map(|r| r.value));
            }
            RecordKey::Maintenance { id } => {
                let window: Option<Read<Maintenance>> = read_in(src, key, heads);
                events.push(DocEvent::Maintenance(MaintenanceEvent {
                    service: src.service.clone(),
                    id,
                    window: window.map(|r| r.value),
                }));
            }
            RecordKey::Override { component } => {
                let value: Option<Read<Override>> = read_in(src, key, heads);
                events.push(DocEvent::Override(OverrideEvent {
                    service: src.service.clone(),
                    component,
                    value: value.map(|r| r.value),
                }));
            }
            RecordKey::Flag { key: flag } => {
                let value: Option<Read<Flag>> = read_in(src, key, heads);
                events.push(DocEvent::Flag(FlagEvent {
                    service: src.service.clone(),
                    key: flag,
                    value: value.map(|r| r.value),
                }));
            }
            RecordKey::Check { component } => {
                let check: Option<Read<Check>> = read_in(src, key, heads);
                events.push(DocEvent::Check(CheckEvent {
                    service: src.service.clone(),
                    component,
                    check: check.map(|r| r.value),
                }));
            }
            // A subscription holds its secret, and its progress is the mesh's bookkeeping:
            // neither is an event for clients.
            RecordKey::Webhook { .. } | RecordKey::WebhookProgress { .. } => {}
        }
    }
    for (id, mut new_updates) in incidents {
        new_updates.sort_by_key(|u| u.at_ms);
        let header: Option<Read<Incident>> = read_in(src, &incident_key(&id), heads);
        events.push(DocEvent::Incident(IncidentEvent {
            service: src.service.clone(),
            id,
            incident: header.map(|r| r.value),
            new_updates,
        }));
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::fixtures::{doc, incident, name, put, update, write};
    use crate::model::State;

    #[test]
    fn a_webhook_and_its_progress_are_records_without_events() {
        let hook: crate::webhooks::Webhook = serde_json::from_str::<crate::webhooks::WebhookSpec>(
            r#"{"url": "http://127.0.0.1:9/in", "services": ["api"]}"#,
        )
        .expect("a spec")
        .into_webhook(None, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "ops", 5)
        .expect("valid");
        let mut d = doc(1);
        let puts = [
            Put::Webhook {
                id: name("pager"),
                value: Some(hook.clone()),
            },
            Put::WebhookProgress {
                id: name("pager"),
                value: Some(crate::webhooks::WebhookProgress {
                    cursor: String::new(),
                    delivered: 3,
                    coalesced: 0,
                    by_node: "n1".into(),
                    at_ms: 5,
                    maintenance_told_ms: 5,
                }),
            },
        ];
        let written = d
            .apply_puts_keys(7, "n1", &puts)
            .expect("valid")
            .expect("a change");
        assert!(d
            .events_for_local_puts(&puts, &written.keys, "n1", 7)
            .is_empty());
        assert_eq!(d.webhooks().get(&name("pager")), Some(&hook));
        assert_eq!(d.webhook_progress()[&name("pager")].delivered, 3);
    }

    #[test]
    fn a_local_put_event_names_its_writer_and_has_no_conflict() {
        let mut d = doc(1);
        let puts = [put("db", State::MajorOutage, "down")];
        let written = d
            .apply_puts_keys(7, "n1", &puts)
            .expect("valid")
            .expect("a change");
        let events = d.events_for_local_puts(&puts, &written.keys, "n1", 7);
        let [DocEvent::Status(event)] = events.as_slice() else {
            panic!("{events:?}");
        };
        assert_eq!(event.origin_node.as_deref(), Some("n1"));
        assert_eq!(event.changed_at_ms, Some(7));
        assert!(!event.conflict);
        assert_eq!(
            event.observation.as_ref().map(|o| o.state),
            Some(State::MajorOutage)
        );
    }

    #[test]
    fn events_between_heads_give_each_record_once_at_its_latest_value() {
        let mut d = doc(1);
        write(&mut d, 1, "db", State::Operational);
        write(&mut d, 2, "web", State::Operational);
        write(&mut d, 3, "db", State::MajorOutage);
        let events = d.events_between(&[], &d.heads());
        let seen: Vec<(&str, State)> = events
            .iter()
            .map(|e| {
                let state = e.observation.as_ref().map(|o| o.state);
                (e.component.as_str(), state.expect("a value"))
            })
            .collect();
        // In the order of the change that wrote each value.
        assert_eq!(
            seen,
            [("web", State::Operational), ("db", State::MajorOutage)]
        );
    }

    #[test]
    fn an_incident_event_lists_its_new_updates_oldest_first() {
        let mut d = doc(1);
        let mut puts = vec![Put::Incident {
            id: name("i1"),
            incident: incident(),
        }];
        for at_ms in [3, 1, 2] {
            puts.push(Put::Update {
                incident: name("i1"),
                key: format!("k{at_ms}"),
                update: update(at_ms, "step"),
            });
        }
        let written = d
            .apply_puts_keys(4, "n1", &puts)
            .expect("valid")
            .expect("a change");
        let events = d.events_for_keys(&written.keys, None);
        let [DocEvent::Incident(event)] = events.as_slice() else {
            panic!("{events:?}");
        };
        let order: Vec<u64> = event.new_updates.iter().map(|u| u.at_ms).collect();
        assert_eq!(order, [1, 2, 3]);
        assert_eq!(event.incident.as_ref(), Some(&incident()));
    }

    #[test]
    fn events_since_the_previous_epoch_are_the_records_that_differ_from_then() {
        let mut d = doc(1);
        write(&mut d, 1, "db", State::Operational);
        write(&mut d, 2, "web", State::Operational);
        let then = d.heads();
        d.rollover(&then).expect("valid").expect("rolled over");
        write(&mut d, 3, "db", State::MajorOutage);
        let events = d.events_since_prev(&then).expect("held heads");
        let [DocEvent::Status(event)] = events.as_slice() else {
            panic!("{events:?}");
        };
        assert_eq!(event.component.as_str(), "db");
        assert!(d.events_since_prev(&[ChangeHash([7; 32])]).is_none());
    }
}
