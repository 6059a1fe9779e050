//! CRDT laws over whole replicas: merge is commutative, associative and idempotent, and any
//! interleaving of writes on 3–5 replicas converges to equal views.

use proptest::prelude::*;
use statusmesh_crdt::{ActorId, Name, Observation, Replica, State, StatusWrite};

const COMPONENTS: [&str; 3] = ["db", "web", "queue"];
const REGIONS: [&str; 3] = ["eu-west", "us-east", "ap-southeast"];
const SERVICES: [&str; 2] = ["api", "billing"];

#[derive(Debug, Clone)]
enum Step {
    Write {
        replica: usize,
        service: usize,
        component: usize,
        region: usize,
        state: usize,
        message: u8,
    },
    Sync {
        from: usize,
        to: usize,
    },
}

fn step(replicas: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..replicas, 0..SERVICES.len(), 0..COMPONENTS.len(), 0..REGIONS.len(), 0..State::ALL.len(), 0u8..3)
            .prop_map(|(replica, service, component, region, state, message)| Step::Write {
                replica, service, component, region, state, message
            }),
        1 => (0..replicas, 0..replicas).prop_map(|(from, to)| Step::Sync { from, to }),
    ]
}

fn replica(i: usize) -> Replica {
    Replica::new(&format!("n{i}"), ActorId::from(vec![i as u8 + 1; 16]))
}

fn write(r: &mut Replica, now: u64, s: usize, c: usize, g: usize, state: usize, message: u8) {
    let w = StatusWrite::parse(
        SERVICES[s],
        COMPONENTS[c],
        REGIONS[g],
        Observation {
            state: State::ALL[state],
            message: format!("m{message}"),
            reporter: "probe".into(),
            observed_at_ms: now,
            ttl_ms: 60_000,
        },
    )
    .expect("valid");
    r.write_status(now, &w).expect("write");
}

/// Sends `from`'s changes and liveness to `to`, the way anti-entropy does.
fn sync(from: &Replica, to: &mut Replica) {
    for doc in from.docs() {
        let heads = to.doc(doc.service()).map(|d| d.heads()).unwrap_or_default();
        let changes = from.changes_since(doc.service(), &heads);
        to.apply_remote(doc.service().as_str(), &changes)
            .expect("valid changes");
    }
    to.merge_liveness(from.liveness());
}

fn view(r: &Replica) -> serde_json::Value {
    serde_json::to_value(r.view(1_000_000, None)).expect("json")
}

fn run(replicas: usize, steps: &[Step]) -> Vec<Replica> {
    let mut rs: Vec<Replica> = (0..replicas).map(replica).collect();
    for (now, s) in steps.iter().enumerate() {
        match *s {
            Step::Write {
                replica,
                service,
                component,
                region,
                state,
                message,
            } => write(
                &mut rs[replica],
                now as u64 + 1,
                service,
                component,
                region,
                state,
                message,
            ),
            Step::Sync { from, to } if from != to => {
                let (a, b) = if from < to {
                    let (l, r) = rs.split_at_mut(to);
                    (&l[from], &mut r[0])
                } else {
                    let (l, r) = rs.split_at_mut(from);
                    (&r[0], &mut l[to])
                };
                sync(a, b);
            }
            Step::Sync { .. } => {}
        }
    }
    rs
}

fn merged(parts: &[&Replica], into: usize) -> Replica {
    let mut r = replica(into);
    for p in parts {
        sync(p, &mut r);
    }
    r
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_interleavings_on_three_to_five_replicas_converge(
        (count, steps) in (3usize..=5).prop_flat_map(|n| (Just(n), proptest::collection::vec(step(n), 1..40)))
    ) {
        let mut rs = run(count, &steps);
        // Full exchange in a ring, twice, is enough for everyone to hold everything.
        for _ in 0..2 {
            for i in 0..count {
                let j = (i + 1) % count;
                let snapshot = std::mem::replace(&mut rs[i], replica(99));
                sync(&snapshot, &mut rs[j]);
                rs[i] = snapshot;
            }
        }
        let first = view(&rs[0]);
        for r in &rs[1..] {
            prop_assert_eq!(&view(r), &first);
            prop_assert_eq!(r.cursor(), rs[0].cursor());
        }
    }

    #[test]
    fn merge_is_commutative_associative_and_idempotent(steps in proptest::collection::vec(step(3), 1..30)) {
        let rs = run(3, &steps);
        let (a, b, c) = (&rs[0], &rs[1], &rs[2]);
        let ab = merged(&[a, b], 10);
        let ba = merged(&[b, a], 11);
        prop_assert_eq!(view(&ab), view(&ba));
        let ab_c = merged(&[&ab, c], 12);
        let bc = merged(&[b, c], 13);
        let a_bc = merged(&[a, &bc], 14);
        prop_assert_eq!(view(&ab_c), view(&a_bc));
        let aa = merged(&[a, a], 15);
        let a_alone = merged(&[a], 16);
        prop_assert_eq!(view(&aa), view(&a_alone));
        prop_assert_eq!(aa.cursor(), a_alone.cursor());
    }
}

#[test]
fn ten_thousand_identical_rewrites_leave_the_saved_document_the_same_size() {
    let mut r = replica(0);
    write(&mut r, 1, 0, 0, 0, 0, 0);
    let service = Name::parse("service", SERVICES[0]).expect("name");
    let saved = r.doc(&service).expect("doc").save().len();
    for now in 2..10_002 {
        write(&mut r, now, 0, 0, 0, 0, 0);
    }
    let doc = r.doc(&service).expect("doc");
    assert_eq!(doc.save().len(), saved);
    assert_eq!(doc.history_len(), 1);
}
