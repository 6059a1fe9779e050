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

use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::sse_front;
use super::HttpState;

/// The pause after a failed accept (usually: out of file descriptors), so the loop waits for
/// connections to close instead of spinning.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until `shutdown` turns true; then stops accepting, asks
/// every open connection to finish its current response, and returns when all have closed.
/// Handlers see the client's address as `ConnectInfo<SocketAddr>`, as with
/// `into_make_service_with_connect_info`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    state: HttpState,
    request_read_timeout: Duration,
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
                request.map(Body::new)
            },
        );
        let mut shutdown = shutdown.clone();
        let open = open_tx.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let _open = open;
            let Some(stream) =
                sse_front::route(stream, remote, &state, &mut shutdown, request_read_timeout).await
            else {
                return;
            };
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(request_read_timeout);
            let connection =
                builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            tokio::pin!(connection);
            let finished = tokio::select! {
                finished = connection.as_mut() => finished,
                () = stopped(&mut shutdown) => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = finished {
                debug!(client = %remote, error = %e, "http connection ended");
            }
        });
    }
    drop(open_tx);
    let _ = open_rx.recv().await;
}

/// Resolves once `shutdown` turns true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
