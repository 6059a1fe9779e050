//! Incidents, maintenance and overrides: writes, derived views, events, remote validation.

use statusmesh_crdt::{
    ActorId, DocEvent, Impact, Incident, IncidentChange, IncidentStatus, Maintenance, Name,
    Observation, Override, Put, Replica, State, StatusWrite,
};

fn name(s: &str) -> Name {
    Name::parse("name", s).expect("valid name")
}

fn replica(i: u8) -> Replica {
    Replica::new(&format!("n{i}"), ActorId::from(vec![i; 16]))
}

fn observe(r: &mut Replica, now: u64, component: &str, region: &str, state: State) {
    let w = StatusWrite::parse(
        "api",
        component,
        region,
        Observation {
            state,
            message: String::new(),
            reporter: "probe".into(),
            observed_at_ms: now,
            ttl_ms: 60_000,
        },
    )
    .expect("valid");
    r.write_status(now, &w).expect("write");
}

fn incident(now: u64) -> Incident {
    Incident {
        title: "Elevated error rates".into(),
        impact: Impact::Major,
        status: IncidentStatus::Investigating,
        components: vec![name("db")],
        opened_at_ms: now,
        resolved_at_ms: None,
        author: "oncall".into(),
    }
}

fn sync(from: &Replica, to: &mut Replica) -> Vec<DocEvent> {
    let mut events = Vec::new();
    for doc in from.docs() {
        let heads = to.doc(doc.service()).map(|d| d.heads()).unwrap_or_default();
        let changes = from.changes_since(doc.service(), &heads);
        events.extend(
            to.apply_remote(doc.service().as_str(), &changes)
                .expect("valid")
                .doc_events,
        );
    }
    events
}

#[test]
fn an_incident_goes_from_investigating_to_resolved_with_its_timeline() {
    let mut a = replica(1);
    let api = name("api");
    let id = name("inc-1");
    let opened = a
        .open_incident(1_000, &api, &id, incident(1_000), "We are looking into it")
        .expect("open");
    assert!(opened.changed);
    assert!(matches!(&opened.doc_events[0], DocEvent::Incident(e) if e.new_updates.len() == 1));
    assert!(
        a.open_incident(1_001, &api, &id, incident(1_001), "again")
            .is_err(),
        "ids are unique"
    );
    for (now, status, text) in [
        (2_000, IncidentStatus::Identified, "Bad deploy"),
        (3_000, IncidentStatus::Monitoring, "Rolled back"),
        (4_000, IncidentStatus::Resolved, "All clear"),
    ] {
        let change = IncidentChange {
            status: Some(status),
            impact: None,
            title: None,
            components: None,
            text: Some(text.into()),
            author: "oncall".into(),
        };
        a.change_incident(now, &api, &id, change).expect("update");
    }
    let view = serde_json::to_value(a.view(5_000, None)).expect("json");
    let inc = &view["services"][0]["incidents"][0];
    assert_eq!(inc["status"], "resolved");
    assert_eq!(inc["resolved_at_ms"], 4_000);
    let texts: Vec<&str> = inc["updates"]
        .as_array()
        .expect("updates")
        .iter()
        .filter_map(|u| u["text"].as_str())
        .collect();
    assert_eq!(
        texts,
        [
            "We are looking into it",
            "Bad deploy",
            "Rolled back",
            "All clear"
        ]
    );
    // A resolved incident no longer raises the page indicator.
    assert_eq!(view["page"]["indicator"], "none");

    // Another replica sees the same incident through remote changes: one event per change,
    // each with the update that change appended, in order.
    let mut b = replica(2);
    let events = sync(&a, &mut b);
    let told: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            DocEvent::Incident(i) => Some(i.new_updates.iter().map(|u| u.text.as_str())),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(told, texts);
    assert_eq!(
        serde_json::to_value(b.view(5_000, None)).expect("json"),
        view
    );
}

#[test]
fn concurrent_incident_updates_from_two_nodes_both_stay_in_the_timeline() {
    let api = name("api");
    let id = name("inc-2");
    let mut a = replica(1);
    a.open_incident(1_000, &api, &id, incident(1_000), "opened")
        .expect("open");
    let mut b = replica(2);
    sync(&a, &mut b);
    let note = |text: &str| IncidentChange {
        status: None,
        impact: None,
        title: None,
        components: None,
        text: Some(text.into()),
        author: "oncall".into(),
    };
    a.change_incident(2_000, &api, &id, note("from a"))
        .expect("a");
    b.change_incident(2_000, &api, &id, note("from b"))
        .expect("b");
    sync(&a, &mut b);
    sync(&b, &mut a);
    let view = serde_json::to_value(a.view(3_000, None)).expect("json");
    assert_eq!(
        view["services"][0]["incidents"][0]["updates"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    assert_eq!(
        view,
        serde_json::to_value(b.view(3_000, None)).expect("json")
    );
}

#[test]
fn maintenance_and_overrides_shape_the_derived_status() {
    let mut r = replica(1);
    let api = name("api");
    observe(&mut r, 1_000, "db", "eu-west", State::MajorOutage);
    observe(&mut r, 1_000, "db", "us-east", State::Operational);
    let view = serde_json::to_value(r.view(1_000, None)).expect("json");
    assert_eq!(
        view["services"][0]["components"][0]["status"],
        "major_outage"
    );
    assert_eq!(view["page"]["indicator"], "critical");

    let window = Maintenance {
        title: "DB upgrade".into(),
        components: vec![name("db")],
        starts_at_ms: 2_000,
        ends_at_ms: 3_000,
        author: "ops".into(),
    };
    r.write_records(
        1_500,
        &api,
        &[Put::Maintenance {
            id: name("mw-1"),
            window: Some(window),
        }],
    )
    .expect("maintenance");
    let during = serde_json::to_value(r.view(2_500, None)).expect("json");
    let db = &during["services"][0]["components"][0];
    assert_eq!(db["status"], "under_maintenance");
    assert_eq!(db["observed_status"], "major_outage");
    assert_eq!(
        during["services"][0]["scheduled_maintenances"][0]["active"],
        true
    );

    let word = Override {
        state: State::PartialOutage,
        reason: "customers report errors".into(),
        author: "oncall".into(),
        at_ms: 2_600,
        until_ms: Some(10_000),
    };
    r.write_records(
        2_600,
        &api,
        &[Put::Override {
            component: name("db"),
            value: Some(word),
        }],
    )
    .expect("override");
    let overridden = serde_json::to_value(r.view(2_700, None)).expect("json");
    assert_eq!(
        overridden["services"][0]["components"][0]["status"],
        "partial_outage"
    );
    assert_eq!(
        overridden["services"][0]["components"][0]["override"]["reason"],
        "customers report errors"
    );
    // Cleared: back to what the regions observe (the window has ended by then).
    let cleared = r
        .write_records(
            3_500,
            &api,
            &[Put::Override {
                component: name("db"),
                value: None,
            }],
        )
        .expect("clear");
    assert!(cleared.changed);
    assert!(matches!(&cleared.doc_events[0], DocEvent::Override(o) if o.value.is_none()));
    let after = serde_json::to_value(r.view(3_500, None)).expect("json");
    assert_eq!(
        after["services"][0]["components"][0]["status"],
        "major_outage"
    );
}

#[test]
fn invalid_records_are_refused_before_anything_is_written() {
    let mut r = replica(1);
    let api = name("api");
    let mut bad = incident(1_000);
    bad.title = String::new();
    let err = r
        .open_incident(1_000, &api, &name("inc-3"), bad, "x")
        .expect_err("empty title");
    assert!(err.to_string().contains("title"), "{err}");
    assert!(r.doc(&api).is_none_or(|d| d.history_len() == 0));
    let window = Maintenance {
        title: "backwards".into(),
        components: vec![name("db")],
        starts_at_ms: 5,
        ends_at_ms: 4,
        author: "ops".into(),
    };
    let err = r
        .write_records(
            1,
            &api,
            &[Put::Maintenance {
                id: name("mw"),
                window: Some(window),
            }],
        )
        .expect_err("ends before start");
    assert!(err.to_string().contains("ends_at_ms"), "{err}");
}

#[test]
fn a_remote_change_that_deletes_an_incident_is_rejected() {
    use automerge::transaction::Transactable;
    let mut a = replica(1);
    let api = name("api");
    a.open_incident(1_000, &api, &name("inc-4"), incident(1_000), "opened")
        .expect("open");
    let saved = a.doc(&api).expect("doc").save();
    let mut rogue = automerge::AutoCommit::load(&saved)
        .expect("load")
        .with_actor(ActorId::from(vec![7; 16]));
    rogue.delete(automerge::ROOT, "inc/inc-4").expect("delete");
    let last = rogue
        .get_last_local_change()
        .expect("change")
        .raw_bytes()
        .to_vec();
    let err = a.apply_remote("api", &[last]).expect_err("rejected");
    assert!(err.to_string().contains("never deleted"), "{err}");
    assert!(a
        .doc(&api)
        .and_then(|d| d.incident(&name("inc-4")))
        .is_some());
}
