//! Events as they go out on SSE and long-poll: the JSON of status and record events, and
//! the SSE block each event is serialized into once for all its subscribers.

use serde::Serialize;
use serde_json::json;
use statusmesh_crdt::{Coalesced, DocEvent, StatusEvent, Transition};

/// One event as it goes out on SSE and long-poll.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    /// `snapshot`, `status`, `heartbeat` or `membership`.
    pub kind: &'static str,
    /// The cursor after this event (SSE `id:`).
    pub id: String,
    #[serde(skip)]
    pub service: Option<String>,
    #[serde(skip)]
    pub region: Option<String>,
    /// The JSON payload (SSE `data:`).
    pub data: serde_json::Value,
    /// The SSE block, made on first use: one serialization shared by every subscriber the
    /// event fans out to, instead of one per subscriber.
    #[serde(skip)]
    pub frame: std::sync::OnceLock<axum::body::Bytes>,
}

impl Published {
    /// This event as one SSE block (`event:`, `id:`, `data:` lines and the blank line),
    /// serialized once however many subscribers send it; cloning the bytes is a refcount.
    pub fn sse_frame(&self) -> axum::body::Bytes {
        self.frame
            .get_or_init(|| {
                // Compact JSON has no line breaks, so the payload is a single `data:` line.
                let data = serde_json::to_string(&self.data).unwrap_or_default();
                let mut block =
                    String::with_capacity(32 + self.kind.len() + self.id.len() + data.len());
                for (field, value) in [("event", self.kind), ("id", &self.id), ("data", &data)] {
                    block.push_str(field);
                    block.push_str(": ");
                    block.push_str(value);
                    block.push('\n');
                }
                block.push('\n');
                axum::body::Bytes::from(block)
            })
            .clone()
    }
}

/// The SSE/long-poll form of an incident, maintenance or override event: `event:` is the
/// kind, `data:` the record as JSON.
pub fn record_published(
    event: &DocEvent,
    id: String,
    transition: Option<&str>,
    coalesced: Option<&Coalesced>,
) -> Published {
    let kind = match event {
        DocEvent::Status(_) => "status",
        DocEvent::Incident(_) => "incident",
        DocEvent::Maintenance(_) => "maintenance",
        DocEvent::Override(_) => "override",
        DocEvent::Flag(_) => "flag",
        DocEvent::Check(_) => "check",
    };
    let mut data = serde_json::to_value(event).unwrap_or_default();
    if let Some(map) = data.as_object_mut() {
        map.remove("kind");
        // A check's target may be an internal address: readers need no token, so the
        // stream says that a check changed, not where it probes (GET /v1/checks does).
        if let Some(check) = map.get_mut("check").and_then(|c| c.as_object_mut()) {
            check.remove("target");
        }
    }
    annotate(&mut data, transition, coalesced);
    Published {
        kind,
        id,
        service: Some(event.service().to_string()),
        region: None,
        data,
        frame: std::sync::OnceLock::new(),
    }
}

/// The SSE/long-poll form of a status event.
pub fn status_published(
    event: &StatusEvent,
    id: String,
    transition: Option<&str>,
    coalesced: Option<&Coalesced>,
) -> Published {
    let mut data = json!({
        "service": event.service,
        "component": event.component,
        "region": event.region,
        "origin": event.origin_node,
        "changed_at_ms": event.changed_at_ms,
        "conflict": event.conflict,
    });
    if let (Some(obs), Some(map)) = (&event.observation, data.as_object_mut()) {
        map.insert("state".into(), json!(obs.state));
        map.insert("message".into(), json!(obs.message));
        map.insert("reporter".into(), json!(obs.reporter));
        map.insert("observed_at_ms".into(), json!(obs.observed_at_ms));
        map.insert("ttl_ms".into(), json!(obs.ttl_ms));
    } else if let Some(map) = data.as_object_mut() {
        map.insert("state".into(), serde_json::Value::Null);
    }
    annotate(&mut data, transition, coalesced);
    Published {
        kind: "status",
        id,
        service: Some(event.service.to_string()),
        region: Some(event.region.to_string()),
        data,
        frame: std::sync::OnceLock::new(),
    }
}

/// The published form of any transition: its event with its identity and what it folds.
pub fn transition_published(transition: &Transition, id: String) -> Published {
    let coalesced = transition.coalesced.as_ref();
    match &transition.event {
        DocEvent::Status(status) => {
            status_published(status, id, transition.id.as_deref(), coalesced)
        }
        other => record_published(other, id, transition.id.as_deref(), coalesced),
    }
}

/// Adds what a consumer needs to deduplicate and to know what it was not told one by one:
/// `transition` (the same on every node; `null` for an event that is no single transition)
/// and, when the event folds transitions, `coalesced` (how many) and `coalesced_reason`.
fn annotate(data: &mut serde_json::Value, transition: Option<&str>, coalesced: Option<&Coalesced>) {
    let Some(map) = data.as_object_mut() else {
        return;
    };
    map.insert("transition".into(), json!(transition));
    if let Some(c) = coalesced {
        map.insert("coalesced".into(), json!(c.count));
        map.insert("coalesced_reason".into(), json!(c.reason));
    }
}
