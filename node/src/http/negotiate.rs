//! Content negotiation: what a request will take (`Accept`, else 406) and what its body may
//! be (`Content-Type`, else 415), both answered with the JSON error shape.
//!
//! `Accept` is checked by [`negotiate`], a route layer (after routing, before the method is
//! dispatched): unknown paths stay 404, and what a path produces is [`produces`], JSON unless
//! listed there (a route that produces anything else must be listed). Errors are JSON
//! whatever the `Accept` (RFC 9110 lets an error disregard it). The lean SSE door
//! ([`super::sse_front`]) calls [`check_accept`] itself.
//!
//! `Accept` (RFC 9110 §12.5.1) is parsed and matched by `headers-accept`: ranges (`*/*`,
//! `text/*`), q-values, the most specific range decides, `q=0` excludes, several `Accept`
//! lines are one list. No `Accept` means anything; so does an empty one or one that does not
//! parse (Java's default `*; q=.2`, a bare `json`): refusing a client over a malformed
//! preference helps nobody, and the response is what the path produces either way.
//!
//! `Content-Type` is checked by [`check_content_type`] where a handler reads a body
//! (`writes::read_body`), so only requests whose content is used are judged, and after their
//! method (405) and token (401, 403). Every body here is JSON. Accepted: none (JSON is
//! assumed), `application/json`, `application/*+json`, and
//! `application/x-www-form-urlencoded`, which is what `curl -d` sends when the user names no
//! type (the README's examples use it); a `charset` other than UTF-8 is refused (JSON is
//! UTF-8). Anything else (`text/xml`, `text/plain`, `multipart/form-data`, two
//! `Content-Type` lines) is a 415 whose `field` is `content-type` and whose `detail` lists
//! the accepted set, which [`negotiate`] repeats in the response's `Accept` header (RFC 9110
//! §12.5.1).
//!
//! A request refused on several counts gets the first of: 404, 406, 405, 401/403, 415, then
//! the body's own (408, 413, 400, 422). 406 before 405 because the layer runs before the
//! method is dispatched; axum offers no per-path layer that sees only the matched methods.

use std::str::FromStr as _;
use std::sync::LazyLock;

use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use headers_accept::Accept;
use mediatype::{names, MediaType, Name, ReadParams as _};

use super::error::ApiError;

/// `application/json`: every route not listed in [`produces`].
pub static JSON: MediaType<'static> = MediaType::new(names::APPLICATION, names::JSON);
/// `text/event-stream`: `/v1/events`.
pub static EVENT_STREAM: MediaType<'static> = MediaType::new(names::TEXT, names::EVENT_STREAM);
/// `text/html`: the status page.
pub static HTML: MediaType<'static> = MediaType::new(names::TEXT, names::HTML);
/// `text/javascript`: the page's script.
pub static JAVASCRIPT: MediaType<'static> = MediaType::new(names::TEXT, names::JAVASCRIPT);
/// `text/css`: the page's style sheet.
pub static CSS: MediaType<'static> = MediaType::new(names::TEXT, names::CSS);
/// `text/plain; version=0.0.4`: Prometheus' text format (`/metrics`); the version lets a
/// scraper's `text/plain;version=0.0.4` match, and a plain `text/plain` matches too.
pub static PROMETHEUS_TEXT: LazyLock<MediaType<'static>> =
    LazyLock::new(|| MediaType::parse("text/plain; version=0.0.4").expect("a valid media type"));

/// `image/svg+xml`: the badges' `.svg`.
pub static SVG: MediaType<'static> =
    MediaType::from_parts(names::IMAGE, names::SVG, Some(names::XML), &[]);

/// `application/atom+xml`: `/feeds/incidents.atom`.
pub static ATOM: MediaType<'static> = MediaType::from_parts(
    names::APPLICATION,
    Name::new_unchecked("atom"),
    Some(names::XML),
    &[],
);
/// `application/rss+xml`: `/feeds/incidents.rss`.
pub static RSS: MediaType<'static> = MediaType::from_parts(
    names::APPLICATION,
    Name::new_unchecked("rss"),
    Some(names::XML),
    &[],
);
/// `application/xml`, `text/xml`: what some feed readers ask for instead of a feed's own type.
pub static APPLICATION_XML: MediaType<'static> = MediaType::new(names::APPLICATION, names::XML);
pub static TEXT_XML: MediaType<'static> = MediaType::new(names::TEXT, names::XML);

/// What the route at `path` (its matched template) produces when it succeeds.
pub fn produces(path: &str) -> &'static MediaType<'static> {
    match path {
        "/feeds/incidents.atom" => &ATOM,
        "/feeds/incidents.rss" => &RSS,
        "/" => &HTML,
        "/page.js" | "/history.js" | "/operator.js" | "/failover.js" => &JAVASCRIPT,
        "/page.css" => &CSS,
        "/metrics" => &PROMETHEUS_TEXT,
        "/v1/events" => &EVENT_STREAM,
        _ => &JSON,
    }
}

/// The types besides [`produces`]' that the route at `path` also answers to. A feed is
/// served to a reader that asks for either feed type or for generic XML (readers send one
/// `Accept` for every feed they follow, and some name only `application/xml` or
/// `text/xml`); the response keeps the feed's own `Content-Type`.
pub fn also_admitted(path: &str) -> &'static [&'static MediaType<'static>] {
    static FEED: [&MediaType<'static>; 4] = [&ATOM, &RSS, &APPLICATION_XML, &TEXT_XML];
    match path {
        "/feeds/incidents.atom" | "/feeds/incidents.rss" => &FEED,
        _ => &[],
    }
}

/// What a request for `uri_path` routed to `template` produces: [`produces`], except that a
/// badge route produces what its file extension names (`.svg` or `.json`).
pub fn produces_for(template: &str, uri_path: &str) -> &'static MediaType<'static> {
    if super::badge::TEMPLATES.contains(&template) && uri_path.ends_with(".svg") {
        return &SVG;
    }
    produces(template)
}

/// What a request body may be declared as, for the 415's `detail` and `Accept` header.
pub const ACCEPTED_CONTENT_TYPES: &str =
    "application/json, application/*+json, application/x-www-form-urlencoded";

/// The longest header value echoed back in an error's `detail`, in characters.
const ECHO_CHARS_MAX: usize = 64;

/// The route layer: 406 when `Accept` admits nothing the route produces; otherwise the
/// route runs, and a 415 it answers gets the `Accept` header of what bodies may be.
pub(crate) async fn negotiate(request: Request, next: Next) -> Response {
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| request.uri().path(), MatchedPath::as_str);
    let produced = produces_for(path, request.uri().path());
    if let Err(error) = check_accept_any(request.headers(), produced, also_admitted(path)) {
        return error.into_response();
    }
    let mut response = next.run(request).await;
    if response.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE {
        response
            .headers_mut()
            .entry(header::ACCEPT)
            .or_insert(HeaderValue::from_static(ACCEPTED_CONTENT_TYPES));
    }
    response
}

/// Ok when the request's `Accept` admits `produced` (or says nothing usable); a 406 naming
/// the `accept` field and what the path produces otherwise.
pub fn check_accept(headers: &HeaderMap, produced: &MediaType<'_>) -> Result<(), ApiError> {
    check_accept_any(headers, produced, &[])
}

/// [`check_accept`], where `Accept` may also admit one of `also` (the 406 names `produced`).
pub fn check_accept_any<'m>(
    headers: &HeaderMap,
    produced: &MediaType<'m>,
    also: &[&MediaType<'m>],
) -> Result<(), ApiError> {
    let mut values = headers.get_all(header::ACCEPT).iter().peekable();
    if values.peek().is_none() {
        return Ok(());
    }
    let mut joined = String::new();
    for value in values {
        // Opaque bytes are not a preference anyone can state.
        let Ok(text) = value.to_str() else {
            return Ok(());
        };
        if !text.trim().is_empty() {
            if !joined.is_empty() {
                joined.push_str(", ");
            }
            joined.push_str(text);
        }
    }
    if joined.is_empty() {
        return Ok(());
    }
    let Ok(accept) = Accept::from_str(&joined) else {
        return Ok(());
    };
    if accept
        .negotiate(std::iter::once(produced).chain(also.iter().copied()))
        .is_some()
    {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::NOT_ACCEPTABLE,
        "not_acceptable",
        Some("accept"),
        format!(
            "this path produces {produced}, which Accept {:?} does not admit",
            echo(&joined)
        ),
    ))
}

/// Ok when a request body's declared type is one the body may be (see the module doc); a
/// 415 naming the `content-type` field and the accepted set otherwise.
pub fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let values: Vec<&HeaderValue> = headers.get_all(header::CONTENT_TYPE).iter().collect();
    let refuse = |why: String| {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            Some("content-type"),
            format!("{why}; request bodies are JSON: send one of {ACCEPTED_CONTENT_TYPES}, or no Content-Type"),
        ))
    };
    let value = match values.as_slice() {
        [] => return Ok(()),
        [value] => *value,
        more => return refuse(format!("{} Content-Type lines, not one", more.len())),
    };
    let Ok(text) = value.to_str() else {
        return refuse("the Content-Type holds bytes outside visible ASCII".to_owned());
    };
    let Ok(declared) = MediaType::parse(text.trim()) else {
        return refuse(format!("Content-Type {:?} is not a media type", echo(text)));
    };
    let form = Name::new_unchecked("x-www-form-urlencoded");
    let json = declared.ty == names::APPLICATION
        && (declared.subty == names::JSON || declared.suffix == Some(names::JSON));
    let curl_form = declared.ty == names::APPLICATION && declared.subty == form;
    if !(json || curl_form) {
        return refuse(format!("Content-Type {:?} is not accepted", echo(text)));
    }
    match declared.get_param(names::CHARSET) {
        Some(charset) if !charset.unquoted_str().eq_ignore_ascii_case("utf-8") => refuse(format!(
            "charset {:?} is not accepted (JSON is UTF-8)",
            echo(charset.as_str())
        )),
        _ => Ok(()),
    }
}

/// At most [`ECHO_CHARS_MAX`] characters of a client's header value, for a `detail`.
fn echo(text: &str) -> String {
    text.chars().take(ECHO_CHARS_MAX).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: header::HeaderName, values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(&name, HeaderValue::from_str(value).expect("header value"));
        }
        headers
    }

    fn admits(accept: &[&str], produced: &MediaType<'_>) -> bool {
        check_accept(&with(header::ACCEPT, accept), produced).is_ok()
    }

    #[test]
    fn no_accept_wildcards_and_the_exact_type_are_admitted() {
        assert!(admits(&[], &JSON));
        assert!(admits(&["*/*"], &JSON));
        assert!(admits(&["application/*"], &JSON));
        assert!(admits(&["application/json"], &JSON));
        assert!(admits(&["APPLICATION/JSON"], &JSON));
        assert!(admits(&["text/event-stream"], &EVENT_STREAM));
        // What browsers send for a page, and what fetch() sends.
        let navigation =
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8";
        assert!(admits(&[navigation], &HTML));
        assert!(admits(&[navigation], &JSON));
        // Prometheus' scrape header, and a scraper that names only the text format.
        let scrape = "application/openmetrics-text;version=1.0.0;q=0.6,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert!(admits(&[scrape], &PROMETHEUS_TEXT));
        assert!(admits(&["text/plain;version=0.0.4"], &PROMETHEUS_TEXT));
        assert!(admits(&["text/plain"], &PROMETHEUS_TEXT));
    }

    #[test]
    fn an_accept_that_admits_nothing_produced_is_a_406_naming_the_field() {
        let error = check_accept(&with(header::ACCEPT, &["text/html"]), &JSON).expect_err("406");
        assert_eq!(error.status(), StatusCode::NOT_ACCEPTABLE);
        let body = error.body();
        assert_eq!(body["error"], "not_acceptable");
        assert_eq!(body["field"], "accept");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("application/json"), "{detail}");
        assert!(!admits(&["application/xml"], &JSON));
        assert!(!admits(&["text/*"], &JSON));
        assert!(!admits(&["application/json"], &EVENT_STREAM));
        assert!(!admits(&["text/plain;version=1.0.0"], &PROMETHEUS_TEXT));
    }

    #[test]
    fn q_zero_excludes_and_the_most_specific_range_decides() {
        assert!(!admits(&["*/*;q=0"], &JSON));
        assert!(!admits(&["application/json;q=0, */*"], &JSON));
        assert!(!admits(&["application/json;q=0.0"], &JSON));
        assert!(admits(&["*/*;q=0, application/json;q=0.1"], &JSON));
        assert!(admits(&["text/html;q=0.9, application/*;q=0.001"], &JSON));
        // Several Accept lines are one list.
        assert!(admits(&["text/html", "application/json"], &JSON));
        assert!(!admits(&["text/html", "*/*;q=0"], &JSON));
    }

    #[test]
    fn an_empty_or_malformed_accept_means_anything() {
        assert!(admits(&[""], &JSON));
        assert!(admits(&["json"], &JSON));
        assert!(admits(
            &["text/html, image/gif, image/jpeg, *; q=.2, */*; q=.2"],
            &JSON
        ));
        let mut opaque = HeaderMap::new();
        opaque.insert(
            header::ACCEPT,
            HeaderValue::from_bytes(b"text/\xff").expect("opaque value"),
        );
        assert!(check_accept(&opaque, &JSON).is_ok());
    }

    fn content(values: &[&str]) -> Result<(), ApiError> {
        check_content_type(&with(header::CONTENT_TYPE, values))
    }

    #[test]
    fn json_its_suffix_curl_forms_and_no_type_are_accepted() {
        assert!(content(&[]).is_ok());
        assert!(content(&["application/json"]).is_ok());
        assert!(content(&["Application/JSON; charset=UTF-8"]).is_ok());
        assert!(content(&["application/json; charset=\"utf-8\""]).is_ok());
        assert!(content(&["application/merge-patch+json"]).is_ok());
        assert!(content(&["application/vnd.statusmesh.v1+json"]).is_ok());
        assert!(content(&["application/x-www-form-urlencoded"]).is_ok());
    }

    #[test]
    fn other_types_are_a_415_naming_the_field_and_the_accepted_set() {
        for refused in [
            &["text/xml"][..],
            &["text/plain"],
            &["multipart/form-data; boundary=x"],
            &["application/xml"],
            &["text/json"],
            &["json"],
            &["application/json; charset=latin1"],
            &["application/json", "text/html"],
        ] {
            let error = content(refused).expect_err("415");
            assert_eq!(
                error.status(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{refused:?}"
            );
            let body = error.body();
            assert_eq!(body["error"], "unsupported_media_type");
            assert_eq!(body["field"], "content-type");
            let detail = body["detail"].as_str().unwrap_or_default();
            assert!(detail.contains(ACCEPTED_CONTENT_TYPES), "{detail}");
        }
    }

    #[test]
    fn only_the_listed_paths_produce_something_other_than_json() {
        assert_eq!(produces("/v1/events"), &EVENT_STREAM);
        assert_eq!(produces("/"), &HTML);
        assert_eq!(produces("/metrics"), &*PROMETHEUS_TEXT);
        assert_eq!(produces("/v1/status/{service}"), &JSON);
        assert_eq!(produces("/v1/poll"), &JSON);
    }
}
