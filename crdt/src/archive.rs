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

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};

use automerge::Change;

use crate::doc::{RecordKey, ServiceDoc};
use crate::epoch::{ActorKind, Writer, WRITER_LEN};
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

/// Decodes archives.
#[derive(Debug)]
pub struct ArchiveReader;

impl ArchiveReader {
    /// Every write of an archive, in the order they were appended, and the length of the
    /// valid part of `bytes`: reading stops at the first torn or corrupt block (a crash in
    /// the middle of an append), and the caller truncates the file there.
    pub fn read(bytes: &[u8]) -> (Vec<ArchivedWrite>, usize) {
        Self::collect(bytes, None)
    }

    /// The writes of one component only (what a history request needs); the others are
    /// decoded and checked but not kept. Same valid length as [`Self::read`].
    pub fn read_component(bytes: &[u8], component: &Name) -> (Vec<ArchivedWrite>, usize) {
        Self::collect(bytes, Some(component))
    }
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

/// One decoded record: strings and writers by index into a [`Pool`].
#[derive(Debug, Clone, Copy)]
struct Compact {
    at_ms: u64,
    changed_at_ms: u64,
    component: usize,
    region: usize,
    state: State,
    message: usize,
    reporter: usize,
    origin_node: Option<usize>,
    writer: usize,
    n: u64,
}

/// The strings and writers one block's records can name: the archive's table, then the
/// block's inline ones.
#[derive(Debug, Default)]
struct Inline {
    strings: Vec<String>,
    names: Vec<Option<Name>>,
    writers: Vec<Writer>,
}

/// A record with the strings it names.
struct RecordView<'a> {
    table: &'a Table,
    inline: &'a Inline,
    record: &'a Compact,
}

impl RecordView<'_> {
    fn string(&self, index: usize) -> &str {
        // Indexes were checked when the block was decoded.
        match self.table.strings.get(index) {
            Some(s) => s,
            None => self
                .inline
                .strings
                .get(index - self.table.strings.len())
                .map_or("", String::as_str),
        }
    }

    fn name(&self, index: usize) -> Option<&Name> {
        match self.table.names.get(index) {
            Some(name) => name.as_ref(),
            None => self
                .inline
                .names
                .get(index - self.table.names.len())?
                .as_ref(),
        }
    }

    fn component_is(&self, component: &Name) -> bool {
        self.name(self.record.component) == Some(component)
    }

    fn to_owned(&self) -> Option<ArchivedWrite> {
        let r = self.record;
        let writer = match self.table.writers.get(r.writer) {
            Some(w) => *w,
            None => *self
                .inline
                .writers
                .get(r.writer - self.table.writers.len())?,
        };
        Some(ArchivedWrite {
            at_ms: r.at_ms,
            changed_at_ms: r.changed_at_ms,
            component: self.name(r.component)?.clone(),
            region: self.name(r.region)?.clone(),
            state: r.state,
            message: self.string(r.message).to_owned(),
            reporter: self.string(r.reporter).to_owned(),
            origin_node: r.origin_node.map(|i| self.string(i).to_owned()),
            writer,
            n: r.n,
        })
    }
}

impl ArchiveReader {
    fn collect(bytes: &[u8], component: Option<&Name>) -> (Vec<ArchivedWrite>, usize) {
        let mut writes = Vec::new();
        let valid = decode_blocks(bytes, &mut Table::default(), |view| {
            if component.is_none_or(|c| view.component_is(c)) {
                writes.extend(view.to_owned());
            }
        });
        (writes, valid)
    }
}

/// Decodes blocks into `table` and hands each record of each *valid* block to `visit` (a
/// block is visited only once it decoded whole, so a corrupt block shows none of its
/// records). Returns the length of the valid prefix of `bytes`.
fn decode_blocks(bytes: &[u8], table: &mut Table, mut visit: impl FnMut(&RecordView<'_>)) -> usize {
    let mut at: usize = 0;
    let mut records = Vec::new();
    while let Some(header) = bytes.get(at..at.saturating_add(BLOCK_HEADER_BYTES)) {
        let magic = u16::from_le_bytes([header[0], header[1]]);
        let len = u32::from_le_bytes([header[2], header[3], header[4], header[5]]) as usize;
        let crc = u32::from_le_bytes([header[6], header[7], header[8], header[9]]);
        if magic != BLOCK_MAGIC || len > BLOCK_PAYLOAD_MAX {
            break;
        }
        let start = at + BLOCK_HEADER_BYTES;
        let Some(payload) = bytes.get(start..start + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        let (strings, writers) = (table.strings.len(), table.writers.len());
        records.clear();
        let mut inline = Inline::default();
        let mut input = Input {
            bytes: payload,
            at: 0,
        };
        let decoded = decode_block(&mut input, table, &mut inline, &mut records);
        // Bytes after the last record mean the block is not one a writer made.
        if decoded.is_none() || input.at != payload.len() {
            table.truncate(strings, writers);
            break;
        }
        for record in &records {
            visit(&RecordView {
                table,
                inline: &inline,
                record,
            });
        }
        at = start + len;
    }
    at
}

/// Decodes one block's payload: definitions into `table`, records into `records`. `None`
/// when anything breaks a bound, names what does not exist, or the payload ends early.
fn decode_block(
    input: &mut Input<'_>,
    table: &mut Table,
    inline: &mut Inline,
    records: &mut Vec<Compact>,
) -> Option<()> {
    let strings_new = usize::try_from(input.varint()?).ok()?;
    if strings_new > STRINGS_MAX - table.strings.len() {
        return None;
    }
    for _ in 0..strings_new {
        let text = input.string()?;
        if table.string_bytes + text.len() > STRING_BYTES_MAX {
            return None;
        }
        table.string_bytes += text.len();
        table.names.push(Name::parse("name", text).ok());
        table.strings.push(text.to_owned());
    }
    let writers_new = usize::try_from(input.varint()?).ok()?;
    if writers_new > WRITERS_MAX - table.writers.len() {
        return None;
    }
    for _ in 0..writers_new {
        table.writers.push(input.writer()?);
    }
    let count = usize::try_from(input.varint()?).ok()?;
    if count > BLOCK_RECORDS_MAX {
        return None;
    }
    let table_strings = table.strings.len();
    let table_writers = table.writers.len();
    // A string ref as an index into table-then-inline strings.
    let string = |input: &mut Input<'_>, inline: &mut Inline| -> Option<Option<usize>> {
        match input.varint()? {
            REF_NONE => Some(None),
            REF_INLINE => {
                let text = input.string()?;
                inline.names.push(Name::parse("name", text).ok());
                inline.strings.push(text.to_owned());
                Some(Some(table_strings + inline.strings.len() - 1))
            }
            k => {
                let index = usize::try_from(k - REF_FIRST_INDEX).ok()?;
                (index < table_strings).then_some(Some(index))
            }
        }
    };
    let is_name = |index: usize, inline: &Inline| -> bool {
        match table.names.get(index) {
            Some(name) => name.is_some(),
            None => inline
                .names
                .get(index - table_strings)
                .is_some_and(Option::is_some),
        }
    };
    let mut prev: Option<Compact> = None;
    for _ in 0..count {
        let flags = input.byte()?;
        if flags & FLAG_RESERVED != 0 {
            return None;
        }
        let state = *State::ALL.get(usize::from(flags & FLAG_STATE_MASK))?;
        let at_ms = prev
            .map_or(0, |p| p.at_ms)
            .wrapping_add(unzigzag(input.varint()?));
        let component = string(input, inline)??;
        let region = string(input, inline)??;
        if !is_name(component, inline) || !is_name(region, inline) {
            return None;
        }
        let (changed_at_ms, origin_node, writer, n) = if flags & FLAG_SAME_CHANGE != 0 {
            let p = prev?;
            (p.changed_at_ms, p.origin_node, p.writer, p.n)
        } else {
            let (prev_changed, prev_n) = prev.map_or((0, 0), |p| (p.changed_at_ms, p.n));
            let changed = prev_changed.wrapping_add(unzigzag(input.varint()?));
            let origin = string(input, inline)?;
            let writer = match input.varint()? {
                0 => {
                    inline.writers.push(input.writer()?);
                    table_writers + inline.writers.len() - 1
                }
                k => {
                    let index = usize::try_from(k - 1).ok()?;
                    if index >= table_writers {
                        return None;
                    }
                    index
                }
            };
            let n = prev_n.wrapping_add(unzigzag(input.varint()?));
            (changed, origin, writer, n)
        };
        let message = if flags & FLAG_SAME_MESSAGE != 0 {
            prev?.message
        } else {
            string(input, inline)??
        };
        let reporter = if flags & FLAG_SAME_REPORTER != 0 {
            prev?.reporter
        } else {
            string(input, inline)??
        };
        let record = Compact {
            at_ms,
            changed_at_ms,
            component,
            region,
            state,
            message,
            reporter,
            origin_node,
            writer,
            n,
        };
        records.push(record);
        prev = Some(record);
    }
    Some(())
}

/// A bounds-checked reader over a payload.
#[derive(Debug, Clone)]
struct Input<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let byte = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(byte)
    }

    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let bytes = self.bytes.get(self.at..self.at.checked_add(len)?)?;
        self.at += len;
        Some(bytes)
    }

    /// An unsigned LEB128 of at most 10 bytes; overlong or overflowing ones are refused.
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0_u64;
        for i in 0..10 {
            let byte = self.byte()?;
            let bits = u64::from(byte & 0x7f);
            if i == 9 && bits > 1 {
                return None;
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    fn string(&mut self) -> Option<&'a str> {
        let len = usize::try_from(self.varint()?).ok()?;
        if len > STRING_LEN_MAX {
            return None;
        }
        std::str::from_utf8(self.take(len)?).ok()
    }

    fn writer(&mut self) -> Option<Writer> {
        self.take(WRITER_LEN)?.try_into().ok()
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Maps a wrapping difference to a small unsigned number when it is small either way.
fn zigzag(delta: u64) -> u64 {
    let signed = delta as i64;
    ((signed << 1) ^ (signed >> 63)) as u64
}

fn unzigzag(value: u64) -> u64 {
    ((value >> 1) as i64 ^ -((value & 1) as i64)) as u64
}

fn state_code(state: State) -> u8 {
    State::ALL
        .iter()
        .position(|s| *s == state)
        .map_or(0, |i| i as u8)
}

/// `text` cut to at most `max` bytes at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name(text: &str) -> Name {
        Name::parse("name", text).expect("name")
    }

    fn write(at_ms: u64, component: &str, region: &str, state: State, n: u64) -> ArchivedWrite {
        ArchivedWrite {
            at_ms,
            changed_at_ms: at_ms / 100 * 100,
            component: name(component),
            region: name(region),
            state,
            message: "all good".into(),
            reporter: "probe".into(),
            origin_node: Some("n1".into()),
            writer: [7; WRITER_LEN],
            n,
        }
    }

    fn sample(count: u64) -> Vec<ArchivedWrite> {
        (0..count)
            .map(|i| {
                let state = State::ALL[(i % 5) as usize];
                write(
                    1_000 + i * 7,
                    &format!("c{}", i % 40),
                    "eu",
                    state,
                    1 + i / 10,
                )
            })
            .collect()
    }

    #[test]
    fn blocks_written_in_several_appends_read_back_in_order() {
        let writes = sample(300);
        let mut writer = ArchiveWriter::new();
        let mut file = writer.encode(&writes[..100]);
        file.extend(writer.encode(&writes[100..]));
        let (read, valid) = ArchiveReader::read(&file);
        assert_eq!(valid, file.len());
        assert_eq!(read, writes);
    }

    #[test]
    fn a_resumed_writer_refers_to_the_definitions_of_earlier_blocks() {
        let writes = sample(200);
        let mut file = ArchiveWriter::new().encode(&writes[..100]);
        let (mut resumed, valid) = ArchiveWriter::resume(&file);
        assert_eq!(valid, file.len());
        let second = resumed.encode(&writes[100..]);
        // Every component was defined by the first block: the second defines none.
        let mut continuous = ArchiveWriter::new();
        let _ = continuous.encode(&writes[..100]);
        assert_eq!(second, continuous.encode(&writes[100..]));
        file.extend(second);
        assert_eq!(ArchiveReader::read(&file).0, writes);
    }

    #[test]
    fn a_torn_tail_is_cut_at_the_end_of_the_last_whole_block() {
        let writes = sample(100);
        let mut writer = ArchiveWriter::new();
        let mut file = writer.encode(&writes[..60]);
        let whole = file.len();
        file.extend(writer.encode(&writes[60..]));
        for cut in whole..file.len() {
            let (read, valid) = ArchiveReader::read(&file[..cut]);
            assert_eq!(valid, whole, "cut at {cut}");
            assert_eq!(read, writes[..60]);
        }
        let mut flipped = file.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x55;
        assert_eq!(ArchiveReader::read(&flipped).1, whole);
    }

    #[test]
    fn a_corrupt_block_leaves_no_definitions_behind() {
        let writes = sample(50);
        let mut writer = ArchiveWriter::new();
        let mut file = writer.encode(&writes);
        file.truncate(file.len() - 1);
        let (resumed, valid) = ArchiveWriter::resume(&file);
        assert_eq!(valid, 0);
        assert_eq!(resumed.strings(), 0);
    }

    #[test]
    fn strings_beyond_the_intern_table_go_inline_and_read_back() {
        let writes: Vec<ArchivedWrite> = (0..STRINGS_MAX as u64 + 500)
            .map(|i| ArchivedWrite {
                message: format!("m{i}"),
                ..write(i, "db", "eu", State::Operational, i + 1)
            })
            .collect();
        let mut writer = ArchiveWriter::new();
        let file = writer.encode(&writes);
        assert_eq!(writer.strings(), STRINGS_MAX);
        let (read, valid) = ArchiveReader::read(&file);
        assert_eq!(valid, file.len());
        assert_eq!(read, writes);
    }

    #[test]
    fn a_typical_write_takes_under_eight_bytes() {
        // 1,000 components x 5 regions, each change a batch of 250 writes by one node.
        let regions = [
            "eu-west",
            "eu-central",
            "us-east",
            "us-west",
            "ap-southeast",
        ];
        let writes: Vec<ArchivedWrite> = (0..50_000_u64)
            .map(|i| {
                let cell = i % 5_000;
                ArchivedWrite {
                    at_ms: 1_700_000_000_000 + i * 10,
                    changed_at_ms: 1_700_000_000_000 + i / 250 * 2_500,
                    component: name(&format!("c{}", cell / 5)),
                    region: name(regions[(cell % 5) as usize]),
                    state: State::ALL[(i / 5_000 % 2) as usize],
                    message: "all good".into(),
                    reporter: "probe".into(),
                    origin_node: Some("eu-1".into()),
                    writer: [3; WRITER_LEN],
                    n: 1 + i / 250,
                }
            })
            .collect();
        let mut writer = ArchiveWriter::new();
        let bytes: usize = writes.chunks(5_000).map(|c| writer.encode(c).len()).sum();
        let per_write = bytes as f64 / writes.len() as f64;
        assert!(per_write <= 8.0, "{per_write} bytes per write");
    }

    #[test]
    fn overlong_varints_are_refused() {
        let mut input = Input {
            bytes: &[0xff; 11],
            at: 0,
        };
        assert_eq!(input.varint(), None);
        let mut max = Vec::new();
        put_varint(&mut max, u64::MAX);
        let mut input = Input { bytes: &max, at: 0 };
        assert_eq!(input.varint(), Some(u64::MAX));
    }

    fn arb_name() -> impl Strategy<Value = Name> {
        "[a-z0-9][a-z0-9_.-]{0,8}".prop_map(|s| name(&s))
    }

    fn arb_write() -> impl Strategy<Value = ArchivedWrite> {
        (
            (any::<u64>(), any::<u64>(), arb_name(), arb_name()),
            (0..5_usize, "\\PC{0,12}", "[a-z]{1,4}"),
            (
                proptest::option::of("[a-z0-9-]{1,6}"),
                prop::sample::select(vec![[1; WRITER_LEN], [2; WRITER_LEN]]),
                any::<u64>(),
            ),
        )
            .prop_map(
                |(
                    (at_ms, changed_at_ms, component, region),
                    (state, message, reporter),
                    (origin_node, writer, n),
                )| ArchivedWrite {
                    at_ms,
                    changed_at_ms,
                    component,
                    region,
                    state: State::ALL[state],
                    message,
                    reporter,
                    origin_node,
                    writer,
                    n,
                },
            )
    }

    proptest! {
        #[test]
        fn encoded_writes_decode_to_the_same_writes(
            batches in prop::collection::vec(prop::collection::vec(arb_write(), 0..20), 0..5),
        ) {
            let mut writer = ArchiveWriter::new();
            let mut file = Vec::new();
            for batch in &batches {
                file.extend(writer.encode(batch));
            }
            let (read, valid) = ArchiveReader::read(&file);
            prop_assert_eq!(valid, file.len());
            prop_assert_eq!(read, batches.concat());
        }

        #[test]
        fn garbage_never_panics_and_is_never_longer_than_its_input(
            bytes in prop::collection::vec(any::<u8>(), 0..512),
        ) {
            let (_, valid) = ArchiveReader::read(&bytes);
            prop_assert!(valid <= bytes.len());
            let _ = ArchiveWriter::resume(&bytes);
        }

        #[test]
        fn garbage_with_a_valid_header_and_checksum_never_panics(
            payload in prop::collection::vec(any::<u8>(), 0..256),
            prefix in prop::collection::vec(arb_write(), 0..4),
        ) {
            // A block that passes the checksum exercises the payload decoder itself.
            let mut file = ArchiveWriter::new().encode(&prefix);
            let whole = file.len();
            file.extend_from_slice(&BLOCK_MAGIC.to_le_bytes());
            file.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            file.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            file.extend_from_slice(&payload);
            let (read, valid) = ArchiveReader::read(&file);
            prop_assert!(valid == whole || valid == file.len());
            prop_assert!(read.len() >= prefix.len());
        }
    }
}
