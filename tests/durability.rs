//! Storage: acknowledged writes survive `kill -9`, and a node that was down catches up.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::harness::{self, Proc, TestNode};

const TOKEN: &str = "durability-token";

/// Waits until `node` holds every `(component, message)` in `expected`.
async fn wait_holds(
    client: &reqwest::Client,
    node: &TestNode,
    service: &str,
    expected: &BTreeMap<String, String>,
) {
    let expected = Arc::new(expected.clone());
    harness::wait_for(
        &format!("{} to hold all {} writes", node.id, expected.len()),
        || {
            let expected = expected.clone();
            async move {
                let held = harness::messages(client, node, service).await?;
                expected
                    .iter()
                    .all(|(component, message)| held.get(component) == Some(message))
                    .then_some(())
            }
        },
    )
    .await;
}

/// Starts every node of a one-per-region topology and waits until they are ready.
async fn mesh(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<TestNode>) {
    let (config, nodes) = harness::topology(dir, 1);
    let certs = dir.join("certs");
    harness::make_certs(&config, &certs);
    (config, certs, nodes)
}

#[tokio::test]
async fn every_acknowledged_write_survives_kill_9_and_reaches_every_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, certs, nodes) = mesh(dir.path()).await;
    let mut procs: Vec<Proc> = nodes
        .iter()
        .map(|n| harness::run_node(dir.path(), &config, &certs, n, TOKEN))
        .collect();
    let client = reqwest::Client::new();
    harness::wait_ready(&client, &nodes).await;
    let eu = nodes[0].clone();

    // Four writers stream distinct cells to eu until a write fails (the node is gone). Each
    // write has its own component, so every acknowledged one stays visible afterwards.
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..4 {
        let (client, eu, acked, stop) = (client.clone(), eu.clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            for seq in 0..10_000 {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let component = format!("w{writer}-{seq}");
                let message = format!("ack-{writer}-{seq}");
                let response = client
                    .put(eu.url(&format!("/v1/status/durable/{component}/eu-west")))
                    .bearer_auth(TOKEN)
                    .json(&json!({"state": "operational", "message": message}))
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status() == 200 => {
                        acked.lock().expect("lock").insert(component, message);
                    }
                    // Killed mid-request or refused: no acknowledgement, so no promise.
                    _ => return,
                }
            }
        }));
    }
    harness::wait_for("100 acknowledged writes", || {
        let count = acked.lock().expect("lock").len();
        async move { (count >= 100).then_some(()) }
    })
    .await;
    procs[0].child.kill().expect("kill -9 eu");
    procs[0].child.wait().expect("reap eu");
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer");
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() >= 100, "{} acknowledged", acked.len());

    procs[0] = harness::run_node(dir.path(), &config, &certs, &eu, TOKEN);
    for node in &nodes {
        wait_holds(&client, node, "durable", &acked).await;
    }
    // The restart is a new incarnation with a new actor.
    let incarnation: serde_json::Value = serde_json::from_slice(
        &std::fs::read(harness::data_dir(dir.path(), &eu).join("incarnation.json"))
            .expect("incarnation file"),
    )
    .expect("incarnation json");
    assert_eq!(incarnation["incarnation"], 2, "{}", procs[0].output());
}

#[tokio::test]
async fn a_node_that_was_down_catches_up_from_its_peers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, certs, nodes) = mesh(dir.path()).await;
    let mut procs: Vec<Proc> = nodes
        .iter()
        .map(|n| harness::run_node(dir.path(), &config, &certs, n, TOKEN))
        .collect();
    let client = reqwest::Client::new();
    harness::wait_ready(&client, &nodes).await;
    let (eu, us, ap) = (&nodes[0], &nodes[1], &nodes[2]);

    // Something us knows before it goes down, then twenty writes it misses.
    let mut expected = BTreeMap::new();
    let (code, reply) = harness::put_status(
        &client,
        eu,
        TOKEN,
        "catchup/before/eu-west",
        json!({"state": "operational", "message": "before"}),
    )
    .await;
    assert_eq!(code, 200, "{reply}");
    expected.insert("before".to_owned(), "before".to_owned());
    wait_holds(&client, us, "catchup", &expected).await;

    procs[1].child.kill().expect("kill us");
    procs[1].child.wait().expect("reap us");
    for i in 0..20 {
        let component = format!("missed-{i}");
        let (code, reply) = harness::put_status(
            &client,
            eu,
            TOKEN,
            &format!("catchup/{component}/eu-west"),
            json!({"state": "degraded_performance", "message": format!("while down {i}")}),
        )
        .await;
        assert_eq!(code, 200, "{reply}");
        expected.insert(component, format!("while down {i}"));
    }
    wait_holds(&client, ap, "catchup", &expected).await;

    procs[1] = harness::run_node(dir.path(), &config, &certs, us, TOKEN);
    wait_holds(&client, us, "catchup", &expected).await;
    // What it caught up is on its disk too: after another restart (with eu and ap gone, so
    // nothing can come from peers) it still has everything.
    // A graceful stop (SIGTERM) writes and fsyncs what was applied before the process ends.
    procs[0].child.kill().expect("kill eu");
    procs[2].child.kill().expect("kill ap");
    procs[1].terminate();
    procs[1] = harness::run_node(dir.path(), &config, &certs, us, TOKEN);
    harness::wait_healthy(&client, std::slice::from_ref(us)).await;
    let held = harness::messages(&client, us, "catchup")
        .await
        .expect("status");
    assert_eq!(held, expected, "{}", procs[1].output());
}
