//! The checkers: what must hold of a run, judged from outside the nodes.
//!
//! - [`convergence`]: after the heal every node holds the same heads and liveness within the
//!   bound, and converged nodes show equal views at equal time.
//! - [`writes`]: delivery of every acknowledged write, and that none is lost unless every disk
//!   that held it was.
//! - [`subscribers`]: a subscriber's stream has no duplicate, no gap, and never goes
//!   backwards, live and across reconnects; [`cursor`] judges "never backwards", epochs
//!   included; [`history`] checks each stream's transitions per record against the writes
//!   made (every one told, in each writer's order, unless the stream said it coalesced).
//!
//! - [`probes`]: regional probe assignment (rendezvous over live members): after the heal
//!   exactly one prober per (check, region); under faults the longest unowned stretch.
//!
//! - [`webhooks`]: the virtual webhook receiver: after the heal every transition reached every
//!   subscription at least once; duplicates counted by cause.
//!
//! Protocol invariants of a single node are `gossip::invariants::check`, which the driver
//! runs after every input.

pub(crate) mod convergence;
pub(crate) mod cursor;
pub(crate) mod history;
pub mod probes;
pub(crate) mod subscribers;
pub mod webhooks;
pub(crate) mod writes;

#[cfg(test)]
mod tests;

use statusmesh_crdt::{Cursor, Replica};

pub(crate) use subscribers::Subscriber;

/// A replica's cursor without services whose heads are empty (a document created by a batch
/// whose dependencies are still missing): the text form drops them, and they mean the same
/// as an absent service.
pub(crate) fn cursor_of(replica: &Replica) -> Cursor {
    normalized(&replica.cursor())
}

/// `cursor` without services whose heads are empty.
pub(crate) fn normalized(cursor: &Cursor) -> Cursor {
    Cursor::new(
        cursor
            .iter()
            .filter(|(_, heads)| !heads.is_empty())
            .map(|(service, heads)| (service.clone(), heads.to_vec()))
            .collect(),
    )
}
