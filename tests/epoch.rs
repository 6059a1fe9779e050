//! Bounded history on real processes: a mesh rolls its documents over under writes, keeps
//! every acknowledged write, streams no duplicate, and a node killed with `kill -9` comes
//! back in the new epoch from its own disk.

use std::collections::BTreeMap;

use serde_json::json;

use crate::harness::{self, Proc, SseReader, TestNode};

const TOKEN: &str = "epoch-token";
/// A low bound, so that a few hundred writes make several epochs.
const HISTORY_MAX: &str = "20";

/// The value of gauge `name` for service `api` in a node's `/metrics`.
async fn api_gauge(client: &reqwest::Client, node: &TestNode, name: &str) -> Option<f64> {
    harness::metric_sum(client, node, name, &["service=\"api\""]).await
}

fn run(
    dir: &std::path::Path,
    config: &std::path::Path,
    certs: &std::path::Path,
    node: &TestNode,
) -> Proc {
    harness::run_node_with_extra(
        dir,
        config,
        certs,
        node,
        TOKEN,
        &["--epoch-history-changes-max", HISTORY_MAX],
    )
}

#[tokio::test]
async fn a_mesh_rolls_over_under_writes_and_loses_no_write_or_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, nodes) = harness::topology(dir.path(), 1);
    let certs = dir.path().join("certs");
    harness::make_certs(&config, &certs);
    let mut procs: Vec<Proc> = nodes
        .iter()
        .map(|n| run(dir.path(), &config, &certs, n))
        .collect();
    let client = reqwest::Client::new();
    harness::wait_healthy(&client, &nodes).await;
    harness::wait_ready(&client, &nodes).await;

    // A subscriber in another region from the first write on.
    let ap = nodes[2].clone();
    let mut stream = SseReader::connect(&client, &ap.url("/v1/events?service=api"), None).await;
    assert_eq!(stream.next().await.event, "snapshot");

    // 8 cells, each flipped many times from every region's node in turn, until every node
    // is in epoch 2 or later (bounded: at most 40 rounds of 40 writes).
    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    let mut writes = 0_usize;
    for round in 0..40 {
        for _ in 0..40 {
            let i = writes;
            writes += 1;
            let node = &nodes[i % nodes.len()];
            let component = format!("c{}", i % 8);
            let state = if i % 16 < 8 {
                "major_outage"
            } else {
                "operational"
            };
            let message = format!("write {i}");
            let (status, reply) = harness::put_status(
                &client,
                node,
                TOKEN,
                &format!("api/{component}/{}", node.region),
                json!({"state": state, "message": message, "ttl_s": 600}),
            )
            .await;
            assert_eq!(status, 200, "write {i}: {reply}");
            expected.insert(format!("{component}/{}", node.region), message);
        }
        let mut lowest = f64::MAX;
        for node in &nodes {
            let epoch = api_gauge(&client, node, "statusmesh_document_epoch").await;
            lowest = lowest.min(epoch.unwrap_or_default());
        }
        if lowest >= 2.0 {
            break;
        }
        assert!(
            round < 39,
            "not every node reached epoch 2 after {writes} writes"
        );
    }
    for node in &nodes {
        wait_cells(&client, node, &expected).await;
    }
    let history = api_gauge(&client, &nodes[0], "statusmesh_document_history_changes")
        .await
        .expect("history gauge");
    assert!(
        history < (writes / 2) as f64,
        "history is bounded: {history} changes live after {writes} writes"
    );

    // The subscriber saw every cell reach its last value and never the same value twice.
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut repeats = Vec::new();
    let mut early_id: Option<String> = None;
    while seen != expected {
        let event = stream.next().await;
        if event.event != "status" {
            continue;
        }
        // The id of the first write's event: a cursor of epoch 0.
        early_id.get_or_insert_with(|| event.id.clone());
        let key = format!(
            "{}/{}",
            event.data["component"].as_str().unwrap_or_default(),
            event.data["region"].as_str().unwrap_or_default()
        );
        let message = event.data["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if seen.get(&key) == Some(&message) {
            repeats.push(format!("{key}: {message}"));
        }
        seen.insert(key, message);
    }
    assert!(repeats.is_empty(), "events repeated a value: {repeats:?}");

    // kill -9, the rest of the mesh stopped too, and a restart from the same disk alone:
    // back in the new epoch with every value, from its own disk.
    procs[1].child.kill().expect("kill -9 us");
    let _ = procs[1].child.wait();
    for i in [0, 2] {
        let _ = procs[i].child.kill();
        let _ = procs[i].child.wait();
    }
    procs[1] = run(dir.path(), &config, &certs, &nodes[1]);
    harness::wait_healthy(&client, &nodes[1..2]).await;
    wait_cells(&client, &nodes[1], &expected).await;
    // Alone, it can only be in epoch 2 or later from its own disk.
    harness::wait_for("the restarted node to report epoch 2 or later", || async {
        let epoch = api_gauge(&client, &nodes[1], "statusmesh_document_epoch").await?;
        (epoch >= 2.0).then_some(())
    })
    .await;

    // The audit trail survives the rollovers: every write of c0 flipped its region's state,
    // and each is a transition (the newest 200 are listed), from the archive and the epoch.
    let history = harness::get_json(&client, nodes[1].url("/v1/status/api/c0/history?days=1"))
        .await
        .expect("history");
    let transitions = history["transitions"].as_array().map_or(0, Vec::len);
    let c0_writes = writes.div_ceil(8);
    assert_eq!(transitions, c0_writes.min(200), "{history}");

    // A cursor of a compacted epoch is answered with the whole truth, a fresh snapshot.
    let mut resumed = SseReader::connect(
        &client,
        &nodes[1].url("/v1/events?service=api"),
        early_id.as_deref(),
    )
    .await;
    let again = resumed.next().await;
    assert_eq!(again.event, "snapshot");
    let cells: BTreeMap<String, String> = again.data["services"][0]["components"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| {
            c["regions"].as_array().into_iter().flatten().map(move |r| {
                (
                    format!(
                        "{}/{}",
                        c["name"].as_str().unwrap_or_default(),
                        r["region"].as_str().unwrap_or_default()
                    ),
                    r["message"].as_str().unwrap_or_default().to_owned(),
                )
            })
        })
        .collect();
    assert_eq!(cells, expected);
}

/// Waits until `node` shows every `component/region → message` of `expected` for `api`.
async fn wait_cells(
    client: &reqwest::Client,
    node: &TestNode,
    expected: &BTreeMap<String, String>,
) {
    harness::wait_for(&format!("{} to hold every last value", node.id), || async {
        let view = harness::get_json(client, node.url("/v1/status/api")).await?;
        let mut cells = BTreeMap::new();
        for component in view["components"].as_array()? {
            for region in component["regions"].as_array()? {
                cells.insert(
                    format!(
                        "{}/{}",
                        component["name"].as_str()?,
                        region["region"].as_str()?
                    ),
                    region["message"].as_str()?.to_owned(),
                );
            }
        }
        (cells == *expected).then_some(())
    })
    .await;
}
