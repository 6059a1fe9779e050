//! The Alertmanager receiver driven by a real Alertmanager (Debian's
//! `prometheus-alertmanager`): the test writes its configuration (a webhook receiver that
//! points at one node, with a bearer token), starts it on loopback, and injects alerts
//! through its `/api/v2/alerts` API. A second webhook of the same receiver points at a
//! capture server in the test, so that a real notification can be delivered again by hand.
//!
//! `./test.sh` installs Alertmanager (tests/setup/alertmanager.sh). Without it this test
//! says so and passes, unless `STATUSMESH_REQUIRE_TOOLS=1` (set by `./test.sh`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::errors::error_of;
use crate::harness::{self, Proc, TestNode};

const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";
const TOKEN: &str = "alertmanager-token-0123456789";

/// True when `path` exists; when it does not, the test is skipped (false), or fails under
/// `STATUSMESH_REQUIRE_TOOLS=1`.
pub fn tool_present(path: &str) -> bool {
    if Path::new(path).exists() {
        return true;
    }
    let required = std::env::var("STATUSMESH_REQUIRE_TOOLS").is_ok_and(|v| v == "1");
    assert!(!required, "{path} is missing; ./test.sh installs it");
    eprintln!("skipped: {path} is not installed (run ./test.sh)");
    false
}

/// An RFC 3339 time, as Alertmanager's API takes it.
fn rfc3339(at: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format a time")
}

/// An HTTP server that keeps every JSON body posted to it: a second webhook of the
/// Alertmanager receiver, so the test holds the notifications Alertmanager really sent.
struct Capture {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Capture {
    async fn start() -> Self {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = bodies.clone();
        let router = axum::Router::new().route(
            "/",
            axum::routing::post(move |body: axum::body::Bytes| {
                let kept = kept.clone();
                async move {
                    if let (Ok(value), Ok(mut all)) =
                        (serde_json::from_slice::<Value>(&body), kept.lock())
                    {
                        all.push(value);
                    }
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind capture");
        let addr = listener.local_addr().expect("capture addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self { addr, bodies, task }
    }

    /// The first notification that `pred` accepts, once one has arrived.
    async fn notification(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        harness::wait_for(what, || async {
            let bodies = self.bodies.lock().ok()?;
            bodies.iter().find(|b| pred(b)).cloned()
        })
        .await
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A running Alertmanager whose receiver sends to `node` (with the bearer token) and to the
/// capture server; groups by `alertname`, flushing after a second.
struct Alertmanager {
    _proc: Proc,
    url: String,
}

impl Alertmanager {
    async fn start(
        dir: &Path,
        client: &reqwest::Client,
        node: &TestNode,
        capture: SocketAddr,
    ) -> Self {
        let config = format!(
            "route:\n  receiver: statusmesh\n  group_by: ['alertname']\n  group_wait: 1s\n  \
             group_interval: 1s\n  repeat_interval: 1h\n\
             receivers:\n  - name: statusmesh\n    webhook_configs:\n      \
             - url: {node_url}\n        send_resolved: true\n        http_config:\n          \
             authorization:\n            type: Bearer\n            credentials: {TOKEN}\n      \
             - url: http://{capture}/\n        send_resolved: true\n",
            node_url = node.url("/v1/integrations/alertmanager"),
        );
        let config_path = dir.join("alertmanager.yml");
        std::fs::write(&config_path, config).expect("write alertmanager.yml");
        let storage = dir.join("alertmanager-data");
        std::fs::create_dir_all(&storage).expect("alertmanager storage");
        let listen = harness::free_tcp();
        let mut command = Command::new(ALERTMANAGER);
        command
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.path={}", storage.display()))
            .arg(format!("--web.listen-address={listen}"))
            // No cluster: no gossip port, no peers to wait for.
            .arg("--cluster.listen-address=");
        let proc = Proc::spawn(command, dir.join("alertmanager.log"));
        let url = format!("http://{listen}");
        harness::wait_ok(client, &format!("{url}/-/ready")).await;
        Self { _proc: proc, url }
    }

    /// Posts alerts to Alertmanager's API, as Prometheus does.
    async fn post(&self, client: &reqwest::Client, alerts: Value) {
        let response = client
            .post(format!("{}/api/v2/alerts", self.url))
            .json(&alerts)
            .send()
            .await
            .expect("post alerts");
        assert!(
            response.status().is_success(),
            "alertmanager refused the alerts: {}",
            response.text().await.unwrap_or_default()
        );
    }
}

/// The cell `api/db/<region>` as `node` shows it.
async fn db_cell(client: &reqwest::Client, node: &TestNode, region: &str) -> Option<Value> {
    let view = harness::get_json(client, node.url("/v1/status/api")).await?;
    let component = view["components"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == "db")?
        .clone();
    component["regions"]
        .as_array()?
        .iter()
        .find(|r| r["region"] == region)
        .cloned()
}

/// Waits until `node` shows the cell `api/db/<region>` in `state` with `message`.
async fn wait_db(
    client: &reqwest::Client,
    node: &TestNode,
    region: &str,
    state: &str,
    message: &str,
) -> Value {
    harness::wait_for(
        &format!("api/db/{region} {state} ({message:?}) on {}", node.id),
        || async {
            let cell = db_cell(client, node, region).await?;
            (cell["state"] == state && cell["message"] == message).then_some(cell)
        },
    )
    .await
}

/// The status of the incident of component `db` on `node`, once there is one.
async fn db_incident(client: &reqwest::Client, node: &TestNode, status: &str) -> Value {
    harness::wait_for(
        &format!("an incident on db {status} on {}", node.id),
        || async {
            let view = harness::get_json(client, node.url("/v1/status/api")).await?;
            view["incidents"]
                .as_array()?
                .iter()
                .find(|i| i["components"] == json!(["db"]) && i["status"] == status)
                .cloned()
        },
    )
    .await
}

/// The transitions of `api/db` that `node` holds.
async fn transitions(client: &reqwest::Client, node: &TestNode) -> usize {
    let history = harness::get_json(client, node.url("/v1/status/api/db/history?days=1"))
        .await
        .expect("history");
    history["transitions"].as_array().map_or(0, Vec::len)
}

/// Posts a webhook body straight to a node, as Alertmanager's retry would.
async fn deliver(client: &reqwest::Client, node: &TestNode, body: &Value) -> (u16, Value) {
    deliver_as(client, node, TOKEN, body).await
}

/// [`deliver`] with `token`.
async fn deliver_as(
    client: &reqwest::Client,
    node: &TestNode,
    token: &str,
    body: &Value,
) -> (u16, Value) {
    let response = client
        .post(node.url("/v1/integrations/alertmanager"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("deliver");
    let code = response.status().as_u16();
    (code, response.json().await.unwrap_or(Value::Null))
}

fn is_firing(body: &Value, alertname: &str) -> bool {
    body["alerts"].as_array().is_some_and(|alerts| {
        alerts
            .iter()
            .any(|a| a["labels"]["alertname"] == alertname && a["status"] == "firing")
    })
}

#[tokio::test]
async fn alertmanager_alerts_hold_a_component_down_in_every_region_until_all_resolve() {
    if !tool_present(ALERTMANAGER) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut mesh = harness::start_mesh(dir.path(), TOKEN).await;
    let client = mesh.client.clone();
    let (receiving, other) = (mesh.nodes[0].clone(), mesh.nodes[1].clone());
    assert_ne!(receiving.region, other.region);
    let region = receiving.region.clone();
    let capture = Capture::start().await;
    let am = Alertmanager::start(dir.path(), &client, &receiving, capture.addr).await;

    let starts_at = rfc3339(std::time::SystemTime::now());
    let alert = |name: &str, severity: &str, summary: &str| {
        json!({
            "labels": {
                "alertname": name, "severity": severity,
                "statusmesh_service": "api", "statusmesh_component": "db",
                "statusmesh_incident": "true",
            },
            "annotations": { "summary": summary },
            "startsAt": starts_at,
        })
    };
    let db_down = alert("DbDown", "critical", "primary database down");
    let db_slow = alert("DbSlow", "warning", "replication lag");
    let unrouted = json!({ "labels": { "alertname": "Unrouted", "severity": "critical" } });

    // Firing: the component is down, as a node of another region shows it.
    am.post(&client, json!([db_down, unrouted])).await;
    let cell = wait_db(
        &client,
        &other,
        &region,
        "major_outage",
        "1 alert firing: DbDown: primary database down",
    )
    .await;
    assert_eq!(cell["reporter"], "alertmanager.statusmesh");
    let incident = db_incident(&client, &other, "investigating").await;
    assert_eq!(incident["impact"], "critical");
    // The alert without statusmesh labels is skipped, and counted.
    harness::wait_for("the unrouted alert counted as skipped", || async {
        let skipped = harness::metric_sum(
            &client,
            &receiving,
            "statusmesh_alertmanager_alerts_skipped_total",
            &["reason=\"no_target\""],
        )
        .await?;
        (skipped >= 1.0).then_some(())
    })
    .await;

    // A retried delivery: the notification Alertmanager sent, twice more, changes nothing.
    let firing = capture
        .notification("DbDown's firing notification", |b| is_firing(b, "DbDown"))
        .await;
    assert_eq!(firing["version"], "4");
    let before = transitions(&client, &receiving).await;
    for attempt in 0..2 {
        let (code, reply) = deliver(&client, &receiving, &firing).await;
        assert_eq!(code, 200, "attempt {attempt}: {reply}");
        assert_eq!(reply["changed"], false, "attempt {attempt}: {reply}");
        assert_eq!(reply["targets"][0]["state"], "major_outage", "{reply}");
        assert_eq!(reply["targets"][0]["changed"], false, "{reply}");
    }
    assert_eq!(transitions(&client, &receiving).await, before);

    // A second alert on the same component (another group): both are named, the worst wins.
    am.post(&client, json!([db_slow])).await;
    wait_db(
        &client,
        &other,
        &region,
        "major_outage",
        "2 alerts firing: DbDown: primary database down; DbSlow: replication lag",
    )
    .await;

    // The firing set survives a restart of the receiving node.
    mesh.procs[0].terminate();
    mesh.procs[0] = harness::run_node_with_args(
        dir.path(),
        &dir.path().join("regions.toml"),
        &dir.path().join("certs"),
        &receiving,
        &harness::data_dir(dir.path(), &receiving),
        ["--token", TOKEN],
    );
    harness::wait_healthy(&client, std::slice::from_ref(&receiving)).await;

    // One of two resolved: the other still holds the component (degraded, not operational).
    let now = || rfc3339(std::time::SystemTime::now());
    let resolved = |mut alert: Value| {
        alert["endsAt"] = json!(now());
        alert
    };
    am.post(&client, json!([resolved(db_down.clone())])).await;
    wait_db(
        &client,
        &other,
        &region,
        "degraded_performance",
        "1 alert firing: DbSlow: replication lag",
    )
    .await;
    db_incident(&client, &other, "investigating").await;

    // Both resolved: operational, and the incident resolved.
    am.post(&client, json!([resolved(db_slow.clone())])).await;
    wait_db(
        &client,
        &other,
        &region,
        "operational",
        "all alerts resolved",
    )
    .await;
    db_incident(&client, &other, "resolved").await;

    // The first firing notification, delivered late: stale, it changes nothing.
    let (code, reply) = deliver(&client, &receiving, &firing).await;
    assert_eq!(code, 200, "{reply}");
    assert_eq!(reply["changed"], false, "{reply}");
    assert_eq!(reply["skipped"]["reasons"]["stale"], 1, "{reply}");
    let cell = db_cell(&client, &receiving, &region).await.expect("cell");
    assert_eq!(cell["state"], "operational", "{cell}");
}

#[tokio::test]
async fn alertmanager_deliveries_are_refused_as_json_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A token that may write api's status but open no incident.
    const PROBE: &str = "alertmanager-probe-0123456789";
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        format!(
            "[[token]]\nname = \"am\"\nsecret = \"{TOKEN}\"\n\n\
             [[token]]\nname = \"probe\"\nsecret = \"{PROBE}\"\n\
             services = [\"api\"]\noperator = false\n"
        ),
    )
    .expect("tokens file");
    let tokens = tokens.display().to_string();
    let (node, _proc) = crate::errors::start_one(dir.path(), &["--tokens", &tokens]).await;
    let client = reqwest::Client::new();
    let url = node.url("/v1/integrations/alertmanager");
    let post = |token: &str, body: Vec<u8>| {
        client
            .post(&url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
    };
    let with_labels = |extra: Value| {
        let mut labels = json!({"statusmesh_service": "api", "statusmesh_component": "db"});
        if let (Some(all), Some(more)) = (labels.as_object_mut(), extra.as_object()) {
            all.extend(more.clone());
        }
        json!({"version": "4", "alerts": [{"status": "firing", "labels": labels}]})
    };
    let major = |extra: Value| {
        let mut labels = json!({"statusmesh_state": "major_outage"});
        if let (Some(all), Some(more)) = (labels.as_object_mut(), extra.as_object()) {
            all.extend(more.clone());
        }
        with_labels(labels)
    };
    let cases = [
        (
            TOKEN,
            major(json!({"statusmesh_region": "mars"})),
            422,
            "region",
        ),
        (
            TOKEN,
            with_labels(json!({"statusmesh_state": "down"})),
            422,
            "state",
        ),
        (
            TOKEN,
            major(json!({"statusmesh_incident": "yes"})),
            422,
            "incident",
        ),
        (
            TOKEN,
            json!({"alerts": [{"status": "burning"}]}),
            400,
            "alerts[0].status",
        ),
        (TOKEN, json!({"version": "4"}), 400, "alerts"),
        (TOKEN, json!({"version": "3", "alerts": []}), 422, "version"),
        (
            PROBE,
            major(json!({"statusmesh_service": "web"})),
            403,
            "authorization",
        ),
        (
            PROBE,
            major(json!({"statusmesh_incident": "true"})),
            403,
            "authorization",
        ),
        ("not-a-token-at-all", major(json!({})), 401, "authorization"),
    ];
    for (token, body, want, field) in cases {
        let bytes = serde_json::to_vec(&body).expect("json");
        let response = post(token, bytes).send().await.expect("post");
        let (code, _, error) = error_of(response).await;
        assert_eq!(
            (code, error["field"].as_str()),
            (want, Some(field)),
            "{body}: {error}"
        );
    }
    let too_large = post(TOKEN, vec![b' '; 1_100_000])
        .send()
        .await
        .expect("post");
    let (code, _, error) = error_of(too_large).await;
    assert_eq!(
        (code, error["field"].as_str()),
        (413, Some("body")),
        "{error}"
    );
    // Nothing of the refused deliveries was written.
    let status = harness::get_json(&client, node.url("/v1/status"))
        .await
        .expect("status");
    assert_eq!(status["services"], json!([]), "{status}");
    // The probe may write api without an incident: the state it asks for, in its region.
    let (code, reply) = deliver_as(&client, &node, PROBE, &major(json!({}))).await;
    assert_eq!(code, 200, "{reply}");
    assert_eq!(
        reply["targets"][0]["region"],
        node.region.as_str(),
        "{reply}"
    );
    assert_eq!(reply["targets"][0]["state"], "major_outage", "{reply}");
}
