//! OpenFeature's Remote Evaluation Protocol (OFREP) on every node.
//!
//! ```text
//! POST /ofrep/v1/evaluate/flags/{key}            {"context": {...}} -> {key, value, reason, variant, metadata}
//! POST /ofrep/v1/evaluate/flags/{service}/{key}  the same, for a key written as <service>/<key>
//! POST /ofrep/v1/evaluate/flags                  every flag: {"flags": [...]}, with ETag / 304
//! GET  /ofrep/v1/configuration                   what this OFREP server supports
//! ```
//!
//! Flag keys: OFREP's namespace is flat, so a flag's key there is `<service>/<key>`; a bare
//! `<key>` also works while exactly one service has a flag of that key. The context's
//! `region` is the caller's region (the node's own when the context names none): regional
//! availability rules and `region` conditions read it.
//!
//! Every request needs a bearer token; a token with `evaluate_only = true` in the tokens
//! file may evaluate and write nothing. Each token may evaluate [`EVALS_PER_SECOND`] times a
//! second (burst [`EVAL_BURST`]); past it the answer is 429 with `Retry-After` (seconds).
//! Errors: 404 `FLAG_NOT_FOUND`; 400 `PARSE_ERROR`, `TARGETING_KEY_MISSING`,
//! `INVALID_CONTEXT`, `GENERAL` (a bare key of several services).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use statusmesh_crdt::liveness::Fnv64;

use super::error::ApiError;
use super::writes::{authorize, read_body};
use super::HttpState;

mod answer;

pub use answer::{context_of, evaluate_all, evaluate_key, OfrepError};

/// Sustained evaluations per second per token.
pub const EVALS_PER_SECOND: f64 = 50_000.0;
/// Burst of evaluations per token above the sustained rate.
pub const EVAL_BURST: f64 = 100_000.0;
/// Most tokens the limiter tracks.
const TOKENS_TRACKED_MAX: usize = 4_096;

/// A token bucket per evaluation token.
#[derive(Debug, Default)]
pub struct EvalLimiter {
    buckets: Mutex<BTreeMap<String, (f64, Instant)>>,
}

impl EvalLimiter {
    /// Takes one evaluation from `token`'s bucket, or says after how many milliseconds to
    /// retry.
    pub fn admit(&self, token: &str) -> Result<(), u64> {
        self.admit_at(token, Instant::now(), EVALS_PER_SECOND, EVAL_BURST)
    }

    fn admit_at(&self, token: &str, now: Instant, rate: f64, burst: f64) -> Result<(), u64> {
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if !buckets.contains_key(token) && buckets.len() >= TOKENS_TRACKED_MAX {
            buckets.clear();
        }
        let (level, at) = buckets.entry(token.to_owned()).or_insert((burst, now));
        *level = (*level + now.duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *level < 1.0 {
            return Err((((1.0 - *level) / rate * 1000.0).ceil() as u64).max(1));
        }
        *level -= 1.0;
        Ok(())
    }
}

/// The routes of this module, to merge into the node's router.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/ofrep/v1/evaluate/flags", post(evaluate_bulk))
        .route("/ofrep/v1/evaluate/flags/{key}", post(evaluate_one))
        .route(
            "/ofrep/v1/evaluate/flags/{service}/{key}",
            post(evaluate_one_of_service),
        )
        .route("/ofrep/v1/configuration", get(configuration))
}

fn ofrep_error(error: &OfrepError, key: Option<&str>) -> Response {
    (error.status, Json(error.body(key))).into_response()
}

/// 429 with `Retry-After` in whole seconds (at least 1).
fn rate_limited(retry_after_ms: u64) -> Response {
    let seconds = retry_after_ms.div_ceil(1000).max(1);
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, seconds.to_string())],
        Json(json!({
            "errorCode": "GENERAL",
            "errorDetails": format!("evaluations are limited per token; retry in {seconds} s"),
        })),
    )
        .into_response()
}

/// Authorizes and admits a request, and reads its context.
async fn admitted(
    state: &HttpState,
    request: Request,
) -> Result<Result<serde_json::Map<String, Value>, OfrepError>, Response> {
    let token = authorize(&state.node, request.headers()).map_err(IntoResponse::into_response)?;
    state
        .flags
        .limiter
        .admit(&token.name)
        .map_err(rate_limited)?;
    let body = read_body(&state.node, request)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok(context_of(&body))
}

async fn evaluate_one(
    State(state): State<HttpState>,
    Path(key): Path<String>,
    request: Request,
) -> Response {
    evaluate_named(state, key, request).await
}

async fn evaluate_one_of_service(
    State(state): State<HttpState>,
    Path((service, key)): Path<(String, String)>,
    request: Request,
) -> Response {
    evaluate_named(state, format!("{service}/{key}"), request).await
}

async fn evaluate_named(state: HttpState, key: String, request: Request) -> Response {
    let context = match admitted(&state, request).await {
        Ok(Ok(context)) => context,
        Ok(Err(e)) => return ofrep_error(&e, Some(&key)),
        Err(response) => return response,
    };
    let set = match state.flags.cache.get(&state.node).await {
        Ok(set) => set,
        Err(e) => return ApiError::from(e).into_response(),
    };
    match evaluate_key(&set, &key, &context, &state.node.info.region) {
        Ok(body) => Json(body).into_response(),
        Err(e) => ofrep_error(&e, Some(&key)),
    }
}

async fn evaluate_bulk(State(state): State<HttpState>, request: Request) -> Response {
    let if_none_match = request.headers().get(header::IF_NONE_MATCH).cloned();
    let context = match admitted(&state, request).await {
        Ok(Ok(context)) => context,
        Ok(Err(e)) => return ofrep_error(&e, None),
        Err(response) => return response,
    };
    let set = match state.flags.cache.get(&state.node).await {
        Ok(set) => set,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let body = evaluate_all(&set, &context, &state.node.info.region);
    let mut headers = HeaderMap::new();
    if let Some(value) = if_none_match {
        headers.insert(header::IF_NONE_MATCH, value);
    }
    with_etag(&headers, &body)
}

/// The bulk body with an ETag over its bytes (the answer for this context now); 304 when
/// the client already has it.
fn with_etag(request: &HeaderMap, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut hash = Fnv64::new();
    hash.write(&bytes);
    let etag = format!("\"{:016x}\"", hash.finish());
    let matches = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let headers = [
        (header::ETAG, etag),
        (header::CACHE_CONTROL, "no-cache".to_owned()),
    ];
    if matches {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (headers, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

async fn configuration() -> Response {
    Json(json!({
        "name": "statusmesh",
        "capabilities": {
            "cacheInvalidation": {
                "polling": {"enabled": true, "minPollingIntervalMs": 1000}
            },
            "flagEvaluation": {"unsupportedTypes": []}
        }
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_past_its_burst_is_told_when_to_retry() {
        let limiter = EvalLimiter::default();
        let now = Instant::now();
        for _ in 0..10 {
            assert_eq!(limiter.admit_at("app", now, 5.0, 10.0), Ok(()));
        }
        let retry = limiter
            .admit_at("app", now, 5.0, 10.0)
            .expect_err("limited");
        assert!(retry >= 1);
        assert_eq!(limiter.admit_at("other", now, 5.0, 10.0), Ok(()));
        let response = rate_limited(retry);
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
            Some("1")
        );
    }

    #[test]
    fn the_bulk_etag_answers_304_when_the_client_has_the_body() {
        let body = json!({"flags": []});
        let first = with_etag(&HeaderMap::new(), &body);
        let etag = first.headers().get(header::ETAG).cloned().expect("etag");
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(
            with_etag(&headers, &body).status(),
            StatusCode::NOT_MODIFIED
        );
    }
}
