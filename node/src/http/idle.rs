//! The idle bound of an HTTP/2 connection, which hyper lacks: HTTP/1.1 connections close when
//! no request head arrives within `request_read_timeout` (hyper's header read timeout), but an
//! HTTP/2 connection that answers pings and opens no stream would stay open for ever.
//! [`Tracked`] counts a connection's open exchanges — a request until its response body is
//! done, so an event stream counts for as long as it lasts — and [`Activity::idle_for`]
//! resolves once there was none for a whole period; [`super::serve`] then closes the
//! connection gracefully (GOAWAY).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::http::{Request, Response};
use hyper::body::{Frame, SizeHint};
use tokio::sync::watch;

/// How many exchanges of one connection are open.
#[derive(Debug, Clone)]
pub struct Activity {
    open: Arc<watch::Sender<usize>>,
}

impl Activity {
    pub fn new() -> Self {
        Self {
            open: Arc::new(watch::Sender::new(0)),
        }
    }

    /// Counts one exchange as open until the guard is dropped.
    fn start(&self) -> Guard {
        self.open.send_modify(|open| *open += 1);
        Guard {
            open: Arc::clone(&self.open),
        }
    }

    /// Resolves once no exchange was open for `period` without a break.
    pub async fn idle_for(&self, period: Duration) {
        let mut open = self.open.subscribe();
        loop {
            // The sender lives in `self`: waiting cannot fail.
            let _ = open.wait_for(|n| *n == 0).await;
            tokio::select! {
                () = tokio::time::sleep(period) => return,
                // An exchange started (or ended) meanwhile: look again.
                _ = open.changed() => {}
            }
        }
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

/// One open exchange; dropping it ends it.
#[derive(Debug)]
struct Guard {
    open: Arc<watch::Sender<usize>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.open.send_modify(|open| *open = open.saturating_sub(1));
    }
}

/// A service whose exchanges are counted in an [`Activity`].
#[derive(Debug, Clone)]
pub struct Tracked<S> {
    inner: S,
    activity: Activity,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, activity: Activity) -> Self {
        Self { inner, activity }
    }
}

impl<S, B> tower::Service<Request<B>> for Tracked<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let guard = self.activity.start();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| Body::new(GuardedBody { body, guard })))
        })
    }
}

/// A response body that holds its exchange open until it is done or dropped.
struct GuardedBody {
    body: Body,
    guard: Guard,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let _held = &this.guard;
        Pin::new(&mut this.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_waits_for_the_last_exchange_and_then_a_whole_period() {
        let activity = Activity::new();
        let first = activity.start();
        let second = activity.start();
        let idle = activity.idle_for(Duration::from_secs(10));
        tokio::pin!(idle);
        let ended = async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(first);
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(second);
            tokio::time::Instant::now()
        };
        let (last_end, idle_at) = tokio::join!(ended, async {
            (&mut idle).await;
            tokio::time::Instant::now()
        });
        assert_eq!(idle_at - last_end, Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn an_exchange_within_the_period_starts_it_again() {
        let activity = Activity::new();
        let start = tokio::time::Instant::now();
        let idle = activity.idle_for(Duration::from_secs(10));
        let busy = async {
            tokio::time::sleep(Duration::from_secs(6)).await;
            let guard = activity.start();
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(guard);
        };
        tokio::join!(idle, busy);
        assert_eq!(start.elapsed(), Duration::from_secs(17));
    }
}
