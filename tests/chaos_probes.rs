//! Regional probes in the chaos harness (one network namespace per node): one region that
//! cannot reach the target sees it down, the component is not `major_outage`, and the
//! advisory names that region; once the region can reach the target again, it clears.
//!
//! The target is an HTTP server of the test on an address of its own on the bridge, so that
//! a blackhole route to it in a region's namespaces cuts that region off the target while
//! gossip and the test's HTTP to the nodes keep working. Needs root and `ip` (as the chaos
//! run does); skipped otherwise, failed when `STATUSMESH_REQUIRE_CHAOS=1`.

use std::io::Write as _;
use std::time::Instant;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::chaos::{Cluster, Setup, TOKEN};
use crate::chaos_net;
use crate::harness::{wait_for, wait_healthy, wait_ready};
use crate::probes::component;

/// The target's host number on the bridge (10.77.S.<this>), clear of the nodes (.11..) and
/// the relay (.101..).
const TARGET_HOST: u8 = 200;
const CUT_REGION: &str = "ap-southeast";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_cut_off_from_the_target_is_an_advisory_until_it_heals() {
    let required = std::env::var("STATUSMESH_REQUIRE_CHAOS").is_ok_and(|v| v == "1");
    if let Some(reason) = chaos_net::unavailable() {
        assert!(!required, "the chaos probe run cannot run here: {reason}");
        let _ = writeln!(std::io::stderr(), "chaos probes: skipped: {reason}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let setup = Setup {
        skews: Vec::new(),
        faketime: None,
        seed: 17,
    };
    let cluster = Cluster::start(dir.path(), &setup).await.expect("cluster");
    let client = reqwest::Client::new();
    wait_healthy(&client, &cluster.nodes).await;
    wait_ready(&client, &cluster.nodes).await;

    let address = cluster
        .net
        .add_bridge_address(TARGET_HOST)
        .expect("target address");
    let listener = TcpListener::bind((address, 0)).await.expect("bind target");
    let target = listener.local_addr().expect("target addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });

    let response = client
        .put(cluster.nodes[0].url("/v1/checks/web/frontend"))
        .bearer_auth(TOKEN)
        .json(
            &json!({"kind": "http", "target": format!("http://{target}/"), "interval_s": 1,
                      "timeout_ms": 800, "failures_before_down": 1}),
        )
        .send()
        .await
        .expect("put check");
    assert!(response.status().is_success(), "{}", response.status());
    let nodes = cluster.nodes.clone();
    for node in &nodes {
        wait_for(
            &format!("frontend operational from 3 regions on {}", node.id),
            || async {
                let (status, _, regions) = component(&client, node, "frontend").await?;
                (status == "operational" && regions.len() == 3).then_some(())
            },
        )
        .await;
    }

    // Cut one region off the target.
    let cut: Vec<usize> = (0..nodes.len())
        .filter(|i| nodes[*i].region == CUT_REGION)
        .collect();
    let cut_at = Instant::now();
    for &i in &cut {
        cluster.net.blackhole(i, address, true).expect("blackhole");
    }
    for node in &nodes {
        wait_for(
            &format!("advisory for {CUT_REGION} on {}", node.id),
            || async {
                let (status, advisories, regions) = component(&client, node, "frontend").await?;
                let seen = regions.get(CUT_REGION)?;
                (status == "operational"
                    && seen.0 == "major_outage"
                    && advisories == [CUT_REGION.to_owned()])
                .then_some(())
            },
        )
        .await;
    }
    println!(
        "chaos probes: {CUT_REGION} cut off the target -> advisory on every node in {:?}",
        cut_at.elapsed()
    );

    // Heal: the region sees the target again and the advisory clears.
    let healed_at = Instant::now();
    for &i in &cut {
        cluster
            .net
            .blackhole(i, address, false)
            .expect("route removed");
    }
    for node in &nodes {
        wait_for(&format!("advisory cleared on {}", node.id), || async {
            let (status, advisories, regions) = component(&client, node, "frontend").await?;
            let seen = regions.get(CUT_REGION)?;
            (status == "operational" && seen.0 == "operational" && advisories.is_empty())
                .then_some(())
        })
        .await;
    }
    println!(
        "chaos probes: heal -> advisory cleared on every node in {:?}",
        healed_at.elapsed()
    );
    drop(cluster);
}
