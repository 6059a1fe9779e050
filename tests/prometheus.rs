//! `/metrics` against real Prometheus tooling (Debian's `prometheus` package): every node of
//! a 3-node mesh passes `promtool check metrics`, and a real Prometheus scraping the mesh
//! every second reports all three targets up, with statusmesh's series.
//!
//! `./test.sh` installs the package (tests/setup/prometheus.sh). Without it this test says
//! so and passes, unless `STATUSMESH_REQUIRE_TOOLS=1` (set by `./test.sh`).

use std::io::Write as _;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::alertmanager::tool_present;
use crate::harness::{self, Proc, TestNode};

const PROMTOOL: &str = "/usr/bin/promtool";
const PROMETHEUS: &str = "/usr/bin/prometheus";
const TOKEN: &str = "prometheus-token-0123456789";

/// `promtool check metrics` over `text`: its exit status and what it printed.
fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("promtool stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let output = child.wait_with_output().expect("promtool output");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

/// Starts a Prometheus that scrapes `nodes` every second, on a free loopback port.
async fn start_prometheus(
    dir: &std::path::Path,
    client: &reqwest::Client,
    nodes: &[TestNode],
) -> (Proc, String) {
    let targets: Vec<String> = nodes.iter().map(|n| format!("'{}'", n.http)).collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
         scrape_configs:\n  - job_name: statusmesh\n    static_configs:\n      \
         - targets: [{}]\n",
        targets.join(", ")
    );
    let config_path = dir.join("prometheus.yml");
    std::fs::write(&config_path, config).expect("write prometheus.yml");
    let storage = dir.join("prometheus-data");
    let listen = harness::free_tcp();
    let mut command = Command::new(PROMETHEUS);
    command
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!("--storage.tsdb.path={}", storage.display()))
        .arg(format!("--web.listen-address={listen}"));
    let proc = Proc::spawn(command, dir.join("prometheus.log"));
    let url = format!("http://{listen}");
    harness::wait_ok(client, &format!("{url}/-/ready")).await;
    (proc, url)
}

/// The result vector of an instant query.
async fn query(client: &reqwest::Client, url: &str, promql: &str) -> Option<Vec<Value>> {
    let reply = client
        .get(format!("{url}/api/v1/query"))
        .query(&[("query", promql)])
        .send()
        .await
        .ok()?
        .json::<Value>()
        .await
        .ok()?;
    (reply["status"] == "success").then_some(())?;
    reply["data"]["result"].as_array().cloned()
}

#[tokio::test]
async fn prometheus_lints_every_nodes_metrics_and_scrapes_the_mesh() {
    if !tool_present(PROMTOOL) || !tool_present(PROMETHEUS) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = harness::start_mesh(dir.path(), TOKEN).await;
    let client = &mesh.client;
    // Traffic of every kind, so that the series behind it exist: a write that travels to
    // the other regions, a subscriber, and an Alertmanager delivery with a skipped alert.
    let (code, reply) = harness::put_status(
        client,
        &mesh.nodes[0],
        TOKEN,
        &format!("api/db/{}", mesh.nodes[0].region),
        json!({"state": "major_outage", "message": "down"}),
    )
    .await;
    assert_eq!(code, 200, "{reply}");
    let _subscriber =
        harness::SseReader::connect(client, &mesh.nodes[1].url("/v1/events"), None).await;
    let delivery = json!({"version": "4", "receiver": "r", "groupKey": "g", "alerts": [
        {"status": "firing", "fingerprint": "a",
         "labels": {"statusmesh_service": "api", "statusmesh_component": "cache",
                    "severity": "warning"}},
        {"status": "firing", "fingerprint": "b", "labels": {"alertname": "Unrouted"}},
    ]});
    let response = client
        .post(mesh.nodes[2].url("/v1/integrations/alertmanager"))
        .bearer_auth(TOKEN)
        .json(&delivery)
        .send()
        .await
        .expect("deliver");
    assert_eq!(response.status(), 200);
    for node in &mesh.nodes {
        harness::wait_for(&format!("{} to see the write", node.id), || async {
            let state =
                harness::cell_state(client, node, "api", "db", &mesh.nodes[0].region).await?;
            (state == "major_outage").then_some(())
        })
        .await;
    }
    // The gauges are exported once a second: wait for them on every node.
    for node in &mesh.nodes {
        harness::wait_for(&format!("{}'s gauges", node.id), || async {
            harness::metric_sum(client, node, "statusmesh_documents", &[])
                .await
                .filter(|n| *n >= 1.0)
        })
        .await;
    }

    for node in &mesh.nodes {
        let text = harness::metrics_text(client, node).await.expect("metrics");
        assert!(text.contains("# HELP statusmesh_"), "{}: {text}", node.id);
        let (ok, said) = promtool_check(&text);
        assert!(ok, "promtool check metrics on {}:\n{said}", node.id);
    }
    let (ok, said) = promtool_check("statusmesh_bad_ms 1\n");
    assert!(!ok, "promtool lints what it should: {said}");

    let (_prometheus, url) = start_prometheus(dir.path(), client, &mesh.nodes).await;
    let targets = harness::wait_for("prometheus to scrape all three nodes up", || async {
        let reply: Value = client
            .get(format!("{url}/api/v1/targets"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let active = reply["data"]["activeTargets"].as_array()?.clone();
        let up = active.iter().filter(|t| t["health"] == "up").count();
        (active.len() == 3 && up == 3).then_some(active)
    })
    .await;
    for target in &targets {
        assert_eq!(target["lastError"], "", "{target}");
    }
    let up = harness::wait_for("up == 1 for every node", || async {
        let result = query(client, &url, "up{job=\"statusmesh\"} == 1").await?;
        (result.len() == 3).then_some(result)
    })
    .await;
    assert_eq!(up.len(), 3);
    // statusmesh's own series, as Prometheus stored them: one per node, labelled with it.
    let series = harness::wait_for("statusmesh_documents of every node", || async {
        let result = query(client, &url, "statusmesh_documents").await?;
        (result.len() == 3).then_some(result)
    })
    .await;
    let mut labelled: Vec<&str> = series
        .iter()
        .filter_map(|s| s["metric"]["node"].as_str())
        .collect();
    labelled.sort_unstable();
    let mut ids: Vec<&str> = mesh.nodes.iter().map(|n| n.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(labelled, ids);
    let skipped = harness::wait_for("the skipped alert as Prometheus scraped it", || async {
        let result = query(
            client,
            &url,
            "statusmesh_alertmanager_alerts_skipped_total{reason=\"no_target\"}",
        )
        .await?;
        (!result.is_empty()).then_some(result)
    })
    .await;
    assert_eq!(skipped[0]["metric"]["node"], mesh.nodes[2].id.as_str());
}
