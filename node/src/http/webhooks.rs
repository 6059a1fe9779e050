//! HTTP for outgoing webhook subscriptions.
//!
//! ```text
//! PUT    /v1/webhooks/{id}              {"url", "services", "secret"?, "events"?, "min_state"?,
//!                                        "format"?, "rotation_grace_s"?}     operator scope
//! GET    /v1/webhooks                   every subscription the token may see
//! GET    /v1/webhooks/{id}              one, with its progress and sender per service
//! DELETE /v1/webhooks/{id}
//! GET    /v1/webhooks/{id}/deliveries   this node's recent attempts, and who sends
//! ```
//!
//! A subscription is a record of each service it follows (see `statusmesh_crdt::webhooks`);
//! a PUT writes it to each of them (and removes it from services it no longer names). The
//! first write to a service also records where its deliveries start: the service's heads
//! now, so that every transition after the PUT is sent. A secret generated for a new
//! subscription is returned once, by that PUT; no GET returns secrets. Every route needs a
//! token with operator scope for each of the subscription's services (a URL may carry
//! credentials); a PUT re-enables a subscription that a 410 disabled.

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use statusmesh_crdt::webhooks::{WebhookProgress, WebhookSpec};
use statusmesh_crdt::{Name, Put};

use super::error::{parse_json, ApiError, JsonQuery};
use super::records::{author, operator_service};
use super::writes::{authorize, forbidden, read_body, reply_after_acks, with_fields, AckQuery};
use super::HttpState;
use crate::driver::{now_ms, HookEntry, RecordOp, WebhookPlan, WriteReply};
use crate::notify::sign::generate_secret;

/// The routes of this module, to merge into the node's router.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/v1/webhooks", get(list_webhooks))
        .route(
            "/v1/webhooks/{id}",
            get(get_webhook).put(put_webhook).delete(delete_webhook),
        )
        .route("/v1/webhooks/{id}/deliveries", get(get_deliveries))
}

fn not_found(id: &Name) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        Some("id"),
        format!("no webhook subscription {:?}", id.as_str()),
    )
}

/// The newest stored form of subscription `id` (each service's document holds a copy).
fn newest<'a>(plan: &'a WebhookPlan, id: &Name) -> Option<&'a HookEntry> {
    plan.entries_of(id.as_str())
        .into_iter()
        .max_by_key(|e| (e.webhook.updated_at_ms, e.service.clone()))
}

/// Whether the token is an operator of every service the subscription follows.
fn may_see(token: &crate::settings::Token, entry: &HookEntry) -> Result<(), ApiError> {
    for service in &entry.webhook.services {
        if let Some(reason) = token.scope.refuse_operator(service.as_str()) {
            return Err(forbidden(reason));
        }
    }
    Ok(())
}

/// A subscription as listed: everything but the secrets' values, with each service's
/// progress and sender.
fn listed(plan: &WebhookPlan, id: &Name) -> Option<Value> {
    let entry = newest(plan, id)?;
    let webhook = &entry.webhook;
    let mut services = serde_json::Map::new();
    for e in plan.entries_of(id.as_str()) {
        let progress = e.progress.as_ref();
        services.insert(
            e.service.to_string(),
            json!({
                "sender": plan.sender_of(id.as_str(), e.service.as_str()),
                "delivered": progress.map_or(0, |p| p.delivered),
                "coalesced": progress.map_or(0, |p| p.coalesced),
                "progress_by_node": progress.map(|p| p.by_node.clone()),
                "progress_at_ms": progress.map(|p| p.at_ms),
            }),
        );
    }
    let secrets: Vec<Value> = webhook
        .secrets
        .iter()
        .map(|s| json!({ "expires_at_ms": s.expires_at_ms }))
        .collect();
    Some(json!({
        "id": id,
        "url": webhook.url,
        "services": webhook.services,
        "events": webhook.events,
        "min_state": webhook.min_state,
        "format": webhook.format,
        "disabled": webhook.disabled,
        "secrets": secrets,
        "author": webhook.author,
        "updated_at_ms": webhook.updated_at_ms,
        "progress": services,
    }))
}

async fn list_webhooks(
    State(state): State<HttpState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = authorize(&state.node, &headers)?;
    let plan = state.node.webhook_plan().await?;
    let mut ids: Vec<&Name> = plan.hooks.iter().map(|e| &e.id).collect();
    ids.sort();
    ids.dedup();
    let list: Vec<Value> = ids
        .into_iter()
        .filter(|id| newest(&plan, id).is_some_and(|e| may_see(&token, e).is_ok()))
        .filter_map(|id| listed(&plan, id))
        .collect();
    Ok(Json(json!({ "webhooks": list })).into_response())
}

/// The plan and the subscription `id`, once the token may see it.
async fn visible(
    state: &HttpState,
    headers: &HeaderMap,
    id: &str,
) -> Result<(WebhookPlan, Name), ApiError> {
    let token = authorize(&state.node, headers)?;
    let id = Name::parse("id", id)?;
    let plan = state.node.webhook_plan().await?;
    let entry = newest(&plan, &id).ok_or_else(|| not_found(&id))?;
    may_see(&token, entry)?;
    Ok((plan, id))
}

async fn get_webhook(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (plan, id) = visible(&state, &headers, &id).await?;
    let body = listed(&plan, &id).ok_or_else(|| not_found(&id))?;
    Ok(Json(body).into_response())
}

async fn get_deliveries(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (plan, id) = visible(&state, &headers, &id).await?;
    let senders: serde_json::Map<String, Value> = plan
        .entries_of(id.as_str())
        .into_iter()
        .map(|e| {
            let sender = plan.sender_of(id.as_str(), e.service.as_str());
            (e.service.to_string(), json!(sender))
        })
        .collect();
    Ok(Json(json!({
        "id": id,
        "node": plan.me,
        "senders": senders,
        "attempts": state.deliveries.of(&id),
    }))
    .into_response())
}

async fn put_webhook(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    JsonQuery(ack): JsonQuery<AckQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let writer = authorize(&state.node, request.headers())?;
    let id = Name::parse("id", &id)?;
    let body = read_body(&state.node, request).await?;
    let spec: WebhookSpec = parse_json(&body)?;
    let brought_secret = spec.secret.is_some();
    let plan = state.node.webhook_plan().await?;
    let previous = newest(&plan, &id);
    if let Some(previous) = previous {
        may_see(&writer, previous)?;
    }
    let generated = generate_secret();
    let webhook = spec.into_webhook(
        previous.map(|p| &p.webhook),
        &generated,
        &author(&writer),
        now_ms(),
    )?;
    for service in &webhook.services {
        operator_service(&state.limits, &writer, service.as_str())?;
    }
    let created = previous.is_none();
    let mut last: Option<WriteReply> = None;
    // Services it no longer follows forget it first.
    for entry in plan.entries_of(id.as_str()) {
        if !webhook.services.contains(&entry.service) {
            last = Some(write(&state, entry.service.clone(), forget(&id)).await?);
        }
    }
    for service in &webhook.services {
        let mut puts = vec![Put::Webhook {
            id: id.clone(),
            value: Some(webhook.clone()),
        }];
        let started = plan
            .entries_of(id.as_str())
            .into_iter()
            .any(|e| &e.service == service && e.progress.is_some());
        if !started {
            puts.push(Put::WebhookProgress {
                id: id.clone(),
                value: Some(WebhookProgress {
                    cursor: plan.cursor.only(service).encode(),
                    delivered: 0,
                    coalesced: 0,
                    by_node: plan.me.clone(),
                    at_ms: now_ms(),
                    maintenance_told_ms: now_ms(),
                }),
            });
        }
        last = Some(write(&state, service.clone(), RecordOp::Puts(puts)).await?);
    }
    let mut extra = json!({ "id": id });
    if created && !brought_secret {
        // Returned once: no GET shows it.
        extra["secret"] = json!(generated);
    }
    finish(&state, last, &ack, created, extra).await
}

async fn delete_webhook(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    JsonQuery(ack): JsonQuery<AckQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let writer = authorize(&state.node, &headers)?;
    let id = Name::parse("id", &id)?;
    let plan = state.node.webhook_plan().await?;
    let entry = newest(&plan, &id).ok_or_else(|| not_found(&id))?;
    may_see(&writer, entry)?;
    let mut last = None;
    for entry in plan.entries_of(id.as_str()) {
        operator_service(&state.limits, &writer, entry.service.as_str())?;
        last = Some(write(&state, entry.service.clone(), forget(&id)).await?);
    }
    finish(&state, last, &ack, false, json!({ "id": id })).await
}

/// Removes the subscription and its progress from one document.
fn forget(id: &Name) -> RecordOp {
    RecordOp::Puts(vec![
        Put::Webhook {
            id: id.clone(),
            value: None,
        },
        Put::WebhookProgress {
            id: id.clone(),
            value: None,
        },
    ])
}

async fn write(state: &HttpState, service: Name, op: RecordOp) -> Result<WriteReply, ApiError> {
    match state.node.record(service, op).await? {
        Ok(reply) => Ok(reply),
        Err(e) => Err(e.into()),
    }
}

/// The last write's answer (after `?ack=N`), with `extra` merged into its JSON.
async fn finish(
    state: &HttpState,
    last: Option<WriteReply>,
    ack: &AckQuery,
    created: bool,
    extra: Value,
) -> Result<Response, ApiError> {
    let Some(reply) = last else {
        return Ok(Json(extra).into_response());
    };
    let response = reply_after_acks(&state.node, reply, ack, created).await?;
    Ok(with_fields(response, &extra).await)
}
