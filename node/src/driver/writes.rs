//! Client writes and record changes of one iteration (group commit in the core), and
//! `?ack=N` waiters.

use statusmesh_gossip::{LocalWrite, WriteResult};
use tokio::sync::oneshot;

use super::{now_ms, Driver, WriteReply};

impl Driver {
    /// Applies this iteration's writes and record changes as one group (the core makes one
    /// Automerge change per service of a run of status writes, and falls back to one by one
    /// when a rule breaks for the whole run); one fsync (in `commit`) comes before any of
    /// them is answered. A refused write is answered at once: nothing of it was applied.
    pub(super) fn apply_write_batch(&mut self) {
        if self.write_batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.write_batch);
        let (writes, replies): (Vec<LocalWrite>, Vec<_>) = batch.into_iter().unzip();
        let results = self.node.local_writes(now_ms(), writes);
        debug_assert_eq!(results.len(), replies.len(), "one result per write");
        let cursor = self.node.replica().cursor().encode();
        for (result, reply) in results.into_iter().zip(replies) {
            match result {
                Ok(WriteResult { changed, change }) => {
                    let value = WriteReply {
                        changed,
                        cursor: cursor.clone(),
                        change,
                    };
                    // Even an unchanged write waits for the commit: the value it confirms
                    // may be from an earlier write of this same iteration.
                    self.pending_acks.push(Box::new(move || {
                        let _ = reply.send(Ok(value));
                    }));
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
    }

    pub(super) fn answer_ack_waiters(&mut self) {
        if self.ack_waiters.is_empty() {
            return;
        }
        let node = &self.node;
        self.ack_waiters.retain_mut(|(change, regions, reply)| {
            if reply.is_closed() {
                return false;
            }
            let holding = node.regions_holding(change).unwrap_or(0);
            if holding < *regions {
                return true;
            }
            // Send needs the sender by value: swap in a closed one.
            let (closed, _) = oneshot::channel();
            let _ = std::mem::replace(reply, closed).send(holding);
            false
        });
    }
}
