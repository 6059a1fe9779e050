//! Unit tests of the replica: local and remote writes, events, cursors and views.
use super::*;
use crate::model::{Observation, State};

fn replica(n: u8) -> Replica {
    Replica::new(&format!("n{n}"), ActorId::from(vec![n; 16]))
}

fn write(component: &str, region: &str, state: State, message: &str) -> StatusWrite {
    StatusWrite::parse(
        "api",
        component,
        region,
        Observation {
            state,
            message: message.into(),
            reporter: "probe".into(),
            observed_at_ms: 1_000,
            ttl_ms: 60_000,
        },
    )
    .expect("valid write")
}

fn sync(from: &Replica, to: &mut Replica) {
    for doc in from.docs() {
        let heads = to.doc(doc.service()).map(|d| d.heads()).unwrap_or_default();
        let changes = from.changes_since(doc.service(), &heads);
        to.apply_remote(doc.service().as_str(), &changes)
            .expect("valid changes");
    }
}

#[test]
fn same_value_rewritten_ten_thousand_times_does_not_grow_history() {
    let mut r = replica(1);
    let w = write("db", "eu-west", State::Operational, "ok");
    assert!(r.write_status(1, &w).expect("write").changed);
    let service = w.service.clone();
    let size_before = r.doc(&service).expect("doc").save().len();
    for now in 2..10_002 {
        let outcome = r.write_status(now, &w).expect("write");
        assert!(!outcome.changed);
    }
    let doc = r.doc(&service).expect("doc");
    assert_eq!(doc.history_len(), 1);
    assert_eq!(doc.save().len(), size_before);
    assert_eq!(r.liveness().last_seen("api/db/eu-west"), Some(10_001));
}

#[test]
fn a_change_whose_checksum_is_wrong_is_rejected_and_the_document_still_loads() {
    let (mut a, mut b) = (replica(1), replica(2));
    let out = a
        .write_status(5, &write("db", "eu-west", State::MajorOutage, "down"))
        .expect("write");
    let mut change = out.change.expect("a change");
    change[4] ^= 0xff;
    let refused = b.apply_remote("api", std::slice::from_ref(&change));
    assert!(
        matches!(refused, Err(CrdtError::ChangeDecode(_))),
        "{refused:?}"
    );
    // Nothing of it reached the document, which saves and loads as before.
    let service = Name::parse("service", "api").expect("name");
    if let Some(doc) = b.doc(&service) {
        assert!(doc.heads().is_empty());
        assert!(ServiceDoc::load(service, &doc.save(), ActorId::from(vec![7; 16])).is_ok());
    }
}

#[test]
fn remote_changes_converge_and_produce_events() {
    let mut a = replica(1);
    let mut b = replica(2);
    let out = a
        .write_status(5, &write("db", "eu-west", State::MajorOutage, "down"))
        .expect("write");
    assert_eq!(out.events.len(), 1);
    let change = out.change.expect("a change");
    let remote = b
        .apply_remote("api", std::slice::from_ref(&change))
        .expect("apply");
    assert_eq!(remote.new_changes, 1);
    assert_eq!(remote.events.len(), 1);
    assert_eq!(
        remote.events[0].observation.as_ref().map(|o| o.state),
        Some(State::MajorOutage)
    );
    // The same change again is not new and shows nothing.
    let again = b.apply_remote("api", &[change]).expect("apply");
    assert_eq!(again.new_changes, 0);
    assert!(again.events.is_empty());
    assert_eq!(a.cursor(), b.cursor());
}

#[test]
fn concurrent_writes_to_one_cell_keep_the_loser_as_a_conflict() {
    let mut a = replica(1);
    let mut b = replica(2);
    a.write_status(5, &write("db", "eu-west", State::MajorOutage, "a"))
        .expect("write");
    b.write_status(5, &write("db", "eu-west", State::Operational, "b"))
        .expect("write");
    sync(&a, &mut b);
    sync(&b, &mut a);
    let view_a = serde_json::to_value(a.view(10, None)).expect("json");
    let view_b = serde_json::to_value(b.view(10, None)).expect("json");
    assert_eq!(view_a, view_b);
    let cell = &view_a["services"][0]["components"][0]["regions"][0];
    assert_eq!(cell["conflicts"].as_array().map(Vec::len), Some(1));
}

#[test]
fn a_change_that_breaks_the_schema_is_rejected_whole() {
    use automerge::transaction::Transactable;
    let mut rogue = automerge::AutoCommit::new().with_actor(ActorId::from(vec![9; 16]));
    rogue
        .put(automerge::ROOT, "obs/db/eu-west", "not json")
        .expect("put");
    let bad = rogue.save();
    let good = {
        let mut a = replica(1);
        a.write_status(5, &write("db", "eu-west", State::Operational, "ok"))
            .expect("write")
            .change
            .expect("change")
    };
    let mut b = replica(2);
    let bad_change = automerge::Automerge::load(&bad)
        .expect("load")
        .get_changes(&[])[0]
        .bytes()
        .into_owned();
    let err = b
        .apply_remote("api", &[good, bad_change])
        .expect_err("rejected");
    assert!(matches!(err, CrdtError::ChangeSchema { .. }), "{err}");
    assert!(b
        .doc(&Name::parse("service", "api").expect("name"))
        .is_none_or(|d| d.heads().is_empty()));
    assert!(b.apply_remote("api", &[vec![1, 2, 3]]).is_err());
}

#[test]
fn a_change_that_arrives_before_its_dependency_shows_when_the_dependency_does() {
    let mut a = replica(1);
    let first = a
        .write_status(1, &write("db", "eu-west", State::Operational, "one"))
        .expect("write")
        .change
        .expect("change");
    let second = a
        .write_status(2, &write("web", "eu-west", State::MajorOutage, "two"))
        .expect("write")
        .change
        .expect("change");
    let mut b = replica(2);
    let early = b
        .apply_remote("api", std::slice::from_ref(&second))
        .expect("held back");
    assert_eq!(early.new_changes, 1);
    assert!(
        early.events.is_empty(),
        "nothing is visible before its dependency"
    );
    let late = b.apply_remote("api", &[first]).expect("apply");
    let mut components: Vec<&str> = late.events.iter().map(|e| e.component.as_str()).collect();
    components.sort_unstable();
    assert_eq!(components, ["db", "web"]);
    assert_eq!(a.cursor(), b.cursor());
}

#[test]
fn events_since_a_cursor_come_in_the_order_they_were_written() {
    let mut a = replica(1);
    a.write_status(1, &write("zz", "eu-west", State::Operational, ""))
        .expect("write");
    let seen = a.cursor();
    // Written in an order that is not the order of their keys.
    for (i, component) in ["m", "b", "z", "a", "k"].iter().enumerate() {
        a.write_status(
            2 + i as u64,
            &write(component, "eu-west", State::MajorOutage, ""),
        )
        .expect("write");
    }
    let mut b = replica(2);
    sync(&a, &mut b);
    let events = b.events_since(&seen).expect("known cursor");
    let order: Vec<&str> = events.iter().map(|e| e.component.as_str()).collect();
    assert_eq!(order, ["m", "b", "z", "a", "k"]);
}

#[test]
fn events_since_a_cursor_are_exactly_the_unseen_cells() {
    let mut a = replica(1);
    a.write_status(1, &write("db", "eu-west", State::Operational, ""))
        .expect("write");
    let seen = a.cursor();
    a.write_status(2, &write("web", "us-east", State::PartialOutage, ""))
        .expect("write");
    let mut b = replica(2);
    sync(&a, &mut b);
    let decoded = Cursor::decode(&seen.encode()).expect("cursor");
    let events = b.events_since(&decoded).expect("known cursor");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].component.as_str(), "web");
    assert_eq!(b.events_since(&b.cursor()).map(|e| e.len()), Some(0));
    // A cursor naming changes this replica lacks cannot be answered.
    let mut c = replica(3);
    c.write_status(1, &write("x", "y", State::Operational, ""))
        .expect("write");
    assert!(b.events_since(&c.cursor()).is_none());
}

#[test]
fn a_rejected_batch_for_a_new_service_leaves_no_document_behind() {
    let mut r = replica(1);
    assert!(r.apply_remote("api", &[vec![1, 2, 3]]).is_err());
    assert_eq!(r.docs().count(), 0);
    assert_eq!(r.cursor(), Cursor::default());
}

#[test]
fn a_status_batch_refused_for_one_service_writes_no_service() {
    let mut r = replica(1);
    let in_service = |service: &str| {
        let mut w = write("db", "eu-west", State::Operational, "");
        w.service = Name::parse("service", service).expect("name");
        w
    };
    for i in 0..SERVICES_MAX - 1 {
        r.write_status(1, &in_service(&format!("s{i}")))
            .expect("write");
    }
    let (cursor, liveness) = (r.cursor(), r.liveness().clone());
    // Room for one more service, and the batch brings two.
    let batch = [in_service("s0"), in_service("new-a"), in_service("new-b")];
    let err = r.write_status_batch(2, &batch).expect_err("refused");
    assert_eq!(err.field(), Some("service"));
    assert_eq!(r.cursor(), cursor);
    assert_eq!(r.liveness(), &liveness);
    assert_eq!(r.docs().count(), SERVICES_MAX - 1);
}
