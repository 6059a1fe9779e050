//! Version negotiation between nodes of different releases: a node emulating the previous
//! release and upgraded nodes converge, each pair at its highest common version; a node
//! outside the range is refused both ways.

use super::*;
use crate::version::{Ranges, VersionRange};

fn config(versions: Ranges) -> Config {
    Config {
        versions,
        ..Config::lan()
    }
}

/// Node 0 emulates the previous release (frames up to 2), nodes 1 and 2 are upgraded.
fn mixed() -> Harness {
    Harness::with_configs(vec![
        config(Ranges::CURRENT.with_frame_max(2)),
        config(Ranges::CURRENT),
        config(Ranges::CURRENT),
    ])
}

#[test]
fn a_previous_release_and_upgraded_nodes_converge_at_their_highest_common_version() {
    let mut h = mixed();
    h.run_for(200);
    h.write(0, "db", State::MajorOutage);
    h.write(1, "web", State::DegradedPerformance);
    h.write(2, "cdn", State::PartialOutage);
    h.run_for(3_000);
    assert!(h.converged());
    let three = Some(crate::version::Spoken {
        frame: 3,
        schema: 1,
    });
    let two = Some(crate::version::Spoken {
        frame: 2,
        schema: 1,
    });
    assert_eq!(h.nodes[1].spoken_with("n2"), three);
    assert_eq!(h.nodes[2].spoken_with("n1"), three);
    assert_eq!(h.nodes[1].spoken_with("n0"), two);
    assert_eq!(h.nodes[0].spoken_with("n1"), two);
    // Once negotiated, nothing goes to the old node in a version it does not read, but for
    // one probe per upgraded peer per probe interval.
    let refused_before = h.nodes[0].stats().versions_refused;
    h.write(1, "db", State::Operational);
    h.run_for(crate::version::PROBE_INTERVAL_MS);
    assert!(h.converged());
    assert!(h.nodes[0].stats().versions_refused <= refused_before + 2);
    assert_eq!(h.nodes[1].stats().versions_refused, 0);
}

#[test]
fn the_upgraded_node_speaks_version_3_to_an_upgraded_peer_after_its_restart() {
    let mut h = mixed();
    h.run_for(2_000);
    assert_eq!(h.nodes[1].spoken_with("n0").map(|s| s.frame), Some(2));
    // Node 0 restarts upgraded (with an empty disk, which anti-entropy fills): its first
    // frame advertises its ranges.
    let replica = Replica::new("n0", ActorId::from(vec![9; 16]));
    h.nodes[0] = Node::new(
        "n0".into(),
        config(Ranges::CURRENT).with_incarnation(1),
        (0..3)
            .map(|i| Peer {
                id: format!("n{i}"),
                region: format!("r{}", i % 3),
            })
            .collect(),
        replica,
        7,
    );
    h.run_for(DOWNGRADE_WINDOW_MS);
    assert_eq!(h.nodes[1].spoken_with("n0").map(|s| s.frame), Some(3));
    assert_eq!(h.nodes[0].spoken_with("n1").map(|s| s.frame), Some(3));
    h.write(0, "db", State::MajorOutage);
    h.run_for(2_000);
    assert!(h.converged());
}

const DOWNGRADE_WINDOW_MS: u64 = crate::version::DOWNGRADE_AFTER_MS + 1_000;

#[test]
fn a_node_of_a_later_release_outside_the_range_is_refused_and_never_read() {
    let future = Ranges {
        frame: VersionRange { min: 4, max: 4 },
        ..Ranges::CURRENT
    };
    let mut h = Harness::with_configs(vec![
        config(Ranges::CURRENT),
        config(Ranges::CURRENT),
        config(future),
    ]);
    h.run_for(200);
    h.write(2, "db", State::MajorOutage);
    h.write(0, "web", State::DegradedPerformance);
    h.run_for(3_000);
    let api = Name::parse("service", "api").expect("name");
    let n0_db = h.nodes[0].replica().doc(&api).and_then(|d| {
        let component = Name::parse("component", "db").expect("name");
        d.cell(&component, &Name::parse("region", "r0").expect("name"))
    });
    assert!(n0_db.is_none(), "a refused node's write was read");
    assert!(h.nodes[0].stats().versions_refused > 0);
    assert!(
        h.nodes[0].stats().transmits_refused > 0,
        "sent to a refused node"
    );
    assert!(h.nodes[2].stats().versions_refused > 0);
    assert_eq!(h.nodes[0].spoken_with("n2"), None);
    // The refusal names the peer and both ranges.
    let frame = codec::encode_as(
        &Frame::Digest {
            docs: 1,
            liveness: 1,
        },
        4,
        &future,
    )
    .expect("encode");
    h.nodes[1].handle_frame(h.now_ms, "n2", &frame);
    let refused = std::iter::from_fn(|| h.nodes[1].poll_event()).find_map(|e| match e {
        Event::VersionRefused {
            peer,
            frame_version,
            ours,
            theirs,
            ..
        } => Some((peer, frame_version, ours, theirs)),
        _ => None,
    });
    assert_eq!(
        refused,
        Some(("n2".to_owned(), 4, Ranges::CURRENT, Some(future)))
    );
}

#[test]
fn a_peer_with_a_disjoint_schema_range_is_refused() {
    let later_schema = Ranges {
        schema: VersionRange { min: 2, max: 2 },
        ..Ranges::CURRENT
    };
    let mut h = Harness::with_configs(vec![config(Ranges::CURRENT), config(later_schema)]);
    h.run_for(200);
    h.write(1, "db", State::MajorOutage);
    h.run_for(2_000);
    assert!(!h.converged());
    assert!(h.nodes[0].stats().versions_refused > 0);
    assert!(h.nodes[1].stats().versions_refused > 0);
}

#[test]
fn version_ranges_that_break_their_rules_are_invalid_configs() {
    let below = Ranges {
        frame: VersionRange { min: 1, max: 3 },
        ..Ranges::CURRENT
    };
    assert!(config(below).validate().is_err());
    assert!(config(Ranges::CURRENT.with_frame_max(1))
        .validate()
        .is_err());
    let empty_schema = Ranges {
        schema: VersionRange { min: 0, max: 1 },
        ..Ranges::CURRENT
    };
    assert!(config(empty_schema).validate().is_err());
    assert_eq!(config(Ranges::CURRENT.with_frame_max(2)).validate(), Ok(()));
}

#[test]
fn two_upgraded_nodes_that_took_each_other_for_old_ones_reach_version_3_by_probing() {
    let mut h = Harness::with_configs(vec![config(Ranges::CURRENT), config(Ranges::CURRENT)]);
    h.run_for(200);
    // Each heard the other's version-2 frames first (a restart crossed with them).
    let now = h.now_ms;
    for (i, peer) in [(0, "n1"), (1, "n0")] {
        let state = h.nodes[i].peers.get_mut(peer).expect("peer");
        state.version = crate::version::PeerVersion::default();
        state.version.heard(now, 2, None);
    }
    assert_eq!(h.nodes[0].spoken_with("n1").map(|s| s.frame), Some(2));
    h.run_for(crate::version::PROBE_INTERVAL_MS + 1_000);
    assert_eq!(h.nodes[0].spoken_with("n1").map(|s| s.frame), Some(3));
    assert_eq!(h.nodes[1].spoken_with("n0").map(|s| s.frame), Some(3));
}
