//! Dynamic membership: a node not listed in regions.toml joins a running mesh with a
//! certificate from `statusmesh certs issue` and `--join`, gets every document, writes to
//! every node and leaves; a certificate from another CA is refused; a joined node that dies
//! is forgotten after `--forget-after-s`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{self, Mesh, Proc, TestNode, BIN, WAIT};

const TOKEN: &str = "test-token";

/// `statusmesh certs issue` of `id` in eu-west from the CA in `ca_dir` into `out`.
fn issue(config: &Path, ca_dir: &Path, id: &str, out: &Path) {
    let status = Command::new(BIN)
        .args(["certs", "issue", "--config"])
        .arg(config)
        .arg("--ca-dir")
        .arg(ca_dir)
        .args(["--node", id, "--region", "eu-west", "--out"])
        .arg(out)
        .stdout(Stdio::null())
        .status()
        .expect("run certs issue");
    assert!(status.success(), "certs issue failed");
}

/// Starts `statusmesh run` of a node not listed in the topology, joining by the seeds.
fn run_joiner(dir: &Path, certs: &Path, node: &TestNode, seeds: &[&TestNode]) -> Proc {
    let seeds: Vec<String> = seeds.iter().map(|s| s.gossip.to_string()).collect();
    let mut command = Command::new(BIN);
    command
        .args(["run", "--config"])
        .arg(dir.join("regions.toml"))
        .args(["--node", &node.id, "--certs"])
        .arg(certs)
        .arg("--data-dir")
        .arg(harness::data_dir(dir, node))
        .args(["--token", TOKEN, "--region", &node.region])
        .args(["--join", &seeds.join(",")])
        .args(["--gossip-addr", &node.gossip.to_string()])
        .args(["--http-addr", &node.http.to_string()]);
    Proc::spawn(command, dir.join(format!("{}.log", node.id)))
}

fn joiner(id: &str) -> TestNode {
    TestNode {
        id: id.to_owned(),
        region: "eu-west".to_owned(),
        gossip: harness::free_udp(),
        http: harness::free_tcp(),
    }
}

/// The state `observer`'s `/v1/nodes` shows of `id` (None: not a member there).
async fn member_state(mesh: &Mesh, observer: &TestNode, id: &str) -> Option<String> {
    let view = harness::get_json(&mesh.client, observer.url("/v1/nodes")).await?;
    view["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["id"] == id)
        .map(|n| n["state"].as_str().unwrap_or("").to_owned())
}

/// Whether the node's `/v1/nodes` answers (None while it does not).
async fn lists(mesh: &Mesh, observer: &TestNode, id: &str) -> Option<bool> {
    let view = harness::get_json(&mesh.client, observer.url("/v1/nodes")).await?;
    Some(view["nodes"].as_array()?.iter().any(|n| n["id"] == id))
}

#[tokio::test]
async fn a_fourth_node_joins_by_seeds_gets_every_document_writes_everywhere_and_leaves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = harness::start_mesh(dir.path(), TOKEN).await;
    let (code, _) = harness::put_status(
        &mesh.client,
        &mesh.nodes[1],
        TOKEN,
        "api/db/us-east",
        json!({"state": "major_outage", "message": "before the join", "ttl_s": 600}),
    )
    .await;
    assert_eq!(code, 200);

    let config = dir.path().join("regions.toml");
    let certs = dir.path().join("edge-4-certs");
    issue(&config, &dir.path().join("certs"), "edge-4", &certs);
    let edge = joiner("edge-4");
    let mut proc = run_joiner(dir.path(), &certs, &edge, &[&mesh.nodes[0]]);
    harness::wait_ok(&mesh.client, &edge.url("/healthz")).await;

    for node in &mesh.nodes {
        let what = format!("edge-4 alive in {}'s /v1/nodes", node.id);
        harness::wait_for(&what, || async {
            (member_state(&mesh, node, "edge-4").await? == "alive").then_some(())
        })
        .await;
    }
    harness::wait_for("the document written before the join on edge-4", || async {
        let cells = harness::messages(&mesh.client, &edge, "api").await?;
        (cells.get("db").map(String::as_str) == Some("before the join")).then_some(())
    })
    .await;

    let (code, _) = harness::put_status(
        &mesh.client,
        &edge,
        TOKEN,
        "api/web/eu-west",
        json!({"state": "degraded_performance", "message": "from the joined node", "ttl_s": 600}),
    )
    .await;
    assert_eq!(code, 200, "{}", proc.output());
    for node in &mesh.nodes {
        let what = format!("edge-4's write on {}", node.id);
        harness::wait_for(&what, || async {
            let cells = harness::messages(&mesh.client, node, "api").await?;
            (cells.get("web").map(String::as_str) == Some("from the joined node")).then_some(())
        })
        .await;
    }

    // A listed node is a voter: it may not leave.
    let refused = Command::new(BIN)
        .args(["leave", "--node", &mesh.nodes[0].url(""), "--token", TOKEN])
        .output()
        .expect("run leave");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("a voter"), "{stderr}");

    let left = Command::new(BIN)
        .args(["leave", "--node", &edge.url(""), "--token", TOKEN])
        .output()
        .expect("run leave");
    assert!(
        left.status.success(),
        "{}",
        String::from_utf8_lossy(&left.stderr)
    );
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Some(status)) = proc.child.try_wait() {
            assert!(status.success(), "{}", proc.output());
            break;
        }
        assert!(Instant::now() < deadline, "edge-4 did not stop after leave");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for node in &mesh.nodes {
        let what = format!("edge-4 gone from {}'s /v1/nodes", node.id);
        harness::wait_for(&what, || async {
            (!lists(&mesh, node, "edge-4").await?).then_some(())
        })
        .await;
    }
    let log = mesh.procs[0].output();
    assert!(log.contains("member joined"), "{log}");
    assert!(log.contains("member left"), "{log}");
}

#[tokio::test]
async fn a_node_with_a_certificate_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = harness::start_mesh(dir.path(), TOKEN).await;
    let config = dir.path().join("regions.toml");
    // Another CA (a fresh directory makes one), and a certificate from it that names a
    // region of the topology.
    let rogue_ca = dir.path().join("rogue-ca");
    let status = Command::new(BIN)
        .args(["certs", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&rogue_ca)
        .stdout(Stdio::null())
        .status()
        .expect("run certs");
    assert!(status.success());
    let certs = dir.path().join("rogue-certs");
    issue(&config, &rogue_ca, "edge-9", &certs);
    // It trusts the cluster's CA (public), so that it is the mesh that refuses it.
    let bundle = format!(
        "{}{}",
        std::fs::read_to_string(dir.path().join("certs/ca.pem")).expect("cluster ca"),
        std::fs::read_to_string(rogue_ca.join("ca.pem")).expect("rogue ca")
    );
    std::fs::write(certs.join("ca.pem"), bundle).expect("bundle");
    let rogue = joiner("edge-9");
    let _proc = run_joiner(dir.path(), &certs, &rogue, &[&mesh.nodes[0]]);
    let line = harness::wait_for("the seed's log line refusing edge-9", || async {
        mesh.procs[0]
            .output()
            .lines()
            .find(|l| l.contains("peer handshake failed: refused"))
            .map(str::to_owned)
    })
    .await;
    // The other CA has the cluster's name too: its signature is what fails.
    assert!(line.contains("invalid peer certificate"), "{line}");
    for node in &mesh.nodes {
        assert_eq!(lists(&mesh, node, "edge-9").await, Some(false));
    }
}

#[tokio::test]
async fn a_joined_node_that_dies_is_forgotten_after_forget_after_s() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = harness::start_mesh_with_args(dir.path(), TOKEN, &["--forget-after-s", "2"]).await;
    let config = dir.path().join("regions.toml");
    let certs = dir.path().join("edge-5-certs");
    issue(&config, &dir.path().join("certs"), "edge-5", &certs);
    let edge = joiner("edge-5");
    let mut proc = run_joiner(dir.path(), &certs, &edge, &[&mesh.nodes[1]]);
    for node in &mesh.nodes {
        let what = format!("edge-5 alive in {}'s /v1/nodes", node.id);
        harness::wait_for(&what, || async {
            (member_state(&mesh, node, "edge-5").await? == "alive").then_some(())
        })
        .await;
    }
    // Killed, not left: only the failure detector and forget-after remove it.
    proc.child.kill().expect("kill edge-5");
    let _ = proc.child.wait();
    for node in &mesh.nodes {
        let what = format!("edge-5 forgotten by {}", node.id);
        harness::wait_for(&what, || async {
            (!lists(&mesh, node, "edge-5").await?).then_some(())
        })
        .await;
    }
    assert!(mesh.procs[2].output().contains("member removed"));
}
