//! One service's availability as an Automerge document.
//!
//! Layout: the root map holds one key per (component, region) cell, `obs/<component>/<region>`,
//! whose value is the whole observation as one JSON string. Flat keys and scalar values mean
//! that no two replicas ever create the same object concurrently (which Automerge would
//! resolve by hiding one object wholesale), and that a concurrent write to one cell is a plain
//! register conflict: one value wins everywhere, the others stay visible as `conflicts`.

use std::collections::BTreeMap;

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{
    ActorId, Automerge, Change, ChangeHash, ObjId, PatchAction, ReadDoc, ScalarValue, Value, ROOT,
};
use serde::Serialize;

use crate::error::CrdtError;
use crate::model::{Name, Observation, StatusWrite};

/// Prefix of the root keys that hold observations.
const OBSERVATION_PREFIX: &str = "obs/";
/// Most changes accepted from a peer in one batch; a larger batch is a protocol error.
pub const REMOTE_BATCH_MAX: usize = 4096;

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

/// What a cell holds: the winning value and the values that lost a concurrent write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CellRead {
    pub observation: Observation,
    pub conflicts: Vec<Observation>,
    /// The node whose change set the winning value, if the change names one.
    pub origin_node: Option<String>,
    /// When that change was made, on its origin's clock.
    pub changed_at_ms: Option<u64>,
}

/// One service's document.
#[derive(Debug)]
pub struct ServiceDoc {
    service: Name,
    doc: Automerge,
}

impl ServiceDoc {
    /// An empty document that writes under `actor`. The actor must never have written to this
    /// service before on any replica (see `Replica::new`).
    pub fn new(service: Name, actor: ActorId) -> Self {
        Self {
            service,
            doc: Automerge::new().with_actor(actor),
        }
    }

    /// Loads a saved document and validates every change in it as if it came from a peer.
    pub fn load(service: Name, bytes: &[u8], actor: ActorId) -> Result<Self, CrdtError> {
        let doc = Automerge::load(bytes).map_err(|e| CrdtError::Load {
            service: service.to_string(),
            reason: e.to_string(),
        })?;
        for change in doc.get_changes(&[]) {
            validate_change(&change)?;
        }
        Ok(Self {
            service,
            doc: doc.with_actor(actor),
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
        let key = observation_key(&write.component, &write.region);
        if let Some(current) = self.read_cell_key(&key) {
            if current.conflicts.is_empty() && current.observation.same_value(&write.observation) {
                return Ok(None);
            }
        }
        let json = serde_json::to_string(&write.observation).map_err(|e| CrdtError::Load {
            service: self.service.to_string(),
            reason: e.to_string(),
        })?;
        let time = i64::try_from(now_ms).unwrap_or(i64::MAX);
        self.doc
            .transact_with::<_, _, automerge::AutomergeError, _>(
                |_| {
                    CommitOptions::default()
                        .with_time(time)
                        .with_message(origin_node)
                },
                |tx| {
                    tx.put(ROOT, key.as_str(), ScalarValue::Str(json.as_str().into()))?;
                    Ok(())
                },
            )
            .map_err(|failure| CrdtError::Automerge(failure.error))?;
        Ok(self.doc.get_last_local_change())
    }

    /// Applies change bytes from a peer. Every change is decoded and checked against the
    /// schema first; one bad change rejects the whole batch and nothing is applied.
    /// Changes whose dependencies are missing are held by Automerge until they arrive.
    /// Returns the number of changes that were new here.
    pub fn apply_remote(&mut self, changes: &[Vec<u8>]) -> Result<usize, CrdtError> {
        if changes.len() > REMOTE_BATCH_MAX {
            return Err(CrdtError::BatchTooLarge {
                count: changes.len(),
                limit: REMOTE_BATCH_MAX,
            });
        }
        let mut decoded = Vec::with_capacity(changes.len());
        for bytes in changes {
            let change = Change::try_from(bytes.as_slice())
                .map_err(|e| CrdtError::ChangeDecode(e.to_string()))?;
            validate_change(&change)?;
            decoded.push(change);
        }
        let fresh: Vec<Change> = decoded
            .into_iter()
            .filter(|c| self.doc.get_change_by_hash(&c.hash()).is_none())
            .collect();
        let count = fresh.len();
        if count > 0 {
            self.doc.apply_changes(fresh)?;
        }
        Ok(count)
    }

    /// The current heads.
    pub fn heads(&self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// True when every hash in `heads` is a change this document holds.
    pub fn has_all(&self, heads: &[ChangeHash]) -> bool {
        heads
            .iter()
            .all(|h| self.doc.get_change_by_hash(h).is_some())
    }

    /// The changes a peer lacks, given the heads it reported. Hashes this document does not
    /// know are ignored, which may resend changes the peer has (harmless: apply is idempotent).
    pub fn changes_since(&self, their_heads: &[ChangeHash]) -> Vec<Vec<u8>> {
        let known: Vec<ChangeHash> = their_heads
            .iter()
            .copied()
            .filter(|h| self.doc.get_change_by_hash(h).is_some())
            .collect();
        self.doc
            .get_changes(&known)
            .into_iter()
            .map(|mut c| c.bytes().into_owned())
            .collect()
    }

    /// The cell events between two sets of heads, both held by this document, coalesced to
    /// the latest value per cell.
    pub fn events_between(&self, before: &[ChangeHash], after: &[ChangeHash]) -> Vec<StatusEvent> {
        let mut events = Vec::new();
        for patch in self.doc.diff(before, after) {
            if !patch.path.is_empty() {
                continue;
            }
            let key = match &patch.action {
                PatchAction::PutMap { key, .. } | PatchAction::DeleteMap { key } => key,
                _ => continue,
            };
            let Some((component, region)) = parse_observation_key(key) else {
                continue;
            };
            let read = self.read_cell_key_at(key, after);
            events.push(StatusEvent {
                service: self.service.clone(),
                component,
                region,
                conflict: read.as_ref().is_some_and(|r| !r.conflicts.is_empty()),
                origin_node: read.as_ref().and_then(|r| r.origin_node.clone()),
                changed_at_ms: read.as_ref().and_then(|r| r.changed_at_ms),
                observation: read.map(|r| r.observation),
            });
        }
        events
    }

    /// Every cell with its current value, ordered by (component, region).
    pub fn cells(&self) -> BTreeMap<(Name, Name), CellRead> {
        let mut cells = BTreeMap::new();
        for key in self.doc.keys(ROOT) {
            let Some(cell) = parse_observation_key(&key) else {
                continue;
            };
            if let Some(read) = self.read_cell_key(&key) {
                cells.insert(cell, read);
            }
        }
        cells
    }

    /// Number of changes in the history (for limits and metrics).
    pub fn history_len(&self) -> usize {
        self.doc.get_changes_meta(&[]).len()
    }

    /// The whole document, compressed.
    pub fn save(&self) -> Vec<u8> {
        self.doc.save()
    }

    fn read_cell_key(&self, key: &str) -> Option<CellRead> {
        let winner = self.doc.get(ROOT, key).ok()??;
        let all = self.doc.get_all(ROOT, key).ok()?;
        let origin = self.origin_of(&winner.1);
        cell_from_values(winner, all, origin)
    }

    fn read_cell_key_at(&self, key: &str, heads: &[ChangeHash]) -> Option<CellRead> {
        let winner = self.doc.get_at(ROOT, key, heads).ok()??;
        let all = self.doc.get_all_at(ROOT, key, heads).ok()?;
        let origin = self.origin_of(&winner.1);
        cell_from_values(winner, all, origin)
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

/// The winner is what Automerge's `get` returns, the same on every replica; the other values
/// of `get_all` lost a concurrent write. Values that do not parse were rejected on the way in
/// and are skipped defensively.
fn cell_from_values(
    winner: (Value<'_>, ObjId),
    all: Vec<(Value<'_>, ObjId)>,
    (origin_node, changed_at_ms): (Option<String>, Option<u64>),
) -> Option<CellRead> {
    let observation = observation_from_value(&winner.0)?;
    let conflicts = all
        .iter()
        .filter(|(_, id)| *id != winner.1)
        .filter_map(|(v, _)| observation_from_value(v))
        .collect();
    Some(CellRead {
        observation,
        conflicts,
        origin_node,
        changed_at_ms,
    })
}

fn observation_from_value(value: &Value<'_>) -> Option<Observation> {
    match value {
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Str(text) => serde_json::from_str(text).ok(),
            _ => None,
        },
        Value::Object(_) => None,
    }
}

fn observation_key(component: &Name, region: &Name) -> String {
    format!("{OBSERVATION_PREFIX}{component}/{region}")
}

fn parse_observation_key(key: &str) -> Option<(Name, Name)> {
    let rest = key.strip_prefix(OBSERVATION_PREFIX)?;
    let (component, region) = rest.split_once('/')?;
    Some((
        Name::parse("component", component).ok()?,
        Name::parse("region", region).ok()?,
    ))
}

/// Checks that a change only touches what the schema allows: root keys `obs/<c>/<r>` set to a
/// valid observation, or deleted.
fn validate_change(change: &Change) -> Result<(), CrdtError> {
    use automerge::legacy::{Key, ObjectId, OpType};
    let expanded = change.decode();
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
        if parse_observation_key(&key).is_none() {
            return Err(schema("not an observation key obs/<component>/<region>"));
        }
        match &op.action {
            OpType::Delete => {}
            OpType::Put(ScalarValue::Str(text)) => {
                let observation: Observation = serde_json::from_str(text)
                    .map_err(|e| schema(&format!("observation does not parse: {e}")))?;
                observation.validate().map_err(|e| schema(&e.to_string()))?;
            }
            _ => return Err(schema("observations are JSON strings")),
        }
    }
    Ok(())
}
