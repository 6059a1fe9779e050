//! Errors of the crdt layer.
//!
//! Each variant says whose fault it is and what state it leaves. "Nothing was changed" is
//! true by construction: the input is checked whole by code that only reads (a plan of a
//! local write, a decoded remote batch, a loaded document not yet wrapped) before anything
//! is written, and the unit tests of `doc/` and `replica` prove it per error.

/// Everything that can go wrong in the crdt layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CrdtError {
    /// A client input broke a rule (a name, a bound, an unknown incident, a full incident,
    /// too many services). The caller's fault; nothing was changed, in any document of the
    /// write (a batch is checked against every document before any is written).
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidField {
        field: &'static str,
        value: String,
        reason: String,
    },
    /// A peer sent change bytes that do not decode (or a saved document holds such a
    /// change). The peer's fault (or the storage's); nothing of the batch it came in was
    /// applied, and no document was made of a new service's first batch.
    #[error("remote change does not decode: {0}")]
    ChangeDecode(String),
    /// A peer sent a change that would break the schema (or a document from elsewhere holds
    /// one). The peer's fault; nothing of the batch it came in was applied, and no document
    /// was loaded.
    #[error("remote change breaks the schema at {key:?}: {reason}")]
    ChangeSchema { key: String, reason: String },
    /// A batch from a peer was larger than allowed. The peer's fault; nothing was changed
    /// (the count is checked before any change is decoded).
    #[error("remote batch of {count} changes exceeds the limit of {limit}")]
    BatchTooLarge { count: usize, limit: usize },
    /// Automerge refused an operation on input this crate had validated or built itself (a
    /// base, a carried write, a released change): a bug here or in Automerge, not the
    /// caller's fault. A local write changed nothing (its transaction is rolled back), and
    /// neither did a rollover that failed making its base. A remote batch, or a rollover
    /// once its base is made, stops at the refused step: the steps before it stay applied,
    /// each whole (the document and its counts agree), and none after it runs.
    #[error("automerge: {0}")]
    Automerge(#[from] automerge::AutomergeError),
    /// Saved bytes do not load as a document (or a base change could not be made). The
    /// storage's fault, or a bug; nothing was changed: no document is made of the bytes, and
    /// a document that was to attach them stays as it was.
    #[error("document {service:?} does not load: {reason}")]
    Load { service: String, reason: String },
    /// A write would take the document beyond its limit of records
    /// (`doc::RECORDS_MAX`). The caller's fault; nothing was changed.
    #[error("service {service:?} already holds {count} observations, the limit is {limit}")]
    TooManyCells {
        service: String,
        count: usize,
        limit: usize,
    },
    /// A cursor string does not decode. The client's fault; nothing was changed (decoding
    /// a cursor reads nothing but the string).
    #[error("invalid cursor: {0}")]
    InvalidCursor(String),
}

impl CrdtError {
    /// The input field the error is about, if it is about one (for HTTP error bodies).
    pub fn field(&self) -> Option<&'static str> {
        match self {
            CrdtError::InvalidField { field, .. } => Some(field),
            CrdtError::InvalidCursor(_) => Some("cursor"),
            _ => None,
        }
    }
}
