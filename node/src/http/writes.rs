//! Status writes (`PUT /v1/status/...`) and what every write shares: the bearer token,
//! the bounded body read, and the `?ack=N` wait.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use statusmesh_crdt::{CrdtError, Observation, StatusWrite};

use super::error::{parse_json, ApiError, JsonQuery};
use super::negotiate::check_content_type;
use super::HttpState;
use crate::driver::{now_ms, NodeHandle, WriteReply};
use crate::settings::Token;

/// Largest request body accepted, in bytes.
pub const BODY_BYTES_MAX: usize = 64 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutStatusBody {
    state: String,
    #[serde(default)]
    message: String,
    #[serde(default = "default_ttl_s")]
    ttl_s: u64,
    reporter: Option<String>,
}

fn default_ttl_s() -> u64 {
    60
}

/// 403: the token is valid but this write is outside its scope.
pub(crate) fn forbidden(reason: String) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        Some("authorization"),
        reason,
    )
}

/// `?ack=N`: wait until N regions hold the write (202 with the cursor when they do not in
/// time; nothing is lost either way).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AckQuery {
    pub(crate) ack: Option<usize>,
    pub(crate) ack_timeout_ms: Option<u64>,
}

/// `response` (a write's JSON answer) with the fields of `extra` added: what the caller
/// needs to know besides the cursor (a generated id, a secret shown once).
pub(crate) async fn with_fields(response: Response, extra: &serde_json::Value) -> Response {
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let mut value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if let (Some(map), Some(more)) = (value.as_object_mut(), extra.as_object()) {
        map.extend(more.clone());
    }
    (parts.status, Json(value)).into_response()
}

/// Longest `?ack=` wait a client may ask for.
const ACK_TIMEOUT_MAX_MS: u64 = 30_000;

/// The wait when the client names none.
const ACK_TIMEOUT_DEFAULT_MS: u64 = 5_000;

/// Answers a write, after waiting for `ack` regions when asked.
pub(crate) async fn reply_after_acks(
    node: &NodeHandle,
    reply: WriteReply,
    query: &AckQuery,
    created: bool,
) -> Result<Response, ApiError> {
    let ok = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let (Some(wanted), Some(change)) = (query.ack, reply.change) else {
        return Ok((ok, Json(reply)).into_response());
    };
    if wanted == 0 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            Some("ack"),
            "ack counts regions and is at least 1",
        ));
    }
    let timeout_ms = query
        .ack_timeout_ms
        .unwrap_or(ACK_TIMEOUT_DEFAULT_MS)
        .min(ACK_TIMEOUT_MAX_MS);
    let waited = tokio::time::timeout(
        Duration::from_millis(timeout_ms),
        node.await_regions(change, wanted),
    )
    .await;
    let (status, regions) = match waited {
        Ok(Ok(regions)) if regions >= wanted => (ok, regions),
        Ok(Ok(regions)) => (StatusCode::ACCEPTED, regions),
        Ok(Err(e)) => return Err(e.into()),
        // The wait ended first: say how many regions hold it now (asking for 0 answers at once).
        Err(_) => (
            StatusCode::ACCEPTED,
            node.await_regions(change, 0).await.unwrap_or(0),
        ),
    };
    let body = json!({
        "changed": reply.changed,
        "cursor": reply.cursor,
        "ack": wanted,
        "acked": status != StatusCode::ACCEPTED,
        "regions": regions,
    });
    Ok((status, Json(body)).into_response())
}

pub(super) async fn put_status(
    State(HttpState { node, limits, .. }): State<HttpState>,
    Path((service, component, region)): Path<(String, String, String)>,
    JsonQuery(ack): JsonQuery<AckQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let writer = authorize(&node, request.headers())?;
    limits.admit_write(&writer.name)?;
    if let Some(reason) = writer.scope.refuse_status(&service, &region) {
        return Err(forbidden(reason));
    }
    known_region(&node.info.regions, &region)?;
    let body = read_body(&node, request).await?;
    let write = status_write(
        [&service, &component, &region],
        &body,
        writer.name,
        now_ms(),
    )?;
    match node.write(write).await? {
        Ok(reply) => reply_after_acks(&node, reply, &ack, false).await,
        Err(e) => Err(e.into()),
    }
}

/// An observation names a region of the topology (422 otherwise, with the allowed set): a
/// typo must not become a column on every status page.
pub(crate) fn known_region(
    regions: &std::collections::BTreeSet<String>,
    region: &str,
) -> Result<(), ApiError> {
    if regions.contains(region) {
        return Ok(());
    }
    let allowed: Vec<&str> = regions.iter().map(String::as_str).collect();
    Err(ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        Some("region"),
        format!(
            "unknown region {:?}: the topology's regions are {}",
            region.chars().take(64).collect::<String>(),
            allowed.join(", ")
        ),
    ))
}

/// The body of `PUT /v1/status/{service}/{component}/{region}` parsed and validated into a
/// write by `writer` at `now_ms`; nothing is stored yet.
pub(crate) fn status_write(
    [service, component, region]: [&str; 3],
    body: &[u8],
    writer: String,
    now_ms: u64,
) -> Result<StatusWrite, ApiError> {
    let parsed: PutStatusBody = parse_json(body)?;
    let state = parsed.state.parse()?;
    let ttl_ms = parsed.ttl_s.saturating_mul(1000);
    let observation = Observation {
        state,
        message: parsed.message,
        reporter: parsed.reporter.unwrap_or(writer),
        observed_at_ms: now_ms,
        ttl_ms,
    };
    StatusWrite::parse(service, component, region, observation).map_err(|e| match e {
        // The body says ttl_s, so the error should too.
        CrdtError::InvalidField {
            field: "ttl_ms",
            value,
            reason,
        } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("ttl_s"),
            format!(
                "invalid ttl_s {}: {reason}",
                value
                    .parse::<u64>()
                    .map_or(value, |ms| (ms / 1000).to_string())
            ),
        ),
        other => other.into(),
    })
}

/// Reads a request's JSON body: declared as JSON or not at all (415, see
/// [`super::negotiate`]), at most [`BODY_BYTES_MAX`] bytes (413), within the node's request
/// read timeout (408), so a client that sends its body a byte at a time cannot hold a
/// handler.
pub(crate) async fn read_body(node: &NodeHandle, request: Request) -> Result<Bytes, ApiError> {
    read_body_bounded(node, request, BODY_BYTES_MAX).await
}

/// [`read_body`] with a bound of `limit` bytes (for payloads that other programs shape, as
/// Alertmanager's).
pub(crate) async fn read_body_bounded(
    node: &NodeHandle,
    request: Request,
    limit: usize,
) -> Result<Bytes, ApiError> {
    check_content_type(request.headers())?;
    let body = request.into_body();
    let timeout = node.info.request_read_timeout;
    let read = tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await;
    let Ok(read) = read else {
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            Some("body"),
            format!("the body did not arrive within {} ms", timeout.as_millis()),
        ));
    };
    read.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            Some("body"),
            format!("request bodies are limited to {limit} bytes"),
        )
    })
}

/// Checks the bearer token; returns the token (who is writing, and what it may write).
pub(crate) fn authorize(node: &NodeHandle, headers: &HeaderMap) -> Result<Token, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            Some("authorization"),
            "writes need an Authorization: Bearer <token> header",
        ));
    };
    let presented = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    match node.info.tokens.token(presented) {
        Some(token) => Ok(token.clone()),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            Some("authorization"),
            "the bearer token is not valid for this cluster",
        )),
    }
}
