//! The HTTP side: JSON reads and writes, Server-Sent Events, health.
//!
//! Every error is JSON `{"error", "field", "detail"}` with the right status code.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use serde_json::json;
use statusmesh_crdt::liveness::Fnv64;
use statusmesh_crdt::{CrdtError, Cursor, Name, Observation, StatusWrite};
use statusmesh_gossip::GossipError;
use tokio::sync::broadcast::error::RecvError;

use crate::runtime::{now_ms, NodeHandle, Published, Subscription, Unavailable, WriteReply};
use crate::settings::Token;

/// Largest request body accepted, in bytes.
pub const BODY_BYTES_MAX: usize = 64 * 1024;
/// What clients are told to wait before reconnecting (1 s), sent before the first event.
const SSE_RETRY_LINE: &str = "retry: 1000\n";
/// Comment lines on idle streams keep proxies from closing them.
const SSE_HEARTBEAT: Duration = Duration::from_secs(15);

/// An HTTP error with its JSON body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    field: Option<String>,
    detail: String,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        error: &'static str,
        field: Option<&str>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            error,
            field: field.map(str::to_owned),
            detail: detail.into(),
        }
    }

    fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            None,
            "the node is shutting down",
        )
    }
}

impl From<Unavailable> for ApiError {
    fn from(_: Unavailable) -> Self {
        Self::unavailable()
    }
}

impl From<CrdtError> for ApiError {
    fn from(e: CrdtError) -> Self {
        let status = match &e {
            CrdtError::InvalidField { .. } | CrdtError::InvalidCursor(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            CrdtError::TooManyCells { .. } => StatusCode::INSUFFICIENT_STORAGE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, "invalid", e.field(), e.to_string())
    }
}

impl ApiError {
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    /// The JSON body every error response carries.
    pub(crate) fn body(&self) -> serde_json::Value {
        json!({ "error": self.error, "field": self.field, "detail": self.detail })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// A query string parsed into `T`; a bad one is a 400 with a JSON body that says why (axum's
/// own `Query` answers in plain text).
#[derive(Debug)]
pub(crate) struct JsonQuery<T>(pub(crate) T);

impl<T, S> axum::extract::FromRequestParts<S> for JsonQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        parse_query(&parts.uri).map(JsonQuery)
    }
}

/// The query string of `uri` parsed into `T`; a bad one is a 400 that names the field.
pub(crate) fn parse_query<T: serde::de::DeserializeOwned>(
    uri: &axum::http::Uri,
) -> Result<T, ApiError> {
    Query::<T>::try_from_uri(uri)
        .map(|Query(value)| value)
        .map_err(|e| {
            let detail = e.body_text();
            let field = json_error_field(&detail);
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_query",
                field.as_deref(),
                detail,
            )
        })
}

/// The router of one node.
pub fn router(node: NodeHandle) -> Router {
    Router::new()
        .route("/v1/status", get(get_status_all))
        .route("/v1/status/{service}", get(get_status_one))
        .route("/v1/status/{service}/{component}/{region}", put(put_status))
        .route("/v1/events", get(get_events))
        .route("/v1/poll", get(get_poll))
        .route("/v1/nodes", get(get_nodes))
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(get_ready))
        .route("/metrics", get(get_metrics))
        .route("/", get(get_page))
        .merge(crate::api_records::routes())
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                None,
                "no such path; see /v1/status",
            )
        })
        .with_state(node)
}

async fn get_status_all(
    State(node): State<NodeHandle>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (view, cursor) = node.status(None).await?;
    Ok(json_with_etag(&headers, &view, &cursor))
}

async fn get_status_one(
    State(node): State<NodeHandle>,
    Path(service): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let service = Name::parse("service", &service)?;
    let (view, cursor) = node.status(Some(service.clone())).await?;
    let found = view["services"].as_array().is_some_and(|s| !s.is_empty());
    if !found {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            Some("service"),
            format!("no status has been written for service {service:?}"),
        ));
    }
    Ok(json_with_etag(&headers, &view["services"][0], &cursor))
}

/// A JSON body with an ETag over its bytes; 304 when the client already has it.
fn json_with_etag(headers: &HeaderMap, value: &serde_json::Value, cursor: &str) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut hash = Fnv64::new();
    hash.write(&body);
    let etag = format!("\"{:016x}\"", hash.finish());
    let cache = [
        (header::ETAG, etag.clone()),
        (header::CACHE_CONTROL, "no-cache".to_owned()),
        (
            header::HeaderName::from_static("x-statusmesh-cursor"),
            cursor.to_owned(),
        ),
    ];
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if matches {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (cache, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

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
        Err(_) => (StatusCode::ACCEPTED, 0),
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

async fn get_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("page/index.html"),
    )
        .into_response()
}

async fn put_status(
    State(node): State<NodeHandle>,
    Path((service, component, region)): Path<(String, String, String)>,
    JsonQuery(ack): JsonQuery<AckQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let writer = authorize(&node, request.headers())?;
    node.limits.admit_write(&writer.name)?;
    if let Some(reason) = writer.scope.refuse_status(&service, &region) {
        return Err(forbidden(reason));
    }
    let body = read_body(&node, request.into_body()).await?;
    let write = status_write(
        [&service, &component, &region],
        &body,
        writer.name,
        now_ms(),
    )?;
    match node.write(write).await? {
        Ok(reply) => reply_after_acks(&node, reply, &ack, false).await,
        Err(GossipError::Crdt(e)) => Err(e.into()),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            None,
            e.to_string(),
        )),
    }
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

/// A JSON request body parsed into `T`; a bad one is a 400 that names the field.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let field = json_error_field(&e.to_string());
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            field.as_deref(),
            e.to_string(),
        )
    })
}

/// serde_json says "unknown field `x`" or "missing field `x`"; the field is what is quoted.
pub(crate) fn json_error_field(message: &str) -> Option<String> {
    // Query strings: "Failed to deserialize query string: ack: invalid digit ...".
    if let Some(rest) = message.strip_prefix("Failed to deserialize query string: ") {
        if let Some((field, _)) = rest.split_once(": ") {
            if !field.contains(' ') {
                return Some(field.to_owned());
            }
        }
    }
    let start = message.find('`')? + 1;
    let end = start + message[start..].find('`')?;
    Some(message[start..end].to_owned())
}

/// Reads a request body: at most [`BODY_BYTES_MAX`] bytes (413), within the node's request
/// read timeout (408), so a client that sends its body a byte at a time cannot hold a
/// handler.
pub(crate) async fn read_body(node: &NodeHandle, body: Body) -> Result<Bytes, ApiError> {
    let timeout = node.info.request_read_timeout;
    let read = tokio::time::timeout(timeout, axum::body::to_bytes(body, BODY_BYTES_MAX)).await;
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
            format!("request bodies are limited to {BODY_BYTES_MAX} bytes"),
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

#[derive(Debug, Deserialize)]
pub(crate) struct EventsQuery {
    service: Option<String>,
    region: Option<String>,
    last_event_id: Option<String>,
}

impl EventsQuery {
    /// Checks the filters; the cursor to resume from: the `Last-Event-ID` header's, else the
    /// query's.
    pub(crate) fn resume(&self, last_event_id: Option<&str>) -> Result<Option<Cursor>, ApiError> {
        check_filters(self.service.as_deref(), self.region.as_deref())?;
        let text = last_event_id.or(self.last_event_id.as_deref());
        decode_cursor("last_event_id", text)
    }
}

/// `?service=` and `?region=` must be valid names when given.
fn check_filters(service: Option<&str>, region: Option<&str>) -> Result<(), ApiError> {
    for (field, value) in [("service", service), ("region", region)] {
        if let Some(v) = value {
            Name::parse(field, v)?;
        }
    }
    Ok(())
}

/// A client's cursor (`field` names where it came from); none when absent or empty.
fn decode_cursor(field: &str, text: Option<&str>) -> Result<Option<Cursor>, ApiError> {
    match text {
        Some(text) if !text.is_empty() => Cursor::decode(text).map(Some).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid",
                Some(field),
                e.to_string(),
            )
        }),
        _ => Ok(None),
    }
}

/// How long a node that is behind a client's cursor waits to catch up (it has asked its
/// peers) before it answers with a snapshot instead.
const CATCH_UP_WAIT: Duration = Duration::from_secs(3);

/// Subscribes; when the client's cursor is ahead of this node (it last read a node that had
/// changes this one has not received yet), waits a bounded while for them so that the client
/// resumes exactly instead of starting over from a snapshot.
async fn subscribe_resuming(
    node: &NodeHandle,
    resume: Option<Cursor>,
    service: Option<String>,
) -> Result<Subscription, ApiError> {
    let mut subscription = node.subscribe(resume.clone(), service.clone()).await?;
    let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
    while subscription.cursor_ahead && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        subscription = node.subscribe(resume.clone(), service.clone()).await?;
    }
    Ok(subscription)
}

impl From<crate::limits::Refusal> for ApiError {
    fn from(refusal: crate::limits::Refusal) -> Self {
        use crate::limits::Refusal;
        match refusal {
            Refusal::Subscribers { limit } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_subscribers",
                None,
                format!("this node serves its maximum of {limit} subscribers; try another node"),
            ),
            Refusal::Address { address, limit } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_streams",
                None,
                format!("{address} holds its maximum of {limit} streams"),
            ),
            Refusal::Rate {
                token,
                retry_after_ms,
            } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                Some("authorization"),
                format!(
                    "token {token:?} writes faster than its limit; retry in {retry_after_ms} ms"
                ),
            ),
        }
    }
}

/// The client's address when the server was started with connect info (the node is).
fn client_address(extensions: &axum::http::Extensions) -> Option<std::net::IpAddr> {
    extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip())
}

async fn get_events(
    State(node): State<NodeHandle>,
    JsonQuery(query): JsonQuery<EventsQuery>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let stream = open_event_stream(node, query, client_address(&extensions), last_event_id).await?;
    // The body is the SSE wire format written directly (not axum's `Sse`), so that each
    // event is serialized once and its bytes shared by every subscriber.
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    for (name, value) in SSE_RESPONSE_HEADERS {
        headers.insert(*name, HeaderValue::from_static(value));
    }
    Ok(response)
}

/// The headers of an event stream (`x-accel-buffering` tells reverse proxies not to buffer).
pub(crate) const SSE_RESPONSE_HEADERS: &[(&str, &str)] = &[
    ("content-type", "text/event-stream"),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
];

/// Admits a subscriber and opens its stream of SSE frames: the snapshot or the changes after
/// the client's cursor (`Last-Event-ID`, else `?last_event_id=`), then live events. Shared
/// by the axum route and the lean front door ([`crate::sse_front`]).
pub(crate) async fn open_event_stream(
    node: NodeHandle,
    query: EventsQuery,
    client: Option<std::net::IpAddr>,
    last_event_id: Option<&str>,
) -> Result<impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static, ApiError> {
    let slot = node.limits.admit_subscriber(client)?;
    let resume = query.resume(last_event_id)?;
    let subscription = subscribe_resuming(&node, resume, query.service.clone()).await?;
    let stream = event_stream(node, subscription, query.service, query.region);
    // The slot lives as long as the stream: a gone subscriber frees its place.
    Ok(futures_util::StreamExt::map(stream, move |item| {
        let _held = &slot;
        item
    }))
}

struct StreamState {
    node: NodeHandle,
    pending: VecDeque<Arc<Published>>,
    live: tokio::sync::broadcast::Receiver<Arc<Published>>,
    service: Option<String>,
    region: Option<String>,
    sent_retry: bool,
    /// Fires after SSE_HEARTBEAT without a frame sent; reset by each frame.
    heartbeat: std::pin::Pin<Box<tokio::time::Sleep>>,
}

/// The comment sent on idle streams.
const SSE_HEARTBEAT_FRAME: &[u8] = b":heartbeat\n\n";

fn event_stream(
    node: NodeHandle,
    subscription: Subscription,
    service: Option<String>,
    region: Option<String>,
) -> impl Stream<Item = Result<Bytes, Infallible>> {
    let state = StreamState {
        node,
        pending: subscription.initial.into_iter().map(Arc::new).collect(),
        live: subscription.live,
        service,
        region,
        sent_retry: false,
        heartbeat: Box::pin(tokio::time::sleep(SSE_HEARTBEAT)),
    };
    stream::unfold(state, |mut state| async move {
        loop {
            if let Some(published) = state.pending.pop_front() {
                let mut frame = published.sse_frame();
                if !state.sent_retry {
                    // Once per stream, so this copy is not on the fan-out path.
                    let mut first = Vec::with_capacity(SSE_RETRY_LINE.len() + frame.len());
                    first.extend_from_slice(SSE_RETRY_LINE.as_bytes());
                    first.extend_from_slice(&frame);
                    frame = Bytes::from(first);
                    state.sent_retry = true;
                }
                state.rearm_heartbeat();
                return Some((Ok(frame), state));
            }
            let received = tokio::select! {
                received = state.live.recv() => received,
                () = state.heartbeat.as_mut() => {
                    state.rearm_heartbeat();
                    return Some((Ok(Bytes::from_static(SSE_HEARTBEAT_FRAME)), state));
                }
            };
            match received {
                Ok(published) => {
                    if matches_filter(
                        &published,
                        state.service.as_deref(),
                        state.region.as_deref(),
                    ) {
                        // The shared event itself, not a copy: its frame is made once.
                        state.pending.push_back(published);
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    // Too slow to keep up: the truth is re-sent whole instead of piling up.
                    let Ok(fresh) = state.node.subscribe(None, state.service.clone()).await else {
                        return None;
                    };
                    state.live = fresh.live;
                    state.pending = fresh.initial.into_iter().map(Arc::new).collect();
                }
                Err(RecvError::Closed) => return None,
            }
        }
    })
}

impl StreamState {
    fn rearm_heartbeat(&mut self) {
        self.heartbeat
            .as_mut()
            .reset(tokio::time::Instant::now() + SSE_HEARTBEAT);
    }
}

fn matches_filter(published: &Published, service: Option<&str>, region: Option<&str>) -> bool {
    let service_ok = service.is_none_or(|s| published.service.as_deref().is_none_or(|p| p == s));
    let region_ok = region.is_none_or(|r| published.region.as_deref().is_none_or(|p| p == r));
    service_ok && region_ok
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PollQuery {
    cursor: Option<String>,
    wait_s: Option<u64>,
    service: Option<String>,
    region: Option<String>,
}

impl PollQuery {
    /// Checks every field; the wait in seconds and the cursor to resume from.
    pub(crate) fn validate(&self) -> Result<(u64, Option<Cursor>), ApiError> {
        check_filters(self.service.as_deref(), self.region.as_deref())?;
        let wait_s = self.wait_s.unwrap_or(30);
        if wait_s > POLL_WAIT_S_MAX {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid",
                Some("wait_s"),
                format!("wait_s {wait_s} is above the limit of {POLL_WAIT_S_MAX}"),
            ));
        }
        Ok((wait_s, decode_cursor("cursor", self.cursor.as_deref())?))
    }
}

/// Longest long-poll wait, in seconds.
const POLL_WAIT_S_MAX: u64 = 60;
/// Most events one long-poll answer carries; the rest come with the next poll.
const POLL_EVENTS_MAX: usize = 1_000;

/// `GET /v1/poll?cursor=&wait_s=`: the same events as `/v1/events`, as JSON, for clients that
/// cannot hold a stream. Without a cursor the answer is a snapshot; with one, the events
/// after it, waiting up to `wait_s` (default 30) for the first. The answer's `cursor` is the
/// next poll's.
async fn get_poll(
    State(node): State<NodeHandle>,
    JsonQuery(query): JsonQuery<PollQuery>,
    extensions: axum::http::Extensions,
) -> Result<Response, ApiError> {
    // A waiting poll holds a connection like a stream does.
    let _slot = node.limits.admit_subscriber(client_address(&extensions))?;
    let (wait_s, resume) = query.validate()?;
    let Subscription {
        initial, mut live, ..
    } = subscribe_resuming(&node, resume, query.service.clone()).await?;
    let keep = |p: &Published| matches_filter(p, query.service.as_deref(), query.region.as_deref());
    let mut events: Vec<Published> = initial.into_iter().filter(|p| keep(p)).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait_s);
    while events.is_empty() {
        match tokio::time::timeout_at(deadline, live.recv()).await {
            Ok(Ok(published)) if keep(&published) => events.push((*published).clone()),
            Ok(Ok(_)) => {}
            Ok(Err(RecvError::Lagged(_))) => {
                // Too far behind to list: the answer is the whole truth instead.
                let fresh = node.subscribe(None, query.service.clone()).await?;
                events = fresh.initial;
            }
            Ok(Err(RecvError::Closed)) => return Err(ApiError::unavailable()),
            Err(_) => break,
        }
    }
    // Whatever else is already there comes along, up to the bound.
    while events.len() < POLL_EVENTS_MAX {
        match live.try_recv() {
            Ok(published) if keep(&published) => events.push((*published).clone()),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let cursor = events
        .last()
        .map(|p| p.id.clone())
        .or(query.cursor)
        .unwrap_or_default();
    let events: Vec<serde_json::Value> = events
        .iter()
        .map(|p| json!({ "event": p.kind, "id": p.id, "data": p.data }))
        .collect();
    Ok(Json(json!({ "events": events, "cursor": cursor })).into_response())
}

async fn get_nodes(State(node): State<NodeHandle>) -> Result<Response, ApiError> {
    Ok(Json(node.nodes().await?).into_response())
}

async fn get_ready(State(node): State<NodeHandle>) -> Response {
    if node.is_ready() {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready", "detail": "no peer heard from yet" })),
        )
            .into_response()
    }
}

/// Prometheus text format, from the recorder `main` installed (404 when there is none).
async fn get_metrics(State(node): State<NodeHandle>) -> Response {
    match &node.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            None,
            "no metrics recorder is installed in this process",
        )
        .into_response(),
    }
}
