//! A flag's history from its document's Automerge history (the audit trail): every write of
//! the record, operator specs and controller progress alike, with its author, origin node
//! and time. The live epoch is walked change by change; a base change (an epoch rollover)
//! restates the value it carried, as one entry.

use serde::Serialize;

use super::spec::Flag;
use crate::doc::{RecordKey, ServiceDoc};
use crate::model::Name;

/// Most entries one history answer lists (the newest).
pub const HISTORY_MAX: usize = 200;

/// One write of a flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlagHistoryEntry {
    /// When the change was made, on its origin's clock.
    pub at_ms: u64,
    /// The node that made it (`None` for a base change's restatement).
    pub origin_node: Option<String>,
    /// `put`, `delete` or `restated` (the value a new epoch's base carried).
    pub action: &'static str,
    /// The value written (`None` for a delete).
    pub flag: Option<Flag>,
}

/// The writes of flag `key` in `doc`, oldest first, the newest [`HISTORY_MAX`].
pub fn flag_history(doc: &ServiceDoc, key: &Name) -> Vec<FlagHistoryEntry> {
    let root_key = RecordKey::Flag { key: key.clone() }.to_key();
    let mut entries = Vec::new();
    for change in doc.all_changes() {
        let base = ServiceDoc::is_base(&change);
        let at_ms = u64::try_from(change.timestamp()).unwrap_or(0);
        let origin_node = change.message().map(str::to_owned);
        for op in change.decode().operations {
            let automerge::legacy::Key::Map(op_key) = &op.key else {
                continue;
            };
            if op_key.as_str() != root_key {
                continue;
            }
            let (action, flag) = match &op.action {
                automerge::legacy::OpType::Put(automerge::ScalarValue::Str(text)) => (
                    if base { "restated" } else { "put" },
                    serde_json::from_str::<Flag>(text).ok(),
                ),
                automerge::legacy::OpType::Delete => ("delete", None),
                _ => continue,
            };
            entries.push(FlagHistoryEntry {
                at_ms,
                origin_node: if base { None } else { origin_node.clone() },
                action,
                flag,
            });
        }
    }
    let skip = entries.len().saturating_sub(HISTORY_MAX);
    entries.drain(..skip);
    entries
}
