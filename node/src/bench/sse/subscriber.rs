//! One SSE subscriber of the benchmark: a hand-written HTTP/1.1 GET of `/v1/events`, then
//! the deliveries of this run's writes, recorded in what all subscribers share.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::decode::{BodyDecoder, Chunked, LineScan};
use super::histogram::Histogram;
use super::writes::WriteOutcomes;
use super::{CONNECT_TIMEOUT, MESSAGE_KEY, READ_BUFFER_BYTES, RESPONSE_HEAD_BYTES_MAX};

/// What the run's tasks share.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) epoch: Instant,
    /// Prefix of every message this run writes, so other writers' events are not counted.
    pub(super) tag: String,
    pub(super) writes: u64,
    /// When write `i` was sent, in microseconds since `epoch` (0: not sent yet).
    pub(super) sent_at_us: Vec<AtomicU64>,
    pub(super) latency: Histogram,
    /// The same latencies since the last soak sample.
    pub(super) window: Histogram,
    /// First deliveries of this run's writes, over all subscribers.
    pub(super) received: AtomicU64,
}

impl Shared {
    pub(super) fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// The write a status event's data line names, if it is one of this run's.
    pub(super) fn write_of(&self, data: &[u8]) -> Option<u64> {
        let start = find(data, MESSAGE_KEY)? + MESSAGE_KEY.len();
        let rest = &data[start..];
        let end = rest.iter().position(|&b| b == b'"')?;
        let message = std::str::from_utf8(&rest[..end]).ok()?;
        let (tag, seq) = message.rsplit_once('-')?;
        let seq: u64 = seq.parse().ok()?;
        (tag == self.tag && seq < self.writes).then_some(seq)
    }
}

/// A tag unique enough to tell this run's writes from earlier runs' on the same cells.
pub(super) fn run_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0);
    format!("sse{:08x}", nanos ^ std::process::id().rotate_left(16))
}

pub(super) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// An `http://host:port[/prefix]` URL, resolved once.
#[derive(Debug, Clone)]
pub(super) struct HttpTarget {
    /// The URL as given, without a trailing slash.
    pub(super) base: String,
    pub(super) authority: String,
    pub(super) path_prefix: String,
}

impl HttpTarget {
    pub(super) fn parse(url: &str) -> anyhow::Result<Self> {
        let base = url.trim_end_matches('/').to_owned();
        let Some(rest) = base.strip_prefix("http://") else {
            bail!("{url:?}: the SSE subscribers speak plain http:// only");
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.is_empty() || authority.contains(['?', '#', '@', ' ']) {
            bail!("{url:?}: expected http://HOST:PORT");
        }
        let has_port = authority
            .rsplit_once(':')
            .is_some_and(|(_, port)| port.parse::<u16>().is_ok());
        let authority = if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Self {
            authority,
            path_prefix: path.to_owned(),
            base,
        })
    }
}

/// What one subscriber saw.
#[derive(Debug, Default)]
pub(super) struct SubscriberReport {
    pub(super) connected: bool,
    /// Bit `i`: write `i` was delivered.
    pub(super) seen: Vec<u64>,
    pub(super) duplicated: u64,
    /// Snapshots after the first: the node found this subscriber lagging.
    pub(super) resnapshots: u64,
    /// Why the stream ended before the run did.
    pub(super) ended: Option<String>,
}

/// The sum over subscribers.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub(super) received: u64,
    pub(super) lost: u64,
    pub(super) duplicated: u64,
    pub(super) unacknowledged: u64,
    pub(super) resnapshots: u64,
    pub(super) ended: u64,
    pub(super) first_end: Option<String>,
}

impl Tally {
    pub(super) fn add(&mut self, report: &SubscriberReport, outcomes: &WriteOutcomes) {
        if !report.connected {
            return;
        }
        for (i, acknowledged) in outcomes.acknowledged.iter().enumerate() {
            let seen = report.seen.get(i).copied().unwrap_or(0);
            self.received += u64::from((seen & acknowledged).count_ones());
            self.lost += u64::from((!seen & acknowledged).count_ones());
            self.unacknowledged += u64::from((seen & !acknowledged).count_ones());
        }
        self.duplicated += report.duplicated;
        self.resnapshots += report.resnapshots;
        if let Some(end) = &report.ended {
            self.ended += 1;
            self.first_end.get_or_insert_with(|| end.clone());
        }
    }
}

/// One subscriber: connects, reports its connect time once the snapshot is in, then
/// records deliveries until told to stop or its stream ends.
pub(super) async fn subscribe(
    shared: Arc<Shared>,
    target: HttpTarget,
    mut stop: watch::Receiver<bool>,
    connected: mpsc::Sender<Result<Duration, String>>,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> SubscriberReport {
    let mut report = SubscriberReport {
        seen: vec![0; shared.writes.div_ceil(64) as usize],
        ..SubscriberReport::default()
    };
    let started = Instant::now();
    let connecting = tokio::time::timeout(CONNECT_TIMEOUT, open(&target));
    let (mut stream, mut buffer, mut body) = match connecting.await {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => {
            let _ = connected.send(Err(e)).await;
            return report;
        }
        Err(_) => {
            let _ = connected
                .send(Err(format!("no response within {CONNECT_TIMEOUT:?}")))
                .await;
            return report;
        }
    };
    let mut scan = LineScan::default();
    let mut slot = Some(slot);
    let connect_deadline = tokio::time::sleep_until((started + CONNECT_TIMEOUT).into());
    tokio::pin!(connect_deadline);
    // One registration with the stop signal for the stream's life, not one per read: with
    // 10,000 subscribers, re-registering on every event costs more than the parsing.
    let stopped = stop.changed();
    tokio::pin!(stopped);
    loop {
        // `buffer` holds what the last read brought (after the response head, at first).
        let events_before = scan.events;
        let decoded = body.decode(&buffer, |data| {
            scan.feed(data, |line| {
                if let Some(seq) = shared.write_of(line) {
                    let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
                    if report.seen[word] & bit != 0 {
                        report.duplicated += 1;
                        return;
                    }
                    report.seen[word] |= bit;
                    shared.received.fetch_add(1, Ordering::Relaxed);
                    let sent = shared.sent_at_us[seq as usize].load(Ordering::Acquire);
                    if sent > 0 {
                        let latency = shared.now_us().saturating_sub(sent);
                        shared.latency.record(latency);
                        shared.window.record(latency);
                    }
                }
            });
        });
        buffer.clear();
        // The first body bytes came in a vector of their own size; later reads want room.
        buffer.reserve(READ_BUFFER_BYTES);
        report.resnapshots = scan.snapshots.saturating_sub(1);
        if !report.connected && scan.events > events_before {
            report.connected = true;
            slot = None;
            let _ = connected.send(Ok(started.elapsed())).await;
        }
        match decoded {
            Ok(false) => {}
            Ok(true) => {
                report.ended = Some("the event stream ended".to_owned());
                break;
            }
            Err(e) => {
                report.ended = Some(e);
                break;
            }
        }
        let read = tokio::select! {
            biased;
            _ = &mut stopped => return report,
            _ = &mut connect_deadline, if !report.connected => {
                report.ended = Some(format!("no first event within {CONNECT_TIMEOUT:?}"));
                break;
            }
            read = stream.read_buf(&mut buffer) => read,
        };
        match read {
            Ok(0) => {
                report.ended = Some("the node closed the connection".to_owned());
                break;
            }
            Ok(_) => {}
            Err(e) => {
                report.ended = Some(e.to_string());
                break;
            }
        }
    }
    drop(slot);
    if !report.connected {
        let reason = report.ended.take().unwrap_or_default();
        let _ = connected.send(Err(reason)).await;
    }
    report
}

/// TCP connect, the GET and the response head. Returns the stream, the body bytes that
/// came with the head, and the body's decoder. A plain HTTP/1.1 exchange written by hand:
/// hyper's client connection (a body channel and a dispatcher per stream) cost more than
/// everything else the subscriber does.
pub(super) async fn open(target: &HttpTarget) -> Result<(TcpStream, Vec<u8>, BodyDecoder), String> {
    let mut stream = TcpStream::connect(&target.authority)
        .await
        .map_err(|e| format!("connect {}: {e}", target.authority))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    let request = format!(
        "GET {}/v1/events HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        target.path_prefix, target.authority
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send GET /v1/events: {e}"))?;
    let mut buffer = Vec::with_capacity(READ_BUFFER_BYTES);
    let head_end = loop {
        if let Some(end) = find(&buffer, b"\r\n\r\n") {
            break end + 4;
        }
        if buffer.len() >= RESPONSE_HEAD_BYTES_MAX {
            return Err(format!(
                "no end of the response head in {RESPONSE_HEAD_BYTES_MAX} bytes"
            ));
        }
        let read = stream
            .read_buf(&mut buffer)
            .await
            .map_err(|e| format!("read the response head: {e}"))?;
        if read == 0 {
            return Err("the node closed the connection before a response".to_owned());
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
    let status = head.lines().next().unwrap_or_default().to_owned();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("GET /v1/events: {}", status.trim()));
    }
    let chunked = head.lines().any(|line| {
        line.strip_prefix("transfer-encoding:")
            .is_some_and(|value| value.contains("chunked"))
    });
    let body = buffer.split_off(head_end);
    let decoder = if chunked {
        BodyDecoder::Chunked(Chunked::default())
    } else {
        // An event stream without chunking runs until the connection closes.
        BodyDecoder::UntilClose
    };
    Ok((stream, body, decoder))
}
