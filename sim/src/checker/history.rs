//! Each subscriber's transitions per record against the record's history: every acknowledged
//! status write is told to every subscriber as its own transition (no gap), once (the
//! duplicate check of [`super::subscribers`]), and one writer's transitions of a record in the
//! order it wrote them (no reordering: they are causally ordered), unless the stream said it
//! coalesced that record after the write, or the stream began after it (a snapshot).
//!
//! The history is the simulator's own: the identity of each write it made, taken from the
//! writer's answer, not from what the nodes tell subscribers. An event with neither an
//! identity nor a `coalesced` mark would fold transitions silently, and fails the run at once.

use std::collections::BTreeMap;

use statusmesh_crdt::DocEvent;

use crate::failure::{Failure, HistoryBreak};
use crate::sim::Sim;

/// What a subscriber's current stream told of each record, for the history check.
#[derive(Debug)]
pub(crate) struct StreamHistory {
    /// When the stream began (the run's start, or the last snapshot): earlier writes may be
    /// part of the state it began with.
    start_us: u64,
    /// Per record (`<service>/<record key>`), when the stream last told its latest value as
    /// coalesced: writes before then may be folded into it.
    coalesced_at_us: BTreeMap<String, u64>,
    /// Per record and writer, the highest write number told, when and by which node.
    last_n: BTreeMap<(String, String), Told>,
}

impl StreamHistory {
    pub(crate) fn new(start_us: u64) -> Self {
        Self {
            start_us,
            coalesced_at_us: BTreeMap::new(),
            last_n: BTreeMap::new(),
        }
    }

    /// Notes one event the stream told at `now_us`: a transition must come after the same
    /// writer's earlier ones of its record, unless it says it is folded into the record's
    /// later value (a late write); an event without an identity must say it coalesced.
    pub(crate) fn tell(
        &mut self,
        now_us: u64,
        node: &str,
        event: &DocEvent,
        id: Option<&str>,
        coalesced: bool,
    ) -> Result<(), HistoryBreak> {
        let Some(id) = id else {
            let record = format!("{}/{}", event.service(), event.record_key());
            if !coalesced {
                return Err(HistoryBreak::Unnamed { record });
            }
            self.coalesced_at_us.insert(record, now_us);
            return Ok(());
        };
        let Some((writer, n, record)) = parse_id(id) else {
            return Err(HistoryBreak::MalformedId { id: id.to_owned() });
        };
        if coalesced {
            // A late write, folded into the record as it reads now: told, but after the
            // same writer's later writes by nature.
            return Ok(());
        }
        let key = (record.to_owned(), writer.to_owned());
        if let Some(last) = self.last_n.get(&key).filter(|last| n <= last.n) {
            return Err(HistoryBreak::OutOfOrder {
                id: id.to_owned(),
                after_n: last.n,
                told_at_ms: last.at_us / 1_000,
                told_by: last.node.clone(),
            });
        }
        let told = Told {
            n,
            at_us: now_us,
            node: node.to_owned(),
        };
        self.last_n.insert(key, told);
        Ok(())
    }

    /// Whether a write of `record` made at `at_us` may be missing from this stream: the
    /// stream began after it, or told the record coalesced after it.
    fn exempts(&self, record: &str, at_us: u64) -> bool {
        at_us <= self.start_us
            || self
                .coalesced_at_us
                .get(record)
                .is_some_and(|&told| at_us <= told)
    }
}

/// The latest transition of a writer told for a record.
#[derive(Debug)]
struct Told {
    n: u64,
    at_us: u64,
    node: String,
}

/// `<writer>-<n>:<service>/<record key>` → (writer, n, `<service>/<record key>`).
fn parse_id(id: &str) -> Option<(&str, u64, &str)> {
    let (write, record) = id.split_once(':')?;
    let (writer, n) = write.rsplit_once('-')?;
    Some((writer, n.parse().ok()?, record))
}

impl Sim {
    /// At the end, once every subscriber caught up: each acknowledged status write (not lost
    /// with every disk that held it) was told to each subscriber as its own transition,
    /// unless its stream exempts it. False after a failure.
    pub(crate) fn check_histories(&mut self) -> bool {
        for s in 0..self.subscribers.len() {
            let sub = &self.subscribers[s];
            if sub.is_waiting() || !sub.remembers_every_transition() {
                continue;
            }
            let missed = self.out.writes.iter().find(|w| {
                let Some(id) = w.transition.as_deref() else {
                    return false;
                };
                let record = id.split_once(':').map_or("", |(_, r)| r);
                !w.lost_with_disk
                    && !sub.history.exempts(record, w.at_us)
                    && !sub.was_told(&w.service, id)
            });
            if let Some(write) = missed {
                let failure = Failure::History {
                    subscriber: s,
                    node: self.members[sub.node].id.clone(),
                    finding: HistoryBreak::Missed {
                        id: write.transition.clone().unwrap_or_default(),
                        written_at_ms: write.at_us / 1_000,
                        writer: self.members[write.node].id.clone(),
                    },
                };
                self.fail(failure);
                return false;
            }
            self.out.history_checks += 1;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use statusmesh_crdt::{DocEvent, Name, StatusEvent};

    use super::*;

    fn event() -> DocEvent {
        let name = |s: &str| Name::parse("name", s).expect("a valid name");
        DocEvent::Status(StatusEvent {
            service: name("api"),
            component: name("db"),
            region: name("eu-west"),
            observation: None,
            conflict: false,
            origin_node: None,
            changed_at_ms: None,
        })
    }

    #[test]
    fn a_writer_told_backwards_an_unnamed_event_and_a_bad_id_break_the_history() {
        let mut history = StreamHistory::new(0);
        let e = event();
        assert!(history
            .tell(1, "a", &e, Some("ab-2:api/obs/db/eu-west"), false)
            .is_ok());
        let back = history.tell(2, "b", &e, Some("ab-1:api/obs/db/eu-west"), false);
        assert!(matches!(
            back,
            Err(HistoryBreak::OutOfOrder { after_n: 2, .. })
        ));
        // Another writer of the same record has its own order.
        assert!(history
            .tell(3, "a", &e, Some("cd-1:api/obs/db/eu-west"), false)
            .is_ok());
        assert!(matches!(
            history.tell(4, "a", &e, None, false),
            Err(HistoryBreak::Unnamed { .. })
        ));
        assert!(matches!(
            history.tell(5, "a", &e, Some("no identity"), false),
            Err(HistoryBreak::MalformedId { .. })
        ));
    }

    #[test]
    fn only_a_coalesced_event_or_the_stream_start_exempts_earlier_writes() {
        let mut history = StreamHistory::new(100);
        let record = "api/obs/db/eu-west";
        assert!(history.exempts(record, 100));
        assert!(!history.exempts(record, 150));
        assert!(history.tell(200, "a", &event(), None, true).is_ok());
        assert!(history.exempts(record, 150));
        assert!(!history.exempts(record, 201));
        assert!(!history.exempts("api/obs/web/eu-west", 150));
    }
}
