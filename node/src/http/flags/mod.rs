//! HTTP for feature flags: the records, and the state evaluations share.
//!
//! ```text
//! PUT    /v1/flags/{service}/{key}    a FlagSpec (see statusmesh_crdt::flags)   operator scope
//! GET    /v1/flags/{service}/{key}    the stored flag and where its rollout stands
//! DELETE /v1/flags/{service}/{key}                                              operator scope
//! GET    /v1/flags/{service}/{key}/history  every write of it (newest 200), oldest first
//! GET    /v1/flags                    every flag
//! ```
//!
//! A flag is a record of its service's document (`flag/<key>`): it replicates like every
//! record, its changes are `flag` events on `/v1/events`, and its history (each write, each
//! rollout step and rollback, with author and origin node) is the document's history, the
//! audit trail. Its OFREP key is `<service>/<key>` (see [`super::ofrep`]).
//!
//! - `cache`: the flag set evaluations read, at most 100 ms old.
//! - `controller`: records rollout steps, rollbacks and resumes.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::json;
use statusmesh_crdt::flags::{ofrep_key, position, Flag, FlagSet, FlagSpec, Lookup};
use statusmesh_crdt::{Name, Put};
use statusmesh_gossip::GossipError;

use super::error::{parse_json, ApiError, JsonQuery};
use super::records::{author, operator_service};
use super::writes::{authorize, read_body, reply_after_acks, AckQuery};
use super::HttpState;
use crate::driver::{now_ms, NodeHandle, RecordOp};

mod cache;
pub mod controller;

pub use cache::{FlagCache, FLAGS_MAX_AGE};

/// What the flag and OFREP routes share: the cached flag set and the evaluation limiter.
#[derive(Debug, Default)]
pub struct FlagState {
    pub cache: FlagCache,
    pub limiter: super::ofrep::EvalLimiter,
}

/// The routes of this module, to merge into the node's router.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/v1/flags", get(list_flags))
        .route(
            "/v1/flags/{service}/{key}",
            put(put_flag).get(get_flag).delete(delete_flag),
        )
        .route("/v1/flags/{service}/{key}/history", get(get_flag_history))
}

async fn put_flag(
    State(state): State<HttpState>,
    Path((service, key)): Path<(String, String)>,
    JsonQuery(ack): JsonQuery<AckQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let writer = authorize(&state.node, request.headers())?;
    let service = operator_service(&state.limits, &writer, &service)?;
    let key = Name::parse("key", &key)?;
    let body = read_body(&state.node, request).await?;
    let spec: FlagSpec = parse_json(&body)?;
    let flag = spec.into_flag(&author(&writer), now_ms())?;
    let op = RecordOp::Put(Put::Flag {
        key,
        value: Some(flag),
    });
    write(&state, service, op, &ack).await
}

async fn delete_flag(
    State(state): State<HttpState>,
    Path((service, key)): Path<(String, String)>,
    JsonQuery(ack): JsonQuery<AckQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let writer = authorize(&state.node, request.headers())?;
    let service = operator_service(&state.limits, &writer, &service)?;
    let key = Name::parse("key", &key)?;
    let op = RecordOp::Put(Put::Flag { key, value: None });
    write(&state, service, op, &ack).await
}

/// Applies a flag write and drops the cached flag set, so this node evaluates it at once.
async fn write(
    state: &HttpState,
    service: Name,
    op: RecordOp,
    ack: &AckQuery,
) -> Result<Response, ApiError> {
    let result = state.node.record(service, op).await?;
    state.flags.cache.invalidate();
    match result {
        Ok(reply) => reply_after_acks(&state.node, reply, ack, false).await,
        Err(GossipError::Crdt(e)) => Err(e.into()),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            None,
            e.to_string(),
        )),
    }
}

/// A flag as `GET` shows it: the record, its OFREP key, and where its rollout stands.
fn flag_json(set: &FlagSet, id: &str, flag: &Flag) -> serde_json::Value {
    let (service, key) = id.split_once('/').unwrap_or(("", id));
    let rollout = position(flag, &set.availability, set.at_ms).map(|p| {
        json!({"stage": p.stage, "percent": p.percent, "paused": p.paused, "since_ms": p.since_ms})
    });
    json!({
        "service": service,
        "key": key,
        "ofrep_key": id,
        "flag": flag,
        "rollout": rollout,
    })
}

async fn get_flag(
    State(HttpState { node, .. }): State<HttpState>,
    Path((service, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = ofrep_key(
        &Name::parse("service", &service)?,
        &Name::parse("key", &key)?,
    );
    let set = fresh(&node).await?;
    match set.lookup(&id) {
        Lookup::Found(id, flag) => Ok(Json(flag_json(&set, id, flag)).into_response()),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            Some("key"),
            format!("no flag {key:?} in service {service:?}"),
        )),
    }
}

async fn get_flag_history(
    State(HttpState { node, .. }): State<HttpState>,
    Path((service, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let service = Name::parse("service", &service)?;
    let key = Name::parse("key", &key)?;
    match node.flag_history(service.clone(), key.clone()).await? {
        Some(history) if !history.is_empty() => Ok(Json(json!({
            "service": service,
            "key": key,
            "history": history,
        }))
        .into_response()),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            Some("key"),
            format!("no flag {key} has been written in service {service}"),
        )),
    }
}

async fn list_flags(State(HttpState { node, .. }): State<HttpState>) -> Result<Response, ApiError> {
    let set = fresh(&node).await?;
    let flags: Vec<_> = set
        .iter()
        .map(|(id, flag)| flag_json(&set, id, flag))
        .collect();
    Ok(Json(json!({ "flags": flags })).into_response())
}

/// The flag set now, straight from the driver (reads of the records are never cached).
async fn fresh(node: &NodeHandle) -> Result<Arc<FlagSet>, ApiError> {
    Ok(Arc::new(node.flags().await?))
}
