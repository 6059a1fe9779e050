//! The `statusmesh` command.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use rand::Rng;
use statusmesh_gossip::Config as GossipConfig;
use statusmesh_node::certs::{self, ClusterCa};
use statusmesh_node::config::Topology;
use statusmesh_node::runtime::{self, NodeOptions};
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
        /// The write token clients must present (or set STATUSMESH_TOKEN).
        #[arg(long, env = "STATUSMESH_TOKEN", hide_env_values = true)]
        token: String,
    },
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Dev { config, token } => dev(config, token).await,
            Command::Run {
                config,
                node,
                certs,
                token,
            } => run(config, node, certs, token).await,
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

async fn dev(config: Option<PathBuf>, token: Option<String>) -> anyhow::Result<()> {
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
    let ca = ClusterCa::generate(&topology.cluster)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut running = Vec::new();
    for spec in &topology.nodes {
        let options = NodeOptions {
            topology: topology.clone(),
            node_id: spec.id.clone(),
            identity: ca.identity(&spec.id)?,
            token: token.clone(),
            gossip: GossipConfig::lan(),
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
    Ok(())
}

async fn run(
    config: PathBuf,
    node: String,
    certs_dir: PathBuf,
    token: String,
) -> anyhow::Result<()> {
    if token.is_empty() {
        bail!("--token must not be empty");
    }
    let topology = Topology::load(&config)?;
    topology.node(&node)?;
    let identity = certs::load_identity(&certs_dir, &node)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let options = NodeOptions {
        topology,
        node_id: node.clone(),
        identity,
        token,
        gossip: GossipConfig::wan(),
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
