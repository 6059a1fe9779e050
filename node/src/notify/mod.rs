//! Outgoing webhooks: which (subscription, service) pairs this node sends, and their senders.
//!
//! Every node reads every subscription from the replica (they are records, see
//! `statusmesh_crdt::webhooks`). For each (subscription, service) the sender is the live
//! member that rendezvous hashing picks over the whole mesh (`statusmesh_gossip::rendezvous`,
//! the rule the regional probers use): the same on every node that sees the same members,
//! so the mesh sends each event once. When the sender dies, SWIM marks it down, the next
//! member in the ranking becomes the sender and resumes from the replicated progress; only
//! an event in flight at the crash can be sent twice, with the same `webhook-id`.
//!
//! - `sender`: one (subscription, service)'s deliveries, in causal order.
//! - `deliver`: one attempt (the SSRF rule, no redirects); `sign`: Standard Webhooks
//!   signatures; `payload`: event types, `min_state`, bodies; `log`: recent attempts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use statusmesh_crdt::webhooks::Webhook;
use statusmesh_crdt::Name;
use tokio::sync::watch;

use crate::driver::NodeHandle;

pub mod deliver;
pub mod log;
pub mod payload;
pub mod sender;
pub mod sign;

pub use log::DeliveryLog;

/// How often the dispatcher re-reads subscriptions and members.
pub const PLAN_REFRESH: Duration = Duration::from_millis(250);
/// Most (subscription, service) pairs one node sends at once.
pub const SENDERS_MAX: usize = 4096;
/// Standard Webhooks' request timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The waits before the 2nd, 3rd, … attempt (the first is at once): 5 s, 5 min, 30 min,
/// 2 h, 5 h, 10 h, 10 h: about a day in all, as Standard Webhooks' senders do.
pub const RETRY_SCHEDULE: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];
/// Longest `Retry-After` honoured.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(24 * 3600);

/// How this node sends.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// The waits before each retry; its length is the number of retries.
    pub retry_schedule: Vec<Duration>,
    pub request_timeout: Duration,
    pub retry_after_max: Duration,
    /// Lets subscriptions reach link-local and metadata addresses (see `deliver`).
    pub allow_link_local: bool,
    pub tls: Arc<rustls::ClientConfig>,
}

impl NotifyConfig {
    /// The defaults, with the node's settings.
    pub fn new(settings: &NotifySettings) -> Self {
        NotifyConfig {
            retry_schedule: settings
                .retry_schedule
                .clone()
                .unwrap_or_else(|| RETRY_SCHEDULE.to_vec()),
            request_timeout: REQUEST_TIMEOUT,
            retry_after_max: RETRY_AFTER_MAX,
            allow_link_local: settings.allow_link_local,
            tls: crate::probe::run::tls_config(),
        }
    }

    /// The wait before attempt `attempt + 1`, with ±20 % jitter so that receivers that
    /// came back are not hit by every sender at the same instant.
    pub fn delay_before(&self, attempt: usize) -> Duration {
        let base = self
            .retry_schedule
            .get(attempt.saturating_sub(1))
            .copied()
            .unwrap_or_default();
        let factor = 0.8 + 0.4 * rand::random::<f64>();
        base.mul_f64(factor)
    }
}

/// Parses `--webhook-retry-schedule`: comma-separated waits, each a number with `ms`, `s`,
/// `m` or `h` (e.g. `5s,5m,30m`); at most 16.
pub fn parse_schedule(text: &str) -> Result<Vec<Duration>, String> {
    let waits: Vec<&str> = text.split(',').map(str::trim).collect();
    if waits.len() > 16 {
        return Err(format!("at most 16 retries, {} given", waits.len()));
    }
    waits
        .into_iter()
        .map(|w| {
            let (number, unit) = w
                .find(|c: char| !c.is_ascii_digit())
                .map_or((w, ""), |i| w.split_at(i));
            let n: u64 = number
                .parse()
                .map_err(|_| format!("{w:?} is not a number with ms, s, m or h"))?;
            let wait = match unit {
                "ms" => Duration::from_millis(n),
                "s" => Duration::from_secs(n),
                "m" => Duration::from_secs(n * 60),
                "h" => Duration::from_secs(n * 3600),
                _ => return Err(format!("{w:?}: the unit is ms, s, m or h")),
            };
            if wait > RETRY_AFTER_MAX {
                return Err(format!("{w:?} is longer than a day"));
            }
            Ok(wait)
        })
        .collect()
}

/// `--webhook-retry-schedule` (one value holding every wait).
#[derive(Debug, Clone)]
pub struct RetrySchedule(pub Vec<Duration>);

impl RetrySchedule {
    fn parse(text: &str) -> Result<Self, String> {
        parse_schedule(text).map(RetrySchedule)
    }
}

/// The webhook settings of `statusmesh run`.
#[derive(Debug, Clone, Default)]
pub struct NotifySettings {
    /// `None`: [`RETRY_SCHEDULE`].
    pub retry_schedule: Option<Vec<Duration>>,
    pub allow_link_local: bool,
}

/// The flags of `statusmesh run` for outgoing webhooks.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    /// The waits before each retry of a failed webhook delivery, comma-separated
    /// (default 5s,5m,30m,2h,5h,10h,10h; jittered by ±20 %).
    #[arg(long, value_name = "WAITS", value_parser = RetrySchedule::parse)]
    pub webhook_retry_schedule: Option<RetrySchedule>,
    /// Let webhook subscriptions reach link-local and cloud metadata addresses.
    #[arg(long)]
    pub webhook_allow_link_local: bool,
}

impl WebhookArgs {
    /// `settings` with these flags applied.
    pub fn apply(self, settings: crate::settings::NodeSettings) -> crate::settings::NodeSettings {
        crate::settings::NodeSettings {
            webhooks: NotifySettings {
                retry_schedule: self.webhook_retry_schedule.map(|s| s.0),
                allow_link_local: self.webhook_allow_link_local,
            },
            ..settings
        }
    }
}

/// One running sender and the subscription it was started for.
struct Running {
    webhook: Webhook,
    task: tokio::task::JoinHandle<()>,
}

/// Starts the dispatcher: every [`PLAN_REFRESH`] it starts a sender for each
/// (subscription, service) this node owns and stops those it no longer owns (or whose
/// subscription changed: the new one starts from the replicated progress).
pub fn spawn(
    node: NodeHandle,
    config: NotifyConfig,
    log: Arc<DeliveryLog>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let config = Arc::new(config);
    tokio::spawn(async move {
        let mut running: BTreeMap<(Name, Name), Running> = BTreeMap::new();
        let mut ticker = tokio::time::interval(PLAN_REFRESH);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => break,
            }
            let Ok(plan) = node.webhook_plan().await else {
                break;
            };
            let mut wanted = BTreeMap::new();
            for entry in &plan.hooks {
                let mine = plan
                    .assigned
                    .contains(&(entry.id.clone(), entry.service.clone()));
                if mine && wanted.len() < SENDERS_MAX {
                    wanted.insert((entry.id.clone(), entry.service.clone()), entry);
                }
            }
            running.retain(|key, run| {
                let keep = !run.task.is_finished()
                    && wanted.get(key).is_some_and(|e| e.webhook == run.webhook);
                if !keep {
                    run.task.abort();
                }
                keep
            });
            for (key, entry) in wanted {
                if running.contains_key(&key) {
                    continue;
                }
                let sender = sender::Sender {
                    node: node.clone(),
                    me: plan.me.clone(),
                    id: entry.id.clone(),
                    service: entry.service.clone(),
                    webhook: entry.webhook.clone(),
                    progress: entry.progress.clone(),
                    config: Arc::clone(&config),
                    log: Arc::clone(&log),
                };
                let task = tokio::spawn(sender.run());
                running.insert(
                    key,
                    Running {
                        webhook: entry.webhook.clone(),
                        task,
                    },
                );
            }
            metrics::gauge!("statusmesh_webhook_senders").set(running.len() as f64);
        }
        for run in running.values() {
            run.task.abort();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_parses_with_units_and_refuses_nonsense() {
        assert_eq!(
            parse_schedule("200ms, 1s,2m,1h"),
            Ok(vec![
                Duration::from_millis(200),
                Duration::from_secs(1),
                Duration::from_secs(120),
                Duration::from_secs(3600)
            ])
        );
        assert!(parse_schedule("5").is_err());
        assert!(parse_schedule("5d").is_err());
        assert!(parse_schedule("25h").is_err());
    }
}
