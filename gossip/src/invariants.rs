//! Protocol invariants, as one checker shared by the simulator, tests and `debug_assert!`s.
//!
//! Each condition is stated from the public API and is cheap (constant or logarithmic in the
//! number of peers), so the simulator runs it after every event and the node after every input
//! in debug builds. A broken invariant is a [`Violation`] that carries the values involved.

use statusmesh_crdt::liveness::LIVENESS_ENTRIES_MAX;
use statusmesh_crdt::replica::SERVICES_MAX;

use crate::node::Node;
use crate::plumtree::BroadcastViolation;

/// A protocol invariant that does not hold, with the values involved. Its `Display` is one
/// line, for the simulator's failure report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    #[error("node {node} lists itself as a peer")]
    ListsItself { node: String },
    #[error("{queued} frames queued, above transmit_queue_max {max}")]
    TransmitQueueOverfull { queued: usize, max: usize },
    #[error("{queued} events queued, above event_queue_max {max}")]
    EventQueueOverfull { queued: usize, max: usize },
    #[error("{rejected} frames rejected out of only {received} received")]
    MoreRejectedThanReceived { rejected: u64, received: u64 },
    /// Every encoded frame has at least a version byte and a frame tag.
    #[error("{bytes} bytes sent in {frames} frames, below two bytes a frame")]
    FramesTooShort { bytes: u64, frames: u64 },
    #[error("{rounds} anti-entropy rounds ran without peers")]
    AntiEntropyWithoutPeers { rounds: u64 },
    #[error("no timer armed: anti-entropy would stop")]
    NoTimerArmed,
    #[error("{services} services held, above SERVICES_MAX {max}")]
    TooManyServices { services: usize, max: usize },
    #[error(transparent)]
    Broadcast(#[from] BroadcastViolation),
    #[error("{entries} liveness entries, above LIVENESS_ENTRIES_MAX {max}")]
    TooManyLivenessEntries { entries: usize, max: usize },
}

/// Checks the invariants of `node`; the error names the first one that does not hold, with
/// the values involved. Never changes the node.
pub fn check(node: &Node) -> Result<(), Violation> {
    let config = node.config();
    if node.peers().contains_key(node.id()) {
        return Err(Violation::ListsItself {
            node: node.id().to_owned(),
        });
    }
    if node.transmits_queued() > config.transmit_queue_max {
        return Err(Violation::TransmitQueueOverfull {
            queued: node.transmits_queued(),
            max: config.transmit_queue_max,
        });
    }
    if node.events_queued() > config.event_queue_max {
        return Err(Violation::EventQueueOverfull {
            queued: node.events_queued(),
            max: config.event_queue_max,
        });
    }
    let stats = node.stats();
    if stats.frames_rejected > stats.frames_in {
        return Err(Violation::MoreRejectedThanReceived {
            rejected: stats.frames_rejected,
            received: stats.frames_in,
        });
    }
    if stats.bytes_out < 2 * stats.frames_out {
        return Err(Violation::FramesTooShort {
            bytes: stats.bytes_out,
            frames: stats.frames_out,
        });
    }
    if stats.anti_entropy_rounds > 0 && node.peers().is_empty() {
        return Err(Violation::AntiEntropyWithoutPeers {
            rounds: stats.anti_entropy_rounds,
        });
    }
    if node.poll_timeout().is_none() {
        return Err(Violation::NoTimerArmed);
    }
    let services = node.replica().docs().count();
    if services > SERVICES_MAX {
        return Err(Violation::TooManyServices {
            services,
            max: SERVICES_MAX,
        });
    }
    node.broadcast_state().check(node.id())?;
    let liveness = node.replica().liveness().len();
    if liveness > LIVENESS_ENTRIES_MAX {
        return Err(Violation::TooManyLivenessEntries {
            entries: liveness,
            max: LIVENESS_ENTRIES_MAX,
        });
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
