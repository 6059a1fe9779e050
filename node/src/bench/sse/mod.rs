//! `statusmesh bench sse`: SSE fan-out against a running mesh.
//!
//! 1. `--subscribers` streams follow `--target`'s `/v1/events`, at most
//!    `--connect-concurrency` connecting at once. A subscriber counts as connected when its
//!    first event (the snapshot) has arrived; the time until then is its connect time.
//! 2. The target node's RSS is read before the first connect and after the last one.
//! 3. `--rate` writes per second go to `--write` (another node) for `--duration`. Write `i`
//!    puts cell `<service>/c<i % 16>/<region>`, flipping its state each time and carrying the
//!    unique message `<run tag>-<i>`, so every write is a real change and every delivery
//!    names its write.
//! 4. After the last write, subscribers get a bounded grace period to catch up; then each
//!    reports which writes it saw. A delivery is one `event: status` for one write on one
//!    subscriber; the expected deliveries are every acknowledged change on every connected
//!    subscriber. Latency runs from just before the write was sent to the moment the
//!    subscriber parsed the event (one machine, one monotonic clock).
//!
//! Each subscriber is one tokio task with its own plain HTTP/1.1 connection, scanning
//! the body for the few lines it needs (`event:` and the data line's `"message"`), with a
//! small fixed read buffer: 10,000 of them fit in one process next to the node.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use tokio::sync::{mpsc, watch, Semaphore};

use super::parse_duration;
use histogram::{Histogram, Percentiles};
use process::{print_growth, read_process, read_rss_kib, sample, Sampling};
use subscriber::{run_tag, subscribe, HttpTarget, Shared, Tally};
use writes::{node_info, put, WriteOutcomes};

mod decode;
mod histogram;
mod process;
mod subscriber;
#[cfg(test)]
mod tests;
mod writes;

/// Most subscribers one bench process opens (the open-file hard limit here is 20,000).
pub const SUBSCRIBERS_MAX: usize = 19_000;
/// Most writes per second.
pub const RATE_MAX: u32 = 1_000;
/// Longest run.
pub const DURATION_MAX: Duration = Duration::from_secs(600);
/// Most expected deliveries (subscribers x writes): bounds the per-subscriber bitsets of
/// seen writes to 50 MB in all.
pub const DELIVERIES_MAX: u64 = 400_000_000;
/// Most connects in flight at once.
pub const CONNECT_CONCURRENCY_MAX: usize = 10_000;
/// How long one subscriber may take from TCP connect to its first event.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long subscribers may take to receive the last writes after the writers stop.
const GRACE: Duration = Duration::from_secs(10);
/// Writes awaiting their acknowledgement at once; the rate holds while writes are slower
/// than 1/rate, up to this many.
const WRITES_IN_FLIGHT_MAX: usize = 64;
/// Distinct cells written round-robin; each write flips its cell's state.
const CELLS: u64 = 16;
/// The subscribers' read buffer: a subscriber that fell behind drains dozens of status
/// events (a few hundred bytes each) per read; larger bodies take several reads. Only the
/// bytes a read fills are touched.
const READ_BUFFER_BYTES: usize = 16 * 1024;
/// Longest response head a subscriber accepts.
const RESPONSE_HEAD_BYTES_MAX: usize = 16 * 1024;
/// Largest chunk a subscriber accepts (the node sends one event per chunk).
const CHUNK_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Longest SSE line a subscriber keeps; longer lines (a big snapshot) are skipped, since a
/// benchmark status line is a few hundred bytes.
const LINE_BYTES_MAX: usize = 4096;
/// The data line carries this key before the write's message (serde_json's compact form).
const MESSAGE_KEY: &[u8] = br#""message":""#;

/// The load both `bench sse` and `bench soak` put on a mesh.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// SSE subscribers opened on --target (1 to 19000).
    #[arg(long)]
    pub subscribers: usize,
    /// Status changes written per second on --write (1 to 1000).
    #[arg(long)]
    pub rate: u32,
    /// The node whose /v1/events the subscribers follow, e.g. http://127.0.0.1:8101.
    #[arg(long)]
    pub target: String,
    /// The node the writes go to (another node of the same mesh).
    #[arg(long)]
    pub write: String,
    /// The write token.
    #[arg(long, env = "STATUSMESH_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Subscribers connecting at once (each holds its slot until its snapshot arrives). The
    /// default stays under the node's listen backlog (128): past it, dropped SYNs are
    /// retried after a second and connect times measure the kernel's retry timer.
    #[arg(long, default_value_t = 100)]
    pub connect_concurrency: usize,
    /// The service the benchmark writes to.
    #[arg(long, default_value = "bench")]
    pub service: String,
}

/// Settings of an SSE fan-out benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct SseArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// How long to write, e.g. 30s, 500ms, 2m (at most 10m).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// The target node's process id, to read its RSS from /proc (not measured without it).
    #[arg(long)]
    pub target_pid: Option<u32>,
}

/// Settings of a soak: the same load held for minutes, sampled as it runs.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// How long to hold the load, in minutes (fractions allowed, up to 60).
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// How often to sample the nodes and print a line, e.g. 30s (1s to 10m).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Process ids of the mesh's nodes whose RSS and open files are sampled (repeatable;
    /// the first one is the target's, for the RSS per subscriber).
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
}

/// Longest soak, in minutes.
pub const SOAK_MINUTES_MAX: f64 = 60.0;

/// Runs the benchmark and prints its report.
pub async fn sse(args: SseArgs) -> anyhow::Result<()> {
    if args.duration > DURATION_MAX {
        bail!(
            "--duration {:?}: must be at most {DURATION_MAX:?}",
            args.duration
        );
    }
    let pids: Vec<u32> = args.target_pid.into_iter().collect();
    run("sse", &args.load, args.duration, &pids, None).await
}

/// Holds the load for `--minutes`, printing every `--interval` the RSS and open files of
/// each `--pid` and the delivery latency of that interval, then the whole run's report and
/// the growth from the first sample after warm-up to the last.
pub async fn soak(args: SoakArgs) -> anyhow::Result<()> {
    if !(args.minutes > 0.0 && args.minutes <= SOAK_MINUTES_MAX) {
        bail!(
            "--minutes {}: must be above 0 and at most {SOAK_MINUTES_MAX}",
            args.minutes
        );
    }
    if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&args.interval) {
        bail!("--interval {:?}: must be between 1s and 10m", args.interval);
    }
    for pid in &args.pids {
        read_process(*pid)?;
    }
    let sampling = Sampling {
        interval: args.interval,
        pids: args.pids.clone(),
    };
    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    run("soak", &args.load, duration, &args.pids, Some(sampling)).await
}

/// The shared body of both commands: connect, write for `duration` (sampling if asked),
/// let the last deliveries arrive, report.
async fn run(
    name: &str,
    args: &LoadArgs,
    duration: Duration,
    pids: &[u32],
    sampling: Option<Sampling>,
) -> anyhow::Result<()> {
    let plan = Plan::new(args, duration)?;
    let target_pid = pids.first().copied();
    let files = raise_open_file_limit()?;
    if (files as usize) < args.subscribers + 64 {
        bail!(
            "--subscribers {} needs as many open files, and the limit is {files}",
            args.subscribers
        );
    }
    let target = HttpTarget::parse(&args.target).context("--target")?;
    let write_base = args.write.trim_end_matches('/').to_owned();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(WRITES_IN_FLIGHT_MAX)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot build the HTTP client")?;
    let target_node = node_info(&client, &target.base).await?;
    let write_node = node_info(&client, &write_base).await?;
    let region = write_node.region.clone();

    let epoch = Instant::now();
    let shared = Arc::new(Shared {
        epoch,
        tag: run_tag(),
        writes: plan.writes,
        sent_at_us: (0..plan.writes).map(|_| AtomicU64::new(0)).collect(),
        latency: Histogram::new(),
        window: Histogram::new(),
        received: AtomicU64::new(0),
    });

    // Connect every subscriber; each holds a connect slot until its snapshot arrives.
    let rss_before = target_pid.map(read_rss_kib).transpose()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (connected_tx, mut connected_rx) = mpsc::channel(args.subscribers);
    let slots = Arc::new(Semaphore::new(args.connect_concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let connect_started = Instant::now();
    for _ in 0..args.subscribers {
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .context("the connect semaphore closed")?;
        let (shared, target, stop, connected) = (
            shared.clone(),
            target.clone(),
            stop_rx.clone(),
            connected_tx.clone(),
        );
        tasks.spawn(async move { subscribe(shared, target, stop, connected, slot).await });
    }
    drop(connected_tx);
    let mut connect_us = Vec::with_capacity(args.subscribers);
    let mut connect_errors = 0usize;
    let mut first_connect_error = None;
    while let Some(result) = connected_rx.recv().await {
        match result {
            Ok(elapsed) => connect_us.push(elapsed.as_micros() as u64),
            Err(e) => {
                connect_errors += 1;
                first_connect_error.get_or_insert(e);
            }
        }
        if connect_us.len() + connect_errors == args.subscribers {
            break;
        }
    }
    let connect_total = connect_started.elapsed();
    let rss_connected = target_pid.map(read_rss_kib).transpose()?;
    if connect_us.is_empty() {
        bail!(
            "no subscriber connected to {}: {}",
            target.base,
            first_connect_error.unwrap_or_default()
        );
    }

    // Write at the planned rate; each write is its own task so a slow fsync does not
    // slow the rate, up to WRITES_IN_FLIGHT_MAX at once.
    let writes_started = Instant::now();
    let (sampler_stop, sampler_stopped) = watch::channel(false);
    let sampler = sampling.map(|sampling| {
        tokio::spawn(sample(
            sampling,
            shared.clone(),
            writes_started,
            sampler_stopped,
        ))
    });
    let mut ticker = tokio::time::interval(plan.period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let in_flight = Arc::new(Semaphore::new(WRITES_IN_FLIGHT_MAX));
    let mut writers = tokio::task::JoinSet::new();
    let mut outcomes = WriteOutcomes::new(plan.writes);
    for seq in 0..plan.writes {
        ticker.tick().await;
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .context("the write semaphore closed")?;
        let cell = seq % CELLS;
        let url = format!("{write_base}/v1/status/{}/c{cell}/{region}", args.service);
        let state = if (seq / CELLS).is_multiple_of(2) {
            "degraded_performance"
        } else {
            "operational"
        };
        let body = json!({
            "state": state,
            "message": format!("{}-{seq}", shared.tag),
            "ttl_s": 3600,
        });
        let (client, token, shared) = (client.clone(), args.token.clone(), shared.clone());
        writers.spawn(async move {
            let _permit = permit;
            shared.sent_at_us[seq as usize].store(shared.now_us().max(1), Ordering::Release);
            (seq, put(&client, &url, &token, &body).await)
        });
        while let Some(done) = writers.try_join_next() {
            outcomes.record(done.context("a write task failed")?);
        }
    }
    while let Some(done) = writers.join_next().await {
        outcomes.record(done.context("a write task failed")?);
    }
    let writes_elapsed = writes_started.elapsed();
    let _ = sampler_stop.send(true);
    let samples = match sampler {
        Some(task) => task.await.context("the sampler failed")??,
        None => Vec::new(),
    };

    // Let the last deliveries arrive, then stop every subscriber and collect what it saw.
    let expected_per_subscriber = outcomes.changed;
    let live = connect_us.len() as u64;
    let grace = Instant::now() + GRACE;
    while Instant::now() < grace
        && shared.received.load(Ordering::Relaxed) < expected_per_subscriber * live
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rss_end = target_pid.map(read_rss_kib).transpose()?;
    let _ = stop_tx.send(true);
    let mut tally = Tally::default();
    while let Some(done) = tasks.join_next().await {
        let report = done.context("a subscriber task failed")?;
        tally.add(&report, &outcomes);
    }

    // The report.
    println!("statusmesh bench {name}");
    println!(
        "  target       {}/v1/events (node {}){}",
        target.base,
        target_node.id,
        target_pid.map_or(String::new(), |pid| format!(", pid {pid}"))
    );
    println!(
        "  write        {write_base} (node {}), cells {}/c0..c{}/{region}, state flipped and a unique message per write",
        write_node.id,
        args.service,
        CELLS - 1
    );
    println!(
        "  subscribers  {} (connect concurrency {}, open-file limit {files})",
        args.subscribers, args.connect_concurrency
    );
    println!(
        "  rate         {}/s for {:.1}s: {} writes (run tag {})",
        args.rate,
        duration.as_secs_f64(),
        plan.writes,
        shared.tag
    );
    let connect = Percentiles::from_micros(connect_us);
    println!(
        "connect        {} of {} subscribed in {:.2}s total; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        live,
        args.subscribers,
        connect_total.as_secs_f64(),
        connect.at(0.50),
        connect.at(0.99),
        connect.at(1.0),
    );
    if connect_errors > 0 {
        println!(
            "connect errors {connect_errors}, first: {}",
            first_connect_error.unwrap_or_default()
        );
    }
    println!(
        "writes         {} sent in {:.2}s ({:.1}/s): {} changes acknowledged, {} unchanged, {} errors",
        plan.writes,
        writes_elapsed.as_secs_f64(),
        plan.writes as f64 / writes_elapsed.as_secs_f64(),
        outcomes.changed,
        outcomes.unchanged,
        outcomes.errors,
    );
    if let Some(first) = &outcomes.first_error {
        println!("first error    {first}");
    }
    let expected = expected_per_subscriber * live;
    println!(
        "deliveries     expected {expected}, received {}, lost {}, duplicated {}",
        tally.received, tally.lost, tally.duplicated
    );
    println!(
        "subscribers    {} re-snapshots (lagged), {} streams ended early, {} deliveries of unacknowledged writes",
        tally.resnapshots, tally.ended, tally.unacknowledged
    );
    if let Some(first) = &tally.first_end {
        println!("first end      {first}");
    }
    match shared.latency.percentiles(&[0.50, 0.95, 0.99]) {
        Some((values, max)) => println!(
            "latency        p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            values[0], values[1], values[2], max
        ),
        None => println!("latency        no delivery was received"),
    }
    match (rss_before, rss_connected) {
        (Some(before), Some(after)) => println!(
            "target RSS     {:.1} MiB before, {:.1} MiB with {live} subscribers: {:.2} KiB per subscriber ({:.1} MiB at the end)",
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            after.saturating_sub(before) as f64 / live as f64,
            rss_end.unwrap_or(0) as f64 / 1024.0,
        ),
        _ => println!("target RSS     not measured (give --target-pid)"),
    }
    print_growth(&samples);
    Ok(())
}

/// The validated shape of a run.
#[derive(Debug)]
struct Plan {
    writes: u64,
    period: Duration,
}

impl Plan {
    fn new(args: &LoadArgs, duration: Duration) -> anyhow::Result<Self> {
        if !(1..=SUBSCRIBERS_MAX).contains(&args.subscribers) {
            bail!(
                "--subscribers {}: must be between 1 and {SUBSCRIBERS_MAX}",
                args.subscribers
            );
        }
        if !(1..=RATE_MAX).contains(&args.rate) {
            bail!("--rate {}: must be between 1 and {RATE_MAX}", args.rate);
        }
        if !(1..=CONNECT_CONCURRENCY_MAX).contains(&args.connect_concurrency) {
            bail!(
                "--connect-concurrency {}: must be between 1 and {CONNECT_CONCURRENCY_MAX}",
                args.connect_concurrency
            );
        }
        if args.token.is_empty() {
            bail!("--token must not be empty");
        }
        let writes = ((duration.as_secs_f64() * f64::from(args.rate)).ceil() as u64).max(1);
        let deliveries = writes.saturating_mul(args.subscribers as u64);
        if deliveries > DELIVERIES_MAX {
            bail!(
                "{} subscribers x {writes} writes = {deliveries} deliveries: at most {DELIVERIES_MAX}; lower --subscribers, --rate or --duration",
                args.subscribers
            );
        }
        Ok(Self {
            writes,
            period: Duration::from_secs_f64(1.0 / f64::from(args.rate)),
        })
    }
}

/// Raises the soft open-file limit to the hard one; returns the limit now in force.
fn raise_open_file_limit() -> anyhow::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX).context("cannot raise the open-file limit")
}
