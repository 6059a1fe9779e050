//! Remote apply: a batch from a peer, decoded whole first (see `decode.rs`), then routed by
//! epoch and applied.

use super::decode::{Batch, CurrentChange};
use super::{HeldBack, RemoteApplied, ServiceDoc, FUTURE_MAX, HELD_BACK_MAX, REMOTE_BATCH_MAX};
use crate::epoch::ActorKind;
use crate::error::CrdtError;
use automerge::{Change, ChangeHash};

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
    /// wait for its base.
    pub fn apply_remote_keys(&mut self, changes: &[Vec<u8>]) -> Result<RemoteApplied, CrdtError> {
        let batch = self.decode_batch(changes)?;
        self.apply_batch(batch)
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

    /// Applies a decoded batch: the current lineage's changes, then the best new base, then
    /// older writes (to carry) and newer changes (to hold).
    fn apply_batch(&mut self, batch: Batch) -> Result<RemoteApplied, CrdtError> {
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
        self.apply_current(current, &mut applied)?;
        if let Some(base) = self.best_base(bases) {
            self.adopt(base.change, base.meta, &mut applied)?;
        }
        for change in older {
            self.take_older(&change.change, &change.kind);
        }
        for change in newer {
            if change.lineage == self.lineage() {
                // The base of this lineage came in the same batch.
                let _ = self.apply_remote_nested(&[change.bytes], &mut applied);
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
        self.records = self.count_records();
        Ok(applied)
    }

    /// Applies changes of the current lineage (already validated).
    fn apply_current(
        &mut self,
        fresh: Vec<CurrentChange>,
        applied: &mut RemoteApplied,
    ) -> Result<(), CrdtError> {
        if fresh.is_empty() {
            return Ok(());
        }
        applied.new_changes += fresh.len();
        self.history_bytes += fresh
            .iter()
            .map(|c| c.change.raw_bytes().len() as u64)
            .sum::<u64>();
        let changes: Vec<Change> = fresh.iter().map(|c| c.change.clone()).collect();
        if self.doc.apply_changes(changes.clone()).is_err() {
            // A change that collides with one held (the same actor and sequence number, other
            // bytes) cannot be applied; apply the others one by one.
            for change in changes {
                let _ = self.doc.apply_changes([change]);
            }
        }
        for CurrentChange {
            change,
            origin,
            keys,
            kind,
        } in fresh
        {
            let hash = change.hash();
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
        Ok(())
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
