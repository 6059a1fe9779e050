//! Regional probes with real processes: a mesh of 3 regions × 2 nodes probes an HTTP target
//! and a TCP listener that the test runs on loopback and switches between answers.
//!
//! Shown: a check added on one node runs in every region; the target sees one prober per
//! region; a slow answer is `degraded_performance`; a region that alone sees the target fail
//! is an advisory, not an outage; every region failing is `major_outage` on every node; a TCP
//! listener that goes away is `major_outage`; `kill -9` of a region's prober hands its checks
//! to the other node of that region. Times are measured and printed, never asserted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::harness::{
    data_dir, get_json, make_certs, metric_sum, run_node_with_args, topology, wait_for,
    wait_healthy, wait_ready, SseReader, TestNode,
};

const TOKEN: &str = "probe-test-token";
const SERVICE: &str = "web";

/// How the HTTP target answers a probe from a node of a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Ok,
    Error,
    Slow(u64),
}

/// The HTTP target: answers per the probing node's region, and logs each probe
/// (time, node) from the probe's User-Agent.
#[derive(Debug, Default)]
struct Target {
    answers: Mutex<BTreeMap<String, Answer>>,
    default: Mutex<Option<Answer>>,
    hits: Mutex<Vec<(Instant, String)>>,
}

impl Target {
    fn set_all(&self, answer: Answer) {
        self.answers.lock().expect("lock").clear();
        *self.default.lock().expect("lock") = Some(answer);
    }

    fn set_region(&self, region: &str, answer: Answer) {
        self.answers
            .lock()
            .expect("lock")
            .insert(region.to_owned(), answer);
    }

    fn answer_for(&self, node: &str) -> Answer {
        let answers = self.answers.lock().expect("lock");
        answers
            .iter()
            .find(|(region, _)| node.starts_with(region.as_str()))
            .map(|(_, a)| *a)
            .or(*self.default.lock().expect("lock"))
            .unwrap_or(Answer::Ok)
    }

    /// Probes since `from`, as (time, node).
    fn hits_since(&self, from: Instant) -> Vec<(Instant, String)> {
        self.hits
            .lock()
            .expect("lock")
            .iter()
            .filter(|(at, _)| *at >= from)
            .cloned()
            .collect()
    }
}

async fn serve_target(listener: TcpListener, target: Arc<Target>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let target = target.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&head).to_string();
            let node = text
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("user-agent").then(|| {
                        value
                            .trim()
                            .trim_start_matches("statusmesh-probe/")
                            .to_owned()
                    })
                })
                .unwrap_or_default();
            target
                .hits
                .lock()
                .expect("lock")
                .push((Instant::now(), node.clone()));
            let (status, body) = match target.answer_for(&node) {
                Answer::Ok => ("200 OK", "status: ok"),
                Answer::Error => ("500 Internal Server Error", "broken"),
                Answer::Slow(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    ("200 OK", "status: ok")
                }
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// The component as `node` reads it: (status, advisories' regions, region → (state, reporter)).
pub(crate) async fn component(
    client: &reqwest::Client,
    node: &TestNode,
    name: &str,
) -> Option<(String, Vec<String>, BTreeMap<String, (String, String)>)> {
    let view = get_json(client, node.url(&format!("/v1/status/{SERVICE}"))).await?;
    let component = view["components"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)?
        .clone();
    let advisories = component["advisories"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|a| a["region"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let regions = component["regions"]
        .as_array()?
        .iter()
        .filter(|r| r["freshness"] == "fresh")
        .filter_map(|r| {
            Some((
                r["region"].as_str()?.to_owned(),
                (
                    r["state"].as_str()?.to_owned(),
                    r["reporter"].as_str()?.to_owned(),
                ),
            ))
        })
        .collect();
    Some((
        component["status"].as_str()?.to_owned(),
        advisories,
        regions,
    ))
}

/// Waits until every node shows `name` with `status` and every region's observation fresh.
async fn wait_status_everywhere(
    client: &reqwest::Client,
    nodes: &[TestNode],
    name: &str,
    status: &str,
) {
    for node in nodes {
        wait_for(&format!("{name} {status} on {}", node.id), || async {
            let (s, _, regions) = component(client, node, name).await?;
            (s == status && regions.len() == 3).then_some(())
        })
        .await;
    }
}

async fn put_check(client: &reqwest::Client, node: &TestNode, component: &str, body: Value) {
    let response = client
        .put(node.url(&format!("/v1/checks/{SERVICE}/{component}")))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .expect("put check");
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    assert!(status.is_success(), "PUT check: {status} {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn regions_probe_a_target_agree_on_outages_and_take_over_from_a_killed_prober() {
    let dir = tempfile::tempdir().expect("tmp");
    let (config, nodes) = topology(dir.path(), 2);
    let certs = dir.path().join("certs");
    make_certs(&config, &certs);
    let mut procs: BTreeMap<String, crate::harness::Proc> = nodes
        .iter()
        .map(|n| {
            let proc = run_node_with_args(
                dir.path(),
                &config,
                &certs,
                n,
                &data_dir(dir.path(), n),
                ["--token", TOKEN],
            );
            (n.id.clone(), proc)
        })
        .collect();
    let client = reqwest::Client::new();
    wait_healthy(&client, &nodes).await;
    wait_ready(&client, &nodes).await;
    // Membership settled: every node sees every other alive (so each region agrees on its
    // probers from the start).
    for node in &nodes {
        wait_for(&format!("{} seeing every peer alive", node.id), || async {
            let view = get_json(&client, node.url("/v1/nodes")).await?;
            let alive = view["nodes"]
                .as_array()?
                .iter()
                .filter(|n| n["state"] == "alive")
                .count();
            (alive == nodes.len()).then_some(())
        })
        .await;
    }

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind target");
    let http_target = listener.local_addr().expect("addr");
    let target = Arc::new(Target::default());
    tokio::spawn(serve_target(listener, target.clone()));

    // Refused at PUT, by field: an unparsable target, an unknown region, no token.
    let bad = client
        .put(nodes[0].url(&format!("/v1/checks/{SERVICE}/frontend")))
        .bearer_auth(TOKEN)
        .json(&json!({"kind": "http", "target": "htp://x"}))
        .send()
        .await
        .expect("put");
    assert_eq!(bad.status(), 422);
    let body: Value = bad.json().await.expect("json");
    assert_eq!(body["field"], "target", "{body}");
    let bad = client
        .put(nodes[0].url(&format!("/v1/checks/{SERVICE}/frontend")))
        .bearer_auth(TOKEN)
        .json(&json!({"kind": "http", "target": "http://127.0.0.1:1/", "regions": ["mars"]}))
        .send()
        .await
        .expect("put");
    assert_eq!(bad.status(), 422);
    let body: Value = bad.json().await.expect("json");
    assert_eq!(body["field"], "regions", "{body}");
    let bad = client
        .put(nodes[0].url(&format!("/v1/checks/{SERVICE}/frontend")))
        .json(&json!({"kind": "http", "target": "http://127.0.0.1:1/"}))
        .send()
        .await
        .expect("put");
    assert_eq!(bad.status(), 401);

    // Added on one node: probed from every region, operational everywhere.
    let added = Instant::now();
    put_check(
        &client,
        &nodes[0],
        "frontend",
        json!({
            "kind": "http",
            "target": format!("http://{http_target}/health"),
            "interval_s": 1,
            "timeout_ms": 900,
            "expect_status": [200],
            "body_contains": "ok",
            "degraded_above_ms": 400,
            "failures_before_down": 1,
        }),
    )
    .await;
    wait_status_everywhere(&client, &nodes, "frontend", "operational").await;
    println!(
        "probes: check added -> operational from 3 regions on every node in {:?}",
        added.elapsed()
    );

    // One prober per region while membership is stable.
    let window_start = Instant::now();
    let hits = wait_for("4 probes from each region", || async {
        let hits = target.hits_since(window_start);
        let enough = ["eu-west", "us-east", "ap-southeast"]
            .iter()
            .all(|region| hits.iter().filter(|(_, n)| n.starts_with(region)).count() >= 4);
        enough.then_some(hits)
    })
    .await;
    let window = window_start.elapsed();
    let mut per_region: BTreeMap<&str, (BTreeSet<String>, usize)> = BTreeMap::new();
    for (_, node) in &hits {
        let region = nodes
            .iter()
            .find(|n| &n.id == node)
            .map(|n| n.region.as_str())
            .unwrap_or("?");
        let entry = per_region.entry(region).or_default();
        entry.0.insert(node.clone());
        entry.1 += 1;
    }
    println!(
        "probes: in a {window:?} window at interval 1 s, per region (probers, probes): {per_region:?}"
    );
    assert_eq!(per_region.len(), 3, "{per_region:?}");
    // At most one probe per region per interval (a fixed cadence): never more than the
    // intervals the window spans, plus the one at its start.
    let most = window.as_secs_f64().ceil() as usize + 1;
    for (region, (probers, count)) in &per_region {
        assert_eq!(probers.len(), 1, "{region} had probers {probers:?}");
        assert!(*count <= most, "{region}: {count} probes in {window:?}");
    }

    // Slower than degraded_above_ms from every region: degraded.
    target.set_all(Answer::Slow(650));
    wait_status_everywhere(&client, &nodes, "frontend", "degraded_performance").await;

    // One region alone sees it fail: an advisory naming it, not an outage.
    target.set_all(Answer::Ok);
    target.set_region("ap-southeast", Answer::Error);
    for node in &nodes {
        wait_for(
            &format!("advisory for ap-southeast on {}", node.id),
            || async {
                let (status, advisories, regions) = component(&client, node, "frontend").await?;
                let ap = regions.get("ap-southeast")?;
                (status == "operational"
                    && ap.0 == "major_outage"
                    && advisories == ["ap-southeast".to_owned()])
                .then_some(())
            },
        )
        .await;
    }

    // A live status event of the component carries the agreement and the advisory.
    let mut events = SseReader::connect(
        &client,
        &nodes[0].url(&format!("/v1/events?service={SERVICE}")),
        None,
    )
    .await;
    target.set_region("ap-southeast", Answer::Slow(650));
    let event = events
        .next_matching(|e| {
            e.event == "status"
                && e.data["component"] == "frontend"
                && e.data["region"] == "ap-southeast"
                && e.data["agreement"]["advisories"][0]["region"] == "ap-southeast"
        })
        .await;
    assert_eq!(
        event.data["agreement"]["status"], "operational",
        "{:?}",
        event.data
    );
    drop(events);

    // Every region sees it fail: major_outage on every node.
    let failed_at = Instant::now();
    target.set_all(Answer::Error);
    let other_region = nodes
        .iter()
        .find(|n| n.region == "us-east")
        .expect("a us-east node");
    wait_for("major_outage on a us-east node", || async {
        let (status, _, _) = component(&client, other_region, "frontend").await?;
        (status == "major_outage").then_some(())
    })
    .await;
    println!(
        "probes: target down -> major_outage on {} in {:?} (interval 1 s + timeout 0.9 s + 1 s = 2.9 s)",
        other_region.id,
        failed_at.elapsed()
    );
    wait_status_everywhere(&client, &nodes, "frontend", "major_outage").await;
    target.set_all(Answer::Ok);
    wait_status_everywhere(&client, &nodes, "frontend", "operational").await;

    // A TCP check: a listener that goes away is connection refused, everywhere.
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind tcp");
    let tcp_addr = tcp.local_addr().expect("addr");
    let tcp_task = tokio::spawn(async move {
        loop {
            if let Ok((stream, _)) = tcp.accept().await {
                drop(stream);
            }
        }
    });
    put_check(
        &client,
        &nodes[3],
        "db",
        json!({"kind": "tcp", "target": tcp_addr.to_string(), "interval_s": 1,
               "timeout_ms": 500, "failures_before_down": 1}),
    )
    .await;
    wait_status_everywhere(&client, &nodes, "db", "operational").await;
    tcp_task.abort();
    let _ = tcp_task.await;
    wait_status_everywhere(&client, &nodes, "db", "major_outage").await;
    let (_, _, regions) = component(&client, &nodes[0], "db")
        .await
        .expect("db component");
    println!("probes: tcp listener closed -> {regions:?}");

    // kill -9 of eu-west's prober: the other eu-west node takes over.
    let anonymous = client
        .get(nodes[2].url("/v1/checks"))
        .send()
        .await
        .expect("list");
    assert_eq!(anonymous.status(), 401, "GET /v1/checks needs a token");
    let listing: Value = client
        .get(nodes[2].url("/v1/checks"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let frontend = listing["checks"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["component"] == "frontend"))
        .cloned()
        .expect("frontend listed");
    let prober = frontend["probers"]["eu-west"]
        .as_str()
        .expect("an eu-west prober")
        .to_owned();
    let heir = nodes
        .iter()
        .find(|n| n.region == "eu-west" && n.id != prober)
        .expect("another eu-west node")
        .id
        .clone();
    let killed_at = Instant::now();
    let last_probe_before = target
        .hits_since(killed_at - Duration::from_secs(5))
        .into_iter()
        .filter(|(_, n)| *n == prober)
        .map(|(at, _)| at)
        .max()
        .expect("the prober probed");
    let mut victim = procs.remove(&prober).expect("prober process");
    victim.child.kill().expect("kill -9 the prober");
    let _ = victim.child.wait();
    let heir_node = nodes.iter().find(|n| n.id == heir).expect("heir");
    let detected_at = wait_for(&format!("{heir} detecting {prober}"), || async {
        let view = get_json(&client, heir_node.url("/v1/nodes")).await?;
        let state = view["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["id"] == prober.as_str())?["state"]
            .clone();
        (state != "alive").then(Instant::now)
    })
    .await;
    let taken_over_at = wait_for(&format!("{heir} probing after {prober} died"), || async {
        target
            .hits_since(killed_at)
            .into_iter()
            .find(|(_, n)| *n == heir)
            .map(|(at, _)| at)
    })
    .await;
    println!(
        "probes: kill -9 {prober} -> {heir} sees it {:?} later (SWIM), probes {:?} after the kill \
         ({:?} after detection, as polled); eu-west unprobed for {:?}",
        detected_at - killed_at,
        taken_over_at - killed_at,
        taken_over_at.saturating_duration_since(detected_at),
        taken_over_at - last_probe_before
    );
    let survivors: Vec<TestNode> = nodes.iter().filter(|n| n.id != prober).cloned().collect();
    let handovers = metric_sum(&client, heir_node, "statusmesh_probe_handovers_total", &[])
        .await
        .unwrap_or(0.0);
    assert!(handovers >= 1.0, "{heir} counted {handovers} handovers");
    for node in &survivors {
        wait_for(
            &format!("eu-west reported by {heir} on {}", node.id),
            || async {
                let (status, _, regions) = component(&client, node, "frontend").await?;
                let eu = regions.get("eu-west")?;
                (status == "operational" && eu.1 == format!("probe.{heir}")).then_some(())
            },
        )
        .await;
    }
    // The survivors agree that the heir owns it (once each has seen the victim go).
    for node in &survivors {
        wait_for(
            &format!("{} naming {heir} as eu-west's prober", node.id),
            || async {
                let listing: Value = client
                    .get(node.url("/v1/checks"))
                    .bearer_auth(TOKEN)
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                let owner = listing["checks"]
                    .as_array()?
                    .iter()
                    .find(|c| c["component"] == "frontend")?["probers"]["eu-west"]
                    .clone();
                (owner == json!(heir)).then_some(())
            },
        )
        .await;
    }

    // Removed: listed no more.
    let removed = client
        .delete(survivors[0].url(&format!("/v1/checks/{SERVICE}/db")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("delete");
    assert!(removed.status().is_success());
    wait_for("db check gone", || async {
        let listing: Value = client
            .get(survivors[0].url("/v1/checks"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let left = listing["checks"].as_array()?;
        (!left.iter().any(|c| c["component"] == "db")).then_some(())
    })
    .await;
    drop(procs);
}
