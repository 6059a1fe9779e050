//! The Statuspage v2 read API with a real Statuspage client: the `statuspage.io` npm package
//! (pinned in `tests/setup/statuspage.sh`, installed into `target/statuspage-client`), run
//! with node against nodes of a 3-region mesh. It reads the summary, components, incidents
//! and maintenances, and the ids it reads from two nodes of different regions are the same.
//!
//! Without node or the package this test says so and passes, unless
//! `STATUSMESH_REQUIRE_TOOLS=1` (set by `./test.sh`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::alertmanager::tool_present;
use crate::harness::{self, TestNode};

const TOKEN: &str = "statuspage-token-0123456789";
const NODE: &str = "/usr/bin/node";

/// Where `tests/setup/statuspage.sh` installs the client.
fn client_modules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/statuspage-client/node_modules")
}

/// The client's script: every read the package offers, printed as one JSON object.
const SCRIPT: &str = r#"
const { Statuspage } = require('statuspage.io');
const statuspage = new Statuspage('statusmesh');
statuspage.setApiUrl(process.argv[2]);
(async () => {
  const out = {
    summary: await statuspage.api.getSummary(),
    status: await statuspage.api.getStatus(),
    components: await statuspage.api.getComponents(),
    incidents: await statuspage.api.incidents.getAll(),
    unresolved: await statuspage.api.incidents.getUnresolved(),
    maintenances: await statuspage.api.scheduledMaintenances.getAll(),
    upcoming: await statuspage.api.scheduledMaintenances.getUpcoming(),
  };
  process.stdout.write(JSON.stringify(out));
})().catch((e) => { console.error(String(e && e.stack || e)); process.exit(1); });
"#;

/// Runs the client against `node`; its reads as JSON.
fn read_with_client(dir: &Path, node: &TestNode) -> Value {
    let script = dir.join("client.js");
    std::fs::write(&script, SCRIPT).expect("write the client script");
    let output = Command::new(NODE)
        .arg(&script)
        .arg(node.url(""))
        .env("NODE_PATH", client_modules())
        .output()
        .expect("run node");
    assert!(
        output.status.success(),
        "the statuspage.io client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the client printed JSON")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn is_iso8601(value: &Value) -> bool {
    value.as_str().is_some_and(|t| {
        t.len() == 24 && t.ends_with('Z') && t.as_bytes()[10] == b'T' && t.as_bytes()[4] == b'-'
    })
}

fn is_id(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|id| id.len() == 12 && id.bytes().all(|b| b.is_ascii_alphanumeric()))
}

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.bearer_auth(TOKEN).send().await.expect("send");
    let code = response.status().as_u16();
    (code, response.json().await.unwrap_or(Value::Null))
}

/// Every id in a client's reads (components, groups' members, incidents, updates,
/// maintenances), in order.
fn ids(reads: &Value) -> Vec<String> {
    let mut out = vec![reads["summary"]["page"]["id"].to_string()];
    for c in reads["components"]["components"]
        .as_array()
        .into_iter()
        .flatten()
    {
        out.push(c["id"].to_string());
        out.push(c["group_id"].to_string());
        out.push(c["components"].to_string());
    }
    for i in reads["incidents"]["incidents"]
        .as_array()
        .into_iter()
        .flatten()
    {
        out.push(i["id"].to_string());
        for u in i["incident_updates"].as_array().into_iter().flatten() {
            out.push(u["id"].to_string());
        }
    }
    for m in reads["maintenances"]["scheduled_maintenances"]
        .as_array()
        .into_iter()
        .flatten()
    {
        out.push(m["id"].to_string());
    }
    out
}

#[tokio::test]
async fn a_statuspage_client_reads_summary_components_and_incidents_with_ids_equal_on_two_regions()
{
    if !tool_present(NODE)
        || !tool_present(&client_modules().join("statuspage.io").display().to_string())
    {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = harness::start_mesh_with_args(
        dir.path(),
        TOKEN,
        &["--page-url", "https://status.example.com/"],
    )
    .await;
    let client = &mesh.client;
    let eu = &mesh.nodes[0];
    let us = &mesh.nodes[1];
    let ap = &mesh.nodes[2];

    for (node, path, state) in [
        (eu, "api/db/eu-west", "major_outage"),
        (us, "api/db/us-east", "operational"),
        (eu, "api/web/eu-west", "operational"),
        (ap, "shop/cart/ap-southeast", "degraded_performance"),
    ] {
        let (code, reply) = harness::put_status(
            client,
            node,
            TOKEN,
            path,
            json!({"state": state, "message": "from the test", "ttl_s": 3600}),
        )
        .await;
        assert_eq!(code, 200, "{path}: {reply}");
    }
    let (code, reply) = send(client.post(eu.url("/v1/incidents")).json(&json!({
        "service": "api", "id": "db-down", "title": "Database down", "impact": "critical",
        "components": ["db"], "message": "Looking into it",
    })))
    .await;
    assert_eq!(code, 201, "{reply}");
    let (code, reply) = send(
        client
            .post(eu.url("/v1/incidents/db-down/updates"))
            .json(&json!({
                "service": "api", "message": "A fix is out", "status": "monitoring",
            })),
    )
    .await;
    assert_eq!(code, 200, "{reply}");
    let now = now_ms();
    let (code, reply) = send(
        client
            .put(us.url("/v1/maintenance/api/upgrade"))
            .json(&json!({
                "title": "Web upgrade", "components": ["web"],
                "starts_at_ms": now + 24 * 3600 * 1000, "ends_at_ms": now + 25 * 3600 * 1000,
            })),
    )
    .await;
    assert_eq!(code, 200, "{reply}");

    // Every node holds everything once the summary of the farthest region lists it all.
    for node in [eu, ap] {
        harness::wait_for("the summary to list every record", || async {
            let s = harness::get_json(client, node.url("/api/v2/summary.json")).await?;
            let components = s["components"].as_array()?.len();
            let updates = s["incidents"].get(0)?["incident_updates"].as_array()?.len();
            let maintenances = s["scheduled_maintenances"].as_array()?.len();
            let db = s["components"]
                .as_array()?
                .iter()
                .find(|c| c["name"] == "db")?;
            // 2 groups and 3 components; both regions' observations of db arrived.
            (components == 5 && updates == 2 && maintenances == 1 && db["status"] == "major_outage")
                .then_some(())
        })
        .await;
    }

    let reads = read_with_client(dir.path(), ap);
    let summary = &reads["summary"];
    let page = &summary["page"];
    assert!(is_id(&page["id"]), "{page}");
    assert_eq!(page["name"], "test", "the cluster: {page}");
    assert_eq!(page["url"], "https://status.example.com");
    assert_eq!(page["time_zone"], "Etc/UTC");
    assert!(is_iso8601(&page["updated_at"]), "{page}");
    assert_eq!(
        summary["status"],
        json!({"indicator": "critical", "description": "Major System Outage"})
    );
    assert_eq!(reads["status"]["status"], summary["status"]);

    let components = reads["components"]["components"]
        .as_array()
        .expect("components");
    assert_eq!(&summary["components"], &reads["components"]["components"]);
    let by_name = |name: &str| -> &Value {
        components
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no component {name}: {components:?}"))
    };
    let api = by_name("api");
    let db = by_name("db");
    assert_eq!(api["group"], true);
    assert_eq!(api["group_id"], Value::Null);
    assert_eq!(
        api["status"], "major_outage",
        "the group is its worst member"
    );
    assert_eq!(api["components"], json!([db["id"], by_name("web")["id"]]));
    assert_eq!(db["group"], false);
    assert_eq!(db["group_id"], api["id"]);
    assert_eq!(db["status"], "major_outage", "the worst fresh region");
    assert_eq!(by_name("cart")["status"], "degraded_performance");
    for c in components {
        for field in [
            "id",
            "name",
            "status",
            "created_at",
            "updated_at",
            "position",
            "description",
            "showcase",
            "start_date",
            "group_id",
            "page_id",
            "group",
            "only_show_if_degraded",
        ] {
            assert!(c.get(field).is_some(), "{field} missing in {c}");
        }
        assert!(is_id(&c["id"]) && is_iso8601(&c["created_at"]), "{c}");
        assert!(c["position"].is_u64(), "{c}");
        assert_eq!(c["page_id"], page["id"]);
        assert!(
            [
                "operational",
                "degraded_performance",
                "partial_outage",
                "major_outage",
                "under_maintenance"
            ]
            .contains(&c["status"].as_str().unwrap_or_default()),
            "{c}"
        );
    }

    let incidents = reads["incidents"]["incidents"]
        .as_array()
        .expect("incidents");
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    let incident = &incidents[0];
    for field in [
        "id",
        "name",
        "status",
        "impact",
        "created_at",
        "updated_at",
        "monitoring_at",
        "resolved_at",
        "started_at",
        "shortlink",
        "page_id",
        "incident_updates",
        "components",
    ] {
        assert!(
            incident.get(field).is_some(),
            "{field} missing in {incident}"
        );
    }
    assert_eq!(incident["name"], "Database down");
    assert_eq!(incident["status"], "monitoring");
    assert_eq!(incident["impact"], "critical");
    assert_eq!(incident["resolved_at"], Value::Null);
    assert!(is_iso8601(&incident["monitoring_at"]), "{incident}");
    assert!(is_iso8601(&incident["started_at"]), "{incident}");
    assert_eq!(incident["components"], json!([db]));
    let updates = incident["incident_updates"].as_array().expect("updates");
    let bodies: Vec<&str> = updates.iter().filter_map(|u| u["body"].as_str()).collect();
    assert_eq!(bodies, ["A fix is out", "Looking into it"], "newest first");
    assert_eq!(updates[0]["status"], "monitoring");
    assert_eq!(updates[1]["status"], "investigating");
    assert!(updates.iter().all(|u| u["incident_id"] == incident["id"]));
    assert_eq!(
        reads["unresolved"]["incidents"],
        reads["incidents"]["incidents"]
    );
    assert_eq!(summary["incidents"], reads["unresolved"]["incidents"]);

    let maintenances = reads["maintenances"]["scheduled_maintenances"]
        .as_array()
        .expect("maintenances");
    assert_eq!(maintenances.len(), 1);
    let window = &maintenances[0];
    assert_eq!(window["name"], "Web upgrade");
    assert_eq!(window["status"], "scheduled");
    assert_eq!(window["impact"], "maintenance");
    assert!(is_iso8601(&window["scheduled_for"]) && is_iso8601(&window["scheduled_until"]));
    assert_eq!(window["components"][0]["name"], "web");
    assert_eq!(
        reads["upcoming"]["scheduled_maintenances"],
        reads["maintenances"]["scheduled_maintenances"]
    );

    // The same client against a node of another region reads the same ids.
    let other = read_with_client(dir.path(), eu);
    assert_eq!(ids(&other), ids(&reads));
    assert_eq!(
        other["components"]["components"], reads["components"]["components"],
        "converged nodes answer the same components"
    );

    // Answers carry an ETag; the same page again is a 304.
    let first = client
        .get(ap.url("/api/v2/summary.json"))
        .send()
        .await
        .expect("GET");
    let etag = first.headers()["etag"].clone();
    let again = client
        .get(ap.url("/api/v2/summary.json"))
        .header("if-none-match", etag)
        .send()
        .await
        .expect("GET");
    assert_eq!(again.status(), 304);

    // A resolved incident leaves unresolved.json and stays in incidents.json.
    let (code, reply) = send(client.patch(us.url("/v1/incidents/db-down")).json(&json!({
        "service": "api", "status": "resolved", "message": "Fixed",
    })))
    .await;
    assert_eq!(code, 200, "{reply}");
    let resolved = harness::wait_for("the incident to resolve on the reader", || async {
        let all = harness::get_json(client, ap.url("/api/v2/incidents.json")).await?;
        let incident = all["incidents"].get(0)?.clone();
        (incident["status"] == "resolved").then_some(incident)
    })
    .await;
    assert!(is_iso8601(&resolved["resolved_at"]), "{resolved}");
    let unresolved = harness::get_json(client, ap.url("/api/v2/incidents/unresolved.json"))
        .await
        .expect("unresolved");
    assert_eq!(unresolved["incidents"], json!([]));
}
