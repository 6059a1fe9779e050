//! Members added and removed at runtime (`members.rs`).

use super::*;

/// Three listed nodes and `n3`, joined in region `r0` and added by each of them.
fn with_joined(config: Config) -> Harness {
    let mut h = Harness::with_config(3, config.clone());
    let listed: Vec<Peer> = (0..3)
        .map(|i| Peer {
            id: format!("n{i}"),
            region: format!("r{i}"),
        })
        .collect();
    let replica = Replica::new("n3", ActorId::from(vec![9; 16]));
    h.nodes.push(Node::new_joined(
        "n3".to_owned(),
        "r0".to_owned(),
        config,
        listed,
        replica,
        3,
    ));
    let joined = Peer {
        id: "n3".to_owned(),
        region: "r0".to_owned(),
    };
    for i in 0..3 {
        let now_ms = h.now_ms;
        assert_eq!(
            h.nodes[i].add_member(now_ms, joined.clone()).ok(),
            Some(true)
        );
        h.drain(i);
    }
    h
}

#[test]
fn a_joined_member_gets_every_document_and_its_writes_reach_every_node() {
    let mut h = with_joined(Config::lan());
    h.write(0, "db", State::MajorOutage);
    assert!(h.run_until(10_000, |h| h.converged()).is_some());
    h.write(3, "web", State::DegradedPerformance);
    assert!(h
        .run_until(10_000, |h| h.all_hold_last_change_of(3, None))
        .is_some());
    assert_eq!(h.nodes[0].member_state("n3"), MemberState::Alive);
    assert_eq!(h.nodes[3].member_state("n0"), MemberState::Alive);
    // Added twice is not added again; in another region it is refused.
    let now_ms = h.now_ms;
    let again = Peer {
        id: "n3".to_owned(),
        region: "r0".to_owned(),
    };
    assert_eq!(h.nodes[0].add_member(now_ms, again).ok(), Some(false));
    let elsewhere = Peer {
        id: "n3".to_owned(),
        region: "r2".to_owned(),
    };
    assert!(h.nodes[0].add_member(now_ms, elsewhere).is_err());
}

#[test]
fn joined_members_are_not_voters_and_listed_ones_cannot_be_removed() {
    let mut h = with_joined(Config::lan());
    h.run_for(3_000);
    assert!(h.nodes[0].is_voter());
    assert!(!h.nodes[3].is_voter());
    assert!(h.nodes[0].peers().get("n1").is_some_and(|p| p.voter));
    assert!(h.nodes[0].peers().get("n3").is_some_and(|p| !p.voter));
    let error = h.nodes[0].remove_member("n1").expect_err("a voter");
    assert!(error.to_string().contains("voter"), "{error}");
    assert_eq!(h.nodes[0].remove_member("n3").ok(), Some(true));
    assert!(!h.nodes[0].peers().contains_key("n3"));
    let removed = std::iter::from_fn(|| h.nodes[0].poll_event())
        .any(|e| matches!(e, Event::MemberRemoved { peer } if peer == "n3"));
    assert!(removed);
}

#[test]
fn a_joined_member_down_longer_than_forget_after_is_removed_and_a_listed_one_never() {
    let config = Config {
        forget_after_ms: 5_000,
        ..Config::lan()
    };
    let mut h = with_joined(config);
    h.run_for(3_000);
    assert!(h.nodes[1].peers().contains_key("n3"));
    h.cut = Some(3);
    let forgotten = h.run_until(60_000, |h| {
        (0..3).all(|i| !h.nodes[i].peers().contains_key("n3"))
    });
    assert!(forgotten.is_some(), "n3 still a member after a minute down");
    // A listed node down as long stays a member.
    h.cut = Some(2);
    h.run_for(20_000);
    assert!(h.nodes[0].peers().contains_key("n2"));
}

#[test]
fn a_node_that_leaves_is_declared_down_by_the_others() {
    let mut h = with_joined(Config::lan());
    h.run_for(3_000);
    let now_ms = h.now_ms;
    h.nodes[3].leave(now_ms);
    h.drain(3);
    // It stops: nothing more from it.
    h.cut = Some(3);
    // Within the direct evidence window its last frames still prove it alive; then the
    // leave it gossiped holds, without a suspicion first.
    let down = h.run_until(5_000, |h| {
        (0..3).all(|i| h.nodes[i].member_state("n3") == MemberState::Down)
    });
    assert!(down.is_some(), "the leave was not heard within 5 s");
}

#[test]
fn the_rollover_majority_counts_voters_only_and_a_joined_node_never_proposes() {
    let mut h = with_joined(Config::lan());
    let now_ms = h.now_ms;
    let another = Peer {
        id: "n4".to_owned(),
        region: "r1".to_owned(),
    };
    assert_eq!(h.nodes[0].add_member(now_ms, another).ok(), Some(true));
    let ids = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    // n0 with both joined members alive but no other voter: 3 of 5 members, 1 of 3 voters.
    assert!(!h.nodes[0].is_proposer(&ids(&["n3", "n4"])));
    // With one more voter it is a majority of the voters (2 of 3), joined members or not.
    assert!(h.nodes[0].is_proposer(&ids(&["n1"])));
    assert!(h.nodes[0].is_proposer(&ids(&["n1", "n3", "n4"])));
    // A joined node proposes nothing, even with every voter alive.
    assert!(!h.nodes[3].is_proposer(&ids(&["n0", "n1", "n2"])));
}
