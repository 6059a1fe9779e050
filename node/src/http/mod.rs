//! The HTTP side: the client contract (JSON reads and writes, Server-Sent Events, health,
//! metrics) over the driver's [`NodeHandle`].
//!
//! - [`error`]: every error is JSON `{"error", "field", "detail"}` with the right status.
//! - [`writes`]: status writes, tokens, body bounds and `?ack=N`.
//! - [`events`]: `/v1/events` (SSE) and `/v1/poll`.
//! - [`records`]: incidents, maintenance, overrides and history.
//! - [`checks`]: regional probe checks (`/v1/checks`).
//! - [`alertmanager`]: the Alertmanager webhook receiver; [`webhooks`]: outgoing webhook
//!   subscriptions (`/v1/webhooks`, sent by `crate::notify`).
//! - [`limits`]: admission (subscribers, streams per address, write rate per token).
//! - [`pace`]: whether an event stream's reader keeps reading or was away.
//! - [`negotiate`]: `Accept` (406) and `Content-Type` (415) on every route.
//! - [`frame_ancestors`]: who may frame the page (`--frame-ancestors`).
//! - [`statuspage`]: Statuspage v2's read API; [`badge`]: SVG and shields.io badges;
//!   [`feeds`]: the incident and maintenance feeds (Atom and RSS);
//!   [`cors`]: cross-origin reads (`--cors-origins`) and writes (`--cors-write-origins`).
//! - [`serve`]: the server loop with a header read timeout ([`idle`]: HTTP/2's idle bound);
//!   [`sse_front`]: the lean SSE door;
//!   [`tls`]: HTTPS (`--http-tls-cert`, `--http-tls-key`), reloaded with the node's certificates.
//! - [`whoami`]: what a token may do (the operator page reads it).
//! - The page (`/`, its scripts and style sheet) is served from `page/`, embedded.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use statusmesh_crdt::liveness::Fnv64;
use statusmesh_crdt::Name;

pub mod alertmanager;
pub mod badge;
pub mod checks;
pub mod cors;
pub mod error;
pub mod events;
pub mod feeds;
pub mod flags;
pub mod frame_ancestors;
pub mod idle;
pub mod leave;
pub mod limits;
pub mod negotiate;
pub mod ofrep;
pub mod pace;
pub mod records;
pub mod serve;
pub mod sse_front;
pub mod statuspage;
pub mod tls;
pub mod webhooks;
pub mod whoami;
pub mod writes;

pub use error::ApiError;
pub(crate) use error::{parse_json, parse_query};
pub(crate) use events::{EventsQuery, PollQuery};
pub use writes::BODY_BYTES_MAX;
pub(crate) use writes::{status_write, AckQuery};

use crate::driver::NodeHandle;
use frame_ancestors::FrameAncestors;
use limits::Limits;

/// What every handler holds: the driver's handle and the HTTP side's own state.
#[derive(Debug, Clone)]
pub struct HttpState {
    pub node: NodeHandle,
    /// Admission limits.
    pub limits: Arc<Limits>,
    /// The process's Prometheus recorder, for `/metrics` (absent when none is installed).
    pub metrics: Option<PrometheusHandle>,
    /// Who may frame the page (the documents' CSP `frame-ancestors`).
    pub frame_ancestors: FrameAncestors,
    /// `POST /v1/integrations/alertmanager`: its settings and firing set.
    pub alertmanager: Arc<alertmanager::Receiver>,
    /// Who may read and write from other origins.
    pub cors: cors::Cors,
    /// `--page-url`: the Statuspage API's `page.url` (else from the request's `Host`).
    pub page_url: Option<Arc<str>>,
    /// The client API is HTTPS (`--http-tls-cert`): URLs made from `Host` are `https://`.
    pub https: bool,
    /// Feature flags: the cached flag set and the OFREP limiter.
    pub flags: Arc<flags::FlagState>,
    /// Outgoing webhooks: this node's recent delivery attempts.
    pub deliveries: Arc<crate::notify::DeliveryLog>,
}

/// The router of one node. A route that produces anything but JSON is listed in
/// [`negotiate::produces`].
pub fn router(state: HttpState) -> Router {
    let frame_ancestors = state.frame_ancestors.clone();
    let cors = state.cors.clone();
    Router::new()
        .route("/v1/status", get(get_status_all))
        .route("/v1/status/{service}", get(get_status_one))
        .route(
            "/v1/status/{service}/{component}/{region}",
            put(writes::put_status),
        )
        .route("/v1/events", get(events::get_events))
        .route("/v1/poll", get(events::get_poll))
        .route("/v1/nodes", get(get_nodes))
        .route("/v1/leave", axum::routing::post(leave::post_leave))
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(get_ready))
        .route("/metrics", get(get_metrics))
        .route("/", get(get_page))
        .route(
            "/page.js",
            get(|| page_script(include_str!("page/page.js"))),
        )
        .route(
            "/history.js",
            get(|| page_script(include_str!("page/history.js"))),
        )
        .route(
            "/operator.js",
            get(|| page_script(include_str!("page/operator.js"))),
        )
        .route(
            "/failover.js",
            get(|| page_script(include_str!("page/failover.js"))),
        )
        .route("/page.css", get(get_page_style))
        .merge(records::routes())
        .merge(alertmanager::routes())
        .merge(statuspage::routes())
        .merge(badge::routes())
        .merge(feeds::routes())
        .merge(flags::routes())
        .merge(ofrep::routes())
        .merge(checks::routes())
        .merge(webhooks::routes())
        .merge(whoami::routes())
        .route_layer(axum::middleware::from_fn(negotiate::negotiate))
        .route_layer(axum::middleware::from_fn_with_state(
            cors.clone(),
            cors::refuse_foreign_writes,
        ))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                None,
                "no such path; see /v1/status",
            )
        })
        .with_state(state)
        .layer(axum::middleware::map_response_with_state(
            frame_ancestors,
            security_headers,
        ))
        .layer(axum::middleware::map_response(error::json_errors))
        .layer(axum::middleware::from_fn(error::bounded_headers))
        .layer(cors.layer())
}

/// `nosniff` on every response, so no body is ever sniffed into a script or a page; HTML and
/// SVG also get the `Content-Security-Policy` and `X-Frame-Options` of [`FrameAncestors`]
/// and `Referrer-Policy`.
async fn security_headers(
    State(frame_ancestors): State<FrameAncestors>,
    mut response: Response,
) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    let document = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html") || v.starts_with("image/svg+xml"));
    if document {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            frame_ancestors.content_security_policy().clone(),
        );
        if let Some(deny) = frame_ancestors.x_frame_options() {
            headers.insert(header::X_FRAME_OPTIONS, deny);
        }
        headers.insert(
            header::REFERRER_POLICY,
            header::HeaderValue::from_static("no-referrer"),
        );
    }
    response
}

async fn get_status_all(
    State(HttpState { node, .. }): State<HttpState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (view, cursor) = node.status(None).await?;
    Ok(json_with_etag(&headers, &view, &cursor))
}

async fn get_status_one(
    State(HttpState { node, .. }): State<HttpState>,
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
    if if_none_match(headers, &etag) {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (cache, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Whether the request's `If-None-Match` names `etag` (or is `*`). The comparison is weak,
/// as RFC 9110 §13.1.2 asks of `If-None-Match`: a `W/` prefix is ignored.
pub(crate) fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim())
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
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

/// One of the page's scripts, served from the binary (the CSP allows no inline script).
async fn page_script(source: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        source,
    )
        .into_response()
}

/// The page's style sheet, served from the binary (the CSP allows no inline style).
async fn get_page_style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("page/page.css"),
    )
        .into_response()
}

/// The membership, with each node's public URL (its HTTP address as the topology gives it),
/// so that a page can follow another node when this one is gone.
async fn get_nodes(State(HttpState { node, .. }): State<HttpState>) -> Result<Response, ApiError> {
    let mut mesh = node.nodes().await?;
    let urls = &node.info.http_addrs;
    if let Some(nodes) = mesh["nodes"].as_array_mut() {
        for entry in nodes {
            let url = entry["id"]
                .as_str()
                .and_then(|id| urls.get(id))
                .map(|addr| format!("http://{addr}"));
            entry["url"] = json!(url);
        }
    }
    Ok(Json(mesh).into_response())
}

async fn get_ready(State(HttpState { node, .. }): State<HttpState>) -> Response {
    if node.is_ready() {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            // The error shape, plus the `status` probes read.
            Json(json!({
                "status": "not_ready",
                "error": "not_ready",
                "field": null,
                "detail": "no peer heard from yet",
            })),
        )
            .into_response()
    }
}

/// Prometheus text format, from the recorder `main` installed (404 when there is none).
async fn get_metrics(State(state): State<HttpState>) -> Response {
    match &state.metrics {
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
