//! Cross-origin reads (CORS), so a status page on another domain can read and follow any
//! node: the Statuspage API, `/v1/status`, SSE (`/v1/events`, on the lean door too), badges.
//!
//! - **Reads** (`GET`, `HEAD`) are allowed from `--cors-origins`: `*` (the default) allows
//!   every origin, else a comma-separated list of origins (`https://status.example.com`);
//!   `none` allows none. An allowed origin is echoed in `Access-Control-Allow-Origin` with
//!   `Vary: Origin` (one answer fits every allowed origin, and caches keep them apart).
//! - **Writes** (`PUT`, `POST`, `PATCH`, `DELETE`) get CORS only from origins listed in
//!   `--cors-write-origins` (none by default). A write that carries an `Origin` header which
//!   is neither listed nor the node's own (`Host`) is refused with 403 before it runs, field
//!   `origin`: a browser cannot be used to write from another site even where the answer
//!   would be unreadable. Clients that send no `Origin` (curl, the CLI, Alertmanager) are
//!   unaffected.
//! - **Preflight** (`OPTIONS` with `Access-Control-Request-Method`) is answered at once
//!   (200, no body) by tower-http's layer: for an allowed origin with `Access-Control-Allow-Origin`,
//!   `-Methods` (`GET, HEAD, PUT, POST, PATCH, DELETE`), `-Headers` (`authorization`,
//!   `content-type`, `last-event-id`, `if-none-match`, `accept`) and `-Max-Age` (600 s); for a
//!   refused one without `Access-Control-Allow-Origin`, so the browser refuses the request.
//!   The method asked for decides which list applies.
//! - Responses expose `ETag`, `X-Statusmesh-Cursor`, `Retry-After` and `Location`. No
//!   credentials (cookies) are ever allowed: writes carry a bearer token.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, request::Parts, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::error::ApiError;

/// Most origins one list may name.
pub const ORIGINS_MAX: usize = 64;
/// How long a browser may keep a preflight's answer.
pub const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// Which origins a list allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    Any,
    /// Exact origins (`scheme://host[:port]`, lower-case); empty allows none.
    List(Vec<String>),
}

impl Origins {
    /// `*`, `none`, or a comma-separated list of origins; the error names the bad one.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "*" {
            return Ok(Origins::Any);
        }
        if text.is_empty() || text == "none" {
            return Ok(Origins::List(Vec::new()));
        }
        let mut list = Vec::new();
        for origin in text.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            list.push(parse_origin(origin)?);
        }
        if list.len() > ORIGINS_MAX {
            return Err(format!(
                "{} origins listed; at most {ORIGINS_MAX}",
                list.len()
            ));
        }
        Ok(Origins::List(list))
    }

    /// Whether `origin` (the request's `Origin` value) is allowed.
    pub fn allows(&self, origin: &[u8]) -> bool {
        match self {
            Origins::Any => true,
            Origins::List(list) => std::str::from_utf8(origin)
                .is_ok_and(|o| list.iter().any(|l| l.eq_ignore_ascii_case(o))),
        }
    }
}

/// One origin: `http` or `https`, a host, an optional port, nothing else.
fn parse_origin(origin: &str) -> Result<String, String> {
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(|| format!("origin {origin:?} must start with http:// or https://"))?;
    let valid = !rest.is_empty()
        && rest.len() <= 255
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    if !valid {
        return Err(format!(
            "origin {origin:?} must be scheme://host[:port], with no path, query or trailing /"
        ));
    }
    Ok(origin.to_ascii_lowercase())
}

/// The node's CORS settings (`--cors-origins`, `--cors-write-origins`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsSettings {
    pub read: Origins,
    pub write: Origins,
}

impl Default for CorsSettings {
    /// Reads from anywhere, writes from no other origin.
    fn default() -> Self {
        Self {
            read: Origins::Any,
            write: Origins::List(Vec::new()),
        }
    }
}

/// The CORS policy every handler and the lean SSE door share.
#[derive(Debug, Clone)]
pub struct Cors(Arc<CorsSettings>);

impl Cors {
    pub fn new(settings: CorsSettings) -> Self {
        Self(Arc::new(settings))
    }

    /// Whether `origin` may use `method` (for a preflight: the method it asks for).
    pub fn allows(&self, method: &Method, origin: &[u8]) -> bool {
        if is_read(method) {
            self.0.read.allows(origin)
        } else {
            self.0.write.allows(origin)
        }
    }

    /// The layer that answers preflights and adds the CORS headers.
    pub fn layer(&self) -> CorsLayer {
        let policy = self.clone();
        CorsLayer::new()
            .allow_origin(AllowOrigin::predicate(
                move |origin: &HeaderValue, parts: &Parts| {
                    let method = effective_method(parts);
                    policy.allows(&method, origin.as_bytes())
                },
            ))
            .allow_methods([
                Method::GET,
                Method::HEAD,
                Method::PUT,
                Method::POST,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("last-event-id"),
                header::IF_NONE_MATCH,
                header::ACCEPT,
            ])
            .expose_headers([
                header::ETAG,
                HeaderName::from_static("x-statusmesh-cursor"),
                header::RETRY_AFTER,
                header::LOCATION,
            ])
            .max_age(PREFLIGHT_MAX_AGE)
    }

    /// The lean SSE door's CORS header lines for a request from `origin`.
    pub fn event_stream_headers(&self, origin: Option<&[u8]>) -> String {
        match origin {
            // Echoed only when it is plain visible ASCII, as an origin is.
            Some(origin)
                if origin.iter().all(|b| (0x21..0x7f).contains(b))
                    && self.allows(&Method::GET, origin) =>
            {
                let origin = String::from_utf8_lossy(origin);
                format!(
                    "access-control-allow-origin: {origin}\r\naccess-control-expose-headers: x-statusmesh-cursor\r\nvary: origin\r\n"
                )
            }
            _ => String::new(),
        }
    }
}

/// The flags of `statusmesh run` for public reads: CORS and the Statuspage page's address.
#[derive(Debug, Clone, clap::Args)]
pub struct WebArgs {
    /// Origins that may read (GET, SSE, badges, the Statuspage API) from a browser:
    /// `*` (any), `none`, or comma-separated origins (https://status.example.com).
    #[arg(long, value_name = "ORIGINS", default_value = "*", value_parser = Origins::parse)]
    pub cors_origins: Origins,
    /// Origins that may write from a browser (comma-separated; none by default). A write
    /// carrying any other foreign Origin is refused (403).
    #[arg(long, value_name = "ORIGINS", default_value = "none", value_parser = Origins::parse)]
    pub cors_write_origins: Origins,
    /// The page's address in the Statuspage API's `page.url` (default: http:// and the
    /// request's Host).
    #[arg(long, value_name = "URL", value_parser = parse_page_url)]
    pub page_url: Option<String>,
}

impl WebArgs {
    /// `settings` with these flags applied.
    pub fn apply(self, settings: crate::settings::NodeSettings) -> crate::settings::NodeSettings {
        crate::settings::NodeSettings {
            cors: CorsSettings {
                read: self.cors_origins,
                write: self.cors_write_origins,
            },
            page_url: self.page_url,
            ..settings
        }
    }
}

/// Most bytes of `--page-url`.
pub const PAGE_URL_BYTES_MAX: usize = 2048;

/// An `http(s)://` address of visible ASCII, at most [`PAGE_URL_BYTES_MAX`] bytes.
fn parse_page_url(url: &str) -> Result<String, String> {
    let scheme = url.starts_with("https://") || url.starts_with("http://");
    if !scheme || url.len() > PAGE_URL_BYTES_MAX || !url.bytes().all(|b| (0x21..0x7f).contains(&b))
    {
        return Err(format!(
            "page URL {url:?} must be an http:// or https:// address of at most {PAGE_URL_BYTES_MAX} visible ASCII characters"
        ));
    }
    Ok(url.to_owned())
}

fn is_read(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// The method a request is about: a preflight's `Access-Control-Request-Method`, else its own.
fn effective_method(parts: &Parts) -> Method {
    if parts.method == Method::OPTIONS {
        if let Some(asked) = parts
            .headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|v| Method::from_bytes(v.as_bytes()).ok())
        {
            return asked;
        }
    }
    parts.method.clone()
}

/// The middleware that refuses a write from a foreign origin that is not listed (403).
pub(crate) async fn refuse_foreign_writes(
    State(cors): State<Cors>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method();
    if !is_read(method) && method != Method::OPTIONS {
        if let Some(origin) = request.headers().get(header::ORIGIN) {
            let own = request
                .headers()
                .get(header::HOST)
                .is_some_and(|host| same_host(origin.as_bytes(), host.as_bytes()));
            if !own && !cors.allows(method, origin.as_bytes()) {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    Some("origin"),
                    format!(
                        "writes from origin {:?} are not allowed; list it in --cors-write-origins",
                        String::from_utf8_lossy(origin.as_bytes())
                    ),
                )
                .into_response();
            }
        }
    }
    next.run(request).await
}

/// Whether `origin` (`scheme://host[:port]`) names the `host` the request was sent to.
fn same_host(origin: &[u8], host: &[u8]) -> bool {
    let origin = std::str::from_utf8(origin).unwrap_or_default();
    let rest = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    rest.is_some_and(|rest| rest.as_bytes().eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_lists_parse_and_name_the_bad_entry() {
        assert_eq!(Origins::parse("*"), Ok(Origins::Any));
        assert_eq!(Origins::parse("none"), Ok(Origins::List(Vec::new())));
        assert_eq!(
            Origins::parse("https://A.example, http://localhost:3000"),
            Ok(Origins::List(vec![
                "https://a.example".into(),
                "http://localhost:3000".into()
            ]))
        );
        let bad = Origins::parse("https://a.example/path").expect_err("a path");
        assert!(bad.contains("https://a.example/path"), "{bad}");
        assert!(Origins::parse("a.example").is_err());
    }

    #[test]
    fn reads_and_writes_use_their_own_list() {
        let cors = Cors::new(CorsSettings {
            read: Origins::Any,
            write: Origins::parse("https://ops.example").expect("list"),
        });
        assert!(cors.allows(&Method::GET, b"https://anyone.example"));
        assert!(!cors.allows(&Method::PUT, b"https://anyone.example"));
        assert!(cors.allows(&Method::PUT, b"https://ops.example"));
        assert!(cors
            .event_stream_headers(Some(b"https://x.example"))
            .contains("access-control-allow-origin: https://x.example"));
        let closed = Cors::new(CorsSettings {
            read: Origins::List(Vec::new()),
            write: Origins::List(Vec::new()),
        });
        assert_eq!(closed.event_stream_headers(Some(b"https://x.example")), "");
    }

    #[test]
    fn the_own_host_is_not_foreign() {
        assert!(same_host(b"http://127.0.0.1:8080", b"127.0.0.1:8080"));
        assert!(!same_host(b"http://evil.example", b"127.0.0.1:8080"));
    }
}
