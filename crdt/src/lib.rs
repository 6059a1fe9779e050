//! statusmesh-crdt: the availability model on Automerge.
//!
//! A deterministic, pure library: it takes no timestamps from the operating system, makes no
//! IO and draws no ambient randomness. Time (`now_ms`), actor ids and seeds are arguments, so
//! the simulator can run the very same code reproducibly from a seed.
//!
//! - [`model`]: validated names, states and observations.
//! - [`doc`]: one service's Automerge document, local writes, remote changes, events.
//! - [`records`]: incidents, updates, maintenance windows, operator overrides.
//! - [`replica`]: all documents of a node plus the liveness map.
//! - [`history`]: timelines and uptime from the Automerge history and the archive.
//! - [`archive`]: the compact append-only archive of the writes of closed epochs.
//! - [`liveness`]: reporter heartbeats outside history (max-wins map).
//! - [`cursor`]: the mesh-wide cursor clients resume from.
//! - [`view`]: derived statuses, freshness and the page indicator.
//! - [`fuzz`]: the bodies of the fuzz targets, shared with their regression tests.
#![forbid(unsafe_code)]

pub mod archive;
pub mod cursor;
pub mod doc;
pub mod epoch;
pub mod error;
pub mod fuzz;
pub mod history;
pub mod liveness;
pub mod model;
pub mod records;
pub mod replica;
pub mod view;

pub use automerge::{ActorId, ChangeHash};
pub use cursor::Cursor;
pub use doc::{
    CellRead, DocEvent, IncidentEvent, MaintenanceEvent, OverrideEvent, Put, Read, RecordKey,
    RemoteApplied, ServiceDoc, StatusEvent,
};
pub use error::CrdtError;
pub use liveness::Liveness;
pub use model::{Name, Observation, State, StatusWrite};
pub use records::{Impact, Incident, IncidentStatus, IncidentUpdate, Maintenance, Override};
pub use replica::{IncidentChange, RemoteOutcome, Replica, WriteOutcome};
pub use view::{Freshness, Indicator, StatusView};
