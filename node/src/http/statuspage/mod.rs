//! Statuspage v2's public read API on every node, from local state, so tools written for
//! Atlassian Statuspage (status aggregators, monitoring plugins, the `statuspage.io` npm
//! client) read a statusmesh node by changing only the address.
//!
//! ```text
//! GET /api/v2/summary.json                          page, components, unresolved incidents, maintenances, status
//! GET /api/v2/status.json                           page, status
//! GET /api/v2/components.json                       page, components
//! GET /api/v2/incidents.json                        page, incidents (newest first, at most 50)
//! GET /api/v2/incidents/unresolved.json             page, incidents not resolved
//! GET /api/v2/scheduled-maintenances.json           page, scheduled_maintenances
//! GET /api/v2/scheduled-maintenances/upcoming.json  page, scheduled_maintenances that are scheduled
//! GET /api/v2/scheduled-maintenances/active.json    page, scheduled_maintenances in progress
//! ```
//!
//! Each answer is built from this node's view (the one `GET /v1/status` returns), so it
//! says what this node sees; after convergence every node answers the same objects with the
//! same ids. Field names, types and enum values are Statuspage's. The mapping:
//!
//! - **page**: the cluster. `id` is a hash of the cluster's name, `name` the cluster's name,
//!   `url` is `--page-url` (else `http://` and the request's `Host`), `time_zone` is
//!   `Etc/UTC`, `updated_at` the newest change of a component or an incident (the time of
//!   the request when there is none).
//! - **ids**: 12 characters of `[0-9a-z]`, a hash of the record's kind and its names
//!   ([`ids`]): the same on every node, without coordination, for as long as the record lives.
//! - **times**: ISO 8601 in UTC with milliseconds.
//! - **component groups**: one group per service (`group: true`, `components` lists its
//!   members' ids, `status` the worst of its members'); each component of the service is a
//!   component whose `group_id` is its service's group. Positions follow the names' order.
//! - **per-region observations → one component status** (not one-to-one): a component is
//!   observed by every region, Statuspage has one status per component. The status is the
//!   node's derived status: the worst *fresh* observation of any region, `under_maintenance`
//!   while a maintenance window is open, an operator override on top. One component per
//!   region is not offered: a consumer that wants the regions reads `/v1/status`.
//! - **stale** (not one-to-one): Statuspage has no "unknown". When no region's observation
//!   reaches this node fresh, the component shows the last known (worst stale) status, and
//!   its `description` says it is stale and which regions were last heard; a fresh component's
//!   `description` is `null`. Stale components do not count toward the page's indicator.
//! - **created_at / updated_at of a component**: the oldest and newest observation (or
//!   override) the node holds for it; statusmesh does not record when a component was first
//!   seen once its first observation is overwritten. A component that only a maintenance
//!   window or an incident names takes their start times. A group spans its members.
//! - **status**: the core's indicator (`none`, `minor`, `major`, `critical`, from the worst
//!   fresh component and the open incidents' impact) with Statuspage's descriptions; `none`
//!   while a window is in progress becomes `maintenance`, "Service Under Maintenance".
//! - **incidents**: statusmesh's incidents belong to a service; here they are the page's,
//!   each with the components it names (components no region has observed are left out).
//!   `incidents.json` lists what the node shows: the open incidents and those resolved in
//!   the last 7 days, newest first, at most 50. Statuses and impacts are the same words;
//!   `postmortem` never appears. `monitoring_at` is the first update that moved to
//!   `monitoring`; `started_at` is `created_at`; updates are newest first, with
//!   `affected_components: null` (statusmesh does not record per-update component moves);
//!   `shortlink` points at the node's page.
//! - **scheduled maintenances** (not one-to-one): statusmesh keeps a window (title,
//!   components, start, end), not a timeline. Status is `scheduled` before the start and
//!   `in_progress` inside the window; `verifying` never appears, and ended windows are not
//!   listed (the node's view drops them), so `completed` never appears either. `impact` is
//!   `maintenance`; `created_at`, `updated_at` and `started_at` are the start
//!   (`scheduled_for`); `incident_updates` holds one entry, the window itself.
//!
//! Every answer carries an `ETag` (`If-None-Match` gives 304) and `Cache-Control: no-cache`.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde_json::json;
use statusmesh_crdt::Name;

use super::{json_with_etag, ApiError, HttpState};
use crate::driver::now_ms;

pub mod ids;
pub mod local;
pub mod model;

/// The routes of this module, to merge into the node's router.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/api/v2/summary.json", get(summary))
        .route("/api/v2/status.json", get(status))
        .route("/api/v2/components.json", get(components))
        .route("/api/v2/incidents.json", get(incidents))
        .route("/api/v2/incidents/unresolved.json", get(unresolved))
        .route("/api/v2/scheduled-maintenances.json", get(maintenances))
        .route(
            "/api/v2/scheduled-maintenances/upcoming.json",
            get(upcoming),
        )
        .route("/api/v2/scheduled-maintenances/active.json", get(active))
}

/// The node's view, mapped; and the cursor it reflects.
pub async fn mapped(
    state: &HttpState,
    headers: &HeaderMap,
) -> Result<(model::Mapped, String), ApiError> {
    let (view, cursor) = view(state, None).await?;
    let cluster = &state.node.info.cluster;
    let cx = model::Context {
        page_id: model::page_id(cluster),
        page_url: page_url(state.page_url.as_deref(), state.https, headers),
    };
    Ok((model::map(&view, &cx, cluster, now_ms()), cursor))
}

/// The node's view of every service, or of `service` only, read back; and the cursor it
/// reflects. The view of an unknown service has no services.
pub(crate) async fn view(
    state: &HttpState,
    service: Option<Name>,
) -> Result<(local::View, String), ApiError> {
    let (value, cursor) = state.node.status(service).await?;
    let view = local::View::from_json(value).ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            None,
            "the node's status view did not have the expected shape",
        )
    })?;
    Ok((view, cursor))
}

/// `--page-url` without its trailing `/`, else `http://` (`https://` when the node serves
/// HTTPS) and the request's `Host` (a host that is not a plain host name and port is not
/// echoed).
pub(crate) fn page_url(configured: Option<&str>, https: bool, headers: &HeaderMap) -> String {
    if let Some(url) = configured {
        return url.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    let scheme = if https { "https" } else { "http" };
    format!("{scheme}://{host}")
}

async fn answer(
    state: HttpState,
    headers: HeaderMap,
    build: impl FnOnce(model::Mapped) -> serde_json::Value,
) -> Result<Response, ApiError> {
    let (mapped, cursor) = mapped(&state, &headers).await?;
    Ok(json_with_etag(&headers, &build(mapped), &cursor))
}

fn unresolved_of(incidents: Vec<model::Incident>) -> Vec<model::Incident> {
    incidents
        .into_iter()
        .filter(|i| i.status != "resolved")
        .collect()
}

fn with_status(maintenances: Vec<model::Incident>, status: &str) -> Vec<model::Incident> {
    maintenances
        .into_iter()
        .filter(|m| m.status == status)
        .collect()
}

async fn summary(State(state): State<HttpState>, headers: HeaderMap) -> Result<Response, ApiError> {
    answer(state, headers, |m| {
        json!({
            "page": m.page,
            "components": m.components,
            "incidents": unresolved_of(m.incidents),
            "scheduled_maintenances": m.maintenances,
            "status": m.status,
        })
    })
    .await
}

async fn status(State(state): State<HttpState>, headers: HeaderMap) -> Result<Response, ApiError> {
    answer(
        state,
        headers,
        |m| json!({ "page": m.page, "status": m.status }),
    )
    .await
}

async fn components(
    State(state): State<HttpState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    answer(
        state,
        headers,
        |m| json!({ "page": m.page, "components": m.components }),
    )
    .await
}

async fn incidents(
    State(state): State<HttpState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    answer(state, headers, |m| {
        let mut all = m.incidents;
        all.truncate(model::INCIDENTS_MAX);
        json!({ "page": m.page, "incidents": all })
    })
    .await
}

async fn unresolved(
    State(state): State<HttpState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    answer(
        state,
        headers,
        |m| json!({ "page": m.page, "incidents": unresolved_of(m.incidents) }),
    )
    .await
}

async fn maintenances(
    State(state): State<HttpState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    answer(
        state,
        headers,
        |m| json!({ "page": m.page, "scheduled_maintenances": m.maintenances }),
    )
    .await
}

async fn upcoming(
    State(state): State<HttpState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    answer(state, headers, |m| {
        json!({ "page": m.page, "scheduled_maintenances": with_status(m.maintenances, "scheduled") })
    })
    .await
}

async fn active(State(state): State<HttpState>, headers: HeaderMap) -> Result<Response, ApiError> {
    answer(state, headers, |m| {
        json!({ "page": m.page, "scheduled_maintenances": with_status(m.maintenances, "in_progress") })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_url_is_the_flag_else_the_host_when_it_is_a_plain_host() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            page_url(Some("https://status.example.com/"), false, &headers),
            "https://status.example.com"
        );
        assert_eq!(page_url(None, false, &headers), "http://localhost");
        headers.insert(header::HOST, "127.0.0.1:8101".parse().expect("host"));
        assert_eq!(page_url(None, false, &headers), "http://127.0.0.1:8101");
        assert_eq!(page_url(None, true, &headers), "https://127.0.0.1:8101");
        headers.insert(header::HOST, "evil\"><x".parse().expect("host"));
        assert_eq!(page_url(None, false, &headers), "http://localhost");
    }
}
