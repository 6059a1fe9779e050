//! A stream's reader pace: whether its connection was away. An event stream is polled by its
//! connection when the connection can take a frame; one whose socket is full (the client
//! stopped reading) leaves the stream unpolled although events woke it. [`Paced`] notes when
//! the stream was woken and, at the next poll, whether the connection kept it waiting for
//! [`READER_AWAY`] or longer: then its reader was away, not slow.
//!
//! Idle waiting is not away: a stream with nothing to send is not woken, and once woken it is
//! polled at once by a connection that can write.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::stream::Stream;
use futures_util::task::{waker_ref, ArcWake, AtomicWaker};

/// A connection that left its woken stream unpolled this long was away: a catch-up beyond
/// the bound is coalesced for it, as for a client that reconnects after an absence. A reader
/// that keeps reading is never coalesced.
pub const READER_AWAY: Duration = Duration::from_secs(5);

/// What the stream and its connection share: whether the reader was away since asked.
#[derive(Debug, Clone, Default)]
pub struct Away(Arc<AtomicBool>);

impl Away {
    /// Whether the reader was away since the last call (which forgets it).
    pub fn take(&self) -> bool {
        self.0.swap(false, Ordering::Relaxed)
    }
}

/// The waker handed to the inner stream: notes the first wake since the last poll, then
/// wakes the connection's task.
struct WakeClock {
    task: AtomicWaker,
    start: Instant,
    /// Milliseconds after `start` (plus one) of the first wake not yet polled; 0: none.
    woken_at: AtomicU64,
}

impl WakeClock {
    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }
}

impl ArcWake for WakeClock {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        let now = arc_self.now();
        let _ = arc_self
            .woken_at
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        arc_self.task.wake();
    }
}

/// `inner`, telling [`Away`] when its connection kept it waiting after a wake.
#[allow(missing_debug_implementations)] // a stream of frames: nothing to show
pub struct Paced<S> {
    inner: Pin<Box<S>>,
    clock: Arc<WakeClock>,
    away: Away,
    away_after: Duration,
}

impl<S> Paced<S> {
    pub fn new(inner: S, away: Away) -> Self {
        Self::with_away_after(inner, away, READER_AWAY)
    }

    fn with_away_after(inner: S, away: Away, away_after: Duration) -> Self {
        Self {
            inner: Box::pin(inner),
            clock: Arc::new(WakeClock {
                task: AtomicWaker::new(),
                start: Instant::now(),
                woken_at: AtomicU64::new(0),
            }),
            away,
            away_after,
        }
    }
}

impl<S: Stream> Stream for Paced<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.get_mut();
        this.clock.task.register(cx.waker());
        let woken_at = this.clock.woken_at.swap(0, Ordering::Relaxed);
        let waited = this.clock.now().saturating_sub(woken_at);
        if woken_at != 0 && u128::from(waited) >= this.away_after.as_millis() {
            this.away.0.store(true, Ordering::Relaxed);
        }
        let waker = waker_ref(&this.clock);
        let mut inner_cx = Context::from_waker(&waker);
        this.inner.as_mut().poll_next(&mut inner_cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn a_stream_left_unpolled_after_a_wake_says_its_reader_was_away() {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(4);
        let away = Away::default();
        let inner = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let away_after = Duration::from_millis(50);
        let mut paced = Paced::with_away_after(inner, away.clone(), away_after);
        // Polled while idle, then woken and polled at once: not away.
        assert!(futures_util::poll!(paced.next()).is_pending());
        tx.send(1).await.expect("send");
        assert_eq!(paced.next().await, Some(1));
        assert!(!away.take());
        // Woken, then left unpolled past the bound (the wait is the subject): away, and
        // told once.
        assert!(futures_util::poll!(paced.next()).is_pending());
        tx.send(2).await.expect("send");
        assert!(
            paced.clock.woken_at.load(Ordering::Relaxed) != 0,
            "the send woke the stream"
        );
        tokio::time::sleep(away_after * 2).await;
        assert_eq!(paced.next().await, Some(2));
        assert!(away.take());
        assert!(!away.take(), "told once");
    }
}
