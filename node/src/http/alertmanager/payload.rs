//! The Alertmanager webhook payload (version 4) and what each alert says for statusmesh:
//! its target (service, component, region), its state, its name, when it started.
//!
//! Decoding is lenient where Alertmanager's own output varies (unknown fields are ignored,
//! every field but `alerts` and each alert's `status` may be missing, an unparsable time is
//! no time) and strict where a wrong value would silently write the wrong cell: a target
//! label that is present but invalid refuses the whole delivery (422 naming the field), so
//! a typo is seen in Alertmanager's log instead of becoming a column on every status page.
//! An alert without the target labels, or a firing one without a state, is skipped and
//! counted: it is not an error of the delivery.

use std::collections::{BTreeMap, BTreeSet};

use axum::http::StatusCode;
use serde::Deserialize;
use statusmesh_crdt::liveness::Fnv64;
use statusmesh_crdt::{Name, State};

use crate::http::ApiError;
use crate::settings::AlertmanagerSettings;

/// The label that names the service.
pub const LABEL_SERVICE: &str = "statusmesh_service";
/// The label that names the component.
pub const LABEL_COMPONENT: &str = "statusmesh_component";
/// The label that names the region observed (default: the receiving node's region).
pub const LABEL_REGION: &str = "statusmesh_region";
/// The label that gives the state outright (else `severity` through the severity map).
pub const LABEL_STATE: &str = "statusmesh_state";
/// The label that asks for (`"true"`) or against (`"false"`) an incident.
pub const LABEL_INCIDENT: &str = "statusmesh_incident";

/// Most alerts in one delivery (Alertmanager's `max_alerts` keeps a group under it).
pub const ALERTS_PER_DELIVERY_MAX: usize = 1_000;
/// Longest name of an alert kept (its `alertname` and `summary`), in bytes.
pub const ALERT_NAME_BYTES_MAX: usize = 200;
/// Longest fingerprint kept as given; a longer one is kept as its hash.
const FINGERPRINT_BYTES_MAX: usize = 64;

/// The webhook body, as Alertmanager sends it. `groupLabels`, `commonLabels`,
/// `commonAnnotations` and `externalURL` are not read: each alert carries its own labels.
#[derive(Debug, Deserialize)]
struct Payload {
    #[serde(default)]
    version: Option<String>,
    #[serde(default, rename = "groupKey")]
    group_key: String,
    #[serde(default, rename = "truncatedAlerts")]
    truncated_alerts: u64,
    #[serde(default)]
    receiver: String,
    alerts: Vec<AlertIn>,
}

#[derive(Debug, Deserialize)]
struct AlertIn {
    status: Status,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default, rename = "startsAt")]
    starts_at: Option<String>,
    #[serde(default)]
    fingerprint: Option<String>,
}

/// Whether an alert fires or has resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Firing,
    Resolved,
}

/// The cell an alert speaks about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, Deserialize)]
pub struct Target {
    pub service: Name,
    pub component: Name,
    pub region: Name,
}

/// Why an alert was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Skip {
    /// It lacks `statusmesh_service` or `statusmesh_component`.
    NoTarget,
    /// It fires with no `statusmesh_state` and a severity the map does not know.
    NoState,
    /// It is older than what is known of the same alert (a delivery out of order).
    Stale,
    /// The firing set is full (see `firing::FIRING_ALERTS_MAX`).
    Limit,
}

impl Skip {
    /// The reason as the reply and the metrics spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::NoTarget => "no_target",
            Skip::NoState => "no_state",
            Skip::Stale => "stale",
            Skip::Limit => "limit",
        }
    }
}

/// One alert, read for statusmesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub fingerprint: String,
    pub status: Status,
    pub target: Target,
    /// The state it asks for while it fires (`Operational` for a resolved alert that has no
    /// state: it is not read).
    pub state: State,
    /// `alertname: summary`, bounded.
    pub name: String,
    /// `startsAt` in milliseconds since the Unix epoch, when given and parsable.
    pub starts_at_ms: Option<i64>,
    /// Whether it asks for an incident.
    pub incident: bool,
}

/// One delivery, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub receiver: String,
    /// A hash of the receiver and `groupKey`: which of Alertmanager's groups this is.
    pub group: u64,
    /// The delivery lists the whole group (`truncatedAlerts` is 0), so an alert of the group
    /// that it does not list is no longer firing.
    pub complete: bool,
    pub alerts: Vec<Alert>,
    /// Alerts skipped while reading: fingerprint and why.
    pub skipped: Vec<(String, Skip)>,
    /// How many alerts were firing and resolved, as received.
    pub firing: usize,
    pub resolved: usize,
}

impl Delivery {
    /// The targets the delivery names.
    pub fn targets(&self) -> BTreeSet<Target> {
        self.alerts.iter().map(|a| a.target.clone()).collect()
    }
}

/// Reads a webhook body. `region` is the receiving node's, `regions` the topology's.
pub fn read(
    body: &[u8],
    settings: &AlertmanagerSettings,
    region: &str,
    regions: &BTreeSet<String>,
) -> Result<Delivery, ApiError> {
    let payload: Payload = crate::http::parse_json(body)?;
    if let Some(version) = payload.version.as_deref().filter(|v| *v != "4") {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("version"),
            format!(
                "webhook payload version {:?} is not supported; this receiver reads version 4",
                truncate(version, 16)
            ),
        ));
    }
    if payload.alerts.len() > ALERTS_PER_DELIVERY_MAX {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("alerts"),
            format!(
                "{} alerts in one delivery; at most {ALERTS_PER_DELIVERY_MAX} \
                 (set max_alerts in the webhook config)",
                payload.alerts.len()
            ),
        ));
    }
    let mut group = Fnv64::new();
    group.write(payload.receiver.as_bytes());
    group.write(&[0]);
    group.write(payload.group_key.as_bytes());
    let mut delivery = Delivery {
        receiver: payload.receiver,
        group: group.finish(),
        complete: payload.truncated_alerts == 0 && !payload.group_key.is_empty(),
        alerts: Vec::with_capacity(payload.alerts.len()),
        skipped: Vec::new(),
        firing: 0,
        resolved: 0,
    };
    for (index, alert) in payload.alerts.into_iter().enumerate() {
        match alert.status {
            Status::Firing => delivery.firing += 1,
            Status::Resolved => delivery.resolved += 1,
        }
        match read_alert(index, alert, settings, region, regions)? {
            Ok(alert) => delivery.alerts.push(alert),
            Err(skipped) => delivery.skipped.push(skipped),
        }
    }
    Ok(delivery)
}

/// One alert: `Ok(Ok(alert))`, skipped (`Ok(Err)`), or an error of the whole delivery.
fn read_alert(
    index: usize,
    alert: AlertIn,
    settings: &AlertmanagerSettings,
    region: &str,
    regions: &BTreeSet<String>,
) -> Result<Result<Alert, (String, Skip)>, ApiError> {
    let fingerprint = fingerprint(alert.fingerprint.as_deref(), &alert.labels);
    let label = |key: &str| alert.labels.get(key).map(String::as_str);
    let invalid = |field: &'static str, key: &str, detail: String| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some(field),
            format!("alerts[{index}] (fingerprint {fingerprint}), label {key}: {detail}"),
        )
    };
    let name = |field: &'static str, key: &str, value: &str| {
        Name::parse(field, value).map_err(|e| invalid(field, key, e.to_string()))
    };
    let (Some(service), Some(component)) = (label(LABEL_SERVICE), label(LABEL_COMPONENT)) else {
        return Ok(Err((fingerprint, Skip::NoTarget)));
    };
    let service = name("service", LABEL_SERVICE, service)?;
    let component = name("component", LABEL_COMPONENT, component)?;
    let region = label(LABEL_REGION).unwrap_or(region);
    if !regions.contains(region) {
        let allowed: Vec<&str> = regions.iter().map(String::as_str).collect();
        return Err(invalid(
            "region",
            LABEL_REGION,
            format!(
                "unknown region {:?}: the topology's regions are {}",
                truncate(region, 64),
                allowed.join(", ")
            ),
        ));
    }
    let region = name("region", LABEL_REGION, region)?;
    let state = match label(LABEL_STATE) {
        Some(state) => Some(
            state
                .parse::<State>()
                .map_err(|e| invalid("state", LABEL_STATE, e.to_string()))?,
        ),
        None => settings.severity.state(label("severity")),
    };
    let state = match (alert.status, state) {
        (_, Some(state)) => state,
        (Status::Resolved, None) => State::Operational,
        (Status::Firing, None) => return Ok(Err((fingerprint, Skip::NoState))),
    };
    let incident = match label(LABEL_INCIDENT) {
        None => settings.incidents,
        Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Err(invalid(
                "incident",
                LABEL_INCIDENT,
                format!(
                    "{:?} is neither \"true\" nor \"false\"",
                    truncate(other, 16)
                ),
            ))
        }
    };
    let name = alert_name(
        label("alertname"),
        alert.annotations.get("summary").map(String::as_str),
        &fingerprint,
    );
    Ok(Ok(Alert {
        fingerprint,
        status: alert.status,
        target: Target {
            service,
            component,
            region,
        },
        state,
        name,
        starts_at_ms: alert.starts_at.as_deref().and_then(parse_time_ms),
        incident,
    }))
}

/// The alert's fingerprint; without one (not from Alertmanager), a hash of its labels, which
/// is what Alertmanager's fingerprint is too.
fn fingerprint(given: Option<&str>, labels: &BTreeMap<String, String>) -> String {
    let hash = |parts: &mut dyn Iterator<Item = &str>| {
        let mut hash = Fnv64::new();
        for part in parts {
            hash.write(part.as_bytes());
            hash.write(&[0xff]);
        }
        format!("{:016x}", hash.finish())
    };
    match given.filter(|f| !f.is_empty()) {
        Some(f) if f.len() <= FINGERPRINT_BYTES_MAX => f.to_owned(),
        Some(f) => hash(&mut std::iter::once(f)),
        None => hash(&mut labels.iter().flat_map(|(k, v)| [k.as_str(), v.as_str()])),
    }
}

/// `alertname: summary` (either alone when the other is missing), bounded; the fingerprint
/// when both are missing.
fn alert_name(alertname: Option<&str>, summary: Option<&str>, fingerprint: &str) -> String {
    let alertname = alertname.map(str::trim).filter(|s| !s.is_empty());
    let summary = summary.map(str::trim).filter(|s| !s.is_empty());
    let text = match (alertname, summary) {
        (Some(a), Some(s)) => format!("{a}: {s}"),
        (Some(one), None) | (None, Some(one)) => one.to_owned(),
        (None, None) => format!("alert {fingerprint}"),
    };
    // One line: the message is a list of these.
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    truncate(&text, ALERT_NAME_BYTES_MAX).to_owned()
}

/// An RFC 3339 time in milliseconds since the Unix epoch (negative before 1970: a firing
/// alert's `endsAt` is year 1).
fn parse_time_ms(text: &str) -> Option<i64> {
    let time =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(time.unix_timestamp_nanos() / 1_000_000).ok()
}

/// `text` cut to at most `max` bytes, on a character boundary.
pub fn truncate(text: &str, max: usize) -> &str {
    &text[..text.floor_char_boundary(max)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions() -> BTreeSet<String> {
        ["eu-west", "us-east"].map(str::to_owned).into()
    }

    fn read_json(value: serde_json::Value) -> Result<Delivery, ApiError> {
        let body = serde_json::to_vec(&value).expect("json");
        read(
            &body,
            &AlertmanagerSettings::default(),
            "eu-west",
            &regions(),
        )
    }

    #[test]
    fn a_version_4_payload_is_read_with_unknown_fields_ignored() {
        let delivery = read_json(serde_json::json!({
            "version": "4", "groupKey": "{}:{alertname=\"DbDown\"}", "truncatedAlerts": 0,
            "status": "firing", "receiver": "statusmesh", "groupLabels": {}, "commonLabels": {},
            "commonAnnotations": {}, "externalURL": "http://am", "somethingNew": [1],
            "alerts": [{
                "status": "firing",
                "labels": {"alertname": "DbDown", "severity": "critical",
                           "statusmesh_service": "api", "statusmesh_component": "db"},
                "annotations": {"summary": "primary\ndown"},
                "startsAt": "2024-05-01T10:00:00.123Z", "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prom", "fingerprint": "abc123", "extra": true
            }, {
                "status": "firing", "labels": {"alertname": "NoLabels"}, "fingerprint": "f2"
            }, {
                "status": "firing", "fingerprint": "f3",
                "labels": {"severity": "info", "statusmesh_service": "api",
                           "statusmesh_component": "db", "statusmesh_region": "us-east"}
            }]
        }))
        .expect("valid");
        assert!(delivery.complete);
        assert_eq!(delivery.firing, 3);
        assert_eq!(delivery.alerts.len(), 1);
        let alert = &delivery.alerts[0];
        assert_eq!(alert.fingerprint, "abc123");
        assert_eq!(alert.state, State::MajorOutage);
        assert_eq!(alert.target.region.as_str(), "eu-west");
        assert_eq!(alert.name, "DbDown: primary down");
        assert_eq!(alert.starts_at_ms, Some(1_714_557_600_123));
        assert_eq!(
            delivery.skipped,
            vec![
                ("f2".to_owned(), Skip::NoTarget),
                ("f3".to_owned(), Skip::NoState)
            ]
        );
    }

    #[test]
    fn a_present_but_invalid_target_label_refuses_the_delivery_naming_the_field() {
        let alert = |labels: serde_json::Value| {
            read_json(serde_json::json!({
                "alerts": [{"status": "firing", "labels": labels}]
            }))
            .expect_err("invalid")
            .body()
        };
        let region = alert(serde_json::json!({
            "statusmesh_service": "api", "statusmesh_component": "db",
            "statusmesh_region": "mars", "statusmesh_state": "major_outage"
        }));
        assert_eq!(region["field"], "region");
        assert!(region["detail"]
            .as_str()
            .is_some_and(|d| d.contains("eu-west")));
        let service = alert(serde_json::json!({
            "statusmesh_service": "API", "statusmesh_component": "db"
        }));
        assert_eq!(service["field"], "service");
        let state = alert(serde_json::json!({
            "statusmesh_service": "api", "statusmesh_component": "db",
            "statusmesh_state": "down"
        }));
        assert_eq!(state["field"], "state");
    }

    #[test]
    fn a_malformed_payload_is_a_400_naming_the_key_path() {
        let body = |value: serde_json::Value| {
            read_json(value).expect_err("malformed").body()["field"].clone()
        };
        assert_eq!(
            body(serde_json::json!({"alerts": [{"status": "burning"}]})),
            "alerts[0].status"
        );
        assert_eq!(
            body(serde_json::json!({"alerts": [{"status": "firing", "labels": {"a": 1}}]})),
            "alerts[0].labels.a"
        );
        assert_eq!(body(serde_json::json!({"version": "4"})), "alerts");
        assert_eq!(
            body(serde_json::json!({"version": "5", "alerts": []})),
            "version"
        );
    }

    #[test]
    fn a_missing_fingerprint_is_the_hash_of_the_labels() {
        let labels: BTreeMap<String, String> =
            [("a".to_owned(), "b".to_owned())].into_iter().collect();
        assert_eq!(fingerprint(None, &labels), fingerprint(Some(""), &labels));
        assert_ne!(
            fingerprint(None, &labels),
            fingerprint(None, &BTreeMap::new())
        );
        assert_eq!(fingerprint(Some(&"x".repeat(100)), &labels).len(), 16);
        assert_eq!(
            parse_time_ms("0001-01-01T00:00:00Z"),
            Some(-62_135_596_800_000)
        );
        assert_eq!(parse_time_ms("yesterday"), None);
    }
}
