//! Durable storage: per document a snapshot plus an append-only change log.
//!
//! Layout of a data directory:
//!
//! ```text
//! incarnation.json          {"node": "<id>", "incarnation": N, "actor": "<hex>"}
//! docs/<service>/snapshot   ServiceDoc::save(), replaced by atomic rename
//! docs/<service>/log        records: [len u32 LE][crc32 u32 LE][Automerge change bytes]
//! docs/<service>/archive    the writes of closed epochs (statusmesh_crdt::archive blocks)
//! alertmanager.json         the Alertmanager receiver's firing alerts (http::alertmanager)
//! ```
//!
//! Writes go through one storage thread (blocking file IO stays off the async driver). The
//! driver hands it [`Batch`]es; the thread takes every batch that is queued, appends their
//! records, fsyncs each touched log once (group commit), and only then sends the replies the
//! batches carry: a write is acknowledged after its change is on disk.
//!
//! On start a torn or corrupt log tail (a crash in the middle of an append) is truncated,
//! logged and counted; everything before it is intact because records are checksummed.
//!
//! - [`load`]: opening a data directory at start (incarnation, snapshots, logs).
//! - [`record`]: the log's record format and atomic file replacement.
//! - [`writer`]: the storage thread and its group commit.
//! - [`archive`]: the writes of closed epochs.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use statusmesh_crdt::{ActorId, Name, ServiceDoc};

mod archive;
mod load;
mod record;
#[cfg(test)]
mod tests;
mod writer;

pub use archive::{
    append_archive, archive_path, load_archive, load_archive_component, ARCHIVE_BYTES_MAX,
};
pub use load::{check, open, read_bounded};
pub use record::{encode_record, parse_log, write_atomically};
pub use writer::{Batch, DocWrite, StorageHandle};

/// Bytes of a record header: length and CRC32, both u32 little-endian.
const RECORD_HEADER_BYTES: usize = 8;
/// Largest record accepted when reading a log (one Automerge change); a larger length field
/// is corruption. 4 MiB, far above any change the schema allows.
pub const RECORD_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest snapshot read on start, in bytes (256 MiB).
pub const SNAPSHOT_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// Largest log read on start, in bytes (1 GiB); re-snapshots keep logs far smaller.
pub const LOG_BYTES_MAX: u64 = 1024 * 1024 * 1024;
/// Batches queued to the storage thread; a full queue makes the driver wait (backpressure).
pub const BATCH_QUEUE_MAX: usize = 256;
/// Largest incarnation file read, in bytes.
const INCARNATION_BYTES_MAX: u64 = 64 * 1024;

/// A storage error; it names the file and what failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// A file operation failed. Nothing was acknowledged for the batch it belonged to.
    #[error("{path}: {op}: {reason}")]
    Io {
        path: String,
        op: &'static str,
        reason: String,
    },
    /// The data directory holds another node's state; the node refuses to start.
    #[error("{path}: this data directory belongs to node {found:?}, not {expected:?}")]
    WrongNode {
        path: String,
        found: String,
        expected: String,
    },
    /// A file does not hold what it should; the node refuses to start.
    #[error("{path}: {reason}")]
    Corrupt { path: String, reason: String },
}

fn io_error<'a>(
    path: &'a Path,
    op: &'static str,
) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |e| StorageError::Io {
        path: path.display().to_string(),
        op,
        reason: e.to_string(),
    }
}

/// When a document's log is folded into a new snapshot.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotPolicy {
    /// Records in a log before a re-snapshot. Default 20,000.
    pub log_records_max: u64,
    /// Bytes in a log before a re-snapshot. Default 16 MiB.
    pub log_bytes_max: u64,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        Self {
            log_records_max: 20_000,
            log_bytes_max: 16 * 1024 * 1024,
        }
    }
}

/// What was found on disk at start.
#[derive(Debug)]
pub struct Loaded {
    /// This run's incarnation (1 for an empty data directory).
    pub incarnation: u64,
    /// This run's actor id: new on every start, never one that wrote before.
    pub actor: ActorId,
    /// The documents, with their snapshot and log applied.
    pub docs: Vec<ServiceDoc>,
    /// Per document: the log's record count and bytes, for the snapshot policy.
    pub logs: BTreeMap<Name, LogSize>,
    /// Log tails that were torn or corrupt and were truncated.
    pub truncated_tails: u64,
    /// The exclusive lock on the data directory; hand it to [`StorageHandle::start`], which
    /// holds it until the storage thread has stopped.
    pub lock: DirLock,
}

/// An exclusive lock on a data directory: two processes writing one log would corrupt it.
/// The kernel releases it when the process dies, even by `kill -9`.
#[derive(Debug)]
pub struct DirLock(#[allow(dead_code)] File);

/// The size of one document's log.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogSize {
    pub records: u64,
    pub bytes: u64,
}
