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
            ),
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
