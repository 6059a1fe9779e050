//! The `statusmesh` command.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use rand::Rng;
use statusmesh_gossip::Config as GossipConfig;
use statusmesh_node::bench::{self, sse as bench_sse};
use statusmesh_node::certs::{self, ClusterCa};
use statusmesh_node::cli::{EpochArgs, RunArgs};
use statusmesh_node::client;
use statusmesh_node::config::Topology;
use statusmesh_node::settings::{NodeSettings, Tokens};
use statusmesh_node::start::{self, NodeOptions};
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
        /// Serve the client API over HTTPS (HTTP/2 and HTTP/1.1) with a throw-away CA and a
        /// certificate for localhost, written into the data directory (the CA as
        /// https-ca.pem, for `curl --cacert` and `statusmesh get --ca`).
        #[arg(long)]
        https: bool,
        #[command(flatten)]
        epoch: EpochArgs,
    },
    /// Run one regional node.
    Run(RunArgs),
    /// Check everything `run` would (flags, topology, certificates, tokens, data directory,
    /// addresses) without starting: exits non-zero with `run`'s error message.
    CheckConfig(RunArgs),
    /// Load commands against a running mesh.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Write one observation on the nearest node: `set api/db major_outage --region eu-west`.
    Set {
        /// SERVICE/COMPONENT
        target: String,
        /// operational | degraded_performance | partial_outage | major_outage | under_maintenance
        state: String,
        #[arg(long)]
        region: String,
        #[arg(long, default_value = "")]
        message: String,
        /// How long the observation holds without a heartbeat (90s, 5m, 1h).
        #[arg(long, default_value = "60s")]
        ttl: String,
        #[command(flatten)]
        conn: ClientArgs,
    },
    /// Read the status from the nearest node (a table; --json for scripts).
    Get {
        service: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: ClientArgs,
    },
    /// Open, update or resolve an incident on the nearest node.
    #[command(subcommand)]
    Incident(IncidentCommand),
    /// Regional probe checks: `checks add api/db --kind http --url http://...`, list, rm.
    #[command(subcommand)]
    Checks(client::checks::ChecksCommand),
    /// Follow changes as lines; fails over to the next nearest node and resumes.
    Watch {
        #[arg(long)]
        service: Option<String>,
        /// Give up after this many consecutive failed reconnects.
        #[arg(long, default_value_t = 20)]
        max_reconnects: u32,
        #[command(flatten)]
        conn: ClientArgs,
    },
    /// Write tokens: `token hash` prints the SHA-256 a tokens file's `secret_sha256` gives.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Make a joined node leave the mesh: it announces it, its peers drop it from their
    /// membership, and it stops (a node listed in regions.toml is refused).
    Leave {
        /// The node (URL, or HOST:PORT of its client API).
        #[arg(long)]
        node: String,
        /// An operator token of the node.
        #[arg(long, env = "STATUSMESH_TOKEN", hide_env_values = true)]
        token: String,
        /// Trust the node's HTTPS certificate issued by this CA (PEM).
        #[arg(long, value_name = "FILE", env = "STATUSMESH_CA")]
        ca: Option<PathBuf>,
    },
    /// Make a cluster CA (unless DIR has one) and a certificate for every node;
    /// `certs rotate-ca` makes a new CA and what a rotation without restart needs.
    Certs(CertsArgs),
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct CertsArgs {
    #[command(subcommand)]
    action: Option<CertsAction>,
    /// The topology file whose nodes get certificates.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where to write ca.pem, ca.key, <node>.pem, <node>.key.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum CertsAction {
    /// A new CA: writes into OUT the bundle of new and current CA (ca-bundle.pem), every
    /// node's certificate from the new CA, and the new CA alone (ca.pem, ca.key). Roll it
    /// out node by node with SIGHUP: the bundle as ca.pem, then the node's new certificate,
    /// then the new ca.pem (see the README).
    RotateCa {
        /// The topology file whose nodes get certificates.
        #[arg(long)]
        config: PathBuf,
        /// The directory of the current CA (ca.pem, ca.key).
        #[arg(long)]
        dir: PathBuf,
        /// Where to write the new CA, the bundle and the certificates.
        #[arg(long)]
        out: PathBuf,
    },
    /// A certificate for a node that joins without being listed in regions.toml: its subject
    /// names the node id and region. Writes <node>.pem, <node>.key and the CA's ca.pem into
    /// OUT, the joining node's --certs directory (see the README's "Adding a node").
    Issue {
        /// The directory of the cluster CA (ca.pem, ca.key).
        #[arg(long)]
        ca_dir: PathBuf,
        /// The new node's id (a DNS label: a-z, 0-9, '-').
        #[arg(long)]
        node: String,
        /// The region it runs in: one of the topology's regions.
        #[arg(long)]
        region: String,
        /// Where to write the certificate, its key and ca.pem.
        #[arg(long)]
        out: PathBuf,
        /// The topology file: when given, the region must be one of its regions and the id
        /// none of its nodes'.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print the hex SHA-256 of a secret (read from stdin, first line, unless --secret).
    Hash {
        /// The secret (default: read from stdin, so it stays out of shell history).
        #[arg(long)]
        secret: Option<String>,
    },
}

/// Where the client commands find nodes, and how they authenticate.
#[derive(Debug, clap::Args)]
struct ClientArgs {
    /// Nodes to choose from (HOST:PORT or URL, comma-separated); the nearest by measured
    /// round-trip time is used.
    #[arg(long, env = "STATUSMESH_NODES")]
    nodes: Option<String>,
    /// A topology whose nodes to choose from, instead of --nodes.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The write token.
    #[arg(long, env = "STATUSMESH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Trust the nodes' HTTPS certificates issued by this CA (PEM; every certificate in the
    /// file is trusted); addresses without a scheme then use https://. Without it, https://
    /// URLs are verified against the system's roots.
    #[arg(long, value_name = "FILE", env = "STATUSMESH_CA")]
    ca: Option<PathBuf>,
}

impl ClientArgs {
    fn urls(&self) -> anyhow::Result<Vec<String>> {
        Ok(client::node_urls(
            self.nodes.as_deref(),
            self.topology()?.as_ref(),
            self.ca.is_some(),
        )?)
    }

    /// The HTTP client, trusting `--ca` when given.
    fn client(&self) -> anyhow::Result<reqwest::Client> {
        Ok(client::http_client(self.ca.as_deref())?)
    }

    fn topology(&self) -> anyhow::Result<Option<Topology>> {
        Ok(self.config.as_deref().map(Topology::load).transpose()?)
    }

    fn token(&self) -> anyhow::Result<&str> {
        match self.token.as_deref() {
            Some(t) if !t.is_empty() => Ok(t),
            _ => bail!("writes need a token: pass --token or set STATUSMESH_TOKEN"),
        }
    }
}

#[derive(Debug, Subcommand)]
enum IncidentCommand {
    /// Open an incident.
    Open {
        service: String,
        title: String,
        /// none | minor | major | critical
        #[arg(long, default_value = "minor")]
        impact: String,
        /// Affected components (repeat or comma-separate).
        #[arg(long, value_delimiter = ',')]
        components: Vec<String>,
        #[arg(long)]
        message: String,
        /// The incident's id (generated when not given).
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        conn: ClientArgs,
    },
    /// Add an update to an incident's timeline, optionally moving its status.
    Update {
        service: String,
        id: String,
        #[arg(long)]
        message: String,
        /// investigating | identified | monitoring | resolved
        #[arg(long)]
        status: Option<String>,
        #[command(flatten)]
        conn: ClientArgs,
    },
    /// Resolve an incident.
    Resolve {
        service: String,
        id: String,
        #[arg(long, default_value = "Resolved.")]
        message: String,
        #[command(flatten)]
        conn: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Acknowledged writes per second, write latency and remote visibility.
    Write(bench::WriteArgs),
    /// SSE fan-out: connect time, deliveries lost or duplicated, delivery latency, RSS.
    Sse(bench_sse::SseArgs),
    /// A long SSE + write load that samples the nodes' RSS, open files and latency over time.
    Soak(bench_sse::SoakArgs),
    /// Regional probes: checks/s, missed intervals and scheduling lag at a local target.
    Probes(bench::probes::ProbesArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    // reqwest is built without a crypto provider of its own: every client that is not given
    // a TLS configuration (the benches' plain-HTTP clients) takes the process's default, ring,
    // the one every other TLS use here is given. Installing it twice is no error to act on.
    let _ = rustls::crypto::ring::default_provider().install_default();
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
                https,
                epoch,
            } => {
                dev(
                    config,
                    token,
                    data_dir,
                    https,
                    epoch.apply(GossipConfig::lan()),
                )
                .await
            }
            Command::Run(args) => {
                let plan = args.plan()?;
                run(plan).await
            }
            Command::CheckConfig(args) => {
                let plan = args.plan()?;
                for line in statusmesh_node::check_config::check(&plan).await? {
                    println!("ok  {line}");
                }
                println!(
                    "statusmesh run would start node {} with this configuration",
                    plan.node
                );
                Ok(())
            }
            Command::Bench(BenchCommand::Write(args)) => bench::write(args).await,
            Command::Bench(BenchCommand::Sse(args)) => bench_sse::sse(args).await,
            Command::Bench(BenchCommand::Soak(args)) => bench_sse::soak(args).await,
            Command::Bench(BenchCommand::Probes(args)) => bench::probes::probes(args).await,
            Command::Set {
                target,
                state,
                region,
                message,
                ttl,
                conn,
            } => {
                let (service, component) = client::split_target(&target)?;
                if let Some(topology) = conn.topology()? {
                    client::check_region(&topology, &region)?;
                }
                let args = client::SetArgs {
                    service,
                    component,
                    state,
                    region,
                    message,
                    ttl_s: client::parse_ttl(&ttl)?,
                };
                let http = conn.client()?;
                println!(
                    "{}",
                    client::set(&http, &conn.urls()?, conn.token()?, &args).await?
                );
                Ok(())
            }
            Command::Leave { node, token, ca } => {
                let http = client::http_client(ca.as_deref())?;
                println!("{}", leave(&http, &node, &token, ca.is_some()).await?);
                Ok(())
            }
            Command::Get {
                service,
                json,
                conn,
            } => {
                let http = conn.client()?;
                print!(
                    "{}",
                    client::get(&http, &conn.urls()?, service.as_deref(), json).await?
                );
                Ok(())
            }
            Command::Incident(command) => incident(command).await,
            Command::Checks(command) => {
                println!("{}", client::checks::run(command).await?);
                Ok(())
            }
            Command::Watch {
                service,
                max_reconnects,
                conn,
            } => {
                let http = conn.client()?;
                let mut out = std::io::stdout();
                client::watch(
                    &http,
                    &conn.urls()?,
                    service.as_deref(),
                    max_reconnects,
                    &mut out,
                )
                .await?;
                Ok(())
            }
            Command::Token {
                command: TokenCommand::Hash { secret },
            } => {
                let secret = match secret {
                    Some(secret) => secret,
                    None => {
                        let mut line = String::new();
                        std::io::stdin().read_line(&mut line)?;
                        line.trim_end_matches(['\r', '\n']).to_owned()
                    }
                };
                anyhow::ensure!(
                    !secret.is_empty(),
                    "no secret given on stdin or with --secret"
                );
                println!(
                    "{}",
                    statusmesh_node::settings::sha256_hex(
                        &statusmesh_node::settings::secret_sha256(&secret)
                    )
                );
                Ok(())
            }
            Command::Certs(args) => {
                let written = match args.action {
                    Some(CertsAction::RotateCa { config, dir, out }) => {
                        let topology = Topology::load(&config)?;
                        let ids: Vec<String> =
                            topology.nodes.iter().map(|n| n.id.clone()).collect();
                        certs::rotate_ca(&dir, &out, &topology.cluster, &ids)?
                    }
                    Some(CertsAction::Issue {
                        ca_dir,
                        node,
                        region,
                        out,
                        config,
                    }) => {
                        if let Some(config) = config {
                            let topology = Topology::load(&config)?;
                            topology.check_joiner(&config, &node, &region)?;
                        }
                        certs::issue_member(&ca_dir, &out, &node, &region)?
                    }
                    None => {
                        let (Some(config), Some(out)) = (args.config, args.out) else {
                            bail!("certs needs --config FILE and --out DIR (or: certs rotate-ca)");
                        };
                        let topology = Topology::load(&config)?;
                        let ids: Vec<String> =
                            topology.nodes.iter().map(|n| n.id.clone()).collect();
                        certs::write_cluster(&out, &topology.cluster, &ids)?
                    }
                };
                for path in written {
                    println!("wrote {}", path.display());
                }
                Ok(())
            }
        }
    })
}

async fn incident(command: IncidentCommand) -> anyhow::Result<()> {
    let (conn, method, path, body) = match command {
        IncidentCommand::Open {
            service,
            title,
            impact,
            components,
            message,
            id,
            conn,
        } => {
            let body = serde_json::json!({
                "service": service, "title": title, "impact": impact,
                "components": components, "message": message, "id": id,
            });
            (
                conn,
                reqwest::Method::POST,
                "/v1/incidents".to_owned(),
                body,
            )
        }
        IncidentCommand::Update {
            service,
            id,
            message,
            status,
            conn,
        } => {
            let body =
                serde_json::json!({ "service": service, "message": message, "status": status });
            (
                conn,
                reqwest::Method::POST,
                format!("/v1/incidents/{id}/updates"),
                body,
            )
        }
        IncidentCommand::Resolve {
            service,
            id,
            message,
            conn,
        } => {
            let body =
                serde_json::json!({ "service": service, "message": message, "status": "resolved" });
            (
                conn,
                reqwest::Method::POST,
                format!("/v1/incidents/{id}/updates"),
                body,
            )
        }
    };
    let http = conn.client()?;
    let reply = client::incident(&http, &conn.urls()?, conn.token()?, method, &path, body).await?;
    println!(
        "{}",
        serde_json::to_string_pretty(&reply).unwrap_or_default()
    );
    Ok(())
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // Automerge instruments its change parser with info-level spans; formatting those
        // for every applied change cost about a tenth of a busy node's CPU.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,automerge=warn"));
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
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".to_owned()),
            &statusmesh_node::telemetry::SECONDS_BUCKETS,
        )
        .context("histogram buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    statusmesh_node::telemetry::describe();
    Ok(handle)
}

async fn dev(
    config: Option<PathBuf>,
    token: Option<String>,
    data_dir: Option<PathBuf>,
    https: bool,
    gossip: GossipConfig,
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
    // One throw-away certificate for every node: they all serve on loopback.
    let web = if https {
        let files = statusmesh_node::http::tls::write_dev_files(&data_root.join("https"))?;
        let (tls, _) = statusmesh_node::http::tls::HttpTls::load(&files.cert, &files.key)?;
        Some((files, std::sync::Arc::new(tls)))
    } else {
        None
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut running = Vec::new();
    for spec in &topology.nodes {
        let mut settings = NodeSettings::new(data_root.join(&spec.id), Tokens::single(&token));
        settings.http_tls = web.as_ref().map(|(_, tls)| std::sync::Arc::clone(tls));
        let options = NodeOptions {
            topology: topology.clone(),
            node_id: spec.id.clone(),
            identity: ca.identity(&spec.id)?,
            settings,
            gossip: gossip.clone(),
            metrics: Some(metrics.clone()),
            join: None,
        };
        let node = start::start(options, stop_rx.clone())
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
            "  {:<16} {:<14} {}://{}",
            spec.id, spec.region, node.http_scheme, node.http_addr
        );
    }
    println!("write token: {token}");
    println!(
        "data: {}{}",
        data_root.display(),
        if throw_away { " (removed on exit)" } else { "" }
    );
    // The CA to trust, as curl and the client commands take it.
    let (curl_ca, cli_ca) = match &web {
        Some((files, _)) => {
            println!("HTTPS CA: {}", files.ca.display());
            (
                format!("--cacert {} ", files.ca.display()),
                format!(" --ca {}", files.ca.display()),
            )
        }
        None => (String::new(), String::new()),
    };
    if let Some((spec, node)) = running.first() {
        let scheme = node.http_scheme;
        println!();
        println!("try:");
        println!(
            "  curl {curl_ca}-X PUT -H 'Authorization: Bearer {token}' -d '{{\"state\":\"major_outage\",\"message\":\"db down\"}}' {scheme}://{}/v1/status/api/db/{}",
            node.http_addr, spec.region
        );
        if let Some((_, other)) = running.iter().find(|(s, _)| s.region != spec.region) {
            println!(
                "  curl {curl_ca}-N {scheme}://{}/v1/events",
                other.http_addr
            );
            println!("  statusmesh watch --nodes {}{cli_ca}", other.http_addr);
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

/// `statusmesh leave`: asks `node` to leave; the answer's error detail when it refuses.
async fn leave(
    http: &reqwest::Client,
    node: &str,
    token: &str,
    https: bool,
) -> anyhow::Result<String> {
    if token.is_empty() {
        bail!("--token must not be empty");
    }
    let base = if node.contains("://") {
        node.trim_end_matches('/').to_owned()
    } else {
        format!("{}://{node}", if https { "https" } else { "http" })
    };
    let response = http
        .post(format!("{base}/v1/leave"))
        .bearer_auth(token)
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await
        .with_context(|| format!("--node {node}: cannot reach it"))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!(
            "--node {node}: refused ({status}): {}",
            body["detail"].as_str().unwrap_or("no detail")
        );
    }
    Ok(format!(
        "node {} is leaving the mesh",
        body["node"].as_str().unwrap_or(node)
    ))
}

async fn run(plan: statusmesh_node::cli::RunPlan) -> anyhow::Result<()> {
    let statusmesh_node::cli::RunPlan {
        config,
        node,
        certs: certs_dir,
        certs_watch,
        settings,
        gossip,
        http_tls: _,
        join,
    } = plan;
    let metrics = install_metrics()?;
    let topology = Topology::load(&config)?;
    let join = match join {
        Some(join) => {
            topology.check_joiner(&config, &node, &join.region)?;
            let seeds = join
                .seeds
                .iter()
                .map(|addr| topology.seed(*addr).map(|n| n.id.clone()))
                .collect::<Result<Vec<_>, _>>()?;
            Some(start::JoinOptions {
                region: join.region,
                gossip: join.gossip,
                http: join.http,
                seeds,
            })
        }
        None => {
            topology.node(&node)?;
            None
        }
    };
    let identity = certs::load_identity(&certs_dir, &node)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let http_tls = settings.http_tls.clone();
    let options = NodeOptions {
        topology,
        node_id: node.clone(),
        identity,
        settings,
        gossip,
        metrics: Some(metrics),
        join,
    };
    let mut running = start::start(options, stop_rx)
        .await
        .with_context(|| format!("starting node {node}"))?;
    statusmesh_node::reload::spawn(
        running.handle.clone(),
        certs_dir,
        node.clone(),
        certs_watch,
        http_tls,
    );
    println!(
        "statusmesh node {node} serving {}://{}",
        running.http_scheme, running.http_addr
    );
    tokio::select! {
        () = shutdown_signal() => {}
        // `statusmesh leave`: the node announced it and closed its connections.
        _ = running.left.wait_for(|left| *left) => {}
    }
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
