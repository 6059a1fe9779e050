//! A change crosses the mesh: written on one node, seen on SSE and reads of the others.

use serde_json::json;

use crate::harness::{self, SseReader};

#[tokio::test]
async fn status_written_in_one_region_reaches_sse_and_reads_in_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = "test-token";
    let mesh = harness::start_mesh(dir.path(), token).await;
    let (nodes, client) = (&mesh.nodes, &mesh.client);

    let (eu, us) = (&nodes[0], &nodes[1]);
    assert_eq!(
        (eu.region.as_str(), us.region.as_str()),
        ("eu-west", "us-east")
    );
    let mut sse = SseReader::connect(client, &us.url("/v1/events"), None).await;
    let snapshot = sse.next().await;
    assert_eq!(snapshot.event, "snapshot");

    let (code, reply) = harness::put_status(
        client,
        eu,
        token,
        "api/db/eu-west",
        json!({"state": "major_outage", "message": "primary down", "ttl_s": 60}),
    )
    .await;
    assert_eq!(code, 200, "{reply}");
    assert_eq!(reply["changed"], true);
    let cursor = reply["cursor"].as_str().expect("cursor").to_owned();

    let event = sse.next_matching(|e| e.event == "status").await;
    assert_eq!(event.data["service"], "api");
    assert_eq!(event.data["component"], "db");
    assert_eq!(event.data["region"], "eu-west");
    assert_eq!(event.data["state"], "major_outage");
    assert_eq!(event.data["message"], "primary down");
    assert_eq!(event.data["origin"], eu.id);
    // The cursor is mesh-wide: the event's id on us-east is the writer's cursor on eu-west.
    assert_eq!(event.id, cursor);

    for node in nodes {
        harness::wait_for(&format!("the status on {}", node.id), || async {
            let state = harness::cell_state(client, node, "api", "db", "eu-west").await?;
            (state == "major_outage").then_some(())
        })
        .await;
    }

    // The same value again changes nothing and says so.
    let (code, reply) = harness::put_status(
        client,
        eu,
        token,
        "api/db/eu-west",
        json!({"state": "major_outage", "message": "primary down", "ttl_s": 60}),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(reply["changed"], false);
    drop(mesh);
}

#[tokio::test]
async fn statusmesh_dev_serves_every_node_and_carries_a_change_across_regions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = reqwest::Client::new();
    let (nodes, dev) = harness::start_dev(&client, dir.path(), 2, "dev-token").await;
    let output = dev.output();
    for node in &nodes {
        assert!(
            output.contains(&format!("http://{}", node.http)),
            "dev did not print {}: {output}",
            node.id
        );
    }
    assert!(output.contains("write token: dev-token"), "{output}");

    let writer = &nodes[0];
    let reader = nodes
        .iter()
        .find(|n| n.region == "ap-southeast")
        .expect("ap node");
    let mut sse = SseReader::connect(&client, &reader.url("/v1/events?service=web"), None).await;
    assert_eq!(sse.next().await.event, "snapshot");
    let (code, _) = harness::put_status(
        &client,
        writer,
        "dev-token",
        "web/frontend/eu-west",
        json!({"state": "degraded_performance", "message": "slow"}),
    )
    .await;
    assert_eq!(code, 200);
    let event = sse.next_matching(|e| e.event == "status").await;
    assert_eq!(event.data["state"], "degraded_performance");
    for node in &nodes {
        harness::wait_for(&format!("the status on {}", node.id), || async {
            let state = harness::cell_state(&client, node, "web", "frontend", "eu-west").await?;
            (state == "degraded_performance").then_some(())
        })
        .await;
    }
}
