//! The front door of every HTTP connection ([`super::serve`] calls [`route`] first). A
//! connection whose first request is `GET /v1/events` is served here by a lean loop that
//! writes each event's shared bytes straight to the socket; every other connection goes to
//! axum (hyper).
//!
//! Why: an idle hyper HTTP/1.1 connection holds ~16.5 KiB (fixed 8 KiB read and write
//! buffers) for as long as it lives, and a status page's subscribers live for hours. The lean
//! loop holds the subscriber's state and nothing else, and answers with a body delimited by
//! the connection's close (valid HTTP/1.0 and 1.1, what EventSource expects), so no chunk
//! framing is written per event. A stream requested on a reused keep-alive connection still
//! goes to the axum route, with the same behaviour.
//!
//! Over HTTPS the door stands behind the TLS handshake ([`super::serve`]): a connection that
//! negotiated HTTP/1.1 is looked into through [`Peeked`], which keeps the first decrypted
//! bytes until they are read and then lets go of them, so an HTTPS subscriber holds its TLS
//! session and the same lean state. HTTP/2 connections go to hyper: their streams share one
//! connection, and a browser holds all of a page's streams on it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use futures_util::{FutureExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::error::{parse_query, ApiError, REQUEST_HEADERS_MAX};
use super::events::{open_event_stream, EventsQuery, SSE_RESPONSE_HEADERS};
use super::negotiate::{check_accept, EVENT_STREAM};
use super::HttpState;

/// Longest request head of an events request (the cursor is the only long part).
pub const REQUEST_HEAD_BYTES_MAX: usize = 16 * 1024;
/// What the lean path recognises: the start of the request line.
const EVENTS_REQUEST: &[u8] = b"GET /v1/events";
/// Most bytes written to one subscriber at once when events queued up behind each other.
const BATCH_BYTES_MAX: usize = 64 * 1024;
/// The kernel send buffer of an event stream (Linux doubles it): hundreds of events. A
/// subscriber further behind blocks its writer, falls behind the shared ring and gets a fresh
/// snapshot, instead of its backlog growing in kernel memory up to the autotuned maximum.
const SEND_BUFFER_BYTES: usize = 64 * 1024;
/// How long a stream that ends on the node's side may take to say so (TLS `close_notify`,
/// then FIN), so a client can tell the end of the stream from a cut connection.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// A connection the front door can look into before anyone reads it: a plain TCP stream
/// (the kernel's peek) or a TLS stream behind [`Peeked`].
pub trait FrontStream: AsyncRead + AsyncWrite + Unpin + Send {
    /// Copies the first bytes that arrived into `buf` without consuming them; waits for at
    /// least one byte, and returns 0 when the connection closed first.
    fn peek<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a;
    /// The TCP socket underneath, to tune it for an event stream.
    fn tcp(&self) -> &TcpStream;
}

impl FrontStream for TcpStream {
    fn peek<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        TcpStream::peek(self, buf)
    }

    fn tcp(&self) -> &TcpStream {
        self
    }
}

/// A stream whose first bytes can be looked at before they are read: the first [`peek`]
/// reads up to [`REQUEST_LINE_PEEK_BYTES`] from the inner stream and keeps them; reads hand
/// them out first, and the buffer is freed once they are all read.
///
/// [`peek`]: FrontStream::peek
#[derive(Debug)]
pub struct Peeked<S> {
    inner: S,
    buffered: Vec<u8>,
    /// How much of `buffered` was read already.
    at: usize,
}

impl<S> Peeked<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            buffered: Vec::new(),
            at: 0,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Peeked<S> {
    async fn fill(&mut self) -> io::Result<()> {
        if self.at < self.buffered.len() {
            return Ok(());
        }
        let mut buffered = vec![0u8; REQUEST_LINE_PEEK_BYTES];
        let n = self.inner.read(&mut buffered).await?;
        buffered.truncate(n);
        self.buffered = buffered;
        self.at = 0;
        Ok(())
    }
}

impl FrontStream for Peeked<tokio_rustls::server::TlsStream<TcpStream>> {
    async fn peek(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.fill().await?;
        let ready = &self.buffered[self.at..];
        let n = ready.len().min(buf.len());
        buf[..n].copy_from_slice(&ready[..n]);
        Ok(n)
    }

    fn tcp(&self) -> &TcpStream {
        self.inner.get_ref().0
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Peeked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.buffered.len() {
            let ready = &this.buffered[this.at..];
            let n = ready.len().min(buf.remaining());
            buf.put_slice(&ready[..n]);
            this.at += n;
            if this.at == this.buffered.len() {
                // A subscriber lives for hours: it keeps nothing it no longer needs.
                this.buffered = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Peeked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Looks at the first bytes without consuming them: an events request is served here (and
/// `None` returned when it ends); anything else, or a request line that arrived in pieces,
/// is handed back untouched for axum. A connection silent for `head_timeout` is closed.
pub async fn route<S: FrontStream>(
    mut stream: S,
    peer: SocketAddr,
    state: &HttpState,
    shutdown: &mut watch::Receiver<bool>,
    head_timeout: Duration,
) -> Option<S> {
    let mut first = [0u8; EVENTS_REQUEST.len() + 1];
    let peeked = match tokio::time::timeout(head_timeout, stream.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 => n,
        // Silent past the timeout, closed or broken: dropping the stream closes it.
        _ => return None,
    };
    let lean = is_events_request(&first[..peeked]);
    metrics::counter!(
        "statusmesh_http_connections_total",
        "node" => state.node.info.id.to_string(),
        "path" => if lean { "events_lean" } else { "axum" }
    )
    .increment(1);
    if !lean {
        if let Some(error) = refuse_request_line(&mut stream).await {
            let _ = write_error(&mut stream, &error).await;
            return None;
        }
        return Some(stream);
    }
    // Events are small and must leave at once.
    let _ = stream.tcp().set_nodelay(true);
    let _ = socket2::SockRef::from(stream.tcp()).set_send_buffer_size(SEND_BUFFER_BYTES);
    serve_events(stream, peer, state.clone(), shutdown, head_timeout).await;
    None
}

/// How much of a connection's first bytes [`refuse_request_line`] looks at.
const REQUEST_LINE_PEEK_BYTES: usize = 4 * 1024;

/// A JSON 400 for a first request line that holds raw bytes outside visible ASCII (invalid
/// UTF-8 in a path, control characters): hyper would refuse it with an empty body. Best
/// effort: only what already arrived is looked at, and only on the connection's first
/// request.
async fn refuse_request_line<S: FrontStream>(stream: &mut S) -> Option<ApiError> {
    let mut buf = vec![0u8; REQUEST_LINE_PEEK_BYTES];
    let n = stream.peek(&mut buf).await.ok()?;
    let arrived = &buf[..n];
    let line = arrived
        .windows(2)
        .position(|w| w == b"\r\n")
        .map_or(arrived, |end| &arrived[..end]);
    let bad = line.iter().any(|b| !(0x20..0x7f).contains(b));
    bad.then(|| {
        ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "bad_request",
            Some("path"),
            "the request line holds bytes outside visible ASCII; percent-encode them",
        )
    })
}

fn is_events_request(first: &[u8]) -> bool {
    first.len() == EVENTS_REQUEST.len() + 1
        && first.starts_with(EVENTS_REQUEST)
        && matches!(first[EVENTS_REQUEST.len()], b' ' | b'?')
}

/// An events request, parsed from its head.
#[derive(Debug)]
struct EventsRequest {
    uri: axum::http::Uri,
    last_event_id: Option<String>,
    /// The `Origin` header, for CORS ([`super::cors`]).
    origin: Option<Vec<u8>>,
}

async fn serve_events<S: FrontStream>(
    mut stream: S,
    peer: SocketAddr,
    state: HttpState,
    shutdown: &mut watch::Receiver<bool>,
    head_timeout: Duration,
) {
    let request = match read_events_request(&mut stream, head_timeout).await {
        Ok(request) => request,
        Err(error) => {
            let _ = write_error(&mut stream, &error).await;
            return;
        }
    };
    let cors = state.cors.event_stream_headers(request.origin.as_deref());
    let opened = match parse_query::<EventsQuery>(&request.uri) {
        Ok(query) => {
            open_event_stream(
                state,
                query,
                Some(peer.ip()),
                request.last_event_id.as_deref(),
            )
            .await
        }
        Err(error) => Err(error),
    };
    let events = match opened {
        Ok(events) => events,
        Err(error) => {
            let _ = write_error_with(&mut stream, &error, &cors).await;
            return;
        }
    };
    let mut events = std::pin::pin!(events);
    if stream.write_all(&response_head(&cors)).await.is_err() {
        return;
    }
    // A client sends nothing after its request; reading notices at once when it goes away.
    let mut discard = [0u8; 64];
    // Registered once for the stream's life, not once per event.
    let stop = stopped(shutdown);
    tokio::pin!(stop);
    loop {
        // The read is dropped while a batch is written (reads are cancel-safe), so one
        // stream serves both without being split.
        let batch = tokio::select! {
            frame = events.next() => match frame {
                Some(Ok(first)) => gather_ready(first, &mut events),
                // The node is stopping: the stream ended.
                _ => break,
            },
            read = stream.read(&mut discard) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
            () = &mut stop => break,
        };
        let (batch, ended) = batch;
        if stream.write_all(&batch).await.is_err() {
            return;
        }
        if ended {
            break;
        }
    }
    // The stream ended on this side: say so (over TLS, close_notify tells the client the
    // body is whole), within a bound for a client that reads no more.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, stream.shutdown()).await;
}

/// `first` and the frames that are ready right behind it, up to [`BATCH_BYTES_MAX`], as one
/// buffer, so a subscriber that fell behind (the node is busy) catches up with one write
/// instead of one per event; true when the stream ended.
fn gather_ready<S>(first: Bytes, events: &mut Pin<&mut S>) -> (Bytes, bool)
where
    S: futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>>,
{
    let mut batch: Option<Vec<u8>> = None;
    let mut ended = false;
    while batch.as_ref().map_or(first.len(), Vec::len) < BATCH_BYTES_MAX {
        match events.next().now_or_never() {
            Some(Some(Ok(next))) => batch
                .get_or_insert_with(|| first.to_vec())
                .extend_from_slice(&next),
            Some(_) => {
                ended = true;
                break;
            }
            None => break,
        }
    }
    (batch.map_or(first, Bytes::from), ended)
}

/// Resolves once the node is stopping (the guard `wait_for` returns is not `Send`).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// The response head; `cors` holds the CORS header lines, if any.
fn response_head(cors: &str) -> Vec<u8> {
    let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
    for (name, value) in SSE_RESPONSE_HEADERS {
        head.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    head.extend_from_slice(cors.as_bytes());
    // The body ends when the connection does.
    head.extend_from_slice(b"connection: close\r\n\r\n");
    head
}

/// Reads the request head (bounded in size and time) and parses it.
async fn read_events_request<S: FrontStream>(
    stream: &mut S,
    head_timeout: Duration,
) -> Result<EventsRequest, ApiError> {
    let mut head = Vec::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + head_timeout;
    loop {
        if let Some(request) = parse_head(&head)? {
            return Ok(request);
        }
        if head.len() >= REQUEST_HEAD_BYTES_MAX {
            return Err(bad_request(
                axum::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request_head_too_large",
                format!("the request head exceeds {REQUEST_HEAD_BYTES_MAX} bytes"),
            ));
        }
        let mut chunk = [0u8; 1024];
        let room = (REQUEST_HEAD_BYTES_MAX - head.len()).min(chunk.len());
        let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk[..room])).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Err(bad_request(
                    axum::http::StatusCode::BAD_REQUEST,
                    "incomplete_request",
                    "the connection ended inside the request head",
                ))
            }
            Ok(Ok(n)) => head.extend_from_slice(&chunk[..n]),
            Err(_) => {
                return Err(bad_request(
                    axum::http::StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    format!(
                        "the request head did not arrive within {} ms",
                        head_timeout.as_millis()
                    ),
                ))
            }
        }
    }
}

/// The request in `head`, `None` while it is incomplete.
fn parse_head(head: &[u8]) -> Result<Option<EventsRequest>, ApiError> {
    let mut headers = [httparse::EMPTY_HEADER; REQUEST_HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    let status = request.parse(head).map_err(|e| match e {
        httparse::Error::TooManyHeaders => ApiError::new(
            axum::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            Some("headers"),
            format!("requests are limited to {REQUEST_HEADERS_MAX} header lines"),
        ),
        e => bad_request(
            axum::http::StatusCode::BAD_REQUEST,
            "bad_request",
            format!("malformed request head: {e}"),
        ),
    })?;
    if status.is_partial() {
        return Ok(None);
    }
    let path = request.path.unwrap_or("/");
    let uri = path.parse::<axum::http::Uri>().map_err(|e| {
        bad_request(
            axum::http::StatusCode::BAD_REQUEST,
            "bad_request",
            format!("malformed request target: {e}"),
        )
    })?;
    let mut last_event_id = None;
    let mut origin = None;
    let mut accept = axum::http::HeaderMap::new();
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("accept") {
            if let Ok(value) = axum::http::HeaderValue::from_bytes(header.value) {
                accept.append(axum::http::header::ACCEPT, value);
            }
        } else if name.eq_ignore_ascii_case("origin") {
            origin = Some(header.value.to_vec());
        } else if name.eq_ignore_ascii_case("last-event-id") {
            last_event_id = std::str::from_utf8(header.value).ok().map(str::to_owned);
        } else if name.eq_ignore_ascii_case("content-length")
            && header.value.iter().any(|b| *b != b'0')
            || name.eq_ignore_ascii_case("transfer-encoding")
        {
            return Err(bad_request(
                axum::http::StatusCode::BAD_REQUEST,
                "bad_request",
                "GET /v1/events takes no body",
            ));
        }
    }
    // The same negotiation as the axum route's (`negotiate`).
    check_accept(&accept, &EVENT_STREAM)?;
    Ok(Some(EventsRequest {
        uri,
        last_event_id,
        origin,
    }))
}

fn bad_request(
    status: axum::http::StatusCode,
    error: &'static str,
    detail: impl Into<String>,
) -> ApiError {
    ApiError::new(status, error, None, detail)
}

/// The error as a whole HTTP response, then the connection closes.
async fn write_error<W: AsyncWrite + Unpin>(stream: &mut W, error: &ApiError) -> io::Result<()> {
    write_error_with(stream, error, "").await
}

/// [`write_error`] with extra header lines (`cors`, each ending in CRLF).
async fn write_error_with<W: AsyncWrite + Unpin>(
    stream: &mut W,
    error: &ApiError,
    cors: &str,
) -> io::Result<()> {
    let body = error.body().to_string();
    let status = error.status();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\nx-content-type-options: nosniff\r\n{cors}content-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_events_request_line_takes_the_lean_path() {
        assert!(is_events_request(b"GET /v1/events "));
        assert!(is_events_request(b"GET /v1/events?"));
        assert!(!is_events_request(b"GET /v1/eventsX"));
        assert!(!is_events_request(b"GET /v1/event"));
        assert!(!is_events_request(b"POST /v1/events"));
        assert!(!is_events_request(b"GET /v1/status "));
    }

    #[test]
    fn a_head_is_parsed_once_complete() {
        let whole = b"GET /v1/events?service=api HTTP/1.1\r\nHost: x\r\nLast-Event-ID: abc\r\n\r\n";
        for cut in 0..whole.len() {
            assert!(parse_head(&whole[..cut]).expect("valid prefix").is_none());
        }
        let request = parse_head(whole).expect("valid").expect("complete");
        assert_eq!(request.uri.query(), Some("service=api"));
        assert_eq!(request.last_event_id.as_deref(), Some("abc"));
    }

    #[test]
    fn garbage_and_bodies_are_refused_with_a_status() {
        let garbage = parse_head(b"GET /v1/events HTTP/1.1\r\nBad Header\r\n\r\n");
        assert_eq!(
            garbage.expect_err("refused").status(),
            axum::http::StatusCode::BAD_REQUEST
        );
        let body = parse_head(b"GET /v1/events HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
        assert!(body.is_err());
        let empty = parse_head(b"GET /v1/events HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert!(empty.expect("no body is fine").is_some());
        let mut many = b"GET /v1/events HTTP/1.1\r\n".to_vec();
        for i in 0..=REQUEST_HEADERS_MAX {
            many.extend_from_slice(format!("x-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let many = parse_head(&many).expect_err("too many headers");
        assert_eq!(
            many.status(),
            axum::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        assert_eq!(many.body()["field"], "headers");
    }

    #[test]
    fn the_accept_header_is_negotiated_as_on_the_axum_route() {
        let head = |accept: &str| {
            parse_head(format!("GET /v1/events HTTP/1.1\r\n{accept}\r\n\r\n").as_bytes())
        };
        for admitted in [
            "Accept: text/event-stream",
            "Accept: */*",
            "Accept: text/*",
            "x-none: 1",
        ] {
            assert!(head(admitted).expect(admitted).is_some(), "{admitted}");
        }
        let refused = head("Accept: application/json").expect_err("406");
        assert_eq!(refused.status(), axum::http::StatusCode::NOT_ACCEPTABLE);
        assert_eq!(refused.body()["field"], "accept");
        assert!(head("Accept: text/event-stream;q=0, */*").is_err());
    }
}
