//! The driver's side of storage: what changed since the last commit goes to the storage
//! thread, with the replies of this iteration's writes to send after the fsync.

use statusmesh_crdt::ChangeHash;
use statusmesh_gossip::AcceptedBatch;
use tracing::warn;

use super::Driver;
use crate::storage::{Batch, DocWrite, LogSize};

/// What the driver remembers per document about what it handed to storage.
#[derive(Debug, Default)]
pub struct Persisted {
    pub heads: Vec<ChangeHash>,
    pub log: LogSize,
    /// The epoch and base of the document as persisted: a new one means a rollover, which
    /// is saved as a new snapshot (and the closed epoch as `prev`), not appended to the log.
    pub epoch: (u32, Option<ChangeHash>),
    /// The document's [`statusmesh_crdt::ServiceDoc::irregular_applies`] when last persisted.
    pub irregular_applies: u64,
    /// The last closed epoch whose writes went to the archive.
    pub archived_epoch: Option<u32>,
}

impl Driver {
    /// Remembers the bytes of an accepted remote batch so that `commit` can log them as they
    /// came instead of having Automerge rebuild them (`save_after` re-encodes changes from
    /// its op store: a fifth of a replica's CPU under load). Valid only while the batches of
    /// this iteration chain from the persisted heads; otherwise `commit` falls back.
    pub(super) fn note_remote(&mut self, batch: AcceptedBatch) {
        let AcceptedBatch {
            service,
            heads_before: before,
            heads_after: after,
            changes,
        } = batch;
        // Unchanged heads: the batch was rejected whole, or held nothing new (the core does
        // not report those; a stray one must not break the chain).
        if after == before {
            return;
        }
        let persisted = self
            .persisted
            .get(&service)
            .map(|p| p.heads.as_slice())
            .unwrap_or(&[]);
        match self.remote_records.get_mut(&service) {
            Some((tip, records)) if *tip == before => {
                records.extend(changes);
                *tip = after;
            }
            Some(_) => {
                self.remote_records.remove(&service);
                self.remote_broken.insert(service);
            }
            None if before == persisted && !self.remote_broken.contains(&service) => {
                self.remote_records.insert(service, (after, changes));
            }
            None => {}
        }
    }

    /// Hands storage the changes of every document that moved since the last commit (local
    /// and remote alike), with the replies to this iteration's writes; the storage thread
    /// sends those after its fsync. Documents whose log grew past the snapshot policy are
    /// saved whole instead.
    pub(super) async fn commit(&mut self) {
        self.writes_this_round = 0;
        if !self.touched && self.pending_acks.is_empty() {
            return;
        }
        self.touched = false;
        let policy = self.settings.snapshot;
        let mut docs = Vec::new();
        for doc in self.node.replica().docs() {
            let persisted = self.persisted.entry(doc.service().clone()).or_default();
            let heads = doc.heads();
            if heads == persisted.heads {
                continue;
            }
            let lineage = (doc.epoch(), doc.base());
            if lineage != persisted.epoch {
                // A rollover: the new epoch's document replaces snapshot and log whole, and
                // the closed epoch is kept beside it.
                persisted.epoch = lineage;
                persisted.irregular_applies = doc.irregular_applies();
                persisted.heads = heads;
                persisted.log = LogSize::default();
                self.remote_records.remove(doc.service());
                // The closed epoch's writes go to the archive once, when it becomes the
                // previous one (a switch between concurrent bases of one epoch keeps it).
                let closed = doc.prev_epoch();
                let archive = if closed.is_some() && closed != persisted.archived_epoch {
                    persisted.archived_epoch = closed;
                    statusmesh_crdt::archive::writes_of(&doc.prev_writes())
                } else {
                    Vec::new()
                };
                docs.push(DocWrite {
                    service: doc.service().clone(),
                    records: Vec::new(),
                    snapshot: Some(doc.save()),
                    prev: doc.save_prev(),
                    archive,
                });
                continue;
            }
            // A batch's bytes are what it added only if nothing else entered the document:
            // a change held back from an earlier batch and released now, or a write carried
            // here, is in no batch and would be missing from the log after a restart.
            let regular = doc.irregular_applies() == persisted.irregular_applies;
            persisted.irregular_applies = doc.irregular_applies();
            let records = match self.remote_records.remove(doc.service()) {
                // Accepted remote batches that lead exactly from the persisted heads to now
                // (duplicates among them load again harmlessly).
                Some((tip, records)) if tip == heads && regular => records,
                _ => doc.save_after(&persisted.heads),
            };
            persisted.heads = heads;
            persisted.log.records += records.len() as u64;
            persisted.log.bytes += records.iter().map(|r| r.len() as u64 + 8).sum::<u64>();
            let snapshot = if persisted.log.records > policy.log_records_max
                || persisted.log.bytes > policy.log_bytes_max
            {
                persisted.log = LogSize::default();
                Some(doc.save())
            } else {
                None
            };
            docs.push(DocWrite {
                service: doc.service().clone(),
                records: if snapshot.is_some() {
                    Vec::new()
                } else {
                    records
                },
                snapshot,
                prev: None,
                archive: Vec::new(),
            });
        }
        self.remote_records.clear();
        self.remote_broken.clear();
        if docs.is_empty() && self.pending_acks.is_empty() {
            return;
        }
        let batch = Batch {
            docs,
            on_durable: std::mem::take(&mut self.pending_acks),
        };
        let submitted = match &self.storage {
            Some(storage) => storage.submit(batch).await,
            None => false,
        };
        if !submitted {
            // The replies were dropped with the batch: writers see the node as unavailable,
            // never a false acknowledgement.
            warn!(node = %self.info.id, "storage is gone; writes are not acknowledged");
        }
    }
}
