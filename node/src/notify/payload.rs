//! What a subscription is sent for an event: its type (from the published event), whether
//! the subscription wants it, its message id, and the body in either format.

use std::collections::HashMap;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use statusmesh_crdt::webhooks::{EventType, Format, Webhook};
use statusmesh_crdt::State;

use crate::driver::Published;
use crate::http::statuspage::ids::iso8601;

/// Most component cells whose last state a sender remembers (for `min_state` recoveries);
/// beyond it the memory starts over, so a recovery may then be judged on its own state.
const LAST_STATES_MAX: usize = 10_000;

/// One event ready to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub event_type: EventType,
    /// `webhook-id`: the transition's identity, the same on every node and every retry.
    pub id: String,
    pub body: Vec<u8>,
    /// Transitions folded into this one (0 for a transition of its own).
    pub coalesced: u64,
}

/// The type of a published event, when it is one a subscription can be told of.
pub fn event_type(published: &Published) -> Option<EventType> {
    let data = &published.data;
    match published.kind {
        "status" | "override" => Some(EventType::ComponentStatusChanged),
        "maintenance" => Some(if data.get("window").is_some_and(|w| !w.is_null()) {
            EventType::MaintenanceScheduled
        } else {
            EventType::MaintenanceCancelled
        }),
        "incident" => {
            let header = data.get("incident").filter(|h| !h.is_null())?;
            let updates = data.get("new_updates")?.as_array()?;
            let resolved = header.get("status") == Some(&json!("resolved"));
            let opened_at = header.get("opened_at_ms").and_then(Value::as_u64);
            let opening = updates
                .iter()
                .any(|u| u.get("at_ms").and_then(Value::as_u64) == opened_at);
            Some(if opening && !resolved {
                EventType::IncidentCreated
            } else if resolved
                && updates
                    .iter()
                    .any(|u| u.get("status") == Some(&json!("resolved")))
            {
                EventType::IncidentResolved
            } else {
                EventType::IncidentUpdated
            })
        }
        _ => None,
    }
}

/// The state a component event moves to (`None` for a cleared override or a deleted cell).
fn state_of(published: &Published) -> Option<State> {
    let text = match published.kind {
        "override" => published.data.get("value")?.get("state")?,
        _ => published.data.get("state")?,
    };
    serde_json::from_value(text.clone()).ok()
}

/// Picks what a subscription is told and shapes it; remembers the last state of each
/// component cell so that the recovery from a bad state passes `min_state`.
#[derive(Debug, Default)]
pub struct Shaper {
    last_states: HashMap<String, State>,
}

impl Shaper {
    /// The event to send for `published`, `None` when the subscription does not want it.
    pub fn shape(&mut self, webhook: &Webhook, published: &Published) -> Option<Outgoing> {
        let event_type = event_type(published)?;
        if event_type == EventType::ComponentStatusChanged {
            let cell = format!(
                "{}/{}",
                published.data.get("component").and_then(Value::as_str)?,
                published.region.as_deref().unwrap_or("override"),
            );
            let state = state_of(published);
            let before = match state {
                Some(s) => {
                    if self.last_states.len() >= LAST_STATES_MAX {
                        self.last_states.clear();
                    }
                    self.last_states.insert(cell, s)
                }
                None => self.last_states.remove(&cell),
            };
            if !webhook.passes_min_state(state, before) {
                return None;
            }
        }
        if !webhook.events.contains(&event_type) {
            return None;
        }
        let id = message_id(published);
        let coalesced = published
            .data
            .get("coalesced")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let body = match webhook.format {
            Format::Standard => standard_body(event_type, published),
            Format::Slack => slack_body(event_type, published),
        };
        Some(Outgoing {
            event_type,
            id,
            body: serde_json::to_vec(&body).unwrap_or_default(),
            coalesced,
        })
    }
}

/// The clock's maintenance events of `window` that fall in `(after_ms, upto_ms]`, oldest
/// first, for the subscription: a start and an end are each told once, by whichever sender
/// holds the subscription when their time passes.
pub fn maintenance_events(
    webhook: &Webhook,
    service: &str,
    windows: &[(statusmesh_crdt::Name, statusmesh_crdt::Maintenance)],
    after_ms: u64,
    upto_ms: u64,
) -> Vec<(u64, Outgoing)> {
    let mut out = Vec::new();
    for (id, window) in windows {
        for (at_ms, event_type, edge) in [
            (
                window.starts_at_ms,
                EventType::MaintenanceStarted,
                "started",
            ),
            (window.ends_at_ms, EventType::MaintenanceEnded, "ended"),
        ] {
            let due = after_ms < at_ms && at_ms <= upto_ms;
            if !due || !webhook.events.contains(&event_type) {
                continue;
            }
            let data = json!({"service": service, "id": id, "window": window});
            let body = match webhook.format {
                Format::Standard => json!({
                    "type": event_type.as_str(),
                    "timestamp": iso8601(at_ms),
                    "data": data,
                }),
                Format::Slack => {
                    let text = format!(
                        "{service}: maintenance \"{}\" {edge} at {}",
                        window.title,
                        iso8601(at_ms)
                    );
                    json!({
                        "text": text,
                        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
                    })
                }
            };
            out.push((
                at_ms,
                Outgoing {
                    event_type,
                    id: format!("mnt:{service}/{id}:{edge}:{at_ms}"),
                    body: serde_json::to_vec(&body).unwrap_or_default(),
                    coalesced: 0,
                },
            ));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.id.cmp(&b.1.id)));
    out
}

/// The transition's identity; an event that is no single transition (none in practice:
/// resumes give transitions) gets a digest of its kind, record and cursor, which every node
/// computes alike.
fn message_id(published: &Published) -> String {
    if let Some(id) = published.data.get("transition").and_then(Value::as_str) {
        return id.to_owned();
    }
    let mut hash = Sha256::new();
    hash.update(published.kind.as_bytes());
    hash.update(b"\0");
    hash.update(published.id.as_bytes());
    let digest = hash.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("evt_{hex}")
}

/// When the event happened, as the record says, in milliseconds.
fn event_time_ms(published: &Published) -> Option<u64> {
    let data = &published.data;
    let at = |v: Option<&Value>, key: &str| v.and_then(|v| v.get(key)).and_then(Value::as_u64);
    data.get("changed_at_ms")
        .and_then(Value::as_u64)
        .or_else(|| at(data.get("value"), "at_ms"))
        .or_else(|| {
            data.get("new_updates")
                .and_then(Value::as_array)
                .and_then(|u| u.last())
                .and_then(|u| u.get("at_ms"))
                .and_then(Value::as_u64)
        })
        .or_else(|| at(data.get("window"), "starts_at_ms"))
}

/// Standard Webhooks' body: `{"type", "timestamp", "data"}`; `data` is the event as
/// `/v1/events` shows it (with `service`, `transition` and, when folded, `coalesced`).
fn standard_body(event_type: EventType, published: &Published) -> Value {
    let mut data = published.data.clone();
    if let Some(map) = data.as_object_mut() {
        map.entry("service")
            .or_insert_with(|| json!(published.service));
    }
    json!({
        "type": event_type.as_str(),
        "timestamp": event_time_ms(published).map(iso8601),
        "data": data,
    })
}

/// Slack's incoming-webhook body: a line of text and the same as one section block.
fn slack_body(event_type: EventType, published: &Published) -> Value {
    let text = summary(event_type, published);
    json!({
        "text": text,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
    })
}

/// One line for people: what happened to what.
fn summary(event_type: EventType, published: &Published) -> String {
    let data = &published.data;
    let s = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("?").to_owned();
    let service = published.service.clone().unwrap_or_default();
    let folded = match data.get("coalesced").and_then(Value::as_u64) {
        Some(n) if n > 1 => format!(" ({n} changes folded)"),
        _ => String::new(),
    };
    let line = match event_type {
        EventType::ComponentStatusChanged => {
            let component = s(data.get("component"));
            match published.kind {
                "override" => match data.get("value").filter(|v| !v.is_null()) {
                    Some(v) => format!(
                        "{service}/{component}: {} (override: {})",
                        s(v.get("state")),
                        s(v.get("reason"))
                    ),
                    None => format!("{service}/{component}: override cleared"),
                },
                _ => format!(
                    "{service}/{component} in {}: {} — {}",
                    s(data.get("region")),
                    data.get("state")
                        .and_then(Value::as_str)
                        .unwrap_or("no data"),
                    s(data.get("message"))
                ),
            }
        }
        EventType::IncidentCreated | EventType::IncidentUpdated | EventType::IncidentResolved => {
            let header = data.get("incident");
            let update = data
                .get("new_updates")
                .and_then(Value::as_array)
                .and_then(|u| u.last());
            format!(
                "{service}: incident \"{}\" {} — {}",
                s(header.and_then(|h| h.get("title"))),
                s(header.and_then(|h| h.get("status"))),
                update.map_or(String::new(), |u| s(u.get("text")))
            )
        }
        EventType::MaintenanceScheduled
        | EventType::MaintenanceCancelled
        | EventType::MaintenanceStarted
        | EventType::MaintenanceEnded => {
            let window = data.get("window").filter(|w| !w.is_null());
            match window {
                Some(w) => format!(
                    "{service}: maintenance \"{}\" from {} to {}",
                    s(w.get("title")),
                    w.get("starts_at_ms")
                        .and_then(Value::as_u64)
                        .map(iso8601)
                        .unwrap_or_default(),
                    w.get("ends_at_ms")
                        .and_then(Value::as_u64)
                        .map(iso8601)
                        .unwrap_or_default()
                ),
                None => format!("{service}: maintenance {} cancelled", s(data.get("id"))),
            }
        }
    };
    format!("{line}{folded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(kind: &'static str, data: Value) -> Published {
        Published {
            kind,
            id: "cursor".into(),
            service: Some("api".into()),
            region: data
                .get("region")
                .and_then(Value::as_str)
                .map(str::to_owned),
            data,
            frame: std::sync::OnceLock::new(),
        }
    }

    fn hook(min_state: State, events: Vec<EventType>) -> Webhook {
        let mut hook = serde_json::from_str::<statusmesh_crdt::webhooks::WebhookSpec>(
            r#"{"url": "http://127.0.0.1:9/", "services": ["api"]}"#,
        )
        .expect("spec")
        .into_webhook(None, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "ops", 1)
        .expect("valid");
        hook.min_state = min_state;
        hook.events = events;
        hook
    }

    fn status(state: &str, transition: &str) -> Published {
        published(
            "status",
            json!({"component": "db", "region": "eu", "state": state, "message": "m",
                   "changed_at_ms": 1_000, "transition": transition}),
        )
    }

    #[test]
    fn incidents_are_created_updated_and_resolved() {
        let header = |status: &str| json!({"title": "t", "status": status, "opened_at_ms": 5});
        let opened = published(
            "incident",
            json!({"id": "i1", "incident": header("investigating"),
                   "new_updates": [{"at_ms": 5, "status": "investigating", "text": "x"}]}),
        );
        let updated = published(
            "incident",
            json!({"id": "i1", "incident": header("monitoring"),
                   "new_updates": [{"at_ms": 9, "status": "monitoring", "text": "y"}]}),
        );
        let resolved = published(
            "incident",
            json!({"id": "i1", "incident": header("resolved"),
                   "new_updates": [{"at_ms": 12, "status": "resolved", "text": "z"}]}),
        );
        assert_eq!(event_type(&opened), Some(EventType::IncidentCreated));
        assert_eq!(event_type(&updated), Some(EventType::IncidentUpdated));
        assert_eq!(event_type(&resolved), Some(EventType::IncidentResolved));
        assert_eq!(event_type(&published("flag", json!({}))), None);
    }

    #[test]
    fn min_state_keeps_outages_and_their_recovery() {
        let webhook = hook(State::MajorOutage, EventType::ALL.to_vec());
        let mut shaper = Shaper::default();
        assert!(shaper
            .shape(&webhook, &status("degraded_performance", "t1"))
            .is_none());
        let down = shaper
            .shape(&webhook, &status("major_outage", "t2"))
            .expect("sent");
        assert_eq!(down.id, "t2");
        let up = shaper
            .shape(&webhook, &status("operational", "t3"))
            .expect("recovery");
        let body: Value = serde_json::from_slice(&up.body).expect("json");
        assert_eq!(body["type"], "component.status_changed");
        assert_eq!(body["data"]["state"], "operational");
        assert_eq!(body["timestamp"], iso8601(1_000));
        assert!(shaper
            .shape(&webhook, &status("operational", "t4"))
            .is_none());
    }

    #[test]
    fn a_window_starts_and_ends_once_within_the_told_span() {
        let webhook = hook(State::Operational, EventType::ALL.to_vec());
        let window = statusmesh_crdt::Maintenance {
            title: "db upgrade".into(),
            components: vec![],
            starts_at_ms: 2_000,
            ends_at_ms: 5_000,
            author: "ops".into(),
        };
        let windows = [(
            statusmesh_crdt::Name::parse("id", "w1").expect("name"),
            window,
        )];
        let types = |after, upto| -> Vec<EventType> {
            maintenance_events(&webhook, "api", &windows, after, upto)
                .into_iter()
                .map(|(_, o)| o.event_type)
                .collect()
        };
        assert_eq!(types(0, 1_999), vec![]);
        assert_eq!(types(0, 2_000), vec![EventType::MaintenanceStarted]);
        assert_eq!(types(2_000, 4_999), vec![]);
        assert_eq!(
            types(1_000, 9_000),
            vec![EventType::MaintenanceStarted, EventType::MaintenanceEnded]
        );
        let (_, started) = maintenance_events(&webhook, "api", &windows, 0, 2_000).remove(0);
        assert_eq!(started.id, "mnt:api/w1:started:2000");
    }

    #[test]
    fn unwanted_types_are_skipped_and_slack_gets_text() {
        let mut webhook = hook(State::Operational, vec![EventType::IncidentCreated]);
        let mut shaper = Shaper::default();
        assert!(shaper
            .shape(&webhook, &status("major_outage", "t1"))
            .is_none());
        webhook.events = EventType::ALL.to_vec();
        webhook.format = Format::Slack;
        let sent = shaper
            .shape(&webhook, &status("major_outage", "t2"))
            .expect("sent");
        let body: Value = serde_json::from_slice(&sent.body).expect("json");
        assert_eq!(body["text"], "api/db in eu: major_outage — m");
        assert_eq!(body["blocks"][0]["text"]["text"], body["text"]);
    }
}
