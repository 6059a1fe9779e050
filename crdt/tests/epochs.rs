//! Epoch compaction: replicas that roll over, concurrently or while cut off, converge to the
//! same document and lose no write.

use std::collections::BTreeMap;

use proptest::prelude::*;
use statusmesh_crdt::epoch::{ActorKind, WriteId};
use statusmesh_crdt::{ActorId, Cursor, Name, Observation, Replica, State, StatusWrite};

fn replica(n: u8) -> Replica {
    Replica::new(&format!("n{n}"), ActorId::from(vec![n; 16]))
}

fn api() -> Name {
    Name::parse("service", "api").expect("name")
}

fn write(component: &str, region: &str, state: State, message: &str, at_ms: u64) -> StatusWrite {
    StatusWrite::parse(
        "api",
        component,
        region,
        Observation {
            state,
            message: message.into(),
            reporter: "probe".into(),
            observed_at_ms: at_ms,
            ttl_ms: 600_000,
        },
    )
    .expect("valid write")
}

/// Sends `from` everything `to` lacks (the whole document when epochs differ).
fn sync(from: &mut Replica, to: &mut Replica) -> usize {
    let mut made = Vec::new();
    let services: Vec<Name> = from.docs().map(|d| d.service().clone()).collect();
    for service in services {
        let heads = to.doc(&service).map(|d| d.heads()).unwrap_or_default();
        let changes = from.changes_since(&service, &heads);
        for chunk in changes.chunks(512) {
            let outcome = to
                .apply_remote(service.as_str(), chunk)
                .expect("valid changes");
            made.extend(outcome.made);
        }
    }
    made.len()
}

/// Syncs every pair until nothing moves (bounded).
fn settle(replicas: &mut [Replica]) {
    for _ in 0..8 {
        for i in 0..replicas.len() {
            for j in 0..replicas.len() {
                if i != j {
                    let (a, b) = pair(replicas, i, j);
                    sync(a, b);
                }
            }
        }
        if replicas.windows(2).all(|w| w[0].cursor() == w[1].cursor()) {
            return;
        }
    }
}

fn pair(replicas: &mut [Replica], i: usize, j: usize) -> (&mut Replica, &mut Replica) {
    assert_ne!(i, j);
    if i < j {
        let (left, right) = replicas.split_at_mut(j);
        (&mut left[i], &mut right[0])
    } else {
        let (left, right) = replicas.split_at_mut(i);
        (&mut right[0], &mut left[j])
    }
}

fn cells(r: &Replica) -> BTreeMap<(String, String), (State, String)> {
    r.doc(&api())
        .map(|d| {
            d.cells()
                .into_iter()
                .map(|((c, g), read)| {
                    (
                        (c.to_string(), g.to_string()),
                        (read.value.state, read.value.message),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn view(r: &Replica) -> String {
    serde_json::to_string(&r.view(10_000_000, None)).expect("json")
}

fn write_id(r: &Replica, hash: statusmesh_crdt::ChangeHash) -> WriteId {
    r.doc(&api())
        .and_then(|d| d.write_of(&hash))
        .expect("a write of the current epoch")
}

fn roll(r: &mut Replica) -> u32 {
    let heads = r.doc(&api()).expect("doc").heads();
    r.rollover(&api(), &heads)
        .expect("rollover")
        .and_then(|o| o.rolled_over)
        .expect("rolled over")
}

#[test]
fn a_rollover_compacts_history_and_changes_no_value() {
    let mut a = replica(1);
    for i in 0..50_u64 {
        let state = if i % 2 == 0 {
            State::MajorOutage
        } else {
            State::Operational
        };
        a.write_status(
            i,
            &write(&format!("c{}", i % 5), "eu", state, &format!("m{i}"), i),
        )
        .expect("write");
    }
    let before = view(&a);
    let cells_before = cells(&a);
    assert_eq!(a.doc(&api()).map(|d| d.history_len()), Some(50));
    let heads = a.doc(&api()).expect("doc").heads();
    let outcome = a
        .rollover(&api(), &heads)
        .expect("rollover")
        .expect("rolled");
    assert_eq!(outcome.rolled_over, Some(1));
    assert!(
        outcome.events.is_empty(),
        "no value changed: {:?}",
        outcome.events
    );
    assert_eq!(
        outcome.made.len(),
        1,
        "only the base: nothing after the cut"
    );
    let doc = a.doc(&api()).expect("doc");
    assert_eq!(doc.epoch(), 1);
    assert_eq!(doc.history_len(), 1);
    assert_eq!(view(&a), before);
    assert_eq!(cells(&a), cells_before);
    // Writes go on in the new epoch.
    let out = a
        .write_status(
            100,
            &write("c0", "eu", State::DegradedPerformance, "slow", 100),
        )
        .expect("write");
    assert!(out.changed);
    assert_eq!(a.doc(&api()).map(|d| d.history_len()), Some(2));
}

#[test]
fn two_replicas_rolling_over_at_the_same_cut_make_the_same_base() {
    let mut rs = vec![replica(1), replica(2)];
    for i in 0..10 {
        rs[0]
            .write_status(
                i,
                &write("db", "eu", State::MajorOutage, &format!("a{i}"), i),
            )
            .expect("write");
        rs[1]
            .write_status(
                i,
                &write("web", "us", State::Operational, &format!("b{i}"), i),
            )
            .expect("write");
    }
    settle(&mut rs);
    assert_eq!(rs[0].cursor(), rs[1].cursor());
    roll(&mut rs[0]);
    roll(&mut rs[1]);
    assert_eq!(
        rs[0].cursor(),
        rs[1].cursor(),
        "the same base, byte for byte"
    );
    assert_eq!(view(&rs[0]), view(&rs[1]));
}

#[test]
fn a_write_made_concurrently_with_a_rollover_is_carried_into_the_new_epoch() {
    let mut rs = vec![replica(1), replica(2), replica(3)];
    rs[0]
        .write_status(1, &write("db", "eu", State::Operational, "ok", 1))
        .expect("write");
    settle(&mut rs);
    // n2 writes while n1 rolls over without it.
    let late = rs[1]
        .write_status(2, &write("db", "us", State::MajorOutage, "down", 2))
        .expect("write");
    let late_id = write_id(&rs[1], late.change_hash.expect("changed"));
    roll(&mut rs[0]);
    settle(&mut rs);
    for r in &rs {
        let doc = r.doc(&api()).expect("doc");
        assert_eq!(doc.epoch(), 1);
        assert!(doc.holds_write(&late_id));
        assert_eq!(
            cells(r).get(&("db".into(), "us".into())),
            Some(&(State::MajorOutage, "down".to_owned()))
        );
    }
    assert_eq!(rs[0].cursor(), rs[1].cursor());
    assert_eq!(rs[1].cursor(), rs[2].cursor());
    assert_eq!(view(&rs[0]), view(&rs[2]));
    // Carried once, whoever carried it: the epoch holds the base, one carried write.
    assert_eq!(rs[2].doc(&api()).map(|d| d.history_len()), Some(2));
}

#[test]
fn a_node_cut_off_through_two_rollovers_converges_and_keeps_its_writes() {
    let mut rs = vec![replica(1), replica(2), replica(3)];
    rs[0]
        .write_status(1, &write("db", "eu", State::Operational, "ok", 1))
        .expect("write");
    settle(&mut rs);
    let mut island = rs.pop().expect("n3");
    let mut kept = Vec::new();
    for i in 0..5_u64 {
        let out = island
            .write_status(
                10 + i,
                &write(
                    "cache",
                    "ap",
                    State::PartialOutage,
                    &format!("i{i}"),
                    10 + i,
                ),
            )
            .expect("write");
        kept.push(write_id(&island, out.change_hash.expect("changed")));
    }
    for round in 0..2_u64 {
        rs[0]
            .write_status(
                20 + round,
                &write(
                    "db",
                    "eu",
                    State::MajorOutage,
                    &format!("r{round}"),
                    20 + round,
                ),
            )
            .expect("write");
        settle(&mut rs);
        roll(&mut rs[0]);
        settle(&mut rs);
    }
    assert_eq!(rs[1].doc(&api()).map(|d| d.epoch()), Some(2));
    rs.push(island);
    settle(&mut rs);
    for r in &rs {
        let doc = r.doc(&api()).expect("doc");
        assert_eq!(doc.epoch(), 2);
        for id in &kept {
            assert!(doc.holds_write(id), "write {id:?} lost");
        }
        assert_eq!(
            cells(r).get(&("cache".into(), "ap".into())),
            Some(&(State::PartialOutage, "i4".to_owned()))
        );
    }
    assert_eq!(view(&rs[0]), view(&rs[2]));
    assert_eq!(rs[0].cursor(), rs[2].cursor());
}

#[test]
fn a_change_released_by_a_write_carried_here_is_reported_as_an_event() {
    // Found by the simulator (rollover-crash, seed 24): n1 rolled over, carried n2's late
    // epoch-0 write x and wrote y on top of the carried x. n3 got the base and y, but not x:
    // y waited for its dependency. When x itself reached n3, n3 carried it (the same bytes as
    // n1's) and so released y, whose cell then changed without an event.
    let mut rs = vec![replica(1), replica(2), replica(3)];
    rs[0]
        .write_status(1, &write("db", "eu", State::Operational, "ok", 1))
        .expect("write");
    settle(&mut rs);
    let x = rs[1]
        .write_status(2, &write("db", "us", State::MajorOutage, "x", 2))
        .expect("write")
        .change
        .expect("changed");
    roll(&mut rs[0]);
    let (n1, n3) = pair(&mut rs, 0, 2);
    sync(n1, n3);
    assert_eq!(n3.doc(&api()).map(|d| d.epoch()), Some(1));
    n1.apply_remote("api", std::slice::from_ref(&x))
        .expect("x is carried on n1");
    let y = n1
        .write_status(3, &write("web", "eu", State::DegradedPerformance, "y", 3))
        .expect("write")
        .change
        .expect("changed");
    let held = n3
        .apply_remote("api", &[y])
        .expect("y waits for the carried x");
    assert!(held.events.is_empty(), "{:?}", held.events);
    let outcome = n3.apply_remote("api", &[x]).expect("x is carried on n3");
    assert!(
        cells(n3).contains_key(&("web".into(), "eu".into())),
        "y was released"
    );
    let components: Vec<String> = outcome
        .events
        .iter()
        .map(|e| e.component.to_string())
        .collect();
    assert!(
        components.contains(&"db".to_owned()) && components.contains(&"web".to_owned()),
        "events for the carried x and the released y: {components:?}"
    );
    assert_eq!(n1.cursor(), n3.cursor());
}

#[test]
fn concurrent_proposals_end_in_one_epoch_document_everywhere() {
    let mut rs = vec![replica(1), replica(2)];
    rs[0]
        .write_status(1, &write("db", "eu", State::Operational, "ok", 1))
        .expect("write");
    settle(&mut rs);
    let a = rs[0]
        .write_status(2, &write("db", "eu", State::MajorOutage, "a", 2))
        .expect("write");
    let b = rs[1]
        .write_status(3, &write("web", "us", State::MajorOutage, "b", 3))
        .expect("write");
    let ids = [
        write_id(&rs[0], a.change_hash.expect("changed")),
        write_id(&rs[1], b.change_hash.expect("changed")),
    ];
    // Each rolls over at its own heads, before hearing of the other's write.
    roll(&mut rs[0]);
    roll(&mut rs[1]);
    assert_ne!(rs[0].cursor(), rs[1].cursor());
    rs[0]
        .write_status(
            4,
            &write("queue", "eu", State::DegradedPerformance, "after", 4),
        )
        .expect("write");
    settle(&mut rs);
    assert_eq!(rs[0].cursor(), rs[1].cursor());
    assert_eq!(view(&rs[0]), view(&rs[1]));
    for r in &rs {
        let doc = r.doc(&api()).expect("doc");
        assert_eq!(doc.epoch(), 1);
        for id in &ids {
            assert!(doc.holds_write(id));
        }
        let cells = cells(r);
        assert_eq!(
            cells.get(&("db".into(), "eu".into())).map(|c| c.0),
            Some(State::MajorOutage)
        );
        assert_eq!(
            cells.get(&("web".into(), "us".into())).map(|c| c.0),
            Some(State::MajorOutage)
        );
        assert_eq!(
            cells.get(&("queue".into(), "eu".into())).map(|c| c.0),
            Some(State::DegradedPerformance)
        );
    }
}

#[test]
fn a_cursor_of_the_previous_epoch_resumes_with_exactly_what_changed() {
    let mut rs = vec![replica(1), replica(2)];
    for c in ["a", "b", "c"] {
        rs[0]
            .write_status(1, &write(c, "eu", State::Operational, "ok", 1))
            .expect("write");
    }
    settle(&mut rs);
    let seen = Cursor::decode(&rs[1].cursor().encode()).expect("cursor");
    rs[0]
        .write_status(2, &write("b", "eu", State::MajorOutage, "down", 2))
        .expect("write");
    settle(&mut rs);
    roll(&mut rs[0]);
    rs[0]
        .write_status(3, &write("d", "eu", State::PartialOutage, "new", 3))
        .expect("write");
    settle(&mut rs);
    assert_eq!(rs[1].doc(&api()).map(|d| d.epoch()), Some(1));
    let events = rs[1]
        .events_since(&seen)
        .expect("the previous epoch can tell");
    let mut changed: Vec<&str> = events.iter().map(|e| e.component.as_str()).collect();
    changed.sort_unstable();
    assert_eq!(changed, ["b", "d"]);
    // A cursor two epochs old cannot be told apart: the caller sends a snapshot.
    roll(&mut rs[0]);
    settle(&mut rs);
    rs[0]
        .write_status(4, &write("e", "eu", State::PartialOutage, "newer", 4))
        .expect("write");
    settle(&mut rs);
    assert_eq!(rs[1].doc(&api()).map(|d| d.epoch()), Some(2));
    assert!(rs[1].events_since(&seen).is_none());
}

#[test]
fn a_base_whose_meta_names_another_epoch_is_rejected() {
    let mut a = replica(1);
    a.write_status(1, &write("db", "eu", State::Operational, "ok", 1))
        .expect("write");
    let heads = a.doc(&api()).expect("doc").heads();
    let outcome = a
        .rollover(&api(), &heads)
        .expect("rollover")
        .expect("rolled");
    let mut base = outcome.made[0].clone();
    // Change the epoch in the actor bytes: the checksum no longer matches either way, and
    // a forged base with a valid checksum but wrong meta is refused by validation.
    let at = base.len() / 2;
    base[at] ^= 0x01;
    let mut b = replica(2);
    assert!(b.apply_remote("api", &[base]).is_err());
    assert!(b.doc(&api()).is_none_or(|d| d.heads().is_empty()));
    assert!(matches!(
        ActorKind::parse(&ActorId::from(vec![2, 0, 0, 0, 0])),
        Some(ActorKind::Base { epoch: 0 })
    ));
}

#[derive(Debug, Clone)]
enum Step {
    Write {
        node: usize,
        component: u8,
        state: u8,
    },
    Sync {
        from: usize,
        to: usize,
    },
    Roll {
        node: usize,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..3_usize, 0..4_u8, 0..4_u8).prop_map(|(node, component, state)| Step::Write { node, component, state }),
        4 => (0..3_usize, 0..3_usize).prop_map(|(from, to)| Step::Sync { from, to }),
        1 => (0..3_usize).prop_map(|node| Step::Roll { node }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn replicas_rolling_over_at_any_time_converge_and_lose_no_write(steps in proptest::collection::vec(step(), 1..60)) {
        let mut rs = vec![replica(1), replica(2), replica(3)];
        let mut written: Vec<WriteId> = Vec::new();
        let states = [State::Operational, State::DegradedPerformance, State::PartialOutage, State::MajorOutage];
        for (t, step) in steps.iter().enumerate() {
            let now = t as u64 + 1;
            match *step {
                Step::Write { node, component, state } => {
                    let w = write(&format!("c{component}"), &format!("r{node}"), states[usize::from(state)], &format!("t{t}"), now);
                    let out = rs[node].write_status(now, &w).expect("write");
                    if let Some(hash) = out.change_hash {
                        written.push(write_id(&rs[node], hash));
                    }
                }
                Step::Sync { from, to } if from != to => {
                    let (a, b) = pair(&mut rs, from, to);
                    sync(a, b);
                }
                Step::Sync { .. } => {}
                Step::Roll { node } => {
                    // The proposer rule of the gossip layer: only while every other replica
                    // is in this replica's epoch (holds its base). Two replicas may still
                    // propose concurrently, each at its own cut.
                    let base = rs[node].doc(&api()).and_then(|d| d.base());
                    let settled = rs.iter().all(|r| r.doc(&api()).and_then(|d| d.base()) == base);
                    if let (true, Some(heads)) = (settled, rs[node].doc(&api()).map(|d| d.heads())) {
                        rs[node].rollover(&api(), &heads).expect("rollover");
                    }
                }
            }
        }
        settle(&mut rs);
        prop_assert_eq!(rs[0].cursor(), rs[1].cursor());
        prop_assert_eq!(rs[1].cursor(), rs[2].cursor());
        prop_assert_eq!(view(&rs[0]), view(&rs[1]));
        prop_assert_eq!(view(&rs[1]), view(&rs[2]));
        for r in &rs {
            for id in &written {
                prop_assert!(r.doc(&api()).is_some_and(|d| d.holds_write(id)), "write {:?} lost", id);
            }
        }
    }
}
