//! Encoding: archived writes into blocks, interning strings and writers as it goes.

use std::collections::HashMap;

use super::decode::decode_blocks;
use super::{
    zigzag, ArchivedWrite, Table, BLOCK_MAGIC, BLOCK_PAYLOAD_MAX, BLOCK_PAYLOAD_SOFT,
    BLOCK_RECORDS_MAX, FLAG_SAME_CHANGE, FLAG_SAME_MESSAGE, FLAG_SAME_REPORTER, REF_FIRST_INDEX,
    REF_INLINE, REF_NONE, STRINGS_MAX, STRING_BYTES_MAX, STRING_LEN_MAX, WRITERS_MAX,
};
use crate::epoch::{Writer, WRITER_LEN};
use crate::model::{Name, State};

/// Encodes archive blocks. It holds the archive's intern table, so one writer must see every
/// block of its archive: make it with [`Self::new`] for an empty archive, or with
/// [`Self::resume`] from the archive's bytes.
#[derive(Debug, Default)]
pub struct ArchiveWriter {
    table: Table,
    /// Lookups only; the order of definitions is the order of first use.
    string_index: HashMap<String, u64>,
    writer_index: HashMap<Writer, u64>,
}

impl ArchiveWriter {
    /// A writer for an empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds the writer of an existing archive. Returns it and the length of the valid
    /// part of `bytes`: the caller truncates the file there before appending, or a torn
    /// block would hide every later one.
    pub fn resume(bytes: &[u8]) -> (Self, usize) {
        let mut table = Table::default();
        let valid = decode_blocks(bytes, &mut table, |_| {});
        let mut writer = Self {
            string_index: HashMap::with_capacity(table.strings.len()),
            writer_index: HashMap::with_capacity(table.writers.len()),
            table: Table::default(),
        };
        for (i, s) in table.strings.iter().enumerate() {
            writer.string_index.insert(s.clone(), i as u64);
        }
        for (i, w) in table.writers.iter().enumerate() {
            writer.writer_index.insert(*w, i as u64);
        }
        writer.table = table;
        (writer, valid)
    }

    /// Encodes `writes` as blocks to append to the archive (one block, or several when they
    /// are many), and adds their new strings to the intern table. Empty for no writes.
    pub fn encode(&mut self, writes: &[ArchivedWrite]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut block = BlockBuilder::default();
        for write in writes {
            self.encode_record(&mut block, write);
            if block.records == BLOCK_RECORDS_MAX || block.len() >= BLOCK_PAYLOAD_SOFT {
                block.finish_into(&mut out);
                block = BlockBuilder::default();
            }
        }
        if block.records > 0 {
            block.finish_into(&mut out);
        }
        out
    }

    /// Interned strings so far (for metrics and tests).
    pub fn strings(&self) -> usize {
        self.table.strings.len()
    }

    fn encode_record(&mut self, block: &mut BlockBuilder, write: &ArchivedWrite) {
        let prev = block.prev.take();
        let same_change = prev.as_ref().is_some_and(|p| {
            p.writer == write.writer
                && p.n == write.n
                && p.changed_at_ms == write.changed_at_ms
                && p.origin_node == write.origin_node
        });
        let same_message = prev.as_ref().is_some_and(|p| p.message == write.message);
        let same_reporter = prev.as_ref().is_some_and(|p| p.reporter == write.reporter);
        let mut flags = state_code(write.state);
        if same_change {
            flags |= FLAG_SAME_CHANGE;
        }
        if same_message {
            flags |= FLAG_SAME_MESSAGE;
        }
        if same_reporter {
            flags |= FLAG_SAME_REPORTER;
        }
        let (prev_at, prev_changed, prev_n) = prev
            .as_ref()
            .map_or((0, 0, 0), |p| (p.at_ms, p.changed_at_ms, p.n));
        block.body.push(flags);
        put_varint(&mut block.body, zigzag(write.at_ms.wrapping_sub(prev_at)));
        self.put_string(block, Some(write.component.as_str()));
        self.put_string(block, Some(write.region.as_str()));
        if !same_change {
            put_varint(
                &mut block.body,
                zigzag(write.changed_at_ms.wrapping_sub(prev_changed)),
            );
            self.put_string(block, write.origin_node.as_deref());
            self.put_writer(block, &write.writer);
            put_varint(&mut block.body, zigzag(write.n.wrapping_sub(prev_n)));
        }
        if !same_message {
            self.put_string(block, Some(&write.message));
        }
        if !same_reporter {
            self.put_string(block, Some(&write.reporter));
        }
        block.records += 1;
        block.prev = Some(write.clone());
    }

    fn put_string(&mut self, block: &mut BlockBuilder, value: Option<&str>) {
        let Some(value) = value else {
            put_varint(&mut block.body, REF_NONE);
            return;
        };
        let value = cut(value, STRING_LEN_MAX);
        if let Some(&index) = self.string_index.get(value) {
            put_varint(&mut block.body, REF_FIRST_INDEX + index);
            return;
        }
        if self.table.strings.len() < STRINGS_MAX
            && self.table.string_bytes + value.len() <= STRING_BYTES_MAX
        {
            let index = self.table.strings.len() as u64;
            self.table.string_bytes += value.len();
            self.table.strings.push(value.to_owned());
            self.table.names.push(Name::parse("name", value).ok());
            self.string_index.insert(value.to_owned(), index);
            block.strings_new += 1;
            put_bytes(&mut block.defs, value.as_bytes());
            put_varint(&mut block.body, REF_FIRST_INDEX + index);
        } else {
            // The table is full: the string goes inline, the archive stays readable.
            put_varint(&mut block.body, REF_INLINE);
            put_bytes(&mut block.body, value.as_bytes());
        }
    }

    fn put_writer(&mut self, block: &mut BlockBuilder, writer: &Writer) {
        if let Some(&index) = self.writer_index.get(writer) {
            put_varint(&mut block.body, 1 + index);
            return;
        }
        if self.table.writers.len() < WRITERS_MAX {
            let index = self.table.writers.len() as u64;
            self.table.writers.push(*writer);
            self.writer_index.insert(*writer, index);
            block.writers_new.extend_from_slice(writer);
            put_varint(&mut block.body, 1 + index);
        } else {
            put_varint(&mut block.body, 0);
            block.body.extend_from_slice(writer);
        }
    }
}

/// One block being encoded: its new definitions and its records, until it is finished.
#[derive(Debug, Default)]
struct BlockBuilder {
    strings_new: usize,
    defs: Vec<u8>,
    writers_new: Vec<u8>,
    records: usize,
    body: Vec<u8>,
    prev: Option<ArchivedWrite>,
}

impl BlockBuilder {
    fn len(&self) -> usize {
        self.defs.len() + self.writers_new.len() + self.body.len()
    }

    fn finish_into(self, out: &mut Vec<u8>) {
        let mut payload = Vec::with_capacity(self.len() + 30);
        put_varint(&mut payload, self.strings_new as u64);
        payload.extend_from_slice(&self.defs);
        put_varint(&mut payload, (self.writers_new.len() / WRITER_LEN) as u64);
        payload.extend_from_slice(&self.writers_new);
        put_varint(&mut payload, self.records as u64);
        payload.extend_from_slice(&self.body);
        assert!(
            payload.len() <= BLOCK_PAYLOAD_MAX,
            "a block outgrew its bound"
        );
        out.extend_from_slice(&BLOCK_MAGIC.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
    }
}

/// Appends an unsigned LEB128.
pub(super) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends a length-prefixed byte string.
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A state's three-bit code: its position in [`State::ALL`].
fn state_code(state: State) -> u8 {
    State::ALL
        .iter()
        .position(|s| *s == state)
        .map_or(0, |i| i as u8)
}

/// `text` cut to at most `max` bytes at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    &text[..text.floor_char_boundary(max)]
}
