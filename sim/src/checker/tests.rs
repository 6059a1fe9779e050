//! Unit tests of the checkers over fixed fixtures.

use std::collections::BTreeMap;

use statusmesh_crdt::{Observation, Replica, State, StatusWrite};

use crate::checker::cursor::{covers, lineages_of};
use crate::checker::subscribers::{apply_event, node_cells};
use crate::cluster::actor_id;
use crate::failure::CursorRegression;
use crate::workload::OBSERVATION_TTL_MS;

fn write(component: &str, state: State, at_ms: u64) -> StatusWrite {
    StatusWrite::parse(
        "api",
        component,
        "eu-west",
        Observation {
            state,
            message: String::new(),
            reporter: "probe".into(),
            observed_at_ms: at_ms,
            ttl_ms: OBSERVATION_TTL_MS,
        },
    )
    .expect("valid write")
}

#[test]
fn an_event_that_repeats_the_cell_is_a_duplicate() {
    let mut replica = Replica::new("n1", actor_id(1, 0, 0));
    let outcome = replica
        .write_status(1_000, &write("db", State::MajorOutage, 1_000))
        .expect("write");
    let event = outcome.events.first().expect("an event").clone();
    let mut cells = BTreeMap::new();
    assert_eq!(apply_event(&mut cells, &event), Ok(()));
    let err = apply_event(&mut cells, &event).expect_err("duplicate");
    assert!(err.to_string().contains("api/db/eu-west"), "{err}");
    assert_eq!(cells, node_cells(&replica).0);
}

#[test]
fn a_cursor_that_forgets_a_change_goes_backwards() {
    let mut replica = Replica::new("n1", actor_id(1, 0, 0));
    replica
        .write_status(1_000, &write("db", State::MajorOutage, 1_000))
        .expect("write");
    let old = replica.cursor();
    replica
        .write_status(2_000, &write("web", State::Operational, 2_000))
        .expect("write");
    let new = replica.cursor();
    let lineages = lineages_of(&replica);
    assert_eq!(covers(&replica, &old, &lineages, &new), Ok(()));
    assert_eq!(covers(&replica, &new, &lineages, &new), Ok(()));
    let err = covers(&replica, &new, &lineages, &old).expect_err("backwards");
    assert!(err.to_string().contains("lost changes"), "{err}");
    assert!(matches!(err, CursorRegression::LostChanges { .. }), "{err}");
}
