//! `statusmesh checks add|list|rm`: regional probe checks on the nearest node.
//!
//! `add` sends the check as `PUT /v1/checks/{service}/{component}` (the node validates it
//! and names the field it refuses), `list` prints `GET /v1/checks` (a table, or `--json`),
//! `rm` sends the `DELETE`.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::{node_urls, request_nearest, split_target};
use crate::config::Topology;

/// Where the command finds nodes, and its token.
#[derive(Debug, Clone, clap::Args)]
pub struct ChecksConn {
    /// Nodes to choose from (HOST:PORT or URL, comma-separated); the nearest is used.
    #[arg(long, env = "STATUSMESH_NODES")]
    pub nodes: Option<String>,
    /// A topology whose nodes to choose from, instead of --nodes.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The token (operator scope for add and rm).
    #[arg(long, env = "STATUSMESH_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Trust the nodes' HTTPS certificates issued by this CA (PEM); addresses without a
    /// scheme then use https://.
    #[arg(long, value_name = "FILE", env = "STATUSMESH_CA")]
    pub ca: Option<PathBuf>,
}

/// The check a `checks add` describes.
#[derive(Debug, Clone, clap::Args)]
pub struct AddArgs {
    /// SERVICE/COMPONENT
    pub target: String,
    /// http | tcp
    #[arg(long)]
    pub kind: String,
    /// http(s)://host[:port]/path, or host:port for tcp.
    #[arg(long)]
    pub url: String,
    /// Probe interval (e.g. 30s, 1m).
    #[arg(long, value_parser = crate::bench::parse_duration)]
    pub interval: Option<Duration>,
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Status codes that count as up (comma-separated; default any 2xx).
    #[arg(long, value_delimiter = ',')]
    pub expect_status: Vec<u16>,
    #[arg(long)]
    pub body_contains: Option<String>,
    #[arg(long)]
    pub degraded_above_ms: Option<u64>,
    #[arg(long)]
    pub failures_before_down: Option<u32>,
    /// Regions that probe it (comma-separated; default every region).
    #[arg(long, value_delimiter = ',')]
    pub regions: Vec<String>,
    /// Fresh regions that must agree for major_outage (default a majority).
    #[arg(long)]
    pub down_when: Option<u32>,
    #[command(flatten)]
    pub conn: ChecksConn,
}

/// `statusmesh checks ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ChecksCommand {
    /// Add or replace the check of a component.
    Add(AddArgs),
    /// List every check, with its prober in each region.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: ChecksConn,
    },
    /// Remove the check of a component (SERVICE/COMPONENT).
    Rm {
        target: String,
        #[command(flatten)]
        conn: ChecksConn,
    },
}

impl ChecksConn {
    fn urls(&self) -> anyhow::Result<Vec<String>> {
        let topology = self.config.as_deref().map(Topology::load).transpose()?;
        Ok(node_urls(
            self.nodes.as_deref(),
            topology.as_ref(),
            self.ca.is_some(),
        )?)
    }
}

/// The JSON body of `checks add`: only what was given, the node fills in the defaults.
pub fn spec_of(args: &AddArgs) -> Value {
    let mut spec = Map::new();
    spec.insert("kind".into(), json!(args.kind));
    spec.insert("target".into(), json!(args.url));
    if let Some(interval) = args.interval {
        spec.insert("interval_s".into(), json!(interval.as_secs()));
    }
    let optional = [
        ("timeout_ms", args.timeout_ms.map(|v| json!(v))),
        (
            "body_contains",
            args.body_contains.as_ref().map(|v| json!(v)),
        ),
        (
            "degraded_above_ms",
            args.degraded_above_ms.map(|v| json!(v)),
        ),
        (
            "failures_before_down",
            args.failures_before_down.map(|v| json!(v)),
        ),
        (
            "expect_status",
            (!args.expect_status.is_empty()).then(|| json!(args.expect_status)),
        ),
        (
            "regions",
            (!args.regions.is_empty()).then(|| json!(args.regions)),
        ),
        (
            "agreement",
            args.down_when.map(|k| json!({ "down_when": k })),
        ),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            spec.insert(key.into(), value);
        }
    }
    Value::Object(spec)
}

/// Runs a `checks` command; returns what to print.
pub async fn run(command: ChecksCommand) -> anyhow::Result<String> {
    let conn = match &command {
        ChecksCommand::Add(args) => &args.conn,
        ChecksCommand::List { conn, .. } | ChecksCommand::Rm { conn, .. } => conn,
    };
    let http = super::http_client(conn.ca.as_deref())?;
    match command {
        ChecksCommand::Add(args) => {
            let (service, component) = split_target(&args.target)?;
            let body = spec_of(&args);
            let path = format!("/v1/checks/{service}/{component}");
            let token = args.conn.token.clone();
            let (node, reply) = request_nearest(&http, &args.conn.urls()?, |url| {
                http.put(format!("{url}{path}"))
                    .bearer_auth(&token)
                    .json(&body)
            })
            .await?;
            let changed = reply["changed"].as_bool().unwrap_or(false);
            Ok(format!(
                "{} check {service}/{component} via {node}",
                if changed { "saved" } else { "unchanged" }
            ))
        }
        ChecksCommand::List { json, conn } => {
            let token = conn.token.clone();
            let (_, reply) = request_nearest(&http, &conn.urls()?, |url| {
                http.get(format!("{url}/v1/checks")).bearer_auth(&token)
            })
            .await?;
            if json {
                return Ok(serde_json::to_string_pretty(&reply).unwrap_or_default());
            }
            Ok(table(&reply))
        }
        ChecksCommand::Rm { target, conn } => {
            let (service, component) = split_target(&target)?;
            let path = format!("/v1/checks/{service}/{component}");
            let token = conn.token.clone();
            let (node, _) = request_nearest(&http, &conn.urls()?, |url| {
                http.delete(format!("{url}{path}")).bearer_auth(&token)
            })
            .await?;
            Ok(format!("removed check {service}/{component} via {node}"))
        }
    }
}

/// `checks list` as a table: one line per check, its probers by region.
fn table(reply: &Value) -> String {
    let mut out = String::from("CHECK\tKIND\tTARGET\tINTERVAL\tPROBERS\n");
    for entry in reply["checks"].as_array().into_iter().flatten() {
        let probers: Vec<String> = entry["probers"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(region, node)| format!("{region}={}", node.as_str().unwrap_or("-")))
            .collect();
        out.push_str(&format!(
            "{}/{}\t{}\t{}\t{}s\t{}\n",
            entry["service"].as_str().unwrap_or("?"),
            entry["component"].as_str().unwrap_or("?"),
            entry["check"]["kind"].as_str().unwrap_or("?"),
            entry["check"]["target"].as_str().unwrap_or("?"),
            entry["check"]["interval_s"],
            probers.join(" "),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: ChecksCommand,
    }

    #[test]
    fn add_sends_only_what_was_given() {
        let cli = Cli::try_parse_from([
            "checks",
            "add",
            "api/db",
            "--kind",
            "http",
            "--url",
            "http://127.0.0.1:9/h",
            "--interval",
            "5s",
            "--regions",
            "eu,us",
            "--down-when",
            "2",
            "--token",
            "t",
        ])
        .expect("parses");
        let ChecksCommand::Add(args) = cli.command else {
            panic!("add");
        };
        assert_eq!(
            spec_of(&args),
            json!({"kind": "http", "target": "http://127.0.0.1:9/h", "interval_s": 5,
                   "regions": ["eu", "us"], "agreement": {"down_when": 2}})
        );
    }
}
