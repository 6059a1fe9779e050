//! statusmesh-gossip: the sans-IO protocol core.
//!
//! A deterministic protocol implementation that takes no timestamps from the operating
//! system, opens no sockets and draws no ambient randomness, in the shape of quinn-proto:
//! `handle_*(now_ms, …)` in; `poll_transmit`, `poll_event`, `poll_timeout` out. The node
//! process (tokio + quinn) and the simulator (virtual time) are two drivers of the same
//! [`Node`].
#![forbid(unsafe_code)]

pub mod codec;
pub mod error;
pub mod fuzz;
pub mod inputs;
pub mod invariants;
pub mod liveness_range;
pub mod membership;
pub mod node;
pub mod plumtree;
pub mod topology;

pub use codec::Frame;
pub use error::GossipError;
pub use inputs::{
    AcceptedBatch, InboundFrame, LocalWrite, RecordOp, Resume, WriteResult, RESUME_WAIT_MS,
};
pub use membership::MemberState;
pub use node::{Config, Event, Node, NodeId, Peer, PeerState, Stats, Transmit};
pub use topology::{LatencyModel, Topology, TopologyError};
