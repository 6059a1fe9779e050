//! Remote visibility of acknowledged writes: what the observer's event stream said about
//! each one — seen as its own event (with its latency), folded into a coalesced event (and
//! why) or into a fresh snapshot the stream was sent, or not seen at all.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Most events the observer records; beyond it, events are no longer recorded.
const OBSERVED_MAX: usize = 2_000_000;

/// One status event the observer saw for a bench write.
#[derive(Debug, Clone)]
struct Observed {
    at: Instant,
    /// Why the event folds earlier writes of its cell, when it does.
    coalesced: Option<String>,
}

/// Status events seen on the observed node, per bench writer and write number.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    events: HashMap<u32, BTreeMap<u64, Observed>>,
    count: usize,
    /// When the stream was sent a fresh snapshot after its first (it fell too far behind).
    last_snapshot: Option<Instant>,
}

/// What became of the acknowledged writes on the observed node.
#[derive(Debug, Default)]
pub(super) struct Visibility {
    /// Latency from send to own event, one per write seen as its own event.
    pub(super) seen: Vec<Duration>,
    /// Writes folded into a later coalesced event of their cell, by reason.
    pub(super) coalesced: BTreeMap<String, u64>,
    /// Writes the observer was never told of.
    pub(super) not_seen: u64,
}

/// The message a bench writer puts: `w<worker>-<seq>`.
pub(super) fn message(worker: u32, seq: u64) -> String {
    format!("w{worker}-{seq}")
}

fn parse_message(message: &str) -> Option<(u32, u64)> {
    let (worker, seq) = message.strip_prefix('w')?.split_once('-')?;
    Some((worker.parse().ok()?, seq.parse().ok()?))
}

impl Ledger {
    /// Records a status event carrying `message` (a bench write's), seen at `at`.
    pub(super) fn observe(&mut self, message: &str, coalesced: Option<String>, at: Instant) {
        let Some((worker, seq)) = parse_message(message) else {
            return;
        };
        if self.count >= OBSERVED_MAX {
            return;
        }
        self.count += 1;
        self.events
            .entry(worker)
            .or_default()
            .entry(seq)
            .or_insert(Observed { at, coalesced });
    }

    /// Records a fresh snapshot on the stream, at `at`: it stands for every write before it.
    pub(super) fn observe_snapshot(&mut self, at: Instant) {
        self.last_snapshot = Some(at);
    }

    /// Classifies each acknowledged write `(worker, seq, sent)`.
    pub(super) fn classify(&self, acknowledged: &[(u32, u64, Instant)]) -> Visibility {
        let mut out = Visibility::default();
        for &(worker, seq, sent) in acknowledged {
            let events = self.events.get(&worker);
            match events.and_then(|e| e.get(&seq)) {
                Some(Observed {
                    at,
                    coalesced: None,
                }) => out.seen.push(at.saturating_duration_since(sent)),
                _ => {
                    // Folded when a coalesced event of its cell came at or after it.
                    let folding =
                        events.and_then(|e| e.range(seq..).find_map(|(_, o)| o.coalesced.clone()));
                    let in_snapshot = self.last_snapshot.is_some_and(|at| at >= sent);
                    match folding {
                        Some(reason) => *out.coalesced.entry(reason).or_default() += 1,
                        None if in_snapshot => {
                            *out.coalesced.entry("snapshot".into()).or_default() += 1;
                        }
                        None => out.not_seen += 1,
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_seen_folded_or_missing_and_each_is_counted_once() {
        let now = Instant::now();
        let mut ledger = Ledger::default();
        ledger.observe(&message(0, 1), None, now);
        ledger.observe(&message(0, 3), Some("backlog".into()), now);
        ledger.observe(&message(1, 2), None, now);
        ledger.observe("not a bench write", None, now);
        let acked = [
            (0, 1, now),
            (0, 2, now),
            (0, 3, now),
            (1, 1, now),
            (1, 2, now),
        ];
        let v = ledger.classify(&acked);
        assert_eq!(v.seen.len(), 2);
        assert_eq!(v.coalesced.get("backlog"), Some(&2));
        assert_eq!(
            v.not_seen, 1,
            "w1-1 has no event of its own and none folds it"
        );
        // A fresh snapshot after it stands for it.
        ledger.observe_snapshot(now + Duration::from_millis(1));
        let v = ledger.classify(&acked);
        assert_eq!((v.not_seen, v.coalesced.get("snapshot")), (0, Some(&1)));
    }
}
