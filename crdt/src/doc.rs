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

use automerge::transaction::CommitOptions;
use automerge::{
    ActorId, Automerge, Change, ChangeHash, ObjId, PatchAction, ReadDoc, ScalarValue, Value, ROOT,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::epoch::{
    self, ActorKind, CarriedWrite, Clock, EpochMeta, Lineage, Origin, WriteId, Writer, META_KEY,
};
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
    /// Changes this document made itself while applying (a base it proposed, writes it
    /// carried into a new epoch): the caller broadcasts them like local changes.
    pub made: Vec<Vec<u8>>,
    /// The epoch this document rolled over to, when it did.
    pub rolled_over: Option<u32>,
}

/// Most writes of older epochs waiting to be carried (their writer's previous write has not
/// arrived); beyond it the newest are dropped and counted (anti-entropy brings them again).
pub const WAITING_MAX: usize = 16_384;
/// Most changes of a newer epoch held until its base arrives; beyond it they are dropped and
/// counted (anti-entropy brings the base and them again).
pub const FUTURE_MAX: usize = 16_384;

/// Counters of the epoch machinery, for metrics; they only grow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochStats {
    /// Writes of an older epoch carried into the current one by this node.
    pub carried: u64,
    /// Changes of an older epoch that the current base already covers (dropped).
    pub stale: u64,
    /// Changes dropped because the waiting or future buffers were full.
    pub dropped: u64,
}

/// The epoch before the current one, kept until the next rollover: clients resuming with a
/// cursor of it are answered exactly, and its writes can still be carried if a concurrent
/// proposal wins.
#[derive(Debug)]
struct PrevEpoch {
    doc: Automerge,
    meta: EpochMeta,
    base: Option<ChangeHash>,
}

/// One service's document.
#[derive(Debug)]
pub struct ServiceDoc {
    service: Name,
    doc: Automerge,
    records: usize,
    /// Origin and keys of remote changes Automerge holds back until their dependencies arrive.
    held_back: BTreeMap<ChangeHash, (Option<String>, Vec<String>)>,
    /// The current epoch: its number, coverage clock and the origins its base restates.
    meta: EpochMeta,
    /// The current epoch's base change (`None` in epoch 0).
    base: Option<ChangeHash>,
    /// This incarnation's writer id and the number of its last write to this document.
    writer: Writer,
    writes_made: u64,
    prev: Option<PrevEpoch>,
    /// Uncovered writes of older epochs not carried yet (a gap before them).
    waiting: BTreeMap<WriteId, CarriedWrite>,
    /// Carried changes of the current epoch, by write.
    carried: BTreeMap<WriteId, ChangeHash>,
    /// Changes of newer epochs (or another base of this one), until their base arrives.
    future: BTreeMap<Lineage, Vec<Vec<u8>>>,
    epoch_stats: EpochStats,
    /// Encoded bytes of the current epoch's changes (approximate after a load).
    history_bytes: u64,
    /// Counts applies that put changes into the document other than the batch's own, at
    /// once: a held-back change released, a carried write made here, a rollover. Storage that
    /// logs a batch's bytes as they came must save from the document instead when it moved.
    irregular_applies: u64,
    /// Set for good once held-back changes were too many to track: every apply counts as
    /// irregular from then on.
    untracked_held_back: bool,
}

impl ServiceDoc {
    /// An empty document that writes under `actor`. The actor must never have written to this
    /// service before on any replica (see `Replica::new`).
    pub fn new(service: Name, actor: ActorId) -> Self {
        Self::from_automerge(service, Automerge::new(), &actor, 0)
    }

    /// Wraps a loaded Automerge document: finds its epoch from its base change, if any.
    fn from_automerge(service: Name, doc: Automerge, actor: &ActorId, saved_len: usize) -> Self {
        let (meta, base) = find_base(&doc);
        let mut this = Self {
            service,
            doc,
            records: 0,
            held_back: BTreeMap::new(),
            meta,
            base,
            writer: epoch::writer_of(actor),
            writes_made: 0,
            prev: None,
            waiting: BTreeMap::new(),
            carried: BTreeMap::new(),
            future: BTreeMap::new(),
            epoch_stats: EpochStats::default(),
            history_bytes: 0,
            irregular_applies: 0,
            untracked_held_back: false,
        };
        // The saved size stands in for the epoch's bytes: re-encoding would cost a load's time.
        this.history_bytes = saved_len as u64;
        this.carried = carried_in(&this.doc, this.lineage());
        this.reset_actor();
        this.records = this.count_records();
        this
    }

    /// Loads a saved document and validates every change in it as if it came from a peer.
    pub fn load(service: Name, bytes: &[u8], actor: ActorId) -> Result<Self, CrdtError> {
        let doc = load_automerge(&service, bytes)?;
        for change in doc.get_changes(&[]) {
            match ActorKind::parse(change.actor_id()) {
                Some(ActorKind::Base { .. }) => {
                    validate_base(&change)?;
                }
                Some(_) => {
                    validate_change(&change)?;
                }
                None => return Err(actor_error()),
            }
        }
        Ok(Self::from_automerge(service, doc, &actor, bytes.len()))
    }

    /// Loads a document this node saved itself, without re-validating every change: its
    /// changes were validated when they were applied, and storage checksums the bytes. Use
    /// [`Self::load`] for anything that came from elsewhere.
    pub fn load_trusted(service: Name, bytes: &[u8], actor: ActorId) -> Result<Self, CrdtError> {
        let doc = load_automerge(&service, bytes)?;
        Ok(Self::from_automerge(service, doc, &actor, bytes.len()))
    }

    /// Attaches the previous epoch's document (saved by [`Self::save_prev`]) after a load, so
    /// cursors of that epoch resume exactly. A document of another lineage than the one the
    /// current base closed is ignored. Loaded as trusted (this node saved it).
    pub fn attach_prev(&mut self, bytes: &[u8]) -> Result<(), CrdtError> {
        let doc = load_automerge(&self.service, bytes)?;
        let (meta, base) = find_base(&doc);
        if meta.epoch >= self.meta.epoch {
            return Ok(());
        }
        for change in doc.get_changes_meta(&[]) {
            let uncovered = ActorKind::parse(&change.actor)
                .and_then(|k| k.write_id(change.seq))
                .filter(|w| !self.meta.clock.covers(w) && !self.carried.contains_key(w));
            if uncovered.is_some() {
                if let Some(write) = doc
                    .get_change_by_hash(&change.hash)
                    .and_then(|c| carried_write(&c))
                {
                    self.wait(write);
                }
            }
        }
        self.prev = Some(PrevEpoch { doc, meta, base });
        Ok(())
    }

    /// The previous epoch's whole document, for storage (`None` in epoch 0 and right after
    /// a restart that found none).
    pub fn save_prev(&self) -> Option<Vec<u8>> {
        self.prev.as_ref().map(|p| p.doc.save())
    }

    /// Writes as `actor` from now on: a new incarnation, whose writes count from 1.
    pub fn set_actor(&mut self, actor: ActorId) {
        self.writer = epoch::writer_of(&actor);
        self.writes_made = 0;
        self.reset_actor();
    }

    /// The current epoch number (0 until the first rollover).
    pub fn epoch(&self) -> u32 {
        self.meta.epoch
    }

    /// The current epoch's base change, if it has one.
    pub fn base(&self) -> Option<ChangeHash> {
        self.base
    }

    /// Counters of carried, stale and dropped changes.
    pub fn epoch_stats(&self) -> &EpochStats {
        &self.epoch_stats
    }

    /// The lineage of the current epoch.
    pub fn lineage(&self) -> Lineage {
        Lineage::of(self.meta.epoch, self.base.as_ref())
    }

    /// Whether the write `write` is part of this document: covered by the current base, in
    /// the current epoch's changes, or waiting to be carried.
    pub fn holds_write(&self, write: &WriteId) -> bool {
        if self.meta.clock.covers(write) || self.carried.contains_key(write) {
            return true;
        }
        if self.waiting.contains_key(write) {
            return true;
        }
        self.doc.get_changes_meta(&[]).iter().any(|m| {
            ActorKind::parse(&m.actor)
                .filter(|k| !matches!(k, ActorKind::Carried { .. }))
                .and_then(|k| k.write_id(m.seq))
                == Some(*write)
        })
    }

    /// The identity of the change `hash` of the current epoch, if it is a write.
    pub fn write_of(&self, hash: &ChangeHash) -> Option<WriteId> {
        let meta = self.doc.get_change_meta_by_hash(hash)?;
        ActorKind::parse(&meta.actor)?.write_id(meta.seq)
    }

    /// Whether a peer with `heads` holds every change of `cut` (both of this document).
    pub fn covered_by(&self, cut: &[ChangeHash], heads: &[ChangeHash]) -> bool {
        if !self.has_all(heads) || !self.has_all(cut) {
            return false;
        }
        let missing = self.changes_after(heads);
        cut.iter().all(|h| !missing.contains(h))
    }

    /// How many applies put changes into the document that were not the applied batch's own
    /// (see the field). While it stays the same, a batch's bytes are exactly what it added.
    pub fn irregular_applies(&self) -> u64 {
        self.irregular_applies
    }

    /// Bytes of the current epoch's changes (their encoded size): a size trigger for rollover.
    pub fn history_bytes(&self) -> u64 {
        self.history_bytes
    }

    /// When the current epoch started (ms): its base's time, or epoch 0's first change.
    pub fn epoch_started_ms(&self) -> Option<u64> {
        let first = match self.base {
            Some(base) => self.doc.get_change_meta_by_hash(&base)?.timestamp,
            None => self.doc.get_changes_meta(&[]).first()?.timestamp,
        };
        u64::try_from(first).ok()
    }

    /// Whether every hash of `heads` is a change of the previous epoch's document.
    pub fn prev_has_all(&self, heads: &[ChangeHash]) -> bool {
        self.prev.as_ref().is_some_and(|p| {
            heads
                .iter()
                .all(|h| p.doc.get_change_meta_by_hash(h).is_some())
        })
    }

    /// Rolls the document over to the next epoch at the cut `at` (heads this document holds,
    /// known to be held by every live node): makes the base change, moves to it, and carries
    /// every write after the cut. The base and carried changes are in `made`, for the caller
    /// to broadcast. `None` when `at` is not held here or there is nothing to compact.
    pub fn rollover(&mut self, at: &[ChangeHash]) -> Result<Option<RemoteApplied>, CrdtError> {
        if at.is_empty() || !self.has_all(at) {
            return Ok(None);
        }
        let after = self.changes_after(at);
        let mut clock = self.meta.clock.clone();
        let mut time_ms = 0_i64;
        let mut compacted = 0;
        for meta in self.doc.get_changes_meta(&[]) {
            if after.contains(&meta.hash) {
                continue;
            }
            time_ms = time_ms.max(meta.timestamp);
            match ActorKind::parse(&meta.actor) {
                Some(ActorKind::Base { .. }) | None => {}
                Some(kind) => {
                    compacted += 1;
                    if let Some(write) = kind.write_id(meta.seq) {
                        clock.cover(&write);
                    }
                }
            }
        }
        if compacted == 0 {
            return Ok(None);
        }
        let mut records = BTreeMap::new();
        let mut origins = BTreeMap::new();
        for (key, (values, origin)) in reads_of(&self.doc, Some(at), self.base.as_ref(), &self.meta)
        {
            // The winner at the cut; values that lost a concurrent write there collapse.
            let Some(json) = values.into_iter().next() else {
                continue;
            };
            origins.insert(key.clone(), origin);
            records.insert(key, json);
        }
        let meta = EpochMeta {
            epoch: self.meta.epoch.saturating_add(1),
            clock,
            origins,
        };
        let mut base = epoch::build_base(&meta, &records, time_ms)?;
        let mut applied = RemoteApplied::default();
        applied.made.push(base.bytes().into_owned());
        self.adopt(base, meta, &mut applied)?;
        Ok(Some(applied))
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
                |tx| epoch::put_records(tx, &writes),
            )
            .map_err(|failure| CrdtError::Automerge(failure.error))?;
        if writes.iter().any(|(_, json)| json.is_none()) {
            self.records = self.count_records();
        } else {
            self.records += new_keys;
        }
        self.writes_made += 1;
        let keys = writes.into_iter().map(|(key, _)| key).collect();
        let change = self.doc.get_last_local_change();
        if let Some(change) = &change {
            self.history_bytes += change.raw_bytes().len() as u64;
        }
        Ok(change.map(|change| (change, keys)))
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
    ///
    /// Changes are routed by the epoch their actor names (see [`crate::epoch`]): those of the
    /// current epoch are applied; a base that beats the current one is adopted; writes of an
    /// older epoch are carried unless the current base covers them; changes of a newer epoch
    /// wait for its base.
    pub fn apply_remote_keys(&mut self, changes: &[Vec<u8>]) -> Result<RemoteApplied, CrdtError> {
        if changes.len() > REMOTE_BATCH_MAX {
            return Err(CrdtError::BatchTooLarge {
                count: changes.len(),
                limit: REMOTE_BATCH_MAX,
            });
        }
        let lineage = self.lineage();
        let mut current = Vec::with_capacity(changes.len());
        let mut current_keys = Vec::with_capacity(changes.len());
        let mut bases = Vec::new();
        let mut older = Vec::new();
        let mut newer = Vec::new();
        let mut held = Vec::with_capacity(changes.len());
        for bytes in changes {
            let change = parse_change(bytes)?;
            let kind = ActorKind::parse(change.actor_id()).ok_or_else(actor_error)?;
            let origin = change.message().map(str::to_owned);
            if kind.lineage() == Some(lineage) && self.has_change(&change.hash()) {
                held.push((change.hash(), origin));
                continue;
            }
            // Expanding a change decodes its columns; a panic in that decoder is a bad change.
            let checked = std::panic::catch_unwind(|| match kind {
                ActorKind::Base { .. } => {
                    validate_base(&change).map(|meta| (Vec::new(), Some(meta)))
                }
                _ => validate_change(&change).map(|keys| (keys, None)),
            })
            .map_err(|_| {
                CrdtError::ChangeDecode(format!("change {} does not decode", change.hash()))
            })??;
            match (kind, checked) {
                (ActorKind::Base { .. }, (_, Some(meta))) => bases.push((change, meta)),
                (_, (keys, _)) => match kind.lineage() {
                    Some(l) if l == lineage => {
                        current_keys.push((change.hash(), origin, keys, kind));
                        current.push(change);
                    }
                    Some(l) if l.epoch < lineage.epoch => older.push((change, kind)),
                    Some(l) => newer.push((l, bytes.clone())),
                    None => {}
                },
            }
        }
        let mut applied = RemoteApplied {
            held,
            ..RemoteApplied::default()
        };
        self.apply_current(current, current_keys, &mut applied)?;
        // The best base that beats the current one, if any.
        let mut best: Option<(Change, EpochMeta)> = None;
        for (change, meta) in bases {
            let current_hash = self.base.unwrap_or(ChangeHash([0; 32]));
            let beats_current = meta.beats(&change.hash(), &self.meta, &current_hash);
            let beats_best = best
                .as_ref()
                .is_none_or(|(b, m)| meta.beats(&change.hash(), m, &b.hash()));
            if beats_current && beats_best {
                best = Some((change, meta));
            } else if !beats_current && self.base != Some(change.hash()) {
                self.epoch_stats.stale += 1;
            }
        }
        if let Some((base, meta)) = best {
            self.adopt(base, meta, &mut applied)?;
        }
        for (change, kind) in older {
            self.take_older(&change, &kind);
        }
        for (lineage, bytes) in newer {
            if lineage == self.lineage() {
                // The base of this lineage came in the same batch.
                let _ = self.apply_remote_nested(&[bytes], &mut applied);
            } else if lineage.epoch >= self.meta.epoch
                && self.future.values().map(Vec::len).sum::<usize>() < FUTURE_MAX
            {
                self.future.entry(lineage).or_default().push(bytes);
            } else if lineage.epoch >= self.meta.epoch {
                self.epoch_stats.dropped += 1;
            } else {
                self.epoch_stats.stale += 1;
            }
        }
        self.carry_waiting(&mut applied)?;
        self.records = self.count_records();
        Ok(applied)
    }

    /// Applies changes of the current lineage (already validated).
    fn apply_current(
        &mut self,
        fresh: Vec<Change>,
        fresh_keys: Vec<(ChangeHash, Option<String>, Vec<String>, ActorKind)>,
        applied: &mut RemoteApplied,
    ) -> Result<(), CrdtError> {
        if fresh.is_empty() {
            return Ok(());
        }
        applied.new_changes += fresh.len();
        self.history_bytes += fresh
            .iter()
            .map(|c| c.raw_bytes().len() as u64)
            .sum::<u64>();
        if self.doc.apply_changes(fresh.clone()).is_err() {
            // A change that collides with one held (the same actor and sequence number, other
            // bytes) cannot be applied; apply the others one by one.
            for change in fresh {
                let _ = self.doc.apply_changes([change]);
            }
        }
        for (hash, origin, keys, kind) in fresh_keys {
            if let ActorKind::Carried { write, .. } = kind {
                self.carried.insert(write, hash);
                self.waiting.remove(&write);
            }
            if self.has_change(&hash) {
                applied.held.push((hash, origin));
                applied.keys.extend(keys);
            } else if self.held_back.len() < HELD_BACK_MAX {
                self.held_back.insert(hash, (origin, keys));
            } else {
                // Beyond the bound the keys are forgotten: the caller diffs instead.
                applied.keys_incomplete = true;
                self.untracked_held_back = true;
            }
        }
        self.release_held_back(applied);
        Ok(())
    }

    /// Reports held-back changes whose dependencies have arrived (by any apply: a remote
    /// batch, or a write carried here that another node carried first and built on).
    fn release_held_back(&mut self, applied: &mut RemoteApplied) {
        let arrived: Vec<ChangeHash> = self
            .held_back
            .keys()
            .filter(|h| self.has_change(h))
            .copied()
            .collect();
        if !arrived.is_empty() || self.untracked_held_back {
            self.irregular_applies += 1;
        }
        for hash in arrived {
            if let Some((origin, keys)) = self.held_back.remove(&hash) {
                applied.held.push((hash, origin));
                applied.keys.extend(keys);
            }
        }
    }

    /// [`Self::apply_remote_keys`] into an outcome being built (changes released by a new
    /// base).
    fn apply_remote_nested(
        &mut self,
        changes: &[Vec<u8>],
        applied: &mut RemoteApplied,
    ) -> Result<(), CrdtError> {
        let inner = self.apply_remote_keys(changes)?;
        applied.new_changes += inner.new_changes;
        applied.keys.extend(inner.keys);
        applied.held.extend(inner.held);
        applied.keys_incomplete |= inner.keys_incomplete;
        applied.made.extend(inner.made);
        applied.rolled_over = applied.rolled_over.or(inner.rolled_over);
        Ok(())
    }

    /// A write of an older epoch: applied to the previous epoch's document when it is of
    /// that lineage, then carried unless the current base covers it.
    fn take_older(&mut self, change: &Change, kind: &ActorKind) {
        if let Some(prev) = self.prev.as_mut() {
            if kind.lineage() == Some(Lineage::of(prev.meta.epoch, prev.base.as_ref())) {
                let _ = prev.doc.apply_changes([change.clone()]);
            }
        }
        let Some(write) = kind.write_id(change.seq()) else {
            return;
        };
        if self.meta.clock.covers(&write) || self.carried.contains_key(&write) {
            self.epoch_stats.stale += 1;
            return;
        }
        if let Some(carried) = carried_write(change) {
            self.wait(carried);
        }
    }

    fn wait(&mut self, write: CarriedWrite) {
        if self.waiting.len() >= WAITING_MAX && !self.waiting.contains_key(&write.write) {
            self.epoch_stats.dropped += 1;
            return;
        }
        self.waiting.insert(write.write, write);
    }

    /// Carries every waiting write whose writer's previous write is covered or carried.
    fn carry_waiting(&mut self, applied: &mut RemoteApplied) -> Result<(), CrdtError> {
        let Some(base) = self.base else {
            return Ok(());
        };
        let lineage = self.lineage();
        let writers: BTreeSet<Writer> = self.waiting.keys().map(|w| w.writer).collect();
        for writer in writers {
            // The chain so far: the base, then this writer's carried writes without a gap.
            let mut tail_n = self.meta.clock.of(&writer);
            let mut tail = base;
            while let Some(hash) = self.carried.get(&WriteId {
                writer,
                n: tail_n + 1,
            }) {
                tail = *hash;
                tail_n += 1;
            }
            let mut chain = Vec::new();
            loop {
                let next = WriteId {
                    writer,
                    n: tail_n + 1,
                };
                let Some(write) = self.waiting.remove(&next) else {
                    break;
                };
                chain.push(write);
                tail_n += 1;
            }
            // Drop what is covered or already carried, below the chain.
            self.waiting
                .retain(|w, _| w.writer != writer || w.n > tail_n);
            if chain.is_empty() {
                continue;
            }
            let scratch = self.doc.fork_at(&[tail])?;
            let made = epoch::carry_chain(&scratch, lineage, &chain)?;
            let mut keys = Vec::new();
            for (write, change) in chain.iter().zip(&made) {
                self.carried.insert(write.write, change.hash());
                keys.extend(write.ops.iter().map(|(k, _)| k.clone()));
            }
            let new: Vec<Change> = made
                .into_iter()
                .filter(|c| !self.has_change(&c.hash()))
                .collect();
            self.epoch_stats.carried += new.len() as u64;
            if !new.is_empty() {
                self.irregular_applies += 1;
            }
            for mut change in new.iter().cloned() {
                applied.made.push(change.bytes().into_owned());
            }
            if !new.is_empty() {
                self.doc.apply_changes(new)?;
                applied.keys.extend(keys);
                // Changes built on these carried writes elsewhere may have waited for them.
                self.release_held_back(applied);
            }
        }
        Ok(())
    }

    /// Moves to the epoch of `base` (which beats the current one): a new document from the
    /// base, every uncovered write held here carried on top, and the keys whose value, losing
    /// values or origin differ from before reported as changed.
    fn adopt(
        &mut self,
        base: Change,
        meta: EpochMeta,
        applied: &mut RemoteApplied,
    ) -> Result<(), CrdtError> {
        let before = self.reads();
        // Every write held here that the new base does not cover.
        let mut writes: Vec<CarriedWrite> =
            std::mem::take(&mut self.waiting).into_values().collect();
        collect_uncovered(&self.doc, &meta.clock, &mut writes);
        if let Some(prev) = &self.prev {
            collect_uncovered(&prev.doc, &meta.clock, &mut writes);
        }
        let mut doc = Automerge::new();
        self.history_bytes = base.raw_bytes().len() as u64;
        doc.apply_changes([base.clone()])?;
        let old_doc = std::mem::replace(&mut self.doc, doc);
        let old_meta = std::mem::replace(&mut self.meta, meta);
        let old_base = self.base.replace(base.hash());
        if self.meta.epoch > old_meta.epoch {
            self.prev = Some(PrevEpoch {
                doc: old_doc,
                meta: old_meta,
                base: old_base,
            });
        }
        self.held_back.clear();
        self.carried.clear();
        self.reset_actor();
        for write in writes {
            if !self.meta.clock.covers(&write.write) {
                self.wait(write);
            }
        }
        // Changes of this lineage that came before their base.
        let lineage = self.lineage();
        self.future
            .retain(|l, _| l.epoch > lineage.epoch || *l == lineage);
        let released = self.future.remove(&lineage).unwrap_or_default();
        // What clients are told is the difference of the states, not the keys the carried
        // writes touch: they restate values clients saw in the epoch before.
        let mut inner = RemoteApplied::default();
        self.carry_waiting(&mut inner)?;
        for chunk in released.chunks(REMOTE_BATCH_MAX) {
            let _ = self.apply_remote_nested(chunk, &mut inner);
        }
        applied.new_changes += inner.new_changes;
        applied.held.extend(inner.held);
        applied.made.extend(inner.made);
        self.records = self.count_records();
        let after = self.reads();
        for (key, read) in &after {
            if before.get(key) != Some(read) {
                applied.keys.insert(key.clone());
            }
        }
        for key in before.keys() {
            if !after.contains_key(key) {
                applied.keys.insert(key.clone());
            }
        }
        self.irregular_applies += 1;
        applied.rolled_over = Some(self.meta.epoch);
        Ok(())
    }

    /// Every record's values (winner first) and the winner's origin, for comparing states.
    fn reads(&self) -> BTreeMap<String, (Vec<String>, Origin)> {
        reads_of(&self.doc, None, self.base.as_ref(), &self.meta)
    }

    /// The events a client whose cursor names `heads` of the previous epoch has not seen:
    /// every record whose value, losing values or origin differ from then, coalesced.
    /// `None` when the previous epoch's document does not hold those heads.
    pub fn events_since_prev(&self, heads: &[ChangeHash]) -> Option<Vec<DocEvent>> {
        let prev = self.prev.as_ref()?;
        if !self.prev_has_all(heads) {
            return None;
        }
        let then = reads_of(&prev.doc, Some(heads), prev.base.as_ref(), &prev.meta);
        let now = self.reads();
        let mut keys = BTreeSet::new();
        for (key, read) in &now {
            if then.get(key) != Some(read) {
                keys.insert(key.clone());
            }
        }
        keys.extend(then.keys().filter(|k| !now.contains_key(*k)).cloned());
        Some(self.events_for_keys(&keys, None))
    }

    /// Sets the actor local writes use: this incarnation's writer in the current lineage.
    fn reset_actor(&mut self) {
        let actor = ActorKind::Local {
            lineage: self.lineage(),
            writer: self.writer,
            start_n: if self.meta.epoch == 0 {
                0
            } else {
                self.writes_made
            },
        }
        .to_actor();
        self.doc.set_actor(actor);
    }

    /// The changes that are not ancestors of `heads` (all held here).
    fn changes_after(&self, heads: &[ChangeHash]) -> BTreeSet<ChangeHash> {
        self.doc
            .get_changes_meta(heads)
            .into_iter()
            .map(|m| m.hash)
            .collect()
    }

    /// Records in the current document (the base's meta key is not one).
    fn count_records(&self) -> usize {
        let meta = usize::from(self.base.is_some());
        self.doc.length(ROOT).saturating_sub(meta)
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

    /// The writes of the previous epoch (its changes but its base), in causal order: what
    /// the archive keeps of an epoch when it closes. Empty in epoch 0 and after a restart that
    /// found no previous epoch.
    pub fn prev_writes(&self) -> Vec<Change> {
        self.prev.as_ref().map_or_else(Vec::new, |p| {
            p.doc
                .get_changes(&[])
                .into_iter()
                .filter(|c| !matches!(ActorKind::parse(c.actor_id()), Some(ActorKind::Base { .. })))
                .collect()
        })
    }

    /// The previous epoch's number, if this document holds it.
    pub fn prev_epoch(&self) -> Option<u32> {
        self.prev.as_ref().map(|p| p.meta.epoch)
    }

    /// Whether `change` is a base change (it restates a state, it is not a write).
    pub fn is_base(change: &Change) -> bool {
        matches!(
            ActorKind::parse(change.actor_id()),
            Some(ActorKind::Base { .. })
        )
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
        let (origin_node, changed_at_ms) = self.origin_of(key, &winner.1);
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

    /// The origin node and time of the change that made the op `id` of `key`.
    fn origin_of(&self, key: &str, id: &ObjId) -> Origin {
        origin_in(&self.doc, self.base.as_ref(), &self.meta, key, id)
    }
}

/// The origin of the op `id` of `key` in `doc`: the change that made it, or for a value a base
/// restates, the origin the base recorded.
fn origin_in(
    doc: &Automerge,
    base: Option<&ChangeHash>,
    meta: &EpochMeta,
    key: &str,
    id: &ObjId,
) -> Origin {
    let Some(hash) = doc.hash_for_opid(id) else {
        return (None, None);
    };
    if Some(&hash) == base {
        return meta.origins.get(key).cloned().unwrap_or((None, None));
    }
    let Some(meta) = doc.get_change_meta_by_hash(&hash) else {
        return (None, None);
    };
    (
        meta.message.as_deref().map(str::to_owned),
        u64::try_from(meta.timestamp).ok(),
    )
}

/// Every record of `doc` (at `heads`, or now) with its values (winner first) and origin. One
/// pass over the root map: only keys in conflict are read again for their other values, and
/// the origin of each change is looked up once (a group commit sets many keys).
fn reads_of(
    doc: &Automerge,
    heads: Option<&[ChangeHash]>,
    base: Option<&ChangeHash>,
    meta: &EpochMeta,
) -> BTreeMap<String, (Vec<String>, Origin)> {
    let items: Vec<(String, Option<String>, ObjId, bool)> = match heads {
        Some(h) => doc
            .map_range_at(ROOT, .., h)
            .map(|item| {
                let (id, conflict) = (item.id(), item.conflict);
                let text = str_of(&item.value.into_value());
                (item.key.into_owned(), text, id, conflict)
            })
            .collect(),
        None => doc
            .map_range(ROOT, ..)
            .map(|item| {
                let (id, conflict) = (item.id(), item.conflict);
                let text = str_of(&item.value.into_value());
                (item.key.into_owned(), text, id, conflict)
            })
            .collect(),
    };
    let mut origins: std::collections::HashMap<ChangeHash, Origin> =
        std::collections::HashMap::new();
    let mut out = BTreeMap::new();
    for (key, winner, id, conflict) in items {
        if key == META_KEY {
            continue;
        }
        let mut values: Vec<String> = winner.into_iter().collect();
        if conflict {
            let all = match heads {
                Some(h) => doc.get_all_at(ROOT, key.as_str(), h),
                None => doc.get_all(ROOT, key.as_str()),
            };
            let mut losers: Vec<String> = all
                .unwrap_or_default()
                .iter()
                .filter(|(_, other)| *other != id)
                .filter_map(|(v, _)| str_of(v))
                .collect();
            losers.sort();
            values.extend(losers);
        }
        let from = match doc.hash_for_opid(&id) {
            Some(hash) if Some(&hash) == base => {
                meta.origins.get(&key).cloned().unwrap_or((None, None))
            }
            Some(hash) => origins
                .entry(hash)
                .or_insert_with(|| origin_in(doc, base, meta, &key, &id))
                .clone(),
            None => (None, None),
        };
        out.insert(key, (values, from));
    }
    out
}

/// The base change of a document and the epoch it starts (epoch 0 without one).
fn find_base(doc: &Automerge) -> (EpochMeta, Option<ChangeHash>) {
    for meta in doc.get_changes_meta(&[]) {
        if !meta.deps.is_empty() {
            continue;
        }
        if let Some(ActorKind::Base { .. }) = ActorKind::parse(&meta.actor) {
            // The base's records were validated when it was applied or loaded; only its
            // meta is needed here, read from the document rather than decoding the change.
            let parsed = doc
                .get_at(ROOT, META_KEY, &[meta.hash])
                .ok()
                .flatten()
                .and_then(|(value, _)| str_of(&value))
                .and_then(|json| EpochMeta::from_json(&json).ok());
            if let Some(parsed) = parsed {
                return (parsed, Some(meta.hash));
            }
        }
    }
    (EpochMeta::default(), None)
}

/// The carried changes of `lineage` in `doc`, by write.
fn carried_in(doc: &Automerge, lineage: Lineage) -> BTreeMap<WriteId, ChangeHash> {
    doc.get_changes_meta(&[])
        .into_iter()
        .filter_map(|meta| match ActorKind::parse(&meta.actor) {
            Some(ActorKind::Carried { lineage: l, write }) if l == lineage => {
                Some((write, meta.hash))
            }
            _ => None,
        })
        .collect()
}

/// Adds every write of `doc` that `clock` does not cover to `out`.
fn collect_uncovered(doc: &Automerge, clock: &Clock, out: &mut Vec<CarriedWrite>) {
    for meta in doc.get_changes_meta(&[]) {
        let uncovered = ActorKind::parse(&meta.actor)
            .and_then(|k| k.write_id(meta.seq))
            .filter(|w| !clock.covers(w));
        if uncovered.is_none() {
            continue;
        }
        if let Some(write) = doc
            .get_change_by_hash(&meta.hash)
            .and_then(|c| carried_write(&c))
        {
            out.push(write);
        }
    }
}

/// What a write did, to carry it into another epoch.
fn carried_write(change: &Change) -> Option<CarriedWrite> {
    use automerge::legacy::{Key, OpType};
    let write = ActorKind::parse(change.actor_id())?.write_id(change.seq())?;
    let mut ops = Vec::new();
    for op in change.decode().operations {
        let Key::Map(key) = &op.key else { continue };
        match &op.action {
            OpType::Put(ScalarValue::Str(text)) => {
                ops.push((key.to_string(), Some(text.to_string())))
            }
            OpType::Delete => ops.push((key.to_string(), None)),
            _ => {}
        }
    }
    Some(CarriedWrite {
        write,
        ops,
        time_ms: change.timestamp(),
        origin: change.message().map(str::to_owned),
    })
}

fn actor_error() -> CrdtError {
    CrdtError::ChangeSchema {
        key: String::new(),
        reason: "the change's actor is not one of the schema".into(),
    }
}

/// Checks a base change: the first of its epoch (no deps, seq 1), its meta under
/// [`META_KEY`] naming the epoch its actor names, and every other op a valid record.
pub(crate) fn validate_base(change: &Change) -> Result<EpochMeta, CrdtError> {
    use automerge::legacy::{Key, ObjectId, OpType};
    let schema = |key: &str, reason: &str| CrdtError::ChangeSchema {
        key: key.to_owned(),
        reason: reason.to_owned(),
    };
    let Some(ActorKind::Base { epoch }) = ActorKind::parse(change.actor_id()) else {
        return Err(actor_error());
    };
    if !change.deps().is_empty() || change.seq() != 1 || epoch == 0 {
        return Err(schema("", "a base change starts its epoch"));
    }
    let mut meta = None;
    for op in &change.decode().operations {
        let Key::Map(key) = &op.key else {
            return Err(schema("", "sequence operations are not part of the schema"));
        };
        if op.obj != ObjectId::Root {
            return Err(schema(key, "only root keys are part of the schema"));
        }
        let OpType::Put(ScalarValue::Str(text)) = &op.action else {
            return Err(schema(key, "a base only puts JSON strings"));
        };
        if key.as_str() == META_KEY {
            let parsed = EpochMeta::from_json(text).map_err(|r| schema(key, &r))?;
            if parsed.epoch != epoch {
                return Err(schema(key, "the meta names another epoch than the actor"));
            }
            meta = Some(parsed);
            continue;
        }
        let record = RecordKey::parse(key).ok_or_else(|| schema(key, "not a key of the schema"))?;
        record.validate_json(text).map_err(|r| schema(key, &r))?;
    }
    meta.ok_or_else(|| schema(META_KEY, "a base holds its epoch's meta"))
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
