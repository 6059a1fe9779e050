//! `POST /v1/leave`: a joined node leaves the mesh and stops (`statusmesh leave`). It needs
//! an operator token; a node listed in regions.toml is refused with 409 (it is a voter).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::error::ApiError;
use super::writes::authorize;
use super::HttpState;

pub(crate) async fn post_leave(
    State(HttpState { node, .. }): State<HttpState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = authorize(&node, &headers)?;
    if !token.scope.operator || token.scope.evaluate_only {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            Some("authorization"),
            format!(
                "token {} may not make a node leave (an operator token may)",
                token.name
            ),
        ));
    }
    match node.leave().await? {
        Ok(()) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "node": node.info.id, "leaving": true })),
        )
            .into_response()),
        Err(reason) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            Some("node"),
            reason,
        )),
    }
}
