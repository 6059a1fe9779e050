//! One service's availability as an Automerge document: [`ServiceDoc`].
//!
//! This file holds the struct, its constructors and the surface every caller uses (heads,
//! changes, saving). Each concern has a file of its own beside it:
//!
//! - `schema.rs`: the root keys and record values ([`RecordKey`], [`Put`]); the only code that
//!   knows the layout of the document.
//! - `decode.rs`: decoding and validating hostile input (peer changes, saved documents),
//!   read-only, so a rejected batch has changed nothing.
//! - `local.rs`: local writes, validated whole and committed as one change.
//! - `remote.rs`: applying a decoded remote batch, routed by epoch.
//! - `rollover.rs`: epochs in the document: rolling over, adopting a base, carrying writes,
//!   the previous epoch kept for cursors.
//! - `events.rs`: the events clients are told ([`DocEvent`]).
//! - `reads.rs`: reading records and cells ([`Read`]).

mod decode;
mod events;
#[cfg(test)]
mod fixtures;
mod local;
mod reads;
mod remote;
mod rollover;
mod schema;
mod transitions;

use std::collections::{BTreeMap, BTreeSet};

use automerge::{ActorId, Automerge, Change, ChangeHash, ReadDoc, ROOT};

pub use self::events::{
    CheckEvent, DocEvent, FlagEvent, IncidentEvent, MaintenanceEvent, OverrideEvent, StatusEvent,
};
pub use self::local::LocalChange;
pub(crate) use self::local::PlannedPuts;
pub use self::reads::{CellRead, Read};
pub use self::schema::{Put, RecordKey, SCHEMA_VERSION, SCHEMA_VERSION_MIN};
pub use self::transitions::{
    transition_id, CoalesceReason, Coalesced, Delivery, Transition, TRANSITIONS_MAX,
};

use self::decode::{load_automerge, validate_saved};
use self::rollover::{carried_in, find_base};
use crate::epoch::{self, ActorKind, CarriedWrite, EpochMeta, Lineage, WriteId, Writer};
use crate::error::CrdtError;
use crate::model::Name;

/// Most changes accepted from a peer in one batch; a larger batch is a protocol error.
pub const REMOTE_BATCH_MAX: usize = 4096;
/// Most records one document may hold (observations, incidents, updates, windows, overrides).
pub const RECORDS_MAX: usize = 100_000;
/// Most writes of older epochs waiting to be carried (their writer's previous write has not
/// arrived); beyond it the newest are dropped and counted (anti-entropy brings them again).
pub const WAITING_MAX: usize = 16_384;
/// Most changes of a newer epoch held until its base arrives; beyond it they are dropped and
/// counted (anti-entropy brings the base and them again).
pub const FUTURE_MAX: usize = 16_384;
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
    /// Writes of the previous epoch that its base covers but that this node learned only
    /// now, with the root keys each wrote: transitions still to tell.
    pub late: Vec<(WriteId, BTreeSet<String>)>,
}

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

/// A remote change Automerge holds back until its dependencies arrive: what to report then.
#[derive(Debug)]
struct HeldBack {
    /// The node that made it (the change's message).
    origin: Option<String>,
    /// The root keys it writes.
    keys: Vec<String>,
}

/// One service's document.
#[derive(Debug)]
pub struct ServiceDoc {
    service: Name,
    doc: Automerge,
    records: usize,
    /// Remote changes Automerge holds back until their dependencies arrive.
    held_back: BTreeMap<ChangeHash, HeldBack>,
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
    /// Writes held in documents a competing base of the same epoch replaced (they never
    /// became the previous epoch), with that epoch: their transitions were told then, so
    /// their changes arriving later are no news. Only the current and previous epochs are
    /// kept; not persisted (a restart starts every stream anew).
    replaced_writes: BTreeMap<WriteId, u32>,
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

    /// Loads a saved document and validates every change in it as if it came from a peer.
    pub fn load(service: Name, bytes: &[u8], actor: ActorId) -> Result<Self, CrdtError> {
        let doc = load_automerge(&service, bytes)?;
        validate_saved(&doc)?;
        Ok(Self::from_automerge(service, doc, &actor, bytes.len()))
    }

    /// Loads a document this node saved itself, without re-validating every change: its
    /// changes were validated when they were applied, and storage checksums the bytes. Use
    /// [`Self::load`] for anything that came from elsewhere.
    pub fn load_trusted(service: Name, bytes: &[u8], actor: ActorId) -> Result<Self, CrdtError> {
        let doc = load_automerge(&service, bytes)?;
        Ok(Self::from_automerge(service, doc, &actor, bytes.len()))
    }

    /// Writes as `actor` from now on: a new incarnation, whose writes count from 1.
    pub fn set_actor(&mut self, actor: ActorId) {
        self.writer = epoch::writer_of(&actor);
        self.writes_made = 0;
        self.reset_actor();
    }

    /// The service this document describes.
    pub fn service(&self) -> &Name {
        &self.service
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

    /// How many applies put changes into the document that were not the applied batch's own
    /// (see the field). While it stays the same, a batch's bytes are exactly what it added.
    pub fn irregular_applies(&self) -> u64 {
        self.irregular_applies
    }

    /// Bytes of the current epoch's changes (their encoded size): a size trigger for rollover.
    pub fn history_bytes(&self) -> u64 {
        self.history_bytes
    }

    /// The current heads.
    pub fn heads(&self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// True when every hash in `heads` is a change this document holds.
    pub fn has_all(&self, heads: &[ChangeHash]) -> bool {
        heads.iter().all(|h| self.has_change(h))
    }

    /// Whether a peer with `heads` holds every change of `cut` (both of this document).
    pub fn covered_by(&self, cut: &[ChangeHash], heads: &[ChangeHash]) -> bool {
        if !self.has_all(heads) || !self.has_all(cut) {
            return false;
        }
        let missing = self.changes_after(heads);
        cut.iter().all(|h| !missing.contains(h))
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

    /// Number of changes in the history (for limits and metrics).
    pub fn history_len(&self) -> usize {
        self.doc.get_changes_meta(&[]).len()
    }

    /// Every change in causal order, for history walks.
    pub(crate) fn all_changes(&self) -> Vec<Change> {
        self.doc.get_changes(&[])
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

    /// Wraps a loaded Automerge document: finds its epoch from its base change, if any.
    fn from_automerge(service: Name, doc: Automerge, actor: &ActorId, saved_len: usize) -> Self {
        let start = find_base(&doc);
        let mut this = Self {
            service,
            doc,
            records: 0,
            held_back: BTreeMap::new(),
            meta: start.meta,
            base: start.base,
            writer: epoch::writer_of(actor),
            writes_made: 0,
            prev: None,
            waiting: BTreeMap::new(),
            carried: BTreeMap::new(),
            replaced_writes: BTreeMap::new(),
            future: BTreeMap::new(),
            epoch_stats: EpochStats::default(),
            // The saved size stands in for the epoch's bytes: re-encoding would cost a load's
            // time.
            history_bytes: saved_len as u64,
            irregular_applies: 0,
            untracked_held_back: false,
        };
        this.carried = carried_in(&this.doc, this.lineage());
        this.reset_actor();
        this.records = this.count_records();
        this
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

    /// Whether the document holds the change `hash`. Automerge's `get_change_by_hash` would
    /// rebuild the whole change; its metadata lookup is an index probe.
    fn has_change(&self, hash: &ChangeHash) -> bool {
        self.doc.get_change_meta_by_hash(hash).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{doc, name, snapshot, write};
    use super::*;
    use crate::model::State;

    #[test]
    fn a_saved_document_loads_back_as_it_was() {
        let mut d = doc(1);
        write(&mut d, 1, "db", State::MajorOutage);
        write(&mut d, 2, "web", State::Operational);
        let actor = ActorId::from(vec![1; 16]);
        let loaded = ServiceDoc::load(name("api"), &d.save(), actor.clone()).expect("loads");
        let trusted = ServiceDoc::load_trusted(name("api"), &d.save(), actor).expect("loads");
        for other in [&loaded, &trusted] {
            assert_eq!(other.heads(), d.heads());
            assert_eq!(other.cells(), d.cells());
            assert_eq!(other.history_len(), d.history_len());
        }
    }

    #[test]
    fn changes_since_heads_it_does_not_know_are_all_changes() {
        let mut d = doc(1);
        write(&mut d, 1, "db", State::Operational);
        let first = d.heads();
        write(&mut d, 2, "web", State::Operational);
        assert_eq!(d.changes_since(&first).len(), 1);
        assert_eq!(d.changes_since(&[ChangeHash([7; 32])]).len(), 2);
        assert!(d.changes_since(&d.heads()).is_empty());
    }

    #[test]
    fn heads_cover_a_cut_when_they_descend_from_it() {
        let mut d = doc(1);
        write(&mut d, 1, "db", State::Operational);
        let cut = d.heads();
        write(&mut d, 2, "web", State::Operational);
        assert!(d.covered_by(&cut, &d.heads()));
        assert!(d.covered_by(&cut, &cut));
        assert!(!d.covered_by(&d.heads(), &cut));
        assert!(!d.covered_by(&cut, &[ChangeHash([7; 32])]));
    }

    #[test]
    fn a_new_actor_writes_without_changing_what_is_held() {
        let mut d = doc(1);
        write(&mut d, 1, "db", State::Operational);
        let before = snapshot(&d);
        d.set_actor(ActorId::from(vec![2; 16]));
        assert_eq!(snapshot(&d), before);
        write(&mut d, 2, "web", State::Operational);
        assert_eq!(d.history_len(), 2);
    }
}
