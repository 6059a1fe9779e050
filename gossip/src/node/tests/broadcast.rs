//! Broadcast: one copy per node along the trees, grafts for lost pushes, prunes of redundant paths, repairs announced on.

use super::*;

#[test]
fn a_change_reaches_every_node_with_one_copy_each_within_two_hops() {
    let mut h = Harness::without_anti_entropy(9);
    h.run_for(100);
    h.write(0, "db", State::MajorOutage);
    // The root pushes to its region and to one node of each other region, which pushes
    // on to its own: two hops, not nine copies from the root.
    let pushed_by_root = h.nodes[0].stats().frames_out;
    h.run_for(2 * h.latency_ms + 1);
    assert!(h.all_hold_last_change_of(0, None));
    for i in 1..9 {
        assert_eq!(h.delivered(i, "push"), 1, "pushes delivered to n{i}");
    }
    assert_eq!(h.delivered(0, "push"), 0);
    let tree = h.nodes[0].broadcast_state().tree("n0").expect("own tree");
    assert_eq!(tree.eager.len(), 4, "{tree:?}");
    assert!(pushed_by_root > 0);
    // The tree is kept: a second change costs one copy per node too, and nothing is pruned.
    h.write(0, "db", State::Operational);
    h.run_for(2 * h.latency_ms + 1);
    assert!(h.all_hold_last_change_of(0, None));
    for i in 1..9 {
        assert_eq!(h.delivered(i, "push"), 2, "pushes delivered to n{i}");
        assert_eq!(h.nodes[i].stats().pushes_duplicate, 0);
    }
}

#[test]
fn a_lost_push_is_recovered_by_graft_not_by_anti_entropy() {
    let mut h = Harness::without_anti_entropy(9);
    h.run_for(100);
    let rounds_before: u64 = h.nodes.iter().map(|n| n.stats().anti_entropy_rounds).sum();
    // n4 (region r1) is the region's entry or a leaf there: either way its push is lost,
    // and a peer that has the change announces it.
    h.drop_pushes_to.insert(4);
    h.write(0, "db", State::MajorOutage);
    h.run_for(2 * h.latency_ms + 1);
    assert!(!h.all_hold_last_change_of(0, None));
    h.drop_pushes_to.clear();
    let took = h.run_until(1_000, |h| h.all_hold_last_change_of(0, None));
    assert!(took.is_some(), "n4 never got the change");
    assert!(h.nodes[4].stats().grafts_sent >= 1);
    let rounds_after: u64 = h.nodes.iter().map(|n| n.stats().anti_entropy_rounds).sum();
    assert_eq!(rounds_after, rounds_before, "no anti-entropy round ran");
}

#[test]
fn a_duplicate_push_prunes_its_sender() {
    let mut h = Harness::without_anti_entropy(9);
    h.run_for(100);
    h.write(0, "db", State::MajorOutage);
    h.run_for(20);
    // n2 (region r2) is told to push n0's changes to n1 as well: n1 now has two parents.
    let graft = codec::encode(&Frame::Graft {
        roots: vec!["n0".into()],
        ids: Vec::new(),
    })
    .expect("encode");
    h.nodes[2].handle_frame(h.now_ms, "n1", &graft);
    h.drain(2);
    let n2_pushes_to_n1 = |h: &Harness| {
        h.nodes[2]
            .broadcast_state()
            .tree("n0")
            .expect("tree")
            .eager
            .contains("n1")
    };
    assert!(n2_pushes_to_n1(&h));
    h.write(0, "db", State::Operational);
    h.run_for(20);
    assert_eq!(h.nodes[1].stats().pushes_duplicate, 1);
    assert!(!n2_pushes_to_n1(&h), "the prune reached n2");
    // The edge is gone: the next change reaches n1 once.
    h.write(0, "db", State::DegradedPerformance);
    h.run_for(20);
    assert!(h.all_hold_last_change_of(0, None));
    assert_eq!(h.nodes[1].stats().pushes_duplicate, 1);
}

#[test]
fn a_push_the_network_repeats_does_not_prune_its_sender() {
    let (mut h, now, push) = Harness::with_push_from_n0_to_n1();
    for _ in 0..2 {
        h.nodes[1].handle_frame(now, "n0", &push);
    }
    assert_eq!(h.nodes[1].stats().pushes_duplicate, 1);
    let prunes = std::iter::from_fn(|| h.nodes[1].poll_transmit())
        .filter(|t| matches!(codec::decode(&t.bytes), Ok(Frame::Prune { .. })))
        .count();
    assert_eq!(prunes, 0);
    let tree = h.nodes[0].broadcast_state().tree("n0").expect("tree");
    assert!(tree.eager.contains("n1"));
}

#[test]
fn a_change_repaired_after_a_heal_is_announced_on_and_reaches_the_rest_without_more_rounds() {
    let mut h = Harness::without_anti_entropy(9);
    h.run_for(100);
    h.cut = Some(3);
    h.write(3, "db", State::MajorOutage);
    h.run_for(100);
    h.cut = None;
    assert!(!h.all_hold_last_change_of(3, None));
    // One exchange: n1 syncs, and only n3 differs from it.
    let now = h.now_ms;
    h.nodes[1].sync_now(now);
    h.drain(1);
    // n1 announces it along its own tree: one graft round (virtual time) brings it to
    // every region, where entries push on; an epidemic of announcements alone needs more.
    let bound_ms = 2 * Config::lan().broadcast.graft_timeout_ms;
    let took = h.run_until(bound_ms, |h| h.all_hold_last_change_of(3, None));
    assert!(
        took.is_some(),
        "the rest got n3's change from n1 within {bound_ms} ms"
    );
    let heads_frames: u64 = (0..9).map(|i| h.delivered(i, "heads")).sum();
    assert!(
        heads_frames <= 2,
        "{heads_frames} heads frames: only n1 and n3 compared"
    );
    let rounds: u64 = h.nodes.iter().map(|n| n.stats().anti_entropy_rounds).sum();
    assert_eq!(rounds, 9, "one round per node at start, none since");
}

#[test]
fn an_announcement_that_beats_the_push_grafts_the_faster_path_and_prunes_the_slower() {
    let (mut h, now, push) = Harness::with_push_from_n0_to_n1();
    let hash = h.nodes[0].last_local_change().expect("a change");
    let ihave = codec::encode(&Frame::IHave {
        roots: vec![("n0".into(), vec![plumtree::message_id(&hash)])],
    })
    .expect("encode");
    // n2 announces it; n0's push reaches n1 only the optimisation threshold later.
    h.nodes[1].handle_frame(now, "n2", &ihave);
    let threshold = Config::lan().broadcast.optimize_threshold_ms;
    h.nodes[1].handle_frame(now + threshold, "n0", &push);
    let sent: Vec<(String, Frame)> = std::iter::from_fn(|| h.nodes[1].poll_transmit())
        .map(|t| (t.to, codec::decode(&t.bytes).expect("decodes")))
        .collect();
    let roots = vec!["n0".to_owned()];
    assert!(sent.contains(&(
        "n2".into(),
        Frame::Graft {
            roots: roots.clone(),
            ids: vec![]
        }
    )));
    assert!(sent.contains(&("n0".into(), Frame::Prune { roots })));
}
