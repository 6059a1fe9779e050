//! Incremental decoders of a subscriber's response body: HTTP/1.1 chunked coding and the
//! few SSE lines the benchmark needs.

use super::{CHUNK_BYTES_MAX, LINE_BYTES_MAX};

/// How the response body is framed.
#[derive(Debug)]
pub(super) enum BodyDecoder {
    Chunked(Chunked),
    UntilClose,
}

impl BodyDecoder {
    /// Passes the body bytes in `input` to `data`; Ok(true) once the body has ended.
    pub(super) fn decode(&mut self, input: &[u8], data: impl FnMut(&[u8])) -> Result<bool, String> {
        match self {
            Self::Chunked(chunked) => chunked.decode(input, data),
            Self::UntilClose => {
                let mut data = data;
                if !input.is_empty() {
                    data(input);
                }
                Ok(false)
            }
        }
    }
}

/// An incremental decoder of HTTP/1.1 chunked transfer coding.
#[derive(Debug, Default)]
pub(super) struct Chunked {
    pub(super) state: ChunkState,
    /// Bytes left in the current chunk, or the size being read.
    pub(super) remaining: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    Done,
}

impl Chunked {
    /// Passes each piece of chunk data in `input` to `data`; Ok(true) after the last chunk.
    pub(super) fn decode(
        &mut self,
        mut input: &[u8],
        mut data: impl FnMut(&[u8]),
    ) -> Result<bool, String> {
        while let Some((&byte, rest)) = input.split_first() {
            match self.state {
                ChunkState::Data => {
                    let take = input.len().min(self.remaining as usize);
                    data(&input[..take]);
                    input = &input[take..];
                    self.remaining -= take as u64;
                    if self.remaining == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::Done => return Ok(true),
                ChunkState::Size => match byte {
                    b'\r' => self.state = ChunkState::SizeLf,
                    b';' => self.state = ChunkState::Extension,
                    _ => {
                        let digit = (byte as char)
                            .to_digit(16)
                            .ok_or_else(|| format!("bad chunk size byte {:?}", byte as char))?;
                        self.remaining = self.remaining * 16 + u64::from(digit);
                        if self.remaining > CHUNK_BYTES_MAX {
                            return Err(format!("a chunk over {CHUNK_BYTES_MAX} bytes"));
                        }
                    }
                },
                ChunkState::Extension => {
                    if byte == b'\r' {
                        self.state = ChunkState::SizeLf;
                    }
                }
                ChunkState::SizeLf => {
                    if byte != b'\n' {
                        return Err("a chunk size line without its line feed".to_owned());
                    }
                    self.state = if self.remaining == 0 {
                        ChunkState::Done
                    } else {
                        ChunkState::Data
                    };
                }
                ChunkState::DataCr => {
                    if byte != b'\r' {
                        return Err("chunk data longer than its size".to_owned());
                    }
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if byte != b'\n' {
                        return Err("chunk data without its line end".to_owned());
                    }
                    self.state = ChunkState::Size;
                }
            }
            input = rest;
        }
        Ok(self.state == ChunkState::Done)
    }
}

/// An incremental SSE scanner that keeps only what the benchmark needs: the current event's
/// kind and, for `status` events, the data line.
#[derive(Debug, Default)]
pub(super) struct LineScan {
    /// A line split across reads.
    pub(super) partial: Vec<u8>,
    /// The partial line grew past LINE_BYTES_MAX and is being skipped.
    pub(super) skipping: bool,
    pub(super) in_status: bool,
    /// Whether the current block named an event or carried data.
    pub(super) in_event: bool,
    /// Complete events (blocks with an `event:` or `data:` line).
    pub(super) events: u64,
    pub(super) snapshots: u64,
}

impl LineScan {
    /// Scans `bytes`, calling `on_status_data` with each `data:` line of a `status` event.
    pub(super) fn feed(&mut self, mut bytes: &[u8], mut on_status_data: impl FnMut(&[u8])) {
        while let Some(newline) = bytes.iter().position(|&b| b == b'\n') {
            let (head, rest) = bytes.split_at(newline);
            bytes = &rest[1..];
            if self.skipping {
                self.skipping = false;
                continue;
            }
            if self.partial.is_empty() {
                self.line(head, &mut on_status_data);
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(head);
                self.line(&line, &mut on_status_data);
                line.clear();
                self.partial = line;
            }
        }
        if !bytes.is_empty() && !self.skipping {
            if self.partial.len() + bytes.len() > LINE_BYTES_MAX {
                self.partial.clear();
                self.partial.shrink_to_fit();
                self.skipping = true;
            } else {
                self.partial.extend_from_slice(bytes);
            }
        }
    }

    pub(super) fn line(&mut self, line: &[u8], on_status_data: &mut impl FnMut(&[u8])) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if self.in_event {
                self.events += 1;
            }
            self.in_event = false;
            self.in_status = false;
        } else if let Some(kind) = line.strip_prefix(b"event:") {
            let kind = kind.strip_prefix(b" ").unwrap_or(kind);
            self.in_event = true;
            self.in_status = kind == b"status";
            if kind == b"snapshot" {
                self.snapshots += 1;
            }
        } else if let Some(data) = line.strip_prefix(b"data:") {
            self.in_event = true;
            if self.in_status {
                on_status_data(data);
            }
        }
    }
}
