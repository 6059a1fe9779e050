//! Protocol invariants, as one checker shared by the simulator, tests and `debug_assert!`s.
//!
//! Each condition is stated from the public API and is cheap (constant or logarithmic in the
//! number of peers), so the simulator runs it after every event and the node after every input
//! in debug builds.

use statusmesh_crdt::liveness::LIVENESS_ENTRIES_MAX;
use statusmesh_crdt::replica::SERVICES_MAX;

use crate::node::Node;

/// Checks the invariants of `node`; the error names the first one that does not hold, with
/// the values involved. Never changes the node.
pub fn check(node: &Node) -> Result<(), String> {
    let config = node.config();
    if node.peers().contains_key(node.id()) {
        return Err(format!("node {} lists itself as a peer", node.id()));
    }
    if node.transmits_queued() > config.transmit_queue_max {
        return Err(format!(
            "{} frames queued, above transmit_queue_max {}",
            node.transmits_queued(),
            config.transmit_queue_max
        ));
    }
    if node.events_queued() > config.event_queue_max {
        return Err(format!(
            "{} events queued, above event_queue_max {}",
            node.events_queued(),
            config.event_queue_max
        ));
    }
    let stats = node.stats();
    if stats.frames_rejected > stats.frames_in {
        return Err(format!(
            "{} frames rejected out of only {} received",
            stats.frames_rejected, stats.frames_in
        ));
    }
    // Every encoded frame has at least a version byte and a frame tag.
    if stats.bytes_out < 2 * stats.frames_out {
        return Err(format!(
            "{} bytes sent in {} frames, below two bytes a frame",
            stats.bytes_out, stats.frames_out
        ));
    }
    if stats.anti_entropy_rounds > 0 && node.peers().is_empty() {
        return Err("anti-entropy rounds ran without peers".to_owned());
    }
    if node.poll_timeout().is_none() {
        return Err("no timer armed: anti-entropy would stop".to_owned());
    }
    let services = node.replica().docs().count();
    if services > SERVICES_MAX {
        return Err(format!(
            "{services} services held, above SERVICES_MAX {SERVICES_MAX}"
        ));
    }
    node.broadcast_state().check(node.id())?;
    let liveness = node.replica().liveness().len();
    if liveness > LIVENESS_ENTRIES_MAX {
        return Err(format!(
            "{liveness} liveness entries, above LIVENESS_ENTRIES_MAX {LIVENESS_ENTRIES_MAX}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{Config, Peer};
    use statusmesh_crdt::{ActorId, Replica};

    #[test]
    fn a_fresh_node_satisfies_every_invariant() {
        let peers = vec![
            Peer {
                id: "a".into(),
                region: "r".into(),
            },
            Peer {
                id: "b".into(),
                region: "r".into(),
            },
        ];
        let replica = Replica::new("a", ActorId::from(vec![1; 16]));
        let mut node = Node::new("a".into(), Config::wan(), peers, replica, 7);
        assert_eq!(check(&node), Ok(()));
        node.handle_timeout(0);
        assert_eq!(check(&node), Ok(()));
    }

    #[test]
    fn a_node_given_itself_as_a_peer_does_not_list_it() {
        let peers = vec![Peer {
            id: "a".into(),
            region: "r".into(),
        }];
        let replica = Replica::new("a", ActorId::from(vec![1; 16]));
        let mut node = Node::new("a".into(), Config::wan(), peers, replica, 7);
        node.handle_timeout(0);
        assert_eq!(check(&node), Ok(()));
        assert_eq!(node.stats().anti_entropy_rounds, 0);
    }
}
