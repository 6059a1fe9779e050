//! The HTTP server loop: `axum::serve` plus the bound it lacks, a header read timeout.
//!
//! `axum::serve` gives hyper no timer, so a client that connects and sends nothing, or
//! sends its headers a byte at a time (slowloris), holds its socket and task for as long as
//! it likes. Here every connection must deliver each request's headers within
//! `request_read_timeout` of being ready for them (after connecting, or after its previous
//! response); otherwise hyper closes it. Streaming responses (SSE) are not affected: the
//! timer runs only while the connection waits for a request head. Bodies have the same
//! bound, applied where handlers read them (`http::writes::read_body`). A connection whose first
//! request is an event stream is served by [`super::sse_front`] instead of hyper.
//!
//! Oversized heads: hyper answers a head beyond its own bounds with an empty-bodied 431, so
//! its bounds ([`HYPER_HEADERS_MAX`], [`HYPER_READ_BUF_BYTES_MAX`]) are set far above the
//! node's ([`super::error::REQUEST_HEADERS_MAX`], [`super::error::REQUEST_HEADER_BYTES_MAX`]),
//! which `error::bounded_headers` enforces with the JSON 431. What hyper still answers
//! itself, with an empty body, and then closes the connection:
//! - a head of more than [`HYPER_HEADERS_MAX`] lines, or one not complete within
//!   [`HYPER_READ_BUF_BYTES_MAX`] bytes: 431;
//! - a request target longer than 65,534 bytes (hyper's limit): 414;
//! - a head it cannot parse (a bad method token, header name or version; raw bytes outside
//!   visible ASCII in the request line of a connection's later requests, the first one's
//!   being refused with JSON by [`super::sse_front`]): 400;
//! - a head that does not arrive within `request_read_timeout`: closed without an answer.
//!
//! Each stays bounded: hyper stops reading at [`HYPER_READ_BUF_BYTES_MAX`], so one
//! connection holds at most that much for at most `request_read_timeout`.
//!
//! HTTPS (`--http-tls-cert`, [`super::tls`]): the TLS handshake comes first, within
//! `request_read_timeout`. A connection that negotiated `h2` by ALPN is served by hyper's
//! HTTP/2 (hyper_util's auto builder, bounded to [`H2_STREAMS_MAX`] concurrent streams and
//! header lists of [`HYPER_READ_BUF_BYTES_MAX`]; a peer that stops answering pings within
//! [`H2_KEEP_ALIVE`] is closed, and so is a connection without an open stream for
//! `request_read_timeout`, see [`super::idle`]); one that negotiated `http/1.1`, or nothing,
//! goes through the same front door and HTTP/1.1 as plain connections.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::error::{REQUEST_HEADERS_MAX, REQUEST_HEADER_BYTES_MAX};
use super::idle::{Activity, Tracked};
use super::sse_front::{self, Peeked};
use super::tls::HttpTls;
use super::HttpState;

/// The pause after a failed accept (usually: out of file descriptors), so the loop waits for
/// connections to close instead of spinning.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Most header lines hyper parses before its own (empty-bodied) 431; far above
/// [`REQUEST_HEADERS_MAX`], so requests between the two get the node's JSON 431. hyper then
/// keeps each request's header index on the heap (some 64 bytes a line) while it parses.
pub const HYPER_HEADERS_MAX: usize = 1024;
/// hyper's read buffer bound: a head not complete within it is hyper's own 431 (its default
/// is some 400 KiB); far above [`REQUEST_HEADER_BYTES_MAX`] for the same reason.
pub const HYPER_READ_BUF_BYTES_MAX: usize = 1024 * 1024;
const _: () = assert!(HYPER_HEADERS_MAX > REQUEST_HEADERS_MAX);
const _: () = assert!(HYPER_READ_BUF_BYTES_MAX > 16 * REQUEST_HEADER_BYTES_MAX);
/// Most streams (requests, event streams) open at once on one HTTP/2 connection; a browser
/// page with more event streams than this queues the rest.
pub const H2_STREAMS_MAX: u32 = 256;
/// How often an HTTP/2 connection is pinged, and how long the answer may take, so a peer
/// that vanished does not hold its streams.
pub const H2_KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` until `shutdown` turns true; then stops accepting, asks
/// every open connection to finish its current response, and returns when all have closed.
/// Handlers see the client's address as `ConnectInfo<SocketAddr>`, as with
/// `into_make_service_with_connect_info`. With `tls`, every connection is HTTPS.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    state: HttpState,
    request_read_timeout: Duration,
    tls: Option<Arc<HttpTls>>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Each connection task holds a sender; recv() returns None once all are gone.
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped(&mut shutdown) => break,
        };
        let (stream, remote) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                warn!(error = %e, "http accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let service = tower::ServiceExt::map_request(
            router.clone(),
            move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(remote));
                // HTTP/2 carries the host as :authority, in the URI; handlers read `Host`.
                if !request.headers().contains_key(axum::http::header::HOST) {
                    let authority = request.uri().authority().map(|a| a.as_str().to_owned());
                    if let Some(value) = authority.and_then(|a| a.parse().ok()) {
                        request
                            .headers_mut()
                            .insert(axum::http::header::HOST, value);
                    }
                }
                request.map(Body::new)
            },
        );
        let mut shutdown = shutdown.clone();
        let open = open_tx.clone();
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _open = open;
            let Some(tls) = tls else {
                let Some(stream) =
                    sse_front::route(stream, remote, &state, &mut shutdown, request_read_timeout)
                        .await
                else {
                    return;
                };
                let io = TokioIo::new(stream);
                return serve_connection(io, service, false, request_read_timeout, shutdown).await;
            };
            let Some(stream) = handshake(&tls, stream, &state, request_read_timeout).await else {
                return;
            };
            if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                let io = TokioIo::new(stream);
                return serve_connection(io, service, true, request_read_timeout, shutdown).await;
            }
            let Some(stream) = sse_front::route(
                Peeked::new(stream),
                remote,
                &state,
                &mut shutdown,
                request_read_timeout,
            )
            .await
            else {
                return;
            };
            let io = TokioIo::new(stream);
            serve_connection(io, service, false, request_read_timeout, shutdown).await;
        });
    }
    drop(open_tx);
    let _ = open_rx.recv().await;
}

/// The TLS handshake of a new connection, within `timeout`; `None` (counted and logged at
/// debug level) when it fails or takes too long.
async fn handshake(
    tls: &HttpTls,
    stream: TcpStream,
    state: &HttpState,
    timeout: Duration,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let accepted = tokio::time::timeout(timeout, tls.acceptor().accept(stream)).await;
    let (result, stream) = match accepted {
        Ok(Ok(stream)) => {
            let alpn = match stream.get_ref().1.alpn_protocol() {
                Some(b"h2") => "h2",
                Some(b"http/1.1") => "http/1.1",
                _ => "none",
            };
            (alpn, Some(stream))
        }
        Ok(Err(e)) => {
            debug!(error = %e, "https handshake failed");
            ("failed", None)
        }
        Err(_) => ("timeout", None),
    };
    metrics::counter!(
        "statusmesh_https_handshakes_total",
        "node" => state.node.info.id.to_string(),
        "result" => result
    )
    .increment(1);
    stream
}

/// Serves one connection with hyper until it closes, or, once `shutdown` turns true, until
/// its current responses are done: HTTP/2 when `h2` (closed the same way once it had no open
/// stream for `request_read_timeout`), else HTTP/1.1 with the header read timeout.
async fn serve_connection<I, S>(
    io: I,
    service: S,
    h2: bool,
    request_read_timeout: Duration,
    shutdown: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: tower::Service<Request<Incoming>, Response = axum::response::Response>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: std::error::Error + Send + Sync + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(request_read_timeout)
        .max_headers(HYPER_HEADERS_MAX)
        .max_buf_size(HYPER_READ_BUF_BYTES_MAX);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_STREAMS_MAX)
        .max_header_list_size(HYPER_READ_BUF_BYTES_MAX as u32)
        .keep_alive_interval(H2_KEEP_ALIVE)
        .keep_alive_timeout(H2_KEEP_ALIVE);
    if h2 {
        // Only HTTP/2 needs its exchanges counted: HTTP/1.1 has hyper's header read timeout.
        let activity = Activity::new();
        let idle = activity.clone();
        let service = Tracked::new(service, activity);
        let idle = idle.idle_for(request_read_timeout);
        drive(builder.http2_only(), io, service, idle, shutdown).await;
    } else {
        let never = std::future::pending();
        drive(builder.http1_only(), io, service, never, shutdown).await;
    }
}

/// Drives one connection to its end; once `shutdown` turns true or `idle` resolves it
/// finishes its current responses and closes.
async fn drive<I, S>(
    builder: auto::Builder<TokioExecutor>,
    io: I,
    service: S,
    idle: impl std::future::Future<Output = ()>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: tower::Service<Request<Incoming>, Response = axum::response::Response>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: std::error::Error + Send + Sync + 'static,
{
    let connection = builder.serve_connection(io, TowerToHyperService::new(service));
    tokio::pin!(connection);
    let finished = tokio::select! {
        finished = connection.as_mut() => finished,
        () = stopped(&mut shutdown) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        () = idle => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = finished {
        debug!(error = %e, "http connection ended");
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
