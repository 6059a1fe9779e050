//! The archive of a document: the writes of its closed epochs (the audit trail that history
//! reads), appended once per rollover and read rarely.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use statusmesh_crdt::archive::{ArchiveReader, ArchiveWriter, ArchivedWrite};
use statusmesh_crdt::Name;
use tracing::warn;

use super::load::read_bounded;
use super::record::sync_dir;
use super::{io_error, StorageError};

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
