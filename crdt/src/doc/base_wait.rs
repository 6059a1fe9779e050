//! A base that waits for the writes it folds.
//!
//! A base restates epoch e at a cut, and its clock names every write it covers. A node still
//! in epoch e that receives the base before some of those writes (they are in flight, or the
//! proposer rolled over while this node looked dead) could adopt it at once, but its clients
//! would then be told the writes it never held as one coalesced correction, not one by one.
//! So the base is *parked*: the document stays in epoch e, the caller asks the sender for
//! what it lacks (see [`ServiceDoc::changes_for_peer`]), and the base is adopted as soon as
//! the writes it folds are here, or when the caller's deadline passes
//! ([`ServiceDoc::adopt_waiting_base`]: then the rollover is told as before, coalesced).
//!
//! Parking is only a delay of the base's arrival, which the protocol already tolerates: local
//! writes made meanwhile join epoch e and are carried when the base is adopted.

use std::collections::BTreeMap;

use automerge::ChangeHash;

use super::decode::BaseChange;
use super::{RemoteApplied, ServiceDoc};
use crate::epoch::{ActorKind, Writer};
use crate::error::CrdtError;

impl ServiceDoc {
    /// Adopts `base` (which beats the current one), or parks it when it is the next epoch's
    /// and folds writes this document does not hold yet (`applied.base_waiting`).
    pub(super) fn adopt_or_park(
        &mut self,
        base: BaseChange,
        applied: &mut RemoteApplied,
    ) -> Result<(), CrdtError> {
        if self.lacks_folded_writes(&base) {
            self.pending_base = Some(base);
            applied.base_waiting = true;
            // The batch's bytes hold a base the document does not: storage must not log them
            // as what the batch added.
            self.irregular_applies += 1;
            return Ok(());
        }
        self.adopt(base.change, base.meta, applied)
    }

    /// Whether a base is parked, waiting for writes it folds.
    pub fn has_waiting_base(&self) -> bool {
        self.pending_base.is_some()
    }

    /// Adopts the parked base now, whatever it still lacks: the caller's wait is over.
    /// `None` when no base is parked.
    ///
    /// # Errors
    /// Those of adopting a base (see [`Self::apply_remote_keys`]); the base is dropped then
    /// (anti-entropy brings it again).
    pub fn adopt_waiting_base(&mut self) -> Result<Option<RemoteApplied>, CrdtError> {
        let Some(base) = self.pending_base.take() else {
            return Ok(None);
        };
        let mut applied = RemoteApplied::default();
        self.adopt(base.change, base.meta, &mut applied)?;
        Ok(Some(applied))
    }

    /// The changes a peer lacks, given the heads it reported: [`Self::changes_since`], and
    /// first, when the peer is still in the previous epoch (its heads are that epoch's), the
    /// previous epoch's changes after them, so that it holds every write the current base
    /// folds before it adopts it.
    pub fn changes_for_peer(&self, their_heads: &[ChangeHash]) -> Vec<Vec<u8>> {
        let behind =
            !their_heads.is_empty() && !self.has_all(their_heads) && self.prev_has_all(their_heads);
        let mut out = Vec::new();
        if let (true, Some(prev)) = (behind, self.prev.as_ref()) {
            out.extend(
                prev.doc
                    .get_changes(their_heads)
                    .into_iter()
                    .map(|mut c| c.bytes().into_owned()),
            );
        }
        out.extend(self.changes_since(their_heads));
        out
    }

    /// Whether `base` is the next epoch's and covers a write this document does not hold. A
    /// document that holds nothing yet has no client to tell anything one by one: it never
    /// waits.
    fn lacks_folded_writes(&self, base: &BaseChange) -> bool {
        if base.meta.epoch != self.meta.epoch.saturating_add(1) || self.heads().is_empty() {
            return false;
        }
        // The writes of one writer are held as a prefix (covered, then the current epoch's
        // changes and carried copies, then those waiting to be carried): the highest number
        // held says whether the base's is here.
        let mut held: BTreeMap<Writer, u64> = BTreeMap::new();
        let mut note = |writer: Writer, n: u64| {
            let slot = held.entry(writer).or_insert(0);
            *slot = (*slot).max(n);
        };
        for meta in self.doc.get_changes_meta(&[]) {
            if let Some(write) = ActorKind::parse(&meta.actor).and_then(|k| k.write_id(meta.seq)) {
                note(write.writer, write.n);
            }
        }
        for write in self.waiting.keys() {
            note(write.writer, write.n);
        }
        base.meta.clock.iter().any(|(writer, n)| {
            let here = held
                .get(writer)
                .copied()
                .unwrap_or(0)
                .max(self.meta.clock.of(writer));
            here < n
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{doc, write};
    use super::super::DocEvent;
    use crate::model::State;

    #[test]
    fn a_base_before_the_writes_it_folds_waits_for_them_and_nothing_is_coalesced() {
        let mut a = doc(1);
        let first = write(&mut a, 1, "db", State::Operational);
        let mut b = doc(2);
        b.apply_remote(std::slice::from_ref(&first)).expect("valid");
        let before = b.heads();
        write(&mut a, 2, "db", State::MajorOutage);
        write(&mut a, 3, "db", State::Operational);
        let rolled = a.rollover(&a.heads()).expect("valid").expect("rolled over");

        // The base comes first: it folds two writes b lacks, so it waits.
        let parked = b.apply_remote_keys(&rolled.made).expect("valid");
        assert!(parked.base_waiting);
        assert_eq!(parked.rolled_over, None);
        assert!(b.has_waiting_base());
        assert_eq!(b.epoch(), 0);

        // What a peer in the new epoch sends b: the previous epoch's writes after b's heads,
        // then the base.
        let repair = a.changes_for_peer(&before);
        assert_eq!(repair.len(), 3, "two writes of epoch 0, then the base");
        let applied = b.apply_remote_keys(&repair).expect("valid");
        assert_eq!(applied.rolled_over, Some(1));
        assert!(!b.has_waiting_base());
        assert_eq!(b.heads(), a.heads());
        let told = b.transitions_of_apply(&before, &applied.keys, true, &applied.late);
        let states: Vec<Option<State>> = told
            .iter()
            .map(|t| match &t.event {
                DocEvent::Status(e) => e.observation.as_ref().map(|o| o.state),
                _ => None,
            })
            .collect();
        assert_eq!(states, [Some(State::MajorOutage), Some(State::Operational)]);
        assert!(told.iter().all(|t| t.coalesced.is_none()), "{told:?}");
    }

    #[test]
    fn a_waiting_base_is_adopted_when_the_wait_is_over() {
        let mut a = doc(1);
        let first = write(&mut a, 1, "db", State::Operational);
        let mut b = doc(2);
        b.apply_remote(&[first]).expect("valid");
        write(&mut a, 2, "db", State::MajorOutage);
        let rolled = a.rollover(&a.heads()).expect("valid").expect("rolled over");
        assert!(
            b.apply_remote_keys(&rolled.made)
                .expect("valid")
                .base_waiting
        );
        let adopted = b
            .adopt_waiting_base()
            .expect("valid")
            .expect("a base waited");
        assert_eq!(adopted.rolled_over, Some(1));
        assert_eq!(b.heads(), a.heads());
        assert_eq!(b.cells(), a.cells());
        assert!(b.adopt_waiting_base().expect("valid").is_none());
    }

    #[test]
    fn an_empty_document_or_one_that_holds_every_folded_write_adopts_at_once() {
        let mut a = doc(1);
        let first = write(&mut a, 1, "db", State::Operational);
        let mut holder = doc(2);
        holder.apply_remote(&[first]).expect("valid");
        let rolled = a.rollover(&a.heads()).expect("valid").expect("rolled over");
        let adopted = holder.apply_remote_keys(&rolled.made).expect("valid");
        assert_eq!(adopted.rolled_over, Some(1));
        let mut empty = doc(3);
        let adopted = empty.apply_remote_keys(&rolled.made).expect("valid");
        assert!(!adopted.base_waiting);
        assert_eq!(adopted.rolled_over, Some(1));
    }
}
