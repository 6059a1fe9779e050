//! Acknowledged writes: when each node first held one (the latency figures), and at the end
//! that every write that did not go down with every disk that held it is present.

use crate::failure::Failure;
use crate::sim::Sim;

impl Sim {
    /// Node `to` was handed a frame carrying tracked write `w`: note when it first held it.
    pub(crate) fn note_delivery(&mut self, w: usize, to: usize) {
        let record = &self.out.writes[w];
        if record.delivered_us[to].is_some() {
            return;
        }
        if self.holds(to, w) {
            let delay = self.now_us - record.at_us;
            self.out.writes[w].delivered_us[to] = Some(delay);
        }
    }

    /// Whether running node `node` holds tracked write `w`.
    pub(crate) fn holds(&self, node: usize, w: usize) -> bool {
        let record = &self.out.writes[w];
        self.slots[node]
            .node
            .as_ref()
            .and_then(|n| n.replica().doc(&record.service))
            // A change that just arrived is usually a head, which is much cheaper to ask; after
            // a rollover the write is covered by a base or carried under another hash.
            .is_some_and(|d| {
                d.heads().contains(&record.hash)
                    || d.has_all(&[record.hash])
                    || d.holds_write(&record.id)
            })
    }

    /// Every acknowledged write that did not go down with every disk that held it is present.
    /// Called once cursors are equal: equal heads mean equal histories, so the first node
    /// stands for all. False after a failure.
    pub(crate) fn check_acknowledged_writes(&mut self) -> bool {
        for w in 0..self.out.writes.len() {
            if self.out.writes[w].lost_with_disk {
                continue;
            }
            if !self.holds(0, w) {
                let record = &self.out.writes[w];
                self.fail(Failure::AcknowledgedWriteLost {
                    write: w,
                    node: self.members[record.node].id.clone(),
                    at_ms: record.at_us / 1_000,
                });
                return false;
            }
        }
        true
    }
}
