//! Remote apply: a batch from a peer, decoded whole first (see `decode.rs`), then routed by
//! epoch and applied.

use std::collections::BTreeSet;

use automerge::{Change, ChangeHash};

use super::decode::{Batch, CurrentChange};
use super::{HeldBack, RemoteApplied, ServiceDoc, FUTURE_MAX, HELD_BACK_MAX, REMOTE_BATCH_MAX};
use crate::epoch::ActorKind;
use crate::error::CrdtError;

impl ServiceDoc {
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
    /// wait for its base. A change that collides with one held (the same actor and sequence
    /// number, other bytes) is left out alone: not counted as new, not acknowledged.
    ///
    /// # Errors
    /// [`CrdtError::BatchTooLarge`], [`CrdtError::ChangeDecode`] and
    /// [`CrdtError::ChangeSchema`] before anything is applied (the batch is decoded whole
    /// first); [`CrdtError::Automerge`] as that variant says.
    pub fn apply_remote_keys(&mut self, changes: &[Vec<u8>]) -> Result<RemoteApplied, CrdtError> {
        let batch = self.decode_batch(changes)?;
        self.apply_batch(batch)
    }

    /// Applies changes saved by [`Self::save_after`], in bounded batches, validating every
    /// change as if it came from a peer. Returns the number of changes that were new.
    ///
    /// # Errors
    /// Those of [`Self::apply_remote_keys`], for the batch of [`REMOTE_BATCH_MAX`] changes
    /// that holds the bad one: that batch is not applied, the ones before it stay applied.
    pub fn load_incremental(&mut self, changes: &[Vec<u8>]) -> Result<usize, CrdtError> {
        let mut applied = 0;
        for batch in changes.chunks(REMOTE_BATCH_MAX) {
            applied += self.apply_remote(batch)?;
        }
        Ok(applied)
    }

    /// Applies a decoded batch (see [`Self::route_batch`]). The record count is taken from
    /// the document afterwards, even when Automerge refused a step.
    fn apply_batch(&mut self, batch: Batch) -> Result<RemoteApplied, CrdtError> {
        let applied = self.route_batch(batch);
        self.records = self.count_records();
        applied
    }

    /// Routes a decoded batch: the current lineage's changes, then the best new base, then
    /// older writes (to carry) and newer changes (to hold), then the writes that can be
    /// carried now.
    ///
    /// # Errors
    /// [`CrdtError::Automerge`] when Automerge refuses a base, a carried write or a change
    /// released by a base: the steps before it stay applied, each whole.
    fn route_batch(&mut self, batch: Batch) -> Result<RemoteApplied, CrdtError> {
        let Batch {
            known,
            current,
            bases,
            older,
            newer,
        } = batch;
        let mut applied = RemoteApplied {
            held: known,
            ..RemoteApplied::default()
        };
        self.apply_current(current, &mut applied);
        if let Some(base) = self.best_base(bases) {
            self.adopt(base.change, base.meta, &mut applied)?;
        }
        for change in older {
            self.take_older(&change.change, &change.kind, &mut applied);
        }
        for change in newer {
            if change.lineage == self.lineage() {
                // The base of this lineage came in the same batch. The bytes were decoded and
                // validated with the batch, so only Automerge can refuse them here.
                self.apply_remote_nested(&[change.bytes], &mut applied)?;
            } else if change.lineage.epoch >= self.meta.epoch
                && self.future.values().map(Vec::len).sum::<usize>() < FUTURE_MAX
            {
                self.future
                    .entry(change.lineage)
                    .or_default()
                    .push(change.bytes);
            } else if change.lineage.epoch >= self.meta.epoch {
                self.epoch_stats.dropped += 1;
            } else {
                self.epoch_stats.stale += 1;
            }
        }
        self.carry_waiting(&mut applied)?;
        Ok(applied)
    }

    /// Applies changes of the current lineage (already validated). A change Automerge
    /// refuses is left out whole: not counted, not held back, not acknowledged.
    fn apply_current(&mut self, fresh: Vec<CurrentChange>, applied: &mut RemoteApplied) {
        if fresh.is_empty() {
            return;
        }
        let changes: Vec<Change> = fresh.iter().map(|c| c.change.clone()).collect();
        let refused = self.apply_or_refuse(changes);
        for CurrentChange {
            change,
            origin,
            keys,
            kind,
        } in fresh
        {
            let hash = change.hash();
            if refused.contains(&hash) {
                continue;
            }
            applied.new_changes += 1;
            self.history_bytes += change.raw_bytes().len() as u64;
            if let ActorKind::Carried { write, .. } = kind {
                self.carried.insert(write, hash);
                self.waiting.remove(&write);
            }
            if self.has_change(&hash) {
                applied.held.push((hash, origin));
                applied.keys.extend(keys);
            } else if self.held_back.len() < HELD_BACK_MAX {
                self.held_back.insert(hash, HeldBack { origin, keys });
            } else {
                // Beyond the bound the keys are forgotten: the caller diffs instead.
                applied.keys_incomplete = true;
                self.untracked_held_back = true;
            }
        }
        self.release_held_back(applied);
    }

    /// Applies `changes` and returns the hashes of those Automerge refused. Automerge checks
    /// a whole batch before it applies any of it, and refuses it whole for one change that
    /// collides with a change held (the same actor and sequence number, other bytes): then
    /// each change is applied alone, so that only the colliding ones are refused.
    fn apply_or_refuse(&mut self, changes: Vec<Change>) -> BTreeSet<ChangeHash> {
        if self.doc.apply_changes(changes.clone()).is_ok() {
            return BTreeSet::new();
        }
        let mut refused = BTreeSet::new();
        for change in changes {
            let hash = change.hash();
            if self.doc.apply_changes([change]).is_err() {
                refused.insert(hash);
            }
        }
        refused
    }

    /// Reports held-back changes whose dependencies have arrived (by any apply: a remote
    /// batch, or a write carried here that another node carried first and built on).
    pub(super) fn release_held_back(&mut self, applied: &mut RemoteApplied) {
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
            if let Some(HeldBack { origin, keys }) = self.held_back.remove(&hash) {
                applied.held.push((hash, origin));
                applied.keys.extend(keys);
            }
        }
    }

    /// [`Self::apply_remote_keys`] into an outcome being built (changes released by a new
    /// base).
    pub(super) fn apply_remote_nested(
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::fixtures::{doc, snapshot, write};
    use crate::model::State;

    #[test]
    fn a_batch_applied_twice_changes_nothing_the_second_time() {
        let mut theirs = doc(2);
        let change = write(&mut theirs, 1, "db", State::MajorOutage);
        let mut mine = doc(1);
        let first = mine
            .apply_remote_keys(std::slice::from_ref(&change))
            .expect("valid");
        assert_eq!(first.new_changes, 1);
        assert!(first.keys.contains("obs/db/eu-west"));
        let before = snapshot(&mine);
        let again = mine.apply_remote_keys(&[change]).expect("valid");
        assert_eq!(again.new_changes, 0);
        assert!(again.keys.is_empty());
        // Still acknowledged: the origin learns this node holds it.
        assert_eq!(again.held.len(), 1);
        assert_eq!(snapshot(&mine), before);
    }

    #[test]
    fn a_change_before_its_dependency_is_held_back_until_it_arrives() {
        let mut theirs = doc(2);
        let first = write(&mut theirs, 1, "db", State::Operational);
        let second = write(&mut theirs, 2, "web", State::MajorOutage);
        let mut mine = doc(1);
        let early = mine.apply_remote_keys(&[second]).expect("valid");
        assert_eq!(early.new_changes, 1);
        assert!(early.keys.is_empty() && early.held.is_empty());
        assert_eq!(mine.held_back.len(), 1);
        let late = mine.apply_remote_keys(&[first]).expect("valid");
        let keys: Vec<&str> = late.keys.iter().map(String::as_str).collect();
        assert_eq!(keys, ["obs/db/eu-west", "obs/web/eu-west"]);
        assert_eq!(late.held.len(), 2);
        assert!(mine.held_back.is_empty());
        assert_eq!(mine.heads(), theirs.heads());
    }

    #[test]
    fn a_change_that_collides_with_one_held_is_refused_alone() {
        // Two documents writing as the same actor make two first changes with other bytes.
        let (mut one, mut other) = (doc(5), doc(5));
        let held = write(&mut one, 1, "db", State::Operational);
        let colliding = write(&mut other, 1, "db", State::MajorOutage);
        let mut third = doc(6);
        let fine = write(&mut third, 2, "web", State::Operational);
        let mut mine = doc(1);
        mine.apply_remote(&[held]).expect("valid");
        let history_bytes = mine.history_bytes();
        let applied = mine
            .apply_remote_keys(&[colliding.clone(), fine.clone()])
            .expect("the other change applies");
        assert_eq!(applied.new_changes, 1);
        let fine_hash = parse(&fine);
        assert_eq!(applied.held, [(fine_hash, Some("n1".to_owned()))]);
        assert!(!mine.has_change(&parse(&colliding)));
        assert!(
            mine.held_back.is_empty(),
            "a refused change is not held back"
        );
        assert_eq!(mine.history_len(), 2);
        assert_eq!(mine.history_bytes(), history_bytes + fine.len() as u64);
    }

    #[test]
    fn saved_changes_load_back_incrementally() {
        let mut theirs = doc(2);
        for (i, component) in ["db", "web", "api"].into_iter().enumerate() {
            write(&mut theirs, i as u64, component, State::Operational);
        }
        let mut mine = doc(1);
        let new = mine
            .load_incremental(&theirs.save_after(&[]))
            .expect("valid");
        assert_eq!(new, 3);
        assert_eq!(mine.heads(), theirs.heads());
        assert_eq!(mine.cells().len(), 3);
    }

    fn parse(bytes: &[u8]) -> ChangeHash {
        super::super::decode::parse_change(bytes)
            .expect("a change")
            .hash()
    }
}
