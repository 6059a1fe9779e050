//! The discrete-event heap: events ordered by virtual time, ties broken by the order in
//! which they were scheduled (corrosion's `Scheduled { at, seq, ev }`), so that a run is a
//! function of its seed alone.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// An event in the heap; equal times are broken by the order of scheduling.
#[derive(Debug)]
pub(crate) struct Scheduled<E> {
    /// Virtual time of the event, in microseconds since the start of the run.
    pub(crate) at_us: u64,
    /// Scheduling order, unique per queue.
    pub(crate) seq: u64,
    pub(crate) ev: E,
}

impl<E> PartialEq for Scheduled<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at_us, self.seq) == (other.at_us, other.seq)
    }
}

impl<E> Eq for Scheduled<E> {}

impl<E> PartialOrd for Scheduled<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<E> Ord for Scheduled<E> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at_us, self.seq).cmp(&(other.at_us, other.seq))
    }
}

/// A min-heap of scheduled events.
#[derive(Debug)]
pub(crate) struct Queue<E> {
    heap: BinaryHeap<Reverse<Scheduled<E>>>,
    seq: u64,
}

impl<E> Queue<E> {
    pub(crate) fn new() -> Self {
        Self {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }

    /// Schedules `ev` at `at_us`, or at `now_us` when that is already past: an event never
    /// happens before the present.
    pub(crate) fn push(&mut self, now_us: u64, at_us: u64, ev: E) {
        self.seq += 1;
        self.heap.push(Reverse(Scheduled {
            at_us: at_us.max(now_us),
            seq: self.seq,
            ev,
        }));
    }

    /// The earliest event (the first scheduled among equal times).
    pub(crate) fn pop(&mut self) -> Option<Scheduled<E>> {
        self.heap.pop().map(|Reverse(s)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_out_by_time_then_by_scheduling_order() {
        let mut queue = Queue::new();
        queue.push(0, 20, "late");
        queue.push(0, 10, "first at ten");
        queue.push(0, 10, "second at ten");
        queue.push(15, 5, "past, so at fifteen");
        let order: Vec<&str> = std::iter::from_fn(|| queue.pop().map(|s| s.ev)).collect();
        assert_eq!(
            order,
            [
                "first at ten",
                "second at ten",
                "past, so at fifteen",
                "late"
            ]
        );
    }
}
