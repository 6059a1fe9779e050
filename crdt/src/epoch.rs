//! Epochs: bounded history without consensus.
//!
//! Automerge keeps every change forever. A document therefore lives in *epochs*: epoch e+1
//! starts from one **base change** that restates the state of epoch e at a cut `H` (a set of
//! heads every live node was known to hold), and continues with ordinary changes on top of
//! it. The history of a closed epoch leaves memory and gossip (its transitions go to the
//! archive, see [`crate::archive`]).
//!
//! # Why no consensus round is needed
//! 1. The base is a pure function of the cut: a fixed actor (`[2][epoch]`), a fixed time (the
//!    newest change in the cut), sorted keys, and the *coverage clock* of the writes it holds.
//!    Every node that rolls over at the same cut makes the same bytes, so the same hash.
//! 2. Concurrent proposals for the same epoch are ordered by a deterministic rule
//!    ([`EpochMeta::beats`]): the base covering more writes wins, then the smaller hash. A node
//!    that adopted the loser adopts the winner when it sees it.
//! 3. Every write has a stable identity ([`WriteId`]: the writer's incarnation actor and a
//!    counter of its writes to this document) that survives being carried from one epoch to
//!    the next, and the writes of one incarnation are covered as a prefix. So the clock — one
//!    counter per incarnation — says exactly which writes a base holds.
//! 4. A write the new base does not cover (made concurrently with the rollover, or by a node
//!    that was cut off through it) is **carried**: re-applied on top of the base as a change
//!    whose every byte is a function of the base and the write alone (actor
//!    `[1][epoch][base][writer][n]`, seq 1, the write's own time and origin, deps: the base or
//!    the carried change of the writer's previous write). Any node that carries it makes the
//!    same change, so carrying twice is a duplicate Automerge drops, never a second value.
//!
//! Each change names its epoch and base in its actor, so a node can tell at once whether a
//! change is of its epoch, of an older one (carry it unless covered) or of a newer one (hold
//! it until the newer base arrives).

use std::collections::BTreeMap;

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, Automerge, Change, ChangeHash, ScalarValue, ROOT};
use serde::{Deserialize, Serialize};

use crate::error::CrdtError;

/// The root key that holds a base change's [`EpochMeta`].
pub const META_KEY: &str = "epoch";
/// The length of a writer's incarnation actor.
pub const WRITER_LEN: usize = 16;
/// Bytes of the base hash named in the actors of an epoch's changes.
pub const BASE_TAG_LEN: usize = 8;
/// Most entries of a coverage clock (writer incarnations): a base naming more is refused.
pub const CLOCK_MAX: usize = 65_536;

const KIND_LOCAL: u8 = 0;
const KIND_CARRIED: u8 = 1;
const KIND_BASE: u8 = 2;
/// `[kind][epoch u32][base tag][writer][u64]`.
const LONG_ACTOR_LEN: usize = 1 + 4 + BASE_TAG_LEN + WRITER_LEN + 8;
/// `[kind][epoch u32]`.
const BASE_ACTOR_LEN: usize = 1 + 4;

/// A writer's incarnation actor: new on every start of a node.
pub type Writer = [u8; WRITER_LEN];

/// The stable identity of one write: who wrote it (an incarnation) and its number among that
/// incarnation's writes to the document (1, 2, 3, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WriteId {
    pub writer: Writer,
    pub n: u64,
}

/// Which epoch lineage a change belongs to: the epoch number and the first bytes of its base
/// hash (zero for epoch 0, which has no base).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lineage {
    pub epoch: u32,
    pub base_tag: [u8; BASE_TAG_LEN],
}

impl Lineage {
    /// The lineage of an epoch started by `base` (`None`: epoch 0).
    pub fn of(epoch: u32, base: Option<&ChangeHash>) -> Self {
        let mut base_tag = [0; BASE_TAG_LEN];
        if let Some(base) = base {
            base_tag.copy_from_slice(&base.0[..BASE_TAG_LEN]);
        }
        Self { epoch, base_tag }
    }
}

/// What a change's actor says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorKind {
    /// A write made in `lineage`: write number `start_n + seq`.
    Local {
        lineage: Lineage,
        writer: Writer,
        start_n: u64,
    },
    /// A write carried into `lineage`; it is `write`.
    Carried { lineage: Lineage, write: WriteId },
    /// The base change of `epoch`.
    Base { epoch: u32 },
}

impl ActorKind {
    /// Parses an actor. A plain 16-byte actor is a write of epoch 0 (number = seq).
    pub fn parse(actor: &ActorId) -> Option<Self> {
        let bytes = actor.to_bytes();
        match bytes.len() {
            WRITER_LEN => Some(ActorKind::Local {
                lineage: Lineage::default(),
                writer: bytes.try_into().ok()?,
                start_n: 0,
            }),
            BASE_ACTOR_LEN if bytes[0] == KIND_BASE => Some(ActorKind::Base {
                epoch: u32::from_be_bytes(bytes[1..5].try_into().ok()?),
            }),
            LONG_ACTOR_LEN if bytes[0] == KIND_LOCAL || bytes[0] == KIND_CARRIED => {
                let epoch = u32::from_be_bytes(bytes[1..5].try_into().ok()?);
                let base_tag: [u8; BASE_TAG_LEN] = bytes[5..13].try_into().ok()?;
                let writer: Writer = bytes[13..29].try_into().ok()?;
                let number = u64::from_be_bytes(bytes[29..37].try_into().ok()?);
                let lineage = Lineage { epoch, base_tag };
                if epoch == 0 {
                    // Epoch 0 writes use plain actors and nothing is carried into it.
                    return None;
                }
                Some(if bytes[0] == KIND_LOCAL {
                    ActorKind::Local {
                        lineage,
                        writer,
                        start_n: number,
                    }
                } else {
                    if number == 0 {
                        return None;
                    }
                    ActorKind::Carried {
                        lineage,
                        write: WriteId { writer, n: number },
                    }
                })
            }
            _ => None,
        }
    }

    /// The actor bytes.
    pub fn to_actor(&self) -> ActorId {
        match self {
            ActorKind::Local {
                lineage,
                writer,
                start_n,
            } if lineage.epoch == 0 => {
                debug_assert_eq!(*start_n, 0, "epoch 0 numbers writes by seq");
                ActorId::from(writer.to_vec())
            }
            ActorKind::Local {
                lineage,
                writer,
                start_n,
            } => long_actor(KIND_LOCAL, lineage, writer, *start_n),
            ActorKind::Carried { lineage, write } => {
                long_actor(KIND_CARRIED, lineage, &write.writer, write.n)
            }
            ActorKind::Base { epoch } => {
                let mut bytes = vec![KIND_BASE];
                bytes.extend_from_slice(&epoch.to_be_bytes());
                ActorId::from(bytes)
            }
        }
    }

    /// The lineage of a non-base change.
    pub fn lineage(&self) -> Option<Lineage> {
        match self {
            ActorKind::Local { lineage, .. } | ActorKind::Carried { lineage, .. } => Some(*lineage),
            ActorKind::Base { .. } => None,
        }
    }

    /// The write a non-base change with sequence number `seq` is.
    pub fn write_id(&self, seq: u64) -> Option<WriteId> {
        match self {
            ActorKind::Local {
                writer, start_n, ..
            } => Some(WriteId {
                writer: *writer,
                n: start_n.checked_add(seq)?,
            }),
            ActorKind::Carried { write, .. } => Some(*write),
            ActorKind::Base { .. } => None,
        }
    }
}

fn long_actor(kind: u8, lineage: &Lineage, writer: &Writer, number: u64) -> ActorId {
    let mut bytes = Vec::with_capacity(LONG_ACTOR_LEN);
    bytes.push(kind);
    bytes.extend_from_slice(&lineage.epoch.to_be_bytes());
    bytes.extend_from_slice(&lineage.base_tag);
    bytes.extend_from_slice(writer);
    bytes.extend_from_slice(&number.to_be_bytes());
    ActorId::from(bytes)
}

/// A writer's actor normalised to [`WRITER_LEN`] bytes (padded or cut).
pub fn writer_of(actor: &ActorId) -> Writer {
    let mut writer = [0; WRITER_LEN];
    for (slot, byte) in writer.iter_mut().zip(actor.to_bytes()) {
        *slot = *byte;
    }
    writer
}

/// Which writes a base holds: per writer incarnation, the highest write number covered (the
/// writes of one incarnation are covered as a prefix, see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Clock(BTreeMap<Writer, u64>);

impl Clock {
    /// True when the write is covered.
    pub fn covers(&self, write: &WriteId) -> bool {
        self.0.get(&write.writer).is_some_and(|&n| n >= write.n)
    }

    /// The highest covered write of `writer` (0: none).
    pub fn of(&self, writer: &Writer) -> u64 {
        self.0.get(writer).copied().unwrap_or(0)
    }

    /// Covers `write` and every earlier write of its writer.
    pub fn cover(&mut self, write: &WriteId) {
        let slot = self.0.entry(write.writer).or_insert(0);
        *slot = (*slot).max(write.n);
    }

    /// Covers everything `other` covers.
    pub fn merge(&mut self, other: &Clock) {
        for (writer, &n) in &other.0 {
            self.cover(&WriteId { writer: *writer, n });
        }
    }

    /// How many writes are covered in all: what orders concurrent proposals.
    pub fn total(&self) -> u128 {
        self.0.values().map(|&n| u128::from(n)).sum()
    }
}

/// Where a record's value came from, kept for records a base restates (their op is the
/// base's, but clients still see who set the value and when).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The node that made the change (its message), if it names one.
    pub node: Option<String>,
    /// When the change was made, on its origin's clock, in milliseconds since the epoch.
    pub at_ms: Option<u64>,
}

/// What a base change says about its epoch (stored as JSON under [`META_KEY`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochMeta {
    pub epoch: u32,
    pub clock: Clock,
    /// The origin of every record the base restates.
    pub origins: BTreeMap<String, Origin>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetaJson {
    v: u8,
    epoch: u32,
    /// Writer (hex) → highest covered write number.
    clock: BTreeMap<String, u64>,
    /// Record key → [origin node, changed at ms].
    origins: BTreeMap<String, (Option<String>, Option<u64>)>,
}

impl EpochMeta {
    /// The JSON stored in the base.
    pub fn to_json(&self) -> String {
        let json = MetaJson {
            v: 1,
            epoch: self.epoch,
            clock: self.clock.0.iter().map(|(w, n)| (hex(w), *n)).collect(),
            origins: self
                .origins
                .iter()
                .map(|(key, origin)| (key.clone(), (origin.node.clone(), origin.at_ms)))
                .collect(),
        };
        serde_json::to_string(&json).unwrap_or_default()
    }

    /// Parses and checks the JSON of a base.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let json: MetaJson =
            serde_json::from_str(text).map_err(|e| format!("epoch meta does not parse: {e}"))?;
        if json.v != 1 {
            return Err(format!("epoch meta version {} is unknown", json.v));
        }
        if json.clock.len() > CLOCK_MAX {
            return Err(format!(
                "epoch clock names {} writers, the limit is {CLOCK_MAX}",
                json.clock.len()
            ));
        }
        let mut clock = Clock::default();
        for (writer, n) in json.clock {
            let writer = unhex(&writer).ok_or_else(|| format!("bad writer {writer:?}"))?;
            clock.cover(&WriteId { writer, n });
        }
        Ok(Self {
            epoch: json.epoch,
            clock,
            origins: json
                .origins
                .into_iter()
                .map(|(key, (node, at_ms))| (key, Origin { node, at_ms }))
                .collect(),
        })
    }

    /// Whether a base with this meta and `hash` wins over `other` with `other_hash` (both may
    /// be of any epoch): a later epoch wins; in one epoch, the one covering more writes, then
    /// the smaller hash.
    pub fn beats(&self, hash: &ChangeHash, other: &EpochMeta, other_hash: &ChangeHash) -> bool {
        (self.epoch, self.clock.total(), std::cmp::Reverse(hash.0))
            > (
                other.epoch,
                other.clock.total(),
                std::cmp::Reverse(other_hash.0),
            )
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Writer> {
    if text.len() != WRITER_LEN * 2 {
        return None;
    }
    let mut out = [0; WRITER_LEN];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Builds the base change of `meta.epoch`: the same bytes for the same inputs on every node.
/// `records` are the root keys and JSON values of the state at the cut; `time_ms` is the time
/// of the newest change in the cut.
pub fn build_base(
    meta: &EpochMeta,
    records: &BTreeMap<String, String>,
    time_ms: i64,
) -> Result<Change, CrdtError> {
    let actor = ActorKind::Base { epoch: meta.epoch }.to_actor();
    let mut doc = Automerge::new().with_actor(actor);
    let message = format!("epoch {}", meta.epoch);
    doc.transact_with::<_, _, automerge::AutomergeError, _>(
        |_| {
            CommitOptions::default()
                .with_time(time_ms)
                .with_message(message.clone())
        },
        |tx| {
            tx.put(ROOT, META_KEY, ScalarValue::Str(meta.to_json().into()))?;
            for (key, json) in records {
                tx.put(ROOT, key.as_str(), ScalarValue::Str(json.as_str().into()))?;
            }
            Ok(())
        },
    )
    .map_err(|failure| CrdtError::Automerge(failure.error))?;
    doc.get_last_local_change().ok_or_else(|| CrdtError::Load {
        service: String::new(),
        reason: "the base change was not made".into(),
    })
}

/// Puts (or, for `None`, deletes) root records in a transaction: one op per record.
pub(crate) fn put_records<'a>(
    tx: &mut impl Transactable,
    records: impl IntoIterator<Item = &'a (String, Option<String>)>,
) -> Result<(), automerge::AutomergeError> {
    for (key, json) in records {
        match json {
            Some(json) => tx.put(ROOT, key.as_str(), ScalarValue::Str(json.as_str().into()))?,
            None => tx.delete(ROOT, key.as_str())?,
        }
    }
    Ok(())
}

/// One write to carry: its identity, what it did (key → JSON, or `None` for a delete), and its
/// time and origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarriedWrite {
    pub write: WriteId,
    pub ops: Vec<(String, Option<String>)>,
    pub time_ms: i64,
    pub origin: Option<String>,
}

/// Carries one writer's uncovered writes, oldest first and without gaps after what the base
/// covers, on top of `base_doc` (a document holding only the base). Each carried change
/// depends on the base, or on the carried change of the writer's previous write. A write
/// with nothing left to do on top of the base (a delete of a key it lacks) makes no change.
pub fn carry_chain(
    base_doc: &Automerge,
    lineage: Lineage,
    writes: &[CarriedWrite],
) -> Result<Vec<Change>, CrdtError> {
    let mut scratch = base_doc.clone();
    let mut out = Vec::with_capacity(writes.len());
    for write in writes {
        scratch.set_actor(
            ActorKind::Carried {
                lineage,
                write: write.write,
            }
            .to_actor(),
        );
        let effective: Vec<&(String, Option<String>)> = write
            .ops
            .iter()
            .filter(|(key, json)| {
                json.is_some()
                    || automerge::ReadDoc::get(&scratch, ROOT, key.as_str())
                        .is_ok_and(|v| v.is_some())
            })
            .collect();
        if effective.is_empty() {
            continue;
        }
        let message = write.origin.clone();
        scratch
            .transact_with::<_, _, automerge::AutomergeError, _>(
                |_| {
                    let options = CommitOptions::default().with_time(write.time_ms);
                    match &message {
                        Some(m) => options.with_message(m.clone()),
                        None => options,
                    }
                },
                |tx| put_records(tx, effective.iter().copied()),
            )
            .map_err(|failure| CrdtError::Automerge(failure.error))?;
        if let Some(change) = scratch.get_last_local_change() {
            out.push(change);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actors_round_trip_through_their_bytes() {
        let writer = [7; WRITER_LEN];
        let lineage = Lineage {
            epoch: 3,
            base_tag: [9; BASE_TAG_LEN],
        };
        for kind in [
            ActorKind::Local {
                lineage,
                writer,
                start_n: 41,
            },
            ActorKind::Local {
                lineage: Lineage::default(),
                writer,
                start_n: 0,
            },
            ActorKind::Carried {
                lineage,
                write: WriteId { writer, n: 5 },
            },
            ActorKind::Base { epoch: 12 },
        ] {
            assert_eq!(ActorKind::parse(&kind.to_actor()), Some(kind));
        }
        assert_eq!(ActorKind::parse(&ActorId::from(vec![1, 2, 3])), None);
    }

    #[test]
    fn a_clock_covers_a_prefix_per_writer() {
        let mut clock = Clock::default();
        let w = [1; WRITER_LEN];
        clock.cover(&WriteId { writer: w, n: 4 });
        assert!(clock.covers(&WriteId { writer: w, n: 1 }));
        assert!(clock.covers(&WriteId { writer: w, n: 4 }));
        assert!(!clock.covers(&WriteId { writer: w, n: 5 }));
        assert!(!clock.covers(&WriteId {
            writer: [2; WRITER_LEN],
            n: 1
        }));
    }

    #[test]
    fn the_same_cut_makes_the_same_base_bytes() {
        let mut meta = EpochMeta {
            epoch: 1,
            ..EpochMeta::default()
        };
        meta.clock.cover(&WriteId {
            writer: [3; WRITER_LEN],
            n: 10,
        });
        meta.origins.insert(
            "obs/db/eu".into(),
            Origin {
                node: Some("n1".into()),
                at_ms: Some(5),
            },
        );
        let records = BTreeMap::from([("obs/db/eu".to_owned(), "{}".to_owned())]);
        let mut a = build_base(&meta, &records, 77).expect("base");
        let mut b = build_base(&meta, &records, 77).expect("base");
        assert_eq!(a.hash(), b.hash());
        assert_eq!(a.bytes(), b.bytes());
        let parsed = EpochMeta::from_json(&meta.to_json()).expect("meta");
        assert_eq!(parsed, meta);
    }
}
