//! Webhook deliveries judged from outside: the global virtual receiver and the end check of
//! the `webhooks` scenario (the virtual senders that feed it are `crate::senders`).
//!
//! The receiver records every delivery as (subscription, transition id, delivering node,
//! virtual time). A delivery of a transition the subscription already got is a duplicate,
//! counted by its cause ([`DuplicateCause`]): a delivery cut by a crash before its progress
//! was written, two nodes sending the same pair at once (split views under a partition:
//! unavoidable in an AP mesh, counted, not failed), or a sender that took over from a
//! progress record that had not replicated yet. After the heal and convergence, every
//! transition of every followed service since the subscription started must have reached
//! the subscription at least once, within the liveness bound.

use std::collections::BTreeMap;

use statusmesh_crdt::{Cursor, Delivery as Told, Name};
use statusmesh_gossip::webhooks::resume_cursor;

use crate::failure::Failure;

/// Synthetic subscriptions, each following every service of the workload.
pub const SUBSCRIPTIONS: usize = 4;
/// Most deliveries the receiver records; later ones are counted in `deliveries_dropped`.
const DELIVERIES_MAX: usize = 200_000;

/// Why a transition reached a subscription more than once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DuplicateCause {
    /// An earlier delivery's sender crashed before it wrote the progress past it.
    InFlightAtCrash,
    /// Another node was sending the same (subscription, service) at the time of this
    /// delivery or of an earlier one (a split view).
    TwoSenders,
    /// The sender started from a progress record that did not cover an earlier delivery (it
    /// had not replicated yet, or a concurrent progress write won the register).
    StaleProgress,
}

/// One delivery the receiver got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delivered {
    pub(crate) subscription: usize,
    pub(crate) service: Name,
    pub(crate) node: usize,
    pub(crate) at_us: u64,
    /// Another node held the pair as its sender when this one started.
    pub(crate) concurrent: bool,
    /// The sender crashed before the delivery completed (the receiver may have it).
    pub(crate) crashed: bool,
}

/// What the receiver got over a run, and the end check's findings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookWatch {
    /// The followed services, each with the cursor its subscriptions started at.
    pub(crate) started: Vec<(Name, Cursor)>,
    pub(crate) deliveries: Vec<Delivered>,
    /// The deliveries of each (subscription, transition id), in order.
    by_transition: BTreeMap<(usize, String), Vec<usize>>,
    /// Deliveries not recorded beyond the bound.
    pub deliveries_dropped: u64,
    /// Duplicates by cause.
    pub duplicates_in_flight: u64,
    pub duplicates_two_senders: u64,
    pub duplicates_stale_progress: u64,
    /// Deliveries cut by a crash of their sender.
    pub interrupted: u64,
    /// Times a node became the sender of a pair, starting from the replicated progress.
    pub sender_starts: u64,
    /// Progress records written after a delivery, and those held back because the next
    /// transition belongs to the same change (a cursor cannot point between them).
    pub progress_writes: u64,
    pub progress_held: u64,
    /// Transitions with no identity (coalesced or corrections) passed over by a sender.
    pub unnamed: u64,
    /// (subscription, transition) pairs the end check required, and found delivered.
    pub expected: u64,
    pub delivered_unique: u64,
    /// When every one had been delivered, after the heal; end checks that waited for it.
    pub complete_after_heal_ms: Option<u64>,
    pub waited_at_end: u64,
}

impl WebhookWatch {
    /// Records a delivery of `transition` and classifies it when it is a duplicate. Returns
    /// its index, `None` beyond the bound.
    pub(crate) fn record(&mut self, transition: &str, delivery: Delivered) -> Option<usize> {
        if self.deliveries.len() >= DELIVERIES_MAX {
            self.deliveries_dropped += 1;
            return None;
        }
        let index = self.deliveries.len();
        let earlier = self
            .by_transition
            .entry((delivery.subscription, transition.to_owned()))
            .or_default();
        if !earlier.is_empty() {
            let cause = if earlier.iter().any(|&e| self.deliveries[e].crashed) {
                DuplicateCause::InFlightAtCrash
            } else if delivery.concurrent || earlier.iter().any(|&e| self.deliveries[e].concurrent)
            {
                DuplicateCause::TwoSenders
            } else {
                DuplicateCause::StaleProgress
            };
            match cause {
                DuplicateCause::InFlightAtCrash => self.duplicates_in_flight += 1,
                DuplicateCause::TwoSenders => self.duplicates_two_senders += 1,
                DuplicateCause::StaleProgress => self.duplicates_stale_progress += 1,
            }
        }
        earlier.push(index);
        self.deliveries.push(delivery);
        Some(index)
    }

    /// Marks delivery `index` as cut by its sender's crash.
    pub(crate) fn interrupt(&mut self, index: usize) {
        if let Some(d) = self.deliveries.get_mut(index) {
            d.crashed = true;
            self.interrupted += 1;
        }
    }

    /// Every duplicate, whatever its cause.
    pub fn duplicates(&self) -> u64 {
        self.duplicates_in_flight + self.duplicates_two_senders + self.duplicates_stale_progress
    }

    /// Whether `subscription` got `transition` at least once.
    fn got(&self, subscription: usize, transition: &str) -> bool {
        self.by_transition
            .contains_key(&(subscription, transition.to_owned()))
    }
}

/// The subscription id of index `k`.
pub(crate) fn subscription_id(k: usize) -> String {
    format!("hook-{k}")
}

impl crate::sim::Sim {
    /// After the heal: every transition of every followed service since the start reached
    /// every subscription. False while some has not (the caller waits), and after a failure:
    /// when one is still missing past the liveness bound after the heal.
    pub(crate) fn check_webhooks(&mut self) -> bool {
        let Some(reference) = self.slots.iter().find_map(|s| s.node.as_ref()) else {
            return false;
        };
        let replica = reference.replica();
        let mut expected = 0u64;
        let mut missing: Option<(usize, Name, String)> = None;
        for (service, start) in &self.out.webhooks.started {
            let cursor = resume_cursor(&replica.cursor(), service, start);
            let Some(transitions) = replica.transitions_since(&cursor, Told::Every) else {
                missing.get_or_insert((0, service.clone(), "(history unreadable)".to_owned()));
                continue;
            };
            for (transition, _) in transitions {
                let Some(id) = transition.id else {
                    continue;
                };
                for k in 0..SUBSCRIPTIONS {
                    expected += 1;
                    if !self.out.webhooks.got(k, &id) && missing.is_none() {
                        missing = Some((k, service.clone(), id.clone()));
                    }
                }
            }
        }
        let since_heal_us = self.now_us - self.out.heal_us;
        let watch = &mut self.out.webhooks;
        watch.expected = expected;
        watch.delivered_unique = watch.by_transition.len() as u64;
        let Some((subscription, service, transition)) = missing else {
            watch.complete_after_heal_ms = Some(since_heal_us / 1_000);
            return true;
        };
        if since_heal_us <= self.spec.plan.liveness_bound_ms * 1_000 {
            watch.waited_at_end += 1;
            return false;
        }
        self.fail(Failure::WebhookUndelivered {
            subscription: subscription_id(subscription),
            service,
            transition,
            bound_ms: self.spec.plan.liveness_bound_ms,
        });
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(node: usize, concurrent: bool) -> Delivered {
        Delivered {
            subscription: 0,
            service: Name::parse("service", "checkout").expect("name"),
            node,
            at_us: 0,
            concurrent,
            crashed: false,
        }
    }

    #[test]
    fn a_duplicate_is_blamed_on_a_crash_first_then_on_two_senders_then_on_stale_progress() {
        let mut watch = WebhookWatch::default();
        let first = watch.record("t1", delivery(0, false)).expect("recorded");
        watch.interrupt(first);
        watch.record("t1", delivery(1, true));
        assert_eq!(watch.duplicates_in_flight, 1);
        watch.record("t2", delivery(0, false));
        watch.record("t2", delivery(1, true));
        assert_eq!(watch.duplicates_two_senders, 1);
        watch.record("t3", delivery(0, false));
        watch.record("t3", delivery(1, false));
        assert_eq!(watch.duplicates_stale_progress, 1);
        assert_eq!(watch.duplicates(), 3);
        assert!(watch.got(0, "t3"));
        assert!(!watch.got(1, "t3"));
    }
}
