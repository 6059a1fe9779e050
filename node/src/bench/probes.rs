//! `statusmesh bench probes`: regional probe scheduling under load, measured at the target.
//!
//! The benchmark runs its own HTTP target on loopback (one path per check), adds `--checks`
//! http checks probed from one region (`--region`, default the node's own) every
//! `--interval`, lets them run for `--duration`, then removes them. From the arrival times
//! of each check's probes at the target it reports probes per second, missed intervals (a
//! gap of more than 1.5 intervals counts the intervals it skipped) and scheduling lag: each
//! check's k-th probe is expected at `base + k × interval`, where `base` is the check's own
//! phase (the earliest `arrival_k - k × interval`), and its lag is how much later it came.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::parse_duration;

/// Most checks one run may add.
const CHECKS_MAX: usize = 100_000;
/// Most arrivals kept per check.
const ARRIVALS_PER_CHECK_MAX: usize = 10_000;
/// Requests in flight while adding and removing checks.
const SETUP_CONCURRENCY: usize = 64;
/// Longest request head the target reads.
const HEAD_BYTES_MAX: usize = 8 * 1024;

/// Settings of a probe benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct ProbesArgs {
    /// The node to add the checks on, e.g. http://127.0.0.1:8101.
    #[arg(long)]
    pub target: String,
    /// An operator token.
    #[arg(long, env = "STATUSMESH_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Checks to add.
    #[arg(long, default_value_t = 1000)]
    pub checks: usize,
    /// Probe interval of every check (whole seconds), e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub interval: Duration,
    /// How long to measure after the checks are added and have run two intervals.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// The region that probes the checks (default: the target node's own).
    #[arg(long)]
    pub region: Option<String>,
    /// The service the checks are added to.
    #[arg(long, default_value = "bench-probes")]
    pub service: String,
}

/// Arrival times per check index.
type Arrivals = Arc<Mutex<Vec<Vec<Instant>>>>;

/// Runs the benchmark and prints its report.
pub async fn probes(args: ProbesArgs) -> anyhow::Result<()> {
    if args.checks == 0 || args.checks > CHECKS_MAX {
        bail!(
            "--checks {}: must be between 1 and {CHECKS_MAX}",
            args.checks
        );
    }
    let interval_s = args.interval.as_secs();
    if interval_s == 0 || args.interval.subsec_nanos() != 0 {
        bail!("--interval {:?}: whole seconds, at least 1s", args.interval);
    }
    let node = args.target.trim_end_matches('/').to_owned();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(SETUP_CONCURRENCY)
        .build()
        .context("cannot build the HTTP client")?;
    let nodes: serde_json::Value = client
        .get(format!("{node}/v1/nodes"))
        .send()
        .await
        .with_context(|| format!("cannot reach --target {node}"))?
        .json()
        .await
        .context("/v1/nodes did not answer JSON")?;
    let region = match &args.region {
        Some(r) => r.clone(),
        None => nodes["region"]
            .as_str()
            .context("the node names no region; give --region")?
            .to_owned(),
    };

    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind the target")?;
    let address = listener.local_addr().context("target address")?;
    let arrivals: Arrivals = Arc::new(Mutex::new(vec![Vec::new(); args.checks]));
    let server = tokio::spawn(serve(listener, arrivals.clone()));

    let timeout_ms = (interval_s * 1000).min(2000);
    let added = Instant::now();
    let results: Vec<Result<(), String>> = futures_util::stream::iter(0..args.checks)
        .map(|i| {
            let client = client.clone();
            let url = format!("{node}/v1/checks/{}/c{i}", args.service);
            let body = json!({
                "kind": "http",
                "target": format!("http://{address}/c{i}"),
                "interval_s": interval_s,
                "timeout_ms": timeout_ms,
                "failures_before_down": 1,
                "regions": [region],
            });
            let token = args.token.clone();
            async move { send(client.put(url).bearer_auth(token).json(&body)).await }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect()
        .await;
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        bail!("adding the checks failed: {e}");
    }
    let add_time = added.elapsed();

    // Two intervals to settle (every check assigned and on its cadence), then measure.
    tokio::time::sleep(args.interval * 2).await;
    let from = Instant::now();
    tokio::time::sleep(args.duration).await;
    let to = Instant::now();

    let removed: Vec<Result<(), String>> = futures_util::stream::iter(0..args.checks)
        .map(|i| {
            let client = client.clone();
            let url = format!("{node}/v1/checks/{}/c{i}", args.service);
            let token = args.token.clone();
            async move { send(client.delete(url).bearer_auth(token)).await }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect()
        .await;
    server.abort();
    let removal_failures = removed.iter().filter(|r| r.is_err()).count();

    let per_check = arrivals
        .lock()
        .map_err(|_| anyhow::anyhow!("arrivals lock poisoned"))?
        .clone();
    let mut report = measure(&per_check, from, to, args.interval);
    println!(
        "bench probes: {} checks, interval {interval_s}s, timeout {timeout_ms} ms, region {region}, \
         node {node}, measured {:?} after 2 intervals of warm-up; added in {add_time:?}",
        args.checks, args.duration
    );
    println!(
        "  probes: {} ({:.1} checks/s; expected {:.1}/s)",
        report.probes,
        report.probes as f64 / (to - from).as_secs_f64(),
        args.checks as f64 / interval_s as f64
    );
    println!(
        "  missed intervals: {} (checks never probed in the window: {})",
        report.missed, report.silent
    );
    match report.lag_ms() {
        Some((p50, p99, max)) => {
            println!("  scheduling lag: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms")
        }
        None => println!("  scheduling lag: no samples"),
    }
    if removal_failures > 0 {
        println!("  {removal_failures} checks could not be removed");
    }
    Ok(())
}

async fn send(request: reqwest::RequestBuilder) -> Result<(), String> {
    let response = request.send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    Err(format!("HTTP {status}: {body}"))
}

/// The target: records each `GET /c<i>` and answers 200.
async fn serve(listener: TcpListener, arrivals: Arrivals) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            let at = Instant::now();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < HEAD_BYTES_MAX {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let index = std::str::from_utf8(&head)
                .ok()
                .and_then(|t| t.split(' ').nth(1))
                .and_then(|path| path.strip_prefix("/c"))
                .and_then(|i| i.parse::<usize>().ok());
            if let (Some(i), Ok(mut all)) = (index, arrivals.lock()) {
                if let Some(list) = all.get_mut(i) {
                    if list.len() < ARRIVALS_PER_CHECK_MAX {
                        list.push(at);
                    }
                }
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .await;
            let _ = stream.shutdown().await;
        });
    }
}

/// What the arrivals in a window say.
#[derive(Debug, Default, PartialEq)]
struct Report {
    probes: usize,
    missed: u64,
    silent: usize,
    lag_us: Vec<u64>,
}

impl Report {
    fn lag_ms(&mut self) -> Option<(f64, f64, f64)> {
        if self.lag_us.is_empty() {
            return None;
        }
        self.lag_us.sort_unstable();
        let at = |q: f64| {
            let i = ((self.lag_us.len() as f64 - 1.0) * q).round() as usize;
            self.lag_us[i.min(self.lag_us.len() - 1)] as f64 / 1000.0
        };
        Some((at(0.5), at(0.99), at(1.0)))
    }
}

fn measure(per_check: &[Vec<Instant>], from: Instant, to: Instant, interval: Duration) -> Report {
    let mut report = Report::default();
    let interval_us = interval.as_micros() as i128;
    for arrivals in per_check {
        let window: Vec<Instant> = arrivals
            .iter()
            .copied()
            .filter(|at| (from..to).contains(at))
            .collect();
        if window.is_empty() {
            report.silent += 1;
            // The whole window went by without a probe.
            report.missed += (to - from).as_micros() as u64 / interval_us as u64;
            continue;
        }
        report.probes += window.len();
        // Gaps inside the window, and at its edges.
        let mut edges = vec![from];
        edges.extend(window.iter().copied());
        edges.push(to);
        for pair in edges.windows(2) {
            let gap = (pair[1] - pair[0]).as_micros() as i128;
            if gap * 2 > interval_us * 3 {
                report.missed += ((gap + interval_us / 2) / interval_us - 1).max(0) as u64;
            }
        }
        // Each probe's offset from its nearest slot on the first probe's cadence (a missed
        // interval does not shift the slots); the earliest offset is the check's phase.
        let first = window[0];
        let offsets: Vec<i128> = window
            .iter()
            .map(|at| {
                let since = (*at - first).as_micros() as i128;
                let slot = (since + interval_us / 2) / interval_us;
                since - slot * interval_us
            })
            .collect();
        let base = offsets.iter().copied().min().unwrap_or(0);
        report
            .lag_us
            .extend(offsets.iter().map(|o| (o - base).max(0) as u64));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_cadence_has_no_lag_and_no_miss() {
        let from = Instant::now();
        let interval = Duration::from_secs(1);
        let steady: Vec<Instant> = (0..10)
            .map(|k| from + Duration::from_millis(300) + interval * k)
            .collect();
        let mut report = measure(&[steady], from, from + interval * 10, interval);
        assert_eq!(report.probes, 10);
        assert_eq!(report.missed, 0);
        assert_eq!(report.lag_ms().map(|l| l.1), Some(0.0));
    }

    #[test]
    fn a_gap_counts_the_intervals_it_skipped_and_a_late_probe_its_lag() {
        let from = Instant::now();
        let interval = Duration::from_secs(1);
        let ms = Duration::from_millis;
        let arrivals = vec![from + ms(100), from + ms(1150), from + ms(4100)];
        let mut report = measure(&[arrivals, Vec::new()], from, from + ms(5000), interval);
        assert_eq!(report.missed, 2 + 5);
        assert_eq!(report.silent, 1);
        // The second probe came 50 ms after its slot; the third is on its slot after the gap.
        assert_eq!(report.lag_ms(), Some((0.0, 50.0, 50.0)));
    }
}
