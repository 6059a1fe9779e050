//! The log's record format (`[len u32 LE][crc32 u32 LE][payload]`) and the atomic
//! replacement of whole files.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use super::{io_error, StorageError, RECORD_BYTES_MAX, RECORD_HEADER_BYTES};

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
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(io_error(&tmp, "create"))?;
    file.write_all(bytes).map_err(io_error(&tmp, "write"))?;
    file.sync_all().map_err(io_error(&tmp, "fsync"))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io_error(path, "rename"))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir, "fsync directory"))
}
