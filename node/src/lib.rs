//! statusmesh-node: the `statusmesh` process, a thin tokio driver of the gossip core.
//!
//! Modules by concern; `use` arrows point one way (down this list, never up):
//! - [`cli`]: the flags of `statusmesh run` (shared by `check-config`);
//!   [`check_config`]: what `run` checks before it serves, without serving.
//! - [`start`]: starting a node; the only module that knows both the driver and `http`.
//! - [`http`]: the client contract (JSON, SSE, health, metrics), its server loop and limits;
//!   it holds the driver's [`driver::NodeHandle`].
//! - [`probe`]: the regional prober: runs the checks this node owns (rendezvous over its
//!   region's live members) and writes their observations through the driver's handle.
//! - [`notify`]: outgoing webhooks: the (subscription, service) pairs this node sends
//!   (rendezvous over the mesh's live members), signed, retried, resumed from replicated
//!   progress.
//! - [`driver`]: the one task that owns the gossip state machine, storage glue and metrics.
//! - [`storage`]: snapshots and change logs on disk, group commit, archives.
//! - [`transport`]: QUIC (quinn) with mutual TLS between nodes; [`reload`]: its identity
//!   reloaded on SIGHUP or when the files change.
//! - [`settings`]: node settings beyond regions.toml (tokens, limits).
//! - [`config`]: regions.toml into validated types.
//! - [`certs`]: the cluster CA and node certificates.
//! - [`client`]: the client commands (`get`, `set`, `incident`, `watch`).
//! - [`bench`]: `statusmesh bench write`, `bench sse` and `bench soak`.
//! - [`fuzz`]: the bodies of the fuzz targets, shared with their regression tests.
//! - [`telemetry`]: the catalogue of metrics (name, type, help), described to the recorder.
#![forbid(unsafe_code)]

pub mod bench;
pub mod certs;
pub mod check_config;
pub mod cli;
pub mod client;
pub mod config;
pub mod driver;
pub mod fuzz;
pub mod http;
pub mod notify;
pub mod probe;
pub mod reload;
pub mod settings;
pub mod start;
pub mod storage;
pub mod telemetry;
pub mod transport;
