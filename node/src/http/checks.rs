//! HTTP for regional probe checks.
//!
//! ```text
//! PUT    /v1/checks/{service}/{component}   {"kind", "target", "interval_s"?, "timeout_ms"?,
//!                                            "expect_status"?, "body_contains"?,
//!                                            "degraded_above_ms"?, "failures_before_down"?,
//!                                            "regions"?, "agreement"?: {"down_when"?}}
//! GET    /v1/checks                         every check, with its prober per region
//! GET    /v1/checks/{service}/{component}   one check
//! DELETE /v1/checks/{service}/{component}
//! ```
//!
//! Checks are records of their service's document: they replicate like any write, and each
//! region's prober is chosen by rendezvous over that region's live members (see
//! `crate::probe`). Writes need an operator token (as incidents and overrides do); reads need
//! a valid token too, since a target may be an internal address. Every write takes `?ack=N`.

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use statusmesh_crdt::checks::{Check, CheckSpec};
use statusmesh_crdt::{Name, Put};

use super::error::{parse_json, ApiError, JsonQuery};
use super::records::{author, operator_service};
use super::writes::{authorize, read_body, reply_after_acks, AckQuery};
use super::HttpState;
use crate::driver::{now_ms, ProbePlan, RecordOp};

/// The routes of this module, to merge into the node's router.
pub fn routes() -> Router<HttpState> {
    Router::new().route("/v1/checks", get(get_checks)).route(
        "/v1/checks/{service}/{component}",
        get(get_check).put(put_check).delete(delete_check),
    )
}

fn unprocessable(field: &'static str, detail: String) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        Some(field),
        detail,
    )
}

/// The body validated into a check, its regions against the topology's.
pub(crate) fn check_of(
    body: &[u8],
    topology: &std::collections::BTreeSet<String>,
    author: &str,
    now: u64,
) -> Result<Check, ApiError> {
    let spec: CheckSpec = parse_json(body)?;
    let check = spec.into_check(author, now)?;
    if let Some(unknown) = check
        .regions
        .iter()
        .flatten()
        .find(|r| !topology.contains(r.as_str()))
    {
        return Err(unprocessable(
            "regions",
            format!("region {unknown:?} is not in the topology"),
        ));
    }
    let probing = check.regions.as_ref().map_or(topology.len(), Vec::len);
    if let Some(k) = check.down_when {
        if k as usize > probing {
            return Err(unprocessable(
                "agreement.down_when",
                format!("down_when {k} is more than the {probing} regions probing the check"),
            ));
        }
    }
    Ok(check)
}

async fn put_check(
    State(state): State<HttpState>,
    Path((service, component)): Path<(String, String)>,
    JsonQuery(ack): JsonQuery<AckQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let writer = authorize(&state.node, request.headers())?;
    let service = operator_service(&state.limits, &writer, &service)?;
    let component = Name::parse("component", &component)?;
    let body = read_body(&state.node, request).await?;
    let author = author(&writer);
    let check = check_of(&body, &state.node.info.regions, &author, now_ms())?;
    let op = RecordOp::Put(Put::Check {
        component,
        value: Some(check),
    });
    apply(&state, service, op, &ack).await
}

async fn delete_check(
    State(state): State<HttpState>,
    Path((service, component)): Path<(String, String)>,
    JsonQuery(ack): JsonQuery<AckQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let writer = authorize(&state.node, request.headers())?;
    let service = operator_service(&state.limits, &writer, &service)?;
    let op = RecordOp::Put(Put::Check {
        component: Name::parse("component", &component)?,
        value: None,
    });
    apply(&state, service, op, &ack).await
}

async fn apply(
    state: &HttpState,
    service: Name,
    op: RecordOp,
    ack: &AckQuery,
) -> Result<Response, ApiError> {
    match state.node.record(service, op).await? {
        Ok(reply) => reply_after_acks(&state.node, reply, ack, false).await,
        Err(e) => Err(e.into()),
    }
}

/// One check as listed: where it lives, what it is, and who probes it from each region.
fn listed(plan: &ProbePlan, service: &Name, component: &Name, check: &Check) -> serde_json::Value {
    let regions: Vec<&String> = plan
        .members_by_region
        .keys()
        .filter(|r| check.probed_from(r))
        .collect();
    let probers: serde_json::Map<String, serde_json::Value> = regions
        .iter()
        .map(|r| {
            let prober = plan.prober_of(service.as_str(), component.as_str(), r);
            ((*r).clone(), json!(prober))
        })
        .collect();
    json!({
        "service": service,
        "component": component,
        "check": check,
        "probers": probers,
    })
}

async fn get_checks(
    State(state): State<HttpState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state.node, &headers)?;
    let plan = state.node.probe_plan(None).await?;
    let checks: Vec<serde_json::Value> = plan
        .checks
        .iter()
        .flatten()
        .map(|(service, component, check)| listed(&plan, service, component, check))
        .collect();
    Ok(Json(json!({ "node": plan.me, "checks": checks })).into_response())
}

async fn get_check(
    State(state): State<HttpState>,
    Path((service, component)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state.node, &headers)?;
    let service = Name::parse("service", &service)?;
    let component = Name::parse("component", &component)?;
    let plan = state.node.probe_plan(None).await?;
    match plan
        .checks
        .iter()
        .flatten()
        .find(|(s, c, _)| *s == service && *c == component)
    {
        Some((s, c, check)) => Ok(Json(listed(&plan, s, c, check)).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            Some("component"),
            format!("no check for {service}/{component}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions() -> std::collections::BTreeSet<String> {
        ["eu", "us", "ap"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_region_outside_the_topology_is_refused_by_name() {
        let body = br#"{"kind":"http","target":"http://x","regions":["eu","mars"]}"#;
        let error = check_of(body, &regions(), "ops", 1).expect_err("refused");
        assert_eq!(error.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(error.body()["field"], "regions");
    }

    #[test]
    fn down_when_cannot_exceed_the_regions_probing() {
        let body = br#"{"kind":"http","target":"http://x","agreement":{"down_when":4}}"#;
        let error = check_of(body, &regions(), "ops", 1).expect_err("refused");
        assert_eq!(error.body()["field"], "agreement.down_when");
        let body = br#"{"kind":"http","target":"http://x","agreement":{"down_when":3}}"#;
        assert!(check_of(body, &regions(), "ops", 1).is_ok());
    }

    #[test]
    fn an_unknown_field_is_a_bad_request_naming_it() {
        let body = br#"{"kind":"http","target":"http://x","intervall":3}"#;
        let error = check_of(body, &regions(), "ops", 1).expect_err("refused");
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
    }
}
