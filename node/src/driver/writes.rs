//! Client writes and record changes of one iteration (group commit), and `?ack=N` waiters.

use statusmesh_crdt::StatusWrite;
use tokio::sync::oneshot;

use super::{now_ms, Driver, WriteReply};

impl Driver {
    /// Applies this iteration's writes as one group: one Automerge change per service, one
    /// push per peer, one fsync (in `commit`) before any of them is answered.
    pub(super) fn apply_write_batch(&mut self) {
        if self.write_batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.write_batch);
        let (writes, replies): (Vec<StatusWrite>, Vec<_>) = batch.into_iter().unzip();
        let now = now_ms();
        match self.node.local_write_batch(now, &writes) {
            Ok(results) => {
                let cursor = self.node.replica().cursor().encode();
                for ((changed, change), reply) in results.into_iter().zip(replies) {
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
            }
            Err(_) => {
                // One write broke a rule for the whole batch (a limit): apply them one by one
                // so that each gets its own answer.
                for (write, reply) in writes.into_iter().zip(replies) {
                    match self.node.local_write(now, &write) {
                        Ok(changed) => {
                            let value = WriteReply {
                                changed,
                                cursor: self.node.replica().cursor().encode(),
                                change: if changed {
                                    self.node.last_local_change()
                                } else {
                                    None
                                },
                            };
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
