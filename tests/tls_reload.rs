//! Certificates reloaded without a restart: SIGHUP makes a running node present a renewed
//! certificate, its links are made again on it and writes keep flowing both ways; a broken
//! certificate set on SIGHUP is refused and the node keeps its old identity.

use std::process::Command;

use serde_json::{json, Value};

use crate::harness::{
    cell_state, get_json, metric_sum, put_status, start_mesh, wait_for, Mesh, TestNode, BIN,
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
    let _ = cell_state(&mesh.client, to, "api", "db", &from.region).await;
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
