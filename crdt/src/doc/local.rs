//! Local writes: a batch of puts validated whole, then written as one Automerge change.

use std::collections::BTreeSet;

use automerge::transaction::CommitOptions;
use automerge::{Change, ReadDoc, ROOT};

use super::schema::{updates_of, Put};
use super::{ServiceDoc, RECORDS_MAX};
use crate::epoch;
use crate::error::CrdtError;
use crate::model::{Observation, StatusWrite};
use crate::records::UPDATES_MAX;

/// The change a local write made, and the root keys it wrote.
#[derive(Debug, Clone)]
pub struct LocalChange {
    pub change: Change,
    pub keys: BTreeSet<String>,
}

impl ServiceDoc {
    /// Writes an observation as `origin_node` (recorded as the change's message: the audit
    /// trail says which node wrote what). Returns the new change, or `None` when the cell
    /// already held the same value (no Automerge change, no history growth).
    pub fn put_observation(
        &mut self,
        now_ms: u64,
        origin_node: &str,
        write: &StatusWrite,
    ) -> Result<Option<Change>, CrdtError> {
        let put = Put::Observation {
            component: write.component.clone(),
            region: write.region.clone(),
            observation: write.observation.clone(),
        };
        self.apply_puts(now_ms, origin_node, std::slice::from_ref(&put))
    }

    /// Writes a batch of records as ONE Automerge change (group commit: one change, one
    /// hash, one history entry for the whole batch). Every put is validated first; an invalid
    /// one rejects the batch and nothing is written. Puts that would not change a value are
    /// skipped; `None` when nothing changed at all.
    pub fn apply_puts(
        &mut self,
        now_ms: u64,
        origin_node: &str,
        puts: &[Put],
    ) -> Result<Option<Change>, CrdtError> {
        Ok(self
            .apply_puts_keys(now_ms, origin_node, puts)?
            .map(|written| written.change))
    }

    /// [`Self::apply_puts`], also returning the keys the change wrote.
    pub fn apply_puts_keys(
        &mut self,
        now_ms: u64,
        origin_node: &str,
        puts: &[Put],
    ) -> Result<Option<LocalChange>, CrdtError> {
        let mut writes: Vec<(String, Option<String>)> = Vec::with_capacity(puts.len());
        let mut new_keys = 0;
        // Within one change only the last put of a key is visible: keep just that one, so
        // that [x, y, x] over a cell holding x ends at x, not at y.
        let mut seen_keys = BTreeSet::new();
        let mut last_puts: Vec<&Put> = puts
            .iter()
            .rev()
            .filter(|p| seen_keys.insert(p.key().to_key()))
            .collect();
        last_puts.reverse();
        for put in last_puts {
            put.validate()?;
            let key = put.key().to_key();
            let current = self.raw_values(&key);
            if unchanged(put, &current) {
                continue;
            }
            if let Put::Update { incident, .. } = put {
                let count = self.doc.map_range(ROOT, updates_of(incident)).count();
                if count >= UPDATES_MAX {
                    return Err(CrdtError::InvalidField {
                        field: "updates",
                        value: count.to_string(),
                        reason: format!("an incident holds at most {UPDATES_MAX} updates"),
                    });
                }
            }
            if current.is_empty() {
                new_keys += 1;
            }
            writes.push((key, put.json()?));
        }
        if writes.is_empty() {
            return Ok(None);
        }
        if self.records + new_keys > RECORDS_MAX {
            return Err(CrdtError::TooManyCells {
                service: self.service.to_string(),
                count: self.records,
                limit: RECORDS_MAX,
            });
        }
        let time = i64::try_from(now_ms).unwrap_or(i64::MAX);
        self.doc
            .transact_with::<_, _, automerge::AutomergeError, _>(
                |_| {
                    CommitOptions::default()
                        .with_time(time)
                        .with_message(origin_node)
                },
                |tx| epoch::put_records(tx, &writes),
            )
            .map_err(|failure| CrdtError::Automerge(failure.error))?;
        if writes.iter().any(|(_, json)| json.is_none()) {
            self.records = self.count_records();
        } else {
            self.records += new_keys;
        }
        self.writes_made += 1;
        let keys = writes.into_iter().map(|(key, _)| key).collect();
        let change = self.doc.get_last_local_change();
        if let Some(change) = &change {
            self.history_bytes += change.raw_bytes().len() as u64;
        }
        Ok(change.map(|change| LocalChange { change, keys }))
    }
}

/// True when writing `put` over the values a key holds now would change nothing. For an
/// observation the time it was made is not part of the value: re-asserting a state only
/// refreshes liveness.
fn unchanged(put: &Put, current: &[String]) -> bool {
    let Ok(new) = put.json() else { return false };
    match (new, current) {
        (None, []) => true,
        (None, _) | (Some(_), []) => false,
        (Some(new), [only]) => match put {
            Put::Observation { observation, .. } => serde_json::from_str::<Observation>(only)
                .is_ok_and(|old| old.same_value(observation)),
            _ => &new == only,
        },
        // A conflict is resolved by writing, even the same value.
        (Some(_), _) => false,
    }
}
