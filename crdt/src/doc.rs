//! One service's availability as an Automerge document.
//!
//! Layout: the root map holds one key per record, each value one JSON string:
//!
//! | key | value |
//! | --- | --- |
//! | `obs/<component>/<region>` | [`Observation`] |
//! | `inc/<incident>` | [`Incident`] (the header) |
//! | `upd/<incident>/<update-key>` | [`IncidentUpdate`] (append-only) |
//! | `mnt/<window>` | [`Maintenance`] |
//! | `ovr/<component>` | [`Override`] |
//!
//! Flat keys and scalar values mean that no two replicas ever create the same object
//! concurrently (which Automerge would resolve by hiding one object wholesale), that a
//! concurrent write to one record is a plain register conflict (one value wins everywhere,
//! the others stay visible as `conflicts`), and that incident updates, each under a key of
//! its own, never conflict at all.

use std::collections::{BTreeMap, BTreeSet};

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{
    ActorId, Automerge, Change, ChangeHash, ObjId, PatchAction, ReadDoc, ScalarValue, Value, ROOT,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::CrdtError;
use crate::model::{Name, Observation, StatusWrite};
use crate::records::{Incident, IncidentUpdate, Maintenance, Override, UPDATES_MAX};

/// Most changes accepted from a peer in one batch; a larger batch is a protocol error.
pub const REMOTE_BATCH_MAX: usize = 4096;
/// Most records one document may hold (observations, incidents, updates, windows, overrides).
pub const RECORDS_MAX: usize = 100_000;
/// Longest update key, in bytes.
const UPDATE_KEY_LEN_MAX: usize = 128;

/// Where a record lives in the document.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum RecordKey {
    Observation { component: Name, region: Name },
    Incident { id: Name },
    Update { incident: Name, key: String },
    Maintenance { id: Name },
    Override { component: Name },
}

impl RecordKey {
    /// The root key in the document.
    pub fn to_key(&self) -> String {
        match self {
            RecordKey::Observation { component, region } => format!("obs/{component}/{region}"),
            RecordKey::Incident { id } => format!("inc/{id}"),
            RecordKey::Update { incident, key } => format!("upd/{incident}/{key}"),
            RecordKey::Maintenance { id } => format!("mnt/{id}"),
            RecordKey::Override { component } => format!("ovr/{component}"),
        }
    }

    /// Parses a root key; `None` for anything outside the schema.
    pub fn parse(key: &str) -> Option<Self> {
        let (kind, rest) = key.split_once('/')?;
        let name = |field: &'static str, value: &str| Name::parse(field, value).ok();
        match kind {
            "obs" => {
                let (component, region) = rest.split_once('/')?;
                Some(RecordKey::Observation {
                    component: name("component", component)?,
                    region: name("region", region)?,
                })
            }
            "inc" => Some(RecordKey::Incident {
                id: name("incident", rest)?,
            }),
            "upd" => {
                let (incident, update) = rest.split_once('/')?;
                let valid = !update.is_empty()
                    && update.len() <= UPDATE_KEY_LEN_MAX
                    && update.bytes().all(|b| {
                        b.is_ascii_lowercase()
                            || b.is_ascii_digit()
                            || matches!(b, b'-' | b'_' | b'.')
                    });
                if !valid {
                    return None;
                }
                Some(RecordKey::Update {
                    incident: name("incident", incident)?,
                    key: update.to_owned(),
                })
            }
            "mnt" => Some(RecordKey::Maintenance {
                id: name("maintenance", rest)?,
            }),
            "ovr" => Some(RecordKey::Override {
                component: name("component", rest)?,
            }),
            _ => None,
        }
    }

    /// Whether the record may be deleted. Incidents and their updates are the audit trail:
    /// never deleted, only resolved.
    fn deletable(&self) -> bool {
        matches!(
            self,
            RecordKey::Observation { .. }
                | RecordKey::Maintenance { .. }
                | RecordKey::Override { .. }
        )
    }

    /// Checks that `json` is a valid value for this key.
    fn validate_json(&self, json: &str) -> Result<(), String> {
        fn check<T: DeserializeOwned>(
            json: &str,
            validate: impl Fn(&T) -> Result<(), CrdtError>,
        ) -> Result<(), String> {
            let value: T =
                serde_json::from_str(json).map_err(|e| format!("value does not parse: {e}"))?;
            validate(&value).map_err(|e| e.to_string())
        }
        match self {
            RecordKey::Observation { .. } => check::<Observation>(json, Observation::validate),
            RecordKey::Incident { .. } => check::<Incident>(json, Incident::validate),
            RecordKey::Update { .. } => check::<IncidentUpdate>(json, IncidentUpdate::validate),
            RecordKey::Maintenance { .. } => check::<Maintenance>(json, Maintenance::validate),
            RecordKey::Override { .. } => check::<Override>(json, Override::validate),
        }
    }
}

/// One record write: a key and its new value (`None` deletes, where allowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Put {
    Observation {
        component: Name,
        region: Name,
        observation: Observation,
    },
    Incident {
        id: Name,
        incident: Incident,
    },
    Update {
        incident: Name,
        key: String,
        update: IncidentUpdate,
    },
    Maintenance {
        id: Name,
        window: Option<Maintenance>,
    },
    Override {
        component: Name,
        value: Option<Override>,
    },
}

impl Put {
    fn key(&self) -> RecordKey {
        match self {
            Put::Observation {
                component, region, ..
            } => RecordKey::Observation {
                component: component.clone(),
                region: region.clone(),
            },
            Put::Incident { id, .. } => RecordKey::Incident { id: id.clone() },
            Put::Update { incident, key, .. } => RecordKey::Update {
                incident: incident.clone(),
                key: key.clone(),
            },
            Put::Maintenance { id, .. } => RecordKey::Maintenance { id: id.clone() },
            Put::Override { component, .. } => RecordKey::Override {
                component: component.clone(),
            },
        }
    }

    /// The JSON to store, or `None` for a delete.
    fn json(&self) -> Result<Option<String>, CrdtError> {
        let encode = |r: serde_json::Result<String>| {
            r.map(Some).map_err(|e| CrdtError::InvalidField {
                field: "value",
                value: String::new(),
                reason: e.to_string(),
            })
        };
        match self {
            Put::Observation { observation, .. } => encode(serde_json::to_string(observation)),
            Put::Incident { incident, .. } => encode(serde_json::to_string(incident)),
            Put::Update { update, .. } => encode(serde_json::to_string(update)),
            Put::Maintenance {
                window: Some(w), ..
            } => encode(serde_json::to_string(w)),
            Put::Override { value: Some(v), .. } => encode(serde_json::to_string(v)),
            Put::Maintenance { window: None, .. } | Put::Override { value: None, .. } => Ok(None),
        }
    }

    /// Validates the value before anything is written.
    fn validate(&self) -> Result<(), CrdtError> {
        match self {
            Put::Observation { observation, .. } => observation.validate(),
            Put::Incident { incident, .. } => incident.validate(),
            Put::Update { key, update, .. } => {
                if RecordKey::parse(&self.key().to_key()).is_none() {
                    return Err(CrdtError::InvalidField {
                        field: "update_key",
                        value: key.clone(),
                        reason: "must be 1-128 characters of a-z, 0-9, '-', '_', '.'".into(),
                    });
                }
                update.validate()
            }
            Put::Maintenance { window, .. } => {
                window.as_ref().map_or(Ok(()), Maintenance::validate)
            }
            Put::Override { value, .. } => value.as_ref().map_or(Ok(()), Override::validate),
        }
    }
}

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

/// Anything a client may be told about a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DocEvent {
    Status(StatusEvent),
    Incident(IncidentEvent),
    Maintenance(MaintenanceEvent),
    Override(OverrideEvent),
}

impl DocEvent {
    /// The service the event is about.
    pub fn service(&self) -> &Name {
        match self {
            DocEvent::Status(e) => &e.service,
            DocEvent::Incident(e) => &e.service,
            DocEvent::Maintenance(e) => &e.service,
            DocEvent::Override(e) => &e.service,
        }
    }
}

/// What a record holds: the winning value and the values that lost a concurrent write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Read<T> {
    pub value: T,
    pub conflicts: Vec<T>,
    /// The node whose change set the winning value, if the change names one.
    pub origin_node: Option<String>,
    /// When that change was made, on its origin's clock.
    pub changed_at_ms: Option<u64>,
}

/// An observation cell as read.
pub type CellRead = Read<Observation>;

/// Most changes held back for missing dependencies whose keys are remembered.
const HELD_BACK_MAX: usize = 10_000;

/// What applying remote changes did.
#[derive(Debug, Clone, Default)]
pub struct RemoteApplied {
    /// Changes that were new here (some may be held back for missing dependencies).
    pub new_changes: usize,
    /// Keys written by the changes that became part of the document.
    pub keys: BTreeSet<String>,
    /// The batch's changes that the document now holds (new or not), and held-back changes
    /// that just became part of it, each with its origin node (the change's message): what
    /// a receiver acknowledges to the origin.
    pub held: Vec<(ChangeHash, Option<String>)>,
    /// True when more changes were held back than their keys could be remembered for: the
    /// caller must compute events by diffing heads instead.
    pub keys_incomplete: bool,
}

/// One service's document.
#[derive(Debug)]
pub struct ServiceDoc {
    service: Name,
    doc: Automerge,
    records: usize,
    /// Origin and keys of remote changes Automerge holds back until their dependencies arrive.
    held_back: BTreeMap<ChangeHash, (Option<String>, Vec<String>)>,
}

impl ServiceDoc {
    /// An empty document that writes under `actor`. The actor must never have written to this
    /// service before on any replica (see `Replica::new`).
    pub fn new(service: Name, actor: ActorId) -> Self {
        Self {
            service,
            doc: Automerge::new().with_actor(actor),
            records: 0,
            held_back: BTreeMap::new(),
        }
    }

    /// Loads a saved document and validates every change in it as if it came from a peer.
    pub fn load(service: Name, bytes: &[u8], actor: ActorId) -> Result<Self, CrdtError> {
        let doc = load_automerge(&service, bytes)?;
        for change in doc.get_changes(&[]) {
            validate_change(&change)?;
        }
        let records = doc.length(ROOT);
        Ok(Self {
            service,
            doc: doc.with_actor(actor),
            records,
            held_back: BTreeMap::new(),
        })
    }

    /// Loads a document this node saved itself, without re-validating every change: its
    /// changes were validated when they were applied, and storage checksums the bytes. Use
    /// [`Self::load`] for anything that came from elsewhere.
    pub fn load_trusted(service: Name, bytes: &[u8], actor: ActorId) -> Result<Self, CrdtError> {
        let doc = load_automerge(&service, bytes)?;
        let records = doc.length(ROOT);
        Ok(Self {
            service,
            doc: doc.with_actor(actor),
            records,
            held_back: BTreeMap::new(),
        })
    }

    /// Writes as `actor` from now on.
    pub fn set_actor(&mut self, actor: ActorId) {
        self.doc.set_actor(actor);
    }

    /// The service this document describes.
    pub fn service(&self) -> &Name {
        &self.service
    }

    /// Writes an observation as `origin_node` (recorded as the change's message: the audit
    /// trail says which node wrote what). Returns the new change, or `None` when the cell
    /// already held the same value (no Automerge change, no history growth).
    pub fn put_observation(
        &mut self,
        now_ms: u64,
        origin_node: &str,
        write: &StatusWrite,
    ) -> Result<Option<Change>, CrdtError> {
        let put = Put::Observation {
            component: write.component.clone(),
            region: write.region.clone(),
            observation: write.observation.clone(),
        };
        self.apply_puts(now_ms, origin_node, std::slice::from_ref(&put))
    }

    /// Writes a batch of records as ONE Automerge change (group commit: one change, one
    /// hash, one history entry for the whole batch). Every put is validated first; an invalid
    /// one rejects the batch and nothing is written. Puts that would not change a value are
    /// skipped; `None` when nothing changed at all.
    pub fn apply_puts(
        &mut self,
        now_ms: u64,
        origin_node: &str,
        puts: &[Put],
    ) -> Result<Option<Change>, CrdtError> {
        Ok(self
            .apply_puts_keys(now_ms, origin_node, puts)?
            .map(|(change, _)| change))
    }

    /// [`Self::apply_puts`], also returning the keys the change wrote.
    pub fn apply_puts_keys(
        &mut self,
        now_ms: u64,
        origin_node: &str,
        puts: &[Put],
    ) -> Result<Option<(Change, BTreeSet<String>)>, CrdtError> {
        let mut writes: Vec<(String, Option<String>)> = Vec::with_capacity(puts.len());
        let mut new_keys = 0;
        // Within one change only the last put of a key is visible: keep just that one, so
        // that [x, y, x] over a cell holding x ends at x, not at y.
        let mut seen_keys = BTreeSet::new();
        let mut last_puts: Vec<&Put> = puts
            .iter()
            .rev()
            .filter(|p| seen_keys.insert(p.key().to_key()))
            .collect();
        last_puts.reverse();
        for put in last_puts {
            put.validate()?;
            let key = put.key().to_key();
            let current = self.raw_values(&key);
            if unchanged(put, &current) {
                continue;
            }
            if let Put::Update { incident, .. } = put {
                let count = self
                    .doc
                    .map_range(ROOT, format!("upd/{incident}/")..format!("upd/{incident}0"))
                    .count();
                if count >= UPDATES_MAX {
                    return Err(CrdtError::InvalidField {
                        field: "updates",
                        value: count.to_string(),
                        reason: format!("an incident holds at most {UPDATES_MAX} updates"),
                    });
                }
            }
            if current.is_empty() {
                new_keys += 1;
            }
            writes.push((key, put.json()?));
        }
        if writes.is_empty() {
            return Ok(None);
        }
        if self.records + new_keys > RECORDS_MAX {
            return Err(CrdtError::TooManyCells {
                service: self.service.to_string(),
                count: self.records,
                limit: RECORDS_MAX,
            });
        }
        let time = i64::try_from(now_ms).unwrap_or(i64::MAX);
        self.doc
            .transact_with::<_, _, automerge::AutomergeError, _>(
                |_| {
                    CommitOptions::default()
                        .with_time(time)
                        .with_message(origin_node)
                },
                |tx| {
                    for (key, json) in &writes {
                        match json {
                            Some(json) => {
                                tx.put(ROOT, key.as_str(), ScalarValue::Str(json.as_str().into()))?
                            }
                            None => tx.delete(ROOT, key.as_str())?,
                        }
                    }
                    Ok(())
                },
            )
            .map_err(|failure| CrdtError::Automerge(failure.error))?;
        if writes.iter().any(|(_, json)| json.is_none()) {
            self.records = self.doc.length(ROOT);
        } else {
            self.records += new_keys;
        }
        let keys = writes.into_iter().map(|(key, _)| key).collect();
        Ok(self
            .doc
            .get_last_local_change()
            .map(|change| (change, keys)))
    }

    /// Applies change bytes from a peer. Every change is decoded and checked against the
    /// schema first; one bad change rejects the whole batch and nothing is applied.
    /// Changes whose dependencies are missing are held by Automerge until they arrive.
    /// Returns the number of changes that were new here.
    pub fn apply_remote(&mut self, changes: &[Vec<u8>]) -> Result<usize, CrdtError> {
        self.apply_remote_keys(changes)
            .map(|applied| applied.new_changes)
    }

    /// [`Self::apply_remote`], also returning the keys of every change that became part of the
    /// document, including held-back changes whose dependencies just arrived.
    pub fn apply_remote_keys(&mut self, changes: &[Vec<u8>]) -> Result<RemoteApplied, CrdtError> {
        if changes.len() > REMOTE_BATCH_MAX {
            return Err(CrdtError::BatchTooLarge {
                count: changes.len(),
                limit: REMOTE_BATCH_MAX,
            });
        }
        let mut fresh = Vec::with_capacity(changes.len());
        let mut fresh_keys = Vec::with_capacity(changes.len());
        let mut held = Vec::with_capacity(changes.len());
        for bytes in changes {
            let change = parse_change(bytes)?;
            let origin = change.message().map(str::to_owned);
            if self.has_change(&change.hash()) {
                held.push((change.hash(), origin));
                continue;
            }
            // Expanding a change decodes its columns; a panic in that decoder is a bad change.
            let keys = std::panic::catch_unwind(|| validate_change(&change)).map_err(|_| {
                CrdtError::ChangeDecode(format!("change {} does not decode", change.hash()))
            })??;
            fresh_keys.push((change.hash(), origin, keys));
            fresh.push(change);
        }
        let new_changes = fresh.len();
        let mut applied = RemoteApplied {
            new_changes,
            held,
            ..RemoteApplied::default()
        };
        if new_changes == 0 {
            return Ok(applied);
        }
        self.doc.apply_changes(fresh)?;
        for (hash, origin, keys) in fresh_keys {
            if self.has_change(&hash) {
                applied.held.push((hash, origin));
                applied.keys.extend(keys);
            } else if self.held_back.len() < HELD_BACK_MAX {
                self.held_back.insert(hash, (origin, keys));
            } else {
                // Beyond the bound the keys are forgotten: the caller diffs instead.
                applied.keys_incomplete = true;
            }
        }
        let arrived: Vec<ChangeHash> = self
            .held_back
            .keys()
            .filter(|h| self.has_change(h))
            .copied()
            .collect();
        for hash in arrived {
            if let Some((origin, keys)) = self.held_back.remove(&hash) {
                applied.held.push((hash, origin));
                applied.keys.extend(keys);
            }
        }
        self.records = self.doc.length(ROOT);
        Ok(applied)
    }

    /// The current heads.
    pub fn heads(&self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// True when every hash in `heads` is a change this document holds.
    pub fn has_all(&self, heads: &[ChangeHash]) -> bool {
        heads.iter().all(|h| self.has_change(h))
    }

    /// The changes a peer lacks, given the heads it reported. Hashes this document does not
    /// know are ignored, which may resend changes the peer has (harmless: apply is idempotent).
    pub fn changes_since(&self, their_heads: &[ChangeHash]) -> Vec<Vec<u8>> {
        let known: Vec<ChangeHash> = their_heads
            .iter()
            .copied()
            .filter(|h| self.has_change(h))
            .collect();
        self.doc
            .get_changes(&known)
            .into_iter()
            .map(|mut c| c.bytes().into_owned())
            .collect()
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
        let position: std::collections::HashMap<ChangeHash, usize> = self
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
        let mut events = Vec::new();
        let mut incidents: BTreeMap<Name, Vec<IncidentUpdate>> = BTreeMap::new();
        for key in keys {
            let Some(record) = RecordKey::parse(key) else {
                continue;
            };
            match record {
                RecordKey::Observation { component, region } => {
                    let read: Option<CellRead> = self.read_at(key, heads);
                    events.push(DocEvent::Status(StatusEvent {
                        service: self.service.clone(),
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
                    let update: Option<Read<IncidentUpdate>> = self.read_at(key, heads);
                    let updates = incidents.entry(incident).or_default();
                    updates.extend(update.map(|r| r.value));
                }
                RecordKey::Maintenance { id } => {
                    let window: Option<Read<Maintenance>> = self.read_at(key, heads);
                    events.push(DocEvent::Maintenance(MaintenanceEvent {
                        service: self.service.clone(),
                        id,
                        window: window.map(|r| r.value),
                    }));
                }
                RecordKey::Override { component } => {
                    let value: Option<Read<Override>> = self.read_at(key, heads);
                    events.push(DocEvent::Override(OverrideEvent {
                        service: self.service.clone(),
                        component,
                        value: value.map(|r| r.value),
                    }));
                }
            }
        }
        for (id, mut new_updates) in incidents {
            new_updates.sort_by_key(|u| u.at_ms);
            let header: Option<Read<Incident>> = self.read_at(&format!("inc/{id}"), heads);
            events.push(DocEvent::Incident(IncidentEvent {
                service: self.service.clone(),
                id,
                incident: header.map(|r| r.value),
                new_updates,
            }));
        }
        events
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

    /// One cell's current value, if it holds one.
    pub fn cell(&self, component: &Name, region: &Name) -> Option<CellRead> {
        let key = RecordKey::Observation {
            component: component.clone(),
            region: region.clone(),
        }
        .to_key();
        self.read_at(&key, None)
    }

    /// Every cell with its current value, ordered by (component, region).
    pub fn cells(&self) -> BTreeMap<(Name, Name), CellRead> {
        self.records_with_prefix("obs/")
            .filter_map(|(key, read)| match key {
                RecordKey::Observation { component, region } => Some(((component, region), read)),
                _ => None,
            })
            .collect()
    }

    /// Every incident with its updates (oldest first), ordered by id.
    pub fn incidents(&self) -> Vec<(Name, Read<Incident>, Vec<IncidentUpdate>)> {
        let mut updates: BTreeMap<Name, Vec<IncidentUpdate>> = BTreeMap::new();
        for (key, read) in self.records_with_prefix::<IncidentUpdate>("upd/") {
            if let RecordKey::Update { incident, .. } = key {
                updates.entry(incident).or_default().push(read.value);
            }
        }
        self.records_with_prefix::<Incident>("inc/")
            .filter_map(|(key, read)| match key {
                RecordKey::Incident { id } => {
                    let mut list = updates.remove(&id).unwrap_or_default();
                    list.sort_by_key(|u| u.at_ms);
                    Some((id, read, list))
                }
                _ => None,
            })
            .collect()
    }

    /// The number of updates an incident holds.
    pub fn update_count(&self, incident: &Name) -> usize {
        self.doc
            .map_range(ROOT, format!("upd/{incident}/")..format!("upd/{incident}0"))
            .count()
    }

    /// Every maintenance window, ordered by id.
    pub fn maintenance(&self) -> Vec<(Name, Maintenance)> {
        self.records_with_prefix::<Maintenance>("mnt/")
            .filter_map(|(key, read)| match key {
                RecordKey::Maintenance { id } => Some((id, read.value)),
                _ => None,
            })
            .collect()
    }

    /// Every override, by component.
    pub fn overrides(&self) -> BTreeMap<Name, Override> {
        self.records_with_prefix::<Override>("ovr/")
            .filter_map(|(key, read)| match key {
                RecordKey::Override { component } => Some((component, read.value)),
                _ => None,
            })
            .collect()
    }

    /// One incident's header, if it exists.
    pub fn incident(&self, id: &Name) -> Option<Incident> {
        self.read_at::<Incident>(&format!("inc/{id}"), None)
            .map(|r| r.value)
    }

    /// Number of changes in the history (for limits and metrics).
    pub fn history_len(&self) -> usize {
        self.doc.get_changes_meta(&[]).len()
    }

    /// Every change in causal order, for history walks.
    pub(crate) fn all_changes(&self) -> Vec<Change> {
        self.doc.get_changes(&[])
    }

    /// The whole document, compressed.
    pub fn save(&self) -> Vec<u8> {
        self.doc.save()
    }

    /// Incremental save: the changes since `heads` (a snapshot's heads), each in Automerge's
    /// own change encoding, for an append-only log. Load them back with
    /// [`Self::load_incremental`].
    pub fn save_after(&self, heads: &[ChangeHash]) -> Vec<Vec<u8>> {
        self.changes_since(heads)
    }

    /// Applies changes saved by [`Self::save_after`], in bounded batches, validating every
    /// change as if it came from a peer. Returns the number of changes that were new.
    pub fn load_incremental(&mut self, changes: &[Vec<u8>]) -> Result<usize, CrdtError> {
        let mut applied = 0;
        for batch in changes.chunks(REMOTE_BATCH_MAX) {
            applied += self.apply_remote(batch)?;
        }
        Ok(applied)
    }

    fn records_with_prefix<'a, T: DeserializeOwned + 'a>(
        &'a self,
        prefix: &str,
    ) -> impl Iterator<Item = (RecordKey, Read<T>)> + 'a {
        // Prefixes end in '/', and '0' is the next byte after '/': the range is the prefix.
        let end = format!("{}0", &prefix[..prefix.len() - 1]);
        self.doc
            .map_range(ROOT, prefix.to_owned()..end)
            .filter_map(move |item| {
                let key = RecordKey::parse(&item.key)?;
                let read = self.read_at(&item.key, None)?;
                Some((key, read))
            })
    }

    fn raw_values(&self, key: &str) -> Vec<String> {
        self.doc
            .get_all(ROOT, key)
            .map(|values| values.iter().filter_map(|(v, _)| str_of(v)).collect())
            .unwrap_or_default()
    }

    fn read_at<T: DeserializeOwned>(
        &self,
        key: &str,
        heads: Option<&[ChangeHash]>,
    ) -> Option<Read<T>> {
        let (winner, all) = match heads {
            Some(h) => (
                self.doc.get_at(ROOT, key, h).ok()??,
                self.doc.get_all_at(ROOT, key, h).ok()?,
            ),
            None => (
                self.doc.get(ROOT, key).ok()??,
                self.doc.get_all(ROOT, key).ok()?,
            ),
        };
        let (origin_node, changed_at_ms) = self.origin_of(&winner.1);
        let value: T = serde_json::from_str(&str_of(&winner.0)?).ok()?;
        // The winner is what Automerge's `get` returns, the same on every replica; the other
        // values of `get_all` lost a concurrent write.
        let conflicts = all
            .iter()
            .filter(|(_, id)| *id != winner.1)
            .filter_map(|(v, _)| serde_json::from_str(&str_of(v)?).ok())
            .collect();
        Some(Read {
            value,
            conflicts,
            origin_node,
            changed_at_ms,
        })
    }

    /// Whether the document holds the change `hash`. Automerge's `get_change_by_hash` would
    /// rebuild the whole change; its metadata lookup is an index probe.
    fn has_change(&self, hash: &ChangeHash) -> bool {
        self.doc.get_change_meta_by_hash(hash).is_some()
    }

    /// The origin node and time of the change that made the op `id`.
    fn origin_of(&self, id: &ObjId) -> (Option<String>, Option<u64>) {
        let Some(meta) = self
            .doc
            .hash_for_opid(id)
            .and_then(|hash| self.doc.get_change_meta_by_hash(&hash))
        else {
            return (None, None);
        };
        (
            meta.message.as_deref().map(str::to_owned),
            u64::try_from(meta.timestamp).ok(),
        )
    }
}

/// True when writing `put` over the values a key holds now would change nothing. For an
/// observation the time it was made is not part of the value: re-asserting a state only
/// refreshes liveness.
fn unchanged(put: &Put, current: &[String]) -> bool {
    let Ok(new) = put.json() else { return false };
    match (new, current) {
        (None, []) => true,
        (None, _) | (Some(_), []) => false,
        (Some(new), [only]) => match put {
            Put::Observation { observation, .. } => serde_json::from_str::<Observation>(only)
                .is_ok_and(|old| old.same_value(observation)),
            _ => &new == only,
        },
        // A conflict is resolved by writing, even the same value.
        (Some(_), _) => false,
    }
}

fn str_of(value: &Value<'_>) -> Option<String> {
    match value {
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Str(text) => Some(text.to_string()),
            _ => None,
        },
        Value::Object(_) => None,
    }
}

/// Checks that a change only touches what the schema allows: root keys of the layout above,
/// set to a valid JSON value of their kind, or deleted where deleting is allowed.
/// `Automerge::load` of document and change chunks only: Automerge's bundle decoder panics
/// on some truncated input (found by fuzzing), and a saved document holds no bundles. A
/// panic in the other decoders is reported as a load error like any other bad input.
fn load_automerge(service: &Name, bytes: &[u8]) -> Result<Automerge, CrdtError> {
    let error = |reason: String| CrdtError::Load {
        service: service.to_string(),
        reason,
    };
    check_chunk_types(bytes).map_err(error)?;
    std::panic::catch_unwind(|| Automerge::load(bytes))
        .map_err(|_| error("the document does not decode".into()))?
        .map_err(|e| error(e.to_string()))
}

/// Automerge's chunk types that hold one change: plain and deflated. A chunk starts with four
/// magic bytes, a four-byte checksum, its type and its length (unsigned LEB128).
const CHANGE_CHUNK_TYPES: [u8; 2] = [1, 2];
/// The chunk type of a whole document.
const DOCUMENT_CHUNK_TYPE: u8 = 0;

/// Checks that `bytes` is a sequence of document and change chunks, by their headers.
fn check_chunk_types(mut bytes: &[u8]) -> Result<(), String> {
    while !bytes.is_empty() {
        let kind = *bytes.get(8).ok_or("truncated chunk header")?;
        if kind != DOCUMENT_CHUNK_TYPE && !CHANGE_CHUNK_TYPES.contains(&kind) {
            return Err(format!("chunk type {kind} is not a document or a change"));
        }
        let mut length: u64 = 0;
        let mut at = 9;
        for shift in (0..64).step_by(7) {
            let byte = *bytes.get(at).ok_or("truncated chunk length")?;
            at += 1;
            length |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        let end = usize::try_from(length)
            .ok()
            .and_then(|length| at.checked_add(length))
            .filter(|&end| end <= bytes.len())
            .ok_or("truncated chunk")?;
        bytes = &bytes[end..];
    }
    Ok(())
}

/// Parses one change from a peer, more strictly than `Change::try_from` alone (both found
/// by fuzzing):
/// - only change chunks: Automerge would also parse a bundle chunk here, and its bundle
///   decoder panics on some truncated input;
/// - a panic while parsing is a decode error, not the end of the node's driver;
/// - the checksum must match: Automerge checks it when it loads a whole document, not when
///   it parses one change, so a change with a wrong checksum was applied and the document
///   saved with it then failed to load. The checksum is the first four bytes of the hash.
fn parse_change(bytes: &[u8]) -> Result<Change, CrdtError> {
    let kind = bytes.get(8).copied();
    if !kind.is_some_and(|k| CHANGE_CHUNK_TYPES.contains(&k)) {
        return Err(CrdtError::ChangeDecode(format!(
            "chunk type {kind:?} is not a change"
        )));
    }
    let change = std::panic::catch_unwind(|| Change::try_from(bytes))
        .map_err(|_| CrdtError::ChangeDecode("the change does not decode".into()))?
        .map_err(|e| CrdtError::ChangeDecode(e.to_string()))?;
    let hash = change.hash();
    if bytes.get(4..8) != Some(&hash.0[..4]) {
        return Err(CrdtError::ChangeDecode(format!(
            "checksum does not match change {hash}"
        )));
    }
    Ok(change)
}

pub(crate) fn validate_change(change: &Change) -> Result<Vec<String>, CrdtError> {
    use automerge::legacy::{Key, ObjectId, OpType};
    let expanded = change.decode();
    let mut keys = Vec::with_capacity(expanded.operations.len());
    for op in &expanded.operations {
        let key = match &op.key {
            Key::Map(k) => k.to_string(),
            Key::Seq(_) => {
                return Err(CrdtError::ChangeSchema {
                    key: String::new(),
                    reason: "sequence operations are not part of the schema".into(),
                })
            }
        };
        let schema = |reason: &str| CrdtError::ChangeSchema {
            key: key.clone(),
            reason: reason.to_owned(),
        };
        if op.obj != ObjectId::Root {
            return Err(schema("only root keys are part of the schema"));
        }
        let Some(record) = RecordKey::parse(&key) else {
            return Err(schema("not a key of the schema"));
        };
        match &op.action {
            OpType::Delete if record.deletable() => {}
            OpType::Delete => return Err(schema("incidents and their updates are never deleted")),
            OpType::Put(ScalarValue::Str(text)) => {
                record.validate_json(text).map_err(|r| schema(&r))?
            }
            _ => return Err(schema("records are JSON strings")),
        }
        keys.push(key);
    }
    Ok(keys)
}
