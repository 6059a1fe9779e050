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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::bench::parse_duration;

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

/// What a run samples as it goes (`bench soak`).
#[derive(Debug, Clone)]
struct Sampling {
    interval: Duration,
    pids: Vec<u32>,
}

/// One sample of a soak.
#[derive(Debug, Clone)]
struct Sample {
    at: Duration,
    /// (pid, RSS KiB, open files) per sampled process.
    processes: Vec<(u32, u64, u64)>,
}

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

/// Every `interval` until stopped: one line with each process's RSS and open files and the
/// delivery latency of the interval.
async fn sample(
    sampling: Sampling,
    shared: Arc<Shared>,
    started: Instant,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Vec<Sample>> {
    let mut samples = Vec::new();
    let mut ticker =
        tokio::time::interval_at((started + sampling.interval).into(), sampling.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut received_before = shared.received.load(Ordering::Relaxed);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return Ok(samples),
        }
        let mut processes = Vec::with_capacity(sampling.pids.len());
        for &pid in &sampling.pids {
            let (rss, files) = read_process(pid)?;
            processes.push((pid, rss, files));
        }
        let received = shared.received.load(Ordering::Relaxed);
        let latency = match shared.window.drain(&[0.50, 0.99]) {
            Some((values, max)) => format!(
                "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                values[0], values[1], max
            ),
            None => "no deliveries".to_owned(),
        };
        let at = started.elapsed();
        let nodes: Vec<String> = processes
            .iter()
            .map(|(pid, rss, files)| {
                format!("pid {pid} {:.1} MiB {files} fds", *rss as f64 / 1024.0)
            })
            .collect();
        println!(
            "sample {:>6.0}s  {} deliveries  {latency}  {}",
            at.as_secs_f64(),
            received - received_before,
            nodes.join("; ")
        );
        received_before = received;
        samples.push(Sample { at, processes });
    }
}

/// RSS and open files of each sampled process from the first sample after warm-up (the
/// second: the first interval holds allocator and cache growth) to the last.
fn print_growth(samples: &[Sample]) {
    let (Some(first), Some(last)) = (samples.get(1).or(samples.first()), samples.last()) else {
        return;
    };
    for ((pid, rss0, files0), (_, rss1, files1)) in first.processes.iter().zip(&last.processes) {
        let percent = |from: u64, to: u64| (to as f64 - from as f64) * 100.0 / from.max(1) as f64;
        println!(
            "growth         pid {pid} from {:.0}s to {:.0}s: RSS {:.1} -> {:.1} MiB ({:+.1}%), open files {files0} -> {files1} ({:+.1}%)",
            first.at.as_secs_f64(),
            last.at.as_secs_f64(),
            *rss0 as f64 / 1024.0,
            *rss1 as f64 / 1024.0,
            percent(*rss0, *rss1),
            percent(*files0, *files1),
        );
    }
}

/// RSS (KiB) and open file descriptors of a process.
fn read_process(pid: u32) -> anyhow::Result<(u64, u64)> {
    let rss = read_rss_kib(pid)?;
    let dir = format!("/proc/{pid}/fd");
    let files = std::fs::read_dir(&dir)
        .with_context(|| format!("--pid {pid}: cannot list {dir}"))?
        .count() as u64;
    Ok((rss, files))
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

/// What the run's tasks share.
#[derive(Debug)]
struct Shared {
    epoch: Instant,
    /// Prefix of every message this run writes, so other writers' events are not counted.
    tag: String,
    writes: u64,
    /// When write `i` was sent, in microseconds since `epoch` (0: not sent yet).
    sent_at_us: Vec<AtomicU64>,
    latency: Histogram,
    /// The same latencies since the last soak sample.
    window: Histogram,
    /// First deliveries of this run's writes, over all subscribers.
    received: AtomicU64,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// The write a status event's data line names, if it is one of this run's.
    fn write_of(&self, data: &[u8]) -> Option<u64> {
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
fn run_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0);
    format!("sse{:08x}", nanos ^ std::process::id().rotate_left(16))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The node behind a URL, from its /v1/nodes.
#[derive(Debug)]
struct NodeInfo {
    id: String,
    region: String,
}

async fn node_info(client: &reqwest::Client, base: &str) -> anyhow::Result<NodeInfo> {
    let nodes: serde_json::Value = client
        .get(format!("{base}/v1/nodes"))
        .send()
        .await
        .with_context(|| format!("cannot reach {base}"))?
        .json()
        .await
        .with_context(|| format!("{base}/v1/nodes did not answer JSON"))?;
    Ok(NodeInfo {
        id: nodes["node"].as_str().unwrap_or("?").to_owned(),
        region: nodes["region"]
            .as_str()
            .with_context(|| format!("{base}/v1/nodes names no region"))?
            .to_owned(),
    })
}

/// An `http://host:port[/prefix]` URL, resolved once.
#[derive(Debug, Clone)]
struct HttpTarget {
    /// The URL as given, without a trailing slash.
    base: String,
    authority: String,
    path_prefix: String,
}

impl HttpTarget {
    fn parse(url: &str) -> anyhow::Result<Self> {
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

/// PUTs one status write; Ok(changed) on success.
async fn put(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: &serde_json::Value,
) -> Result<bool, String> {
    let response = client
        .put(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        return Err(format!("HTTP {status}: {text}"));
    }
    let reply: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
    Ok(reply["changed"].as_bool().unwrap_or(false))
}

/// Which writes were acknowledged as changes.
#[derive(Debug)]
struct WriteOutcomes {
    acknowledged: Vec<u64>,
    changed: u64,
    unchanged: u64,
    errors: u64,
    first_error: Option<String>,
}

impl WriteOutcomes {
    fn new(writes: u64) -> Self {
        Self {
            acknowledged: vec![0; writes.div_ceil(64) as usize],
            changed: 0,
            unchanged: 0,
            errors: 0,
            first_error: None,
        }
    }

    fn record(&mut self, (seq, outcome): (u64, Result<bool, String>)) {
        match outcome {
            Ok(true) => {
                self.changed += 1;
                self.acknowledged[(seq / 64) as usize] |= 1 << (seq % 64);
            }
            Ok(false) => self.unchanged += 1,
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }
}

/// What one subscriber saw.
#[derive(Debug, Default)]
struct SubscriberReport {
    connected: bool,
    /// Bit `i`: write `i` was delivered.
    seen: Vec<u64>,
    duplicated: u64,
    /// Snapshots after the first: the node found this subscriber lagging.
    resnapshots: u64,
    /// Why the stream ended before the run did.
    ended: Option<String>,
}

/// The sum over subscribers.
#[derive(Debug, Default)]
struct Tally {
    received: u64,
    lost: u64,
    duplicated: u64,
    unacknowledged: u64,
    resnapshots: u64,
    ended: u64,
    first_end: Option<String>,
}

impl Tally {
    fn add(&mut self, report: &SubscriberReport, outcomes: &WriteOutcomes) {
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
async fn subscribe(
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
async fn open(target: &HttpTarget) -> Result<(TcpStream, Vec<u8>, BodyDecoder), String> {
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

/// How the response body is framed.
#[derive(Debug)]
enum BodyDecoder {
    Chunked(Chunked),
    UntilClose,
}

impl BodyDecoder {
    /// Passes the body bytes in `input` to `data`; Ok(true) once the body has ended.
    fn decode(&mut self, input: &[u8], data: impl FnMut(&[u8])) -> Result<bool, String> {
        match self {
            Self::Chunked(chunked) => chunked.decode(input, data),
            Self::UntilClose => {
                let mut data = data;
                if !input.is_empty() {
                    data(input);
                }
                Ok(false)
            }
        }
    }
}

/// An incremental decoder of HTTP/1.1 chunked transfer coding.
#[derive(Debug, Default)]
struct Chunked {
    state: ChunkState,
    /// Bytes left in the current chunk, or the size being read.
    remaining: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    Done,
}

impl Chunked {
    /// Passes each piece of chunk data in `input` to `data`; Ok(true) after the last chunk.
    fn decode(&mut self, mut input: &[u8], mut data: impl FnMut(&[u8])) -> Result<bool, String> {
        while let Some((&byte, rest)) = input.split_first() {
            match self.state {
                ChunkState::Data => {
                    let take = input.len().min(self.remaining as usize);
                    data(&input[..take]);
                    input = &input[take..];
                    self.remaining -= take as u64;
                    if self.remaining == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::Done => return Ok(true),
                ChunkState::Size => match byte {
                    b'\r' => self.state = ChunkState::SizeLf,
                    b';' => self.state = ChunkState::Extension,
                    _ => {
                        let digit = (byte as char)
                            .to_digit(16)
                            .ok_or_else(|| format!("bad chunk size byte {:?}", byte as char))?;
                        self.remaining = self.remaining * 16 + u64::from(digit);
                        if self.remaining > CHUNK_BYTES_MAX {
                            return Err(format!("a chunk over {CHUNK_BYTES_MAX} bytes"));
                        }
                    }
                },
                ChunkState::Extension => {
                    if byte == b'\r' {
                        self.state = ChunkState::SizeLf;
                    }
                }
                ChunkState::SizeLf => {
                    if byte != b'\n' {
                        return Err("a chunk size line without its line feed".to_owned());
                    }
                    self.state = if self.remaining == 0 {
                        ChunkState::Done
                    } else {
                        ChunkState::Data
                    };
                }
                ChunkState::DataCr => {
                    if byte != b'\r' {
                        return Err("chunk data longer than its size".to_owned());
                    }
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if byte != b'\n' {
                        return Err("chunk data without its line end".to_owned());
                    }
                    self.state = ChunkState::Size;
                }
            }
            input = rest;
        }
        Ok(self.state == ChunkState::Done)
    }
}

/// An incremental SSE scanner that keeps only what the benchmark needs: the current event's
/// kind and, for `status` events, the data line.
#[derive(Debug, Default)]
struct LineScan {
    /// A line split across reads.
    partial: Vec<u8>,
    /// The partial line grew past LINE_BYTES_MAX and is being skipped.
    skipping: bool,
    in_status: bool,
    /// Whether the current block named an event or carried data.
    in_event: bool,
    /// Complete events (blocks with an `event:` or `data:` line).
    events: u64,
    snapshots: u64,
}

impl LineScan {
    /// Scans `bytes`, calling `on_status_data` with each `data:` line of a `status` event.
    fn feed(&mut self, mut bytes: &[u8], mut on_status_data: impl FnMut(&[u8])) {
        while let Some(newline) = bytes.iter().position(|&b| b == b'\n') {
            let (head, rest) = bytes.split_at(newline);
            bytes = &rest[1..];
            if self.skipping {
                self.skipping = false;
                continue;
            }
            if self.partial.is_empty() {
                self.line(head, &mut on_status_data);
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(head);
                self.line(&line, &mut on_status_data);
                line.clear();
                self.partial = line;
            }
        }
        if !bytes.is_empty() && !self.skipping {
            if self.partial.len() + bytes.len() > LINE_BYTES_MAX {
                self.partial.clear();
                self.partial.shrink_to_fit();
                self.skipping = true;
            } else {
                self.partial.extend_from_slice(bytes);
            }
        }
    }

    fn line(&mut self, line: &[u8], on_status_data: &mut impl FnMut(&[u8])) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if self.in_event {
                self.events += 1;
            }
            self.in_event = false;
            self.in_status = false;
        } else if let Some(kind) = line.strip_prefix(b"event:") {
            let kind = kind.strip_prefix(b" ").unwrap_or(kind);
            self.in_event = true;
            self.in_status = kind == b"status";
            if kind == b"snapshot" {
                self.snapshots += 1;
            }
        } else if let Some(data) = line.strip_prefix(b"data:") {
            self.in_event = true;
            if self.in_status {
                on_status_data(data);
            }
        }
    }
}

/// The resident set of a process, from /proc/<pid>/status, in KiB.
fn read_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("--target-pid {pid}: cannot read {path}"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .with_context(|| format!("{path} has no VmRSS line"))?;
    line.trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("{path}: cannot read {line:?}"))
}

/// Latencies in microseconds, bucketed with under 0.1% relative error: values below 2048
/// exactly, larger ones by their top 11 significant bits. Shared by every subscriber.
#[derive(Debug)]
struct Histogram {
    counts: Vec<AtomicU64>,
    max_us: AtomicU64,
}

/// Buckets for values up to 2^50 microseconds (far past any run).
const HISTOGRAM_BUCKETS: usize = 2048 + 40 * 1024;

impl Histogram {
    fn new() -> Self {
        Self {
            counts: (0..HISTOGRAM_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max_us: AtomicU64::new(0),
        }
    }

    fn record(&self, us: u64) {
        let index = bucket_of(us).min(HISTOGRAM_BUCKETS - 1);
        self.counts[index].fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// The given quantiles and the maximum, in milliseconds; None when empty.
    fn percentiles<const N: usize>(&self, quantiles: &[f64; N]) -> Option<([f64; N], f64)> {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let max_us = self.max_us.load(Ordering::Relaxed);
        Self::quantiles(&counts, max_us, quantiles)
    }

    /// Like [`Self::percentiles`], and empties the histogram (recorders may race with it:
    /// a value lands in this drain or the next).
    fn drain<const N: usize>(&self, quantiles: &[f64; N]) -> Option<([f64; N], f64)> {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.swap(0, Ordering::Relaxed))
            .collect();
        let max_us = self.max_us.swap(0, Ordering::Relaxed);
        Self::quantiles(&counts, max_us, quantiles)
    }

    fn quantiles<const N: usize>(
        counts: &[u64],
        max_us: u64,
        quantiles: &[f64; N],
    ) -> Option<([f64; N], f64)> {
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let mut values = [0.0; N];
        for (value, q) in values.iter_mut().zip(quantiles) {
            // The rank of the quantile, 1-based, as a nearest-rank percentile.
            let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
            let mut seen = 0;
            for (index, count) in counts.iter().enumerate() {
                seen += count;
                if seen >= rank {
                    *value = bucket_low(index) as f64 / 1_000.0;
                    break;
                }
            }
        }
        Some((values, max_us as f64 / 1_000.0))
    }
}

fn bucket_of(us: u64) -> usize {
    if us < 2048 {
        return us as usize;
    }
    // Keep the top 11 bits: us >> shift lies in 1024..2048.
    let shift = 63 - us.leading_zeros() - 10;
    2048 + (shift as usize - 1) * 1024 + ((us >> shift) - 1024) as usize
}

fn bucket_low(index: usize) -> u64 {
    if index < 2048 {
        return index as u64;
    }
    let shift = (index - 2048) / 1024 + 1;
    let mantissa = ((index - 2048) % 1024) as u64 + 1024;
    mantissa << shift
}

/// Connect times in microseconds, sorted once.
#[derive(Debug)]
struct Percentiles(Vec<u64>);

impl Percentiles {
    fn from_micros(mut micros: Vec<u64>) -> Self {
        micros.sort_unstable();
        Self(micros)
    }

    /// The nearest-rank quantile `q` in milliseconds (0 when empty).
    fn at(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        let rank = ((q * self.0.len() as f64).ceil() as usize).clamp(1, self.0.len());
        self.0[rank - 1] as f64 / 1_000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(tag: &str, writes: u64) -> Shared {
        Shared {
            epoch: Instant::now(),
            tag: tag.to_owned(),
            writes,
            sent_at_us: Vec::new(),
            latency: Histogram::new(),
            window: Histogram::new(),
            received: AtomicU64::new(0),
        }
    }

    #[test]
    fn histogram_buckets_round_down_by_under_a_thousandth() {
        for us in [
            0,
            1,
            2047,
            2048,
            2049,
            5_000,
            99_999,
            1_234_567,
            10_000_000_000,
        ] {
            let low = bucket_low(bucket_of(us));
            assert!(low <= us, "{us} -> {low}");
            assert!((us - low) as f64 <= us as f64 / 1000.0, "{us} -> {low}");
        }
        assert!(bucket_of(u64::from(u32::MAX) << 8) < HISTOGRAM_BUCKETS);
    }

    #[test]
    fn histogram_percentiles_are_nearest_rank() {
        let histogram = Histogram::new();
        for ms in 1..=100 {
            histogram.record(ms * 1_000);
        }
        let (values, max) = histogram
            .percentiles(&[0.50, 0.99])
            .expect("samples were recorded");
        assert!((values[0] - 50.0).abs() < 0.1, "{values:?}");
        assert!((values[1] - 99.0).abs() < 0.1, "{values:?}");
        assert_eq!(max, 100.0);
        // A drain reports the same and leaves the histogram empty for the next interval.
        let (drained, _) = histogram.drain(&[0.50]).expect("samples");
        assert!((drained[0] - 50.0).abs() < 0.1, "{drained:?}");
        assert!(histogram.percentiles(&[0.50]).is_none());
    }

    #[test]
    fn scanner_finds_status_data_split_across_reads_and_counts_snapshots() {
        let stream = b"retry: 1000\nevent: snapshot\nid: c1\ndata: {\"services\":[]}\n\n\
            event: status\nid: c2\ndata: {\"message\":\"run-3\",\"state\":\"operational\"}\n\n\
            : heartbeat\n\nevent: snapshot\ndata: {}\n\n";
        for split in 0..stream.len() {
            let mut scan = LineScan::default();
            let mut lines = Vec::new();
            scan.feed(&stream[..split], |l| lines.push(l.to_vec()));
            scan.feed(&stream[split..], |l| lines.push(l.to_vec()));
            assert_eq!(lines.len(), 1, "split at {split}");
            assert_eq!(scan.events, 3, "split at {split}");
            assert_eq!(scan.snapshots, 2, "split at {split}");
            let shared = shared("run", 10);
            assert_eq!(shared.write_of(&lines[0]), Some(3));
        }
    }

    #[test]
    fn scanner_skips_lines_longer_than_its_bound() {
        let mut scan = LineScan::default();
        let mut long = b"event: snapshot\ndata: ".to_vec();
        long.extend(std::iter::repeat_n(b'x', LINE_BYTES_MAX * 3));
        long.extend_from_slice(b"\n\nevent: status\ndata: {\"message\":\"run-0\"}\n\n");
        let mut lines = 0;
        for chunk in long.chunks(1000) {
            scan.feed(chunk, |_| lines += 1);
        }
        assert_eq!(lines, 1);
        assert_eq!(scan.events, 2);
        assert!(scan.partial.capacity() <= LINE_BYTES_MAX);
    }

    #[test]
    fn only_this_runs_writes_are_counted() {
        let shared = shared("sse0001", 5);
        assert_eq!(shared.write_of(br#"{"message":"sse0001-4"}"#), Some(4));
        assert_eq!(shared.write_of(br#"{"message":"sse0001-5"}"#), None);
        assert_eq!(shared.write_of(br#"{"message":"sse0002-1"}"#), None);
        assert_eq!(shared.write_of(br#"{"message":"hello"}"#), None);
        assert_eq!(shared.write_of(br#"{"state":"operational"}"#), None);
    }

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        for split in 0..body.len() {
            let mut chunked = Chunked::default();
            let mut out = Vec::new();
            let first = chunked
                .decode(&body[..split], |d| out.extend_from_slice(d))
                .expect("valid");
            let done = chunked
                .decode(&body[split..], |d| out.extend_from_slice(d))
                .expect("valid");
            // The body ends with the zero-size chunk's line; the final CRLF is not awaited.
            assert!(!first || split >= body.len() - 2, "split at {split}");
            assert!(done, "split at {split}");
            assert_eq!(out, b"hello, world", "split at {split}");
        }
    }

    #[test]
    fn malformed_chunks_are_errors() {
        let mut chunked = Chunked::default();
        assert!(chunked.decode(b"zz\r\n", |_| {}).is_err());
        let mut chunked = Chunked::default();
        assert!(chunked.decode(b"2\r\nabc\r\n", |_| {}).is_err());
        let mut chunked = Chunked::default();
        assert!(chunked.decode(b"ffffffffffff\r\n", |_| {}).is_err());
    }

    #[test]
    fn urls_resolve_to_an_authority_and_a_prefix() {
        let target = HttpTarget::parse("http://127.0.0.1:8101/").expect("valid");
        assert_eq!(target.authority, "127.0.0.1:8101");
        assert_eq!(target.path_prefix, "");
        let target = HttpTarget::parse("http://example.invalid/mesh").expect("valid");
        assert_eq!(target.authority, "example.invalid:80");
        assert_eq!(target.path_prefix, "/mesh");
        assert!(HttpTarget::parse("https://127.0.0.1:8101").is_err());
    }
}
