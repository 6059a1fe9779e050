//! Unit tests of the broadcast state: bounds, grafts in turn, entries re-chosen.

use super::*;

fn small() -> BroadcastConfig {
    BroadcastConfig {
        roots_max: 2,
        seen_max: 3,
        payload_cache_bytes_max: 10,
        missing_max: 2,
        ihave_per_peer_max: 4,
        lazy_peers_max: 1,
        eager_peers_max: 1,
        ..BroadcastConfig::lan()
    }
}

#[test]
fn seen_changes_and_their_bytes_stay_within_their_bounds() {
    let mut p = Plumtree::new(small());
    for id in 0..5u64 {
        p.remember(id, "api", "n1", vec![0; 4], None);
        assert_eq!(p.check_all("n0"), Ok(()));
    }
    // Three ids fit, but only two payloads of four bytes fit ten bytes.
    assert!(!p.has_seen(0) && !p.has_seen(1) && !p.has_seen(2));
    assert!(p.has_seen(3) && p.has_seen(4));
    assert_eq!(p.payload_bytes(), 8);
    // A payload larger than the whole cache is remembered without its bytes.
    p.remember(9, "api", "n1", vec![0; 11], None);
    assert!(p.seen(9).is_some_and(|s| s.bytes.is_none()));
}

#[test]
fn missing_announcements_roots_and_batches_stay_within_their_bounds() {
    let mut p = Plumtree::new(small());
    for id in 0..5u64 {
        p.announced(0, "n1", "n2", id);
    }
    assert_eq!(p.missing_count(), 2);
    p.queue_announcement(0, "n1", "n2", &[1, 2, 3, 4, 5, 6]);
    assert_eq!(p.announcements_dropped, 2);
    for root in ["a", "b", "c"] {
        p.tree_or_insert(0, root, RootTree::default);
    }
    assert_eq!(p.trees().len(), 2);
    assert!(
        p.tree("a").is_none(),
        "the least recently used root went first"
    );
    p.make_eager(0, "b", "x");
    p.make_eager(0, "b", "y");
    p.make_lazy("b", "z");
    p.make_lazy("b", "w");
    assert_eq!(p.check_all("n0"), Ok(()));
    let tree = p.tree("b").expect("tree");
    assert_eq!((tree.eager.len(), tree.lazy.len()), (1, 1));
}

#[test]
fn a_missing_change_is_grafted_from_each_announcer_in_turn_then_forgotten() {
    let mut p = Plumtree::new(BroadcastConfig::lan());
    let timeout = BroadcastConfig::lan().graft_timeout_ms;
    p.announced(0, "n1", "n9", 7);
    p.announced(1, "n2", "n9", 7);
    assert!(p.due_grafts(timeout - 1).by_peer.is_empty());
    let first = p.due_grafts(timeout);
    assert_eq!(first.by_peer.get("n1"), Some(&vec![7]));
    let second = p.due_grafts(2 * timeout);
    assert_eq!(second.by_peer.get("n2"), Some(&vec![7]));
    assert_eq!(p.missing_count(), 0);
    assert_eq!(p.next_timeout(), None);
    // Once it arrives, announcements of it are ignored.
    p.remember(7, "api", "n9", vec![1], Some("n3"));
    p.announced(3 * timeout, "n4", "n9", 7);
    assert_eq!(p.missing_count(), 0);
}

fn candidates(failing: &[&str]) -> Vec<EntryCandidate<'static>> {
    ["a", "b", "c"]
        .iter()
        .map(|p| EntryCandidate {
            peer: p,
            region: "far",
            failing: failing.contains(p),
        })
        .collect()
}

fn sample(p: &mut Plumtree, peer: &str, rtt_ms: u64) {
    for _ in 0..RTT_SAMPLES_MIN {
        p.sample_rtt(peer, rtt_ms);
    }
}

fn entry_tree(p: &mut Plumtree, entry: &str) {
    p.tree_or_insert(0, "root", || RootTree {
        eager: BTreeSet::from([entry.to_owned()]),
        ..RootTree::default()
    });
}

#[test]
fn an_entry_gives_way_only_to_a_clearly_faster_peer_of_its_region() {
    let mut p = Plumtree::new(BroadcastConfig::wan());
    entry_tree(&mut p, "a");
    sample(&mut p, "a", 100);
    // Too few samples: unknown, so labels keep choosing.
    p.sample_rtt("b", 85);
    assert_eq!(p.rtt_ms("b"), None);
    assert!(p.rechoose_entries("root", &candidates(&[])).is_empty());
    // 15% faster is within the hysteresis.
    sample(&mut p, "b", 85);
    assert_eq!(p.rtt_ms("b"), Some(85));
    assert!(p.rechoose_entries("root", &candidates(&[])).is_empty());
    // 25% faster swaps, and the old entry stays as a lazy back-up.
    sample(&mut p, "c", 75);
    assert_eq!(
        p.rechoose_entries("root", &candidates(&[])),
        vec![("a".to_owned(), "c".to_owned())]
    );
    let tree = p.tree("root").expect("tree");
    assert!(tree.eager.contains("c") && tree.lazy.contains("a"));
    assert!(!tree.eager.contains("a"));
    assert_eq!(p.check_all("root"), Ok(()));
    // The swapped-out peer, slightly faster now, does not take the entry back.
    for _ in 0..40 {
        p.sample_rtt("a", 70);
    }
    assert_eq!(p.rtt_ms("a"), Some(70));
    assert!(p.rechoose_entries("root", &candidates(&[])).is_empty());
}

#[test]
fn round_trips_below_the_minimum_difference_never_swap() {
    let mut p = Plumtree::new(BroadcastConfig::lan());
    entry_tree(&mut p, "a");
    sample(&mut p, "a", 4);
    sample(&mut p, "b", 2);
    // Half the round trip and 2 ms less swaps; 1 ms less never does, whatever the share.
    assert_eq!(p.rechoose_entries("root", &candidates(&[])).len(), 1);
    sample(&mut p, "a", 1);
    assert!(p.rechoose_entries("root", &candidates(&[])).is_empty());
}

#[test]
fn a_failing_entry_gives_way_at_once_even_to_an_unmeasured_peer() {
    let mut p = Plumtree::new(BroadcastConfig::wan());
    entry_tree(&mut p, "a");
    sample(&mut p, "a", 10);
    assert_eq!(
        p.rechoose_entries("root", &candidates(&["a", "b"])),
        vec![("a".to_owned(), "c".to_owned())]
    );
    // Every other peer failing: nobody better to take over.
    assert!(p
        .rechoose_entries("root", &candidates(&["c", "a", "b"]))
        .is_empty());
}

#[test]
fn message_ids_are_the_first_eight_bytes_of_the_hash() {
    let mut hash = [0u8; 32];
    hash[0] = 1;
    hash[8] = 0xff;
    assert_eq!(message_id(&ChangeHash(hash)), 1);
}
