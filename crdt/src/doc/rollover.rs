//! The epoch glue of a document: rolling over at a cut, adopting a base that beats the
//! current one, carrying uncovered writes into the current epoch, and the previous epoch
//! kept for cursors. The protocol itself is described in [`crate::epoch`].

use std::collections::{BTreeMap, BTreeSet};

use automerge::legacy::{Key, OpType};
use automerge::{Automerge, Change, ChangeHash, ReadDoc, ScalarValue, ROOT};

use super::decode::{load_automerge, BaseChange};
use super::reads::{changed_keys, reads_of};
use super::schema::str_of;
use super::{PrevEpoch, RemoteApplied, ServiceDoc, REMOTE_BATCH_MAX, WAITING_MAX};
use crate::epoch::{
    self, ActorKind, CarriedWrite, Clock, EpochMeta, Lineage, WriteId, Writer, META_KEY,
};
use crate::error::CrdtError;

/// Where a document's epoch starts: its meta, and its base change (`None` in epoch 0).
pub(super) struct EpochStart {
    pub(super) meta: EpochMeta,
    pub(super) base: Option<ChangeHash>,
}

impl ServiceDoc {
    /// Rolls the document over to the next epoch at the cut `at` (heads this document holds,
    /// known to be held by every live node): makes the base change, moves to it, and carries
    /// every write after the cut. The base and carried changes are in `made`, for the caller
    /// to broadcast. `None` when `at` is not held here or there is nothing to compact.
    ///
    /// # Errors
    /// [`CrdtError::Automerge`] or [`CrdtError::Load`] when the base cannot be made (nothing
    /// changed), or Automerge refuses a step after it (see [`CrdtError::Automerge`]).
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
        for (key, state) in reads_of(&self.doc, Some(at), self.base.as_ref(), &self.meta) {
            // The winner at the cut; values that lost a concurrent write there collapse.
            let Some(json) = state.values.into_iter().next() else {
                continue;
            };
            origins.insert(key.clone(), state.origin);
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

    /// Attaches the previous epoch's document (saved by [`Self::save_prev`]) after a load, so
    /// cursors of that epoch resume exactly. A document of another lineage than the one the
    /// current base closed is ignored. Loaded as trusted (this node saved it).
    pub fn attach_prev(&mut self, bytes: &[u8]) -> Result<(), CrdtError> {
        let doc = load_automerge(&self.service, bytes)?;
        let EpochStart { meta, base } = find_base(&doc);
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

    /// The writes of the previous epoch (its changes but its base), in causal order: what
    /// the archive keeps of an epoch when it closes. Empty in epoch 0 and after a restart that
    /// found no previous epoch.
    pub fn prev_writes(&self) -> Vec<Change> {
        self.prev.as_ref().map_or_else(Vec::new, |p| {
            p.doc
                .get_changes(&[])
                .into_iter()
                .filter(|c| !Self::is_base(c))
                .collect()
        })
    }

    /// The previous epoch's number, if this document holds it.
    pub fn prev_epoch(&self) -> Option<u32> {
        self.prev.as_ref().map(|p| p.meta.epoch)
    }

    /// The best of `bases` that beats the current base, if any; counts the others that lose
    /// to it as stale.
    pub(super) fn best_base(&mut self, bases: Vec<BaseChange>) -> Option<BaseChange> {
        let mut best: Option<BaseChange> = None;
        for candidate in bases {
            let hash = candidate.change.hash();
            let current_hash = self.base.unwrap_or(ChangeHash([0; 32]));
            let beats_current = candidate.meta.beats(&hash, &self.meta, &current_hash);
            let beats_best = best
                .as_ref()
                .is_none_or(|b| candidate.meta.beats(&hash, &b.meta, &b.change.hash()));
            if beats_current && beats_best {
                best = Some(candidate);
            } else if !beats_current && self.base != Some(hash) {
                self.epoch_stats.stale += 1;
            }
        }
        best
    }

    /// A write of an older epoch: applied to the previous epoch's document when it is of
    /// that lineage, then carried unless the current base covers it. A write the previous
    /// epoch refuses collides with one it holds (the same writer and number, other bytes):
    /// that number is the held write's, which is carried from there, so this one is not.
    ///
    /// A write the current base covers, but that this node learns only now (its previous
    /// epoch's document did not hold it), is a transition its clients were never told: the
    /// base restated the records without it (it lost to a concurrent write, or a later one
    /// replaced it). It is noted in `applied.late`, to be told with its identity.
    pub(super) fn take_older(
        &mut self,
        change: &Change,
        kind: &ActorKind,
        applied: &mut RemoteApplied,
    ) {
        let Some(write) = kind.write_id(change.seq()) else {
            if let Some(prev) = self.prev.as_mut() {
                if kind.lineage() == Some(Lineage::of(prev.meta.epoch, prev.base.as_ref())) {
                    let _ = prev.doc.apply_changes([change.clone()]);
                }
            }
            return;
        };
        // Writes that entered the previous epoch's document with this change: it, and any
        // that Automerge held back for want of it. Each that was not held before in any form
        // (its base, a change, a carried copy) is new here, so its clients were never told.
        let mut entered: Vec<(WriteId, Change)> = Vec::new();
        if let Some(prev) = self.prev.as_mut() {
            if kind.lineage() == Some(Lineage::of(prev.meta.epoch, prev.base.as_ref())) {
                let before: BTreeSet<WriteId> = write_ids(&prev.doc).collect();
                if prev.doc.apply_changes([change.clone()]).is_err() {
                    return;
                }
                for meta in prev.doc.get_changes_meta(&[]) {
                    let Some(id) = ActorKind::parse(&meta.actor).and_then(|k| k.write_id(meta.seq))
                    else {
                        continue;
                    };
                    if before.contains(&id)
                        || prev.meta.clock.covers(&id)
                        || self.replaced_writes.contains_key(&id)
                    {
                        continue;
                    }
                    if let Some(entered_change) = prev.doc.get_change_by_hash(&meta.hash) {
                        entered.push((id, entered_change.clone()));
                    }
                }
            }
        }
        for (id, entered_change) in &entered {
            if *id != write && self.meta.clock.covers(id) && !self.carried.contains_key(id) {
                let keys: BTreeSet<String> = carried_write(entered_change)
                    .map(|c| c.ops.into_iter().map(|(key, _)| key).collect())
                    .unwrap_or_default();
                applied.late.push((*id, keys));
            }
        }
        let new_in_prev = entered.iter().any(|(id, _)| *id == write);
        if self.meta.clock.covers(&write) || self.carried.contains_key(&write) {
            self.epoch_stats.stale += 1;
            if new_in_prev && !self.carried.contains_key(&write) {
                let keys: BTreeSet<String> = carried_write(change)
                    .map(|c| c.ops.into_iter().map(|(key, _)| key).collect())
                    .unwrap_or_default();
                applied.late.push((write, keys));
            }
            return;
        }
        if let Some(carried) = carried_write(change) {
            self.wait(carried);
        }
    }

    /// Keeps `write` until it can be carried, within [`WAITING_MAX`].
    fn wait(&mut self, write: CarriedWrite) {
        if self.waiting.len() >= WAITING_MAX && !self.waiting.contains_key(&write.write) {
            self.epoch_stats.dropped += 1;
            return;
        }
        self.waiting.insert(write.write, write);
    }

    /// Carries every waiting write whose writer's previous write is covered or carried.
    ///
    /// Writer by writer, the carried changes are built and applied before any bookkeeping
    /// moves, so a refusal leaves that writer's writes waiting as they were.
    pub(super) fn carry_waiting(&mut self, applied: &mut RemoteApplied) -> Result<(), CrdtError> {
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
            // The writes that follow without a gap.
            let chain: Vec<CarriedWrite> = (tail_n + 1..)
                .map_while(|n| self.waiting.get(&WriteId { writer, n }).cloned())
                .collect();
            let mut made = Vec::new();
            let mut new = Vec::new();
            if !chain.is_empty() {
                let scratch = self.doc.fork_at(&[tail])?;
                made = epoch::carry_chain(&scratch, lineage, &chain)?;
                new = made
                    .iter()
                    .filter(|c| !self.has_change(&c.hash()))
                    .cloned()
                    .collect();
                if !new.is_empty() {
                    self.doc.apply_changes(new.clone())?;
                }
            }
            // Applied: from here on nothing fails. The chain leaves the waiting writes, with
            // what is covered or already carried below it.
            let tail_n = tail_n + chain.len() as u64;
            self.waiting
                .retain(|w, _| w.writer != writer || w.n > tail_n);
            if chain.is_empty() {
                continue;
            }
            let mut keys = Vec::new();
            for (write, change) in chain.iter().zip(&made) {
                self.carried.insert(write.write, change.hash());
                keys.extend(write.ops.iter().map(|(k, _)| k.clone()));
            }
            self.epoch_stats.carried += new.len() as u64;
            if !new.is_empty() {
                self.irregular_applies += 1;
                for mut change in new {
                    applied.made.push(change.bytes().into_owned());
                }
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
    pub(super) fn adopt(
        &mut self,
        base: Change,
        meta: EpochMeta,
        applied: &mut RemoteApplied,
    ) -> Result<(), CrdtError> {
        // The new epoch's document first: if Automerge refuses the base, nothing moved.
        let mut doc = Automerge::new();
        doc.apply_changes([base.clone()])?;
        let before = self.reads();
        // Every write held here that the new base does not cover.
        let mut writes: Vec<CarriedWrite> =
            std::mem::take(&mut self.waiting).into_values().collect();
        collect_uncovered(&self.doc, &meta.clock, &mut writes);
        if let Some(prev) = &self.prev {
            collect_uncovered(&prev.doc, &meta.clock, &mut writes);
        }
        self.history_bytes = base.raw_bytes().len() as u64;
        let old_doc = std::mem::replace(&mut self.doc, doc);
        let old_meta = std::mem::replace(&mut self.meta, meta);
        let old_base = self.base.replace(base.hash());
        if self.meta.epoch > old_meta.epoch {
            self.prev = Some(PrevEpoch {
                doc: old_doc,
                meta: old_meta,
                base: old_base,
            });
        } else {
            let epoch = old_meta.epoch;
            let held: Vec<WriteId> = write_ids(&old_doc).collect();
            self.replaced_writes
                .extend(held.into_iter().map(|w| (w, epoch)));
        }
        let oldest = self.prev.as_ref().map_or(self.meta.epoch, |p| p.meta.epoch);
        self.replaced_writes.retain(|_, epoch| *epoch >= oldest);
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
        // The document has moved: counted now, whatever Automerge refuses below.
        self.irregular_applies += 1;
        let mut inner = RemoteApplied::default();
        self.carry_waiting(&mut inner)?;
        for chunk in released.chunks(REMOTE_BATCH_MAX) {
            // Validated when they were held, so only Automerge can refuse them here.
            self.apply_remote_nested(chunk, &mut inner)?;
        }
        applied.new_changes += inner.new_changes;
        applied.held.extend(inner.held);
        applied.made.extend(inner.made);
        self.records = self.count_records();
        applied.keys.extend(changed_keys(&before, &self.reads()));
        applied.rolled_over = Some(self.meta.epoch);
        Ok(())
    }
}

/// The base change of a document and the epoch it starts (epoch 0 without one).
pub(super) fn find_base(doc: &Automerge) -> EpochStart {
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
                return EpochStart {
                    meta: parsed,
                    base: Some(meta.hash),
                };
            }
        }
    }
    EpochStart {
        meta: EpochMeta::default(),
        base: None,
    }
}

/// The carried changes of `lineage` in `doc`, by write.
pub(super) fn carried_in(doc: &Automerge, lineage: Lineage) -> BTreeMap<WriteId, ChangeHash> {
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
/// The write identity of every change of `doc` that is a write (carried copies included).
pub(super) fn write_ids(doc: &Automerge) -> impl Iterator<Item = WriteId> + '_ {
    doc.get_changes_meta(&[])
        .into_iter()
        .filter_map(|m| ActorKind::parse(&m.actor)?.write_id(m.seq))
}

fn carried_write(change: &Change) -> Option<CarriedWrite> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::fixtures::{doc, name, snapshot, write};
    use crate::model::State;

    /// A document with two writes of its own, and the hash of the first.
    fn two_writes() -> (ServiceDoc, ChangeHash) {
        let mut d = doc(1);
        write(&mut d, 1, "db", State::MajorOutage);
        let first = d.heads();
        write(&mut d, 2, "web", State::Operational);
        (d, first[0])
    }

    #[test]
    fn a_rollover_at_the_heads_restates_every_value_in_one_base() {
        let (mut d, _) = two_writes();
        let cells = d.cells();
        let applied = d.rollover(&d.heads()).expect("valid").expect("rolled over");
        assert_eq!(applied.rolled_over, Some(1));
        assert_eq!(applied.made.len(), 1, "only the base: nothing to carry");
        assert!(
            applied.keys.is_empty(),
            "every value and origin is as before"
        );
        assert_eq!(d.epoch(), 1);
        assert_eq!(d.history_len(), 1);
        assert_eq!(d.cells(), cells);
        assert_eq!(d.prev_epoch(), Some(0));
        assert_eq!(d.prev_writes().len(), 2);
    }

    #[test]
    fn a_rollover_at_a_cut_this_document_lacks_changes_nothing() {
        let (mut d, _) = two_writes();
        let before = snapshot(&d);
        assert!(d.rollover(&[]).expect("valid").is_none());
        assert!(d.rollover(&[ChangeHash([7; 32])]).expect("valid").is_none());
        assert_eq!(snapshot(&d), before);
    }

    #[test]
    fn a_write_after_the_cut_is_carried_into_the_new_epoch() {
        let (mut d, first) = two_writes();
        let second = d.write_of(&d.heads()[0]).expect("a write");
        let applied = d.rollover(&[first]).expect("valid").expect("rolled over");
        assert_eq!(applied.made.len(), 2, "the base and the carried write");
        assert_eq!(d.epoch_stats().carried, 1);
        assert!(d.holds_write(&second));
        let cell = d.cell(&name("web"), &name("eu-west")).expect("carried");
        assert_eq!(cell.origin_node.as_deref(), Some("n1"));
        assert_eq!(cell.changed_at_ms, Some(2));
    }

    #[test]
    fn a_peer_adopts_the_base_it_receives_and_reports_no_changed_record() {
        let (mut a, _) = two_writes();
        let mut b = doc(2);
        b.apply_remote(&a.changes_since(&[])).expect("valid");
        let rolled = a.rollover(&a.heads()).expect("valid").expect("rolled over");
        let adopted = b.apply_remote_keys(&rolled.made).expect("valid");
        assert_eq!(adopted.rolled_over, Some(1));
        assert!(adopted.keys.is_empty());
        assert_eq!(b.base(), a.base());
        assert_eq!(b.heads(), a.heads());
    }

    #[test]
    fn a_previous_epoch_that_does_not_load_is_refused_and_changes_nothing() {
        let (mut d, _) = two_writes();
        d.rollover(&d.heads()).expect("valid").expect("rolled over");
        let before = snapshot(&d);
        let err = d.attach_prev(&[1, 2, 3]).expect_err("refused");
        assert!(matches!(err, CrdtError::Load { .. }), "{err}");
        assert_eq!(snapshot(&d), before);
    }

    #[test]
    fn a_previous_epoch_saved_and_attached_answers_its_cursors_again() {
        let (mut d, _) = two_writes();
        let then = d.heads();
        d.rollover(&then).expect("valid").expect("rolled over");
        let saved = d.save_prev().expect("a previous epoch");
        let mut loaded = ServiceDoc::load_trusted(
            name("api"),
            &d.save(),
            automerge::ActorId::from(vec![1; 16]),
        )
        .expect("loads");
        assert!(!loaded.prev_has_all(&then));
        loaded.attach_prev(&saved).expect("attaches");
        assert!(loaded.prev_has_all(&then));
    }
}
