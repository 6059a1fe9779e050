//! History: timelines and uptime computed from the Automerge history (the audit trail).
//!
//! Every observation change is in the document's history with the node that made it (the
//! change message) and when (the observation's time), so who said what, where and when can
//! be read back without any other log.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::doc::{RecordKey, ServiceDoc};
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
/// the state (a new message, say) is not a transition.
pub fn timeline(doc: &ServiceDoc, component: &Name) -> Vec<Transition> {
    let mut writes: Vec<(u64, Name, Observation, Option<String>)> = Vec::new();
    for change in doc.all_changes() {
        let origin = change.message().map(str::to_owned);
        for op in change.decode().operations {
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
            if &c != component {
                continue;
            }
            if let automerge::legacy::OpType::Put(automerge::ScalarValue::Str(text)) = &op.action {
                if let Ok(observation) = serde_json::from_str::<Observation>(text) {
                    writes.push((
                        observation.observed_at_ms,
                        region,
                        observation,
                        origin.clone(),
                    ));
                }
            }
        }
    }
    // Causal order within a region is also time order for one reporter; across regions the
    // observation time is what people read.
    writes.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    let mut last: BTreeMap<Name, State> = BTreeMap::new();
    let mut transitions = Vec::new();
    for (at_ms, region, observation, origin_node) in writes {
        let previous = last.insert(region.clone(), observation.state);
        if previous == Some(observation.state) {
            continue;
        }
        transitions.push(Transition {
            at_ms,
            region,
            state: observation.state,
            previous,
            message: observation.message,
            reporter: observation.reporter,
            origin_node,
        });
    }
    transitions
}

/// Uptime of `component` over `[from_ms, to_ms)`: one entry per region, then one for the
/// component as a whole (at each moment, the worst state any region reported).
pub fn uptime(doc: &ServiceDoc, component: &Name, from_ms: u64, to_ms: u64) -> Vec<Uptime> {
    let transitions = timeline(doc, component);
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
    let transitions = timeline(doc, component);
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
        let states: Vec<_> = timeline
            .iter()
            .map(|t| (t.at_ms, t.region.as_str(), t.state))
            .collect();
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
}
