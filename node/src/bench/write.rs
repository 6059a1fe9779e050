//! `statusmesh bench write`: load against a running mesh.
//!
//! `concurrency` writers each PUT a cell of their own (`<service>/w<i>/<region>`) in a loop,
//! with a new message every time so that every write is a real change (and an fsync). Each
//! acknowledged write's latency is recorded. With `--observe`, a follower of another node's
//! `/v1/events` measures remote visibility of every acknowledged write: from the moment it
//! was sent to the moment its own event arrived on the other node, or, when the node
//! coalesced it into a later event of its cell (which says so and why), counted as such.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use serde_json::json;

use super::parse_duration;
use super::visibility::{self, Ledger};

/// Most latency samples kept per series; beyond it, samples are no longer recorded (the
/// count still is). 20 million samples is 160 MB at most.
const SAMPLES_MAX: usize = 20_000_000;
/// Most acknowledged writes whose remote visibility is classified; beyond it, writes are no
/// longer tracked (the count of acknowledged writes still is).
const ACKED_TRACKED_MAX: usize = 1_000_000;
/// Longest SSE line buffer before the observer gives up on a malformed stream.
const SSE_BUFFER_MAX: usize = 16 * 1024 * 1024;
/// How long the observer keeps waiting for the last writes' events after the writers stop:
/// under a saturating load the mesh drains a backlog of seconds, and a write not seen by
/// then is reported as such.
const OBSERVE_GRACE: Duration = Duration::from_secs(30);

/// Settings of a write benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct WriteArgs {
    /// The node to write to, e.g. http://127.0.0.1:8101.
    #[arg(long)]
    pub target: String,
    /// The write token.
    #[arg(long, env = "STATUSMESH_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Writers running at once (each waits for its write's acknowledgement).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// How long to write, e.g. 10s, 500ms, 1m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// A node in another region whose /v1/events is followed to measure remote visibility.
    #[arg(long)]
    pub observe: Option<String>,
    /// The service the benchmark writes to.
    #[arg(long, default_value = "bench")]
    pub service: String,
    /// The region named in the written cells (default: the target's own region).
    #[arg(long)]
    pub region: Option<String>,
}

/// Latency samples in microseconds.
#[derive(Debug, Default)]
struct Samples {
    micros: Vec<u64>,
    count: u64,
}

impl Samples {
    fn record(&mut self, elapsed: Duration) {
        self.count += 1;
        if self.micros.len() < SAMPLES_MAX {
            self.micros.push(elapsed.as_micros() as u64);
        }
    }

    fn merge(&mut self, other: Samples) {
        self.count += other.count;
        let room = SAMPLES_MAX.saturating_sub(self.micros.len());
        self.micros.extend(other.micros.into_iter().take(room));
    }

    /// (p50, p99, max) in milliseconds.
    fn percentiles(&mut self) -> Option<(f64, f64, f64)> {
        if self.micros.is_empty() {
            return None;
        }
        self.micros.sort_unstable();
        let at = |q: f64| {
            let index = ((self.micros.len() as f64 - 1.0) * q).round() as usize;
            self.micros[index.min(self.micros.len() - 1)] as f64 / 1_000.0
        };
        Some((at(0.50), at(0.99), at(1.0)))
    }
}

/// What the observer saw, shared with its task.
type Observed = Arc<Mutex<Ledger>>;

/// Runs the benchmark and prints its report.
pub async fn write(args: WriteArgs) -> anyhow::Result<()> {
    if args.concurrency == 0 || args.concurrency > 10_000 {
        bail!(
            "--concurrency {}: must be between 1 and 10000",
            args.concurrency
        );
    }
    let target = args.target.trim_end_matches('/').to_owned();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .tcp_nodelay(true)
        .build()
        .context("cannot build the HTTP client")?;
    let nodes: serde_json::Value = client
        .get(format!("{target}/v1/nodes"))
        .send()
        .await
        .with_context(|| format!("cannot reach --target {target}"))?
        .json()
        .await
        .with_context(|| format!("{target}/v1/nodes did not answer JSON"))?;
    let target_node = nodes["node"].as_str().unwrap_or("?").to_owned();
    let region = match &args.region {
        Some(region) => region.clone(),
        None => nodes["region"]
            .as_str()
            .context("the target's /v1/nodes names no region; give --region")?
            .to_owned(),
    };

    let ledger: Observed = Arc::new(Mutex::new(Ledger::default()));
    let observer = match &args.observe {
        Some(url) => Some(start_observer(&client, url, &args.service, ledger.clone()).await?),
        None => None,
    };
    let tracked_per_writer = ACKED_TRACKED_MAX / args.concurrency;

    let started = Instant::now();
    let deadline = started + args.duration;
    let mut writers = Vec::with_capacity(args.concurrency);
    for worker in 0..args.concurrency {
        let client = client.clone();
        let url = format!("{target}/v1/status/{}/w{worker}/{region}", args.service);
        let token = args.token.clone();
        let track = args.observe.is_some();
        let worker = worker as u32;
        writers.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            let mut errors = 0u64;
            let mut first_error = None;
            let mut acknowledged = Vec::new();
            let mut seq = 0u64;
            while Instant::now() < deadline {
                seq += 1;
                let message = visibility::message(worker, seq);
                let sent = Instant::now();
                let result = client
                    .put(&url)
                    .bearer_auth(&token)
                    .json(&json!({"state": "operational", "message": message, "ttl_s": 600}))
                    .send()
                    .await;
                match result {
                    Ok(response) if response.status().is_success() => {
                        // Read the body so the connection goes back to the pool.
                        let _ = response.bytes().await;
                        samples.record(sent.elapsed());
                        if track && acknowledged.len() < tracked_per_writer {
                            acknowledged.push((worker, seq, sent));
                        }
                    }
                    Ok(response) => {
                        errors += 1;
                        let status = response.status();
                        let body = response.text().await.unwrap_or_default();
                        first_error.get_or_insert(format!("HTTP {status}: {body}"));
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e.to_string());
                    }
                }
            }
            (samples, errors, first_error, acknowledged)
        }));
    }
    let mut latency = Samples::default();
    let mut errors = 0u64;
    let mut first_error = None;
    let mut acknowledged = Vec::new();
    for writer in writers {
        let (samples, e, first, acked) = writer.await.context("a writer task failed")?;
        latency.merge(samples);
        acknowledged.extend(acked);
        errors += e;
        if first_error.is_none() {
            first_error = first;
        }
    }
    let elapsed = started.elapsed();
    let visibility = match observer {
        Some(observer) => {
            // The last writes need a moment to cross the mesh: wait (bounded) until the
            // observer has heard of the last acknowledged write of every writer.
            let stopped = Instant::now();
            let grace = stopped + OBSERVE_GRACE;
            let last: Vec<(u32, u64, Instant)> = {
                let mut last: HashMap<u32, (u32, u64, Instant)> = HashMap::new();
                for &w in &acknowledged {
                    last.insert(w.0, w);
                }
                last.into_values().collect()
            };
            while Instant::now() < grace {
                let heard = ledger
                    .lock()
                    .map(|l| l.classify(&last).not_seen == 0)
                    .unwrap_or(true);
                if heard {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            observer.abort();
            if let Ok(Err(e)) = observer.await {
                return Err(e);
            }
            let waited = stopped.elapsed();
            ledger
                .lock()
                .ok()
                .map(|l| (l.classify(&acknowledged), waited))
        }
        None => None,
    };

    let rate = latency.count as f64 / elapsed.as_secs_f64();
    println!("statusmesh bench write");
    println!("  target       {target} (node {target_node})");
    if let Some(url) = &args.observe {
        println!("  observe      {url}");
    }
    println!("  concurrency  {}", args.concurrency);
    println!("  duration     {:.1}s", elapsed.as_secs_f64());
    println!(
        "  cells        {}/w0..w{}/{region}, a new message per write",
        args.service,
        args.concurrency - 1
    );
    println!(
        "acknowledged   {} writes, {rate:.0} writes/s, {errors} errors",
        latency.count
    );
    if let Some(first) = first_error {
        println!("first error    {first}");
    }
    if let Some((p50, p99, max)) = latency.percentiles() {
        println!("write latency  p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms");
    }
    if let Some((visibility, waited)) = visibility {
        let mut samples = Samples::default();
        for latency in &visibility.seen {
            samples.record(*latency);
        }
        let coalesced: u64 = visibility.coalesced.values().sum();
        let reasons: Vec<String> = visibility
            .coalesced
            .iter()
            .map(|(reason, n)| format!("{n} {reason}"))
            .collect();
        let tracked = acknowledged.len();
        match samples.percentiles() {
            Some((p50, p99, max)) => println!(
                "remote visible p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms, as its own event"
            ),
            None => println!("remote visible none of the writes was seen on the observed node"),
        }
        println!(
            "  of {tracked} acknowledged writes: {} seen as their own event, {coalesced} coalesced{}, {} not seen",
            visibility.seen.len(),
            if reasons.is_empty() {
                String::new()
            } else {
                format!(" ({})", reasons.join(", "))
            },
            visibility.not_seen
        );
        println!(
            "  the observer waited {:.2} s after the writers stopped (at most {} s)",
            waited.as_secs_f64(),
            OBSERVE_GRACE.as_secs()
        );
    }
    Ok(())
}

/// Connects to `url`'s /v1/events (filtered to `service`), waits for its first event, then
/// follows it in a task that records every status event into `ledger` until it is aborted or
/// the stream ends.
async fn start_observer(
    client: &reqwest::Client,
    url: &str,
    service: &str,
    ledger: Observed,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let url = format!("{}/v1/events?service={service}", url.trim_end_matches('/'));
    let response = client
        .get(&url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .with_context(|| format!("cannot follow --observe {url}"))?;
    if !response.status().is_success() {
        bail!("--observe {url}: HTTP {}", response.status());
    }
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    // The first event (the snapshot) proves the subscription is live before writes start.
    loop {
        if buffer.contains("\n\n") {
            break;
        }
        match stream.next().await {
            Some(Ok(chunk)) => buffer.push_str(&String::from_utf8_lossy(&chunk)),
            Some(Err(e)) => bail!("--observe {url}: {e}"),
            None => bail!("--observe {url}: the stream ended before its first event"),
        }
        if buffer.len() > SSE_BUFFER_MAX {
            bail!("--observe {url}: no event boundary in {SSE_BUFFER_MAX} bytes");
        }
    }
    Ok(tokio::spawn(async move {
        loop {
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                observe_block(&block, &ledger);
            }
            match stream.next().await {
                Some(Ok(chunk)) => buffer.push_str(&String::from_utf8_lossy(&chunk)),
                Some(Err(_)) | None => return Ok(()),
            }
            if buffer.len() > SSE_BUFFER_MAX {
                bail!("observed stream: no event boundary in {SSE_BUFFER_MAX} bytes");
            }
        }
    }))
}

fn observe_block(block: &str, ledger: &Mutex<Ledger>) {
    let (mut is_status, mut kind_is_snapshot) = (false, false);
    let mut data = String::new();
    for line in block.lines() {
        if let Some(kind) = line.strip_prefix("event:") {
            is_status = kind.trim() == "status";
            kind_is_snapshot = kind.trim() == "snapshot";
        } else if let Some(payload) = line.strip_prefix("data:") {
            data.push_str(payload.trim_start());
        }
    }
    if kind_is_snapshot {
        if let Ok(mut ledger) = ledger.lock() {
            ledger.observe_snapshot(Instant::now());
        }
        return;
    }
    if !is_status {
        return;
    }
    let Ok(value) = serde_json::from_str::<serde_json::Value>(&data) else {
        return;
    };
    let Some(message) = value["message"].as_str() else {
        return;
    };
    let coalesced = value["coalesced"].as_u64().map(|_| {
        value["coalesced_reason"]
            .as_str()
            .unwrap_or("unknown")
            .to_owned()
    });
    if let Ok(mut ledger) = ledger.lock() {
        ledger.observe(message, coalesced, Instant::now());
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_sorted_samples() {
        let mut samples = Samples::default();
        for ms in (1..=100).rev() {
            samples.record(Duration::from_millis(ms));
        }
        assert_eq!(samples.percentiles(), Some((51.0, 99.0, 100.0)));
    }
}
