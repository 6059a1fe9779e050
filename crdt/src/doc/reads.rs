//! Reads: one record or every record of a kind, with the values that lost a concurrent write
//! and the origin of the winner, and the whole state as comparable values.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use automerge::iter::MapRangeItem;
use automerge::{Automerge, ChangeHash, ObjId, ReadDoc, ROOT};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::schema::{incident_key, prefix_range, str_of, updates_of, RecordKey, RecordKind};
use super::ServiceDoc;
use crate::checks::Check;
use crate::epoch::{EpochMeta, Origin, META_KEY};
use crate::flags::Flag;
use crate::model::{Name, Observation};
use crate::records::{Incident, IncidentUpdate, Maintenance, Override};
use crate::webhooks::{Webhook, WebhookProgress};

/// What a record holds: the winning value and the values that lost a concurrent write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Read<T> {
    pub value: T,
    pub conflicts: Vec<T>,
    /// The node whose change set the winning value, if the change names one.
    pub origin_node: Option<String>,
    /// When that change was made, on its origin's clock.
    pub changed_at_ms: Option<u64>,
}

/// An incident update and the key it is stored under (`upd/<incident>/<key>`).
pub type KeyedUpdate = (String, IncidentUpdate);

/// An observation cell as read.
pub type CellRead = Read<Observation>;

/// One record as raw JSON, for comparing two states of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RecordState {
    /// The winner first, then the values that lost a concurrent write, sorted.
    pub(super) values: Vec<String>,
    /// Where the winner came from.
    pub(super) origin: Origin,
}

impl ServiceDoc {
    /// One cell's current value, if it holds one.
    pub fn cell(&self, component: &Name, region: &Name) -> Option<CellRead> {
        let key = RecordKey::Observation {
            component: component.clone(),
            region: region.clone(),
        }
        .to_key();
        self.read_at(&key, None)
    }

    /// Every cell with its current value, ordered by (component, region).
    pub fn cells(&self) -> BTreeMap<(Name, Name), CellRead> {
        self.records_of(RecordKind::Observation)
            .filter_map(|(key, read)| match key {
                RecordKey::Observation { component, region } => Some(((component, region), read)),
                _ => None,
            })
            .collect()
    }

    /// Every incident with its updates (oldest first), each with the key it is stored under,
    /// ordered by id.
    pub fn incidents(&self) -> Vec<(Name, Read<Incident>, Vec<KeyedUpdate>)> {
        let mut updates: BTreeMap<Name, Vec<KeyedUpdate>> = BTreeMap::new();
        for (key, read) in self.records_of::<IncidentUpdate>(RecordKind::Update) {
            if let RecordKey::Update { incident, key } = key {
                updates.entry(incident).or_default().push((key, read.value));
            }
        }
        self.records_of::<Incident>(RecordKind::Incident)
            .filter_map(|(key, read)| match key {
                RecordKey::Incident { id } => {
                    let mut list = updates.remove(&id).unwrap_or_default();
                    list.sort_by_key(|(_, u)| u.at_ms);
                    Some((id, read, list))
                }
                _ => None,
            })
            .collect()
    }

    /// The number of updates an incident holds.
    pub fn update_count(&self, incident: &Name) -> usize {
        self.doc.map_range(ROOT, updates_of(incident)).count()
    }

    /// Every maintenance window, ordered by id.
    pub fn maintenance(&self) -> Vec<(Name, Maintenance)> {
        self.records_of::<Maintenance>(RecordKind::Maintenance)
            .filter_map(|(key, read)| match key {
                RecordKey::Maintenance { id } => Some((id, read.value)),
                _ => None,
            })
            .collect()
    }

    /// Every override, by component.
    pub fn overrides(&self) -> BTreeMap<Name, Override> {
        self.records_of::<Override>(RecordKind::Override)
            .filter_map(|(key, read)| match key {
                RecordKey::Override { component } => Some((component, read.value)),
                _ => None,
            })
            .collect()
    }

    /// Every feature flag, by key.
    pub fn flags(&self) -> BTreeMap<Name, Flag> {
        self.records_of::<Flag>(RecordKind::Flag)
            .filter_map(|(key, read)| match key {
                RecordKey::Flag { key } => Some((key, read.value)),
                _ => None,
            })
            .collect()
    }

    /// The regional probe check of `component`, if it has one.
    pub fn check(&self, component: &Name) -> Option<Check> {
        let key = RecordKey::Check {
            component: component.clone(),
        }
        .to_key();
        self.read_at::<Check>(&key, None).map(|r| r.value)
    }

    /// Every region's cell of `component`, by region (reads only that component's keys).
    pub fn cells_of(&self, component: &Name) -> Vec<(Name, CellRead)> {
        self.doc
            .map_range(ROOT, prefix_range(&format!("obs/{component}")))
            .filter_map(|item| match RecordKey::parse(&item.key)? {
                RecordKey::Observation {
                    component: c,
                    region,
                } if &c == component => Some((region, self.read_at(&item.key, None)?)),
                _ => None,
            })
            .collect()
    }

    /// Every regional probe check, by component.
    pub fn checks(&self) -> BTreeMap<Name, Check> {
        self.records_of::<Check>(RecordKind::Check)
            .filter_map(|(key, read)| match key {
                RecordKey::Check { component } => Some((component, read.value)),
                _ => None,
            })
            .collect()
    }

    /// Every outgoing webhook subscription that follows this service, by id.
    pub fn webhooks(&self) -> BTreeMap<Name, Webhook> {
        self.records_of::<Webhook>(RecordKind::Webhook)
            .filter_map(|(key, read)| match key {
                RecordKey::Webhook { id } => Some((id, read.value)),
                _ => None,
            })
            .collect()
    }

    /// How far each subscription's deliveries of this service got, by id.
    pub fn webhook_progress(&self) -> BTreeMap<Name, WebhookProgress> {
        self.records_of::<WebhookProgress>(RecordKind::WebhookProgress)
            .filter_map(|(key, read)| match key {
                RecordKey::WebhookProgress { id } => Some((id, read.value)),
                _ => None,
            })
            .collect()
    }

    /// One incident's header, if it exists.
    pub fn incident(&self, id: &Name) -> Option<Incident> {
        self.read_at::<Incident>(&incident_key(id), None)
            .map(|r| r.value)
    }

    /// Every record's values and origin now, for comparing states.
    pub(super) fn reads(&self) -> BTreeMap<String, RecordState> {
        reads_of(&self.doc, None, self.base.as_ref(), &self.meta)
    }

    /// The JSON values `key` holds now (more than one in a conflict).
    pub(super) fn raw_values(&self, key: &str) -> Vec<String> {
        self.doc
            .get_all(ROOT, key)
            .map(|values| values.iter().filter_map(|(v, _)| str_of(v)).collect())
            .unwrap_or_default()
    }

    /// The record under `key` at `heads` (now when `None`), if it holds a valid value.
    pub(super) fn read_at<T: DeserializeOwned>(
        &self,
        key: &str,
        heads: Option<&[ChangeHash]>,
    ) -> Option<Read<T>> {
        read_in(self.source(), key, heads)
    }

    /// The current epoch's document, to read from.
    pub(super) fn source(&self) -> Source<'_> {
        Source {
            service: &self.service,
            doc: &self.doc,
            base: self.base.as_ref(),
            meta: &self.meta,
        }
    }

    /// The previous epoch's document, when it is kept.
    pub(super) fn prev_source(&self) -> Option<Source<'_>> {
        self.prev.as_ref().map(|prev| Source {
            service: &self.service,
            doc: &prev.doc,
            base: prev.base.as_ref(),
            meta: &prev.meta,
        })
    }

    /// Every record of `kind` now, in key order.
    fn records_of<'a, T: DeserializeOwned + 'a>(
        &'a self,
        kind: RecordKind,
    ) -> impl Iterator<Item = (RecordKey, Read<T>)> + 'a {
        self.doc
            .map_range(ROOT, kind.keys())
            .filter_map(move |item| {
                let key = RecordKey::parse(&item.key)?;
                let read = self.read_at(&item.key, None)?;
                Some((key, read))
            })
    }
}

/// The keys whose record differs between two states: changed, added or gone.
pub(super) fn changed_keys(
    before: &BTreeMap<String, RecordState>,
    after: &BTreeMap<String, RecordState>,
) -> BTreeSet<String> {
    let mut keys: BTreeSet<String> = after
        .iter()
        .filter(|(key, read)| before.get(*key) != Some(*read))
        .map(|(key, _)| key.clone())
        .collect();
    keys.extend(before.keys().filter(|k| !after.contains_key(*k)).cloned());
    keys
}

/// The origin of the op `id` of `key` in `doc`: the change that made it, or for a value a base
/// restates, the origin the base recorded.
fn origin_in(
    doc: &Automerge,
    base: Option<&ChangeHash>,
    meta: &EpochMeta,
    key: &str,
    id: &ObjId,
) -> Origin {
    let Some(hash) = doc.hash_for_opid(id) else {
        return Origin::default();
    };
    if Some(&hash) == base {
        return meta.origins.get(key).cloned().unwrap_or_default();
    }
    let Some(meta) = doc.get_change_meta_by_hash(&hash) else {
        return Origin::default();
    };
    Origin {
        node: meta.message.as_deref().map(str::to_owned),
        at_ms: u64::try_from(meta.timestamp).ok(),
    }
}

/// One epoch's document of a service, with what it needs to name origins: the current one,
/// or the previous one kept for cursors of the epoch just closed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Source<'a> {
    pub(super) service: &'a Name,
    pub(super) doc: &'a Automerge,
    pub(super) base: Option<&'a ChangeHash>,
    pub(super) meta: &'a EpochMeta,
}

/// The record under `key` of `src` at `heads` (now when `None`), if it holds a valid value.
pub(super) fn read_in<T: DeserializeOwned>(
    src: Source<'_>,
    key: &str,
    heads: Option<&[ChangeHash]>,
) -> Option<Read<T>> {
    let (winner, all) = match heads {
        Some(h) => (
            src.doc.get_at(ROOT, key, h).ok()??,
            src.doc.get_all_at(ROOT, key, h).ok()?,
        ),
        None => (
            src.doc.get(ROOT, key).ok()??,
            src.doc.get_all(ROOT, key).ok()?,
        ),
    };
    let origin = origin_in(src.doc, src.base, src.meta, key, &winner.1);
    let value: T = serde_json::from_str(&str_of(&winner.0)?).ok()?;
    // The winner is what Automerge's `get` returns, the same on every replica; the other
    // values of `get_all` lost a concurrent write.
    let conflicts = all
        .iter()
        .filter(|(_, id)| *id != winner.1)
        .filter_map(|(v, _)| serde_json::from_str(&str_of(v)?).ok())
        .collect();
    Some(Read {
        value,
        conflicts,
        origin_node: origin.node,
        changed_at_ms: origin.at_ms,
    })
}

/// One entry of the root map as [`reads_of`] first sees it.
struct RootEntry {
    key: String,
    winner: Option<String>,
    id: ObjId,
    conflict: bool,
}

impl RootEntry {
    fn of(item: MapRangeItem<'_>) -> Self {
        let (id, conflict) = (item.id(), item.conflict);
        let winner = str_of(&item.value.into_value());
        Self {
            key: item.key.into_owned(),
            winner,
            id,
            conflict,
        }
    }
}

/// Every record of `doc` (at `heads`, or now) with its values (winner first) and origin. One
/// pass over the root map: only keys in conflict are read again for their other values, and
/// the origin of each change is looked up once (a group commit sets many keys).
pub(super) fn reads_of(
    doc: &Automerge,
    heads: Option<&[ChangeHash]>,
    base: Option<&ChangeHash>,
    meta: &EpochMeta,
) -> BTreeMap<String, RecordState> {
    let entries: Vec<RootEntry> = match heads {
        Some(h) => doc.map_range_at(ROOT, .., h).map(RootEntry::of).collect(),
        None => doc.map_range(ROOT, ..).map(RootEntry::of).collect(),
    };
    let mut origins: HashMap<ChangeHash, Origin> = HashMap::new();
    let mut out = BTreeMap::new();
    for RootEntry {
        key,
        winner,
        id,
        conflict,
    } in entries
    {
        if key == META_KEY {
            continue;
        }
        let mut values: Vec<String> = winner.into_iter().collect();
        if conflict {
            let all = match heads {
                Some(h) => doc.get_all_at(ROOT, key.as_str(), h),
                None => doc.get_all(ROOT, key.as_str()),
            };
            let mut losers: Vec<String> = all
                .unwrap_or_default()
                .iter()
                .filter(|(_, other)| *other != id)
                .filter_map(|(v, _)| str_of(v))
                .collect();
            losers.sort();
            values.extend(losers);
        }
        let origin = match doc.hash_for_opid(&id) {
            Some(hash) if Some(&hash) == base => {
                meta.origins.get(&key).cloned().unwrap_or_default()
            }
            Some(hash) => origins
                .entry(hash)
                .or_insert_with(|| origin_in(doc, base, meta, &key, &id))
                .clone(),
            None => Origin::default(),
        };
        out.insert(key, RecordState { values, origin });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::fixtures::{doc, name, write};
    use crate::model::State;

    #[test]
    fn a_concurrent_write_leaves_the_loser_as_a_conflict_on_both_sides() {
        let (mut a, mut b) = (doc(1), doc(2));
        let from_a = write(&mut a, 1, "db", State::MajorOutage);
        let from_b = write(&mut b, 1, "db", State::Operational);
        a.apply_remote(&[from_b]).expect("valid");
        b.apply_remote(&[from_a]).expect("valid");
        let (db, eu) = (name("db"), name("eu-west"));
        let (cell_a, cell_b) = (a.cell(&db, &eu), b.cell(&db, &eu));
        assert_eq!(cell_a, cell_b);
        let cell = cell_a.expect("a value");
        assert_eq!(cell.conflicts.len(), 1);
        assert_ne!(cell.conflicts[0].state, cell.value.state);
    }

    #[test]
    fn a_value_reads_with_the_node_and_time_of_its_change() {
        let mut d = doc(1);
        write(&mut d, 42, "db", State::Operational);
        let cell = d.cell(&name("db"), &name("eu-west")).expect("a value");
        assert_eq!(cell.origin_node.as_deref(), Some("n1"));
        assert_eq!(cell.changed_at_ms, Some(42));
        assert!(d.cell(&name("web"), &name("eu-west")).is_none());
    }

    #[test]
    fn cells_come_ordered_by_component_and_region() {
        let mut d = doc(1);
        for component in ["web", "api", "db"] {
            write(&mut d, 1, component, State::Operational);
        }
        let cells = d.cells();
        let order: Vec<&str> = cells.keys().map(|(c, _)| c.as_str()).collect();
        assert_eq!(order, ["api", "db", "web"]);
    }

    #[test]
    fn changed_keys_are_the_records_changed_added_or_gone() {
        let state = |value: &str| RecordState {
            values: vec![value.to_owned()],
            origin: Origin::default(),
        };
        let before = BTreeMap::from([
            ("same".to_owned(), state("1")),
            ("changed".to_owned(), state("1")),
            ("gone".to_owned(), state("1")),
        ]);
        let after = BTreeMap::from([
            ("same".to_owned(), state("1")),
            ("changed".to_owned(), state("2")),
            ("added".to_owned(), state("1")),
        ]);
        let keys: Vec<String> = changed_keys(&before, &after).into_iter().collect();
        assert_eq!(keys, ["added", "changed", "gone"]);
    }
}
