//! Server-Sent Events and long-poll: a subscriber gets the snapshot or the changes after its
//! cursor, then live events. One that falls behind the node's ring while it keeps reading
//! catches up from the document's history page by page, every transition its own event; one
//! that was away (its connection kept it waiting, see [`super::pace`]) catches up as a
//! resuming client does: every transition up to the bound, beyond it each record once, saying
//! what it folds.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use serde_json::json;
use statusmesh_crdt::{Cursor, Delivery, Name};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::OwnedSemaphorePermit;

use super::error::{ApiError, JsonQuery};
use super::limits::Limits;
use super::pace::{Away, Paced};
use super::HttpState;
use crate::driver::{NodeHandle, Published, Subscription};

/// What clients are told to wait before reconnecting (1 s), sent before the first event.
const SSE_RETRY_LINE: &str = "retry: 1000\n";

/// Comment lines on idle streams keep proxies from closing them.
const SSE_HEARTBEAT: Duration = Duration::from_secs(15);

#[derive(Debug, Deserialize)]
pub(crate) struct EventsQuery {
    service: Option<String>,
    region: Option<String>,
    last_event_id: Option<String>,
    /// `state`: a resuming client wants each record's latest value, not every transition.
    coalesce: Option<String>,
}

impl EventsQuery {
    /// Checks the filters; the cursor to resume from: the `Last-Event-ID` header's, else the
    /// query's.
    pub(crate) fn resume(&self, last_event_id: Option<&str>) -> Result<Option<Cursor>, ApiError> {
        check_filters(self.service.as_deref(), self.region.as_deref())?;
        let text = last_event_id.or(self.last_event_id.as_deref());
        decode_cursor("last_event_id", text)
    }

    pub(crate) fn delivery(&self) -> Result<Delivery, ApiError> {
        delivery(self.coalesce.as_deref())
    }
}

/// `?coalesce=`: `state` for the latest value of each record, `none` (the default) for every
/// transition.
fn delivery(coalesce: Option<&str>) -> Result<Delivery, ApiError> {
    match coalesce {
        None | Some("none") => Ok(Delivery::Every),
        Some("state") => Ok(Delivery::StateOnly),
        Some(other) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            Some("coalesce"),
            format!(
                "coalesce {:?} is neither \"state\" nor \"none\"",
                other.chars().take(64).collect::<String>()
            ),
        )),
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

/// The client's address when the server was started with connect info (the node is).
fn client_address(extensions: &axum::http::Extensions) -> Option<std::net::IpAddr> {
    extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip())
}

pub(super) async fn get_events(
    State(state): State<HttpState>,
    JsonQuery(query): JsonQuery<EventsQuery>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let stream =
        open_event_stream(state, query, client_address(&extensions), last_event_id).await?;
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
    ("x-content-type-options", "nosniff"),
];

/// Admits a subscriber and opens its stream of SSE frames: the snapshot or the changes after
/// the client's cursor (`Last-Event-ID`, else `?last_event_id=`), then live events. Shared
/// by the axum route and the lean front door ([`super::sse_front`]).
pub(crate) async fn open_event_stream(
    state: HttpState,
    query: EventsQuery,
    client: Option<std::net::IpAddr>,
    last_event_id: Option<&str>,
) -> Result<impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static, ApiError> {
    let HttpState { node, limits, .. } = state;
    let slot = limits.admit_subscriber(client)?;
    let resume = query.resume(last_event_id)?;
    let delivery = query.delivery()?;
    let subscription = node
        .subscribe(resume.clone(), query.service.clone(), delivery)
        .await?;
    let stream = event_stream(
        node,
        limits,
        subscription,
        Filter {
            service: query.service,
            region: query.region,
        },
        Resumed {
            cursor: resume,
            last: None,
            delivery,
        },
    );
    // The slot lives as long as the stream: a gone subscriber frees its place.
    Ok(futures_util::StreamExt::map(stream, move |item| {
        let _held = &slot;
        item
    }))
}

/// What a stream shows: one service, one region, or everything.
struct Filter {
    service: Option<String>,
    region: Option<String>,
}

impl Filter {
    fn keeps(&self, published: &Published) -> bool {
        matches_filter(published, self.service.as_deref(), self.region.as_deref())
    }
}

/// Where a stream is: the cursor it resumed from, the last event it queued (whose id is the
/// cursor after it, decoded only when needed), and how it wants a catch-up.
struct Resumed {
    cursor: Option<Cursor>,
    last: Option<Arc<Published>>,
    delivery: Delivery,
}

impl Resumed {
    /// The cursor after the last event queued, else the one the stream resumed from.
    fn cursor(&self) -> Option<Cursor> {
        self.last
            .as_ref()
            .and_then(|p| Cursor::decode(&p.id).ok())
            .or_else(|| self.cursor.clone())
    }
}

struct StreamState {
    node: NodeHandle,
    limits: Arc<Limits>,
    pending: VecDeque<Arc<Published>>,
    live: tokio::sync::broadcast::Receiver<Arc<Published>>,
    filter: Filter,
    resumed: Resumed,
    sent_retry: bool,
    /// Fires after SSE_HEARTBEAT without a frame sent; reset by each frame.
    heartbeat: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// Whether the connection kept the stream waiting (its reader was away).
    away: Away,
    /// Held while the stream catches up page by page: more pages are due before `live`.
    paging: Option<OwnedSemaphorePermit>,
}

/// The comment sent on idle streams.
const SSE_HEARTBEAT_FRAME: &[u8] = b":heartbeat\n\n";

fn event_stream(
    node: NodeHandle,
    limits: Arc<Limits>,
    subscription: Subscription,
    filter: Filter,
    resumed: Resumed,
) -> impl Stream<Item = Result<Bytes, Infallible>> {
    let away = Away::default();
    let mut state = StreamState {
        node,
        limits,
        pending: VecDeque::new(),
        live: subscription.live,
        filter,
        resumed,
        sent_retry: false,
        heartbeat: Box::pin(tokio::time::sleep(SSE_HEARTBEAT)),
        away: away.clone(),
        paging: None,
    };
    state.queue(subscription.initial.into_iter().map(Arc::new));
    let frames = stream::unfold(state, |mut state| async move {
        let frame = state.next_frame().await?;
        Some((Ok(frame), state))
    });
    Paced::new(frames, away)
}

impl StreamState {
    /// The next frame: a queued event, the next page of a catch-up, a live event or a
    /// heartbeat. `None` when the stream ends (the node stopped).
    async fn next_frame(&mut self) -> Option<Bytes> {
        let state = self;
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
                return Some(frame);
            }
            if state.paging.is_some() {
                // The page is told: the next one, or the live feed once at the end.
                state.catch_up(Delivery::Pages).await?;
                continue;
            }
            let received = tokio::select! {
                received = state.live.recv() => received,
                () = state.heartbeat.as_mut() => {
                    state.rearm_heartbeat();
                    return Some(Bytes::from_static(SSE_HEARTBEAT_FRAME));
                }
            };
            match received {
                // The shared event itself, not a copy: its frame is made once. Kept up with:
                // whatever wait came before did not leave the stream behind.
                Ok(published) => {
                    state.away.take();
                    state.queue([published]);
                }
                Err(RecvError::Lagged(_)) => {
                    // Behind the shared ring: catch up from the last event queued. A reader
                    // that keeps reading is told every transition, page by page (while the
                    // node has room for another paged catch-up); one that was away, as a
                    // reconnecting client: beyond the bound each record once with what it
                    // folds. Never silently.
                    let delivery = state.resumed.delivery;
                    let away = state.away.take();
                    if delivery == Delivery::Every && !away {
                        state.paging = state.limits.admit_paged_catch_up();
                    }
                    let delivery = if state.paging.is_some() {
                        Delivery::Pages
                    } else {
                        delivery
                    };
                    state.catch_up(delivery).await?;
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// Asks the node for what came after the last event queued, and queues it; a page that
    /// is not the last keeps the stream paging, else it follows the new live feed (taken in
    /// the same step as the answer: no gap, no duplicate). `None` when the node stopped.
    async fn catch_up(&mut self, delivery: Delivery) -> Option<()> {
        metrics::counter!(
            "statusmesh_sse_catch_ups_total",
            "node" => self.node.info.id.to_string(),
            "how" => if delivery == Delivery::Pages { "page" } else { "resume" }
        )
        .increment(1);
        let fresh = self
            .node
            .subscribe(self.resumed.cursor(), self.filter.service.clone(), delivery)
            .await
            .ok()?;
        self.live = fresh.live;
        self.queue(fresh.initial.into_iter().map(Arc::new));
        if !fresh.more {
            self.paging = None;
        }
        Some(())
    }

    /// Queues the events this stream shows, and remembers the cursor after the last one
    /// (every event moves it, shown or filtered out).
    fn queue(&mut self, events: impl IntoIterator<Item = Arc<Published>>) {
        for published in events {
            self.resumed.last = Some(Arc::clone(&published));
            if self.filter.keeps(&published) {
                self.pending.push_back(published);
            }
        }
    }

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
    /// As for `/v1/events`.
    coalesce: Option<String>,
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
pub(super) async fn get_poll(
    State(HttpState { node, limits, .. }): State<HttpState>,
    JsonQuery(query): JsonQuery<PollQuery>,
    extensions: axum::http::Extensions,
) -> Result<Response, ApiError> {
    // A waiting poll holds a connection like a stream does.
    let _slot = limits.admit_subscriber(client_address(&extensions))?;
    let (wait_s, resume) = query.validate()?;
    let delivery = delivery(query.coalesce.as_deref())?;
    let Subscription {
        initial, mut live, ..
    } = node
        .subscribe(resume.clone(), query.service.clone(), delivery)
        .await?;
    let keep = |p: &Published| matches_filter(p, query.service.as_deref(), query.region.as_deref());
    let mut events: Vec<Published> = initial.into_iter().filter(|p| keep(p)).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait_s);
    // The cursor after a page that ends before the live feed (its events may be filtered out).
    let mut page_end: Option<String> = None;
    while events.is_empty() {
        match tokio::time::timeout_at(deadline, live.recv()).await {
            Ok(Ok(published)) if keep(&published) => events.push((*published).clone()),
            Ok(Ok(_)) => {}
            Ok(Err(RecvError::Lagged(_))) => {
                // Too far behind the shared ring: the answer is what came after the cursor,
                // from the document, a page of every transition (the next poll asks for
                // the rest); state only when that was asked for.
                let paged = match delivery {
                    Delivery::Every => Delivery::Pages,
                    other => other,
                };
                let fresh = node
                    .subscribe(resume.clone(), query.service.clone(), paged)
                    .await?;
                if fresh.more {
                    page_end = fresh.initial.last().map(|p| p.id.clone());
                }
                events = fresh.initial.into_iter().filter(|p| keep(p)).collect();
                live = fresh.live;
                if page_end.is_some() {
                    break;
                }
            }
            Ok(Err(RecvError::Closed)) => return Err(ApiError::unavailable()),
            Err(_) => break,
        }
    }
    // Whatever else is already there comes along, up to the bound (after a page that ends
    // before the live feed, the next poll asks for the rest).
    while page_end.is_none() && events.len() < POLL_EVENTS_MAX {
        match live.try_recv() {
            Ok(published) if keep(&published) => events.push((*published).clone()),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let cursor = page_end
        .or_else(|| events.last().map(|p| p.id.clone()))
        .or(query.cursor)
        .unwrap_or_default();
    let events: Vec<serde_json::Value> = events
        .iter()
        .map(|p| json!({ "event": p.kind, "id": p.id, "data": p.data }))
        .collect();
    Ok(Json(json!({ "events": events, "cursor": cursor })).into_response())
}
