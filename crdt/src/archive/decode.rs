//! Decoding: blocks back into archived writes, checking every count, length and index
//! against a bound, stopping at the first torn or corrupt block; no input makes it panic.

use super::{
    unzigzag, ArchivedWrite, Table, BLOCK_HEADER_BYTES, BLOCK_MAGIC, BLOCK_PAYLOAD_MAX,
    BLOCK_RECORDS_MAX, FLAG_RESERVED, FLAG_SAME_CHANGE, FLAG_SAME_MESSAGE, FLAG_SAME_REPORTER,
    FLAG_STATE_MASK, REF_FIRST_INDEX, REF_INLINE, REF_NONE, STRINGS_MAX, STRING_BYTES_MAX,
    STRING_LEN_MAX, WRITERS_MAX,
};
use crate::epoch::{Writer, WRITER_LEN};
use crate::model::{Name, State};

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

/// One decoded record: strings and writers by index into the table, then the block's
/// inline ones.
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
pub(super) struct RecordView<'a> {
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
pub(super) fn decode_blocks(
    bytes: &[u8],
    table: &mut Table,
    mut visit: impl FnMut(&RecordView<'_>),
) -> usize {
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
pub(super) struct Input<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) at: usize,
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
    pub(super) fn varint(&mut self) -> Option<u64> {
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
