//! Tests of the batched inputs: merging, group commit, resume, restart.

use statusmesh_crdt::model::MESSAGE_LEN_MAX;
use statusmesh_crdt::{
    ActorId, Delivery, Impact, Incident, IncidentStatus, Name, Observation, Replica, State,
    StatusWrite,
};

use super::*;
use crate::codec;
use crate::node::Peer;
use crate::Event;

fn nodes(count: usize) -> Vec<Node> {
    let peers: Vec<Peer> = (0..count)
        .map(|i| Peer {
            id: format!("n{i}"),
            region: format!("r{i}"),
        })
        .collect();
    (0..count)
        .map(|i| {
            let replica = Replica::new(&format!("n{i}"), ActorId::from(vec![i as u8 + 1; 16]));
            Node::new(
                format!("n{i}"),
                Config::lan(),
                peers.clone(),
                replica,
                i as u64,
            )
        })
        .collect()
}

fn status(component: &str, state: State, message: &str, at_ms: u64) -> StatusWrite {
    StatusWrite::parse(
        "api",
        component,
        "r0",
        Observation {
            state,
            message: message.into(),
            reporter: "probe".into(),
            observed_at_ms: at_ms,
            ttl_ms: 60_000,
        },
    )
    .expect("a valid write")
}

/// Every frame `node` queued for `to`, in order; the rest of its queue is dropped.
fn frames_to(node: &mut Node, to: &str) -> Vec<InboundFrame> {
    let from = node.id().to_owned();
    std::iter::from_fn(|| node.poll_transmit())
        .filter(|t| t.to == to)
        .map(|t| InboundFrame {
            from: from.clone(),
            bytes: t.bytes,
        })
        .collect()
}

fn status_events(node: &mut Node) -> usize {
    std::iter::from_fn(|| node.poll_event())
        .filter(|e| matches!(e, Event::Status { .. }))
        .count()
}

fn api() -> Name {
    Name::parse("service", "api").expect("name")
}

#[test]
fn pushes_of_one_peer_for_one_service_are_applied_as_one_batch() {
    let mut n = nodes(2);
    for (i, state) in [
        State::MajorOutage,
        State::Operational,
        State::DegradedPerformance,
    ]
    .into_iter()
    .enumerate()
    {
        let write = status("db", state, &format!("w{i}"), 1_000 + i as u64);
        n[0].local_write(1_000 + i as u64, &write).expect("write");
    }
    let frames = frames_to(&mut n[0], "n1");
    let pushes = frames
        .iter()
        .filter(|f| codec::peek_kind(&f.bytes).ok() == Some("push"))
        .count();
    assert_eq!(pushes, 3, "one push per write");
    while n[1].poll_event().is_some() {}
    let accepted = n[1].handle_frames(2_000, frames);
    assert_eq!(accepted.len(), 1, "the three pushes are one batch");
    assert_eq!(accepted[0].changes.len(), 3);
    assert_eq!(accepted[0].service, api());
    assert!(accepted[0].heads_before.is_empty());
    assert_eq!(
        accepted[0].heads_after,
        n[0].replica().doc(&api()).expect("doc").heads()
    );
    assert_eq!(n[1].replica().cursor(), n[0].replica().cursor());
    assert!(status_events(&mut n[1]) >= 1);
}

#[test]
fn a_merged_batch_with_one_bad_change_is_rejected_whole_and_counted() {
    let mut n = nodes(2);
    n[0].local_write(1_000, &status("db", State::MajorOutage, "a", 1_000))
        .expect("write");
    let mut frames = frames_to(&mut n[0], "n1");
    let bad = codec::encode(&Frame::Push {
        service: "api".into(),
        changes: vec![vec![0xde, 0xad]],
    })
    .expect("encode");
    frames.push(InboundFrame {
        from: "n0".into(),
        bytes: bad,
    });
    frames.push(InboundFrame {
        from: "n0".into(),
        // Version 2, then noise (a first byte of 0xff would be a later release, refused).
        bytes: [vec![2], vec![0xff; 7]].concat(),
    });
    let rejected_before = n[1].stats().frames_rejected;
    let accepted = n[1].handle_frames(2_000, frames);
    assert!(accepted.is_empty());
    assert!(n[1]
        .replica()
        .doc(&api())
        .is_none_or(|d| d.heads().is_empty()));
    assert_eq!(n[1].stats().frames_rejected, rejected_before + 2);
}

#[test]
fn local_writes_answer_each_write_in_order_and_refuse_only_the_bad_one() {
    let mut n = nodes(2);
    let mut too_long = status("cache", State::Operational, "", 1_000);
    too_long.observation.message = "x".repeat(MESSAGE_LEN_MAX + 1);
    let incident = Incident {
        title: "db down".into(),
        impact: Impact::Major,
        status: IncidentStatus::Investigating,
        components: vec![Name::parse("component", "db").expect("name")],
        opened_at_ms: 1_000,
        resolved_at_ms: None,
        author: "ops".into(),
    };
    let writes = vec![
        LocalWrite::Status(status("db", State::MajorOutage, "a", 1_000)),
        LocalWrite::Status(too_long),
        LocalWrite::Status(status("db", State::MajorOutage, "a", 1_000)),
        LocalWrite::Record {
            service: api(),
            op: RecordOp::OpenIncident {
                id: Name::parse("incident", "i1").expect("name"),
                incident,
                text: "looking".into(),
            },
        },
        LocalWrite::Status(status("web", State::DegradedPerformance, "b", 1_000)),
    ];
    let results = n[0].local_writes(1_000, writes);
    assert_eq!(results.len(), 5);
    assert!(results[0]
        .as_ref()
        .is_ok_and(|r| r.changed && r.change.is_some()));
    assert!(results[1].is_err(), "the over-long message is refused");
    assert!(
        results[2]
            .as_ref()
            .is_ok_and(|r| !r.changed && r.change.is_none()),
        "the same value again changes nothing"
    );
    assert!(results[3].as_ref().is_ok_and(|r| r.changed));
    assert!(results[4].as_ref().is_ok_and(|r| r.changed));
    let doc = n[0].replica().doc(&api()).expect("doc");
    assert_eq!(
        doc.heads(),
        vec![results[4].as_ref().expect("ok").change.expect("hash")]
    );
}

#[test]
fn a_run_of_status_writes_is_one_change_per_service() {
    let mut n = nodes(2);
    let writes = (0..10)
        .map(|i| {
            LocalWrite::Status(status(
                &format!("c{i}"),
                State::DegradedPerformance,
                "x",
                1_000,
            ))
        })
        .collect();
    let results = n[0].local_writes(1_000, writes);
    let hashes: BTreeSet<_> = results
        .iter()
        .map(|r| r.as_ref().expect("ok").change.expect("changed"))
        .collect();
    assert_eq!(hashes.len(), 1, "ten writes, one change");
}

#[test]
fn resume_gives_events_after_a_known_cursor_and_a_snapshot_without_one() {
    let mut n = nodes(2);
    let cursor = n[0].replica().cursor();
    n[0].local_write(1_000, &status("db", State::MajorOutage, "a", 1_000))
        .expect("write");
    assert!(matches!(
        n[0].resume(1_000, None, 1_000, Delivery::Every),
        Resume::Snapshot
    ));
    match n[0].resume(1_000, Some(&cursor), 1_000, Delivery::Every) {
        Resume::Events(events) => assert_eq!(events.len(), 1),
        other => panic!("expected events, got {other:?}"),
    }
    let now = n[0].replica().cursor();
    assert!(
        matches!(n[0].resume(1_000, Some(&now), 1_000, Delivery::Every), Resume::Events(e) if e.is_empty())
    );
}

#[test]
fn a_cursor_ahead_of_this_node_waits_asks_every_peer_once_then_gets_a_snapshot() {
    let mut n = nodes(3);
    n[0].local_write(1_000, &status("db", State::MajorOutage, "a", 1_000))
        .expect("write");
    let ahead = n[0].replica().cursor();
    while n[1].poll_transmit().is_some() {}
    let Resume::Wait { retry_at_ms } = n[1].resume(2_000, Some(&ahead), 2_000, Delivery::Every)
    else {
        panic!("a cursor this node lacks waits");
    };
    assert_eq!(retry_at_ms, 2_000 + RESUME_WAIT_MS);
    let digests = std::iter::from_fn(|| n[1].poll_transmit())
        .filter(|t| codec::peek_kind(&t.bytes).ok() == Some("digest"))
        .count();
    assert_eq!(digests, 2, "one digest to each peer");
    assert!(matches!(
        n[1].resume(2_500, Some(&ahead), 2_000, Delivery::Every),
        Resume::Wait { .. }
    ));
    assert!(
        n[1].poll_transmit().is_none(),
        "asked once, not on every retry"
    );
    assert!(matches!(
        n[1].resume(2_000 + RESUME_WAIT_MS, Some(&ahead), 2_000, Delivery::Every),
        Resume::Snapshot
    ));
}

#[test]
fn an_incarnation_becomes_the_swim_generation() {
    assert_eq!(Config::lan().with_incarnation(7).generation, 7);
    assert_eq!(
        Config::lan().with_incarnation(u64::MAX).generation,
        u32::MAX
    );
}

#[test]
fn a_cell_written_twice_in_one_iteration_is_two_transitions() {
    let mut n = nodes(2);
    let writes = vec![
        LocalWrite::Status(status("db", State::MajorOutage, "down", 1_000)),
        LocalWrite::Status(status("web", State::MajorOutage, "down", 1_000)),
        LocalWrite::Status(status("db", State::Operational, "up", 1_000)),
    ];
    while n[0].poll_event().is_some() {}
    let results = n[0].local_writes(1_000, writes);
    assert!(results.iter().all(|r| r.as_ref().is_ok_and(|r| r.changed)));
    let first = results[0].as_ref().expect("ok").change;
    assert_eq!(
        first,
        results[1].as_ref().expect("ok").change,
        "one change for both cells"
    );
    assert_ne!(
        first,
        results[2].as_ref().expect("ok").change,
        "db again: a change of its own"
    );
    let transitions: Vec<Option<String>> = std::iter::from_fn(|| n[0].poll_event())
        .filter_map(|e| match e {
            Event::Status { transition, .. } => Some(transition),
            _ => None,
        })
        .collect();
    assert_eq!(transitions.len(), 3);
    assert!(transitions.iter().all(Option::is_some));
}
