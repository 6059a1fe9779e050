//! The `statusmesh` command.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use rand::Rng;
use statusmesh_gossip::Config as GossipConfig;
use statusmesh_node::bench;
use statusmesh_node::certs::{self, ClusterCa};
use statusmesh_node::config::Topology;
use statusmesh_node::runtime::{self, NodeOptions};
use statusmesh_node::settings::{NodeSettings, Tokens};
use tokio::sync::watch;

#[derive(Debug, Parser)]
#[command(
    name = "statusmesh",
    version,
    about = "Replicated service availability across regions"
)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every node of a topology on loopback, with throw-away certificates.
    Dev {
        /// The topology (default: the embedded regions.toml, 3 regions x 2 nodes).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The write token (generated and printed when not given).
        #[arg(long)]
        token: Option<String>,
        /// Keep each node's data in DIR/<node-id> (default: a temporary directory that is
        /// removed on exit).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Run one regional node.
    Run {
        /// The topology file.
        #[arg(long)]
        config: PathBuf,
        /// This node's id in the topology.
        #[arg(long)]
        node: String,
        /// Directory made by `statusmesh certs`.
        #[arg(long)]
        certs: PathBuf,
        /// Where this node keeps its snapshots and change logs.
        #[arg(long)]
        data_dir: PathBuf,
        /// The write token clients must present (or set STATUSMESH_TOKEN).
        #[arg(
            long,
            env = "STATUSMESH_TOKEN",
            hide_env_values = true,
            required_unless_present = "tokens",
            conflicts_with = "tokens"
        )]
        token: Option<String>,
        /// A TOML file of named write tokens ([[token]] name = "..", secret = "..").
        #[arg(long)]
        tokens: Option<PathBuf>,
    },
    /// Load commands against a running mesh.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Make a cluster CA (unless DIR has one) and a certificate for every node.
    Certs {
        /// The topology file whose nodes get certificates.
        #[arg(long)]
        config: PathBuf,
        /// Where to write ca.pem, ca.key, <node>.pem, <node>.key.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Acknowledged writes per second, write latency and remote visibility.
    Write(bench::WriteArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Dev {
                config,
                token,
                data_dir,
            } => dev(config, token, data_dir).await,
            Command::Run {
                config,
                node,
                certs,
                data_dir,
                token,
                tokens,
            } => {
                let tokens = match (token, tokens) {
                    (_, Some(path)) => Tokens::load(&path)?,
                    (Some(token), None) if !token.is_empty() => Tokens::single(&token),
                    _ => bail!("--token must not be empty (or give --tokens FILE)"),
                };
                run(config, node, certs, NodeSettings::new(data_dir, tokens)).await
            }
            Command::Bench(BenchCommand::Write(args)) => bench::write(args).await,
            Command::Certs { config, out } => {
                let topology = Topology::load(&config)?;
                let ids: Vec<String> = topology.nodes.iter().map(|n| n.id.clone()).collect();
                for path in certs::write_cluster(&out, &topology.cluster, &ids)? {
                    println!("wrote {}", path.display());
                }
                Ok(())
            }
        }
    })
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Installs the process's one Prometheus recorder; every node of the process reports into it
/// with its own `node` label.
fn install_metrics() -> anyhow::Result<metrics_exporter_prometheus::PrometheusHandle> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let buckets_ms = [
        0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 250.0, 500.0, 1_000.0, 5_000.0,
    ];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_ms".to_owned()), &buckets_ms)
        .context("histogram buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")
}

async fn dev(
    config: Option<PathBuf>,
    token: Option<String>,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let topology = match &config {
        Some(path) => Topology::load(path)?,
        None => Topology::embedded()?,
    };
    let token = token.unwrap_or_else(|| {
        let bytes: [u8; 16] = rand::rng().random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    });
    if token.is_empty() {
        bail!("--token must not be empty");
    }
    let metrics = install_metrics()?;
    // Without --data-dir the nodes' data is throw-away, like their certificates.
    let (data_root, throw_away) = match data_dir {
        Some(dir) => (dir, false),
        None => {
            let suffix: u64 = rand::rng().random();
            let dir = std::env::temp_dir().join(format!(
                "statusmesh-dev-{}-{suffix:016x}",
                std::process::id()
            ));
            (dir, true)
        }
    };
    let ca = ClusterCa::generate(&topology.cluster)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut running = Vec::new();
    for spec in &topology.nodes {
        let options = NodeOptions {
            topology: topology.clone(),
            node_id: spec.id.clone(),
            identity: ca.identity(&spec.id)?,
            settings: NodeSettings::new(data_root.join(&spec.id), Tokens::single(&token)),
            gossip: GossipConfig::lan(),
            metrics: Some(metrics.clone()),
        };
        let node = runtime::start(options, stop_rx.clone())
            .await
            .with_context(|| format!("starting node {}", spec.id))?;
        running.push((spec.clone(), node));
    }
    println!(
        "statusmesh dev: cluster {:?}, {} nodes",
        topology.cluster,
        running.len()
    );
    for (spec, node) in &running {
        println!(
            "  {:<16} {:<14} http://{}",
            spec.id, spec.region, node.http_addr
        );
    }
    println!("write token: {token}");
    println!(
        "data: {}{}",
        data_root.display(),
        if throw_away { " (removed on exit)" } else { "" }
    );
    if let Some((spec, node)) = running.first() {
        println!();
        println!("try:");
        println!(
            "  curl -X PUT -H 'Authorization: Bearer {token}' -d '{{\"state\":\"major_outage\",\"message\":\"db down\"}}' http://{}/v1/status/api/db/{}",
            node.http_addr, spec.region
        );
        if let Some((_, other)) = running.iter().find(|(s, _)| s.region != spec.region) {
            println!("  curl -N http://{}/v1/events", other.http_addr);
        }
    }
    shutdown_signal().await;
    let _ = stop_tx.send(true);
    for (_, node) in running {
        node.join().await;
    }
    if throw_away {
        let _ = std::fs::remove_dir_all(&data_root);
    }
    Ok(())
}

async fn run(
    config: PathBuf,
    node: String,
    certs_dir: PathBuf,
    settings: NodeSettings,
) -> anyhow::Result<()> {
    let metrics = install_metrics()?;
    let topology = Topology::load(&config)?;
    topology.node(&node)?;
    let identity = certs::load_identity(&certs_dir, &node)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let options = NodeOptions {
        topology,
        node_id: node.clone(),
        identity,
        settings,
        gossip: GossipConfig::wan(),
        metrics: Some(metrics),
    };
    let running = runtime::start(options, stop_rx)
        .await
        .with_context(|| format!("starting node {node}"))?;
    println!(
        "statusmesh node {node} serving http://{}",
        running.http_addr
    );
    shutdown_signal().await;
    let _ = stop_tx.send(true);
    running.join().await;
    Ok(())
}

/// Waits for SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
