//! Rollovers: the trigger, the proposer rule, and writes surviving epochs.

use super::*;

fn epoch_config(history_changes_max: usize) -> Config {
    Config {
        epoch: EpochConfig {
            history_changes_max,
            propose_interval_ms: 1_000,
            ..EpochConfig::default()
        },
        ..Config::lan()
    }
}

fn api_doc(node: &Node) -> Option<&statusmesh_crdt::ServiceDoc> {
    node.replica()
        .doc(&Name::parse("service", "api").expect("name"))
}

#[test]
fn a_mesh_rolls_over_under_load_and_every_write_survives() {
    let mut h = Harness::with_config(5, epoch_config(10));
    h.run_for(2_000);
    let mut written = Vec::new();
    let states = [State::MajorOutage, State::Operational];
    for round in 0..120_usize {
        let i = round % 5;
        h.write(i, &format!("c{}", round % 7), states[round % 2]);
        let hash = h.nodes[i].last_local_change().expect("a change");
        written.push(
            api_doc(&h.nodes[i])
                .and_then(|d| d.write_of(&hash))
                .expect("a write"),
        );
        h.run_for(50);
    }
    assert!(
        h.run_until(20_000, Harness::converged).is_some(),
        "the mesh converges"
    );
    let first = serde_json::to_string(&h.nodes[0].replica().view(h.now_ms, None)).expect("json");
    for node in &h.nodes {
        let doc = api_doc(node).expect("doc");
        assert!(
            doc.epoch() >= 3,
            "{} is in epoch {}",
            node.id(),
            doc.epoch()
        );
        assert!(
            doc.history_len() < 60,
            "history stays bounded: {}",
            doc.history_len()
        );
        for write in &written {
            assert!(doc.holds_write(write), "{} lost {write:?}", node.id());
        }
        let view = serde_json::to_string(&node.replica().view(h.now_ms, None)).expect("json");
        assert_eq!(view, first);
    }
    // Only the smallest live id proposes.
    assert!(h.nodes[0].stats().rollovers_proposed >= 3);
    assert!(h.nodes[1..]
        .iter()
        .all(|n| n.stats().rollovers_proposed == 0));
}

#[test]
fn a_node_cut_off_through_two_rollovers_converges_and_keeps_its_writes() {
    let mut h = Harness::with_config(5, epoch_config(8));
    h.run_for(2_000);
    h.cut = Some(4);
    let mut island = Vec::new();
    for round in 0..6 {
        h.write(4, &format!("island{round}"), State::PartialOutage);
        let hash = h.nodes[4].last_local_change().expect("a change");
        island.push(
            api_doc(&h.nodes[4])
                .and_then(|d| d.write_of(&hash))
                .expect("a write"),
        );
    }
    for round in 0..60_usize {
        h.write(
            round % 4,
            &format!("c{}", round % 5),
            [State::MajorOutage, State::Operational][round % 2],
        );
        h.run_for(100);
    }
    let epoch = api_doc(&h.nodes[0]).map(|d| d.epoch()).unwrap_or_default();
    assert!(epoch >= 2, "the rest rolled over twice: epoch {epoch}");
    assert_eq!(api_doc(&h.nodes[4]).map(|d| d.epoch()), Some(0));
    h.cut = None;
    assert!(
        h.run_until(30_000, Harness::converged).is_some(),
        "the cut-off node converges after the heal"
    );
    for node in &h.nodes {
        let doc = api_doc(node).expect("doc");
        for write in &island {
            assert!(doc.holds_write(write), "{} lost {write:?}", node.id());
        }
        assert_eq!(doc.cells().len(), 6 + 5);
    }
}

#[test]
fn a_node_without_a_live_majority_does_not_propose() {
    let mut h = Harness::with_config(3, epoch_config(3));
    h.run_for(2_000);
    // n0 alone: n1 and n2 are cut off from it and declared down.
    h.cut = Some(0);
    for round in 0..10 {
        h.write(0, &format!("c{round}"), State::MajorOutage);
    }
    h.run_for(30_000);
    assert_eq!(h.nodes[0].stats().rollovers_proposed, 0);
    assert_eq!(api_doc(&h.nodes[0]).map(|d| d.epoch()), Some(0));
}
