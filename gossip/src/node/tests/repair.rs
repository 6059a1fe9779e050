//! Anti-entropy, liveness repair and acknowledgements.

use super::*;

#[test]
fn a_lost_broadcast_is_repaired_by_anti_entropy() {
    let mut h = Harness::new(4);
    h.drop_every = 1; // every push is lost
    h.write(1, "db", State::PartialOutage);
    h.drop_every = 0;
    h.run_for(20);
    assert!(!h.converged());
    h.run_for(10_000);
    assert!(h.converged());
}

#[test]
fn a_partitioned_node_catches_up_after_heal() {
    let mut h = Harness::new(4);
    h.cut = Some(3);
    for (i, c) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        h.write(i % 3, c, State::DegradedPerformance);
        h.run_for(50);
    }
    h.write(3, "z", State::MajorOutage);
    h.run_for(2_000);
    assert!(!h.converged());
    h.cut = None;
    h.run_for(10_000);
    assert!(h.converged());
    let view = serde_json::to_value(h.nodes[3].replica().view(h.now_ms, None)).expect("json");
    assert_eq!(
        view["services"][0]["components"].as_array().map(Vec::len),
        Some(6)
    );
}

#[test]
fn liveness_heartbeats_spread_without_history() {
    let mut h = Harness::new(3);
    h.write(0, "db", State::Operational);
    h.run_for(10);
    h.now_ms += 5_000;
    h.write(0, "db", State::Operational);
    h.run_for(10);
    let key = "api/db/r0";
    for node in &h.nodes {
        assert_eq!(
            node.replica().liveness().last_seen(key),
            Some(h.now_ms - 10)
        );
        let doc = node.replica().docs().next().expect("doc");
        assert_eq!(doc.history_len(), 1);
    }
}

#[test]
fn a_large_liveness_map_is_repaired_by_the_buckets_that_differ() {
    let mut h = Harness::without_anti_entropy(2);
    h.run_for(100);
    let entries: Vec<(String, u64)> = (0..2_000).map(|i| (format!("api/c{i}/r0"), 5)).collect();
    let whole = codec::encode(&Frame::Liveness {
        entries,
        reply_wanted: false,
    })
    .expect("encode");
    let newer = codec::encode(&Frame::Liveness {
        entries: vec![("api/c7/r0".into(), 9)],
        reply_wanted: false,
    })
    .expect("encode");
    let now = h.now_ms;
    h.nodes[0].handle_frame(now, "n1", &whole);
    h.nodes[1].handle_frame(now, "n0", &whole);
    h.nodes[1].handle_frame(now, "n0", &newer);
    h.drain(0);
    h.drain(1);
    let bytes_before: u64 = h.nodes.iter().map(|n| n.stats().bytes_out).sum();
    h.nodes[0].sync_now(now);
    h.drain(0);
    h.run_for(50);
    assert_eq!(
        h.nodes[0].replica().liveness(),
        h.nodes[1].replica().liveness()
    );
    let bytes: u64 = h.nodes.iter().map(|n| n.stats().bytes_out).sum::<u64>() - bytes_before;
    // The whole map is about 27 KB; the bucket hashes and one bucket's entries are a
    // small part of it.
    assert!(whole.len() > 20_000, "{}", whole.len());
    assert!(bytes < 3_000, "{bytes} bytes to repair one entry");
}

#[test]
fn a_writer_learns_which_regions_hold_its_change() {
    let mut h = Harness::new(3);
    h.cut = Some(2);
    h.write(0, "db", State::MajorOutage);
    let hash = h.nodes[0].last_local_change().expect("a change");
    assert_eq!(h.nodes[0].regions_holding(&hash), Some(1));
    h.run_for(50);
    assert_eq!(h.nodes[0].regions_holding(&hash), Some(2));
    assert_eq!(h.nodes[0].peer_lag("n2").0, 1);
    assert_eq!(h.nodes[0].peer_lag("n1").0, 0);
    h.cut = None;
    // The node that missed the first push holds the second back until anti-entropy
    // (from any node) repairs the first; it then acknowledges both to their origin.
    h.write(0, "web", State::Operational);
    h.run_for(50);
    let second = h.nodes[0].last_local_change().expect("a change");
    assert_eq!(h.nodes[0].regions_holding(&second), Some(2));
    h.run_for(5_000);
    assert_eq!(h.nodes[0].regions_holding(&second), Some(3));
    assert_eq!(h.nodes[0].regions_holding(&hash), Some(3));
    assert_eq!(h.nodes[0].region_count(), 3);
}
