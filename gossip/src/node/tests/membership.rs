//! Failure detection as the node reports it.

use super::*;

#[test]
fn a_dead_node_is_reported_down_and_the_living_stay_up() {
    let mut h = Harness::new(5);
    let living_see_each_other_up = |h: &Harness| {
        (0..4).all(|i| {
            (0..4)
                .filter(|j| *j != i)
                .all(|j| h.nodes[i].member_state(&format!("n{j}")) == MemberState::Alive)
        })
    };
    h.run_for(3_000);
    assert!(living_see_each_other_up(&h));
    h.cut = Some(4);
    let mut detected_after_ms = None;
    for step in 1..=60 {
        h.run_for(250);
        assert!(
            living_see_each_other_up(&h),
            "a living node reported down {}ms into the cut",
            step * 250
        );
        let all_see_down = (0..4).all(|i| h.nodes[i].member_state("n4") == MemberState::Down);
        if all_see_down && detected_after_ms.is_none() {
            detected_after_ms = Some(step * 250);
        }
    }
    let detected = detected_after_ms.expect("n4 declared down by every living node");
    assert!(detected <= 10_000, "declared down after {detected} ms");
    // Back from the dead: it learns it was declared down, renews its identity and rejoins;
    // the "everyone is down" view it formed while cut off must not take the living down.
    h.cut = None;
    let mut rejoined = false;
    for step in 1..=120 {
        h.run_for(250);
        assert!(
            living_see_each_other_up(&h),
            "a living node reported down {}ms after the heal",
            step * 250
        );
        if (0..4).all(|i| h.nodes[i].member_state("n4") == MemberState::Alive) {
            rejoined = true;
            break;
        }
    }
    assert!(rejoined, "n4 rejoined within 30 s of the heal");
}

#[test]
fn a_swim_message_that_claims_another_sender_is_rejected() {
    let mut h = Harness::new(3);
    h.run_for(2_000);
    // n1 relays a SWIM message that n2 made: its header names n2, the transport says n1.
    let mut from_n2 = Vec::new();
    while let Some(t) = h.nodes[2].poll_transmit() {
        from_n2.push(t);
    }
    h.nodes[2].handle_timeout(h.now_ms + 10_000);
    while let Some(t) = h.nodes[2].poll_transmit() {
        from_n2.push(t);
    }
    let swim = from_n2
        .into_iter()
        .find(|t| matches!(codec::decode(&t.bytes), Ok(Frame::Swim { .. })))
        .expect("n2 sends SWIM messages");
    let before = h.nodes[0].stats().frames_rejected;
    h.nodes[0].handle_frame(h.now_ms, "n1", &swim.bytes);
    assert_eq!(h.nodes[0].stats().frames_rejected, before + 1);
}
