//! Resume: what a client at a cursor has not seen, across every document, each event with the
//! cursor a client holds once it has it.

use crate::cursor::Cursor;
use crate::doc::{Delivery, Transition};
use crate::replica::Replica;

impl Replica {
    /// Every transition a client at `cursor` has not seen, document by document, each with the
    /// cursor to resume from once the client has it (the documents before it complete, this
    /// one at the transition, the ones after as the client had them). A cursor of the epoch
    /// just closed is answered across the rollover. `None` when this replica does not hold
    /// every change the cursor names: it cannot tell (wait for peers, or send a snapshot).
    pub fn transitions_since(
        &self,
        cursor: &Cursor,
        delivery: Delivery,
    ) -> Option<Vec<(Transition, Cursor)>> {
        for (service, heads) in cursor.iter() {
            match self.doc(service) {
                Some(doc) if doc.has_all(heads) || doc.prev_has_all(heads) => {}
                _ => return None,
            }
        }
        let mut running = cursor.clone();
        let mut out = Vec::new();
        for doc in self.docs() {
            let service = doc.service();
            let before = cursor.heads_of(service);
            let now = doc.heads();
            if before == now.as_slice() {
                continue;
            }
            let within = cursor.within_of(service);
            let transitions = if doc.has_all(before) {
                doc.transitions_after(before, within, delivery)?
            } else {
                doc.transitions_since_prev(before, within, delivery)?
            };
            // A page that stops short of the heads leaves the client there, not at the end.
            let partial = delivery == Delivery::Pages
                && transitions
                    .last()
                    .is_some_and(|t| t.heads != now || t.within.is_some());
            for transition in transitions {
                running.set_in_epoch(service.clone(), transition.heads.clone(), transition.epoch);
                running.set_within(service, transition.within);
                out.push((transition, running.clone()));
            }
            if !partial {
                // Nothing (more) to tell (only a base, or writes the client has): it is at
                // the end now.
                running.set_in_epoch(service.clone(), now, doc.epoch());
            }
        }
        Some(out)
    }

    /// Whether a client at `cursor` holds every document as this replica does now: after a
    /// page of [`Delivery::Pages`], whether it must ask again.
    pub fn is_at_end(&self, cursor: &Cursor) -> bool {
        self.docs().all(|doc| {
            cursor.heads_of(doc.service()) == doc.heads().as_slice()
                && cursor.within_of(doc.service()).is_none()
        })
    }
}
