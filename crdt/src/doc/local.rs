//! Local writes: a batch of puts checked whole against the document (a plan), then written
//! as one Automerge change. Planning reads only, so a refused write has changed nothing.

use std::collections::BTreeSet;

use automerge::transaction::CommitOptions;
use automerge::{Change, ChangeHash, ReadDoc, ROOT};

use super::schema::{updates_of, Put};
use super::{ServiceDoc, RECORDS_MAX};
use crate::epoch;
use crate::error::CrdtError;
use crate::model::{Observation, StatusWrite};
use crate::records::UPDATES_MAX;

/// A local write checked against the document and ready to commit (see
/// [`ServiceDoc::plan_puts`]).
#[derive(Debug)]
pub(crate) struct PlannedPuts {
    /// The heads the plan was made at: it holds for that state only.
    heads: Vec<ChangeHash>,
    /// The records to put (`None` deletes): the last put of each key, where it changes a value.
    writes: Vec<(String, Option<String>)>,
    /// How many of them are keys the document does not hold yet.
    new_keys: usize,
}

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
        match self.plan_puts(puts)? {
            Some(plan) => self.commit_puts(now_ms, origin_node, plan),
            None => Ok(None),
        }
    }

    /// Checks `puts` against the document without writing anything: every error
    /// [`Self::apply_puts`] can return but Automerge's. `None` when the puts would change
    /// nothing. Commit the plan with [`Self::commit_puts`] before anything else writes here.
    pub(crate) fn plan_puts(&self, puts: &[Put]) -> Result<Option<PlannedPuts>, CrdtError> {
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
        Ok(Some(PlannedPuts {
            heads: self.doc.get_heads(),
            writes,
            new_keys,
        }))
    }

    /// Writes a plan of [`Self::plan_puts`] as one change. Only Automerge can refuse it, and
    /// then its transaction is rolled back: nothing changed.
    pub(crate) fn commit_puts(
        &mut self,
        now_ms: u64,
        origin_node: &str,
        plan: PlannedPuts,
    ) -> Result<Option<LocalChange>, CrdtError> {
        assert_eq!(
            plan.heads,
            self.doc.get_heads(),
            "a plan is committed to the document state it was made for"
        );
        let PlannedPuts {
            writes, new_keys, ..
        } = plan;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::fixtures::{doc, incident, name, put, snapshot, update, write};
    use crate::model::State;

    #[test]
    fn a_batch_is_one_change_that_reports_the_keys_it_wrote() {
        let mut d = doc(1);
        let written = d
            .apply_puts_keys(
                5,
                "n1",
                &[
                    put("db", State::Operational, ""),
                    put("web", State::MajorOutage, ""),
                ],
            )
            .expect("valid")
            .expect("a change");
        assert_eq!(d.history_len(), 1);
        assert_eq!(written.change.message(), Some("n1"));
        assert_eq!(written.change.timestamp(), 5);
        let keys: Vec<&str> = written.keys.iter().map(String::as_str).collect();
        assert_eq!(keys, ["obs/db/eu-west", "obs/web/eu-west"]);
    }

    #[test]
    fn rewriting_the_same_value_makes_no_change() {
        let mut d = doc(1);
        write(&mut d, 1, "db", State::Operational);
        let again = d
            .apply_puts(2, "n1", &[put("db", State::Operational, "")])
            .expect("valid");
        assert!(again.is_none());
        assert_eq!(d.history_len(), 1);
    }

    #[test]
    fn only_the_last_put_of_a_key_in_a_batch_counts() {
        let mut d = doc(1);
        write(&mut d, 1, "db", State::Operational);
        let puts = [
            put("db", State::Operational, ""),
            put("db", State::MajorOutage, ""),
            put("db", State::Operational, ""),
        ];
        assert!(d.apply_puts(2, "n1", &puts).expect("valid").is_none());
    }

    #[test]
    fn a_batch_with_one_invalid_put_is_refused_and_changes_nothing() {
        let mut d = doc(1);
        write(&mut d, 1, "db", State::Operational);
        let before = snapshot(&d);
        let mut bad = put("web", State::MajorOutage, "");
        if let Put::Observation { observation, .. } = &mut bad {
            observation.ttl_ms = 0;
        }
        let err = d
            .apply_puts(2, "n1", &[put("api", State::MajorOutage, ""), bad])
            .expect_err("refused");
        assert_eq!(err.field(), Some("ttl_ms"));
        assert_eq!(snapshot(&d), before);
    }

    #[test]
    fn an_incident_full_of_updates_refuses_another_and_changes_nothing() {
        let mut d = doc(1);
        let mut puts = vec![Put::Incident {
            id: name("i1"),
            incident: incident(),
        }];
        puts.extend((0..UPDATES_MAX).map(|i| Put::Update {
            incident: name("i1"),
            key: format!("k{i:04}"),
            update: update(i as u64, "step"),
        }));
        d.apply_puts(1, "n1", &puts)
            .expect("valid")
            .expect("a change");
        assert_eq!(d.update_count(&name("i1")), UPDATES_MAX);
        let before = snapshot(&d);
        let one_more = Put::Update {
            incident: name("i1"),
            key: "k9999".into(),
            update: update(9_999, "one too many"),
        };
        let err = d.apply_puts(2, "n1", &[one_more]).expect_err("refused");
        assert_eq!(err.field(), Some("updates"));
        assert_eq!(snapshot(&d), before);
        assert_eq!(d.update_count(&name("i1")), UPDATES_MAX);
    }

    #[test]
    fn a_document_at_the_record_limit_refuses_new_keys_and_changes_nothing() {
        let mut d = doc(1);
        write(&mut d, 1, "db", State::Operational);
        let before = snapshot(&d);
        // One record held and as many new ones as the limit: one too many.
        let puts: Vec<Put> = (0..RECORDS_MAX)
            .map(|i| put(&format!("c{i}"), State::Operational, ""))
            .collect();
        let err = d.apply_puts(2, "n1", &puts).expect_err("refused");
        assert!(
            matches!(
                err,
                CrdtError::TooManyCells {
                    count: 1,
                    limit: RECORDS_MAX,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(snapshot(&d), before);
    }

    #[test]
    fn a_plan_writes_nothing_until_it_is_committed() {
        let mut d = doc(1);
        let plan = d
            .plan_puts(&[put("db", State::Operational, "")])
            .expect("valid")
            .expect("a change to make");
        assert!(d.heads().is_empty());
        let written = d.commit_puts(3, "n1", plan).expect("commits");
        assert!(written.is_some());
        assert_eq!(d.heads().len(), 1);
    }
}
