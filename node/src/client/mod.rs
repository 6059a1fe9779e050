//! The client side of `statusmesh`: `get`, `set`, `incident`, `watch`.
//!
//! The commands find the nearest node themselves: they measure the round-trip time to every
//! node they know (a `--nodes` list or a regions.toml) and use the lowest; on failure they
//! fail over to the next nearest, and `watch` resumes from its cursor with jittered
//! exponential backoff, so the printed sequence of changes has no gap and no duplicate.
//!
//! [`watch`] holds the event-stream side (the SSE parser and `watch`); [`checks`] the
//! `checks add|list|rm` commands; [`tls`] the HTTP client and its trust (`--ca FILE`).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::config::Topology;

pub mod checks;
pub mod tls;
mod watch;

pub use tls::http_client;
pub use watch::{watch, SseEvent, SseParser};
/// Round-trip probes per node; the median is used.
const RTT_PROBES: usize = 3;
/// How long one probe may take before the node counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnect backoff bounds for `watch`.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Longest SSE line buffered before the stream is considered broken.
const SSE_BUFFER_MAX: usize = 8 * 1024 * 1024;

/// A client error, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("no node given: pass --nodes URL[,URL...] or --config regions.toml")]
    NoNodes,
    #[error("no node answered (tried {tried}): {last}")]
    Unreachable { tried: usize, last: String },
    #[error("{node} refused the request: HTTP {status}: {body}")]
    Refused {
        node: String,
        status: u16,
        body: String,
    },
    #[error("invalid argument {field} {value:?}: {rule}")]
    Argument {
        field: &'static str,
        value: String,
        rule: &'static str,
    },
    #[error("invalid argument --region {region:?}: the topology's regions are {allowed}")]
    UnknownRegion { region: String, allowed: String },
    #[error("cannot write output: {0}")]
    Output(String),
    #[error("gave up after {0} reconnects")]
    GaveUp(u32),
    /// The `--ca` file gives no CA certificate. Nothing was sent.
    #[error("--ca {path}: {reason}")]
    Ca { path: String, reason: String },
    /// No TLS client could be made (not the user's fault). Nothing was sent.
    #[error("cannot make the TLS client: {0}")]
    Tls(String),
}

/// The node base URLs a command may use: from `--nodes` or from a topology. An address
/// without a scheme (HOST:PORT, a topology's `http`) gets `https://` when `https` (the
/// command was given `--ca`), else `http://`.
pub fn node_urls(
    nodes: Option<&str>,
    topology: Option<&Topology>,
    https: bool,
) -> Result<Vec<String>, ClientError> {
    let scheme = if https { "https" } else { "http" };
    let mut urls: Vec<String> = match (nodes, topology) {
        (Some(list), _) => list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                if s.starts_with("http://") || s.starts_with("https://") {
                    s.trim_end_matches('/').to_owned()
                } else {
                    format!("{scheme}://{}", s.trim_end_matches('/'))
                }
            })
            .collect(),
        (None, Some(t)) => t
            .nodes
            .iter()
            .map(|n| format!("{scheme}://{}", n.http))
            .collect(),
        (None, None) => Vec::new(),
    };
    urls.dedup();
    if urls.is_empty() {
        return Err(ClientError::NoNodes);
    }
    Ok(urls)
}

/// Nodes ordered by measured round-trip time (median of a few `/healthz` probes), the
/// unreachable ones last in their given order.
pub async fn rank_by_rtt(
    client: &reqwest::Client,
    urls: &[String],
) -> Vec<(String, Option<Duration>)> {
    let probes = urls.iter().map(|url| async move {
        let mut samples = Vec::with_capacity(RTT_PROBES);
        for _ in 0..RTT_PROBES {
            let start = Instant::now();
            let answered =
                tokio::time::timeout(PROBE_TIMEOUT, client.get(format!("{url}/healthz")).send())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .is_some_and(|r| r.status().is_success());
            if !answered {
                break;
            }
            samples.push(start.elapsed());
        }
        samples.sort_unstable();
        let rtt = (samples.len() == RTT_PROBES).then(|| samples[RTT_PROBES / 2]);
        (url.clone(), rtt)
    });
    let mut ranked = futures_util::future::join_all(probes).await;
    ranked.sort_by_key(|(_, rtt)| rtt.unwrap_or(Duration::MAX));
    ranked
}

/// Sends one request to the nearest node that answers, failing over in RTT order.
async fn request_nearest(
    client: &reqwest::Client,
    urls: &[String],
    build: impl Fn(&str) -> reqwest::RequestBuilder,
) -> Result<(String, Value), ClientError> {
    let ranked = rank_by_rtt(client, urls).await;
    let mut last = String::from("no node reachable");
    for (url, _) in &ranked {
        match build(url).send().await {
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                if status.is_success() {
                    let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
                    return Ok((url.clone(), value));
                }
                if status.is_client_error() {
                    // The request itself is wrong: another node would say the same.
                    return Err(ClientError::Refused {
                        node: url.clone(),
                        status: status.as_u16(),
                        body,
                    });
                }
                last = format!("{url}: HTTP {status}");
            }
            Err(e) => last = format!("{url}: {}", tls::describe(&e)),
        }
    }
    Err(ClientError::Unreachable {
        tried: ranked.len(),
        last,
    })
}

/// `statusmesh get [SERVICE]`: the status view as a table, or as JSON.
pub async fn get(
    client: &reqwest::Client,
    urls: &[String],
    service: Option<&str>,
    as_json: bool,
) -> Result<String, ClientError> {
    let path = match service {
        Some(s) => format!("/v1/status/{s}"),
        None => "/v1/status".to_owned(),
    };
    let (node, view) =
        request_nearest(client, urls, |url| client.get(format!("{url}{path}"))).await?;
    if as_json {
        return Ok(serde_json::to_string_pretty(&view).unwrap_or_default());
    }
    let services: Vec<Value> = match service {
        Some(_) => vec![view.clone()],
        None => view["services"].as_array().cloned().unwrap_or_default(),
    };
    let mut out = String::new();
    if service.is_none() {
        out.push_str(&format!(
            "{} ({})  via {node}\n",
            view["page"]["description"].as_str().unwrap_or(""),
            view["page"]["indicator"].as_str().unwrap_or("")
        ));
    }
    out.push_str(&format!(
        "{:<16} {:<20} {:<16} {:<22} {:<6} MESSAGE\n",
        "SERVICE", "COMPONENT", "REGION", "STATE", "FRESH"
    ));
    for svc in &services {
        for comp in svc["components"].as_array().into_iter().flatten() {
            for cell in comp["regions"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "{:<16} {:<20} {:<16} {:<22} {:<6} {}\n",
                    svc["name"].as_str().unwrap_or(""),
                    comp["name"].as_str().unwrap_or(""),
                    cell["region"].as_str().unwrap_or(""),
                    cell["state"].as_str().unwrap_or(""),
                    if cell["freshness"] == "fresh" {
                        "yes"
                    } else {
                        "STALE"
                    },
                    cell["message"].as_str().unwrap_or(""),
                ));
            }
        }
        for incident in svc["incidents"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "incident {} [{}] {} ({})\n",
                incident["id"].as_str().unwrap_or(""),
                incident["status"].as_str().unwrap_or(""),
                incident["title"].as_str().unwrap_or(""),
                incident["impact"].as_str().unwrap_or(""),
            ));
        }
    }
    Ok(out)
}

/// What `statusmesh set` writes.
#[derive(Debug, Clone)]
pub struct SetArgs {
    pub service: String,
    pub component: String,
    pub state: String,
    pub region: String,
    pub message: String,
    pub ttl_s: u64,
}

/// Refuses a region the topology does not have, before anything is sent (the node would
/// answer 422 too).
pub fn check_region(topology: &Topology, region: &str) -> Result<(), ClientError> {
    if topology.regions.iter().any(|r| r.name == region) {
        return Ok(());
    }
    let allowed: Vec<&str> = topology.regions.iter().map(|r| r.name.as_str()).collect();
    Err(ClientError::UnknownRegion {
        region: region.to_owned(),
        allowed: allowed.join(", "),
    })
}

/// Parses `SERVICE/COMPONENT`.
pub fn split_target(target: &str) -> Result<(String, String), ClientError> {
    match target.split_once('/') {
        Some((s, c)) if !s.is_empty() && !c.is_empty() && !c.contains('/') => {
            Ok((s.to_owned(), c.to_owned()))
        }
        _ => Err(ClientError::Argument {
            field: "target",
            value: target.to_owned(),
            rule: "must be SERVICE/COMPONENT",
        }),
    }
}

/// Parses a duration like `60s`, `5m`, `2h` or a bare number of seconds.
pub fn parse_ttl(text: &str) -> Result<u64, ClientError> {
    let bad = || ClientError::Argument {
        field: "--ttl",
        value: text.to_owned(),
        rule: "must be a duration like 90s, 5m or 1h",
    };
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number.parse().map_err(|_| bad())?;
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(bad()),
    };
    n.checked_mul(factor).ok_or_else(bad)
}

/// `statusmesh set`: writes one observation on the nearest node.
pub async fn set(
    client: &reqwest::Client,
    urls: &[String],
    token: &str,
    args: &SetArgs,
) -> Result<String, ClientError> {
    let path = format!(
        "/v1/status/{}/{}/{}",
        args.service, args.component, args.region
    );
    let body = json!({ "state": args.state, "message": args.message, "ttl_s": args.ttl_s });
    let (node, reply) = request_nearest(client, urls, |url| {
        client
            .put(format!("{url}{path}"))
            .bearer_auth(token)
            .json(&body)
    })
    .await?;
    let changed = reply["changed"].as_bool().unwrap_or(false);
    Ok(format!(
        "{} {}/{} in {} = {} via {node}",
        if changed {
            "changed"
        } else {
            "unchanged (heartbeat refreshed)"
        },
        args.service,
        args.component,
        args.region,
        args.state
    ))
}

/// `statusmesh incident ...`: sends an incident request to the nearest node.
pub async fn incident(
    client: &reqwest::Client,
    urls: &[String],
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> Result<Value, ClientError> {
    let (_, reply) = request_nearest(client, urls, |url| {
        client
            .request(method.clone(), format!("{url}{path}"))
            .bearer_auth(token)
            .json(&body)
    })
    .await?;
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parser_joins_chunks_and_skips_comments() {
        let mut p = SseParser::default();
        assert!(p
            .feed(b": heartbeat\n\nevent: status\nid: a")
            .expect("ok")
            .is_empty());
        let events = p.feed(b"bc\ndata: {\"x\":1}\n\n").expect("ok");
        assert_eq!(
            events,
            vec![SseEvent {
                event: "status".into(),
                id: Some("abc".into()),
                data: "{\"x\":1}".into()
            }]
        );
    }

    #[test]
    fn targets_and_ttls_parse_or_name_the_argument() {
        assert_eq!(
            split_target("api/db").ok(),
            Some(("api".into(), "db".into()))
        );
        assert!(split_target("api").is_err());
        assert_eq!(parse_ttl("90s").ok(), Some(90));
        assert_eq!(parse_ttl("5m").ok(), Some(300));
        assert_eq!(parse_ttl("60").ok(), Some(60));
        assert!(parse_ttl("5d")
            .expect_err("unit")
            .to_string()
            .contains("--ttl"));
    }

    #[test]
    fn node_lists_become_base_urls() {
        let urls =
            node_urls(Some("127.0.0.1:8101, http://127.0.0.1:8201/"), None, false).expect("urls");
        assert_eq!(urls, vec!["http://127.0.0.1:8101", "http://127.0.0.1:8201"]);
        assert!(node_urls(None, None, false).is_err());
        let urls =
            node_urls(Some("127.0.0.1:8101,http://127.0.0.1:8201"), None, true).expect("urls");
        assert_eq!(
            urls,
            vec!["https://127.0.0.1:8101", "http://127.0.0.1:8201"]
        );
    }
}
