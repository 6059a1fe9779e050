//! Subscriptions: what a subscriber gets first (decided by the core's `resume`), and the
//! subscribers whose cursor names changes this node lacks, answered once those arrive or
//! the core's wait is over.

use statusmesh_crdt::{Cursor, Delivery, Name};
use statusmesh_gossip::Resume;
use tokio::sync::oneshot;

use super::published::{transition_published, Published};
use super::{now_ms, Driver, Subscription};

/// Most subscribers waiting at once for changes their cursor names; one more is given a
/// fresh snapshot at once (what it would get after the wait), so the list stays bounded.
pub const RESUMES_WAITING_MAX: usize = 20_000;

/// A subscriber whose cursor is ahead of this node.
#[derive(Debug)]
pub(super) struct WaitingResume {
    cursor: Cursor,
    service: Option<String>,
    delivery: Delivery,
    reply: oneshot::Sender<Subscription>,
    /// When it first asked: the core gives it a snapshot once it has waited long enough.
    since_ms: u64,
    /// When to ask the core again at the latest (it is also asked after every iteration).
    retry_at_ms: u64,
}

impl Driver {
    /// A new subscription, resuming after `cursor` when the core can tell what came after
    /// it. A cursor this node cannot answer yet waits (the core has asked its peers).
    pub(super) fn subscribe(
        &mut self,
        cursor: Option<Cursor>,
        service: Option<String>,
        delivery: Delivery,
        reply: oneshot::Sender<Subscription>,
    ) {
        self.publish_events();
        let now = now_ms();
        match (
            self.node.resume(now, cursor.as_ref(), now, delivery),
            cursor,
        ) {
            (Resume::Wait { retry_at_ms }, Some(cursor))
                if self.resumes.len() < RESUMES_WAITING_MAX =>
            {
                self.resumes.push(WaitingResume {
                    cursor,
                    service,
                    delivery,
                    reply,
                    since_ms: now,
                    retry_at_ms,
                });
            }
            (Resume::Wait { .. }, _) => {
                self.answer(Resume::Snapshot, service.as_deref(), delivery, reply);
            }
            (answer, _) => self.answer(answer, service.as_deref(), delivery, reply),
        }
    }

    /// Asks the core again for every waiting subscriber (after an iteration, or at the
    /// earliest `retry_at_ms`); answers those it now decides for.
    pub(super) fn answer_waiting_resumes(&mut self) {
        if self.resumes.is_empty() {
            return;
        }
        self.publish_events();
        let now = now_ms();
        for mut waiting in std::mem::take(&mut self.resumes) {
            if waiting.reply.is_closed() {
                continue;
            }
            // The wall clock may step back; the wait then counts from now.
            waiting.since_ms = waiting.since_ms.min(now);
            match self.node.resume(
                now,
                Some(&waiting.cursor),
                waiting.since_ms,
                waiting.delivery,
            ) {
                Resume::Wait { retry_at_ms } => {
                    waiting.retry_at_ms = retry_at_ms;
                    self.resumes.push(waiting);
                }
                answer => self.answer(
                    answer,
                    waiting.service.as_deref(),
                    waiting.delivery,
                    waiting.reply,
                ),
            }
        }
    }

    /// The earliest time a waiting subscriber must be asked about again, if any waits.
    pub(super) fn next_resume_at(&self) -> Option<u64> {
        self.resumes.iter().map(|w| w.retry_at_ms).min()
    }

    /// Sends a subscriber its first events and the live feed. Subscribing and computing the
    /// first events happen in one step of the one task that applies changes: nothing can
    /// slip in between (no gap, no duplicate).
    fn answer(
        &mut self,
        answer: Resume,
        service: Option<&str>,
        delivery: Delivery,
        reply: oneshot::Sender<Subscription>,
    ) {
        let live = self.publish.subscribe();
        let more = match (&answer, delivery) {
            (Resume::Events(events), Delivery::Pages) => events
                .last()
                .is_some_and(|(_, cursor)| !self.node.replica().is_at_end(cursor)),
            _ => false,
        };
        let initial = self.first_events(answer, service);
        let _ = reply.send(Subscription {
            initial,
            live,
            more,
        });
    }

    /// The core's answer as the events a subscriber is sent first.
    fn first_events(&self, answer: Resume, service: Option<&str>) -> Vec<Published> {
        match answer {
            // Each with the cursor after it: a client cut off midway resumes exactly there.
            Resume::Events(events) => events
                .iter()
                .map(|(transition, cursor)| transition_published(transition, cursor.encode()))
                .collect(),
            // A `Wait` is never answered; should one arrive here, a snapshot is the truth.
            Resume::Snapshot | Resume::Wait { .. } => {
                let service = service.and_then(|s| Name::parse("service", s).ok());
                let (view, cursor) = self.status(service.as_ref());
                vec![Published {
                    kind: "snapshot",
                    id: cursor,
                    service: None,
                    region: None,
                    data: view,
                    frame: std::sync::OnceLock::new(),
                }]
            }
        }
    }
}
