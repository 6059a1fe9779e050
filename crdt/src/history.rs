//! History: timelines and uptime computed from the Automerge history (the audit trail).
//!
//! Every observation change is in the document's history with the node that made it (the
//! change message) and when (the observation's time), so who said what, where and when can
//! be read back without any other log. The history of closed epochs is in the archive
//! ([`crate::archive`]); the `*_with` functions merge it with the live epoch.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use automerge::Change;
use serde::Serialize;

use crate::archive::{writes_of, ArchivedWrite};
use crate::doc::{RecordKey, ServiceDoc};
use crate::epoch::{EpochMeta, Writer, META_KEY};
use crate::model::{Name, Observation, State};

/// Share of a period that counts as down, per state (Statuspage's weighting: a partial
/// outage counts 30%, a major outage in full).
pub fn downtime_weight(state: State) -> f64 {
    match state {
        State::MajorOutage => 1.0,
        State::PartialOutage => 0.3,
        State::Operational | State::UnderMaintenance | State::DegradedPerformance => 0.0,
    }
}

/// One change of state of one region's observation of a component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transition {
    pub at_ms: u64,
    pub region: Name,
    pub state: State,
    /// The state before, if the region had observed one.
    pub previous: Option<State>,
    pub message: String,
    pub reporter: String,
    /// The node that wrote the change.
    pub origin_node: Option<String>,
}

/// Time-weighted availability over a window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Uptime {
    /// The region, or `None` for the component as a whole (worst region at each moment).
    pub region: Option<Name>,
    pub from_ms: u64,
    pub to_ms: u64,
    /// The part of the window for which any state was known.
    pub known_ms: u64,
    /// Milliseconds spent in each state.
    pub state_ms: BTreeMap<State, u64>,
    /// 1 − weighted downtime / known time; `None` when nothing was known.
    pub uptime: Option<f64>,
    /// The worst state seen in the window.
    pub worst: Option<State>,
}

/// Every state transition of `component`, in every region, oldest first. A write that kept
/// the state (a new message, say) is not a transition. Reads the live document only: the
/// case of a node without an archive (see [`timeline_with`]).
pub fn timeline(doc: &ServiceDoc, component: &Name) -> Vec<Transition> {
    timeline_with(doc, &[], component)
}

/// The timeline of `component` over the archived writes of closed epochs and the live epoch
/// of `doc`. A write carried from one epoch into the next is in both, once: writes are told
/// apart by their identity (writer, number) and cell. The live epoch's base restates a
/// state, it is not a write, so it is skipped, except where it is the only knowledge of the
/// state before: a region with no archived write (a node that restarted with an empty disk,
/// say) starts from the base's value, at the time that value was observed.
pub fn timeline_with(
    doc: &ServiceDoc,
    archived: &[ArchivedWrite],
    component: &Name,
) -> Vec<Transition> {
    transitions(steps(doc, archived, component))
}

/// Uptime of `component` over `[from_ms, to_ms)`: one entry per region, then one for the
/// component as a whole (at each moment, the worst state any region reported).
pub fn uptime(doc: &ServiceDoc, component: &Name, from_ms: u64, to_ms: u64) -> Vec<Uptime> {
    uptime_with(doc, &[], component, from_ms, to_ms)
}

/// [`uptime`] over the archive and the live epoch (see [`timeline_with`]).
pub fn uptime_with(
    doc: &ServiceDoc,
    archived: &[ArchivedWrite],
    component: &Name,
    from_ms: u64,
    to_ms: u64,
) -> Vec<Uptime> {
    let transitions = timeline_with(doc, archived, component);
    uptime_of(&transitions, from_ms, to_ms)
}

/// Uptime per bucket of `bucket_ms` over `[from_ms, to_ms)` for the component as a whole
/// (the data behind a 90-day bar).
pub fn uptime_buckets(
    doc: &ServiceDoc,
    component: &Name,
    from_ms: u64,
    to_ms: u64,
    bucket_ms: u64,
) -> Vec<Uptime> {
    uptime_buckets_with(doc, &[], component, from_ms, to_ms, bucket_ms)
}

/// [`uptime_buckets`] over the archive and the live epoch (see [`timeline_with`]).
pub fn uptime_buckets_with(
    doc: &ServiceDoc,
    archived: &[ArchivedWrite],
    component: &Name,
    from_ms: u64,
    to_ms: u64,
    bucket_ms: u64,
) -> Vec<Uptime> {
    let transitions = timeline_with(doc, archived, component);
    let bucket_ms = bucket_ms.max(1);
    let mut buckets = Vec::new();
    let mut start = from_ms;
    // Bounded: at most 10,000 buckets per call.
    while start < to_ms && buckets.len() < 10_000 {
        let end = start.saturating_add(bucket_ms).min(to_ms);
        if let Some(whole) = uptime_of(&transitions, start, end).pop() {
            buckets.push(whole);
        }
        start = end;
    }
    buckets
}

/// One write of an observation, as the timeline needs it.
#[derive(Debug)]
struct Step {
    at_ms: u64,
    region: Name,
    state: State,
    message: String,
    reporter: String,
    origin_node: Option<String>,
}

impl Step {
    fn of(write: &ArchivedWrite) -> Self {
        Self {
            at_ms: write.at_ms,
            region: write.region.clone(),
            state: write.state,
            message: write.message.clone(),
            reporter: write.reporter.clone(),
            origin_node: write.origin_node.clone(),
        }
    }
}

/// The writes of `component`, oldest first: the base's starting points (see
/// [`timeline_with`]), then the archived writes, then the live ones, each write once.
fn steps(doc: &ServiceDoc, archived: &[ArchivedWrite], component: &Name) -> Vec<Step> {
    let changes = doc.all_changes();
    let live = writes_of(&changes);
    let archived_regions: BTreeSet<&Name> = archived
        .iter()
        .filter(|w| &w.component == component)
        .map(|w| &w.region)
        .collect();
    let mut steps: Vec<Step> = changes
        .iter()
        .filter(|c| ServiceDoc::is_base(c))
        .flat_map(|base| base_values(base, component))
        .filter(|step| !archived_regions.contains(&step.region))
        .collect();
    let mut seen: HashSet<(Writer, u64, &Name)> = HashSet::new();
    for write in archived.iter().chain(&live) {
        if &write.component == component && seen.insert((write.writer, write.n, &write.region)) {
            steps.push(Step::of(write));
        }
    }
    // Causal order within a region is also time order for one reporter; across regions the
    // observation time is what people read. The sort is stable, so equal times keep the
    // order above (base values, then older epochs, then the live one).
    steps.sort_by(|a, b| a.at_ms.cmp(&b.at_ms).then_with(|| a.region.cmp(&b.region)));
    steps
}

/// The observations of `component` a base change restates, with the origin the base
/// records for each (who wrote the value it restates).
fn base_values(base: &Change, component: &Name) -> Vec<Step> {
    let operations = base.decode().operations;
    let mut origins = BTreeMap::new();
    for op in &operations {
        if let (
            automerge::legacy::Key::Map(key),
            automerge::legacy::OpType::Put(automerge::ScalarValue::Str(text)),
        ) = (&op.key, &op.action)
        {
            if key.as_str() == META_KEY {
                if let Ok(meta) = EpochMeta::from_json(text) {
                    origins = meta.origins;
                }
            }
        }
    }
    let mut steps = Vec::new();
    for op in &operations {
        let automerge::legacy::Key::Map(key) = &op.key else {
            continue;
        };
        let Some(RecordKey::Observation {
            component: c,
            region,
        }) = RecordKey::parse(key)
        else {
            continue;
        };
        let automerge::legacy::OpType::Put(automerge::ScalarValue::Str(text)) = &op.action else {
            continue;
        };
        if &c != component {
            continue;
        }
        let Ok(observation) = serde_json::from_str::<Observation>(text) else {
            continue;
        };
        steps.push(Step {
            at_ms: observation.observed_at_ms,
            region,
            state: observation.state,
            message: observation.message,
            reporter: observation.reporter,
            origin_node: origins
                .get(key.as_str())
                .and_then(|origin| origin.node.clone()),
        });
    }
    steps
}

/// The steps that changed their region's state.
fn transitions(steps: Vec<Step>) -> Vec<Transition> {
    let mut last: BTreeMap<Name, State> = BTreeMap::new();
    let mut transitions = Vec::new();
    for step in steps {
        let previous = last.insert(step.region.clone(), step.state);
        if previous == Some(step.state) {
            continue;
        }
        transitions.push(Transition {
            at_ms: step.at_ms,
            region: step.region,
            state: step.state,
            previous,
            message: step.message,
            reporter: step.reporter,
            origin_node: step.origin_node,
        });
    }
    transitions
}

fn uptime_of(transitions: &[Transition], from_ms: u64, to_ms: u64) -> Vec<Uptime> {
    let mut by_region: BTreeMap<&Name, Vec<(u64, State)>> = BTreeMap::new();
    for t in transitions {
        by_region
            .entry(&t.region)
            .or_default()
            .push((t.at_ms, t.state));
    }
    let mut result: Vec<Uptime> = by_region
        .iter()
        .map(|(region, steps)| {
            measure(
                Some((*region).clone()),
                from_ms,
                to_ms,
                |at| state_at(steps, at),
                steps,
            )
        })
        .collect();
    // The whole component: change points are the union of every region's.
    let all_steps: Vec<(u64, State)> = transitions.iter().map(|t| (t.at_ms, t.state)).collect();
    let worst_at = |at: u64| {
        by_region
            .values()
            .filter_map(|steps| state_at(steps, at))
            .max_by_key(|s| s.severity())
    };
    result.push(measure(None, from_ms, to_ms, worst_at, &all_steps));
    result
}

/// The state in force at `at` given steps sorted by time.
fn state_at(steps: &[(u64, State)], at: u64) -> Option<State> {
    let index = steps.partition_point(|(t, _)| *t <= at);
    index.checked_sub(1).map(|i| steps[i].1)
}

fn measure(
    region: Option<Name>,
    from_ms: u64,
    to_ms: u64,
    state_at: impl Fn(u64) -> Option<State>,
    steps: &[(u64, State)],
) -> Uptime {
    let mut points: Vec<u64> = steps
        .iter()
        .map(|(t, _)| *t)
        .filter(|t| *t > from_ms && *t < to_ms)
        .collect();
    points.push(from_ms);
    points.push(to_ms);
    points.sort_unstable();
    points.dedup();
    let mut state_ms: BTreeMap<State, u64> = BTreeMap::new();
    let mut down = 0.0;
    let mut known_ms = 0;
    let mut worst: Option<State> = None;
    for pair in points.windows(2) {
        let (start, end) = (pair[0], pair[1]);
        if let Some(state) = state_at(start) {
            let span = end - start;
            *state_ms.entry(state).or_default() += span;
            known_ms += span;
            down += downtime_weight(state) * span as f64;
            if worst.is_none_or(|w| state.severity() > w.severity()) {
                worst = Some(state);
            }
        }
    }
    Uptime {
        region,
        from_ms,
        to_ms,
        known_ms,
        state_ms,
        uptime: (known_ms > 0).then(|| 1.0 - down / known_ms as f64),
        worst,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A timeline as (time, region, state), for comparing with a fixture.
    fn states_of(timeline: &[Transition]) -> Vec<(u64, &str, State)> {
        timeline
            .iter()
            .map(|t| (t.at_ms, t.region.as_str(), t.state))
            .collect()
    }
    use crate::archive::writes_of;
    use crate::model::StatusWrite;
    use automerge::ActorId;

    fn doc_with(writes: &[(u64, &str, State)]) -> ServiceDoc {
        let mut doc = ServiceDoc::new(
            Name::parse("service", "api").expect("name"),
            ActorId::from(vec![1; 16]),
        );
        for (at, region, state) in writes {
            let write = StatusWrite::parse(
                "api",
                "db",
                region,
                Observation {
                    state: *state,
                    message: format!("{state}"),
                    reporter: "probe".into(),
                    observed_at_ms: *at,
                    ttl_ms: 60_000,
                },
            )
            .expect("write");
            doc.put_observation(*at, "n1", &write).expect("put");
        }
        doc
    }

    #[test]
    fn the_timeline_lists_state_changes_with_who_and_where() {
        let doc = doc_with(&[
            (1_000, "eu", State::Operational),
            (2_000, "eu", State::MajorOutage),
            (2_500, "us", State::Operational),
            (3_000, "eu", State::Operational),
        ]);
        let db = Name::parse("component", "db").expect("name");
        let timeline = timeline(&doc, &db);
        let states = states_of(&timeline);
        assert_eq!(
            states,
            vec![
                (1_000, "eu", State::Operational),
                (2_000, "eu", State::MajorOutage),
                (2_500, "us", State::Operational),
                (3_000, "eu", State::Operational),
            ]
        );
        assert_eq!(timeline[1].previous, Some(State::Operational));
        assert_eq!(timeline[1].origin_node.as_deref(), Some("n1"));
    }

    #[test]
    fn uptime_weights_outages_over_the_known_part_of_the_window() {
        let doc = doc_with(&[
            (0, "eu", State::Operational),
            (6_000, "eu", State::MajorOutage),
            (8_000, "eu", State::PartialOutage),
        ]);
        let db = Name::parse("component", "db").expect("name");
        let result = uptime(&doc, &db, 0, 10_000);
        let eu = &result[0];
        assert_eq!(eu.known_ms, 10_000);
        assert_eq!(eu.state_ms.get(&State::MajorOutage), Some(&2_000));
        let expected = 1.0 - (2_000.0 + 0.3 * 2_000.0) / 10_000.0;
        assert!((eu.uptime.expect("known") - expected).abs() < 1e-9);
        assert_eq!(eu.worst, Some(State::MajorOutage));
        let buckets = uptime_buckets(&doc, &db, 0, 10_000, 5_000);
        assert_eq!(buckets.len(), 2);
        assert_eq!(buckets[0].uptime, Some(1.0));
        assert_eq!(buckets[1].worst, Some(State::MajorOutage));
    }

    /// Writes the fixture's writes one by one into `doc` (the same values `doc_with` makes).
    fn put(doc: &mut ServiceDoc, at: u64, region: &str, state: State) {
        let write = StatusWrite::parse(
            "api",
            "db",
            region,
            Observation {
                state,
                message: format!("{state}"),
                reporter: "probe".into(),
                observed_at_ms: at,
                ttl_ms: 60_000,
            },
        )
        .expect("write");
        doc.put_observation(at, "n1", &write).expect("put");
    }

    const WRITES: [(u64, &str, State); 9] = [
        (1_000, "eu", State::Operational),
        (1_500, "us", State::Operational),
        (2_000, "eu", State::MajorOutage),
        (3_000, "eu", State::Operational),
        (3_500, "us", State::PartialOutage),
        (4_000, "eu", State::DegradedPerformance),
        (5_000, "us", State::Operational),
        (6_000, "eu", State::Operational),
        (7_000, "us", State::MajorOutage),
    ];

    /// `WRITES` with a rollover after the 4th and the 7th write, each at a cut two writes
    /// back (so those two are carried into the new epoch and sit in two epochs), archiving
    /// every closed epoch. Returns the live document and the archive.
    fn rolled_over_twice() -> (ServiceDoc, Vec<ArchivedWrite>) {
        let mut doc = doc_with(&[]);
        let mut archive = Vec::new();
        let mut cuts = Vec::new();
        for (i, (at, region, state)) in WRITES.iter().enumerate() {
            cuts.push(doc.heads());
            put(&mut doc, *at, region, *state);
            if i == 3 || i == 6 {
                let cut = cuts[i - 1].clone();
                doc.rollover(&cut).expect("rollover").expect("rolled over");
                archive.extend(writes_of(&doc.prev_writes()));
            }
        }
        assert_eq!(doc.epoch(), 2);
        (doc, archive)
    }

    #[test]
    fn a_timeline_across_two_rollovers_equals_the_timeline_without_them() {
        let (doc, archive) = rolled_over_twice();
        let db = Name::parse("component", "db").expect("name");
        let whole = timeline(&doc_with(&WRITES), &db);
        assert_eq!(whole.len(), WRITES.len());
        assert_eq!(timeline_with(&doc, &archive, &db), whole);
        let reference = doc_with(&WRITES);
        assert_eq!(
            uptime_with(&doc, &archive, &db, 0, 8_000),
            uptime(&reference, &db, 0, 8_000)
        );
        assert_eq!(
            uptime_buckets_with(&doc, &archive, &db, 0, 8_000, 1_000),
            uptime_buckets(&reference, &db, 0, 8_000, 1_000)
        );
    }

    #[test]
    fn a_write_carried_into_the_next_epoch_is_counted_once() {
        let (doc, archive) = rolled_over_twice();
        // The carried writes are in the archive (their epoch) and in the live epoch.
        let live = writes_of(&doc.all_changes());
        let twice = live
            .iter()
            .filter(|w| archive.iter().any(|a| (a.writer, a.n) == (w.writer, w.n)))
            .count();
        assert!(twice > 0, "the fixture carries writes");
        let db = Name::parse("component", "db").expect("name");
        assert_eq!(timeline_with(&doc, &archive, &db).len(), WRITES.len());
    }

    #[test]
    fn without_an_archive_the_base_values_are_the_starting_point() {
        let (doc, _) = rolled_over_twice();
        let db = Name::parse("component", "db").expect("name");
        let restarted = timeline(&doc, &db);
        let states = states_of(&restarted);
        // The second base restates eu (3,000) and us (3,500); the live epoch holds the
        // writes after its cut (4,000 and 5,000, carried) and those after the rollover.
        assert_eq!(
            states,
            vec![
                (3_000, "eu", State::Operational),
                (3_500, "us", State::PartialOutage),
                (4_000, "eu", State::DegradedPerformance),
                (5_000, "us", State::Operational),
                (6_000, "eu", State::Operational),
                (7_000, "us", State::MajorOutage),
            ]
        );
        assert!(restarted
            .iter()
            .all(|t| t.origin_node.as_deref() == Some("n1")));
    }

    #[test]
    fn an_archived_region_does_not_restart_from_the_base_value() {
        let (doc, archive) = rolled_over_twice();
        let db = Name::parse("component", "db").expect("name");
        // Only eu's archived writes: us still starts from the base, eu from its writes.
        let eu_only: Vec<ArchivedWrite> = archive
            .into_iter()
            .filter(|w| w.region.as_str() == "eu")
            .collect();
        let merged = timeline_with(&doc, &eu_only, &db);
        let regions: Vec<_> = merged
            .iter()
            .map(|t| (t.at_ms, t.region.as_str()))
            .collect();
        assert_eq!(
            regions,
            vec![
                (1_000, "eu"),
                (2_000, "eu"),
                (3_000, "eu"),
                (3_500, "us"),
                (4_000, "eu"),
                (5_000, "us"),
                (6_000, "eu"),
                (7_000, "us"),
            ]
        );
    }
}
