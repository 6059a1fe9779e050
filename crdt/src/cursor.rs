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

/// Format version of the encoded cursor: 2 adds each document's epoch (so a node can tell a
/// cursor of a compacted epoch, which only a snapshot answers, from one it has not caught up
/// with yet); 3 adds, per document, the transitions told of a change that writes several
/// records (a group commit), so that a client cut off within it resumes at the next one.
/// Version 1 and 2 cursors still decode.
const CURSOR_VERSION: u8 = 3;
const CURSOR_VERSION_2: u8 = 2;
const CURSOR_VERSION_1: u8 = 1;
/// Longest encoded cursor accepted, in characters.
pub const CURSOR_LEN_MAX: usize = 16 * 1024;
/// Most heads per document in a cursor.
const HEADS_PER_DOC_MAX: usize = 64;

/// Service → heads of its document, as seen by a client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    heads: BTreeMap<Name, Vec<ChangeHash>>,
    /// The epoch of each document's heads, when known.
    epochs: BTreeMap<Name, u32>,
    /// Per document, a change right after its heads of which the client has the first
    /// transitions (in record order): that many.
    within: BTreeMap<Name, Within>,
}

/// Part of one change told: the change, and how many of its transitions (in the order of
/// their record keys) the client has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Within {
    pub change: ChangeHash,
    pub told: u32,
}

impl Cursor {
    /// A cursor from per-service heads.
    pub fn new(heads: BTreeMap<Name, Vec<ChangeHash>>) -> Self {
        Self {
            heads,
            epochs: BTreeMap::new(),
            within: BTreeMap::new(),
        }
    }

    /// A cursor from per-service heads and the epoch each is of.
    pub fn with_epochs(
        heads: BTreeMap<Name, Vec<ChangeHash>>,
        epochs: BTreeMap<Name, u32>,
    ) -> Self {
        Self {
            heads,
            epochs,
            within: BTreeMap::new(),
        }
    }

    /// The part of a change after a service's heads that the client has, if any.
    pub fn within_of(&self, service: &Name) -> Option<Within> {
        self.within.get(service).copied()
    }

    /// Says the client has part of the change after a service's heads (or none).
    pub fn set_within(&mut self, service: &Name, within: Option<Within>) {
        match within {
            Some(within) => self.within.insert(service.clone(), within),
            None => self.within.remove(service),
        };
    }

    /// The epoch of a service's heads, when the cursor says.
    pub fn epoch_of(&self, service: &Name) -> Option<u32> {
        self.epochs.get(service).copied()
    }

    /// The heads seen of one service (empty when none).
    pub fn heads_of(&self, service: &Name) -> &[ChangeHash] {
        self.heads.get(service).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every service the cursor names, with its heads.
    pub fn iter(&self) -> impl Iterator<Item = (&Name, &[ChangeHash])> {
        self.heads.iter().map(|(k, v)| (k, v.as_slice()))
    }

    /// This cursor's position in one service only (its heads and epoch).
    pub fn only(&self, service: &Name) -> Cursor {
        let mut only = Cursor::default();
        if let Some(heads) = self.heads.get(service) {
            only.heads.insert(service.clone(), heads.clone());
        }
        if let Some(epoch) = self.epochs.get(service) {
            only.epochs.insert(service.clone(), *epoch);
        }
        only.set_within(service, self.within_of(service));
        only
    }

    /// Replaces the heads of one service (its epoch becomes unknown).
    pub fn set(&mut self, service: Name, heads: Vec<ChangeHash>) {
        self.epochs.remove(&service);
        self.within.remove(&service);
        self.heads.insert(service, heads);
    }

    /// Replaces the heads of one service with heads of its epoch `epoch` (and nothing of a
    /// change after them told).
    pub fn set_in_epoch(&mut self, service: Name, heads: Vec<ChangeHash>, epoch: u32) {
        self.epochs.insert(service.clone(), epoch);
        self.within.remove(&service);
        self.heads.insert(service, heads);
    }

    /// The compact URL-safe text form used as SSE `id:`.
    pub fn encode(&self) -> String {
        let mut bytes = vec![CURSOR_VERSION];
        for (service, heads) in &self.heads {
            // A client within a document's first change has no heads of it, only that part.
            if heads.is_empty() && !self.within.contains_key(service) {
                continue;
            }
            bytes.push(service.as_str().len() as u8);
            bytes.extend_from_slice(service.as_str().as_bytes());
            // u32::MAX: the epoch is not known.
            let epoch = self.epochs.get(service).copied().unwrap_or(u32::MAX);
            bytes.extend_from_slice(&epoch.to_be_bytes());
            bytes.push(heads.len().min(HEADS_PER_DOC_MAX) as u8);
            for head in heads.iter().take(HEADS_PER_DOC_MAX) {
                bytes.extend_from_slice(head.as_ref());
            }
            match self.within.get(service) {
                Some(within) => {
                    bytes.push(1);
                    bytes.extend_from_slice(within.change.as_ref());
                    bytes.extend_from_slice(&within.told.to_be_bytes());
                }
                None => bytes.push(0),
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
        if ![CURSOR_VERSION, CURSOR_VERSION_2, CURSOR_VERSION_1].contains(&version) {
            return Err(bad(&format!("unknown version {version}")));
        }
        let epoch_len = if version == CURSOR_VERSION_1 { 0 } else { 4 };
        let mut heads = BTreeMap::new();
        let mut epochs = BTreeMap::new();
        let mut within = BTreeMap::new();
        while let Some((&name_len, tail)) = rest.split_first() {
            let name_len = usize::from(name_len);
            if tail.len() < name_len + 1 {
                return Err(bad("truncated service name"));
            }
            let name =
                std::str::from_utf8(&tail[..name_len]).map_err(|_| bad("service is not UTF-8"))?;
            let service = Name::parse("service", name).map_err(|_| bad("invalid service name"))?;
            let tail = &tail[name_len..];
            if tail.len() < epoch_len + 1 {
                return Err(bad("truncated epoch"));
            }
            if epoch_len == 4 {
                let epoch = u32::from_be_bytes([tail[0], tail[1], tail[2], tail[3]]);
                if epoch != u32::MAX {
                    epochs.insert(service.clone(), epoch);
                }
            }
            let tail = &tail[epoch_len..];
            let count = usize::from(tail[0]);
            if (count == 0 && version != CURSOR_VERSION) || count > HEADS_PER_DOC_MAX {
                return Err(bad("head count out of range"));
            }
            let hashes_at = 1;
            let hashes_end = hashes_at + count * 32;
            if tail.len() < hashes_end {
                return Err(bad("truncated heads"));
            }
            let mut doc_heads = Vec::with_capacity(count);
            for chunk in tail[hashes_at..hashes_end].chunks_exact(32) {
                doc_heads.push(ChangeHash::try_from(chunk).map_err(|_| bad("invalid hash"))?);
            }
            let mut tail = &tail[hashes_end..];
            if version == CURSOR_VERSION {
                let (&flag, after) = tail.split_first().ok_or_else(|| bad("truncated"))?;
                tail = after;
                match flag {
                    0 if count == 0 => return Err(bad("no heads and nothing told")),
                    0 => {}
                    1 if tail.len() >= 36 => {
                        let change =
                            ChangeHash::try_from(&tail[..32]).map_err(|_| bad("invalid hash"))?;
                        let told = u32::from_be_bytes([tail[32], tail[33], tail[34], tail[35]]);
                        within.insert(service.clone(), Within { change, told });
                        tail = &tail[36..];
                    }
                    1 => return Err(bad("truncated change told in part")),
                    _ => return Err(bad("invalid flag")),
                }
            }
            if heads.insert(service, doc_heads).is_some() {
                return Err(bad("service named twice"));
            }
            rest = tail;
        }
        Ok(Self {
            heads,
            epochs,
            within,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn heads_epochs(heads: &BTreeMap<Name, Vec<ChangeHash>>) -> BTreeMap<Name, u32> {
        heads
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(i, (name, _))| (name.clone(), i as u32))
            .collect()
    }

    #[test]
    fn a_version_1_cursor_still_decodes_without_epochs() {
        let name = Name::parse("service", "api").expect("name");
        let mut bytes = vec![1, 3];
        bytes.extend_from_slice(b"api");
        bytes.push(1);
        bytes.extend_from_slice(&[7; 32]);
        let cursor = Cursor::decode(&URL_SAFE_NO_PAD.encode(bytes)).expect("v1 decodes");
        assert_eq!(cursor.heads_of(&name), &[ChangeHash([7; 32])]);
        assert_eq!(cursor.epoch_of(&name), None);
    }

    proptest! {
        #[test]
        fn cursor_round_trips(docs in proptest::collection::btree_map("[a-z]{1,10}", proptest::collection::vec(any::<[u8; 32]>(), 1..4), 0..5)) {
            let heads = docs
                .into_iter()
                .map(|(k, v)| (Name::parse("service", &k).expect("valid"), v.into_iter().map(ChangeHash).collect()))
                .collect();
            let epochs = heads_epochs(&heads);
            let first = heads.keys().next().cloned();
            let mut cursor = Cursor::with_epochs(heads, epochs);
            if let Some(service) = first {
                cursor.set_within(&service, Some(Within { change: ChangeHash([9; 32]), told: 3 }));
            }
            prop_assert_eq!(Cursor::decode(&cursor.encode()).ok(), Some(cursor));
        }

        #[test]
        fn garbage_cursors_are_errors_not_panics(text in ".{0,200}") {
            let _ = Cursor::decode(&text);
        }
    }
}
