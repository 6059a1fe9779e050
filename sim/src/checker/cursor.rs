//! "Never backwards": whether a subscriber's new cursor covers its old one, across epochs.

use std::collections::{BTreeMap, BTreeSet};

use statusmesh_crdt::epoch::{ActorKind, Lineage};
use statusmesh_crdt::{Cursor, Name, Replica};

use crate::failure::CursorRegression;

/// The epoch lineage of every document of a replica.
pub(crate) fn lineages_of(replica: &Replica) -> BTreeMap<Name, Lineage> {
    replica
        .docs()
        .map(|d| (d.service().clone(), d.lineage()))
        .collect()
}

/// True when `new` names every change `old` names, or a descendant of it: everything `new`
/// lacks, `old` lacked too. Judged on `replica`, which must hold both, and whose heads `new`
/// names. `old_lineages` are the epoch lineages the old cursor was taken in: when a service's
/// document has moved to a later epoch since (or adopted the winning base of the same one),
/// the old heads are of an older epoch and cannot be compared change by change; then the
/// new cursor covers the old when every write of the previous epoch (which holds the old
/// heads, when the node kept it) is still held.
pub(crate) fn covers(
    replica: &Replica,
    old: &Cursor,
    old_lineages: &BTreeMap<Name, Lineage>,
    new: &Cursor,
) -> Result<(), CursorRegression> {
    for (service, old_heads) in old.iter() {
        let doc = replica
            .doc(service)
            .ok_or_else(|| CursorRegression::ServiceMissing {
                service: service.clone(),
            })?;
        let new_heads = new.heads_of(service);
        if !doc.has_all(new_heads) {
            return Err(CursorRegression::NewHeadsMissing {
                service: service.clone(),
            });
        }
        let lineage = doc.lineage();
        if let Some(old_lineage) = old_lineages.get(service).filter(|l| **l != lineage) {
            if lineage.epoch < old_lineage.epoch {
                return Err(CursorRegression::OlderEpoch {
                    service: service.clone(),
                    new_epoch: lineage.epoch,
                    old_epoch: old_lineage.epoch,
                });
            }
            if doc.prev_has_all(old_heads) {
                let lost = doc.prev_writes().into_iter().find_map(|c| {
                    ActorKind::parse(c.actor_id())
                        .and_then(|k| k.write_id(c.seq()))
                        .filter(|w| !doc.holds_write(w))
                });
                if let Some(write) = lost {
                    return Err(CursorRegression::LostPreviousWrite {
                        service: service.clone(),
                        epoch: lineage.epoch,
                        write: write.n,
                    });
                }
            }
            continue;
        }
        if !doc.has_all(old_heads) {
            return Err(CursorRegression::OldHeadsMissing {
                service: service.clone(),
            });
        }
        let lacked_before: BTreeSet<Vec<u8>> = doc.changes_since(old_heads).into_iter().collect();
        if doc
            .changes_since(new_heads)
            .iter()
            .any(|c| !lacked_before.contains(c))
        {
            return Err(CursorRegression::LostChanges {
                service: service.clone(),
            });
        }
    }
    Ok(())
}
