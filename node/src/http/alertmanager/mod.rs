//! `POST /v1/integrations/alertmanager`: Alertmanager's webhook (payload version 4) in,
//! observations (and, when asked, incidents) out.
//!
//! 1. The bearer token is checked as for every write; a delivery needs a token that may
//!    write the status of every target it names (`services`, `regions` of its scope), and,
//!    when it opens or resolves incidents, an operator token (`operator = true`).
//! 2. The body ([`BODY_BYTES_MAX`], at most [`payload::ALERTS_PER_DELIVERY_MAX`] alerts) is
//!    read into alerts with a target and a state ([`payload`]).
//! 3. Under one lock, the node's firing set ([`firing`]) takes the delivery; every target it
//!    touches gets the observation its firing alerts make (the worst state, a message that
//!    names them, reporter `alertmanager.<receiver>`), written like a `PUT` status; an
//!    incident is opened or resolved where one is asked for.
//! 4. Then the set is saved ([`store`]) and the delivery answered `200` with what was done:
//!    `{"changed", "cursor", "alerts": {"firing", "resolved"}, "skipped": {"count",
//!    "reasons": {reason: n}, "alerts": [{"fingerprint", "reason"}]}, "targets":
//!    [{"service", "component", "region", "state", "firing", "changed", "incident"}]}`.
//!    A failure before that answers `5xx` with the set as it was, so Alertmanager's retry
//!    does it all again; since the same delivery makes the same observations, which the
//!    core does not record twice (`changed: false`, a heartbeat only), a retry changes
//!    nothing that the first attempt already changed.
//!
//! HA pairs: the members of an Alertmanager cluster share one configuration, so they send to
//! the same node and deduplicate between themselves; a notification that both send anyway
//! is applied twice, to the same effect. A pair configured to send to two different nodes
//! gives each node its own firing set: each writes what it heard, and the cell of one region
//! (give `statusmesh_region`, or both nodes would write their own regions) takes the latest.
//! A node that missed a resolution catches up when the group's next notification no longer
//! lists the alert, or at the latest when the firing TTL runs out.

use std::path::PathBuf;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;
use statusmesh_crdt::model::TTL_MS_MAX;
use statusmesh_crdt::{Incident, IncidentChange, IncidentStatus, Name, Observation, StatusWrite};
use statusmesh_gossip::GossipError;
use tokio::sync::Mutex;

use super::error::ApiError;
use super::writes::{authorize, forbidden, read_body_bounded};
use super::HttpState;
use crate::driver::{now_ms, NodeHandle, RecordOp};
use crate::settings::{AlertmanagerSettings, Token};
use crate::storage::StorageError;

pub mod firing;
pub mod payload;
pub mod store;

use firing::{FiringSet, IncidentStep};
use payload::{Delivery, Target};

/// Largest webhook body accepted, in bytes: a group of
/// [`payload::ALERTS_PER_DELIVERY_MAX`] alerts with their annotations.
pub const BODY_BYTES_MAX: usize = 1024 * 1024;
/// Most skipped alerts listed one by one in a reply (all are counted).
const SKIPPED_LISTED_MAX: usize = 100;

/// The receiver of one node: its settings and its firing set.
#[derive(Debug)]
pub struct Receiver {
    settings: AlertmanagerSettings,
    path: PathBuf,
    set: Mutex<FiringSet>,
}

impl Receiver {
    /// The receiver of the node with data directory `data_dir`, with the firing set saved
    /// there. Blocking (it reads the file).
    pub fn open(
        data_dir: &std::path::Path,
        settings: AlertmanagerSettings,
    ) -> Result<Self, StorageError> {
        let path = store::path(data_dir);
        let set = store::load(&path)?;
        Ok(Self {
            settings,
            path,
            set: Mutex::new(set),
        })
    }
}

/// The routes of this module, to merge into the node's router.
pub fn routes() -> Router<HttpState> {
    Router::new().route("/v1/integrations/alertmanager", post(post_alertmanager))
}

async fn post_alertmanager(State(state): State<HttpState>, request: Request) -> Response {
    let node_id = state.node.info.id.clone();
    let (result, response) = match deliver(&state, request).await {
        Ok((changed, body)) => (
            if changed { "applied" } else { "unchanged" },
            (StatusCode::OK, Json(body)).into_response(),
        ),
        Err(error) => {
            let result = if error.status().is_server_error() {
                "failed"
            } else {
                "refused"
            };
            (result, error.into_response())
        }
    };
    metrics::counter!("statusmesh_alertmanager_deliveries_total", "node" => node_id, "result" => result)
        .increment(1);
    response
}

/// One delivery, start to end; the reply's body and whether any observation changed.
async fn deliver(
    state: &HttpState,
    request: Request,
) -> Result<(bool, serde_json::Value), ApiError> {
    let node = &state.node;
    let receiver = &state.alertmanager;
    let writer = authorize(node, request.headers())?;
    state.limits.admit_write(&writer.name)?;
    let body = read_body_bounded(node, request, BODY_BYTES_MAX).await?;
    let delivery = payload::read(
        &body,
        &receiver.settings,
        &node.info.region,
        &node.info.regions,
    )?;
    for target in delivery.targets() {
        if let Some(reason) = writer
            .scope
            .refuse_status(target.service.as_str(), target.region.as_str())
        {
            return Err(forbidden(reason));
        }
    }
    count_alerts(&node.info.id, &delivery);
    // Run to the end even when the client goes away: a save cut short would leave the
    // file behind what was written, and a second save could race it.
    tokio::spawn(apply_delivery(state.clone(), writer, delivery))
        .await
        .map_err(|e| internal(format!("the delivery's task failed: {e}")))?
}

/// Applies a delivery that was read and checked: under the receiver's lock, the firing set
/// takes it, the observations and incidents are written, then the set is saved.
async fn apply_delivery(
    state: HttpState,
    writer: Token,
    delivery: Delivery,
) -> Result<(bool, serde_json::Value), ApiError> {
    let (node, receiver) = (&state.node, &state.alertmanager);
    // One delivery at a time: each reads the set the last one left.
    let mut held = receiver.set.lock().await;
    let mut set = held.clone();
    let now = now_ms();
    let keep_ms = receiver.settings.firing_ttl.as_millis() as u64;
    let outcome = set.apply(&delivery, now, keep_ms, |t| {
        writer
            .scope
            .refuse_status(t.service.as_str(), t.region.as_str())
            .is_none()
    });
    let steps: Vec<(Target, IncidentStep)> = outcome
        .touched
        .iter()
        .filter_map(|t| set.incident_step(t, now).map(|step| (t.clone(), step)))
        .collect();
    for (target, _) in &steps {
        if let Some(reason) = writer.scope.refuse_operator(target.service.as_str()) {
            return Err(forbidden(reason));
        }
    }

    let writes = outcome
        .touched
        .iter()
        .map(|target| observation_write(&set, target, &delivery, receiver, now))
        .collect::<Result<Vec<_>, _>>()?;
    // Together, so that the driver commits them as one group.
    let replies = futures_util::future::join_all(
        writes
            .into_iter()
            .map(|(target, write)| async move { (target, node.write(write).await) }),
    )
    .await;
    let mut changed = false;
    let mut cursor = None;
    let mut targets = Vec::with_capacity(replies.len());
    for (target, reply) in replies {
        let reply = reply?.map_err(write_error)?;
        changed |= reply.changed;
        cursor = Some(reply.cursor);
        let observed = set.observed(&target, &delivery.receiver);
        targets.push((target, observed, reply.changed));
    }
    for (target, step) in steps {
        let incident = apply_incident(node, &set, &target, step, &writer, now).await?;
        set.set_incident(&target, incident);
    }
    set.compact();
    if set != *held {
        let (path, saved) = (receiver.path.clone(), set.clone());
        tokio::task::spawn_blocking(move || store::save(&path, &saved))
            .await
            .map_err(|e| internal(e.to_string()))?
            .map_err(|e| {
                tracing::error!(error = %e, "alertmanager firing set not saved");
                internal(e.to_string())
            })?;
    }
    metrics::gauge!("statusmesh_alertmanager_firing_alerts", "node" => node.info.id.clone())
        .set(set.firing_count() as f64);
    let targets: Vec<TargetReply> = targets
        .into_iter()
        .map(|(target, observed, changed)| {
            let incident = set.incident(&target);
            (target, observed, changed, incident)
        })
        .collect();
    *held = set;
    drop(held);

    let mut skipped = delivery.skipped.clone();
    skipped.extend(outcome.skipped.iter().cloned());
    count_skipped(&node.info.id, &skipped);
    Ok((
        changed,
        reply_body(changed, cursor.as_deref(), &delivery, &skipped, &targets),
    ))
}

/// One target of a reply: its observation, whether it changed, its open incident.
type TargetReply = (Target, firing::Observed, bool, Option<Name>);

/// The status write of `target`'s observation now.
fn observation_write(
    set: &FiringSet,
    target: &Target,
    delivery: &Delivery,
    receiver: &Receiver,
    now: u64,
) -> Result<(Target, StatusWrite), ApiError> {
    let observed = set.observed(target, &delivery.receiver);
    // A firing observation holds as long as Alertmanager keeps repeating it; nothing repeats
    // an operational one, so it holds as long as the mesh allows.
    let ttl_ms = if observed.firing > 0 {
        receiver.settings.firing_ttl.as_millis() as u64
    } else {
        TTL_MS_MAX
    };
    let observation = Observation {
        state: observed.state,
        message: observed.message,
        reporter: observed.reporter,
        observed_at_ms: now,
        ttl_ms,
    };
    let write = StatusWrite {
        service: target.service.clone(),
        component: target.component.clone(),
        region: target.region.clone(),
        observation,
    };
    write.observation.validate()?;
    Ok((target.clone(), write))
}

/// Opens or resolves `target`'s incident; returns the incident open afterwards. A step
/// already taken (a retried delivery) is not taken again: the incident's state is read
/// first.
async fn apply_incident(
    node: &NodeHandle,
    set: &FiringSet,
    target: &Target,
    step: IncidentStep,
    writer: &Token,
    now: u64,
) -> Result<Option<Name>, ApiError> {
    let author = Name::parse("author", &writer.name)
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "api".to_owned());
    let (id, op) = match step {
        IncidentStep::Open { id, title, impact } => {
            if incident_status(node, target, &id).await?.is_some() {
                return Ok(Some(id));
            }
            let incident = Incident {
                title,
                impact,
                status: IncidentStatus::Investigating,
                components: vec![target.component.clone()],
                opened_at_ms: now,
                resolved_at_ms: None,
                author,
            };
            incident.validate()?;
            let text = set.observed(target, "").message;
            let op = RecordOp::OpenIncident {
                id: id.clone(),
                incident,
                text,
            };
            (Some(id), op)
        }
        IncidentStep::Resolve { id } => {
            let status = incident_status(node, target, &id).await?;
            if status.is_none_or(|s| s == IncidentStatus::Resolved) {
                return Ok(None);
            }
            let change = IncidentChange {
                status: Some(IncidentStatus::Resolved),
                impact: None,
                title: None,
                components: None,
                text: Some("All alerts resolved.".to_owned()),
                author,
            };
            (None, RecordOp::ChangeIncident { id, change })
        }
    };
    node.record(target.service.clone(), op)
        .await?
        .map_err(write_error)?;
    Ok(id)
}

/// The status of incident `id` of `target`'s service, when the node shows it.
async fn incident_status(
    node: &NodeHandle,
    target: &Target,
    id: &Name,
) -> Result<Option<IncidentStatus>, ApiError> {
    let (view, _) = node.status(Some(target.service.clone())).await?;
    let status = view["services"][0]["incidents"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["id"] == id.as_str())
        .and_then(|i| i["status"].as_str().map(str::parse::<IncidentStatus>))
        .and_then(Result::ok);
    Ok(status)
}

/// A write the core refused: the crdt's reasons as for any write, anything else a 500.
fn write_error(e: GossipError) -> ApiError {
    match e {
        GossipError::Crdt(e) => e.into(),
        other => internal(other.to_string()),
    }
}

fn internal(detail: String) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", None, detail)
}

fn count_alerts(node: &str, delivery: &Delivery) {
    for (status, count) in [("firing", delivery.firing), ("resolved", delivery.resolved)] {
        metrics::counter!("statusmesh_alertmanager_alerts_total", "node" => node.to_owned(), "status" => status)
            .increment(count as u64);
    }
}

fn count_skipped(node: &str, skipped: &[(String, payload::Skip)]) {
    for (_, reason) in skipped {
        metrics::counter!(
            "statusmesh_alertmanager_alerts_skipped_total",
            "node" => node.to_owned(),
            "reason" => reason.as_str()
        )
        .increment(1);
    }
}

/// The reply: what was written, per target, and what was skipped and why.
fn reply_body(
    changed: bool,
    cursor: Option<&str>,
    delivery: &Delivery,
    skipped: &[(String, payload::Skip)],
    targets: &[TargetReply],
) -> serde_json::Value {
    let mut counts = serde_json::Map::new();
    for (_, reason) in skipped {
        let count = counts
            .entry(reason.as_str())
            .or_insert(serde_json::Value::from(0u64));
        *count = serde_json::Value::from(count.as_u64().unwrap_or(0) + 1);
    }
    let listed: Vec<serde_json::Value> = skipped
        .iter()
        .take(SKIPPED_LISTED_MAX)
        .map(|(fingerprint, reason)| json!({ "fingerprint": fingerprint, "reason": reason.as_str() }))
        .collect();
    let targets: Vec<serde_json::Value> = targets
        .iter()
        .map(|(target, observed, changed, incident)| {
            json!({
                "service": target.service,
                "component": target.component,
                "region": target.region,
                "state": observed.state,
                "firing": observed.firing,
                "changed": changed,
                "incident": incident,
            })
        })
        .collect();
    json!({
        "changed": changed,
        "cursor": cursor,
        "alerts": { "firing": delivery.firing, "resolved": delivery.resolved },
        "skipped": { "count": skipped.len(), "reasons": counts, "alerts": listed },
        "targets": targets,
    })
}
