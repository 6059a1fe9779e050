//! The schema: the only code that knows the document's root keys.
//!
//! Layout: the root map holds one key per record, each value one JSON string:
//!
//! | key | value |
//! | --- | --- |
//! | `obs/<component>/<region>` | [`Observation`] |
//! | `inc/<incident>` | [`Incident`] (the header) |
//! | `upd/<incident>/<update-key>` | [`IncidentUpdate`] (append-only) |
//! | `mnt/<window>` | [`Maintenance`] |
//! | `ovr/<component>` | [`Override`] |
//! | `flag/<key>` | [`Flag`] (see [`crate::flags`]) |
//! | `chk/<component>` | [`Check`] (a regional probe) |
//! | `hook/<id>` | [`Webhook`] (an outgoing webhook subscription; no event) |
//! | `hookp/<id>` | [`WebhookProgress`] (how far its deliveries got; no event) |
//!
//! Flat keys and scalar values mean that no two replicas ever create the same object
//! concurrently (which Automerge would resolve by hiding one object wholesale), that a
//! concurrent write to one record is a plain register conflict (one value wins everywhere,
//! the others stay visible as `conflicts`), and that incident updates, each under a key of
//! their own, never conflict at all. (A base change also holds the epoch's meta under
//! [`crate::epoch::META_KEY`], which is not a record.)

/// The version of this layout, which nodes advertise beside their frame versions
/// (`statusmesh_gossip::version`): a release that changes what a key means or how its value
/// is encoded bumps it, and keeps reading the version before it. Version 1 is the layout
/// above, the only one so far.
pub const SCHEMA_VERSION: u8 = 1;
/// The oldest layout this release still reads and writes.
pub const SCHEMA_VERSION_MIN: u8 = 1;

use std::ops::Range;

use automerge::{ScalarValue, Value};
use serde::de::DeserializeOwned;

use crate::checks::Check;
use crate::error::CrdtError;
use crate::flags::Flag;
use crate::model::{Name, Observation};
use crate::records::{Incident, IncidentUpdate, Maintenance, Override};
use crate::webhooks::{Webhook, WebhookProgress};

/// Longest update key, in bytes.
const UPDATE_KEY_LEN_MAX: usize = 128;

/// Where a record lives in the document.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum RecordKey {
    Observation { component: Name, region: Name },
    Incident { id: Name },
    Update { incident: Name, key: String },
    Maintenance { id: Name },
    Override { component: Name },
    Flag { key: Name },
    Check { component: Name },
    Webhook { id: Name },
    WebhookProgress { id: Name },
}

impl RecordKey {
    /// The root key in the document.
    pub fn to_key(&self) -> String {
        match self {
            RecordKey::Observation { component, region } => format!("obs/{component}/{region}"),
            RecordKey::Incident { id } => format!("inc/{id}"),
            RecordKey::Update { incident, key } => format!("upd/{incident}/{key}"),
            RecordKey::Maintenance { id } => format!("mnt/{id}"),
            RecordKey::Override { component } => format!("ovr/{component}"),
            RecordKey::Flag { key } => format!("flag/{key}"),
            RecordKey::Check { component } => format!("chk/{component}"),
            RecordKey::Webhook { id } => format!("hook/{id}"),
            RecordKey::WebhookProgress { id } => format!("hookp/{id}"),
        }
    }

    /// Parses a root key; `None` for anything outside the schema.
    pub fn parse(key: &str) -> Option<Self> {
        let (kind, rest) = key.split_once('/')?;
        let name = |field: &'static str, value: &str| Name::parse(field, value).ok();
        match kind {
            "obs" => {
                let (component, region) = rest.split_once('/')?;
                Some(RecordKey::Observation {
                    component: name("component", component)?,
                    region: name("region", region)?,
                })
            }
            "inc" => Some(RecordKey::Incident {
                id: name("incident", rest)?,
            }),
            "upd" => {
                let (incident, update) = rest.split_once('/')?;
                if !valid_update_key(update) {
                    return None;
                }
                Some(RecordKey::Update {
                    incident: name("incident", incident)?,
                    key: update.to_owned(),
                })
            }
            "mnt" => Some(RecordKey::Maintenance {
                id: name("maintenance", rest)?,
            }),
            "ovr" => Some(RecordKey::Override {
                component: name("component", rest)?,
            }),
            "flag" => Some(RecordKey::Flag {
                key: name("flag", rest)?,
            }),
            "chk" => Some(RecordKey::Check {
                component: name("component", rest)?,
            }),
            "hook" => Some(RecordKey::Webhook {
                id: name("webhook", rest)?,
            }),
            "hookp" => Some(RecordKey::WebhookProgress {
                id: name("webhook", rest)?,
            }),
            _ => None,
        }
    }

    /// Whether the record may be deleted. Incidents and their updates are the audit trail:
    /// never deleted, only resolved.
    pub(super) fn deletable(&self) -> bool {
        matches!(
            self,
            RecordKey::Observation { .. }
                | RecordKey::Maintenance { .. }
                | RecordKey::Override { .. }
                | RecordKey::Flag { .. }
                | RecordKey::Check { .. }
                | RecordKey::Webhook { .. }
                | RecordKey::WebhookProgress { .. }
        )
    }

    /// Checks that `json` is a valid value for this key.
    pub(super) fn validate_json(&self, json: &str) -> Result<(), String> {
        fn check<T: DeserializeOwned>(
            json: &str,
            validate: impl Fn(&T) -> Result<(), CrdtError>,
        ) -> Result<(), String> {
            let value: T =
                serde_json::from_str(json).map_err(|e| format!("value does not parse: {e}"))?;
            validate(&value).map_err(|e| e.to_string())
        }
        match self {
            RecordKey::Observation { .. } => check::<Observation>(json, Observation::validate),
            RecordKey::Incident { .. } => check::<Incident>(json, Incident::validate),
            RecordKey::Update { .. } => check::<IncidentUpdate>(json, IncidentUpdate::validate),
            RecordKey::Maintenance { .. } => check::<Maintenance>(json, Maintenance::validate),
            RecordKey::Override { .. } => check::<Override>(json, Override::validate),
            RecordKey::Flag { .. } => check::<Flag>(json, Flag::validate),
            RecordKey::Check { .. } => check::<Check>(json, Check::validate),
            RecordKey::Webhook { .. } => check::<Webhook>(json, Webhook::validate),
            RecordKey::WebhookProgress { .. } => {
                check::<WebhookProgress>(json, WebhookProgress::validate)
            }
        }
    }
}

/// Whether `key` may name an incident update: 1-128 characters of a-z, 0-9, '-', '_', '.'.
fn valid_update_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= UPDATE_KEY_LEN_MAX
        && key.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        })
}

/// A kind of record, by the prefix of its root keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RecordKind {
    Observation,
    Incident,
    Update,
    Maintenance,
    Override,
    Flag,
    Check,
    Webhook,
    WebhookProgress,
}

impl RecordKind {
    /// Every root key of this kind, as a range of the root map.
    pub(super) fn keys(self) -> Range<String> {
        let prefix = match self {
            RecordKind::Observation => "obs",
            RecordKind::Incident => "inc",
            RecordKind::Update => "upd",
            RecordKind::Maintenance => "mnt",
            RecordKind::Override => "ovr",
            RecordKind::Flag => "flag",
            RecordKind::Check => "chk",
            RecordKind::Webhook => "hook",
            RecordKind::WebhookProgress => "hookp",
        };
        prefix_range(prefix)
    }
}

/// The root keys of the updates of `incident`.
pub(super) fn updates_of(incident: &Name) -> Range<String> {
    prefix_range(&format!("upd/{incident}"))
}

/// The root key of the header of incident `id`.
pub(super) fn incident_key(id: &Name) -> String {
    RecordKey::Incident { id: id.clone() }.to_key()
}

/// The keys that start with `prefix` and a '/': '0' is the byte after '/', so the range ends
/// right after the last of them.
pub(super) fn prefix_range(prefix: &str) -> Range<String> {
    format!("{prefix}/")..format!("{prefix}0")
}

/// The text of a string value (every record is one).
pub(super) fn str_of(value: &Value<'_>) -> Option<String> {
    match value {
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Str(text) => Some(text.to_string()),
            _ => None,
        },
        Value::Object(_) => None,
    }
}

/// One record write: a key and its new value (`None` deletes, where allowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Put {
    Observation {
        component: Name,
        region: Name,
        observation: Observation,
    },
    Incident {
        id: Name,
        incident: Incident,
    },
    Update {
        incident: Name,
        key: String,
        update: IncidentUpdate,
    },
    Maintenance {
        id: Name,
        window: Option<Maintenance>,
    },
    Override {
        component: Name,
        value: Option<Override>,
    },
    /// A feature flag (`None`: deleted).
    Flag {
        key: Name,
        value: Option<Flag>,
    },
    /// A regional probe check (`None`: removed).
    Check {
        component: Name,
        value: Option<Check>,
    },
    /// An outgoing webhook subscription (`None`: deleted).
    Webhook {
        id: Name,
        value: Option<Webhook>,
    },
    /// How far a subscription's deliveries of this service got (`None`: forgotten).
    WebhookProgress {
        id: Name,
        value: Option<WebhookProgress>,
    },
}

impl Put {
    /// Where the put writes.
    pub(super) fn key(&self) -> RecordKey {
        match self {
            Put::Observation {
                component, region, ..
            } => RecordKey::Observation {
                component: component.clone(),
                region: region.clone(),
            },
            Put::Incident { id, .. } => RecordKey::Incident { id: id.clone() },
            Put::Update { incident, key, .. } => RecordKey::Update {
                incident: incident.clone(),
                key: key.clone(),
            },
            Put::Maintenance { id, .. } => RecordKey::Maintenance { id: id.clone() },
            Put::Override { component, .. } => RecordKey::Override {
                component: component.clone(),
            },
            Put::Flag { key, .. } => RecordKey::Flag { key: key.clone() },
            Put::Check { component, .. } => RecordKey::Check {
                component: component.clone(),
            },
            Put::Webhook { id, .. } => RecordKey::Webhook { id: id.clone() },
            Put::WebhookProgress { id, .. } => RecordKey::WebhookProgress { id: id.clone() },
        }
    }

    /// The JSON to store, or `None` for a delete.
    pub(super) fn json(&self) -> Result<Option<String>, CrdtError> {
        let encode = |r: serde_json::Result<String>| {
            r.map(Some).map_err(|e| CrdtError::InvalidField {
                field: "value",
                value: String::new(),
                reason: e.to_string(),
            })
        };
        match self {
            Put::Observation { observation, .. } => encode(serde_json::to_string(observation)),
            Put::Incident { incident, .. } => encode(serde_json::to_string(incident)),
            Put::Update { update, .. } => encode(serde_json::to_string(update)),
            Put::Maintenance {
                window: Some(w), ..
            } => encode(serde_json::to_string(w)),
            Put::Override { value: Some(v), .. } => encode(serde_json::to_string(v)),
            Put::Flag { value: Some(v), .. } => encode(serde_json::to_string(v)),
            Put::Maintenance { window: None, .. }
            | Put::Override { value: None, .. }
            | Put::Flag { value: None, .. }
            | Put::Check { value: None, .. }
            | Put::Webhook { value: None, .. }
            | Put::WebhookProgress { value: None, .. } => Ok(None),
            Put::Check { value: Some(v), .. } => encode(serde_json::to_string(v)),
            Put::Webhook { value: Some(v), .. } => encode(serde_json::to_string(v)),
            Put::WebhookProgress { value: Some(v), .. } => encode(serde_json::to_string(v)),
        }
    }

    /// Validates the value before anything is written.
    pub(super) fn validate(&self) -> Result<(), CrdtError> {
        match self {
            Put::Observation { observation, .. } => observation.validate(),
            Put::Incident { incident, .. } => incident.validate(),
            Put::Update { key, update, .. } => {
                if RecordKey::parse(&self.key().to_key()).is_none() {
                    return Err(CrdtError::InvalidField {
                        field: "update_key",
                        value: key.clone(),
                        reason: "must be 1-128 characters of a-z, 0-9, '-', '_', '.'".into(),
                    });
                }
                update.validate()
            }
            Put::Maintenance { window, .. } => {
                window.as_ref().map_or(Ok(()), Maintenance::validate)
            }
            Put::Override { value, .. } => value.as_ref().map_or(Ok(()), Override::validate),
            Put::Flag { value, .. } => value.as_ref().map_or(Ok(()), Flag::validate),
            Put::Check { value, .. } => value.as_ref().map_or(Ok(()), Check::validate),
            Put::Webhook { value, .. } => value.as_ref().map_or(Ok(()), Webhook::validate),
            Put::WebhookProgress { value, .. } => {
                value.as_ref().map_or(Ok(()), WebhookProgress::validate)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::fixtures::{name, observation, update};
    use crate::model::State;

    #[test]
    fn record_keys_round_trip_through_their_root_keys() {
        for key in [
            RecordKey::Observation {
                component: name("db"),
                region: name("eu-west"),
            },
            RecordKey::Incident { id: name("i1") },
            RecordKey::Update {
                incident: name("i1"),
                key: "000000000001000-n1-0".into(),
            },
            RecordKey::Maintenance { id: name("w1") },
            RecordKey::Override {
                component: name("db"),
            },
            RecordKey::Flag {
                key: name("new-checkout"),
            },
            RecordKey::Check {
                component: name("db"),
            },
            RecordKey::Webhook { id: name("pager") },
            RecordKey::WebhookProgress { id: name("pager") },
        ] {
            assert_eq!(RecordKey::parse(&key.to_key()), Some(key));
        }
    }

    #[test]
    fn keys_outside_the_schema_do_not_parse() {
        let too_long = format!("upd/i1/{}", "k".repeat(UPDATE_KEY_LEN_MAX + 1));
        for key in [
            "",
            "epoch",
            "obs/db",
            "obs/db/eu-west/extra",
            "inc/",
            "upd/i1/",
            "upd/i1/UPPER",
            too_long.as_str(),
            "xyz/db",
        ] {
            assert_eq!(RecordKey::parse(key), None, "{key:?}");
        }
    }

    #[test]
    fn incidents_and_their_updates_are_never_deletable() {
        let deletable = |key: &str| RecordKey::parse(key).expect("a schema key").deletable();
        assert!(deletable("obs/db/eu-west"));
        assert!(deletable("mnt/w1"));
        assert!(deletable("ovr/db"));
        assert!(!deletable("inc/i1"));
        assert!(!deletable("upd/i1/k1"));
    }

    #[test]
    fn a_value_that_breaks_its_record_is_refused_with_the_reason() {
        let key = RecordKey::parse("obs/db/eu-west").expect("a schema key");
        let valid = serde_json::to_string(&observation(State::Operational, "")).expect("json");
        assert_eq!(key.validate_json(&valid), Ok(()));
        let reason = key.validate_json("not json").expect_err("refused");
        assert!(reason.starts_with("value does not parse"), "{reason}");
        let mut bad = observation(State::Operational, "");
        bad.ttl_ms = 0;
        let reason = key
            .validate_json(&serde_json::to_string(&bad).expect("json"))
            .expect_err("refused");
        assert!(reason.contains("ttl_ms"), "{reason}");
    }

    #[test]
    fn an_update_key_outside_the_alphabet_is_an_invalid_field() {
        let put = Put::Update {
            incident: name("i1"),
            key: "Not Allowed".into(),
            update: update(1, "text"),
        };
        let err = put.validate().expect_err("refused");
        assert_eq!(err.field(), Some("update_key"));
    }

    #[test]
    fn a_delete_stores_no_value() {
        let put = Put::Override {
            component: name("db"),
            value: None,
        };
        assert_eq!(put.json().expect("encodes"), None);
        assert_eq!(put.key().to_key(), "ovr/db");
    }

    #[test]
    fn the_key_ranges_hold_exactly_their_keys() {
        let observations = RecordKind::Observation.keys();
        assert!(observations.contains(&"obs/db/eu-west".to_owned()));
        assert!(!observations.contains(&"ovr/db".to_owned()));
        assert!(!observations.contains(&"obs0".to_owned()));
        let updates = updates_of(&name("i1"));
        assert!(updates.contains(&"upd/i1/k1".to_owned()));
        // Another incident whose id starts the same is not in the range.
        assert!(!updates.contains(&"upd/i10/k1".to_owned()));
        assert_eq!(incident_key(&name("i1")), "inc/i1");
    }
}
