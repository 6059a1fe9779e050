//! The rollover trigger and the proposer rule: when this node compacts a document's
//! history into a new epoch (see [`super::EpochConfig`] and `statusmesh_crdt::epoch`).
//!
//! # Flow
//! 1. Each anti-entropy round, a document whose live epoch is over a bound (changes, bytes,
//!    age) is due.
//! 2. Only the live voter with the smallest id proposes, and only while a majority of the
//!    voters (the members listed in regions.toml, see `members.rs`) is alive; a joined
//!    member neither proposes nor counts toward the majority.
//! 3. The proposer chooses a cut (its heads) and asks every live peer for its heads.
//! 4. Once every live peer was seen to hold the cut, it rolls over there; the base and the
//!    writes carried on top are broadcast like local changes. A cut is chosen again after
//!    `propose_interval_ms` when the old one cannot be used.
//!
//! Concurrent proposals are still possible (a split view of who is alive); the crdt's rule
//! picks one winner everywhere.

use statusmesh_crdt::{ChangeHash, Name};

use super::{Node, NodeId};
use crate::codec::Frame;
use crate::error::GossipError;
use crate::membership::MemberState;

/// The cut this node would roll a document over at, once every live peer holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RolloverCut {
    /// The heads of the document when the cut was chosen.
    heads: Vec<ChangeHash>,
    /// When it was chosen (ms).
    chosen_ms: u64,
}

impl Node {
    /// Rolls `service` over at `cut`, broadcasts what that made and reports the events.
    pub(super) fn roll_over_at(
        &mut self,
        service: &Name,
        cut: &[ChangeHash],
    ) -> Result<Option<u32>, GossipError> {
        let Some(outcome) = self.replica.rollover(service, cut)? else {
            return Ok(None);
        };
        self.stats.rollovers_proposed += 1;
        self.stats.rollovers += 1;
        self.rollover_cuts.remove(service);
        self.publish_made(service.as_str(), outcome.made);
        self.emit_transitions(outcome.transitions);
        Ok(outcome.rolled_over)
    }

    /// Proposes the rollovers that are due (see the module docs).
    pub(super) fn maybe_roll_over(&mut self, now_ms: u64) {
        if !self.config.epoch.enabled() {
            return;
        }
        let alive: Vec<NodeId> = self
            .peers
            .keys()
            .filter(|p| self.member_state(p) == MemberState::Alive)
            .cloned()
            .collect();
        if !self.is_proposer(&alive) {
            return;
        }
        let propose_interval_ms = self.config.epoch.propose_interval_ms;
        let mut ask = false;
        for service in self.due_for_rollover(now_ms) {
            let Some(doc) = self.replica.doc(&service) else {
                continue;
            };
            match self.rollover_cuts.get(&service) {
                Some(chosen) if doc.has_all(&chosen.heads) => {
                    let held_everywhere = alive.iter().all(|p| {
                        self.peers
                            .get(p)
                            .and_then(|state| state.heads.get(&service))
                            .is_some_and(|heads| doc.covered_by(&chosen.heads, heads))
                    });
                    if held_everywhere {
                        let cut = chosen.heads.clone();
                        if let Err(e) = self.roll_over_at(&service, &cut) {
                            let id = self.id.clone();
                            self.reject(&id, e);
                        }
                        continue;
                    }
                    ask = true;
                }
                Some(chosen) if now_ms.saturating_sub(chosen.chosen_ms) < propose_interval_ms => {
                    ask = true;
                }
                _ => {
                    let cut = RolloverCut {
                        heads: doc.heads(),
                        chosen_ms: now_ms,
                    };
                    self.rollover_cuts.insert(service.clone(), cut);
                    ask = true;
                }
            }
        }
        if ask {
            // Every live peer answers with its heads (see `on_heads`), so the next round
            // knows whether it holds the cut.
            let frame = Frame::Heads {
                docs: self.all_heads(),
                reply_wanted: true,
            };
            for peer in alive {
                self.send(&peer, &frame);
            }
        }
    }

    /// The proposer rule: this node is a voter, no live voter has a smaller id, and a
    /// majority of the voters (this node and the `alive` peers that are voters) is alive.
    /// Joined members count for nothing here: the voter set is fixed by regions.toml, so
    /// two lineages cannot both gather a majority (`members.rs`).
    pub(super) fn is_proposer(&self, alive: &[NodeId]) -> bool {
        if !self.voter {
            return false;
        }
        let is_voter = |p: &NodeId| self.peers.get(p).is_some_and(|state| state.voter);
        let voters = self.peers.values().filter(|p| p.voter).count() + 1;
        let alive_voters: Vec<&NodeId> = alive.iter().filter(|p| is_voter(p)).collect();
        let smallest = !alive_voters.iter().any(|p| **p < self.id);
        let majority = (alive_voters.len() + 1) * 2 > voters;
        smallest && majority
    }

    /// The documents whose live epoch is over one of the bounds of [`super::EpochConfig`].
    fn due_for_rollover(&self, now_ms: u64) -> Vec<Name> {
        let config = &self.config.epoch;
        self.replica
            .docs()
            .filter(|d| {
                let history = d.history_len();
                let by_count =
                    config.history_changes_max > 0 && history > config.history_changes_max;
                let by_size =
                    config.history_bytes_max > 0 && d.history_bytes() > config.history_bytes_max;
                let by_age = config.age_ms_max > 0
                    && history > 1
                    && d.epoch_started_ms()
                        .is_some_and(|t| now_ms.saturating_sub(t) > config.age_ms_max);
                by_count || by_size || by_age
            })
            .map(|d| d.service().clone())
            .collect()
    }
}
