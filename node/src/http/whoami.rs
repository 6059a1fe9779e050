//! `GET /v1/whoami`: what the presented bearer token may do, so that the operator page can
//! offer only the actions the node would accept (the node still checks every write).
//!
//! ```text
//! GET /v1/whoami   Authorization: Bearer <token>
//!   → 200 {"name", "scope": {"services", "regions", "operator", "evaluate_only"},
//!          "may": {"status", "operator"}}
//! ```
//!
//! `services` and `regions` are `null` for "any". 401 without a valid token, as a write.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::error::ApiError;
use super::writes::authorize;
use super::HttpState;

/// The routes of this module, to merge into the node's router.
pub fn routes() -> Router<HttpState> {
    Router::new().route("/v1/whoami", get(get_whoami))
}

async fn get_whoami(
    State(HttpState { node, .. }): State<HttpState>,
    request: Request,
) -> Result<Response, ApiError> {
    if !request.headers().contains_key(header::AUTHORIZATION) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            Some("authorization"),
            "GET /v1/whoami needs an Authorization: Bearer <token> header",
        ));
    }
    let token = authorize(&node, request.headers())?;
    let scope = &token.scope;
    Ok(Json(json!({
        "name": token.name,
        "scope": {
            "services": scope.services,
            "regions": scope.regions,
            "operator": scope.operator && !scope.evaluate_only,
            "evaluate_only": scope.evaluate_only,
        },
        "may": {
            "status": !scope.evaluate_only,
            "operator": scope.operator && !scope.evaluate_only,
        },
    }))
    .into_response())
}
