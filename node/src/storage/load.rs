//! Opening a data directory at start: the lock, a new incarnation and actor id, and every
//! document's snapshot and log (a torn log tail is truncated).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use statusmesh_crdt::{ActorId, Name, ServiceDoc};
use tracing::{info, warn};

use super::record::{parse_log, write_atomically};
use super::{
    io_error, DirLock, Loaded, LogSize, StorageError, INCARNATION_BYTES_MAX, LOG_BYTES_MAX,
    SNAPSHOT_BYTES_MAX,
};

/// `incarnation.json`: whose directory this is, and its last run.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IncarnationFile {
    node: String,
    incarnation: u64,
    actor: String,
}

/// Opens (or creates) the data directory of `node_id`: records a new incarnation and actor
/// id, then loads every document. The actor is written to disk before it is returned, so it
/// is never used twice, even if this start crashes.
pub fn open(dir: &Path, node_id: &str) -> Result<Loaded, StorageError> {
    let lock_file = lock(dir)?;
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

/// Creates the directory if needed and takes its exclusive lock.
fn lock(dir: &Path) -> Result<File, StorageError> {
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
    Ok(lock_file)
}

/// What [`open`] checks before it writes anything: the directory can be made and locked
/// (no other process uses it), and it belongs to `node_id`. Nothing is written but the
/// directory and its lock file, and the lock is released on return. The incarnation this
/// node would start as.
pub fn check(dir: &Path, node_id: &str) -> Result<u64, StorageError> {
    let _lock = lock(dir)?;
    next_incarnation(dir, node_id)
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
pub fn read_bounded(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, StorageError> {
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
