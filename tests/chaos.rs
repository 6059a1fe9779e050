//! Chaos on a real network: six `statusmesh run` processes (three regions × two), each in its
//! own network namespace, under steady acknowledged writes with SSE clients attached, while a
//! schedule partitions regions and nodes, kills nodes with SIGKILL and restarts them with
//! their disk, and drops a share of all datagrams. After each heal it measures the time until
//! every node holds every write answered so far; at the end it checks what the simulator
//! checks: every node converged to the same view, no acknowledged write lost, and no gap or
//! duplicate in any client's event stream (across its reconnects with `Last-Event-ID`).
//!
//! Which fault is made by which mechanism (see `chaos_net`): partitions are blackhole routes
//! in the nodes' namespaces; kill and restart are SIGKILL and a new process on the same data
//! directory; latency (the regions' coordinates) and loss are a userspace UDP relay, because
//! this kernel has neither `sch_netem` nor tc actions. Clock skew is libfaketime preloaded
//! into a node's process for the whole run (and its restarts): a time namespace can offset
//! only CLOCK_MONOTONIC and CLOCK_BOOTTIME, not the CLOCK_REALTIME the nodes stamp
//! observations and gossip timers with, and setting the machine's clock would skew every node.
//! The run reads each node's clock back from its HTTP `Date` header.
//!
//! It needs root and `ip` (and libfaketime for the skew; `./test.sh` installs it); without
//! them it says why and passes, unless `STATUSMESH_REQUIRE_CHAOS=1` (set by CI), where that is
//! a failure. The short scripted
//! schedule runs in `cargo test`; a longer seeded one is
//! `STATUSMESH_CHAOS_SEED=7 STATUSMESH_CHAOS_SECS=600 cargo test -p statusmesh-node --test main
//! chaos::seeded -- --ignored --nocapture` (`STATUSMESH_CHAOS_BIN=target/release/statusmesh` runs
//! release nodes).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::json;
use statusmesh_gossip::topology::one_way_ms;
use statusmesh_node::config::Topology;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::chaos_net::{self, Net, Relay, GOSSIP_PORT, HTTP_PORT};
use crate::harness::{self, Proc, SseReader, TestNode, BIN};

pub(crate) const TOKEN: &str = "chaos-token-0123456789";
/// The service every write goes to.
const SERVICE: &str = "chaos";
/// Writes ask for copies in this many regions.
const ACK_REGIONS: usize = 2;
const ACK_TIMEOUT_MS: u64 = 3_000;
/// The longest a heal may take to converge before the run fails.
const CONVERGE_MAX: Duration = Duration::from_secs(90);
/// How often convergence is polled (each poll reads every node's view).
const CONVERGE_POLL: Duration = Duration::from_millis(250);
/// Each node's writer cycles over this many cells of its own: enough that a cell is rewritten
/// only every few seconds, few enough that a node's whole view stays cheap to read.
const CELLS_PER_WRITER: u64 = 32;
/// Duplicates each client shows in full in the log.
const DUPLICATE_EXAMPLES_MAX: usize = 3;
/// SSE clients, attached first to the first node of each region.
const CLIENTS: usize = 3;

/// One fault of a schedule, held for a while and then healed.
#[derive(Debug, Clone)]
enum Fault {
    /// Every node of the region is cut from every node outside it (both ways).
    PartitionRegion(String),
    /// One node is cut from every other.
    PartitionNode(usize),
    /// SIGKILL, then a restart on the same data directory.
    Kill(usize),
    /// This share of every link's datagrams is dropped, per mille.
    Loss(u32),
}

#[derive(Debug, Clone)]
struct Episode {
    fault: Fault,
    hold: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_short_schedule_loses_no_acknowledged_write_and_no_event() {
    let secs = Duration::from_secs;
    let schedule = vec![
        Episode {
            fault: Fault::PartitionRegion("ap-southeast".into()),
            hold: secs(12),
        },
        Episode {
            fault: Fault::Kill(0),
            hold: secs(4),
        },
        Episode {
            fault: Fault::Loss(300),
            hold: secs(8),
        },
        Episode {
            fault: Fault::PartitionNode(3),
            hold: secs(10),
        },
    ];
    // us-east-1 runs 20 s ahead, ap-southeast-2 15 s behind.
    run_if_possible("scripted (CI)", schedule, &[(2, 20), (5, -15)], 12.0, 1).await;
}

/// The long run: `STATUSMESH_CHAOS_SEED` picks the faults, their targets and durations until
/// `STATUSMESH_CHAOS_SECS` of faults are scheduled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long; run by hand (see the module doc)"]
async fn seeded_long_schedule_loses_no_acknowledged_write_and_no_event() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let seed = env("STATUSMESH_CHAOS_SEED", 1);
    let total = Duration::from_secs(env("STATUSMESH_CHAOS_SECS", 300));
    let rate = env("STATUSMESH_CHAOS_WRITES_PER_S", 12) as f64;
    let schedule = seeded_schedule(seed, total, 6);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let ahead = rng.random_range(0..6);
    let behind = (ahead + rng.random_range(1..6)) % 6;
    let skews = [
        (ahead, rng.random_range(5..=60)),
        (behind, -rng.random_range(5..=60)),
    ];
    run_if_possible(&format!("seeded {seed}"), schedule, &skews, rate, seed).await;
}

/// Faults picked by `seed` until their holds add up to `total`.
fn seeded_schedule(seed: u64, total: Duration, nodes: usize) -> Vec<Episode> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut schedule = Vec::new();
    let mut scheduled = Duration::ZERO;
    while scheduled < total {
        let fault = match rng.random_range(0..4) {
            0 => Fault::PartitionRegion(harness::REGIONS[rng.random_range(0..3)].0.to_owned()),
            1 => Fault::PartitionNode(rng.random_range(0..nodes)),
            2 => Fault::Kill(rng.random_range(0..nodes)),
            _ => Fault::Loss(rng.random_range(100..=500)),
        };
        let hold = Duration::from_secs(rng.random_range(3..=30));
        scheduled += hold;
        schedule.push(Episode { fault, hold });
    }
    schedule
}

/// Runs the schedule with node clocks skewed by `(node, seconds)`, or says why it cannot.
async fn run_if_possible(
    name: &str,
    schedule: Vec<Episode>,
    skews: &[(usize, i64)],
    writes_per_s: f64,
    seed: u64,
) {
    let required = std::env::var("STATUSMESH_REQUIRE_CHAOS").is_ok_and(|v| v == "1");
    // Straight to stderr, past the test's output capture, so that a skip is seen.
    let say = |text: &str| {
        let _ = writeln!(std::io::stderr(), "chaos: {text}");
    };
    if let Some(reason) = chaos_net::unavailable() {
        assert!(!required, "the chaos run cannot run here: {reason}");
        say(&format!("skipped: {reason}"));
        return;
    }
    let faketime = chaos_net::faketime_library();
    let skews = if faketime.is_some() {
        skews
    } else {
        let reason = "libfaketime is not installed (./test.sh installs it)";
        assert!(!required, "the chaos run cannot skew clocks: {reason}");
        say(&format!("clock skew skipped: {reason}"));
        &[]
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let setup = Setup {
        skews: skews.to_vec(),
        faketime,
        seed,
    };
    let report = run(dir.path(), name, &schedule, &setup, writes_per_s).await;
    if let Ok(path) = std::env::var("STATUSMESH_CHAOS_LOG") {
        std::fs::write(&path, &report.log).expect("write STATUSMESH_CHAOS_LOG");
    }
    assert!(report.failures.is_empty(), "{}", report.log);
}

/// The run's log and what failed.
struct Report {
    log: String,
    failures: Vec<String>,
}

impl Report {
    /// Adds a line to the log and shows it at once (past the test's output capture, so that
    /// a long run shows its progress).
    fn line(&mut self, text: String) {
        let _ = writeln!(std::io::stderr(), "{text}");
        self.log.push_str(&text);
        self.log.push('\n');
    }
}

/// What a run is made with besides its schedule.
pub(crate) struct Setup {
    /// (node index, seconds its CLOCK_REALTIME is ahead; negative: behind).
    pub(crate) skews: Vec<(usize, i64)>,
    pub(crate) faketime: Option<PathBuf>,
    pub(crate) seed: u64,
}

/// The mesh: namespaces, relay, node processes.
pub(crate) struct Cluster {
    dir: PathBuf,
    /// Seconds each node's clock is off, and the library that shifts it.
    skew_s: Vec<i64>,
    faketime: Option<PathBuf>,
    certs: PathBuf,
    pub(crate) nodes: Vec<TestNode>,
    configs: Vec<PathBuf>,
    procs: Vec<Option<Proc>>,
    // Dropped after the processes (field order): nothing outlives its namespace.
    relay: Relay,
    pub(crate) net: Net,
}

impl Cluster {
    pub(crate) async fn start(dir: &Path, setup: &Setup) -> Result<Self, String> {
        let count = harness::REGIONS.len() * 2;
        let net = Net::create(count)?;
        let nodes = harness::test_nodes(2, |i| {
            let ip = net.node_ip(i);
            ((ip, GOSSIP_PORT).into(), (ip, HTTP_PORT).into())
        });
        let topology =
            Topology::parse("chaos", &harness::regions_toml(&nodes)).map_err(|e| e.to_string())?;
        let region = |i: usize| {
            topology
                .regions
                .iter()
                .find(|r| r.name == nodes[i].region)
                .expect("region of the topology")
        };
        let relay = Relay::start(
            &net,
            count,
            |a, b| Duration::from_secs_f64(one_way_ms(region(a), region(b)) / 1000.0),
            setup.seed,
        )
        .await?;
        // Each node sees its peers at their relay sockets, and itself at its real address.
        let mut configs = Vec::new();
        for i in 0..count {
            let mut view = nodes.clone();
            for (j, peer) in view.iter_mut().enumerate().filter(|(j, _)| *j != i) {
                peer.gossip = relay.listen(i, j).ok_or("relay link")?;
            }
            let path = dir.join(format!("regions-{}.toml", nodes[i].id));
            std::fs::write(&path, harness::regions_toml(&view)).map_err(|e| e.to_string())?;
            configs.push(path);
        }
        let certs = dir.join("certs");
        harness::make_certs(&configs[0], &certs);
        let mut skew_s = vec![0; count];
        for (i, s) in &setup.skews {
            skew_s[*i] = *s;
        }
        let mut cluster = Self {
            dir: dir.to_owned(),
            skew_s,
            faketime: setup.faketime.clone(),
            certs,
            nodes,
            configs,
            procs: Vec::new(),
            relay,
            net,
        };
        for i in 0..count {
            let proc = cluster.spawn(i);
            cluster.procs.push(Some(proc));
        }
        Ok(cluster)
    }

    /// Starts node `i` in its namespace, on its data directory.
    fn spawn(&self, i: usize) -> Proc {
        let node = &self.nodes[i];
        let mut command = Command::new("ip");
        if let (skew, Some(library)) = (self.skew_s[i], &self.faketime) {
            if skew != 0 {
                // Only the wall clock: tokio's timers keep the real monotonic clock.
                command
                    .env("LD_PRELOAD", library)
                    .env("FAKETIME", format!("{skew:+}"))
                    .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
            }
        }
        command
            .args(["netns", "exec", self.net.namespace(i)])
            .arg(node_binary())
            .args(harness::run_args(
                &self.configs[i],
                &self.certs,
                node,
                TOKEN,
                &harness::data_dir(&self.dir, node),
            ));
        Proc::spawn(command, self.dir.join(format!("{}.log", node.id)))
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut proc) = self.procs[i].take() {
            let _ = proc.child.kill();
            let _ = proc.child.wait();
        }
    }

    fn restart(&mut self, i: usize) {
        if self.procs[i].is_none() {
            self.procs[i] = Some(self.spawn(i));
        }
    }

    fn region_members(&self, region: &str) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].region == region)
            .collect()
    }
}

/// The `statusmesh` the nodes run: this build's, or `STATUSMESH_CHAOS_BIN` (a release build
/// for a long run, so that the nodes rather than a debug build's overhead are measured).
fn node_binary() -> PathBuf {
    std::env::var_os("STATUSMESH_CHAOS_BIN").map_or_else(|| PathBuf::from(BIN), PathBuf::from)
}

/// What a write got back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// 200: held in `ACK_REGIONS` regions.
    Acked,
    /// 202: held where it was written, not confirmed elsewhere in time.
    Accepted,
    /// No answer or an error: no promise either way.
    Failed,
}

#[derive(Debug, Clone)]
struct Write {
    component: String,
    /// The writer's sequence number; the message is [`message`] of it.
    seq: u64,
    outcome: Outcome,
}

type Writes = Arc<Mutex<Vec<Write>>>;

/// One task per node writes new cells at `per_node_per_s`, each with `?ack=`.
fn start_writers(
    client: &reqwest::Client,
    nodes: &[TestNode],
    per_node_per_s: f64,
    writes: &Writes,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    const STATES: [&str; 4] = [
        "operational",
        "degraded_performance",
        "partial_outage",
        "major_outage",
    ];
    nodes
        .iter()
        .map(|node| {
            let (client, node, writes, stop) =
                (client.clone(), node.clone(), writes.clone(), stop.clone());
            tokio::spawn(async move {
                let mut tick =
                    tokio::time::interval(Duration::from_secs_f64(1.0 / per_node_per_s));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                for seq in 0u64.. {
                    tick.tick().await;
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let component = format!("{}-c{}", node.id, seq % CELLS_PER_WRITER);
                    let message = message(seq);
                    let url = node.url(&format!(
                        "/v1/status/{SERVICE}/{component}/{}?ack={ACK_REGIONS}&ack_timeout_ms={ACK_TIMEOUT_MS}",
                        node.region
                    ));
                    let body = json!({
                        "state": STATES[seq as usize % STATES.len()],
                        "message": message,
                        "ttl_s": 86_400,
                    });
                    let reply = client.put(url).bearer_auth(TOKEN).json(&body).send().await;
                    let outcome = match reply.map(|r| r.status().as_u16()) {
                        Ok(200) => Outcome::Acked,
                        Ok(202) => Outcome::Accepted,
                        _ => Outcome::Failed,
                    };
                    writes.lock().expect("writes").push(Write {
                        component,
                        seq,
                        outcome,
                    });
                }
            })
        })
        .collect()
}

/// What one SSE client saw.
#[derive(Debug, Default, Clone)]
struct ClientLog {
    /// component → message, from snapshots and events.
    view: BTreeMap<String, String>,
    last_id: Option<String>,
    status_events: u64,
    duplicates: u64,
    snapshots: u64,
    reconnects: u64,
    nodes_used: BTreeSet<String>,
    /// Cells whose last event said `conflict: true`.
    conflicted: BTreeSet<String>,
    /// Events that only set or cleared a cell's conflict flag.
    conflict_events: u64,
    /// The node the client reads now.
    node: String,
    /// The first few duplicates: the node that sent each and the event, for the log.
    duplicate_examples: Vec<String>,
}

/// Follows `/v1/events?service=` from `first`; it moves to the next node with its last event
/// id when its stream ends (the node was killed), when it cannot connect, and each time `roam`
/// changes (after every heal), so that every client resumes across nodes and regions.
fn start_client(
    nodes: &[TestNode],
    first: usize,
    log: &Arc<Mutex<ClientLog>>,
    mut roam: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    // No overall request timeout: a stream lives as long as its node does.
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let (nodes, log) = (nodes.to_vec(), log.clone());
    tokio::spawn(async move {
        let mut at = first;
        while !*stop.borrow() {
            let node = &nodes[at % nodes.len()];
            at += 1;
            let last_id = log.lock().expect("client").last_id.clone();
            let url = node.url(&format!("/v1/events?service={SERVICE}"));
            let opened = tokio::time::timeout(
                harness::WAIT,
                SseReader::open(&client, &url, last_id.as_deref()),
            )
            .await;
            let Ok(Ok(mut reader)) = opened else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            log.lock()
                .expect("client")
                .nodes_used
                .insert(node.id.clone());
            loop {
                let next = tokio::select! {
                    next = reader.try_next() => next,
                    _ = roam.changed() => break,
                    _ = stop.changed() => return,
                };
                let Ok(event) = next else { break };
                apply_event(&mut log.lock().expect("client"), &event);
            }
            log.lock().expect("client").reconnects += 1;
        }
    })
}

fn apply_event(log: &mut ClientLog, event: &harness::SseEvent) {
    match event.event.as_str() {
        "snapshot" => {
            log.snapshots += 1;
            log.view = event.data["services"]
                .as_array()
                .and_then(|services| services.iter().find(|s| s["name"] == SERVICE))
                .and_then(harness::service_messages)
                .unwrap_or_default();
            log.conflicted.clear();
        }
        "status" if event.data["service"] == SERVICE => {
            log.status_events += 1;
            let component = event.data["component"].as_str().unwrap_or_default();
            let message = event.data["message"].as_str().unwrap_or_default();
            // A change of a cell's conflict flag (concurrent values) is news, not a duplicate.
            let conflict = event.data["conflict"].as_bool().unwrap_or(false);
            let conflict_changed = if conflict {
                log.conflicted.insert(component.to_owned())
            } else {
                log.conflicted.remove(component)
            };
            let previous = log.view.insert(component.to_owned(), message.to_owned());
            if conflict_changed {
                log.conflict_events += 1;
            } else if previous.as_deref() == Some(message) {
                log.duplicates += 1;
                if log.duplicate_examples.len() < DUPLICATE_EXAMPLES_MAX {
                    let example = format!("from {} id {}: {}", log.node, event.id, event.data);
                    log.duplicate_examples.push(example);
                }
            }
        }
        _ => {}
    }
    if !event.id.is_empty() {
        log.last_id = Some(event.id.clone());
    }
}

/// The writes that got `outcome`.
fn with_outcome(writes: &[Write], outcome: Outcome) -> Vec<Write> {
    writes
        .iter()
        .filter(|w| w.outcome == outcome)
        .cloned()
        .collect()
}

/// "N acked / N 202 / N failed" of `writes`.
fn outcomes(writes: &[Write]) -> String {
    let count = |o: Outcome| writes.iter().filter(|w| w.outcome == o).count();
    format!(
        "{} acked / {} 202 / {} failed",
        count(Outcome::Acked),
        count(Outcome::Accepted),
        count(Outcome::Failed)
    )
}

/// Every node's cells, or None for a node that does not answer.
async fn views(
    client: &reqwest::Client,
    nodes: &[TestNode],
) -> Vec<Option<BTreeMap<String, String>>> {
    futures_util::future::join_all(nodes.iter().map(|n| harness::messages(client, n, SERVICE)))
        .await
}

/// The message of a writer's write `seq`.
fn message(seq: u64) -> String {
    format!("write {seq}")
}

/// How many of `writes` `view` holds: a write is held when its cell has its message or that
/// of a later write (each cell has one writer, whose writes are sequential).
fn holds_all(view: &BTreeMap<String, String>, writes: &[Write]) -> usize {
    let seq_of = |message: &str| message.strip_prefix("write ")?.parse::<u64>().ok();
    writes
        .iter()
        .filter(|w| {
            view.get(&w.component)
                .and_then(|m| seq_of(m))
                .is_some_and(|held| held >= w.seq)
        })
        .count()
}

/// Polls until every node holds every write of `wanted`; the time it took, or None after
/// [`CONVERGE_MAX`].
async fn converge(
    client: &reqwest::Client,
    nodes: &[TestNode],
    wanted: &[Write],
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < CONVERGE_MAX {
        let all = views(client, nodes).await.iter().all(|v| {
            v.as_ref()
                .is_some_and(|v| holds_all(v, wanted) == wanted.len())
        });
        if all {
            return Some(start.elapsed());
        }
        tokio::time::sleep(CONVERGE_POLL).await;
    }
    None
}

async fn run(
    dir: &Path,
    name: &str,
    schedule: &[Episode],
    setup: &Setup,
    writes_per_s: f64,
) -> Report {
    let mut report = Report {
        log: String::new(),
        failures: Vec::new(),
    };
    let run_start = Instant::now();
    let mut cluster = match Cluster::start(dir, setup).await {
        Ok(cluster) => cluster,
        Err(e) => {
            report.line(format!("chaos: the network could not be set up: {e}"));
            report.failures.push(e);
            return report;
        }
    };
    let nodes = cluster.nodes.clone();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    harness::wait_healthy(&client, &nodes).await;
    harness::wait_ready(&client, &nodes).await;
    report.line(format!(
        "chaos run: {name}, seed {}, nodes run {}",
        setup.seed,
        node_binary().display()
    ));
    let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    report.line(format!(
        "mesh: {} nodes ({}) in {} regions; {}",
        nodes.len(),
        ids.join(" "),
        harness::REGIONS.len(),
        cluster.net.describe()
    ));
    report.line(format!(
        "latency (one way, relay, from the regions' coordinates): {}",
        latency_summary(&cluster)
    ));
    report.line(format!(
        "load: {writes_per_s} writes/s over all nodes, each node's writer cycling over {CELLS_PER_WRITER} cells of its own, ?ack={ACK_REGIONS}&ack_timeout_ms={ACK_TIMEOUT_MS}; {CLIENTS} SSE clients (?service={SERVICE}) that roam on disconnect and after each heal, with Last-Event-ID"
    ));
    let clocks = check_clocks(&client, &cluster, &mut report.failures).await;
    report.line(format!(
        "clocks (libfaketime, CLOCK_REALTIME of the process; read back from each node's Date header): {clocks}"
    ));
    report.line("schedule:".to_owned());
    for (i, episode) in schedule.iter().enumerate() {
        let fault = describe(&cluster, &episode.fault);
        report.line(format!("  {}. {fault} for {:?}", i + 1, episode.hold));
    }

    let writes: Writes = Arc::default();
    let stop_writes = Arc::new(AtomicBool::new(false));
    let (stop_clients, stop_rx) = watch::channel(false);
    let (roam, roam_rx) = watch::channel(0u64);
    let client_logs: Vec<Arc<Mutex<ClientLog>>> = (0..CLIENTS).map(|_| Arc::default()).collect();
    let client_tasks: Vec<_> = client_logs
        .iter()
        .enumerate()
        .map(|(k, l)| start_client(&nodes, k * 2, l, roam_rx.clone(), stop_rx.clone()))
        .collect();
    let per_node_per_s = writes_per_s / nodes.len() as f64;
    let writers = start_writers(&client, &nodes, per_node_per_s, &writes, &stop_writes);
    // Some load before the first fault.
    tokio::time::sleep(Duration::from_secs(3)).await;

    report.line("faults:".to_owned());
    for (i, episode) in schedule.iter().enumerate() {
        let t = run_start.elapsed().as_secs_f64();
        let before = writes.lock().expect("writes").len();
        if let Err(e) = inject(&mut cluster, &episode.fault) {
            report
                .failures
                .push(format!("episode {}: inject: {e}", i + 1));
        }
        tokio::time::sleep(episode.hold).await;
        if let Err(e) = heal(&mut cluster, &episode.fault) {
            report
                .failures
                .push(format!("episode {}: heal: {e}", i + 1));
        }
        let (answered, during) = {
            let writes = writes.lock().expect("writes");
            let mut answered = with_outcome(&writes, Outcome::Acked);
            answered.extend(with_outcome(&writes, Outcome::Accepted));
            (answered, outcomes(&writes[before..]))
        };
        let converged = converge(&client, &nodes, &answered).await;
        let _ = roam.send(i as u64 + 1);
        report.line(format!(
            "  t={t:6.1}s {} for {:?}: writes meanwhile {during}; healed, converged in {} (every node holds all {} writes answered 200/202 so far)",
            describe(&cluster, &episode.fault),
            episode.hold,
            converged.map_or("NEVER".to_owned(), |d| format!("{:.2} s", d.as_secs_f64())),
            answered.len()
        ));
        if converged.is_none() {
            report.failures.push(format!(
                "episode {}: no convergence within {CONVERGE_MAX:?} of the heal",
                i + 1
            ));
        }
    }

    stop_writes.store(true, Ordering::Relaxed);
    for writer in writers {
        let _ = writer.await;
    }
    let writes = writes.lock().expect("writes").clone();
    let final_view = check_writes(&client, &nodes, &writes, &mut report).await;
    check_clients(&client_logs, &final_view, &mut report).await;
    let _ = stop_clients.send(true);
    for task in client_tasks {
        let _ = task.await;
    }
    let counters = &cluster.relay.counters;
    report.line(format!(
        "relay: {} datagrams forwarded, {} dropped as loss, {} dropped on a full queue",
        counters.forwarded.load(Ordering::Relaxed),
        counters.lost.load(Ordering::Relaxed),
        counters.queue_full.load(Ordering::Relaxed)
    ));
    let result = if report.failures.is_empty() {
        "PASS".to_owned()
    } else {
        format!("FAIL: {}", report.failures.join("; "))
    };
    let elapsed = run_start.elapsed().as_secs_f64();
    report.line(format!("result: {result} after {elapsed:.1} s"));
    report
}

/// With writes stopped: waits until every node's view is the same, and checks that each
/// holds every acknowledged write. Returns that view.
async fn check_writes(
    client: &reqwest::Client,
    nodes: &[TestNode],
    writes: &[Write],
    report: &mut Report,
) -> BTreeMap<String, String> {
    let acked = with_outcome(writes, Outcome::Acked);
    let accepted = with_outcome(writes, Outcome::Accepted);
    let start = Instant::now();
    let equal = |views: &[Option<BTreeMap<String, String>>]| {
        views[0].is_some() && views.iter().all(|v| *v == views[0])
    };
    let mut final_views = views(client, nodes).await;
    while !equal(&final_views) && start.elapsed() < CONVERGE_MAX {
        tokio::time::sleep(CONVERGE_POLL).await;
        final_views = views(client, nodes).await;
    }
    report.line(format!(
        "writes: {} sent: {} (ack = {ACK_REGIONS} regions in time; 202 = held where written, not confirmed in time; failed = node down or cut off, no promise)",
        writes.len(),
        outcomes(writes)
    ));
    let equal = equal(&final_views);
    report.line(format!(
        "final convergence (writes stopped): {} in {:.2} s",
        if equal {
            "every node's view equal"
        } else {
            "views DIFFER"
        },
        start.elapsed().as_secs_f64()
    ));
    if !equal {
        report
            .failures
            .push("the nodes' final views differ".to_owned());
    }
    report.line("acknowledged writes found after the last heal:".to_owned());
    for (node, view) in nodes.iter().zip(&final_views) {
        let view = view.clone().unwrap_or_default();
        let found = holds_all(&view, &acked);
        report.line(format!(
            "  {:<16} {found}/{} acknowledged, {}/{} accepted (202), {} cells",
            node.id,
            acked.len(),
            holds_all(&view, &accepted),
            accepted.len(),
            view.len()
        ));
        if found != acked.len() {
            let lost = acked.len() - found;
            report
                .failures
                .push(format!("{} lost {lost} acknowledged writes", node.id));
        }
    }
    final_views[0].clone().unwrap_or_default()
}

/// Waits (bounded) until every client's view is `final_view`; a cell a client lacks then is
/// a gap in its stream.
async fn check_clients(
    client_logs: &[Arc<Mutex<ClientLog>>],
    final_view: &BTreeMap<String, String>,
    report: &mut Report,
) {
    let gaps = |l: &ClientLog| {
        final_view
            .iter()
            .filter(|(c, m)| l.view.get(*c) != Some(*m))
            .count()
    };
    let start = Instant::now();
    while start.elapsed() < harness::WAIT
        && client_logs
            .iter()
            .any(|l| gaps(&l.lock().expect("client")) > 0)
    {
        tokio::time::sleep(CONVERGE_POLL).await;
    }
    report.line("SSE clients:".to_owned());
    for (k, l) in client_logs.iter().enumerate() {
        let l = l.lock().expect("client");
        let gap = gaps(&l);
        let used: Vec<&str> = l.nodes_used.iter().map(String::as_str).collect();
        report.line(format!(
            "  client {k}: {} status events ({} of them a conflict flag set or cleared), {} snapshots, {} reconnects over {}; gaps {gap}, duplicates {}",
            l.status_events,
            l.conflict_events,
            l.snapshots,
            l.reconnects,
            used.join(","),
            l.duplicates
        ));
        for example in &l.duplicate_examples {
            report.line(format!("    duplicate {example}"));
        }
        if gap > 0 || l.duplicates > 0 {
            report.failures.push(format!(
                "client {k}: {gap} gaps, {} duplicates",
                l.duplicates
            ));
        }
    }
}

fn inject(cluster: &mut Cluster, fault: &Fault) -> Result<(), String> {
    match fault {
        Fault::PartitionRegion(region) => cluster.net.partition(&cluster.region_members(region)),
        Fault::PartitionNode(i) => cluster.net.partition(&[*i]),
        Fault::Kill(i) => {
            cluster.kill(*i);
            Ok(())
        }
        Fault::Loss(per_mille) => {
            cluster.relay.set_loss_per_mille(*per_mille);
            Ok(())
        }
    }
}

fn heal(cluster: &mut Cluster, fault: &Fault) -> Result<(), String> {
    match fault {
        Fault::PartitionRegion(_) | Fault::PartitionNode(_) => cluster.net.heal(),
        Fault::Kill(i) => {
            cluster.restart(*i);
            Ok(())
        }
        Fault::Loss(_) => {
            cluster.relay.set_loss_per_mille(0);
            Ok(())
        }
    }
}

/// Each node's clock as its HTTP `Date` header shows it, against the skew it should have; a
/// node more than 2 s off its skew is a failure (the skew was not applied).
async fn check_clocks(
    client: &reqwest::Client,
    cluster: &Cluster,
    failures: &mut Vec<String>,
) -> String {
    let mut parts = Vec::new();
    for (node, wanted) in cluster.nodes.iter().zip(&cluster.skew_s) {
        let sent = std::time::SystemTime::now();
        let date = match client.get(node.url("/healthz")).send().await {
            Ok(reply) => reply
                .headers()
                .get("date")
                .and_then(|d| d.to_str().ok())
                .and_then(|d| httpdate::parse_http_date(d).ok()),
            Err(_) => None,
        };
        let Some(date) = date else {
            failures.push(format!("{}: no Date header to read its clock", node.id));
            continue;
        };
        let offset_s = match date.duration_since(sent) {
            Ok(ahead) => ahead.as_secs_f64(),
            Err(behind) => -behind.duration().as_secs_f64(),
        };
        // The header has whole seconds; the request takes a moment.
        if (offset_s - *wanted as f64).abs() > 2.0 {
            failures.push(format!(
                "{}: clock {offset_s:+.0} s off, wanted {wanted:+} s",
                node.id
            ));
        }
        parts.push(format!("{} {wanted:+} s (reads {offset_s:+.0} s)", node.id));
    }
    parts.join(", ")
}

/// The fault and the mechanism that makes it.
fn describe(cluster: &Cluster, fault: &Fault) -> String {
    let id = |i: &usize| cluster.nodes[*i].id.clone();
    match fault {
        Fault::PartitionRegion(region) => {
            format!("partition region {region} (blackhole routes)")
        }
        Fault::PartitionNode(i) => format!("partition node {} (blackhole routes)", id(i)),
        Fault::Kill(i) => format!("kill -9 {}, restart on its disk", id(i)),
        Fault::Loss(per_mille) => format!(
            "loss {:.0}% on every link (relay)",
            f64::from(*per_mille) / 10.0
        ),
    }
}

fn latency_summary(cluster: &Cluster) -> String {
    let Ok(topology) = Topology::parse("chaos", &harness::regions_toml(&cluster.nodes)) else {
        return String::new();
    };
    let regions = &topology.regions;
    let mut parts = Vec::new();
    for (x, a) in regions.iter().enumerate() {
        for b in &regions[x..] {
            parts.push(format!("{}-{} {:.1} ms", a.name, b.name, one_way_ms(a, b)));
        }
    }
    parts.join(", ")
}
