//! Tests of the firing set (a file of its own: `firing.rs` holds the rules).

use super::*;
use crate::http::alertmanager::payload::Alert;

fn target(component: &str) -> Target {
    Target {
        service: Name::parse("service", "api").expect("name"),
        component: Name::parse("component", component).expect("name"),
        region: Name::parse("region", "eu-west").expect("name"),
    }
}

fn alert(fingerprint: &str, status: Status, state: State, starts_at_ms: i64) -> Alert {
    Alert {
        fingerprint: fingerprint.to_owned(),
        status,
        target: target("db"),
        state,
        name: format!("Alert{fingerprint}"),
        starts_at_ms: Some(starts_at_ms),
        incident: false,
    }
}

fn delivery(group: u64, alerts: Vec<Alert>) -> Delivery {
    Delivery {
        receiver: "Status Mesh".to_owned(),
        group,
        complete: true,
        firing: 0,
        resolved: 0,
        alerts,
        skipped: Vec::new(),
    }
}

const HOUR_MS: u64 = 3_600_000;

fn apply(set: &mut FiringSet, d: &Delivery, now_ms: u64) -> Outcome {
    set.apply(d, now_ms, 12 * HOUR_MS, |_| true)
}

#[test]
fn a_component_reads_its_worst_firing_alert_and_operational_once_all_resolved() {
    let mut set = FiringSet::default();
    let db = target("db");
    // Two groups speak about one component.
    apply(
        &mut set,
        &delivery(
            1,
            vec![alert("a", Status::Firing, State::DegradedPerformance, 10)],
        ),
        100,
    );
    apply(
        &mut set,
        &delivery(2, vec![alert("b", Status::Firing, State::MajorOutage, 20)]),
        200,
    );
    let observed = set.observed(&db, "x");
    assert_eq!(observed.state, State::MajorOutage);
    assert_eq!(observed.firing, 2);
    assert_eq!(observed.message, "2 alerts firing: Alertb; Alerta");
    assert_eq!(observed.reporter, "alertmanager.status-mesh");

    apply(
        &mut set,
        &delivery(
            2,
            vec![alert("b", Status::Resolved, State::MajorOutage, 20)],
        ),
        300,
    );
    assert_eq!(set.observed(&db, "x").state, State::DegradedPerformance);
    apply(
        &mut set,
        &delivery(
            1,
            vec![alert("a", Status::Resolved, State::Operational, 10)],
        ),
        400,
    );
    assert_eq!(set.observed(&db, "x").state, State::Operational);
    assert_eq!(set.firing_count(), 0);
}

#[test]
fn the_same_delivery_twice_leaves_the_same_set_but_for_when_it_was_seen() {
    let mut set = FiringSet::default();
    let d = delivery(
        1,
        vec![
            alert("a", Status::Firing, State::MajorOutage, 10),
            alert("b", Status::Resolved, State::Operational, 5),
        ],
    );
    apply(&mut set, &d, 100);
    let once = set.clone();
    let outcome = apply(&mut set, &d, 100);
    assert_eq!(set, once);
    assert_eq!(outcome.touched, [target("db")].into());
    assert!(outcome.skipped.is_empty());
}

#[test]
fn a_late_firing_of_a_resolved_episode_is_stale_and_a_new_episode_fires() {
    let mut set = FiringSet::default();
    let db = target("db");
    let firing = delivery(1, vec![alert("a", Status::Firing, State::MajorOutage, 10)]);
    apply(&mut set, &firing, 100);
    apply(
        &mut set,
        &delivery(
            1,
            vec![alert("a", Status::Resolved, State::Operational, 10)],
        ),
        200,
    );
    // The first notification again, overtaken by the resolution (an HA peer, a retry).
    let outcome = apply(&mut set, &firing, 300);
    assert_eq!(outcome.skipped, vec![("a".to_owned(), Skip::Stale)]);
    assert!(outcome.touched.is_empty(), "nothing to write");
    assert_eq!(set.observed(&db, "x").state, State::Operational);
    // The same alert firing again is a new episode: a later startsAt.
    apply(
        &mut set,
        &delivery(1, vec![alert("a", Status::Firing, State::MajorOutage, 50)]),
        400,
    );
    assert_eq!(set.observed(&db, "x").state, State::MajorOutage);
    // A resolution of the first episode does not end the second.
    let outcome = apply(
        &mut set,
        &delivery(
            1,
            vec![alert("a", Status::Resolved, State::Operational, 10)],
        ),
        500,
    );
    assert_eq!(outcome.skipped, vec![("a".to_owned(), Skip::Stale)]);
    assert_eq!(set.observed(&db, "x").state, State::MajorOutage);
}

#[test]
fn a_whole_group_that_no_longer_lists_an_alert_ends_it_but_a_truncated_one_does_not() {
    let mut set = FiringSet::default();
    let db = target("db");
    let both = vec![
        alert("a", Status::Firing, State::MajorOutage, 10),
        alert("b", Status::Firing, State::PartialOutage, 10),
    ];
    apply(&mut set, &delivery(1, both), 100);
    let mut truncated = delivery(
        1,
        vec![alert("b", Status::Firing, State::PartialOutage, 10)],
    );
    truncated.complete = false;
    apply(&mut set, &truncated, 200);
    assert_eq!(set.observed(&db, "x").firing, 2);
    // Another group's notification says nothing about group 1.
    apply(
        &mut set,
        &delivery(
            2,
            vec![alert("c", Status::Firing, State::DegradedPerformance, 10)],
        ),
        300,
    );
    assert_eq!(set.observed(&db, "x").firing, 3);
    apply(
        &mut set,
        &delivery(
            1,
            vec![alert("b", Status::Firing, State::PartialOutage, 10)],
        ),
        400,
    );
    let observed = set.observed(&db, "x");
    assert_eq!((observed.state, observed.firing), (State::PartialOutage, 2));
}

#[test]
fn an_alert_not_repeated_within_the_ttl_expires_and_touches_its_target() {
    let mut set = FiringSet::default();
    apply(
        &mut set,
        &delivery(1, vec![alert("a", Status::Firing, State::MajorOutage, 10)]),
        0,
    );
    let mut other = alert("b", Status::Firing, State::DegradedPerformance, 10);
    other.target = target("cache");
    let outcome = apply(&mut set, &delivery(2, vec![other]), 13 * HOUR_MS);
    assert_eq!(outcome.touched, [target("cache"), target("db")].into());
    assert_eq!(set.observed(&target("db"), "x").state, State::Operational);
    set.compact();
    assert_eq!(set.targets.len(), 1, "db has nothing left to remember");
}

#[test]
fn the_set_is_bounded_and_says_which_alerts_it_did_not_take() {
    let mut set = FiringSet::default();
    let alerts: Vec<Alert> = (0..FIRING_ALERTS_MAX + 2)
        .map(|i| alert(&format!("f{i}"), Status::Firing, State::MajorOutage, 10))
        .collect();
    let outcome = apply(&mut set, &delivery(1, alerts), 100);
    assert_eq!(set.firing_count(), FIRING_ALERTS_MAX);
    assert_eq!(outcome.skipped.len(), 2);
    assert!(outcome.skipped.iter().all(|(_, s)| *s == Skip::Limit));
    // A full set does not write a component it could not take an alert of.
    let mut cache = alert("new", Status::Firing, State::MajorOutage, 10);
    cache.target = target("cache");
    let outcome = apply(&mut set, &delivery(2, vec![cache]), 200);
    assert_eq!(outcome.skipped, vec![("new".to_owned(), Skip::Limit)]);
    assert!(!outcome.touched.contains(&target("cache")));
    let observed = set.observed(&target("db"), "x");
    assert!(observed.message.len() <= MESSAGE_LEN_MAX);
    assert!(observed.message.ends_with("more)"), "{}", observed.message);
}

#[test]
fn an_incident_opens_with_the_first_alert_that_asks_and_resolves_with_the_last() {
    let mut set = FiringSet::default();
    let db = target("db");
    apply(
        &mut set,
        &delivery(1, vec![alert("a", Status::Firing, State::MajorOutage, 10)]),
        100,
    );
    assert_eq!(set.incident_step(&db, 100), None, "not asked for");
    let mut asks = alert("b", Status::Firing, State::PartialOutage, 1_000);
    asks.incident = true;
    apply(&mut set, &delivery(1, vec![asks.clone()]), 200);
    let Some(IncidentStep::Open { id, impact, title }) = set.incident_step(&db, 200) else {
        panic!("an incident to open");
    };
    assert_eq!(impact, Impact::Major, "a was dropped from its group");
    assert!(title.starts_with("db: "), "{title}");
    // The same episode names the same incident, whenever it is asked.
    let again = set.incident_step(&db, 9_999);
    assert!(matches!(again, Some(IncidentStep::Open { id: ref i, .. }) if *i == id));
    set.set_incident(&db, Some(id.clone()));
    assert_eq!(set.incident_step(&db, 300), None);
    asks.status = Status::Resolved;
    apply(&mut set, &delivery(1, vec![asks]), 400);
    assert_eq!(
        set.incident_step(&db, 400),
        Some(IncidentStep::Resolve { id })
    );
}

#[test]
fn a_receiver_name_becomes_a_valid_reporter() {
    assert_eq!(reporter(""), "alertmanager");
    assert_eq!(reporter("Team A/webhook"), "alertmanager.team-a-webhook");
    let long = reporter(&"x".repeat(200));
    assert!(Name::parse("reporter", &long).is_ok(), "{long}");
}
