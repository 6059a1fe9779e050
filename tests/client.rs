//! The client commands against real nodes: `statusmesh watch` fails over when the node it
//! follows dies, and the printed sequence of changes has no gap and no duplicate.

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::json;

use crate::harness::{self, Proc};

/// The change lines `watch` printed (comment lines start with '#'), as (cell, state).
fn changes(output: &str) -> Vec<(String, String)> {
    output
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .filter(|(cell, _)| cell.contains('/'))
        .collect()
}

#[tokio::test]
async fn watch_fails_over_to_another_node_with_no_gap_and_no_duplicate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, nodes) = harness::topology(dir.path(), 1);
    let certs = dir.path().join("certs");
    harness::make_certs(&config, &certs);
    let token = "watch-token";
    let mut procs: Vec<Option<Proc>> = nodes
        .iter()
        .map(|n| Some(harness::run_node(dir.path(), &config, &certs, n, token)))
        .collect();
    let client = reqwest::Client::new();
    harness::wait_healthy(&client, &nodes).await;
    harness::wait_ready(&client, &nodes).await;

    let list: Vec<String> = nodes.iter().map(|n| n.http.to_string()).collect();
    let mut watch = Command::new(harness::BIN);
    watch.args([
        "watch",
        "--service",
        "api",
        "--max-reconnects",
        "100",
        "--nodes",
        &list.join(","),
    ]);
    let watcher = Proc::spawn(watch, dir.path().join("watch.log"));
    let followed = harness::wait_for("watch to follow a node", || async {
        let out = watcher.output();
        let line = out
            .lines()
            .find(|l| l.starts_with("# following "))?
            .to_owned();
        let url = line
            .trim_start_matches("# following ")
            .split_whitespace()
            .next()?
            .to_owned();
        nodes.iter().position(|n| n.url("") == url)
    })
    .await;
    let writer = (followed + 1) % nodes.len();

    let write = |i: usize| {
        let client = client.clone();
        let node = nodes[writer].clone();
        async move {
            let (code, reply) = harness::put_status(
                &client,
                &node,
                token,
                &format!("api/c{i}/eu-west"),
                json!({"state": "partial_outage", "message": format!("change {i}")}),
            )
            .await;
            assert_eq!(code, 200, "{reply}");
        }
    };
    let printed = |count: usize| {
        let watcher = &watcher;
        async move {
            let seen = changes(&watcher.output());
            (seen.len() >= count).then_some(())
        }
    };
    for i in 0..5 {
        write(i).await;
    }
    harness::wait_for("the first five changes printed", || printed(5)).await;

    // The node it follows dies; the next changes are written while it fails over.
    // Dropping a Proc kills it with SIGKILL: no goodbye to its clients.
    drop(procs[followed].take());
    for i in 5..10 {
        write(i).await;
    }
    harness::wait_for("all ten changes printed after the failover", || printed(10)).await;

    let out = watcher.output();
    let seen = changes(&out);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (cell, state) in &seen {
        assert_eq!(state, "partial_outage", "{out}");
        *counts.entry(cell.as_str()).or_default() += 1;
    }
    for i in 0..10 {
        let cell = format!("api/c{i}/eu-west");
        assert_eq!(
            counts.get(cell.as_str()),
            Some(&1),
            "{cell} printed once:\n{out}"
        );
    }
    assert_eq!(seen.len(), 10, "no other lines:\n{out}");
    assert!(
        out.lines()
            .filter(|l| l.starts_with("# following "))
            .count()
            >= 2,
        "watch followed a second node:\n{out}"
    );
}
