//! The recent delivery attempts of each subscription, as this node made them
//! (`GET /v1/webhooks/{id}/deliveries`): bounded per subscription and in subscriptions.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;
use statusmesh_crdt::Name;

/// Attempts kept per subscription, newest last.
pub const ATTEMPTS_KEPT: usize = 100;
/// Subscriptions whose attempts are kept; the one written to least recently goes first.
pub const SUBSCRIPTIONS_KEPT: usize = 1024;

/// One attempt, or a note about the subscription (`attempt` 0).
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub service: String,
    pub event: &'static str,
    pub webhook_id: String,
    pub attempt: u32,
    pub at_ms: u64,
    /// The receiver's status code; `None` when it did not answer.
    pub status: Option<u16>,
    pub error: Option<String>,
    pub next_attempt_ms: Option<u64>,
    pub node: String,
}

impl Attempt {
    /// A note: something the sender did that was no attempt (a gap, a disable).
    pub fn note(service: &Name, text: &str) -> Self {
        Attempt {
            service: service.to_string(),
            event: "note",
            webhook_id: String::new(),
            attempt: 0,
            at_ms: crate::driver::now_ms(),
            status: None,
            error: Some(text.to_owned()),
            next_attempt_ms: None,
            node: String::new(),
        }
    }
}

/// Every subscription's recent attempts on this node.
#[derive(Debug, Default)]
pub struct DeliveryLog {
    attempts: Mutex<BTreeMap<Name, (u64, VecDeque<Attempt>)>>,
}

impl DeliveryLog {
    pub fn record(&self, id: &Name, attempt: Attempt) {
        let Ok(mut all) = self.attempts.lock() else {
            return;
        };
        let stamp = attempt.at_ms;
        if !all.contains_key(id) && all.len() >= SUBSCRIPTIONS_KEPT {
            let oldest = all
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                all.remove(&oldest);
            }
        }
        let (at, list) = all.entry(id.clone()).or_default();
        *at = stamp;
        if list.len() >= ATTEMPTS_KEPT {
            list.pop_front();
        }
        list.push_back(attempt);
    }

    /// The attempts of `id`, oldest first.
    pub fn of(&self, id: &Name) -> Vec<Attempt> {
        self.attempts
            .lock()
            .ok()
            .and_then(|all| all.get(id).map(|(_, l)| l.iter().cloned().collect()))
            .unwrap_or_default()
    }
}
