//! The archive: the writes of closed epochs, compact and append-only.
//!
//! When a document rolls over, the history of the epoch it closes leaves memory (see
//! [`crate::epoch`]). Its observation writes are kept here instead, so that timelines and
//! uptime over months still work without holding that history in memory or gossiping it.
//! This module is pure: bytes in, bytes out; the node stores them in one file per document.
//!
//! # Format
//! An archive is a sequence of self-contained blocks, each appended in one piece:
//!
//! ```text
//! block   = magic u16 LE | len u32 LE | crc32 u32 LE | payload (len bytes)
//! payload = varint strings_new, { varint len, UTF-8 bytes }*
//!           varint writers_new, { 16 bytes }*
//!           varint records, record*
//! record  = flags u8 (bits 0-2 state, bit 3 same change, bit 4 same message,
//!                     bit 5 same reporter, bits 6-7 zero)
//!           zigzag at_ms delta, string ref component, string ref region,
//!           unless same change: zigzag changed_at_ms delta, optional string ref origin,
//!                               writer ref, zigzag n delta
//!           unless same message: string ref message
//!           unless same reporter: string ref reporter
//! string ref = varint: 0 none (only where optional), 1 inline (varint len, bytes),
//!              k + 2 the k-th interned string
//! writer ref = varint: 0 inline (16 bytes), k + 1 the k-th interned writer
//! ```
//!
//! Strings and writers are interned per archive: a block defines only the ones that are new,
//! and later blocks refer to earlier definitions, so an [`ArchiveWriter`] carries the intern
//! table and is rebuilt from the file ([`ArchiveWriter::resume`]). Deltas start from zero in
//! every block. The writes of one change share their writer, number, time and origin, and
//! a status writer rarely changes its message or reporter, so a typical record is a flags
//! byte, a time delta and two small indexes.
//!
//! A crash in the middle of an append leaves a torn block; [`ArchiveReader::read`] stops at
//! the first torn or corrupt block and says where the valid part ends, for the caller to
//! truncate. Every decoded count, length and index is checked against a bound, and no input
//! makes the reader panic.
//!
//! # Layout
//! This file holds the format's bounds and constants, the archived write and the intern
//! table both sides share; `encode.rs` writes blocks ([`ArchiveWriter`]), `decode.rs` reads
//! them back ([`ArchiveReader`]), and `tests.rs` holds their tests.

mod decode;
mod encode;
#[cfg(test)]
mod tests;

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use automerge::Change;

pub use self::decode::ArchiveReader;
pub use self::encode::ArchiveWriter;

use crate::doc::{RecordKey, ServiceDoc};
use crate::epoch::{ActorKind, Writer};
use crate::model::{Name, Observation, State, MESSAGE_LEN_MAX};

/// The first two bytes of every block.
pub const BLOCK_MAGIC: u16 = 0x4d53;
/// Bytes of a block header: magic, length and CRC32.
pub const BLOCK_HEADER_BYTES: usize = 2 + 4 + 4;
/// Largest block payload accepted when reading, in bytes (16 MiB); a larger length field is
/// corruption. The writer closes a block at half of it.
pub const BLOCK_PAYLOAD_MAX: usize = 16 * 1024 * 1024;
/// Most records in one block.
pub const BLOCK_RECORDS_MAX: usize = 65_536;
/// Longest archived string, in bytes (the longest observation message). Longer strings are
/// cut at a character boundary when archived.
pub const STRING_LEN_MAX: usize = MESSAGE_LEN_MAX;
/// Most interned strings per archive; beyond it new strings are written inline.
pub const STRINGS_MAX: usize = 65_536;
/// Most interned string bytes per archive (8 MiB); beyond it new strings are written inline.
pub const STRING_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Most interned writers per archive; beyond it new writers are written inline.
pub const WRITERS_MAX: usize = 65_536;

/// The writer closes a block once its payload reaches this size, so that even the largest
/// record after it keeps the block under [`BLOCK_PAYLOAD_MAX`].
const BLOCK_PAYLOAD_SOFT: usize = BLOCK_PAYLOAD_MAX / 2;
const FLAG_STATE_MASK: u8 = 0b0000_0111;
const FLAG_SAME_CHANGE: u8 = 0b0000_1000;
const FLAG_SAME_MESSAGE: u8 = 0b0001_0000;
const FLAG_SAME_REPORTER: u8 = 0b0010_0000;
const FLAG_RESERVED: u8 = 0b1100_0000;
const REF_NONE: u64 = 0;
const REF_INLINE: u64 = 1;
const REF_FIRST_INDEX: u64 = 2;

/// One observation write of a closed epoch, as the archive keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedWrite {
    /// The observation's time (`observed_at_ms`): where the timeline places it.
    pub at_ms: u64,
    /// The time of the change that made it.
    pub changed_at_ms: u64,
    pub component: Name,
    pub region: Name,
    pub state: State,
    pub message: String,
    pub reporter: String,
    /// The node that made the change (its message).
    pub origin_node: Option<String>,
    /// The write's identity, the same in every epoch it is carried into: the writer
    /// incarnation and its number among that incarnation's writes.
    pub writer: Writer,
    pub n: u64,
}

/// Every observation put of `changes` but their bases, in the order given (a base restates a
/// state, it is not a write). A change that puts one cell twice counts once, with the value
/// that won. Changes whose actor is not one of the schema's are skipped.
pub fn writes_of(changes: &[Change]) -> Vec<ArchivedWrite> {
    let mut out = Vec::new();
    for change in changes {
        if ServiceDoc::is_base(change) {
            continue;
        }
        let Some(write) =
            ActorKind::parse(change.actor_id()).and_then(|kind| kind.write_id(change.seq()))
        else {
            continue;
        };
        let origin_node = change.message().map(str::to_owned);
        let changed_at_ms = u64::try_from(change.timestamp()).unwrap_or(0);
        // A later put of the same cell in one transaction overrides the earlier one.
        let mut puts: Vec<ArchivedWrite> = Vec::new();
        let mut slot_of: BTreeMap<(Name, Name), usize> = BTreeMap::new();
        for op in change.decode().operations {
            let automerge::legacy::Key::Map(key) = &op.key else {
                continue;
            };
            let Some(RecordKey::Observation { component, region }) = RecordKey::parse(key) else {
                continue;
            };
            let automerge::legacy::OpType::Put(automerge::ScalarValue::Str(text)) = &op.action
            else {
                continue;
            };
            let Ok(observation) = serde_json::from_str::<Observation>(text) else {
                continue;
            };
            let archived = ArchivedWrite {
                at_ms: observation.observed_at_ms,
                changed_at_ms,
                component: component.clone(),
                region: region.clone(),
                state: observation.state,
                message: observation.message,
                reporter: observation.reporter,
                origin_node: origin_node.clone(),
                writer: write.writer,
                n: write.n,
            };
            match slot_of.entry((component, region)) {
                Entry::Occupied(slot) => puts[*slot.get()] = archived,
                Entry::Vacant(slot) => {
                    slot.insert(puts.len());
                    puts.push(archived);
                }
            }
        }
        out.extend(puts);
    }
    out
}

/// The intern table of an archive, as far as it was read or written.
#[derive(Debug, Default)]
struct Table {
    strings: Vec<String>,
    /// Per string, the name it is when it is a valid one (component and region refs must be).
    names: Vec<Option<Name>>,
    string_bytes: usize,
    writers: Vec<Writer>,
}

impl Table {
    /// Drops definitions beyond the given lengths (those of a block found corrupt).
    fn truncate(&mut self, strings: usize, writers: usize) {
        for s in self.strings.drain(strings..) {
            self.string_bytes -= s.len();
        }
        self.names.truncate(strings);
        self.writers.truncate(writers);
    }
}

/// Maps a wrapping difference to a small unsigned number when it is small either way.
fn zigzag(delta: u64) -> u64 {
    let signed = delta as i64;
    ((signed << 1) ^ (signed >> 63)) as u64
}

fn unzigzag(value: u64) -> u64 {
    ((value >> 1) as i64 ^ -((value & 1) as i64)) as u64
}
