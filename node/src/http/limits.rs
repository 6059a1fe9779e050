//! Admission limits of the HTTP side: SSE subscribers per node, streams per client address,
//! streams catching up page by page at once, and writes per token. Each refusal is a clear status and JSON body (see `http::error`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::settings::SUBSCRIBERS_MAX;

/// Most SSE streams from one client address. Loopback is exempt: a local proxy or a
/// benchmark speaks for many clients from 127.0.0.1.
pub const STREAMS_PER_ADDRESS_MAX: usize = 1_000;
/// Sustained writes per second per token, by default (`--writes-per-second-per-token`).
pub const WRITES_PER_SECOND_PER_TOKEN: u32 = 20_000;
/// A token's burst above its sustained rate: this many seconds' worth of writes.
const BURST_SECONDS: f64 = 2.0;
/// Most streams of a node catching up from history page by page at once (each holds up to
/// a page, [`statusmesh_crdt::TRANSITIONS_MAX`] events, and costs a historical read per
/// page). Beyond it a stream that fell behind catches up coalesced, as after an absence.
pub const CATCH_UPS_PAGED_MAX: usize = 64;
/// Most tokens tracked by the rate limiter (tokens are configured, so this is generous).
const TOKENS_TRACKED_MAX: usize = 4_096;

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The node serves its maximum of subscribers.
    Subscribers { limit: usize },
    /// This address holds its maximum of streams.
    Address { address: IpAddr, limit: usize },
    /// This token wrote faster than its rate; retry after this many milliseconds.
    Rate { token: String, retry_after_ms: u64 },
}

/// The node's admission state, shared by every request.
#[derive(Debug)]
pub struct Limits {
    subscribers_max: usize,
    /// Sustained writes per second per token, and the burst a full bucket allows.
    write_rate: f64,
    write_burst: f64,
    subscribers: Arc<Semaphore>,
    catch_ups: Arc<Semaphore>,
    streams: Mutex<BTreeMap<IpAddr, usize>>,
    buckets: Mutex<BTreeMap<String, (f64, Instant)>>,
}

/// Held for as long as a subscriber is connected; frees its place when dropped.
#[derive(Debug)]
pub struct SubscriberSlot {
    _permit: OwnedSemaphorePermit,
    address: Option<IpAddr>,
    limits: Arc<Limits>,
}

impl Drop for SubscriberSlot {
    fn drop(&mut self) {
        if let Some(address) = self.address {
            if let Ok(mut streams) = self.limits.streams.lock() {
                if let Some(count) = streams.get_mut(&address) {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        streams.remove(&address);
                    }
                }
            }
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::new(SUBSCRIBERS_MAX, WRITES_PER_SECOND_PER_TOKEN)
    }
}

impl Limits {
    /// Limits that admit at most `subscribers_max` subscribers at once and
    /// `writes_per_second` writes per token (with a burst of two seconds' worth).
    pub fn new(subscribers_max: usize, writes_per_second: u32) -> Self {
        let write_rate = f64::from(writes_per_second.max(1));
        Self {
            subscribers_max,
            write_rate,
            write_burst: write_rate * BURST_SECONDS,
            subscribers: Arc::new(Semaphore::new(subscribers_max)),
            catch_ups: Arc::new(Semaphore::new(CATCH_UPS_PAGED_MAX)),
            streams: Mutex::new(BTreeMap::new()),
            buckets: Mutex::new(BTreeMap::new()),
        }
    }

    /// A place for one more subscriber from `address`, or why there is none.
    pub fn admit_subscriber(
        self: &Arc<Self>,
        address: Option<IpAddr>,
    ) -> Result<SubscriberSlot, Refusal> {
        let permit =
            self.subscribers
                .clone()
                .try_acquire_owned()
                .map_err(|_| Refusal::Subscribers {
                    limit: self.subscribers_max,
                })?;
        let counted = address.filter(|a| !a.is_loopback());
        if let Some(address) = counted {
            let mut streams = self.streams.lock().map_err(|_| Refusal::Subscribers {
                limit: self.subscribers_max,
            })?;
            let count = streams.entry(address).or_default();
            if *count >= STREAMS_PER_ADDRESS_MAX {
                return Err(Refusal::Address {
                    address,
                    limit: STREAMS_PER_ADDRESS_MAX,
                });
            }
            *count += 1;
        }
        Ok(SubscriberSlot {
            _permit: permit,
            address: counted,
            limits: self.clone(),
        })
    }

    /// A place for one more stream catching up page by page, if one is free; held until it
    /// is live again.
    pub fn admit_paged_catch_up(&self) -> Option<OwnedSemaphorePermit> {
        self.catch_ups.clone().try_acquire_owned().ok()
    }

    /// Takes one write from `token`'s bucket, or says when to retry.
    pub fn admit_write(&self, token: &str) -> Result<(), Refusal> {
        self.admit_write_at(token, Instant::now())
    }

    fn admit_write_at(&self, token: &str, now: Instant) -> Result<(), Refusal> {
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if !buckets.contains_key(token) && buckets.len() >= TOKENS_TRACKED_MAX {
            buckets.clear();
        }
        let (level, at) = buckets
            .entry(token.to_owned())
            .or_insert((self.write_burst, now));
        let refill = now.duration_since(*at).as_secs_f64() * self.write_rate;
        *level = (*level + refill).min(self.write_burst);
        *at = now;
        if *level < 1.0 {
            let retry_after_ms = ((1.0 - *level) / self.write_rate * 1000.0).ceil() as u64;
            return Err(Refusal::Rate {
                token: token.to_owned(),
                retry_after_ms: retry_after_ms.max(1),
            });
        }
        *level -= 1.0;
        Ok(())
    }

    /// Subscribers connected now.
    pub fn subscribers(&self) -> usize {
        self.subscribers_max - self.subscribers.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_its_share_of_streams_and_gets_them_back() {
        let limits = Arc::new(Limits::default());
        let address: IpAddr = "10.1.2.3".parse().expect("ip");
        let slots: Vec<_> = (0..STREAMS_PER_ADDRESS_MAX)
            .map(|_| limits.admit_subscriber(Some(address)).expect("admitted"))
            .collect();
        assert!(matches!(
            limits.admit_subscriber(Some(address)),
            Err(Refusal::Address { .. })
        ));
        let loopback: IpAddr = "127.0.0.1".parse().expect("ip");
        assert!(
            limits.admit_subscriber(Some(loopback)).is_ok(),
            "loopback is exempt"
        );
        drop(slots);
        assert!(limits.admit_subscriber(Some(address)).is_ok());
        assert_eq!(limits.subscribers(), 0);
    }

    #[test]
    fn a_token_that_writes_past_its_burst_is_told_when_to_retry() {
        let limits = Limits::default();
        // One instant for every write: no refill in between, whatever the machine's speed.
        let now = Instant::now();
        let mut refused = None;
        for _ in 0..(limits.write_burst as usize + 10) {
            if let Err(r) = limits.admit_write_at("ci", now) {
                refused = Some(r);
                break;
            }
        }
        assert!(
            matches!(refused, Some(Refusal::Rate { retry_after_ms, .. }) if retry_after_ms >= 1)
        );
        assert!(
            limits.admit_write_at("other", now).is_ok(),
            "buckets are per token"
        );
    }
}
