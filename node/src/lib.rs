//! statusmesh-node: the `statusmesh` process, a thin tokio driver of the gossip core.
//!
//! - [`config`]: regions.toml into validated types.
//! - [`certs`]: the cluster CA and node certificates.
//! - [`client`]: the client commands (`get`, `set`, `incident`, `watch`).
//! - [`transport`]: QUIC (quinn) with mutual TLS between nodes.
//! - [`runtime`]: the one task that owns the state machine, and the node's start-up.
//! - [`api_records`]: incidents, maintenance, overrides and history over HTTP.
//! - [`http`]: the client contract (JSON, SSE, health, metrics).
//! - [`serve`]: the HTTP server loop, with a header read timeout.
//! - [`storage`]: snapshots and change logs on disk, group commit.
//! - [`settings`]: node settings beyond regions.toml (tokens, limits).
//! - [`bench`]: `statusmesh bench write`.
//! - [`fuzz`]: the bodies of the fuzz targets, shared with their regression tests.
#![forbid(unsafe_code)]

pub mod api_records;
pub mod bench;
pub mod bench_sse;
pub mod certs;
pub mod client;
pub mod config;
pub mod fuzz;
pub mod http;
pub mod limits;
pub mod runtime;
pub mod serve;
pub mod settings;
pub mod sse_front;
pub mod storage;
pub mod transport;
