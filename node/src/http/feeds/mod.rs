//! Incident feeds: the incidents and maintenance windows of every service (or of one, with
//! `?service=NAME`) as Atom 1.0 and RSS 2.0, for feed readers and chat integrations that
//! follow a status page without speaking its API.
//!
//! ```text
//! GET /feeds/incidents.atom[?service=NAME]   application/atom+xml (RFC 4287)
//! GET /feeds/incidents.rss[?service=NAME]    application/rss+xml (RSS 2.0)
//! ```
//!
//! This module owns what a feed says: which records become entries, their ids, titles,
//! times and order, the bounds, and the HTTP answer (content type, `ETag`, 304); [`atom`]
//! and [`rss`] only write it out, through [`xml`]'s escaping. The records come from the
//! node's view, read as the Statuspage API reads it ([`super::statuspage::view`]), so the
//! feeds list what `GET /v1/status` shows: open incidents, those resolved in the last 7
//! days, and maintenance windows that are active or still to come.
//!
//! - **Entries**: one per incident update (a reader notices each new update as a new
//!   item), and one per maintenance window.
//! - **Ids** (Atom `id`, RSS `guid isPermaLink="false"`) are URNs of names only, never of
//!   the address a request came to, so they are the same on every node and across restarts:
//!   `urn:statusmesh:<cluster>:incident:<service>:<incident>:<update-key>` (the update's key
//!   in the document, written once by the node that made it) and
//!   `urn:statusmesh:<cluster>:maintenance:<service>:<window>:<starts_at_ms>-<ends_at_ms>`
//!   (a rescheduled window is a new entry, so readers hear of the new times).
//! - **Times** come from the records: an update's `at_ms`; a window's start (statusmesh
//!   does not record when a window was written); the feed's `updated` is its newest entry's
//!   (the Unix epoch for an empty feed). Nothing depends on the clock of the request, so a
//!   feed's bytes change only when its records do.
//! - **Order and bounds**: newest first (ties by id). At most [`RECORDS_MAX`] records (the
//!   incidents and windows whose newest time is latest), and at most [`ENTRIES_MAX`] entries
//!   in all.
//! - **Links** point at the page (`--page-url`, else `http://` and the request's `Host`, as
//!   the Statuspage API's `page.url`), with the same fragment as Statuspage's `shortlink`.
//! - **Text**: every user string is XML-escaped; Atom carries update texts as `type="text"`,
//!   RSS descriptions as HTML that shows the text literally.
//! - **Caching**: a strong `ETag` (SHA-256 of the body), `If-None-Match` → 304,
//!   `Cache-Control: no-cache`.
//!
//! A bad `service` is a 422, an unknown one a 404, both the JSON error naming `service`.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use statusmesh_crdt::{IncidentStatus, Name};

use super::error::JsonQuery;
use super::statuspage::{self, local, model};
use super::{if_none_match, ApiError, HttpState};

pub mod atom;
pub mod rss;
pub mod xml;

/// The Atom feed's path.
pub const ATOM_PATH: &str = "/feeds/incidents.atom";
/// The RSS feed's path.
pub const RSS_PATH: &str = "/feeds/incidents.rss";

/// Most records (incidents and maintenance windows) one feed lists, newest first: as many
/// incidents as Statuspage's `incidents.json`.
pub const RECORDS_MAX: usize = model::INCIDENTS_MAX;
/// Most entries one feed holds, newest first (an incident may hold up to 1000 updates).
pub const ENTRIES_MAX: usize = 250;

/// The routes of this module, to merge into the node's router.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route(ATOM_PATH, get(get_atom))
        .route(RSS_PATH, get(get_rss))
}

/// What a feed URL may ask. Unknown parameters are ignored: feed readers and link
/// shorteners append their own (`utm_source=…`).
#[derive(Debug, Deserialize)]
struct FeedQuery {
    service: Option<String>,
}

/// A feed, whatever its format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feed {
    /// A URN of the cluster (and service): see [`feed_id`].
    pub id: String,
    pub title: String,
    pub description: String,
    /// The page, without a trailing `/`.
    pub page_url: String,
    /// This feed's own address (Atom `rel="self"`).
    pub self_url: String,
    /// Who publishes the feed: the cluster.
    pub author: String,
    /// The newest entry's time (0 for an empty feed).
    pub updated_ms: u64,
    /// Newest first.
    pub entries: Vec<Entry>,
}

/// One entry (Atom) or item (RSS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// A URN of names only: see [`update_id`] and [`maintenance_entry_id`].
    pub id: String,
    pub title: String,
    pub link: String,
    pub updated_ms: u64,
    pub author: String,
    /// The service it belongs to (a category).
    pub service: String,
    /// Plain text.
    pub content: String,
}

/// The format a feed is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Atom,
    Rss,
}

impl Format {
    fn path(self) -> &'static str {
        match self {
            Format::Atom => ATOM_PATH,
            Format::Rss => RSS_PATH,
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Atom => "application/atom+xml; charset=utf-8",
            Format::Rss => "application/rss+xml; charset=utf-8",
        }
    }
}

async fn get_atom(
    State(state): State<HttpState>,
    JsonQuery(query): JsonQuery<FeedQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    answer(&state, query, &headers, Format::Atom).await
}

async fn get_rss(
    State(state): State<HttpState>,
    JsonQuery(query): JsonQuery<FeedQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    answer(&state, query, &headers, Format::Rss).await
}

async fn answer(
    state: &HttpState,
    query: FeedQuery,
    headers: &HeaderMap,
    format: Format,
) -> Result<Response, ApiError> {
    let service = query
        .service
        .as_deref()
        .map(|s| Name::parse("service", s))
        .transpose()?;
    let (view, _) = statuspage::view(state, service.clone()).await?;
    if let Some(service) = &service {
        if view.service(service.as_str()).is_none() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                Some("service"),
                format!(
                    "no status has been written for service {:?}",
                    service.as_str()
                ),
            ));
        }
    }
    let page_url = statuspage::page_url(state.page_url.as_deref(), state.https, headers);
    let self_url = match &service {
        Some(s) => format!("{page_url}{}?service={s}", format.path()),
        None => format!("{page_url}{}", format.path()),
    };
    let feed = build(
        &view,
        &state.node.info.cluster,
        service.as_ref().map(Name::as_str),
        &page_url,
        self_url,
    );
    let body = match format {
        Format::Atom => atom::render(&feed),
        Format::Rss => rss::render(&feed),
    };
    Ok(respond(headers, body, format.content_type()))
}

/// The body with a strong `ETag` over its bytes; 304 when the client already has it.
fn respond(headers: &HeaderMap, body: String, content_type: &'static str) -> Response {
    let digest = Sha256::digest(body.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    let etag = format!("\"{hex}\"");
    let cache = [
        (header::ETAG, etag.clone()),
        (header::CACHE_CONTROL, "no-cache".to_owned()),
    ];
    if if_none_match(headers, &etag) {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (cache, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The feed of `view` (all its services, or the one named `service`).
pub fn build(
    view: &local::View,
    cluster: &str,
    service: Option<&str>,
    page_url: &str,
    self_url: String,
) -> Feed {
    // Each record with its entries; a record's newest time ranks it against the others.
    let mut records: Vec<(u64, Vec<Entry>)> = Vec::new();
    for s in view
        .services
        .iter()
        .filter(|s| service.is_none_or(|name| s.name == name))
    {
        for incident in &s.incidents {
            let entries = incident_entries(cluster, &s.name, incident, page_url);
            let newest = entries.iter().map(|e| e.updated_ms).max();
            records.push((newest.unwrap_or(incident.opened_at_ms), entries));
        }
        for window in &s.scheduled_maintenances {
            let entry = maintenance_entry(cluster, &s.name, window, page_url);
            records.push((entry.updated_ms, vec![entry]));
        }
    }
    records.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut entries: Vec<Entry> = records
        .into_iter()
        .take(RECORDS_MAX)
        .flat_map(|(_, entries)| entries)
        .collect();
    entries.sort_by(|a, b| b.updated_ms.cmp(&a.updated_ms).then(a.id.cmp(&b.id)));
    entries.truncate(ENTRIES_MAX);
    let (title, description) = match service {
        Some(s) => (
            format!("{cluster} status: {s}"),
            format!("Incidents and maintenance of {s} on {cluster}"),
        ),
        None => (
            format!("{cluster} status"),
            format!("Incidents and maintenance of every service on {cluster}"),
        ),
    };
    Feed {
        id: feed_id(cluster, service),
        title,
        description,
        page_url: page_url.to_owned(),
        self_url,
        author: cluster.to_owned(),
        updated_ms: entries.first().map_or(0, |e| e.updated_ms),
        entries,
    }
}

/// One entry per update of `incident`.
fn incident_entries(
    cluster: &str,
    service: &str,
    incident: &local::Incident,
    page_url: &str,
) -> Vec<Entry> {
    let link = model::shortlink(
        page_url,
        "incident",
        &model::incident_id(service, &incident.id),
    );
    incident
        .updates
        .iter()
        .map(|u| Entry {
            id: update_id(cluster, service, &incident.id, &u.key),
            title: format!("{service}: {} ({})", incident.title, status_words(u.status)),
            link: link.clone(),
            updated_ms: u.at_ms,
            author: u.author.clone(),
            service: service.to_owned(),
            content: u.text.clone(),
        })
        .collect()
}

/// The entry of one maintenance window.
fn maintenance_entry(
    cluster: &str,
    service: &str,
    window: &local::Maintenance,
    page_url: &str,
) -> Entry {
    let components = if window.components.is_empty() {
        "none".to_owned()
    } else {
        window.components.join(", ")
    };
    Entry {
        id: maintenance_entry_id(
            cluster,
            service,
            &window.id,
            window.starts_at_ms,
            window.ends_at_ms,
        ),
        title: format!("{service}: maintenance: {}", window.title),
        link: model::shortlink(
            page_url,
            "maintenance",
            &model::maintenance_id(service, &window.id),
        ),
        updated_ms: window.starts_at_ms,
        // Windows written before authors were recorded have none: the cluster wrote them.
        author: if window.author.is_empty() {
            cluster.to_owned()
        } else {
            window.author.clone()
        },
        service: service.to_owned(),
        content: format!(
            "{}\n\nScheduled from {} to {} (UTC). Components: {components}.",
            window.title,
            xml::rfc3339(window.starts_at_ms),
            xml::rfc3339(window.ends_at_ms),
        ),
    }
}

/// How an update's status reads in a title.
fn status_words(status: IncidentStatus) -> &'static str {
    match status {
        IncidentStatus::Investigating => "Investigating",
        IncidentStatus::Identified => "Identified",
        IncidentStatus::Monitoring => "Monitoring",
        IncidentStatus::Resolved => "Resolved",
    }
}

/// The id of the feed of `cluster` (of one `service`, or of all).
pub fn feed_id(cluster: &str, service: Option<&str>) -> String {
    match service {
        Some(s) => urn(&[cluster, "feed", "incidents", s]),
        None => urn(&[cluster, "feed", "incidents"]),
    }
}

/// The id of the entry of update `key` of `incident` of `service`.
pub fn update_id(cluster: &str, service: &str, incident: &str, key: &str) -> String {
    urn(&[cluster, "incident", service, incident, key])
}

/// The id of the entry of maintenance `window` of `service` with these times.
pub fn maintenance_entry_id(
    cluster: &str,
    service: &str,
    window: &str,
    starts_at_ms: u64,
    ends_at_ms: u64,
) -> String {
    let times = format!("{starts_at_ms}-{ends_at_ms}");
    urn(&[cluster, "maintenance", service, window, &times])
}

/// `urn:statusmesh:` and `parts` joined by `:`, each part percent-encoded outside RFC 3986's
/// unreserved characters, so no part can contain a separator and any cluster name fits.
fn urn(parts: &[&str]) -> String {
    let mut out = String::from("urn:statusmesh");
    for part in parts {
        out.push(':');
        for b in part.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
