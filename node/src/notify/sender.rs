//! The sender of one (subscription, service): follows the service's transitions from the
//! replicated progress, delivers each one the subscription wants, in causal order, with
//! retries on the schedule, and records progress once each change it told from is told
//! whole (a cursor names whole changes; a group commit holds several transitions), so that
//! the next sender, if this node dies, resumes from the first change not wholly delivered.
//! Which pairs this node sends is the core's rule (`statusmesh_gossip::webhooks`).
//!
//! The outbox is the document's history itself: a sender that falls behind the shared live
//! ring re-reads what came after its progress, as a reconnecting client does; beyond the
//! replay bound ([`statusmesh_crdt::TRANSITIONS_MAX`] transitions) each record comes once
//! with the number of transitions it folds (`data.coalesced`), counted in
//! `statusmesh_webhook_events_coalesced_total`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use statusmesh_crdt::webhooks::{Disabled, EventType, Webhook, WebhookProgress};
use statusmesh_crdt::{Cursor, Delivery, Name, Put};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::deliver::{post, Answer};
use super::log::{Attempt, DeliveryLog};
use super::payload::{maintenance_events, Outgoing, Shaper};
use super::sign::signature;
use super::NotifyConfig;
use crate::driver::{now_ms, NodeHandle, Published, RecordOp};

/// Progress passed over (events the subscription does not want) is written at most this
/// often; delivered events write it at once.
const PROGRESS_IDLE_SAVE: Duration = Duration::from_secs(10);
/// How often the clock's events (maintenance starts and ends) are looked for.
const CLOCK_TICK: Duration = Duration::from_secs(1);

/// Everything one sender needs.
#[derive(Debug)]
pub struct Sender {
    pub node: NodeHandle,
    pub me: String,
    pub id: Name,
    pub service: Name,
    pub webhook: Webhook,
    pub progress: Option<WebhookProgress>,
    pub config: Arc<NotifyConfig>,
    pub log: Arc<DeliveryLog>,
}

/// How far this sender got: what it saves as the progress record.
struct Position {
    /// This service's heads after the last transition delivered or passed over.
    cursor: Option<Cursor>,
    delivered: u64,
    coalesced: u64,
    /// Maintenance starts and ends up to this time were told.
    told_ms: u64,
}

/// How one event's attempts ended.
enum Outcome {
    Delivered,
    GaveUp,
    /// 410: the receiver wants no more.
    Gone,
}

impl Sender {
    /// Runs until the subscription is gone from this node's hands (the dispatcher aborts
    /// the task) or disabled by a 410.
    pub async fn run(mut self) {
        let mut at = Position {
            cursor: self
                .progress
                .as_ref()
                .and_then(|p| Cursor::decode(&p.cursor).ok()),
            delivered: self.progress.as_ref().map_or(0, |p| p.delivered),
            coalesced: self.progress.as_ref().map_or(0, |p| p.coalesced),
            told_ms: self
                .progress
                .as_ref()
                .map_or_else(now_ms, |p| p.maintenance_told_ms.max(p.at_ms.min(now_ms()))),
        };
        let mut shaper = Shaper::default();
        // The change being told (its cursor after it) and the message ids told of it.
        let mut partial: Option<(String, BTreeSet<String>)> = None;
        let mut saved_at = Instant::now();
        let mut clock_at = Instant::now();
        let mut unsaved = false;
        loop {
            let Some(resume) = self.resume_cursor(at.cursor.as_ref()).await else {
                return;
            };
            let Ok(subscription) = self
                .node
                .subscribe(resume, Some(self.service.to_string()), Delivery::Every)
                .await
            else {
                return;
            };
            let mut live = subscription.live;
            let mut queue: std::collections::VecDeque<Arc<Published>> =
                subscription.initial.into_iter().map(Arc::new).collect();
            loop {
                if clock_at.elapsed() >= CLOCK_TICK {
                    clock_at = Instant::now();
                    if !self.tell_maintenance(&mut at).await {
                        return;
                    }
                }
                let published = match queue.pop_front() {
                    Some(p) => p,
                    None => {
                        if unsaved && saved_at.elapsed() >= PROGRESS_IDLE_SAVE {
                            self.save(&at).await;
                            saved_at = Instant::now();
                            unsaved = false;
                        }
                        match tokio::time::timeout(CLOCK_TICK, live.recv()).await {
                            Err(_) => continue,
                            Ok(Ok(p)) => p,
                            // Behind the shared ring: re-read from the position.
                            Ok(Err(RecvError::Lagged(_))) => break,
                            Ok(Err(RecvError::Closed)) => return,
                        }
                    }
                };
                if published.service.as_deref() != Some(self.service.as_str()) {
                    continue;
                }
                let Ok(after) = Cursor::decode(&published.id) else {
                    continue;
                };
                if published.kind == "snapshot" {
                    if at.cursor.is_some() {
                        // The history after the progress is gone (compacted): what happened
                        // in it cannot be told one by one. Said in the log and the metrics.
                        metrics::counter!("statusmesh_webhook_history_gaps_total").increment(1);
                        self.log.record(
                            &self.id,
                            Attempt::note(&self.service, "history after the progress is gone"),
                        );
                    }
                    at.cursor = Some(after.only(&self.service));
                    partial = None;
                    self.save(&at).await;
                    continue;
                }
                // A cursor names whole changes, and a group commit puts several transitions
                // in one: the position moves (and is saved) only once a change is told whole,
                // and what of a change was told is remembered for a re-read of it.
                if partial.as_ref().is_some_and(|(id, _)| *id != published.id) {
                    partial = None;
                }
                let (_, told) =
                    partial.get_or_insert_with(|| (published.id.clone(), BTreeSet::new()));
                let outgoing = shaper
                    .shape(&self.webhook, &published)
                    .filter(|o| !told.contains(&o.id));
                if let Some(outgoing) = outgoing {
                    if outgoing.coalesced > 1 {
                        metrics::counter!("statusmesh_webhook_events_coalesced_total")
                            .increment(outgoing.coalesced - 1);
                        at.coalesced += outgoing.coalesced - 1;
                    }
                    if !self.send(&outgoing, &mut at).await {
                        return;
                    }
                    told.insert(outgoing.id);
                }
                // Everything of this change was published together: drain what is there.
                let mut lagged = false;
                loop {
                    match live.try_recv() {
                        Ok(next) => queue.push_back(next),
                        Err(TryRecvError::Lagged(_)) => {
                            lagged = true;
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if queue.front().is_none_or(|next| next.id != published.id) {
                    let told_any = partial.take().is_some_and(|(_, told)| !told.is_empty());
                    at.cursor = Some(after.only(&self.service));
                    if told_any {
                        self.save(&at).await;
                        saved_at = Instant::now();
                        unsaved = false;
                    } else {
                        unsaved = true;
                    }
                }
                if lagged {
                    // Behind the shared ring: re-read from the last change told whole.
                    break;
                }
            }
        }
    }

    /// Delivers `outgoing` (counted in `at`); false when the receiver said 410 (the
    /// subscription is then disabled and the sender ends).
    async fn send(&mut self, outgoing: &Outgoing, at: &mut Position) -> bool {
        match self.deliver(outgoing).await {
            Outcome::Delivered => at.delivered += 1,
            Outcome::GaveUp => {}
            Outcome::Gone => {
                self.disable("the receiver answered 410 Gone").await;
                return false;
            }
        }
        true
    }

    /// Tells the maintenance starts and ends whose time passed since the last told; false
    /// when the sender must end (410, or the driver is gone).
    async fn tell_maintenance(&mut self, at: &mut Position) -> bool {
        let wanted = [EventType::MaintenanceStarted, EventType::MaintenanceEnded];
        if !wanted.iter().any(|t| self.webhook.events.contains(t)) {
            return true;
        }
        let Ok(windows) = self.node.maintenance(self.service.clone()).await else {
            return false;
        };
        let now = now_ms();
        let due = maintenance_events(
            &self.webhook,
            self.service.as_str(),
            &windows,
            at.told_ms,
            now,
        );
        let told_any = !due.is_empty();
        for (_, outgoing) in due {
            if !self.send(&outgoing, at).await {
                return false;
            }
        }
        at.told_ms = now;
        if told_any {
            self.save(at).await;
        }
        true
    }

    /// The mesh's cursor now with this service at `position`: other documents contribute
    /// nothing to replay. `None` when the driver is gone.
    async fn resume_cursor(&self, position: Option<&Cursor>) -> Option<Option<Cursor>> {
        let Some(position) = position else {
            return Some(None);
        };
        let plan = self.node.webhook_plan().await.ok()?;
        let cursor =
            statusmesh_gossip::webhooks::resume_cursor(&plan.cursor, &self.service, position);
        Some(Some(cursor))
    }

    /// Attempts `outgoing` on the schedule until it is delivered, given up, or gone.
    async fn deliver(&self, outgoing: &Outgoing) -> Outcome {
        let target = match self.webhook.target() {
            Ok(t) => t,
            Err(e) => {
                self.log
                    .record(&self.id, Attempt::note(&self.service, &e.to_string()));
                return Outcome::GaveUp;
            }
        };
        let attempts = self.config.retry_schedule.len() + 1;
        for attempt in 1..=attempts {
            let now = now_ms();
            let timestamp_s = now / 1000;
            let mut headers = vec![
                ("webhook-id", outgoing.id.clone()),
                ("webhook-timestamp", timestamp_s.to_string()),
            ];
            if self.webhook.format == statusmesh_crdt::webhooks::Format::Standard {
                let signed = signature(
                    self.webhook.signing_secrets(now),
                    &outgoing.id,
                    timestamp_s,
                    &outgoing.body,
                );
                headers.push(("webhook-signature", signed));
            }
            let answer = post(
                &target,
                &headers,
                outgoing.body.clone(),
                self.config.request_timeout,
                &self.config.tls,
                self.config.allow_link_local,
            )
            .await;
            let (code, error, retry_after) = match &answer {
                Answer::Status {
                    code,
                    retry_after,
                    body,
                } => (Some(*code), body.clone(), *retry_after),
                Answer::Failed(reason) => (None, reason.clone(), None),
            };
            let result = match code {
                Some(c) if (200..300).contains(&c) => "delivered",
                Some(410) => "gone",
                _ => "failed",
            };
            metrics::counter!("statusmesh_webhook_attempts_total", "result" => result).increment(1);
            let wait = (result == "failed" && attempt < attempts).then(|| {
                let scheduled = self.config.delay_before(attempt);
                // 429 and 502-504 say when to come back; never sooner than the schedule.
                match (code, retry_after) {
                    (Some(429 | 502 | 503 | 504), Some(asked)) => {
                        scheduled.max(asked.min(self.config.retry_after_max))
                    }
                    _ => scheduled,
                }
            });
            self.log.record(
                &self.id,
                Attempt {
                    service: self.service.to_string(),
                    event: outgoing.event_type.as_str(),
                    webhook_id: outgoing.id.clone(),
                    attempt: attempt as u32,
                    at_ms: now,
                    status: code,
                    error: (result != "delivered").then_some(error),
                    next_attempt_ms: wait.map(|w| now + w.as_millis() as u64),
                    node: self.me.clone(),
                },
            );
            match (result, wait) {
                ("delivered", _) => return Outcome::Delivered,
                ("gone", _) => return Outcome::Gone,
                (_, Some(wait)) => tokio::time::sleep(wait).await,
                (_, None) => break,
            }
        }
        metrics::counter!("statusmesh_webhook_events_given_up_total").increment(1);
        Outcome::GaveUp
    }

    /// Records how far deliveries got (replicated: the next sender starts there).
    async fn save(&self, at: &Position) {
        let Some(cursor) = &at.cursor else {
            return;
        };
        let progress = WebhookProgress {
            cursor: cursor.encode(),
            delivered: at.delivered,
            coalesced: at.coalesced,
            by_node: self.me.clone(),
            at_ms: now_ms(),
            maintenance_told_ms: at.told_ms,
        };
        let op = RecordOp::Put(Put::WebhookProgress {
            id: self.id.clone(),
            value: Some(progress),
        });
        if let Ok(Err(error)) = self.node.record(self.service.clone(), op).await {
            tracing::warn!(webhook = %self.id, service = %self.service, %error, "webhook progress not recorded");
        }
    }

    /// Marks the subscription disabled in every document that holds it, so that no node
    /// sends to it again until it is PUT anew.
    async fn disable(&mut self, reason: &str) {
        let Ok(plan) = self.node.webhook_plan().await else {
            return;
        };
        for entry in plan.entries_of(self.id.as_str()) {
            let mut webhook = entry.webhook.clone();
            webhook.disabled = Some(Disabled {
                reason: reason.to_owned(),
                at_ms: now_ms(),
                by_node: self.me.clone(),
            });
            let op = RecordOp::Put(Put::Webhook {
                id: self.id.clone(),
                value: Some(webhook),
            });
            let _ = self.node.record(entry.service.clone(), op).await;
        }
        self.log
            .record(&self.id, Attempt::note(&self.service, reason));
        tracing::warn!(webhook = %self.id, reason, "webhook subscription disabled");
    }
}
