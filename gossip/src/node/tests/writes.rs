//! Local writes of every kind, and hostile frames that must change nothing.

use super::*;

#[test]
fn an_incident_opened_on_one_node_reaches_the_others_as_a_record_event() {
    use statusmesh_crdt::{Impact, Incident, IncidentStatus};
    let mut h = Harness::new(3);
    let api = Name::parse("service", "api").expect("name");
    let id = Name::parse("incident", "inc-1").expect("name");
    let incident = Incident {
        title: "Errors".into(),
        impact: Impact::Minor,
        status: IncidentStatus::Investigating,
        components: vec![],
        opened_at_ms: h.now_ms,
        resolved_at_ms: None,
        author: "oncall".into(),
    };
    let now = h.now_ms;
    let hash = h.nodes[0]
        .local_change(now, &api, |r| {
            r.open_incident(now, &api, &id, incident, "looking")
        })
        .expect("opened")
        .expect("a change");
    let mut records = 0;
    while let Some(e) = h.nodes[0].poll_event() {
        records += usize::from(matches!(e, Event::Record { .. }));
    }
    assert_eq!(records, 1);
    // Deliver n0's push by hand, to see the receiver's event before the harness drains it.
    h.drain(0);
    let mut seen = false;
    for (_, to, from, bytes) in std::mem::take(&mut h.in_flight) {
        h.nodes[to].handle_frame(h.now_ms, &from, &bytes);
        while let Some(e) = h.nodes[to].poll_event() {
            seen |= to == 1
                && matches!(
                    e,
                    Event::Record {
                        event: DocEvent::Incident(_),
                        ..
                    }
                );
        }
        while let Some(t) = h.nodes[to].poll_transmit() {
            let sender = h.nodes[to].id().to_owned();
            h.in_flight
                .push((h.now_ms, Harness::index(&t.to), sender, t.bytes));
        }
    }
    assert!(seen, "n1 reported the incident as a record event");
    h.run_for(50);
    assert!(h.nodes[2]
        .replica()
        .doc(&api)
        .and_then(|d| d.incident(&id))
        .is_some());
    assert_eq!(h.nodes[0].regions_holding(&hash), Some(3));
}

#[test]
fn a_batch_of_writes_is_one_change_per_service_and_reaches_everyone() {
    let mut h = Harness::new(3);
    h.write(0, "db", State::Operational);
    let batch = [
        h.status_write("db", State::Operational),
        h.status_write("db", State::MajorOutage),
        h.status_write("db", State::Operational),
        h.status_write("web", State::PartialOutage),
    ];
    let now = h.now_ms;
    let result = h.nodes[0].local_write_batch(now, &batch).expect("batch");
    let changed: Vec<bool> = result.iter().map(|(c, _)| *c).collect();
    assert_eq!(changed, [false, true, true, true]);
    h.drain(0);
    h.run_for(20);
    assert!(h.converged());
    let api = Name::parse("service", "api").expect("name");
    for node in &h.nodes {
        let doc = node.replica().doc(&api).expect("doc");
        // The first write, then the whole batch as one change.
        assert_eq!(doc.history_len(), 2);
        let db = doc
            .cell(
                &Name::parse("c", "db").expect("name"),
                &Name::parse("r", "r0").expect("name"),
            )
            .expect("cell");
        assert_eq!(db.value.state, State::Operational);
    }
    let hash = result[1].1.expect("a change");
    assert_eq!(h.nodes[0].regions_holding(&hash), Some(3));
}

#[test]
fn garbage_broadcast_frames_change_nothing_and_are_counted() {
    let mut h = Harness::without_anti_entropy(3);
    h.run_for(100);
    h.write(0, "db", State::Operational);
    h.run_for(20);
    let before = h.nodes[1].replica().cursor();
    let tree_before = h.nodes[1].broadcast_state().trees().clone();
    let missing_before = h.nodes[1].broadcast_state().missing_count();
    let rejected_before = h.nodes[1].stats().frames_rejected;
    let bad_push = codec::encode(&Frame::Push {
        service: "api".into(),
        changes: vec![vec![0xde, 0xad]],
    })
    .expect("encode");
    let ihave = codec::encode(&Frame::IHave {
        roots: vec![("n0".into(), vec![1, 2, 3])],
    })
    .expect("encode");
    let truncated_ihave = ihave[..ihave.len() - 1].to_vec();
    // Version, then the variant index of each broadcast frame, then noise.
    let noise: Vec<Vec<u8>> = (6u8..=9)
        .map(|tag| [vec![2, tag], vec![0xff; 40]].concat())
        .collect();
    let garbage: Vec<Vec<u8>> = [vec![bad_push, truncated_ihave], noise].concat();
    let count = garbage.len() as u64;
    for bytes in garbage {
        h.nodes[1].handle_frame(h.now_ms, "n0", &bytes);
    }
    assert_eq!(h.nodes[1].stats().frames_rejected, rejected_before + count);
    assert_eq!(
        h.nodes[1].transmits_queued(),
        0,
        "nothing forwarded or answered"
    );
    assert_eq!(h.nodes[1].replica().cursor(), before);
    assert_eq!(h.nodes[1].broadcast_state().trees(), &tree_before);
    assert_eq!(h.nodes[1].broadcast_state().missing_count(), missing_before);
    h.drain(1);
    h.run_for(1_000);
    assert!(h.converged());
}

#[test]
fn garbage_frames_change_nothing_and_are_counted() {
    let mut h = Harness::new(2);
    h.write(0, "db", State::Operational);
    h.run_for(10);
    let before = h.nodes[1].replica().cursor();
    let bad_changes = codec::encode(&Frame::Changes {
        service: "api".into(),
        changes: vec![vec![0xde, 0xad]],
    })
    .expect("encode");
    // A version this release reads, then noise.
    let noise = [vec![3], vec![0xff; 99]].concat();
    for bytes in [vec![], noise, bad_changes] {
        h.nodes[1].handle_frame(h.now_ms, "n0", &bytes);
    }
    h.nodes[1].handle_frame(h.now_ms, "stranger", &[1, 2, 3]);
    assert_eq!(h.nodes[1].stats().frames_rejected, 4);
    assert_eq!(h.nodes[1].replica().cursor(), before);
    let mut rejected = 0;
    while let Some(e) = h.nodes[1].poll_event() {
        if matches!(e, Event::FrameRejected { .. }) {
            rejected += 1;
        }
    }
    assert_eq!(rejected, 4);
}
