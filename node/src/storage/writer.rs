//! The storage thread: it takes the driver's batches, appends their records, fsyncs each
//! touched log once per group (group commit), and only then sends the batches' replies.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use statusmesh_crdt::archive::ArchivedWrite;
use statusmesh_crdt::Name;
use tracing::{error, info};

use super::archive::append_archive;
use super::record::{encode_record, sync_dir, write_atomically};
use super::{io_error, DirLock, StorageError, BATCH_QUEUE_MAX};

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
        metrics::histogram!("statusmesh_storage_fsync_seconds", "node" => node.to_owned())
            .record(started.elapsed().as_secs_f64());
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
