//! Rendezvous (highest-random-weight) assignment: which live member does a piece of work.
//!
//! A protocol rule, so it lives here and both drivers call it: the node to know which
//! probes it runs, the simulator to check that the rule gives one owner per key. For a key
//! (a (check, region) pair for probes; a (subscription, service) pair for webhooks: one
//! sender per service keeps that service's transitions in causal order) every
//! member gets a weight from a fixed hash of (key, member); the heaviest member owns the key.
//! Every node that sees the same live members picks the same owner, without talking; when
//! the owner leaves, only its keys move, each to the next heaviest member (takeover), and
//! when it comes back they return.
//!
//! [`live_members`] gives the candidates over the whole mesh, for work any node may do.
//!
//! The flow for a regional probe:
//! 1. [`live_members_in`] lists the members of a region that this node considers alive
//!    (itself included when it is of that region).
//! 2. [`owner`] over them, with [`probe_key`] of (service, component, region), names the prober.
//! 3. The node probes the checks it owns; on a membership change it asks again.
//!
//! ```
//! use statusmesh_gossip::rendezvous::{owner, ranking, probe_key};
//! let members = ["eu-1", "eu-2", "eu-3"];
//! let key = probe_key("api", "db", "eu");
//! let first = owner(&key, &members).expect("a member");
//! // Without the owner, the next in the ranking takes over.
//! let rest: Vec<&str> = members.iter().copied().filter(|m| *m != first).collect();
//! assert_eq!(owner(&key, &rest), Some(ranking(&key, &members)[1]));
//! ```

use crate::membership::MemberState;
use crate::node::{Node, NodeId};

/// The weight of `member` for `key`: FNV-1a over both (with a separator no name holds),
/// then a 64-bit finalizer so that similar names spread. Stable across versions and
/// platforms: it is part of the protocol.
pub fn weight(key: &[u8], member: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.iter().chain(&[0xff]).chain(member.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64's finalizer.
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// The member that owns `key`: the heaviest, ties broken by the smaller name. `None` when
/// there are no members.
pub fn owner<'a, M: AsRef<str> + ?Sized>(key: &[u8], members: &'a [&'a M]) -> Option<&'a M> {
    members.iter().copied().max_by(|a, b| {
        let (a, b) = (a.as_ref(), b.as_ref());
        weight(key, a).cmp(&weight(key, b)).then(b.cmp(a))
    })
}

/// Every member, from the owner of `key` down: who takes over when those before it are gone.
pub fn ranking<'a, M: AsRef<str> + ?Sized>(key: &[u8], members: &'a [&'a M]) -> Vec<&'a M> {
    let mut ranked: Vec<&M> = members.to_vec();
    ranked.sort_by(|a, b| {
        let (a, b) = (a.as_ref(), b.as_ref());
        weight(key, b).cmp(&weight(key, a)).then(a.cmp(b))
    });
    ranked
}

/// The key of the probe of (service, component) from `region`.
pub fn probe_key(service: &str, component: &str, region: &str) -> Vec<u8> {
    format!("probe/{service}/{component}/{region}").into_bytes()
}

/// The key of the sender of subscription `webhook`'s events of `service`.
pub fn webhook_key(webhook: &str, service: &str) -> Vec<u8> {
    format!("webhook/{webhook}/{service}").into_bytes()
}

/// The members of `region` that `node` considers alive (SWIM alive, or heard directly of
/// late), itself included when it is of that region; sorted by id.
pub fn live_members_in(node: &Node, region: &str) -> Vec<NodeId> {
    let mut members: Vec<NodeId> = node
        .peers()
        .iter()
        .filter(|(id, peer)| peer.region == region && node.member_state(id) == MemberState::Alive)
        .map(|(id, _)| id.clone())
        .collect();
    if node.region() == region {
        members.push(node.id().to_owned());
    }
    members.sort();
    members.dedup();
    members
}

/// Every member of the mesh that `node` considers alive, itself included, sorted: the
/// candidates of a key that any node may own (a webhook sender), not one region's.
pub fn live_members(node: &Node) -> Vec<NodeId> {
    let mut members: Vec<NodeId> = node
        .peers()
        .keys()
        .filter(|id| node.member_state(id) == MemberState::Alive)
        .cloned()
        .collect();
    members.push(node.id().to_owned());
    members.sort();
    members.dedup();
    members
}

/// Whether `me` owns `key` among `members` (which should include `me`).
pub fn owns(key: &[u8], members: &[NodeId], me: &str) -> bool {
    let refs: Vec<&str> = members.iter().map(String::as_str).collect();
    owner(key, &refs) == Some(me)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_view_of_the_same_members_picks_the_same_owner() {
        let key = probe_key("api", "db", "eu");
        let a = ["n1", "n2", "n3"];
        let b = ["n3", "n1", "n2"];
        assert_eq!(owner(&key, &a), owner(&key, &b));
        assert_eq!(owner::<str>(&key, &[]), None);
    }

    #[test]
    fn a_departure_moves_only_the_keys_of_the_member_that_left() {
        let all = ["n1", "n2", "n3", "n4"];
        let without = ["n1", "n2", "n4"];
        let mut moved = 0;
        for i in 0..1000 {
            let key = probe_key("svc", &format!("c{i}"), "eu");
            let before = owner(&key, &all).expect("owner");
            let after = owner(&key, &without).expect("owner");
            if before != "n3" {
                assert_eq!(before, after, "key {i} moved though its owner stayed");
            } else {
                moved += 1;
                assert_eq!(after, ranking(&key, &all)[1]);
            }
        }
        // About a quarter of the keys were n3's.
        assert!((150..350).contains(&moved), "{moved}");
    }

    #[test]
    fn keys_spread_over_members() {
        let members = ["eu-west-1", "eu-west-2", "eu-west-3"];
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            let key = probe_key("svc", &format!("c{i}"), "eu-west");
            let who = owner(&key, &members).expect("owner");
            let index = members.iter().position(|m| *m == who).expect("member");
            counts[index] += 1;
        }
        for count in counts {
            assert!((800..1200).contains(&count), "{counts:?}");
        }
    }

    #[test]
    fn the_weight_is_stable() {
        // Part of the protocol: a change here reassigns every probe of a mixed-version mesh.
        assert_eq!(
            weight(b"probe/api/db/eu", "n1"),
            weight(b"probe/api/db/eu", "n1")
        );
        assert_ne!(
            weight(b"probe/api/db/eu", "n1"),
            weight(b"probe/api/db/eu", "n2")
        );
        assert_ne!(weight(b"k", "ab"), weight(b"ka", "b"));
    }
}
