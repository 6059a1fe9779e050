//! Transitions: every change of a record, in causal order, with an identity that is the same on
//! every node, and coalescing only when the event says so.

use statusmesh_crdt::{
    ActorId, CoalesceReason, Cursor, Delivery, DocEvent, Name, Observation, Replica, State,
    StatusWrite, Transition, TRANSITIONS_MAX,
};

fn name(s: &str) -> Name {
    Name::parse("name", s).expect("valid name")
}

fn replica(i: u8) -> Replica {
    Replica::new(&format!("n{i}"), ActorId::from(vec![i; 16]))
}

fn status(component: &str, state: State, message: &str, now: u64) -> StatusWrite {
    StatusWrite::parse(
        "api",
        component,
        "eu",
        Observation {
            state,
            message: message.into(),
            reporter: "probe".into(),
            observed_at_ms: now,
            ttl_ms: 60_000,
        },
    )
    .expect("valid")
}

/// Writes 20 transitions to each of 5 components (a flapping outage), one write at a time;
/// returns the transitions the writer announced, in order.
fn flap(r: &mut Replica, from_ms: u64) -> Vec<Transition> {
    let mut told = Vec::new();
    for i in 0..100u64 {
        let state = if i % 2 == 0 {
            State::MajorOutage
        } else {
            State::Operational
        };
        let write = status(&format!("c{}", i % 5), state, &format!("w{i}"), from_ms + i);
        let outcome = r.write_status(from_ms + i, &write).expect("write");
        assert!(outcome.changed);
        told.extend(outcome.transitions);
    }
    told
}

fn sync(from: &Replica, to: &mut Replica) -> Vec<Transition> {
    let mut out = Vec::new();
    for doc in from.docs() {
        let heads = to.doc(doc.service()).map(|d| d.heads()).unwrap_or_default();
        let changes = from.changes_since(doc.service(), &heads);
        let outcome = to
            .apply_remote(doc.service().as_str(), &changes)
            .expect("valid");
        out.extend(outcome.transitions);
    }
    out
}

fn messages(transitions: &[Transition]) -> Vec<String> {
    transitions
        .iter()
        .filter_map(|t| match &t.event {
            DocEvent::Status(s) => s.observation.as_ref().map(|o| o.message.clone()),
            _ => None,
        })
        .collect()
}

fn ids(transitions: &[Transition]) -> Vec<String> {
    transitions.iter().filter_map(|t| t.id.clone()).collect()
}

#[test]
fn a_batch_of_remote_changes_is_one_event_per_transition_with_the_writers_identity() {
    let mut a = replica(1);
    let told = flap(&mut a, 1_000);
    assert_eq!(told.len(), 100);
    let mut b = replica(2);
    let seen = sync(&a, &mut b);
    assert_eq!(
        messages(&seen),
        messages(&told),
        "every transition, in order"
    );
    assert_eq!(ids(&seen), ids(&told), "the same identity on both nodes");
    let distinct: std::collections::BTreeSet<_> = ids(&seen).into_iter().collect();
    assert_eq!(distinct.len(), 100);
    assert!(seen.iter().all(|t| t.coalesced.is_none()));
    let api = name("api");
    let last = seen.last().expect("events");
    assert_eq!(last.heads, b.doc(&api).expect("doc").heads());
}

#[test]
fn a_client_away_for_100_writes_resumes_with_exactly_those_transitions() {
    let mut a = replica(1);
    flap(&mut a, 1_000);
    let away = a.cursor();
    let told = flap(&mut a, 2_000);
    let mut b = replica(2);
    sync(&a, &mut b);
    let resumed = b
        .transitions_since(&away, Delivery::Every)
        .expect("b holds the cursor");
    let transitions: Vec<Transition> = resumed.iter().map(|(t, _)| t.clone()).collect();
    assert_eq!(messages(&transitions), messages(&told));
    assert_eq!(ids(&transitions), ids(&told));
    // Resuming from the cursor of any event gives exactly the ones after it.
    let (_, at_40) = &resumed[39];
    let text = at_40.encode();
    let cursor = Cursor::decode(&text).expect("round trip");
    let rest = b.transitions_since(&cursor, Delivery::Every).expect("held");
    let rest: Vec<Transition> = rest.into_iter().map(|(t, _)| t).collect();
    assert_eq!(messages(&rest), messages(&told[40..]));
    let (_, at_end) = resumed.last().expect("events");
    assert!(b
        .transitions_since(at_end, Delivery::Every)
        .expect("held")
        .is_empty());
}

#[test]
fn state_only_gives_each_record_once_with_what_it_folds() {
    let mut a = replica(1);
    let away = a.cursor();
    flap(&mut a, 1_000);
    let resumed = a
        .transitions_since(&away, Delivery::StateOnly)
        .expect("held");
    assert_eq!(resumed.len(), 5, "one per component");
    let mut folded = 0;
    for (t, _) in &resumed {
        let c = t.coalesced.expect("coalesced");
        assert_eq!(c.reason, CoalesceReason::Requested);
        assert_eq!(c.count, 20);
        folded += c.count;
        assert!(t.id.is_none());
    }
    assert_eq!(folded, 100);
    let (_, end) = resumed.last().expect("events");
    assert_eq!(end, &a.cursor());
}

/// `rounds` group commits, each writing every one of `components` components once.
fn rounds_of_writes(r: &mut Replica, components: usize, rounds: std::ops::Range<usize>) {
    for round in rounds {
        let writes: Vec<StatusWrite> = (0..components)
            .map(|c| {
                let state = if round % 2 == 0 {
                    State::MajorOutage
                } else {
                    State::Operational
                };
                status(&format!("c{c}"), state, &format!("r{round}"), round as u64)
            })
            .collect();
        r.write_status_batch(round as u64, &writes).expect("batch");
    }
}

/// Asks with [`Delivery::Pages`] from `from` until the client is at the end; every page
/// bounded and none coalesced. Returns every transition told, in order, and the pages asked.
fn read_pages(r: &Replica, from: &Cursor) -> (Vec<Transition>, usize) {
    let (mut cursor, mut told, mut pages) = (from.clone(), Vec::new(), 0);
    while !r.is_at_end(&cursor) {
        pages += 1;
        assert!(pages <= 100, "the pages end");
        let page = r.transitions_since(&cursor, Delivery::Pages).expect("held");
        assert!(
            !page.is_empty(),
            "a client not at the end is told something"
        );
        assert!(page.len() <= TRANSITIONS_MAX, "{} in one page", page.len());
        assert!(page.iter().all(|(t, _)| t.coalesced.is_none()));
        cursor = page.last().expect("events").1.clone();
        told.extend(page.into_iter().map(|(t, _)| t));
    }
    (told, pages)
}

/// The messages told per component, in order.
fn per_component(transitions: &[Transition]) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for t in transitions {
        if let DocEvent::Status(s) = &t.event {
            let message = s.observation.as_ref().map(|o| o.message.clone());
            out.entry(s.component.to_string())
                .or_default()
                .push(message.unwrap_or_default());
        }
    }
    out
}

fn expected_per_component(
    components: usize,
    rounds: std::ops::Range<usize>,
) -> std::collections::BTreeMap<String, Vec<String>> {
    (0..components)
        .map(|c| {
            let messages = rounds.clone().map(|r| format!("r{r}")).collect();
            (format!("c{c}"), messages)
        })
        .collect()
}

#[test]
fn a_backlog_beyond_the_bound_is_told_in_pages_to_a_reader_that_asks_for_them() {
    let mut a = replica(1);
    let away = a.cursor();
    let components = 100;
    let rounds = 2 * TRANSITIONS_MAX / components + 3;
    rounds_of_writes(&mut a, components, 0..rounds);
    let (told, pages) = read_pages(&a, &away);
    assert_eq!(pages, 3, "two full pages and the rest");
    assert_eq!(told.len(), components * rounds, "every transition");
    assert_eq!(
        per_component(&told),
        expected_per_component(components, 0..rounds)
    );
    let distinct: std::collections::BTreeSet<_> = ids(&told).into_iter().collect();
    assert_eq!(
        distinct.len(),
        components * rounds,
        "each with its own identity"
    );
}

#[test]
fn pages_cross_a_rollover_without_a_gap_or_a_repeat() {
    let mut a = replica(1);
    let api = name("api");
    let components = 100;
    // The client was told the first round, in the epoch that closes.
    rounds_of_writes(&mut a, components, 0..1);
    let away = a.cursor();
    let before = TRANSITIONS_MAX / components + 2;
    rounds_of_writes(&mut a, components, 1..before);
    let cut = a.doc(&api).expect("doc").heads();
    a.rollover(&api, &cut).expect("valid").expect("rolled over");
    let rounds = before + 20;
    rounds_of_writes(&mut a, components, before..rounds);
    let (told, pages) = read_pages(&a, &away);
    assert!(pages >= 2, "beyond the bound: more than one page");
    assert_eq!(
        per_component(&told),
        expected_per_component(components, 1..rounds)
    );
    assert_eq!(ids(&told).len(), components * (rounds - 1), "no repeat");
}

#[test]
fn a_backlog_beyond_the_bound_is_coalesced_and_counted() {
    let mut a = replica(1);
    let away = a.cursor();
    let components = 100;
    let rounds = TRANSITIONS_MAX / components + 1;
    rounds_of_writes(&mut a, components, 0..rounds);
    let resumed = a.transitions_since(&away, Delivery::Every).expect("held");
    assert_eq!(resumed.len(), components);
    let folded: u64 = resumed
        .iter()
        .map(|(t, _)| {
            let c = t.coalesced.expect("coalesced");
            assert_eq!(c.reason, CoalesceReason::Backlog);
            c.count
        })
        .sum();
    assert_eq!(folded, (components * rounds) as u64);
    // All but the last keep the client's cursor: cut off midway, it asks again for the rest.
    assert!(resumed[0]
        .1
        .heads_of(&Name::parse("service", "api").expect("name"))
        .is_empty());
    assert!(away.iter().next().is_none());
    assert_eq!(resumed.last().expect("events").1, a.cursor());
}

#[test]
fn a_cursor_of_the_epoch_before_resumes_across_the_rollover_without_repeats() {
    let mut a = replica(1);
    let api = name("api");
    flap(&mut a, 1_000);
    let away = a.cursor();
    let before_cut = flap(&mut a, 2_000);
    let cut = a.doc(&api).expect("doc").heads();
    a.rollover(&api, &cut).expect("valid").expect("rolled over");
    let after_cut = flap(&mut a, 3_000);
    assert!(a.doc(&api).expect("doc").epoch() >= 1);
    let resumed = a.transitions_since(&away, Delivery::Every).expect("held");
    let transitions: Vec<Transition> = resumed.into_iter().map(|(t, _)| t).collect();
    let mut expected = messages(&before_cut);
    expected.extend(messages(&after_cut));
    assert_eq!(messages(&transitions), expected);
    let mut expected_ids = ids(&before_cut);
    expected_ids.extend(ids(&after_cut));
    assert_eq!(ids(&transitions), expected_ids);
}

#[test]
fn a_client_cut_off_within_a_group_commit_resumes_at_its_next_transition() {
    let mut a = replica(1);
    let away = a.cursor();
    // One group commit: one change that writes five records.
    let writes: Vec<StatusWrite> = (0..5)
        .map(|c| {
            status(
                &format!("c{c}"),
                State::MajorOutage,
                &format!("g{c}"),
                1_000,
            )
        })
        .collect();
    let outcomes = a.write_status_batch(1_000, &writes).expect("batch");
    let local: Vec<Transition> = outcomes.into_iter().flat_map(|o| o.transitions).collect();
    assert_eq!(local.len(), 5);
    let mut b = replica(2);
    let remote = sync(&a, &mut b);
    let resumed = b.transitions_since(&away, Delivery::Every).expect("held");
    assert_eq!(
        messages(&remote),
        messages(&local),
        "the same order everywhere"
    );
    let told: Vec<Transition> = resumed.iter().map(|(t, _)| t.clone()).collect();
    assert_eq!(messages(&told), messages(&local));
    assert_eq!(
        local
            .iter()
            .map(|t| (t.heads.clone(), t.within))
            .collect::<Vec<_>>(),
        remote
            .iter()
            .map(|t| (t.heads.clone(), t.within))
            .collect::<Vec<_>>(),
        "a position within the change is the same on the writer and elsewhere"
    );
    for cut in 0..5 {
        let (_, cursor) = &resumed[cut];
        let cursor = Cursor::decode(&cursor.encode()).expect("round trip");
        let rest = b.transitions_since(&cursor, Delivery::Every).expect("held");
        let rest: Vec<Transition> = rest.into_iter().map(|(t, _)| t).collect();
        assert_eq!(
            messages(&rest),
            messages(&local[cut + 1..]),
            "cut off after the transition {cut} of the change"
        );
        let on_writer = a.transitions_since(&cursor, Delivery::Every).expect("held");
        assert_eq!(on_writer.len(), 4 - cut, "the writer answers the same");
    }
    assert!(b.is_at_end(&resumed[4].1));
    assert!(!b.is_at_end(&resumed[3].1));
}
