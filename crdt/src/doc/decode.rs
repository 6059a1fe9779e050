//! Decoding and validating hostile input: change bytes from peers and saved documents.
//!
//! Everything here reads and never writes: a remote batch is decoded, checked against the
//! schema and sorted into a [`Batch`] by a `&self` method, so a batch that fails any check
//! has, by construction, changed nothing. Automerge's own decoders were found by fuzzing to
//! panic on some inputs and to skip a checksum; the checks below close both.

use automerge::legacy::{Key, ObjectId, OpType};
use automerge::{Automerge, Change, ChangeHash, ScalarValue};

use super::schema::RecordKey;
use super::{ServiceDoc, REMOTE_BATCH_MAX};
use crate::epoch::{ActorKind, EpochMeta, Lineage, META_KEY};
use crate::error::CrdtError;
use crate::model::Name;

/// Automerge's chunk types that hold one change: plain and deflated. A chunk starts with four
/// magic bytes, a four-byte checksum, its type and its length (unsigned LEB128).
const CHANGE_CHUNK_TYPES: [u8; 2] = [1, 2];
/// The chunk type of a whole document.
const DOCUMENT_CHUNK_TYPE: u8 = 0;

/// A remote batch, decoded, validated and sorted by where each change goes. Nothing of it
/// has touched the document.
#[derive(Debug, Default)]
pub(super) struct Batch {
    /// Changes of the current lineage the document holds already, with their origin node.
    pub(super) known: Vec<(ChangeHash, Option<String>)>,
    /// Changes of the current lineage that are new here.
    pub(super) current: Vec<CurrentChange>,
    /// Base changes of any epoch.
    pub(super) bases: Vec<BaseChange>,
    /// Writes of an older epoch.
    pub(super) older: Vec<OlderChange>,
    /// Changes of a newer epoch, or of another base of this one.
    pub(super) newer: Vec<NewerChange>,
}

/// A new change of the current lineage.
#[derive(Debug)]
pub(super) struct CurrentChange {
    pub(super) change: Change,
    /// The node that made it (the change's message).
    pub(super) origin: Option<String>,
    /// The root keys it writes.
    pub(super) keys: Vec<String>,
    pub(super) kind: ActorKind,
}

/// A base change and the meta it holds.
#[derive(Debug)]
pub(super) struct BaseChange {
    pub(super) change: Change,
    pub(super) meta: EpochMeta,
}

/// A write of an older epoch.
#[derive(Debug)]
pub(super) struct OlderChange {
    pub(super) change: Change,
    pub(super) kind: ActorKind,
}

/// A change of another lineage than the current one, kept as it came.
#[derive(Debug)]
pub(super) struct NewerChange {
    pub(super) lineage: Lineage,
    pub(super) bytes: Vec<u8>,
}

/// What checking one change found.
enum Checked {
    /// A write, and the keys it writes.
    Write(Vec<String>),
    /// A base, and its meta.
    Base(EpochMeta),
}

impl ServiceDoc {
    /// Decodes and validates every change of a remote batch, and sorts them (see [`Batch`]).
    ///
    /// # Errors
    /// [`CrdtError::BatchTooLarge`] beyond [`REMOTE_BATCH_MAX`] changes;
    /// [`CrdtError::ChangeDecode`] for bytes that are not one change; [`CrdtError::ChangeSchema`]
    /// for a change outside the schema. Either way the document is untouched (`&self`).
    pub(super) fn decode_batch(&self, changes: &[Vec<u8>]) -> Result<Batch, CrdtError> {
        if changes.len() > REMOTE_BATCH_MAX {
            return Err(CrdtError::BatchTooLarge {
                count: changes.len(),
                limit: REMOTE_BATCH_MAX,
            });
        }
        let lineage = self.lineage();
        let mut batch = Batch {
            known: Vec::with_capacity(changes.len()),
            current: Vec::with_capacity(changes.len()),
            ..Batch::default()
        };
        for bytes in changes {
            let change = parse_change(bytes)?;
            let kind = ActorKind::parse(change.actor_id()).ok_or_else(actor_error)?;
            let origin = change.message().map(str::to_owned);
            if kind.lineage() == Some(lineage) && self.has_change(&change.hash()) {
                batch.known.push((change.hash(), origin));
                continue;
            }
            // Expanding a change decodes its columns; a panic in that decoder is a bad change.
            let checked = std::panic::catch_unwind(|| match kind {
                ActorKind::Base { .. } => validate_base(&change).map(Checked::Base),
                _ => validate_change(&change).map(Checked::Write),
            })
            .map_err(|_| {
                CrdtError::ChangeDecode(format!("change {} does not decode", change.hash()))
            })??;
            match checked {
                Checked::Base(meta) => batch.bases.push(BaseChange { change, meta }),
                Checked::Write(keys) => match kind.lineage() {
                    Some(l) if l == lineage => batch.current.push(CurrentChange {
                        change,
                        origin,
                        keys,
                        kind,
                    }),
                    Some(l) if l.epoch < lineage.epoch => {
                        batch.older.push(OlderChange { change, kind })
                    }
                    Some(l) => batch.newer.push(NewerChange {
                        lineage: l,
                        bytes: bytes.clone(),
                    }),
                    None => {}
                },
            }
        }
        Ok(batch)
    }
}

/// Loads a saved document, checking its chunks first. `Automerge::load` of document and
/// change chunks only: Automerge's bundle decoder panics on some truncated input (found by
/// fuzzing), and a saved document holds no bundles. A panic in the other decoders is
/// reported as a load error like any other bad input.
pub(super) fn load_automerge(service: &Name, bytes: &[u8]) -> Result<Automerge, CrdtError> {
    let error = |reason: String| CrdtError::Load {
        service: service.to_string(),
        reason,
    };
    check_chunk_types(bytes).map_err(error)?;
    std::panic::catch_unwind(|| Automerge::load(bytes))
        .map_err(|_| error("the document does not decode".into()))?
        .map_err(|e| error(e.to_string()))
}

/// Validates every change of a document that came from elsewhere, as if it came from a peer.
pub(super) fn validate_saved(doc: &Automerge) -> Result<(), CrdtError> {
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
    Ok(())
}

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
pub(super) fn parse_change(bytes: &[u8]) -> Result<Change, CrdtError> {
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

/// The error of a change whose actor is none of the schema's (see [`ActorKind`]).
fn actor_error() -> CrdtError {
    CrdtError::ChangeSchema {
        key: String::new(),
        reason: "the change's actor is not one of the schema".into(),
    }
}

/// Checks a base change: the first of its epoch (no deps, seq 1), its meta under
/// [`META_KEY`] naming the epoch its actor names, and every other op a valid record.
pub(super) fn validate_base(change: &Change) -> Result<EpochMeta, CrdtError> {
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

/// Checks that a change only touches what the schema allows: root keys of the layout (see
/// `schema.rs`), set to a valid JSON value of their kind, or deleted where deleting is
/// allowed. Returns the keys it writes.
pub(super) fn validate_change(change: &Change) -> Result<Vec<String>, CrdtError> {
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

#[cfg(test)]
mod tests {
    use automerge::transaction::Transactable;
    use automerge::{ActorId, AutoCommit, ROOT};

    use super::*;
    use crate::doc::fixtures::{doc, name, observation, rogue_change, snapshot, write};
    use crate::model::State;

    /// A document holding one write of its own, and a valid change of another writer.
    fn doc_and_valid_change() -> (ServiceDoc, Vec<u8>) {
        let mut mine = doc(1);
        write(&mut mine, 1, "db", State::Operational);
        let mut theirs = doc(2);
        let change = write(&mut theirs, 2, "web", State::MajorOutage);
        (mine, change)
    }

    #[test]
    fn a_batch_over_the_limit_is_refused_and_changes_nothing() {
        let (mut mine, change) = doc_and_valid_change();
        let before = snapshot(&mine);
        let err = mine
            .apply_remote(&vec![change; REMOTE_BATCH_MAX + 1])
            .expect_err("refused");
        assert!(
            matches!(err, CrdtError::BatchTooLarge { count, limit }
                if count == REMOTE_BATCH_MAX + 1 && limit == REMOTE_BATCH_MAX),
            "{err}"
        );
        assert_eq!(snapshot(&mine), before);
    }

    #[test]
    fn bytes_that_do_not_decode_reject_the_whole_batch_and_change_nothing() {
        let (mut mine, change) = doc_and_valid_change();
        let before = snapshot(&mine);
        let err = mine
            .apply_remote(&[change, vec![1, 2, 3]])
            .expect_err("refused");
        assert!(matches!(err, CrdtError::ChangeDecode(_)), "{err}");
        assert_eq!(snapshot(&mine), before);
    }

    #[test]
    fn a_change_whose_checksum_is_wrong_rejects_the_batch_and_changes_nothing() {
        let (mut mine, mut change) = doc_and_valid_change();
        change[4] ^= 0xff;
        let before = snapshot(&mine);
        let err = mine.apply_remote(&[change]).expect_err("refused");
        assert!(
            matches!(&err, CrdtError::ChangeDecode(reason) if reason.contains("checksum")),
            "{err}"
        );
        assert_eq!(snapshot(&mine), before);
    }

    #[test]
    fn a_change_outside_the_schema_rejects_the_batch_and_changes_nothing() {
        let (mut mine, change) = doc_and_valid_change();
        let rogue = rogue_change(vec![9; 16], "obs/db/eu-west", "not json");
        let before = snapshot(&mine);
        let err = mine.apply_remote(&[change, rogue]).expect_err("refused");
        assert!(
            matches!(&err, CrdtError::ChangeSchema { key, .. } if key == "obs/db/eu-west"),
            "{err}"
        );
        assert_eq!(snapshot(&mine), before);
    }

    #[test]
    fn a_change_by_an_actor_outside_the_schema_rejects_the_batch_and_changes_nothing() {
        let (mut mine, _) = doc_and_valid_change();
        let json = serde_json::to_string(&observation(State::Operational, "")).expect("json");
        let rogue = rogue_change(vec![1, 2, 3], "obs/db/eu-west", &json);
        let before = snapshot(&mine);
        let err = mine.apply_remote(&[rogue]).expect_err("refused");
        assert!(
            matches!(&err, CrdtError::ChangeSchema { reason, .. } if reason.contains("actor")),
            "{err}"
        );
        assert_eq!(snapshot(&mine), before);
    }

    #[test]
    fn a_base_of_epoch_zero_is_refused() {
        let actor = ActorKind::Base { epoch: 0 }.to_actor().to_bytes().to_vec();
        let bytes = rogue_change(actor, META_KEY, "{}");
        let change = parse_change(&bytes).expect("a change");
        let err = validate_base(&change).expect_err("refused");
        assert!(
            matches!(&err, CrdtError::ChangeSchema { reason, .. } if reason.contains("starts")),
            "{err}"
        );
    }

    #[test]
    fn a_document_chunk_is_not_a_change() {
        let (mine, _) = doc_and_valid_change();
        let err = parse_change(&mine.save()).expect_err("refused");
        assert!(matches!(err, CrdtError::ChangeDecode(_)), "{err}");
    }

    #[test]
    fn saved_bytes_that_do_not_decode_are_a_load_error() {
        for bytes in [vec![], vec![0x85, 0x6f, 0x4a, 0x83], vec![7; 64]] {
            let loaded = ServiceDoc::load(name("api"), &bytes, ActorId::from(vec![1; 16]));
            match loaded {
                Err(CrdtError::Load { service, .. }) => assert_eq!(service, "api"),
                // Empty bytes are an empty document.
                Ok(doc) if bytes.is_empty() => assert!(doc.heads().is_empty()),
                other => panic!("{bytes:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_saved_document_outside_the_schema_does_not_load_with_validation() {
        let mut rogue = AutoCommit::new().with_actor(ActorId::from(vec![9; 16]));
        rogue.put(ROOT, "anything", "goes").expect("put");
        let saved = rogue.save();
        let err =
            ServiceDoc::load(name("api"), &saved, ActorId::from(vec![1; 16])).expect_err("refused");
        assert!(matches!(err, CrdtError::ChangeSchema { .. }), "{err}");
        // A document this node saved itself is trusted as it is.
        assert!(ServiceDoc::load_trusted(name("api"), &saved, ActorId::from(vec![1; 16])).is_ok());
    }

    #[test]
    fn a_batch_is_sorted_into_changes_held_and_changes_new() {
        let mut mine = doc(1);
        let held = write(&mut mine, 1, "db", State::Operational);
        let mut theirs = doc(2);
        let new = write(&mut theirs, 2, "web", State::MajorOutage);
        let batch = mine.decode_batch(&[held, new]).expect("valid");
        assert_eq!(batch.known.len(), 1);
        assert_eq!(batch.known[0].1.as_deref(), Some("n1"));
        assert_eq!(batch.current.len(), 1);
        assert_eq!(batch.current[0].keys, ["obs/web/eu-west"]);
        assert!(batch.bases.is_empty() && batch.older.is_empty() && batch.newer.is_empty());
    }
}
