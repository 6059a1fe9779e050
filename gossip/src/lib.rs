//! statusmesh-gossip: the sans-IO protocol core.
//!
//! A deterministic protocol implementation that takes no timestamps from the operating
//! system, opens no sockets and draws no ambient randomness, in the shape of quinn-proto:
//! `handle_*(now_ms, …)` in; `poll_transmit`, `poll_event`, `poll_timeout` out. The node
//! process (tokio + quinn) and the simulator (virtual time) are two drivers of the same
//! [`Node`], and call it through the same entry points ([`inputs`]). `clippy.toml` bans the
//! clock, ambient randomness and file, socket and process IO here.
//!
//! # Layout
//! - [`node`]: the state machine. `node/mod.rs` holds [`Node`] and its `handle_*`,
//!   `local_write*` and `poll_*`; one file per concern beside it: `config` ([`Config`],
//!   validated once by [`Config::validate`]), `peers` (peer table, failure detector glue),
//!   `broadcast`, `anti_entropy`, `liveness`, `acks`, `rollover` (trigger and proposer rule),
//!   `outbox` (the transmit and event queues).
//! - [`inputs`]: the batched entry points both drivers call (frames, writes, resume).
//! - [`plumtree`]: broadcast trees per root, the seen/missing cache, and the tree policy
//!   (`plumtree/tree_policy.rs`) that its module doc describes.
//! - [`membership`]: SWIM over foca, on virtual time. [`liveness_range`]: bucketed repair of
//!   the heartbeat map.
//! - [`rendezvous`]: which live member owns a piece of work (regional probes, webhook
//!   senders): highest-random-weight hashing over the members SWIM considers alive.
//!   [`webhooks`]: the sender rule on top of it (which (subscription, service) pairs this
//!   node sends, and the cursor a sender resumes with).
//! - [`codec`]: the wire format and its limits. [`version`]: which frame version and schema
//!   two nodes speak (the negotiation rule both drivers apply). [`topology`]: regions.toml,
//!   parsed from text.
//! - [`error`]: [`GossipError`] and [`ConfigError`]. [`invariants`]: the checker the
//!   simulator, the tests and `debug_assert!`s share ([`invariants::Violation`]).
//! - [`fuzz`]: the pure entry points of the fuzz targets.
//!
//! Dependencies point one way: `inputs` → `node` → `plumtree`, `membership`, `codec`,
//! `version`.
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
pub mod rendezvous;
pub mod topology;
pub mod version;
pub mod webhooks;

pub use codec::Frame;
pub use error::ConfigError;
pub use error::GossipError;
pub use inputs::{
    AcceptedBatch, InboundFrame, LocalWrite, RecordOp, Resume, WriteResult, RESUME_WAIT_MS,
};
pub use membership::MemberState;
pub use node::{Config, Event, Node, NodeId, Peer, PeerState, Stats, Transmit};
pub use topology::{LatencyModel, Topology, TopologyError};
pub use version::{Ranges, VersionError, VersionRange};
