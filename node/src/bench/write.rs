//! `statusmesh bench write`: load against a running mesh.
//!
//! `concurrency` writers each PUT a cell of their own (`<service>/w<i>/<region>`) in a loop,
//! with a new message every time so that every write is a real change (and an fsync). Each
//! acknowledged write's latency is recorded. With `--observe`, a follower of another node's
//! `/v1/events` measures remote visibility: from the moment a write was sent to the moment
//! its event arrived on the other node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use serde_json::json;

use super::parse_duration;

/// Most latency samples kept per series; beyond it, samples are no longer recorded (the
/// count still is). 20 million samples is 160 MB at most.
const SAMPLES_MAX: usize = 20_000_000;
/// Most writes in flight awaiting their remote event; older ones are given up on.
const IN_FLIGHT_MAX: usize = 1_000_000;
/// Longest SSE line buffer before the observer gives up on a malformed stream.
const SSE_BUFFER_MAX: usize = 16 * 1024 * 1024;
/// How long the observer keeps waiting for the last writes' events after the writers stop.
const OBSERVE_GRACE: Duration = Duration::from_secs(2);

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

/// Writes sent and not yet seen by the observer: message → when it was sent.
type InFlight = Arc<Mutex<HashMap<String, Instant>>>;

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

    let in_flight: InFlight = Arc::new(Mutex::new(HashMap::new()));
    let seen = Arc::new(Mutex::new(Samples::default()));
    let observer = match &args.observe {
        Some(url) => Some(
            start_observer(&client, url, &args.service, in_flight.clone(), seen.clone()).await?,
        ),
        None => None,
    };

    let started = Instant::now();
    let deadline = started + args.duration;
    let mut writers = Vec::with_capacity(args.concurrency);
    for worker in 0..args.concurrency {
        let client = client.clone();
        let url = format!("{target}/v1/status/{}/w{worker}/{region}", args.service);
        let token = args.token.clone();
        let in_flight = args.observe.as_ref().map(|_| in_flight.clone());
        writers.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            let mut errors = 0u64;
            let mut first_error = None;
            let mut seq = 0u64;
            while Instant::now() < deadline {
                seq += 1;
                let message = format!("w{worker}-{seq}");
                let sent = Instant::now();
                if let Some(map) = &in_flight {
                    if let Ok(mut map) = map.lock() {
                        if map.len() < IN_FLIGHT_MAX {
                            map.insert(message.clone(), sent);
                        }
                    }
                }
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
            (samples, errors, first_error)
        }));
    }
    let mut latency = Samples::default();
    let mut errors = 0u64;
    let mut first_error = None;
    for writer in writers {
        let (samples, e, first) = writer.await.context("a writer task failed")?;
        latency.merge(samples);
        errors += e;
        if first_error.is_none() {
            first_error = first;
        }
    }
    let elapsed = started.elapsed();
    let visibility = match observer {
        Some(observer) => {
            // The last writes need a moment to cross the mesh.
            let grace = Instant::now() + OBSERVE_GRACE;
            while Instant::now() < grace && in_flight.lock().map(|m| !m.is_empty()).unwrap_or(false)
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            observer.abort();
            if let Ok(Err(e)) = observer.await {
                return Err(e);
            }
            let missing = in_flight.lock().map(|m| m.len()).unwrap_or(0);
            let samples = seen.lock().map(|mut s| std::mem::take(&mut *s)).ok();
            samples.map(|s| (s, missing))
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
    if let Some((mut samples, missing)) = visibility {
        let seen = samples.count;
        match samples.percentiles() {
            Some((p50, p99, max)) => println!(
                "remote visible p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms ({seen} seen; {missing} not seen: a node coalesces a cell's changes that arrive together to the latest value)"
            ),
            None => println!("remote visible none of the writes was seen on the observed node"),
        }
    }
    Ok(())
}

/// Connects to `url`'s /v1/events (filtered to `service`), waits for its first event, then
/// follows it in a task that records into `seen` until it is aborted or the stream ends.
async fn start_observer(
    client: &reqwest::Client,
    url: &str,
    service: &str,
    in_flight: InFlight,
    seen: Arc<Mutex<Samples>>,
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
                observe_block(&block, &in_flight, &seen);
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

fn observe_block(block: &str, in_flight: &InFlight, seen: &Mutex<Samples>) {
    let mut is_status = false;
    let mut data = String::new();
    for line in block.lines() {
        if let Some(kind) = line.strip_prefix("event:") {
            is_status = kind.trim() == "status";
        } else if let Some(payload) = line.strip_prefix("data:") {
            data.push_str(payload.trim_start());
        }
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
    let sent = in_flight.lock().ok().and_then(|mut m| m.remove(message));
    if let (Some(sent), Ok(mut samples)) = (sent, seen.lock()) {
        samples.record(sent.elapsed());
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
