//! Outgoing webhooks as mesh data: a subscription and how far its deliveries got.
//!
//! A subscription names the services it follows, and is stored as a record of each of those
//! services' documents (`hook/<id>`, see `doc/schema.rs`): it replicates, survives restarts
//! and crosses epoch rollovers like any record, and every node knows every subscription, so
//! any node can be its sender. Next to it, `hookp/<id>` records how far deliveries of that
//! service's transitions got (the document's heads after the last delivered one), written by
//! whichever node sends: when that node dies, the next sender resumes from there.
//!
//! This module owns the shapes and their validation ([`WebhookSpec`], the user's JSON, into
//! [`Webhook`], with an error naming the field), the event types ([`EventType`]) and the
//! signing secrets' rotation rule ([`Webhook::rotate_secret`]). Sending is the node's job.
//! Neither record produces an event on `/v1/events`: a subscription holds its secret.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::checks::{invalid, parse_target, CheckKind, Target};
use crate::error::CrdtError;
use crate::model::{Name, State};

/// Longest subscription URL, in bytes.
pub const URL_LEN_MAX: usize = 2048;
/// Most services one subscription may follow.
pub const SERVICES_MAX: usize = 64;
/// Shortest and longest secret key, in bytes (after base64).
pub const SECRET_BYTES_MIN: usize = 24;
pub const SECRET_BYTES_MAX: usize = 64;
/// The prefix Standard Webhooks gives secrets.
pub const SECRET_PREFIX: &str = "whsec_";
/// Most secrets a subscription signs with at once (the current one and those being rotated
/// out).
pub const SECRETS_MAX: usize = 4;
/// How long a replaced secret keeps signing, by default: a day, so that receivers can move
/// to the new one at their pace.
pub const ROTATION_GRACE_MS_DEFAULT: u64 = 24 * 3600 * 1000;
/// Longest reason a subscription was disabled for, in bytes.
pub const REASON_LEN_MAX: usize = 512;

/// What a subscription may be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "component.status_changed")]
    ComponentStatusChanged,
    #[serde(rename = "incident.created")]
    IncidentCreated,
    #[serde(rename = "incident.updated")]
    IncidentUpdated,
    #[serde(rename = "incident.resolved")]
    IncidentResolved,
    #[serde(rename = "maintenance.scheduled")]
    MaintenanceScheduled,
    #[serde(rename = "maintenance.cancelled")]
    MaintenanceCancelled,
    /// A window's start time passed (told by the sender's clock, not by a write).
    #[serde(rename = "maintenance.started")]
    MaintenanceStarted,
    #[serde(rename = "maintenance.ended")]
    MaintenanceEnded,
}

impl EventType {
    /// Every type, in the order of the documentation.
    pub const ALL: [EventType; 8] = [
        EventType::ComponentStatusChanged,
        EventType::IncidentCreated,
        EventType::IncidentUpdated,
        EventType::IncidentResolved,
        EventType::MaintenanceScheduled,
        EventType::MaintenanceCancelled,
        EventType::MaintenanceStarted,
        EventType::MaintenanceEnded,
    ];

    /// The wire spelling (the body's `type`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::ComponentStatusChanged => "component.status_changed",
            EventType::IncidentCreated => "incident.created",
            EventType::IncidentUpdated => "incident.updated",
            EventType::IncidentResolved => "incident.resolved",
            EventType::MaintenanceScheduled => "maintenance.scheduled",
            EventType::MaintenanceCancelled => "maintenance.cancelled",
            EventType::MaintenanceStarted => "maintenance.started",
            EventType::MaintenanceEnded => "maintenance.ended",
        }
    }
}

impl FromStr for EventType {
    type Err = CrdtError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == value)
            .ok_or_else(|| {
                let all: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
                invalid(
                    "events",
                    value,
                    &format!("must be one of {}", all.join(", ")),
                )
            })
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the body looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Standard Webhooks 1.0: `{"type", "timestamp", "data"}`, signed.
    #[default]
    Standard,
    /// Slack's incoming webhooks: `{"text", "blocks"}`, unsigned (Slack's URL is the secret).
    Slack,
}

/// A subscription as a client writes it (`PUT /v1/webhooks/{id}`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    pub url: String,
    /// `whsec_<base64>`; generated when absent on creation, kept when absent on an update.
    pub secret: Option<String>,
    /// Every type when absent.
    pub events: Option<Vec<String>>,
    pub services: Vec<String>,
    /// Component events only when the new state is at least this bad, or when the state
    /// before it was (so that the recovery from an outage is told too).
    pub min_state: Option<State>,
    pub format: Option<Format>,
    /// How long a replaced secret keeps signing, in seconds (default a day).
    pub rotation_grace_s: Option<u64>,
}

/// One signing secret; a replaced one signs until `expires_at_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    pub value: String,
    pub expires_at_ms: Option<u64>,
}

/// Why and when a subscription stopped being sent to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disabled {
    pub reason: String,
    pub at_ms: u64,
    pub by_node: String,
}

/// A validated subscription, as stored in each of its services' documents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    pub url: String,
    /// The current secret first.
    pub secrets: Vec<Secret>,
    pub events: Vec<EventType>,
    pub services: Vec<Name>,
    pub min_state: State,
    pub format: Format,
    pub disabled: Option<Disabled>,
    pub author: String,
    pub updated_at_ms: u64,
}

/// How far the deliveries of one service's transitions to one subscription got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookProgress {
    /// The encoded cursor (this service's heads) after the last transition delivered or
    /// passed over.
    pub cursor: String,
    /// Events delivered so far, by every sender.
    pub delivered: u64,
    /// Events folded into a later one because the outbox was full.
    pub coalesced: u64,
    pub by_node: String,
    pub at_ms: u64,
    /// Maintenance starts and ends up to this time were told (they are events of the clock,
    /// not of the document).
    #[serde(default)]
    pub maintenance_told_ms: u64,
}

impl WebhookSpec {
    /// Validates the spec into a subscription by `author` at `now_ms`. `previous` is the
    /// stored subscription of that id, if any: its secrets carry over (rotated when the spec
    /// brings a new one), and its disabled mark is cleared (a PUT re-enables).
    /// `generated_secret` is used when neither the spec nor `previous` has one.
    pub fn into_webhook(
        self,
        previous: Option<&Webhook>,
        generated_secret: &str,
        author: &str,
        now_ms: u64,
    ) -> Result<Webhook, CrdtError> {
        let events = match self.events {
            None => EventType::ALL.to_vec(),
            Some(list) if list.is_empty() => {
                return Err(invalid("events", "[]", "must name at least one event type"))
            }
            Some(list) => {
                let mut events = list
                    .iter()
                    .map(|e| e.parse())
                    .collect::<Result<Vec<EventType>, _>>()?;
                events.sort();
                events.dedup();
                events
            }
        };
        let mut services = self
            .services
            .iter()
            .map(|s| Name::parse("services", s))
            .collect::<Result<Vec<_>, _>>()?;
        services.sort();
        services.dedup();
        let grace_ms = self
            .rotation_grace_s
            .map_or(ROTATION_GRACE_MS_DEFAULT, |s| s.saturating_mul(1000));
        let mut webhook = Webhook {
            url: self.url,
            secrets: previous.map(|p| p.secrets.clone()).unwrap_or_default(),
            events,
            services,
            min_state: self.min_state.unwrap_or(State::Operational),
            format: self.format.unwrap_or_default(),
            disabled: None,
            author: author.to_owned(),
            updated_at_ms: now_ms,
        };
        match self.secret {
            Some(secret) => {
                secret_key(&secret)?;
                webhook.rotate_secret(secret, now_ms, grace_ms);
            }
            None if webhook.secrets.is_empty() => {
                webhook.rotate_secret(generated_secret.to_owned(), now_ms, grace_ms);
            }
            None => webhook.drop_expired(now_ms),
        }
        webhook.validate()?;
        Ok(webhook)
    }
}

impl Webhook {
    /// Makes `secret` the current one; the one it replaces signs for `grace_ms` more.
    /// Expired secrets are dropped, and the oldest beyond [`SECRETS_MAX`].
    pub fn rotate_secret(&mut self, secret: String, now_ms: u64, grace_ms: u64) {
        if self.secrets.first().is_some_and(|s| s.value == secret) {
            self.drop_expired(now_ms);
            return;
        }
        self.secrets.retain(|s| s.value != secret);
        if let Some(current) = self.secrets.first_mut() {
            if current.expires_at_ms.is_none() {
                current.expires_at_ms = Some(now_ms.saturating_add(grace_ms));
            }
        }
        self.secrets.insert(
            0,
            Secret {
                value: secret,
                expires_at_ms: None,
            },
        );
        self.drop_expired(now_ms);
        self.secrets.truncate(SECRETS_MAX);
    }

    fn drop_expired(&mut self, now_ms: u64) {
        self.secrets
            .retain(|s| s.expires_at_ms.is_none_or(|until| until > now_ms));
    }

    /// The secrets that sign at `now_ms`, current first.
    pub fn signing_secrets(&self, now_ms: u64) -> impl Iterator<Item = &str> {
        self.secrets
            .iter()
            .filter(move |s| s.expires_at_ms.is_none_or(|until| until > now_ms))
            .map(|s| s.value.as_str())
    }

    /// Whether component events of `state` (after `before`, when known) pass `min_state`.
    pub fn passes_min_state(&self, state: Option<State>, before: Option<State>) -> bool {
        let bad_enough = |s: Option<State>| s.is_some_and(|s| s >= self.min_state);
        bad_enough(state) || bad_enough(before)
    }

    /// The URL's parts (scheme, host, port, path).
    pub fn target(&self) -> Result<Target, CrdtError> {
        parse_url(&self.url)
    }

    /// Checks every bound; the error names the first field that breaks one.
    pub fn validate(&self) -> Result<(), CrdtError> {
        if self.url.len() > URL_LEN_MAX {
            return Err(invalid(
                "url",
                &self.url,
                &format!("longer than {URL_LEN_MAX} bytes"),
            ));
        }
        parse_url(&self.url)?;
        if self.services.is_empty() {
            return Err(invalid("services", "[]", "must name at least one service"));
        }
        if self.services.len() > SERVICES_MAX {
            return Err(invalid(
                "services",
                &self.services.len().to_string(),
                &format!("at most {SERVICES_MAX} services"),
            ));
        }
        if self.events.is_empty() {
            return Err(invalid("events", "[]", "must name at least one event type"));
        }
        if self.secrets.is_empty() || self.secrets.len() > SECRETS_MAX {
            return Err(invalid(
                "secret",
                &self.secrets.len().to_string(),
                &format!("a subscription holds 1 to {SECRETS_MAX} secrets"),
            ));
        }
        for secret in &self.secrets {
            secret_key(&secret.value)?;
        }
        if let Some(d) = &self.disabled {
            if d.reason.len() > REASON_LEN_MAX {
                return Err(invalid(
                    "disabled",
                    &d.reason,
                    &format!("reason longer than {REASON_LEN_MAX} bytes"),
                ));
            }
        }
        Ok(())
    }
}

impl WebhookProgress {
    /// Checks its bounds (the cursor is decoded by whoever resumes from it).
    pub fn validate(&self) -> Result<(), CrdtError> {
        if self.cursor.len() > crate::cursor::CURSOR_LEN_MAX {
            return Err(invalid("cursor", &self.cursor, "too long"));
        }
        Ok(())
    }
}

/// The HMAC key of a `whsec_<base64>` secret; the error names the field `secret` and never
/// echoes the secret.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, CrdtError> {
    use base64::Engine as _;
    let refuse = |reason: &str| CrdtError::InvalidField {
        field: "secret",
        value: "(hidden)".into(),
        reason: reason.to_owned(),
    };
    let Some(encoded) = secret.strip_prefix(SECRET_PREFIX) else {
        return Err(refuse("must start with whsec_"));
    };
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| refuse("must be whsec_ followed by standard base64"))?;
    if !(SECRET_BYTES_MIN..=SECRET_BYTES_MAX).contains(&key.len()) {
        return Err(refuse(&format!(
            "the key must be {SECRET_BYTES_MIN} to {SECRET_BYTES_MAX} bytes"
        )));
    }
    Ok(key)
}

/// An `http://` or `https://` URL, parsed as a probe target is; errors name `url`.
fn parse_url(url: &str) -> Result<Target, CrdtError> {
    parse_target(CheckKind::Http, url).map_err(|e| match e {
        CrdtError::InvalidField { value, reason, .. } => CrdtError::InvalidField {
            field: "url",
            value,
            reason,
        },
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET_A: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SECRET_B: &str = "whsec_bm90LWEtcmVhbC1zZWNyZXQtYnV0LWxvbmctZW5vdWdo";

    fn spec(json: &str) -> WebhookSpec {
        serde_json::from_str(json).expect("a spec")
    }

    #[test]
    fn a_spec_without_a_secret_gets_the_generated_one_and_every_event() {
        let hook = spec(r#"{"url": "http://127.0.0.1:9/in", "services": ["api", "api"]}"#)
            .into_webhook(None, SECRET_A, "ops", 5)
            .expect("valid");
        assert_eq!(hook.secrets.len(), 1);
        assert_eq!(hook.secrets[0].value, SECRET_A);
        assert_eq!(hook.events, EventType::ALL.to_vec());
        assert_eq!(hook.services.len(), 1, "services are deduplicated");
        assert_eq!(hook.format, Format::Standard);
    }

    #[test]
    fn a_new_secret_rotates_and_the_old_one_signs_until_the_grace_ends() {
        let first = spec(r#"{"url": "https://hooks.example/x", "services": ["api"]}"#)
            .into_webhook(None, SECRET_A, "ops", 1_000)
            .expect("valid");
        let rotated = spec(&format!(
            r#"{{"url": "https://hooks.example/x", "services": ["api"], "secret": "{SECRET_B}", "rotation_grace_s": 60}}"#
        ))
        .into_webhook(Some(&first), "unused", "ops", 2_000)
        .expect("valid");
        let signing: Vec<&str> = rotated.signing_secrets(2_000).collect();
        assert_eq!(signing, vec![SECRET_B, SECRET_A]);
        let later: Vec<&str> = rotated.signing_secrets(62_001).collect();
        assert_eq!(later, vec![SECRET_B], "the old secret expired");
        // An update without a secret keeps the current one.
        let kept = spec(r#"{"url": "https://hooks.example/y", "services": ["api"]}"#)
            .into_webhook(Some(&rotated), "unused", "ops", 70_000)
            .expect("valid");
        assert_eq!(kept.secrets.len(), 1);
        assert_eq!(kept.secrets[0].value, SECRET_B);
    }

    #[test]
    fn bad_fields_are_named() {
        for (json, field) in [
            (r#"{"url": "ftp://x/", "services": ["api"]}"#, "url"),
            (r#"{"url": "http://x/", "services": []}"#, "services"),
            (r#"{"url": "http://x/", "services": ["Bad"]}"#, "services"),
            (
                r#"{"url": "http://x/", "services": ["api"], "events": ["nope"]}"#,
                "events",
            ),
            (
                r#"{"url": "http://x/", "services": ["api"], "events": []}"#,
                "events",
            ),
            (
                r#"{"url": "http://x/", "services": ["api"], "secret": "plain"}"#,
                "secret",
            ),
            (
                r#"{"url": "http://x/", "services": ["api"], "secret": "whsec_c2hvcnQ="}"#,
                "secret",
            ),
        ] {
            let err = spec(json)
                .into_webhook(None, SECRET_A, "ops", 1)
                .expect_err(json);
            assert_eq!(err.field(), Some(field), "{json}: {err}");
            assert!(
                !err.to_string().contains("c2hvcnQ"),
                "secrets are not echoed"
            );
        }
    }

    #[test]
    fn min_state_passes_bad_states_and_the_recovery_from_them() {
        let mut hook = spec(r#"{"url": "http://x/", "services": ["api"]}"#)
            .into_webhook(None, SECRET_A, "ops", 1)
            .expect("valid");
        hook.min_state = State::PartialOutage;
        assert!(hook.passes_min_state(Some(State::MajorOutage), None));
        assert!(!hook.passes_min_state(Some(State::DegradedPerformance), None));
        assert!(hook.passes_min_state(Some(State::Operational), Some(State::MajorOutage)));
        assert!(!hook.passes_min_state(None, Some(State::Operational)));
    }
}
