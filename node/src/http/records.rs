//! HTTP for incidents, maintenance windows, operator overrides and component history.
//!
//! ```text
//! POST   /v1/incidents                      {"service", "title", "impact", "components", "message", "id"?, "status"?}
//! POST   /v1/incidents/{id}/updates         {"service", "message", "status"?, "impact"?}
//! PATCH  /v1/incidents/{id}                 {"service", "status"?, "impact"?, "title"?, "components"?, "message"?}
//! PUT    /v1/maintenance/{service}/{id}     {"title", "components", "starts_at_ms", "ends_at_ms"}
//! DELETE /v1/maintenance/{service}/{id}
//! PUT    /v1/overrides/{service}/{component} {"state", "reason", "until_ms"?}
//! DELETE /v1/overrides/{service}/{component}
//! GET    /v1/status/{service}/{component}/history?days=90
//! ```
//!
//! Incidents live in their service's document, so their requests name the service in the
//! body. Writes need a bearer token; the token's name is recorded as the author. Every write
//! takes `?ack=N` like a status write.

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use statusmesh_crdt::archive::ArchivedWrite;
use statusmesh_crdt::{
    CrdtError, Impact, Incident, IncidentChange, IncidentStatus, Maintenance, Name, Override, Put,
    State as ComponentState,
};
use statusmesh_gossip::GossipError;

use super::error::{parse_json, ApiError, JsonQuery};
use super::limits::Limits;
use super::writes::{authorize, forbidden, read_body, reply_after_acks, with_fields, AckQuery};
use super::HttpState;
use crate::driver::{now_ms, NodeHandle, RecordOp};
use crate::settings::Token;

/// The routes of this module, to merge into the node's router.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/v1/incidents", post(post_incident))
        .route("/v1/incidents/{id}/updates", post(post_incident_update))
        .route("/v1/incidents/{id}", patch(patch_incident))
        .route(
            "/v1/maintenance/{service}/{id}",
            put(put_maintenance).delete(delete_maintenance),
        )
        .route(
            "/v1/overrides/{service}/{component}",
            put(put_override).delete(delete_override),
        )
        .route("/v1/status/{service}/{component}/history", get(get_history))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OpenIncidentBody {
    service: String,
    id: Option<String>,
    title: String,
    impact: String,
    status: Option<String>,
    #[serde(default)]
    components: Vec<String>,
    message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IncidentUpdateBody {
    service: String,
    message: String,
    status: Option<String>,
    impact: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PatchIncidentBody {
    service: String,
    status: Option<String>,
    impact: Option<String>,
    title: Option<String>,
    components: Option<Vec<String>>,
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MaintenanceBody {
    title: String,
    components: Vec<String>,
    starts_at_ms: u64,
    ends_at_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OverrideBody {
    state: String,
    #[serde(default)]
    reason: String,
    until_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HistoryQuery {
    days: Option<u64>,
}

impl HistoryQuery {
    /// The days of history asked for (default 90, at most a year).
    pub(crate) fn days(&self) -> Result<u64, ApiError> {
        let days = self.days.unwrap_or(90);
        if !(1..=365).contains(&days) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid",
                Some("days"),
                format!("days {days} must be between 1 and 365"),
            ));
        }
        Ok(days)
    }
}

/// Reads and parses a JSON body; a bad one is a 400 that names the field.
async fn body<T: DeserializeOwned>(node: &NodeHandle, request: Request) -> Result<T, ApiError> {
    parse_json(&read_body(node, request).await?)
}

fn names(field: &'static str, values: &[String]) -> Result<Vec<Name>, ApiError> {
    values
        .iter()
        .map(|v| Name::parse(field, v).map_err(ApiError::from))
        .collect()
}

fn parse_opt<T: std::str::FromStr<Err = CrdtError>>(
    value: Option<&str>,
) -> Result<Option<T>, ApiError> {
    value.map(str::parse).transpose().map_err(ApiError::from)
}

/// The author recorded for a write: the token's name when it is a valid name.
pub(crate) fn author(token: &Token) -> String {
    Name::parse("author", &token.name)
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "api".to_owned())
}

/// The service, once the token may write operator records to it (incidents, maintenance,
/// overrides, checks, flags) and is within its write rate.
pub(crate) fn operator_service(
    limits: &Limits,
    token: &Token,
    service: &str,
) -> Result<Name, ApiError> {
    let name = Name::parse("service", service)?;
    limits.admit_write(&token.name)?;
    match token.scope.refuse_operator(service) {
        Some(reason) => Err(forbidden(reason)),
        None => Ok(name),
    }
}

async fn apply(
    node: &NodeHandle,
    service: Name,
    op: RecordOp,
    ack: &AckQuery,
    created: bool,
    extra: serde_json::Value,
) -> Result<Response, ApiError> {
    match node.record(service, op).await? {
        Ok(reply) => {
            let response = reply_after_acks(node, reply, ack, created).await?;
            if extra.is_null() {
                return Ok(response);
            }
            Ok(with_fields(response, &extra).await)
        }
        Err(GossipError::Crdt(e)) => Err(match &e {
            CrdtError::InvalidField {
                field: "id",
                reason,
                ..
            } if reason.starts_with("no incident") => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                Some("id"),
                e.to_string(),
            ),
            CrdtError::InvalidField { field: "id", .. } => {
                ApiError::new(StatusCode::CONFLICT, "conflict", Some("id"), e.to_string())
            }
            _ => e.into(),
        }),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            None,
            e.to_string(),
        )),
    }
}

/// Applies a change to an existing record of `service` (not a creation) for `writer`.
async fn apply_change(
    state: &HttpState,
    writer: &Token,
    service: &str,
    op: RecordOp,
    ack: &AckQuery,
) -> Result<Response, ApiError> {
    let service = operator_service(&state.limits, writer, service)?;
    apply(
        &state.node,
        service,
        op,
        ack,
        false,
        serde_json::Value::Null,
    )
    .await
}

async fn post_incident(
    State(HttpState { node, limits, .. }): State<HttpState>,
    JsonQuery(ack): JsonQuery<AckQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let writer = authorize(&node, request.headers())?;
    let b: OpenIncidentBody = body(&node, request).await?;
    let service = operator_service(&limits, &writer, &b.service)?;
    let (id, op) = open_incident_op(b, &node.info.id, author(&writer), now_ms())?;
    apply(&node, service, op, &ack, true, json!({ "id": id })).await
}

/// `POST /v1/incidents`: the body validated into the incident's id and the record to write.
pub(crate) fn open_incident_op(
    b: OpenIncidentBody,
    node_id: &str,
    author: String,
    now: u64,
) -> Result<(Name, RecordOp), ApiError> {
    let id = match &b.id {
        Some(id) => Name::parse("id", id)?,
        // Unique without coordination: the node's id and the time, in base 36.
        None => Name::parse("id", &format!("{node_id}-{}", base36(now)))?,
    };
    let status =
        parse_opt::<IncidentStatus>(b.status.as_deref())?.unwrap_or(IncidentStatus::Investigating);
    let incident = Incident {
        title: b.title,
        impact: b.impact.parse::<Impact>()?,
        status,
        components: names("components", &b.components)?,
        opened_at_ms: now,
        resolved_at_ms: (status == IncidentStatus::Resolved).then_some(now),
        author,
    };
    incident.validate()?;
    let op = RecordOp::OpenIncident {
        id: id.clone(),
        incident,
        text: b.message,
    };
    Ok((id, op))
}

async fn post_incident_update(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    JsonQuery(ack): JsonQuery<AckQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let writer = authorize(&state.node, request.headers())?;
    let b: IncidentUpdateBody = body(&state.node, request).await?;
    let service = b.service.clone();
    let op = incident_update_op(b, &id, author(&writer))?;
    apply_change(&state, &writer, &service, op, &ack).await
}

/// `POST /v1/incidents/{id}/updates`: the body validated into the change to write.
pub(crate) fn incident_update_op(
    b: IncidentUpdateBody,
    id: &str,
    author: String,
) -> Result<RecordOp, ApiError> {
    let change = IncidentChange {
        status: parse_opt(b.status.as_deref())?,
        impact: parse_opt(b.impact.as_deref())?,
        title: None,
        components: None,
        text: Some(b.message),
        author,
    };
    Ok(RecordOp::ChangeIncident {
        id: Name::parse("id", id)?,
        change,
    })
}

async fn patch_incident(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    JsonQuery(ack): JsonQuery<AckQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let writer = authorize(&state.node, request.headers())?;
    let b: PatchIncidentBody = body(&state.node, request).await?;
    let service = b.service.clone();
    let op = patch_incident_op(b, &id, author(&writer))?;
    apply_change(&state, &writer, &service, op, &ack).await
}

/// `PATCH /v1/incidents/{id}`: the body validated into the change to write.
pub(crate) fn patch_incident_op(
    b: PatchIncidentBody,
    id: &str,
    author: String,
) -> Result<RecordOp, ApiError> {
    let change = IncidentChange {
        status: parse_opt(b.status.as_deref())?,
        impact: parse_opt(b.impact.as_deref())?,
        title: b.title,
        components: b
            .components
            .as_deref()
            .map(|c| names("components", c))
            .transpose()?,
        text: b.message,
        author,
    };
    Ok(RecordOp::ChangeIncident {
        id: Name::parse("id", id)?,
        change,
    })
}

async fn put_maintenance(
    State(state): State<HttpState>,
    Path((service, id)): Path<(String, String)>,
    JsonQuery(ack): JsonQuery<AckQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let writer = authorize(&state.node, request.headers())?;
    let b: MaintenanceBody = body(&state.node, request).await?;
    let op = maintenance_op(b, &id, author(&writer))?;
    apply_change(&state, &writer, &service, op, &ack).await
}

/// `PUT /v1/maintenance/{service}/{id}`: the body validated into the window to write.
pub(crate) fn maintenance_op(
    b: MaintenanceBody,
    id: &str,
    author: String,
) -> Result<RecordOp, ApiError> {
    let window = Maintenance {
        title: b.title,
        components: names("components", &b.components)?,
        starts_at_ms: b.starts_at_ms,
        ends_at_ms: b.ends_at_ms,
        author,
    };
    window.validate()?;
    Ok(RecordOp::Put(Put::Maintenance {
        id: Name::parse("id", id)?,
        window: Some(window),
    }))
}

async fn delete_maintenance(
    State(state): State<HttpState>,
    Path((service, id)): Path<(String, String)>,
    JsonQuery(ack): JsonQuery<AckQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let writer = authorize(&state.node, request.headers())?;
    let op = RecordOp::Put(Put::Maintenance {
        id: Name::parse("id", &id)?,
        window: None,
    });
    apply_change(&state, &writer, &service, op, &ack).await
}

async fn put_override(
    State(state): State<HttpState>,
    Path((service, component)): Path<(String, String)>,
    JsonQuery(ack): JsonQuery<AckQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let writer = authorize(&state.node, request.headers())?;
    let b: OverrideBody = body(&state.node, request).await?;
    let op = override_op(b, &component, author(&writer), now_ms())?;
    apply_change(&state, &writer, &service, op, &ack).await
}

/// `PUT /v1/overrides/{service}/{component}`: the body validated into the override to write.
pub(crate) fn override_op(
    b: OverrideBody,
    component: &str,
    author: String,
    now: u64,
) -> Result<RecordOp, ApiError> {
    let value = Override {
        state: b.state.parse::<ComponentState>()?,
        reason: b.reason,
        author,
        at_ms: now,
        until_ms: b.until_ms,
    };
    value.validate()?;
    Ok(RecordOp::Put(Put::Override {
        component: Name::parse("component", component)?,
        value: Some(value),
    }))
}

async fn delete_override(
    State(state): State<HttpState>,
    Path((service, component)): Path<(String, String)>,
    JsonQuery(ack): JsonQuery<AckQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let writer = authorize(&state.node, request.headers())?;
    let op = RecordOp::Put(Put::Override {
        component: Name::parse("component", &component)?,
        value: None,
    });
    apply_change(&state, &writer, &service, op, &ack).await
}

async fn get_history(
    State(HttpState { node, .. }): State<HttpState>,
    Path((service, component)): Path<(String, String)>,
    JsonQuery(query): JsonQuery<HistoryQuery>,
) -> Result<Response, ApiError> {
    let service = Name::parse("service", &service)?;
    let component = Name::parse("component", &component)?;
    let days = query.days()?;
    // Read rarely, so straight from disk: the archive never sits in the driver's memory.
    let archived = read_archive(&node.info.data_dir, &service, &component).await;
    match node
        .history(service.clone(), component, days, archived)
        .await?
    {
        Some(history) => Ok(Json(history).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            Some("service"),
            format!("no status has been written for service {service:?}"),
        )),
    }
}

/// The archived writes of `component` of `service`, read from the data directory off the
/// async threads. A read that fails is logged and answered from the live epoch alone: a
/// history with a gap beats no history.
pub async fn read_archive(
    data_dir: &std::path::Path,
    service: &Name,
    component: &Name,
) -> Vec<ArchivedWrite> {
    let dir = data_dir.join("docs").join(service.as_str());
    let wanted = component.clone();
    let read =
        tokio::task::spawn_blocking(move || crate::storage::load_archive_component(&dir, &wanted))
            .await;
    match read {
        Ok(Ok(writes)) => writes,
        Ok(Err(e)) => {
            tracing::warn!(service = %service, error = %e, "archive not read; history from the live epoch only");
            Vec::new()
        }
        Err(e) => {
            tracing::warn!(service = %service, error = %e, "archive read failed");
            Vec::new()
        }
    }
}

/// `n` in base 36 (short, URL-safe record ids).
pub(crate) fn base36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}
