//! Durable storage: per document a snapshot plus an append-only change log.
//!
//! Layout of a data directory:
//!
//! ```text
//! incarnation.json          {"node": "<id>", "incarnation": N, "actor": "<hex>"}
//! docs/<service>/snapshot   ServiceDoc::save(), replaced by atomic rename
//! docs/<service>/log        records: [len u32 LE][crc32 u32 LE][Automerge change bytes]
//! docs/<service>/archive    the writes of closed epochs (statusmesh_crdt::archive blocks)
//! ```
//!
//! Writes go through one storage thread (blocking file IO stays off the async driver). The
//! driver hands it [`Batch`]es; the thread takes every batch that is queued, appends their
//! records, fsyncs each touched log once (group commit), and only then sends the replies the
//! batches carry: a write is acknowledged after its change is on disk.
//!
//! On start a torn or corrupt log tail (a crash in the middle of an append) is truncated,
//! logged and counted; everything before it is intact because records are checksummed.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use statusmesh_crdt::archive::{ArchiveReader, ArchiveWriter, ArchivedWrite};
use statusmesh_crdt::{ActorId, ChangeHash, Name, ServiceDoc};
use tracing::{error, info, warn};

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

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IncarnationFile {
    node: String,
    incarnation: u64,
    actor: String,
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

/// Opens (or creates) the data directory of `node_id`: records a new incarnation and actor
/// id, then loads every document. The actor is written to disk before it is returned, so it
/// is never used twice, even if this start crashes.
pub fn open(dir: &Path, node_id: &str) -> Result<Loaded, StorageError> {
    fs::create_dir_all(dir.join("docs")).map_err(io_error(dir, "create directory"))?;
    let lock_path = dir.join("lock");
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_error(&lock_path, "open"))?;
    lock_file.try_lock().map_err(|e| StorageError::Io {
        path: lock_path.display().to_string(),
        op: "lock",
        reason: format!("{e} (is another statusmesh process using this data directory?)"),
    })?;
    let incarnation = next_incarnation(dir, node_id)?;
    let actor_bytes: [u8; 16] = rand::random();
    let actor = ActorId::from(actor_bytes.to_vec());
    write_atomically(
        &dir.join("incarnation.json"),
        &serde_json::to_vec_pretty(&IncarnationFile {
            node: node_id.to_owned(),
            incarnation,
            actor: actor.to_hex_string(),
        })
        .map_err(|e| StorageError::Corrupt {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?,
    )?;
    let mut loaded = Loaded {
        incarnation,
        actor: actor.clone(),
        docs: Vec::new(),
        logs: BTreeMap::new(),
        truncated_tails: 0,
        lock: DirLock(lock_file),
    };
    let docs_dir = dir.join("docs");
    let mut entries: Vec<PathBuf> = fs::read_dir(&docs_dir)
        .map_err(io_error(&docs_dir, "list"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    entries.sort();
    for path in entries {
        let Some(service) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| Name::parse("service", n).ok())
        else {
            warn!(path = %path.display(), "not a service directory; ignored");
            continue;
        };
        let (doc, size, truncated) = load_doc(&path, service.clone(), actor.clone())?;
        loaded.truncated_tails += u64::from(truncated);
        loaded.logs.insert(service, size);
        loaded.docs.push(doc);
    }
    info!(
        dir = %dir.display(),
        incarnation,
        docs = loaded.docs.len(),
        truncated_tails = loaded.truncated_tails,
        "storage loaded"
    );
    Ok(loaded)
}

fn next_incarnation(dir: &Path, node_id: &str) -> Result<u64, StorageError> {
    let path = dir.join("incarnation.json");
    let text = match File::open(&path) {
        Ok(file) => {
            let mut text = String::new();
            file.take(INCARNATION_BYTES_MAX)
                .read_to_string(&mut text)
                .map_err(io_error(&path, "read"))?;
            text
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(1),
        Err(e) => return Err(io_error(&path, "open")(e)),
    };
    let file: IncarnationFile = serde_json::from_str(&text).map_err(|e| StorageError::Corrupt {
        path: path.display().to_string(),
        reason: format!("not a valid incarnation file: {e}"),
    })?;
    if file.node != node_id {
        return Err(StorageError::WrongNode {
            path: path.display().to_string(),
            found: file.node,
            expected: node_id.to_owned(),
        });
    }
    Ok(file.incarnation.saturating_add(1))
}

/// Loads one document: its snapshot (if any), then its log records in bounded batches.
/// Returns the document, its log size, and whether a torn tail was truncated.
fn load_doc(
    dir: &Path,
    service: Name,
    actor: ActorId,
) -> Result<(ServiceDoc, LogSize, bool), StorageError> {
    let snapshot_path = dir.join("snapshot");
    let mut doc = match read_bounded(&snapshot_path, SNAPSHOT_BYTES_MAX)? {
        Some(bytes) => {
            ServiceDoc::load(service.clone(), &bytes, actor).map_err(|e| StorageError::Corrupt {
                path: snapshot_path.display().to_string(),
                reason: e.to_string(),
            })?
        }
        None => ServiceDoc::new(service.clone(), actor),
    };
    let log_path = dir.join("log");
    let (records, valid_bytes, torn) = match read_bounded(&log_path, LOG_BYTES_MAX)? {
        Some(bytes) => {
            let (records, valid) = parse_log(&bytes);
            (records, valid as u64, valid < bytes.len())
        }
        None => (Vec::new(), 0, false),
    };
    if torn {
        warn!(
            path = %log_path.display(),
            kept_bytes = valid_bytes,
            "torn or corrupt log tail; truncating"
        );
        let file = OpenOptions::new()
            .write(true)
            .open(&log_path)
            .map_err(io_error(&log_path, "open"))?;
        file.set_len(valid_bytes)
            .map_err(io_error(&log_path, "truncate"))?;
        file.sync_all().map_err(io_error(&log_path, "fsync"))?;
    }
    doc.load_incremental(&records)
        .map_err(|e| StorageError::Corrupt {
            path: log_path.display().to_string(),
            reason: e.to_string(),
        })?;
    // The epoch before the current one: without it only older cursors get a snapshot, so a
    // bad file is logged and skipped rather than refusing to start.
    let prev_path = dir.join("prev");
    if let Some(bytes) = read_bounded(&prev_path, SNAPSHOT_BYTES_MAX)? {
        if let Err(e) = doc.attach_prev(&bytes) {
            warn!(path = %prev_path.display(), error = %e, "previous epoch does not load; skipped");
        }
    }
    let size = LogSize {
        records: records.len() as u64,
        bytes: valid_bytes,
    };
    Ok((doc, size, torn))
}

/// Reads a whole file of at most `limit` bytes; `None` when it does not exist.
fn read_bounded(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, StorageError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path, "open")(e)),
    };
    let len = file.metadata().map_err(io_error(path, "stat"))?.len();
    if len > limit {
        return Err(StorageError::Corrupt {
            path: path.display().to_string(),
            reason: format!("{len} bytes is over the limit of {limit}"),
        });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limit)
        .read_to_end(&mut bytes)
        .map_err(io_error(path, "read"))?;
    Ok(Some(bytes))
}

/// Splits a log into records; stops at the first incomplete or corrupt one. Returns the
/// records and the number of bytes that hold valid records.
pub fn parse_log(bytes: &[u8]) -> (Vec<Vec<u8>>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + RECORD_HEADER_BYTES) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > RECORD_BYTES_MAX {
            break;
        }
        let start = at + RECORD_HEADER_BYTES;
        let Some(payload) = bytes.get(start..start + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        records.push(payload.to_vec());
        at = start + len;
    }
    (records, at)
}

/// Appends one record (header and payload) to `out`.
pub fn encode_record(out: &mut Vec<u8>, payload: &[u8]) {
    debug_assert!(payload.len() <= RECORD_BYTES_MAX);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new file whole:
/// write a temporary file, fsync it, rename it over `path`, fsync the directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(io_error(&tmp, "create"))?;
    file.write_all(bytes).map_err(io_error(&tmp, "write"))?;
    file.sync_all().map_err(io_error(&tmp, "fsync"))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io_error(path, "rename"))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir, "fsync directory"))
}

/// New state of one document for the storage thread.
#[derive(Debug)]
pub struct DocWrite {
    pub service: Name,
    /// Change records to append, in order.
    pub records: Vec<Vec<u8>>,
    /// A snapshot that covers every change so far, including `records`: when present it
    /// replaces the snapshot and the log starts over empty.
    pub snapshot: Option<Vec<u8>>,
    /// The previous epoch's whole document, after a rollover: written (atomically) before
    /// the new epoch's snapshot, so cursors of that epoch still resume after a restart.
    pub prev: Option<Vec<u8>>,
    /// The writes of the epoch that just closed, appended to the document's archive (the
    /// audit trail) before anything else of this write.
    pub archive: Vec<ArchivedWrite>,
}

/// One unit of work: document writes, then the acknowledgements to send once they are durable.
pub struct Batch {
    pub docs: Vec<DocWrite>,
    /// Sent only after every record of this batch (and of all earlier ones) is fsynced.
    /// Dropped unsent when storage fails, so the writer sees an error, never a false ack.
    pub on_durable: Vec<Box<dyn FnOnce() + Send>>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("docs", &self.docs)
            .field("on_durable", &self.on_durable.len())
            .finish()
    }
}

/// The driver's side of the storage thread.
#[derive(Debug)]
pub struct StorageHandle {
    batches: tokio::sync::mpsc::Sender<Batch>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StorageHandle {
    /// Starts the storage thread for `dir`, which holds `lock` until it stops. `node` labels
    /// its metrics.
    pub fn start(dir: PathBuf, node: String, lock: DirLock) -> Result<Self, StorageError> {
        let (tx, rx) = tokio::sync::mpsc::channel(BATCH_QUEUE_MAX);
        let thread = std::thread::Builder::new()
            .name(format!("storage-{node}"))
            .spawn(move || {
                storage_thread(dir, node, rx);
                drop(lock);
            })
            .map_err(|e| StorageError::Io {
                path: String::new(),
                op: "spawn storage thread",
                reason: e.to_string(),
            })?;
        Ok(Self {
            batches: tx,
            thread: Some(thread),
        })
    }

    /// Queues a batch; waits while the queue is full. False when the thread has stopped.
    pub async fn submit(&self, batch: Batch) -> bool {
        self.batches.send(batch).await.is_ok()
    }

    /// Batches waiting for the storage thread.
    pub fn queued(&self) -> usize {
        BATCH_QUEUE_MAX - self.batches.capacity()
    }

    /// Stops taking batches, lets the thread write and fsync what is queued, and waits.
    pub async fn close(mut self) {
        let thread = self.thread.take();
        drop(self);
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

struct OpenLog {
    file: File,
    path: PathBuf,
    bytes: u64,
    snapshot_bytes: u64,
}

fn storage_thread(dir: PathBuf, node: String, mut batches: tokio::sync::mpsc::Receiver<Batch>) {
    let mut logs: BTreeMap<Name, OpenLog> = BTreeMap::new();
    let mut failed = false;
    while let Some(first) = batches.blocking_recv() {
        // Group commit: take everything queued now, one fsync per touched log for all of it.
        let mut group = vec![first];
        while group.len() < BATCH_QUEUE_MAX {
            match batches.try_recv() {
                Ok(batch) => group.push(batch),
                Err(_) => break,
            }
        }
        if failed {
            // After a failed fsync nothing on disk can be trusted to match what was
            // acknowledged; refuse to acknowledge anything more (writers get errors).
            continue;
        }
        match commit_group(&dir, &node, &mut logs, &mut group) {
            Ok(()) => {
                for batch in group {
                    for ack in batch.on_durable {
                        ack();
                    }
                }
            }
            Err(e) => {
                error!(%node, error = %e, "storage failed; writes are no longer acknowledged");
                metrics::counter!("statusmesh_storage_errors_total", "node" => node.clone())
                    .increment(1);
                failed = true;
            }
        }
    }
    for (_, log) in logs {
        let _ = log.file.sync_all();
    }
}

fn commit_group(
    dir: &Path,
    node: &str,
    logs: &mut BTreeMap<Name, OpenLog>,
    group: &mut [Batch],
) -> Result<(), StorageError> {
    let mut touched: Vec<Name> = Vec::new();
    let mut buffers: BTreeMap<Name, Vec<u8>> = BTreeMap::new();
    let mut records = 0u64;
    for batch in group.iter_mut() {
        for write in std::mem::take(&mut batch.docs) {
            if !logs.contains_key(&write.service) {
                let log = open_log(dir, &write.service)?;
                logs.insert(write.service.clone(), log);
            }
            if !write.archive.is_empty() {
                append_archive(
                    &dir.join("docs").join(write.service.as_str()),
                    &write.archive,
                )?;
            }
            if let Some(prev) = &write.prev {
                let path = dir.join("docs").join(write.service.as_str()).join("prev");
                write_atomically(&path, prev)?;
            }
            if let Some(snapshot) = write.snapshot {
                // The snapshot holds every change so far: what is buffered for this log is
                // in it too, and the log starts over.
                buffers.remove(&write.service);
                if let Some(log) = logs.get_mut(&write.service) {
                    replace_snapshot(dir, &write.service, log, &snapshot)?;
                }
                continue;
            }
            let buffer = buffers.entry(write.service.clone()).or_default();
            for record in &write.records {
                encode_record(buffer, record);
                records += 1;
            }
            if !touched.contains(&write.service) {
                touched.push(write.service);
            }
        }
    }
    let started = Instant::now();
    for service in &touched {
        let (Some(log), Some(buffer)) = (logs.get_mut(service), buffers.get(service)) else {
            continue;
        };
        log.file
            .write_all(buffer)
            .map_err(io_error(&log.path, "append"))?;
        log.bytes += buffer.len() as u64;
    }
    for service in &touched {
        if let Some(log) = logs.get_mut(service) {
            log.file.sync_data().map_err(io_error(&log.path, "fsync"))?;
            metrics::gauge!("statusmesh_document_bytes", "node" => node.to_owned(), "service" => service.to_string())
                .set((log.bytes + log.snapshot_bytes) as f64);
        }
    }
    if !touched.is_empty() {
        metrics::histogram!("statusmesh_storage_fsync_ms", "node" => node.to_owned())
            .record(started.elapsed().as_secs_f64() * 1_000.0);
        metrics::counter!("statusmesh_storage_records_total", "node" => node.to_owned())
            .increment(records);
    }
    metrics::histogram!("statusmesh_storage_group_batches", "node" => node.to_owned())
        .record(group.len() as f64);
    Ok(())
}

fn open_log(dir: &Path, service: &Name) -> Result<OpenLog, StorageError> {
    let doc_dir = dir.join("docs").join(service.as_str());
    let created = !doc_dir.exists();
    fs::create_dir_all(&doc_dir).map_err(io_error(&doc_dir, "create directory"))?;
    if created {
        // The new directory entry must be durable too, or a crash could lose the whole log.
        sync_dir(&dir.join("docs"))?;
    }
    let path = doc_dir.join("log");
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io_error(&path, "open"))?;
    let bytes = file.metadata().map_err(io_error(&path, "stat"))?.len();
    let snapshot_bytes = fs::metadata(doc_dir.join("snapshot"))
        .map(|m| m.len())
        .unwrap_or(0);
    Ok(OpenLog {
        file,
        path,
        bytes,
        snapshot_bytes,
    })
}

/// Replaces a document's snapshot atomically, then empties its log. A crash in between
/// leaves the new snapshot with the old log, whose changes it already holds (loading them
/// again changes nothing).
fn replace_snapshot(
    dir: &Path,
    service: &Name,
    log: &mut OpenLog,
    snapshot: &[u8],
) -> Result<(), StorageError> {
    let path = dir.join("docs").join(service.as_str()).join("snapshot");
    write_atomically(&path, snapshot)?;
    log.file
        .set_len(0)
        .map_err(io_error(&log.path, "truncate"))?;
    log.file.sync_all().map_err(io_error(&log.path, "fsync"))?;
    log.bytes = 0;
    log.snapshot_bytes = snapshot.len() as u64;
    info!(service = %service, bytes = snapshot.len(), "re-snapshot");
    Ok(())
}

/// What the driver remembers per document about what it handed to storage.
#[derive(Debug, Default)]
pub struct Persisted {
    pub heads: Vec<ChangeHash>,
    pub log: LogSize,
    /// The epoch and base of the document as persisted: a new one means a rollover, which
    /// is saved as a new snapshot (and the closed epoch as `prev`), not appended to the log.
    pub epoch: (u32, Option<ChangeHash>),
    /// The document's [`statusmesh_crdt::ServiceDoc::irregular_applies`] when last persisted.
    pub irregular_applies: u64,
    /// The last closed epoch whose writes went to the archive.
    pub archived_epoch: Option<u32>,
}

/// Largest archive read, in bytes (256 MiB: some thirty million transitions at about eight
/// bytes each). A larger file is refused (reads and appends fail with `Corrupt`).
pub const ARCHIVE_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// Serialises the archive functions of this process: a read that met a block still being
/// appended would take it for a torn tail and truncate it.
static ARCHIVE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The archive file of a document directory (`DIR/docs/<service>/archive`).
pub fn archive_path(dir_of_service: &Path) -> PathBuf {
    dir_of_service.join("archive")
}

/// Appends the writes of a closed epoch to the document's archive (one append of one block,
/// or a few when they are very many) and fsyncs it before returning, so a rollover may drop
/// the closed epoch once this returns. Blocking: call it off the async driver. A torn tail
/// left by a crash is truncated first (logged and counted), since blocks after it would be
/// unreadable. Returns the bytes appended (0 for no writes). Reads the archive first to
/// rebuild its intern table: rollovers are rare next to writes.
pub fn append_archive(
    dir_of_service: &Path,
    writes: &[ArchivedWrite],
) -> Result<u64, StorageError> {
    if writes.is_empty() {
        return Ok(0);
    }
    let _guard = ARCHIVE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    fs::create_dir_all(dir_of_service).map_err(io_error(dir_of_service, "create directory"))?;
    let path = archive_path(dir_of_service);
    let existing = read_bounded(&path, ARCHIVE_BYTES_MAX)?;
    let is_new = existing.is_none();
    let existing = existing.unwrap_or_default();
    let (mut writer, valid) = ArchiveWriter::resume(&existing);
    if valid < existing.len() {
        truncate_archive(&path, valid as u64, existing.len() as u64)?;
    }
    let bytes = writer.encode(writes);
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io_error(&path, "open"))?;
    file.write_all(&bytes).map_err(io_error(&path, "append"))?;
    file.sync_all().map_err(io_error(&path, "fsync"))?;
    if is_new {
        sync_dir(dir_of_service)?;
    }
    Ok(bytes.len() as u64)
}

/// Every write of the document's archive, oldest epoch first; empty when it has none.
/// Blocking. A torn or corrupt tail is truncated (logged and counted), as on start.
pub fn load_archive(dir_of_service: &Path) -> Result<Vec<ArchivedWrite>, StorageError> {
    read_archive(dir_of_service, ArchiveReader::read)
}

/// The archived writes of one component only (what a history request needs; the rest of
/// the archive is checked but not kept). Otherwise as [`load_archive`].
pub fn load_archive_component(
    dir_of_service: &Path,
    component: &Name,
) -> Result<Vec<ArchivedWrite>, StorageError> {
    read_archive(dir_of_service, |bytes| {
        ArchiveReader::read_component(bytes, component)
    })
}

fn read_archive(
    dir_of_service: &Path,
    decode: impl FnOnce(&[u8]) -> (Vec<ArchivedWrite>, usize),
) -> Result<Vec<ArchivedWrite>, StorageError> {
    let _guard = ARCHIVE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let path = archive_path(dir_of_service);
    let Some(bytes) = read_bounded(&path, ARCHIVE_BYTES_MAX)? else {
        return Ok(Vec::new());
    };
    let (writes, valid) = decode(&bytes);
    if valid < bytes.len() {
        truncate_archive(&path, valid as u64, bytes.len() as u64)?;
    }
    Ok(writes)
}

/// Cuts an archive's torn or corrupt tail: everything from `valid` on.
fn truncate_archive(path: &Path, valid: u64, len: u64) -> Result<(), StorageError> {
    let service = path
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    warn!(
        path = %path.display(),
        kept_bytes = valid,
        dropped_bytes = len - valid,
        "torn or corrupt archive tail; truncating"
    );
    metrics::counter!("statusmesh_storage_archive_truncated_tails_total", "service" => service)
        .increment(1);
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_error(path, "open"))?;
    file.set_len(valid).map_err(io_error(path, "truncate"))?;
    file.sync_all().map_err(io_error(path, "fsync"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use statusmesh_crdt::{Observation, Replica, State, StatusWrite};

    fn write(component: &str, message: &str) -> StatusWrite {
        StatusWrite::parse(
            "api",
            component,
            "eu-west",
            Observation {
                state: State::Operational,
                message: message.into(),
                reporter: "probe".into(),
                observed_at_ms: 1_000,
                ttl_ms: 60_000,
            },
        )
        .expect("valid write")
    }

    #[test]
    fn a_log_stops_at_the_first_torn_or_corrupt_record() {
        let mut bytes = Vec::new();
        encode_record(&mut bytes, b"one");
        encode_record(&mut bytes, b"two");
        let whole = bytes.len();
        encode_record(&mut bytes, b"three");
        let (records, valid) = parse_log(&bytes);
        assert_eq!(records.len(), 3);
        assert_eq!(valid, bytes.len());
        // Torn: the last record is cut short.
        let (records, valid) = parse_log(&bytes[..bytes.len() - 2]);
        assert_eq!(records, vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(valid, whole);
        // Corrupt: a flipped payload byte fails its checksum.
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        assert_eq!(parse_log(&bytes).1, whole);
    }

    #[tokio::test]
    async fn changes_written_before_a_restart_are_loaded_with_a_new_actor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = open(dir.path(), "n1").expect("open");
        assert_eq!(first.incarnation, 1);
        let first_actor = first.actor.clone();
        let mut replica = Replica::from_docs("n1", first.actor, first.docs);
        let service = Name::parse("service", "api").expect("name");
        let mut records = Vec::new();
        for i in 0..5 {
            let outcome = replica
                .write_status(i, &write(&format!("c{i}"), "ok"))
                .expect("write");
            records.extend(outcome.change);
        }
        let storage =
            StorageHandle::start(dir.path().to_owned(), "n1".into(), first.lock).expect("start");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let acked = storage
            .submit(Batch {
                docs: vec![DocWrite {
                    service: service.clone(),
                    records,
                    snapshot: None,
                    prev: None,
                    archive: Vec::new(),
                }],
                on_durable: vec![Box::new(move || {
                    let _ = tx.send(());
                })],
            })
            .await;
        assert!(acked);
        rx.await.expect("acknowledged after fsync");
        storage.close().await;
        // A torn append after the last acknowledged record is cut off on the next start.
        let log = dir.path().join("docs/api/log");
        let mut file = OpenOptions::new().append(true).open(&log).expect("log");
        file.write_all(&[7, 0, 0, 0, 1]).expect("torn bytes");
        drop(file);

        let second = open(dir.path(), "n1").expect("reopen");
        assert_eq!(second.incarnation, 2);
        assert_ne!(second.actor, first_actor);
        assert_eq!(second.truncated_tails, 1);
        let restored = Replica::from_docs("n1", second.actor, second.docs);
        assert_eq!(restored.cursor(), replica.cursor());
        assert_eq!(restored.doc(&service).map(|d| d.cells().len()), Some(5));
    }

    #[tokio::test]
    async fn a_snapshot_replaces_the_log_and_loads_the_same_document() {
        let dir = tempfile::tempdir().expect("tempdir");
        let loaded = open(dir.path(), "n1").expect("open");
        let mut replica = Replica::from_docs("n1", loaded.actor, loaded.docs);
        let lock = loaded.lock;
        let service = Name::parse("service", "api").expect("name");
        let storage =
            StorageHandle::start(dir.path().to_owned(), "n1".into(), lock).expect("start");
        let first = replica
            .write_status(1, &write("db", "one"))
            .expect("write")
            .change
            .expect("change");
        replica
            .write_status(2, &write("web", "two"))
            .expect("write");
        let snapshot = replica.doc(&service).expect("doc").save();
        for docs in [
            vec![DocWrite {
                service: service.clone(),
                records: vec![first],
                snapshot: None,
                prev: None,
                archive: Vec::new(),
            }],
            vec![DocWrite {
                service: service.clone(),
                records: Vec::new(),
                snapshot: Some(snapshot),
                prev: None,
                archive: Vec::new(),
            }],
        ] {
            let batch = Batch {
                docs,
                on_durable: Vec::new(),
            };
            assert!(storage.submit(batch).await);
        }
        storage.close().await;
        let log = fs::metadata(dir.path().join("docs/api/log")).expect("log");
        assert_eq!(log.len(), 0);
        let again = open(dir.path(), "n1").expect("reopen");
        let restored = Replica::from_docs("n1", again.actor, again.docs);
        assert_eq!(restored.cursor(), replica.cursor());
    }

    #[tokio::test]
    async fn a_rolled_over_document_loads_with_its_previous_epoch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let loaded = open(dir.path(), "n1").expect("open");
        let mut replica = Replica::from_docs("n1", loaded.actor, loaded.docs);
        let storage =
            StorageHandle::start(dir.path().to_owned(), "n1".into(), loaded.lock).expect("start");
        let service = Name::parse("service", "api").expect("name");
        replica.write_status(1, &write("db", "one")).expect("write");
        let old_cursor = replica.cursor();
        replica
            .write_status(2, &write("web", "two"))
            .expect("write");
        let heads = replica.doc(&service).expect("doc").heads();
        replica
            .rollover(&service, &heads)
            .expect("rollover")
            .expect("rolled over");
        let doc = replica.doc(&service).expect("doc");
        let batch = Batch {
            docs: vec![DocWrite {
                service: service.clone(),
                records: Vec::new(),
                snapshot: Some(doc.save()),
                prev: doc.save_prev(),
                archive: statusmesh_crdt::archive::writes_of(&doc.prev_writes()),
            }],
            on_durable: Vec::new(),
        };
        assert!(storage.submit(batch).await);
        storage.close().await;
        let again = open(dir.path(), "n1").expect("reopen");
        let restored = Replica::from_docs("n1", again.actor, again.docs);
        let doc = restored.doc(&service).expect("doc");
        assert_eq!(doc.epoch(), 1);
        assert_eq!(restored.cursor(), replica.cursor());
        assert!(doc.prev_has_all(old_cursor.heads_of(&service)));
        let events = restored
            .events_since(&old_cursor)
            .expect("the previous epoch tells");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].component.as_str(), "web");
    }

    #[test]
    fn a_data_directory_in_use_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = open(dir.path(), "n1").expect("open");
        let err = open(dir.path(), "n1").expect_err("locked");
        assert!(
            err.to_string().contains("another statusmesh process"),
            "{err}"
        );
        drop(held);
        open(dir.path(), "n1").expect("free again");
    }

    #[test]
    fn a_data_directory_of_another_node_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(open(dir.path(), "n1").expect("open"));
        let err = open(dir.path(), "n2").expect_err("refused");
        assert!(matches!(err, StorageError::WrongNode { .. }), "{err}");
    }

    fn archived(n: u64, component: &str) -> ArchivedWrite {
        ArchivedWrite {
            at_ms: 1_000 + n,
            changed_at_ms: 1_000 + n,
            component: Name::parse("component", component).expect("name"),
            region: Name::parse("region", "eu-west").expect("name"),
            state: State::Operational,
            message: "all good".into(),
            reporter: "probe".into(),
            origin_node: Some("eu-1".into()),
            writer: [5; 16],
            n,
        }
    }

    #[test]
    fn archive_appends_load_back_in_order_and_by_component() {
        let dir = tempfile::tempdir().expect("temp dir");
        let service_dir = dir.path().join("docs").join("api");
        assert!(load_archive(&service_dir).expect("load").is_empty());
        let first: Vec<_> = (1..=3).map(|n| archived(n, "db")).collect();
        let second: Vec<_> = (4..=5).map(|n| archived(n, "web")).collect();
        assert!(append_archive(&service_dir, &first).expect("append") > 0);
        assert_eq!(append_archive(&service_dir, &[]).expect("append"), 0);
        append_archive(&service_dir, &second).expect("append");
        assert!(archive_path(&service_dir).ends_with("docs/api/archive"));
        assert_eq!(
            load_archive(&service_dir).expect("load"),
            [first.clone(), second].concat()
        );
        let db = Name::parse("component", "db").expect("name");
        assert_eq!(
            load_archive_component(&service_dir, &db).expect("load"),
            first
        );
    }

    #[test]
    fn a_torn_archive_tail_is_truncated_and_appends_continue_after_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let service_dir = dir.path().join("api");
        let first: Vec<_> = (1..=3).map(|n| archived(n, "db")).collect();
        append_archive(&service_dir, &first).expect("append");
        let whole = fs::metadata(archive_path(&service_dir))
            .expect("stat")
            .len();
        // A crash in the middle of the next append: half a block.
        let mut torn = ArchiveWriter::resume(&fs::read(archive_path(&service_dir)).expect("read"))
            .0
            .encode(&[archived(4, "db")]);
        torn.truncate(torn.len() / 2);
        let mut file = OpenOptions::new()
            .append(true)
            .open(archive_path(&service_dir))
            .expect("open");
        file.write_all(&torn).expect("write");
        drop(file);
        assert_eq!(load_archive(&service_dir).expect("load"), first);
        assert_eq!(
            fs::metadata(archive_path(&service_dir))
                .expect("stat")
                .len(),
            whole
        );
        append_archive(&service_dir, &[archived(5, "db")]).expect("append");
        let all = load_archive(&service_dir).expect("load");
        assert_eq!(all.len(), 4);
        assert_eq!(all[3].n, 5);
    }
}
