//! Errors as the client contract shows them: JSON `{"error", "field", "detail"}` with the
//! right status code, and the parsing of query strings and bodies that names the bad field.

use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use statusmesh_crdt::CrdtError;

use super::limits::Refusal;
use crate::driver::Unavailable;

/// An HTTP error with its JSON body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    field: Option<String>,
    detail: String,
    /// Sent as `Retry-After` (whole seconds, rounded up) when set.
    retry_after_s: Option<u64>,
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
            retry_after_s: None,
        }
    }

    /// This error with a `Retry-After` of `ms` milliseconds, rounded up to whole seconds.
    pub(crate) fn retry_after_ms(mut self, ms: u64) -> Self {
        self.retry_after_s = Some(ms.div_ceil(1000).max(1));
        self
    }

    pub(crate) fn unavailable() -> Self {
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

/// A write the core refused: the crdt's reason (a 4xx naming the field), anything else 500.
impl From<statusmesh_gossip::GossipError> for ApiError {
    fn from(e: statusmesh_gossip::GossipError) -> Self {
        match e {
            statusmesh_gossip::GossipError::Crdt(e) => e.into(),
            e => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                None,
                e.to_string(),
            ),
        }
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
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after_s {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
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
            )
            .retry_after_ms(retry_after_ms),
        }
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

/// A JSON request body parsed into `T`; a bad one is a 400 whose `field` is the path of the
/// offending key (`ttl_s`, `components[2]`), or `null` when the document itself is
/// malformed, and whose `detail` gives serde_json's message with line and column.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let bad = |field: Option<String>, e: &serde_json::Error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            field.as_deref(),
            e.to_string(),
        )
    };
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let inner = e.inner();
        let path = e.path().to_string();
        let field = match inner.classify() {
            serde_json::error::Category::Data if path != "." => Some(path),
            // "unknown field `x`" / "missing field `x`" are reported at the enclosing map.
            serde_json::error::Category::Data => json_error_field(&inner.to_string()),
            _ => None,
        };
        bad(field, inner)
    })?;
    // Trailing bytes after the document: the document itself is malformed.
    deserializer.end().map_err(|e| bad(None, &e))?;
    Ok(value)
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

/// The longest plain-text error body from axum or a layer carried over into `detail`.
const PLAIN_ERROR_DETAIL_BYTES_MAX: usize = 1024;

/// Every error response leaves as JSON `{"error", "field", "detail"}`: the ones handlers
/// build already are; axum's own (405 with its `Allow` header, extractor rejections, 415,
/// 406) and the layers' (408, 413, 503) arrive as empty or plain-text bodies and are rewritten
/// here, keeping their status and headers. Successful responses pass untouched.
pub(crate) async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, PLAIN_ERROR_DETAIL_BYTES_MAX)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let detail = if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let error = error_name(status);
    let field = match status {
        StatusCode::METHOD_NOT_ALLOWED => Some("method"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => Some("content-type"),
        StatusCode::NOT_ACCEPTABLE => Some("accept"),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => Some("headers"),
        StatusCode::PAYLOAD_TOO_LARGE => Some("body"),
        _ => None,
    };
    let detail = match (status, parts.headers.get(axum::http::header::ALLOW)) {
        (StatusCode::METHOD_NOT_ALLOWED, Some(allow)) => format!(
            "this path accepts {}",
            allow.to_str().unwrap_or("other methods")
        ),
        _ => detail,
    };
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    let body = ApiError::new(status, error, field, detail).body();
    let mut rebuilt = Json(body).into_response();
    let content_type = rebuilt
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .cloned();
    std::mem::swap(rebuilt.headers_mut(), &mut parts.headers);
    if let Some(content_type) = content_type {
        rebuilt
            .headers_mut()
            .insert(axum::http::header::CONTENT_TYPE, content_type);
    }
    *rebuilt.status_mut() = status;
    rebuilt
}

/// The `error` of a status that reached [`json_errors`] without a JSON body.
fn error_name(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::NOT_ACCEPTABLE => "not_acceptable",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "headers_too_large",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_client_error() => "bad_request",
        _ => "internal",
    }
}

/// The most bytes of request headers (names and values) a request may carry; more is a 431.
pub const REQUEST_HEADER_BYTES_MAX: usize = 16 * 1024;
/// The most header lines a request may carry (hyper's own default); more is a 431.
pub const REQUEST_HEADERS_MAX: usize = 100;

/// Refuses a request whose headers exceed [`REQUEST_HEADERS_MAX`] lines or
/// [`REQUEST_HEADER_BYTES_MAX`] bytes with a JSON 431. hyper's own bounds, which answer with
/// an empty body, are set far above these ([`super::serve`]), so that it is this refusal a
/// client sees.
pub(crate) async fn bounded_headers(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = request.headers();
    let too_large = |detail: String| {
        ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            Some("headers"),
            detail,
        )
        .into_response()
    };
    if headers.len() > REQUEST_HEADERS_MAX {
        return too_large(format!(
            "requests are limited to {REQUEST_HEADERS_MAX} header lines, got {}",
            headers.len()
        ));
    }
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if bytes > REQUEST_HEADER_BYTES_MAX {
        return too_large(format!(
            "request headers are limited to {REQUEST_HEADER_BYTES_MAX} bytes, got {bytes}"
        ));
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_refusal_is_a_429_that_names_the_token_but_not_its_secret() {
        let error = ApiError::from(Refusal::Rate {
            token: "ci".to_owned(),
            retry_after_ms: 5,
        });
        assert_eq!(error.status(), StatusCode::TOO_MANY_REQUESTS);
        let body = error.body();
        assert_eq!(body["error"], "rate_limited");
        assert_eq!(body["field"], "authorization");
        assert!(body["detail"].as_str().is_some_and(|d| d.contains("5 ms")));
        let response = error.into_response();
        assert_eq!(response.headers()[axum::http::header::RETRY_AFTER], "1");
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        ttl_s: u64,
        nested: Option<Vec<u8>>,
    }

    #[test]
    fn a_json_error_names_the_key_path_or_null_for_a_malformed_document() {
        let named = |text: &str| parse_json::<Body>(text.as_bytes()).expect_err(text).body();
        assert_eq!(named(r#"{"ttl_s": -5}"#)["field"], "ttl_s");
        assert_eq!(
            named(r#"{"ttl_s": 1, "nested": [1, 300]}"#)["field"],
            "nested[1]"
        );
        assert_eq!(named(r#"{"ttl_s": 1"#)["field"], serde_json::Value::Null);
        assert_eq!(
            named(r#"{"ttl_s": 1} trailing"#)["field"],
            serde_json::Value::Null
        );
        let detail = named("{\n\"ttl_s\": \"x\"}")["detail"].to_string();
        assert!(detail.contains("line 2 column"), "{detail}");
    }
}
