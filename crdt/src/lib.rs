//! statusmesh-crdt: the availability model on Automerge.
//!
//! A deterministic, pure library: it takes no timestamps from the operating system, makes no
//! IO (no files, sockets or processes: `clippy.toml` bans them) and draws no ambient
//! randomness. Time (`now_ms`), actor ids and seeds are arguments, bytes come in and go out
//! as values, so the simulator can run the very same code reproducibly from a seed.
//!
//! # Layout
//! Each module uses only modules below it in this list (the unit tests of `doc` read views).
//!
//! - [`flags`]: feature flags: specs validated into records (stored by `doc` under
//!   `flag/<key>`), the pure evaluator, consistent-hash splits, staged rollouts, and
//!   [`flags::FlagSet`] over a `replica`.
//! - [`fuzz`]: the bodies of the fuzz targets, shared with their regression tests (pure; the
//!   tests read the corpus files through `fuzz/corpus.rs`).
//! - [`replica`]: all documents of a node plus the liveness map; the entry point of the
//!   drivers (local writes, remote batches, rollovers, cursors, views).
//! - [`history`]: timelines and uptime from the Automerge history and the archive.
//! - [`view`]: derived statuses, freshness and the page indicator.
//! - [`archive`]: the compact append-only archive of the writes of closed epochs, a directory
//!   (`encode`, `decode`).
//! - [`doc`]: one service's Automerge document, a directory by concern: `schema` (the only
//!   code that knows the root keys), `decode` (hostile input, read-only), `local` (writes,
//!   planned then committed), `remote` (applying a decoded batch), `rollover` (epochs in the
//!   document), `events` and `reads`.
//! - [`epoch`]: the epoch protocol itself (actors, clocks, base changes, carried writes).
//! - [`cursor`]: the mesh-wide cursor clients resume from.
//! - [`liveness`]: reporter heartbeats outside history (max-wins map).
//! - [`records`] and [`model`]: validated names, states, observations, incidents, updates,
//!   maintenance windows, overrides.
//! - [`checks`] and [`agreement`]: regional probe checks as records, and the k-of-n rule
//!   that decides a probe-backed component's status.
//! - [`error`]: [`CrdtError`]; each variant says whose fault it is and what it changed.
#![forbid(unsafe_code)]

pub mod agreement;
pub mod archive;
pub mod checks;
pub mod cursor;
pub mod doc;
pub mod epoch;
pub mod error;
pub mod flags;
pub mod fuzz;
pub mod history;
pub mod liveness;
pub mod model;
pub mod records;
pub mod replica;
mod resume;
pub mod view;
pub mod webhooks;

pub use automerge::{ActorId, ChangeHash};
pub use cursor::{Cursor, Within};
pub use doc::{
    transition_id, CellRead, CoalesceReason, Coalesced, Delivery, DocEvent, FlagEvent,
    IncidentEvent, MaintenanceEvent, OverrideEvent, Put, Read, RecordKey, RemoteApplied,
    ServiceDoc, StatusEvent, Transition, SCHEMA_VERSION, SCHEMA_VERSION_MIN, TRANSITIONS_MAX,
};
pub use error::CrdtError;
pub use liveness::Liveness;
pub use model::{Name, Observation, State, StatusWrite};
pub use records::{Impact, Incident, IncidentStatus, IncidentUpdate, Maintenance, Override};
pub use replica::{IncidentChange, RemoteOutcome, Replica, WriteOutcome};
pub use view::{Freshness, Indicator, StatusView};
