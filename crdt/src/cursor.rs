//! The mesh-wide cursor: what a client has seen, as the heads of every document.
//!
//! Heads name changes by content hash, so a cursor minted on one node means the same thing on
//! every other node: any node that holds those changes can compute exactly what came after
//! them. A node that does not hold them yet cannot tell, and says so.

use std::collections::BTreeMap;

use automerge::ChangeHash;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::error::CrdtError;
use crate::model::Name;

/// Format version of the encoded cursor.
const CURSOR_VERSION: u8 = 1;
/// Longest encoded cursor accepted, in characters.
pub const CURSOR_LEN_MAX: usize = 16 * 1024;
/// Most heads per document in a cursor.
const HEADS_PER_DOC_MAX: usize = 64;

/// Service → heads of its document, as seen by a client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    heads: BTreeMap<Name, Vec<ChangeHash>>,
}

impl Cursor {
    /// A cursor from per-service heads.
    pub fn new(heads: BTreeMap<Name, Vec<ChangeHash>>) -> Self {
        Self { heads }
    }

    /// The heads seen of one service (empty when none).
    pub fn heads_of(&self, service: &Name) -> &[ChangeHash] {
        self.heads.get(service).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every service the cursor names, with its heads.
    pub fn iter(&self) -> impl Iterator<Item = (&Name, &[ChangeHash])> {
        self.heads.iter().map(|(k, v)| (k, v.as_slice()))
    }

    /// Replaces the heads of one service.
    pub fn set(&mut self, service: Name, heads: Vec<ChangeHash>) {
        self.heads.insert(service, heads);
    }

    /// The compact URL-safe text form used as SSE `id:`.
    pub fn encode(&self) -> String {
        let mut bytes = vec![CURSOR_VERSION];
        for (service, heads) in &self.heads {
            if heads.is_empty() {
                continue;
            }
            bytes.push(service.as_str().len() as u8);
            bytes.extend_from_slice(service.as_str().as_bytes());
            bytes.push(heads.len().min(HEADS_PER_DOC_MAX) as u8);
            for head in heads.iter().take(HEADS_PER_DOC_MAX) {
                bytes.extend_from_slice(head.as_ref());
            }
        }
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Parses the text form; every length is checked before it is used.
    pub fn decode(text: &str) -> Result<Self, CrdtError> {
        let bad = |why: &str| CrdtError::InvalidCursor(why.to_owned());
        if text.len() > CURSOR_LEN_MAX {
            return Err(bad("longer than the limit"));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| bad("not base64url"))?;
        let (&version, mut rest) = bytes.split_first().ok_or_else(|| bad("empty"))?;
        if version != CURSOR_VERSION {
            return Err(bad(&format!("unknown version {version}")));
        }
        let mut heads = BTreeMap::new();
        while let Some((&name_len, tail)) = rest.split_first() {
            let name_len = usize::from(name_len);
            if tail.len() < name_len + 1 {
                return Err(bad("truncated service name"));
            }
            let name =
                std::str::from_utf8(&tail[..name_len]).map_err(|_| bad("service is not UTF-8"))?;
            let service = Name::parse("service", name).map_err(|_| bad("invalid service name"))?;
            let count = usize::from(tail[name_len]);
            if count == 0 || count > HEADS_PER_DOC_MAX {
                return Err(bad("head count out of range"));
            }
            let hashes_at = name_len + 1;
            let hashes_end = hashes_at + count * 32;
            if tail.len() < hashes_end {
                return Err(bad("truncated heads"));
            }
            let mut doc_heads = Vec::with_capacity(count);
            for chunk in tail[hashes_at..hashes_end].chunks_exact(32) {
                doc_heads.push(ChangeHash::try_from(chunk).map_err(|_| bad("invalid hash"))?);
            }
            if heads.insert(service, doc_heads).is_some() {
                return Err(bad("service named twice"));
            }
            rest = &tail[hashes_end..];
        }
        Ok(Self { heads })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn cursor_round_trips(docs in proptest::collection::btree_map("[a-z]{1,10}", proptest::collection::vec(any::<[u8; 32]>(), 1..4), 0..5)) {
            let heads = docs
                .into_iter()
                .map(|(k, v)| (Name::parse("service", &k).expect("valid"), v.into_iter().map(ChangeHash).collect()))
                .collect();
            let cursor = Cursor::new(heads);
            prop_assert_eq!(Cursor::decode(&cursor.encode()).ok(), Some(cursor));
        }

        #[test]
        fn garbage_cursors_are_errors_not_panics(text in ".{0,200}") {
            let _ = Cursor::decode(&text);
        }
    }
}
