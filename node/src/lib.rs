//! statusmesh-node: the `statusmesh` process, a thin tokio driver of the gossip core.
//!
//! - [`config`]: regions.toml into validated types.
//! - [`certs`]: the cluster CA and node certificates.
//! - [`transport`]: QUIC (quinn) with mutual TLS between nodes.
//! - [`runtime`]: the one task that owns the state machine, and the node's start-up.
//! - [`http`]: the client contract (JSON, SSE, health).
#![forbid(unsafe_code)]

pub mod certs;
pub mod config;
pub mod http;
pub mod runtime;
pub mod transport;
