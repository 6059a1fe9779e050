//! The tree policy at work: entries into other regions chosen by measured round trip, given up when suspected or down.

use super::*;

/// Node 0's entries into region r1 (nodes 1, 4 and 7) in its own tree.
fn r1_entries(h: &Harness) -> Vec<usize> {
    let tree = h.nodes[0].broadcast_state().tree("n0");
    [1, 4, 7]
        .into_iter()
        .filter(|i| tree.is_some_and(|t| t.eager.contains(&format!("n{i}"))))
        .collect()
}

/// One round of the RTT tests: node 0 writes a new state (acks time its entries) and
/// the mesh runs an anti-entropy interval (probes and digests time the other peers).
fn rtt_round(h: &mut Harness, round: usize) {
    let state = [State::Operational, State::DegradedPerformance][round % 2];
    h.write(0, "db", state);
    h.run_for(Config::lan().anti_entropy_interval_ms);
}

/// Nine nodes in three regions, 5 ms apart inside one and 40 ms across, but node 0 is
/// `to_r1_ms` from nodes 1, 4 and 7 (region r1); node 0 writes once and the tree it
/// builds is returned with the harness. Region labels and ranks choose that first tree:
/// no round trip is known yet.
fn rtt_mesh(to_r1_ms: [u64; 3]) -> Harness {
    let mut h = Harness::new(9);
    h.latency_ms = 40;
    for i in 0..9 {
        for j in (i + 1..9).filter(|j| j % 3 == i % 3) {
            h.link_latency_ms.insert((i, j), 5);
        }
    }
    for (peer, ms) in [1, 4, 7].into_iter().zip(to_r1_ms) {
        h.link_latency_ms.insert((0, peer), ms);
    }
    h.run_for(100);
    h.write(0, "db", State::Operational);
    h
}

#[test]
fn the_entry_into_a_region_moves_to_its_peer_with_the_lowest_measured_round_trip() {
    // The entry its rank picks first is made the slowest peer, and the last the fastest:
    // whatever the labels say, only measured round trips can find the fast one.
    let mut by_rank = [1, 4, 7];
    by_rank.sort_by_key(|i| plumtree::spread_rank("n0", &format!("n{i}")));
    let mut to_r1_ms = [0; 3];
    for (i, ms) in by_rank.iter().zip([60, 40, 5]) {
        to_r1_ms[[1, 4, 7].iter().position(|p| p == i).expect("r1")] = ms;
    }
    let fastest = by_rank[2];
    let mut h = rtt_mesh(to_r1_ms);
    assert_eq!(
        r1_entries(&h),
        vec![by_rank[0]],
        "labels and ranks chose first"
    );
    // A round is one write and one anti-entropy interval: acks time the entry, digest
    // replies time the other peers.
    let rounds = (0..100).find(|round| {
        rtt_round(&mut h, *round);
        r1_entries(&h) == vec![fastest]
    });
    assert!(
        rounds.is_some(),
        "entries stayed {:?}; by rank {by_rank:?}; rtt {:?}",
        r1_entries(&h),
        by_rank.map(|i| h.nodes[0].rtt_ms(&format!("n{i}")))
    );
    for round in 0..20 {
        rtt_round(&mut h, round);
        assert_eq!(r1_entries(&h), vec![fastest], "the entry stays");
    }
    assert!(h.all_hold_last_change_of(0, None));
    assert!((1..=2).contains(&h.nodes[0].stats().entries_swapped));
}

#[test]
fn a_suspected_entry_gives_way_before_it_is_declared_down() {
    let mut h = rtt_mesh([40, 40, 40]);
    h.run_for(3_000);
    let [entry] = r1_entries(&h)[..] else {
        panic!("one entry into r1: {:?}", r1_entries(&h));
    };
    h.cut = Some(entry);
    let moved_ms = h.run_until(30_000, |h| !r1_entries(h).contains(&entry));
    assert!(moved_ms.is_some(), "the cut entry stayed");
    let state = h.nodes[0].member_state(&format!("n{entry}"));
    assert_eq!(state, MemberState::Suspect, "moved after {moved_ms:?} ms");
    assert_eq!(r1_entries(&h).len(), 1);
    assert_eq!(h.nodes[0].stats().entries_swapped, 1);
    // The new entry gets the next write by push and passes it on to the rest of r1 (by
    // push, or by announcement and one graft where it was a lazy peer of a mate).
    h.write(0, "db", State::MajorOutage);
    let graft_ms = Config::lan().broadcast.graft_timeout_ms;
    let within_ms = 2 * 40 + graft_ms + 4 * 10;
    let took = h.run_until(within_ms, |h| h.all_hold_last_change_of(0, Some(entry)));
    assert!(
        took.is_some(),
        "r1 did not get the write within {within_ms} ms"
    );
}

#[test]
fn peers_of_similar_round_trip_do_not_take_turns_as_the_entry() {
    let mut h = rtt_mesh([40, 37, 38]);
    let first = r1_entries(&h);
    assert_eq!(first.len(), 1);
    for round in 0..60 {
        rtt_round(&mut h, round);
        assert_eq!(r1_entries(&h), first);
    }
    assert_eq!(h.nodes[0].stats().entries_swapped, 0);
    // Every peer of r1 was measured by then, so the labels were not what kept it.
    for i in [1, 4, 7] {
        assert!(
            h.nodes[0].rtt_ms(&format!("n{i}")).is_some(),
            "n{i} measured"
        );
    }
}

#[test]
fn an_eager_peer_declared_down_is_replaced_and_changes_still_reach_everyone() {
    let mut h = Harness::without_anti_entropy(9);
    h.run_for(3_000);
    h.write(0, "db", State::MajorOutage);
    h.run_for(20);
    // n0's entry into region r1 (n1, n4 or n7) dies.
    let tree = h.nodes[0]
        .broadcast_state()
        .tree("n0")
        .expect("tree")
        .clone();
    let entry = [1, 4, 7]
        .into_iter()
        .find(|i| tree.eager.contains(&format!("n{i}")))
        .expect("an entry into r1");
    h.cut = Some(entry);
    let dead = format!("n{entry}");
    let declared = h.run_until(20_000, |h| {
        h.nodes[0].member_state(&dead) == MemberState::Down
    });
    assert!(declared.is_some(), "{dead} declared down");
    let tree = h.nodes[0].broadcast_state().tree("n0").expect("tree");
    assert!(!tree.eager.contains(&dead));
    assert!(
        [1, 4, 7]
            .iter()
            .any(|i| *i != entry && tree.eager.contains(&format!("n{i}"))),
        "another node of r1 took the role: {tree:?}"
    );
    h.write(0, "db", State::Operational);
    let took = h.run_until(1_000, |h| h.all_hold_last_change_of(0, Some(entry)));
    assert!(took.is_some(), "every living node got the change");
}
