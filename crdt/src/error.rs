//! Errors of the crdt layer.

/// Everything that can go wrong in the crdt layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CrdtError {
    /// A client input broke a rule. The caller's fault; nothing was changed.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidField {
        field: &'static str,
        value: String,
        reason: String,
    },
    /// A peer sent change bytes that do not decode. The peer's fault; nothing was changed.
    #[error("remote change does not decode: {0}")]
    ChangeDecode(String),
    /// A peer sent a change that would break the schema. The peer's fault; nothing of the
    /// batch it came in was applied.
    #[error("remote change breaks the schema at {key:?}: {reason}")]
    ChangeSchema { key: String, reason: String },
    /// A batch from a peer was larger than allowed. The peer's fault; nothing was changed.
    #[error("remote batch of {count} changes exceeds the limit of {limit}")]
    BatchTooLarge { count: usize, limit: usize },
    /// Automerge refused an operation. Nothing was changed.
    #[error("automerge: {0}")]
    Automerge(#[from] automerge::AutomergeError),
    /// A saved document does not load. Nothing was changed.
    #[error("document {service:?} does not load: {reason}")]
    Load { service: String, reason: String },
    /// The document holds more cells than the configured limit. Nothing was changed.
    #[error("service {service:?} already holds {count} observations, the limit is {limit}")]
    TooManyCells {
        service: String,
        count: usize,
        limit: usize,
    },
    /// A cursor string does not decode. The client's fault; nothing was changed.
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
