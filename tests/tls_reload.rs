//! Certificates reloaded without a restart: SIGHUP makes a running node present a renewed
//! certificate, its links are made again on it and writes keep flowing both ways; a broken
//! certificate set on SIGHUP is refused and the node keeps its old identity. And a CA
//! rotation with `statusmesh certs rotate-ca`, node by node with SIGHUP (bundle, new
//! certificates, new CA alone): every write made along the way reaches the other nodes, and
//! a node left on the old CA is refused once the others drop it.

use std::process::Command;

use serde_json::{json, Value};

use crate::harness::{
    data_dir, get_json, make_certs, metric_sum, put_status, run_node_with_args, start_mesh,
    start_mesh_with_args, topology, wait_for, wait_healthy, wait_ready, Mesh, TestNode, BIN,
};

const TOKEN: &str = "tls-reload-test-token";

async fn certificate_of(mesh: &Mesh, node: &TestNode) -> Option<String> {
    let nodes: Value = get_json(&mesh.client, node.url("/v1/nodes")).await?;
    let me = nodes["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["self"] == true)?;
    me["certificate_sha256"].as_str().map(str::to_owned)
}

/// Connections `node` has made to its peers so far, summed.
async fn connects_of(mesh: &Mesh, node: &TestNode) -> Option<u64> {
    let nodes: Value = get_json(&mesh.client, node.url("/v1/nodes")).await?;
    Some(
        nodes["nodes"]
            .as_array()?
            .iter()
            .filter_map(|n| n["connects"].as_u64())
            .sum(),
    )
}

fn hangup(mesh: &Mesh, index: usize) {
    let pid = mesh.procs[index].child.id().to_string();
    let status = Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// A write on `from` is seen on `to`.
async fn flows(mesh: &Mesh, from: &TestNode, to: &TestNode, message: &str) {
    let path = format!("api/db/{}", from.region);
    let (code, _) = put_status(
        &mesh.client,
        from,
        TOKEN,
        &path,
        json!({"state": "degraded_performance", "message": message}),
    )
    .await;
    assert_eq!(code, 200);
    wait_for(
        &format!("{message} from {} on {}", from.id, to.id),
        || async {
            let view = get_json(&mesh.client, to.url("/v1/status/api")).await?;
            let seen = view["components"].as_array()?.iter().any(|c| {
                c["regions"]
                    .as_array()
                    .is_some_and(|rs| rs.iter().any(|r| r["message"] == message))
            });
            seen.then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_renewed_certificate_and_refuses_a_broken_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mesh = start_mesh(dir.path(), TOKEN).await;
    let (eu, us, ap) = (&mesh.nodes[0], &mesh.nodes[1], &mesh.nodes[2]);
    flows(&mesh, us, eu, "before").await;
    let old = certificate_of(&mesh, eu).await.expect("a certificate");
    let connects_before = connects_of(&mesh, eu).await.expect("links");

    // Renew every node certificate from the same CA (the files only; nodes keep theirs).
    let certs = dir.path().join("certs");
    let renewed = Command::new(BIN)
        .args(["certs", "--config"])
        .arg(dir.path().join("regions.toml"))
        .arg("--out")
        .arg(&certs)
        .output()
        .expect("statusmesh certs");
    assert!(renewed.status.success(), "{renewed:?}");
    assert_eq!(
        certificate_of(&mesh, eu).await.as_deref(),
        Some(old.as_str()),
        "no reload yet"
    );

    hangup(&mesh, 0);
    let new = wait_for("eu to present its renewed certificate", || async {
        let now = certificate_of(&mesh, eu).await?;
        (now != old).then_some(now)
    })
    .await;
    wait_for("eu's links made again on the new identity", || async {
        (connects_of(&mesh, eu).await? > connects_before).then_some(())
    })
    .await;
    let ok = metric_sum(
        &mesh.client,
        eu,
        "statusmesh_tls_reloads_total",
        &["result=\"ok\""],
    )
    .await;
    assert_eq!(ok, Some(1.0));
    // Both ways, with peers still on their old certificates (same CA).
    flows(&mesh, eu, ap, "after-from-eu").await;
    flows(&mesh, ap, eu, "after-to-eu").await;

    // A broken key: refused, the renewed identity stays and links keep working.
    std::fs::write(certs.join(format!("{}.key", eu.id)), "not a key").expect("write");
    hangup(&mesh, 0);
    wait_for("the refused reload to be counted", || async {
        let errors = metric_sum(
            &mesh.client,
            eu,
            "statusmesh_tls_reloads_total",
            &["result=\"error\""],
        )
        .await?;
        (errors >= 1.0).then_some(())
    })
    .await;
    assert_eq!(certificate_of(&mesh, eu).await, Some(new));
    flows(&mesh, us, eu, "after-refused").await;
    flows(&mesh, eu, us, "after-refused-back").await;
}

fn copy(from: &std::path::Path, to: &std::path::Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {from:?} to {to:?}: {e}"));
}

/// The state `node` sees for peer `peer` in `/v1/nodes`.
async fn member_state(mesh: &Mesh, node: &TestNode, peer: &str) -> Option<String> {
    let nodes: Value = get_json(&mesh.client, node.url("/v1/nodes")).await?;
    let entry = nodes["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["id"] == peer)?;
    entry["state"].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_rotates_under_writes_and_a_node_left_on_the_old_ca_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (config, nodes) = topology(dir.path(), 1);
    let shared = dir.path().join("certs");
    make_certs(&config, &shared);
    // Each node its own certificate directory, as on separate machines.
    let node_dir = |n: &TestNode| dir.path().join(format!("certs-{}", n.id));
    for n in &nodes {
        std::fs::create_dir_all(node_dir(n)).expect("dir");
        for file in [
            "ca.pem".to_owned(),
            format!("{}.pem", n.id),
            format!("{}.key", n.id),
        ] {
            copy(&shared.join(&file), &node_dir(n).join(&file));
        }
    }
    let procs = nodes
        .iter()
        .map(|n| {
            run_node_with_args(
                dir.path(),
                &config,
                &node_dir(n),
                n,
                &data_dir(dir.path(), n),
                ["--token", TOKEN],
            )
        })
        .collect();
    let mesh = Mesh {
        nodes: nodes.clone(),
        procs,
        client: reqwest::Client::new(),
    };
    wait_healthy(&mesh.client, &mesh.nodes).await;
    wait_ready(&mesh.client, &mesh.nodes).await;
    let (eu, us, ap) = (&nodes[0], &nodes[1], &nodes[2]);

    let next = dir.path().join("next");
    let rotated = Command::new(BIN)
        .args(["certs", "rotate-ca", "--config"])
        .arg(&config)
        .arg("--dir")
        .arg(&shared)
        .arg("--out")
        .arg(&next)
        .output()
        .expect("statusmesh certs rotate-ca");
    assert!(rotated.status.success(), "{rotated:?}");

    let mut written = 0;
    let mut step = |label: &str| {
        written += 1;
        format!("{label}-{written}")
    };
    // 1. Every node trusts both CAs.
    for (i, n) in nodes.iter().enumerate() {
        copy(&next.join("ca-bundle.pem"), &node_dir(n).join("ca.pem"));
        hangup(&mesh, i);
        flows(&mesh, us, eu, &step("bundle")).await;
    }
    // 2. eu and us present certificates of the new CA; ap keeps its old one.
    for (i, n) in nodes.iter().enumerate().take(2) {
        for file in [format!("{}.pem", n.id), format!("{}.key", n.id)] {
            copy(&next.join(&file), &node_dir(n).join(&file));
        }
        let before = certificate_of(&mesh, n).await;
        hangup(&mesh, i);
        wait_for(&format!("{} on its new certificate", n.id), || async {
            let now = certificate_of(&mesh, n).await?;
            (Some(&now) != before.as_ref()).then_some(())
        })
        .await;
        flows(&mesh, eu, us, &step("new-cert")).await;
        flows(&mesh, ap, eu, &step("new-cert-ap")).await;
        flows(&mesh, eu, ap, &step("new-cert-to-ap")).await;
    }
    // 3. eu and us drop the old CA: they still talk, and ap (old CA only) is refused.
    for (i, n) in nodes.iter().enumerate().take(2) {
        copy(&next.join("ca.pem"), &node_dir(n).join("ca.pem"));
        hangup(&mesh, i);
    }
    wait_for("both reloads counted", || async {
        for n in [eu, us] {
            let ok = metric_sum(
                &mesh.client,
                n,
                "statusmesh_tls_reloads_total",
                &["result=\"ok\""],
            )
            .await?;
            (ok >= 3.0).then_some(())?;
        }
        Some(())
    })
    .await;
    flows(&mesh, eu, us, &step("new-ca")).await;
    flows(&mesh, us, eu, &step("new-ca-back")).await;
    wait_for("eu to refuse ap's old certificate", || async {
        let failed = metric_sum(
            &mesh.client,
            eu,
            "statusmesh_transport_handshakes_failed_total",
            &[],
        )
        .await?;
        (failed >= 1.0).then_some(())
    })
    .await;
    wait_for("eu to see ap gone", || async {
        let state = member_state(&mesh, eu, &ap.id).await?;
        (state != "alive").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_certs_watch_a_renewed_certificate_loads_without_a_signal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mesh = start_mesh_with_args(dir.path(), TOKEN, &["--certs-watch-s", "1"]).await;
    let (eu, us) = (&mesh.nodes[0], &mesh.nodes[1]);
    let old = certificate_of(&mesh, eu).await.expect("a certificate");
    let renewed = Command::new(BIN)
        .args(["certs", "--config"])
        .arg(dir.path().join("regions.toml"))
        .arg("--out")
        .arg(dir.path().join("certs"))
        .output()
        .expect("statusmesh certs");
    assert!(renewed.status.success(), "{renewed:?}");
    wait_for("eu to load its renewed certificate by itself", || async {
        let now = certificate_of(&mesh, eu).await?;
        (now != old).then_some(())
    })
    .await;
    flows(&mesh, eu, us, "watched").await;
    flows(&mesh, us, eu, "watched-back").await;
}
