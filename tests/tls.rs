//! Mutual TLS between nodes: a peer without a cluster certificate cannot join.

use std::sync::Arc;

use statusmesh_gossip::codec::{self, Frame};
use statusmesh_node::certs::{self, NodeIdentity};
use statusmesh_node::transport;

use crate::harness::{self, Proc, WAIT};

/// A QUIC client endpoint on loopback that presents `identity`.
fn client(identity: &NodeIdentity) -> quinn::Endpoint {
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    endpoint.set_default_client_config(transport::client_config(identity).expect("client config"));
    endpoint
}

/// Connects as `identity` to `server` and sends one digest frame. Ok when the server
/// accepted the connection and kept it open long enough to take the frame.
pub(crate) async fn connect_and_send(
    identity: &NodeIdentity,
    addr: std::net::SocketAddr,
    server: &str,
) -> Result<(), String> {
    let endpoint = client(identity);
    let connecting = endpoint.connect(addr, server).map_err(|e| e.to_string())?;
    let connection = tokio::time::timeout(WAIT, connecting)
        .await
        .map_err(|_| "handshake timed out".to_owned())?
        .map_err(|e| format!("handshake refused: {e}"))?;
    let frame = codec::encode(&Frame::Digest {
        docs: 1,
        liveness: 1,
    })
    .map_err(|e| e.to_string())?;
    let sent = async {
        let mut stream = connection.open_uni().await.map_err(|e| e.to_string())?;
        stream.write_all(&frame).await.map_err(|e| e.to_string())?;
        stream.finish().map_err(|e| e.to_string())?;
        stream.stopped().await.map_err(|e| format!("{e:?}"))?;
        Ok::<(), String>(())
    };
    // With TLS 1.3 the client may finish its handshake before the server has checked the
    // client certificate; a refused client then sees the connection closed, not the frame taken.
    tokio::time::timeout(WAIT, sent)
        .await
        .map_err(|_| "send timed out".to_owned())?
}

#[tokio::test]
async fn a_peer_without_a_cluster_certificate_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, nodes) = harness::topology(dir.path(), 1);
    let cluster = dir.path().join("cluster");
    harness::make_certs(&config, &cluster);
    let stranger = dir.path().join("stranger");
    harness::make_certs(&config, &stranger);

    // Only the eu node runs; the test speaks as the ap node.
    let eu = &nodes[0];
    let ap = &nodes[2];
    let _proc: Proc = harness::run_node(dir.path(), &config, &cluster, eu, "t");
    let client_http = reqwest::Client::new();
    harness::wait_healthy(&client_http, std::slice::from_ref(eu)).await;

    // A stranger: a certificate for the right node id, signed by another CA. It trusts the
    // cluster CA, so any failure is the server refusing it.
    let cluster_ca = certs::load_identity(&cluster, &ap.id)
        .expect("cluster identity")
        .cas;
    let mut impostor = certs::load_identity(&stranger, &ap.id).expect("stranger identity");
    impostor.cas = cluster_ca;
    let refused = connect_and_send(&impostor, eu.gossip, &eu.id)
        .await
        .expect_err("a stranger's certificate was accepted");
    // The node closed the connection over the certificate (a TLS alert), not for another reason.
    assert!(
        refused.contains("invalid peer certificate"),
        "refused for another reason: {refused}"
    );

    // The control: the same connection with the cluster's certificate is taken, and the node
    // records contact from the peer it claims to be.
    let member = certs::load_identity(&cluster, &ap.id).expect("member identity");
    connect_and_send(&member, eu.gossip, &eu.id)
        .await
        .expect("member accepted");
    let ap_id = Arc::new(ap.id.clone());
    harness::wait_for("the member to show as contacted", || {
        let client = client_http.clone();
        let url = eu.url("/v1/nodes");
        let ap_id = ap_id.clone();
        async move {
            let nodes: serde_json::Value = client.get(url).send().await.ok()?.json().await.ok()?;
            let entry = nodes["nodes"]
                .as_array()?
                .iter()
                .find(|n| n["id"] == ap_id.as_str())?
                .clone();
            entry["last_contact_ms"].as_u64().map(|_| ())
        }
    })
    .await;
}

/// The value of a counter with the given name and `node` label in a node's /metrics.
pub(crate) async fn counter(
    client: &reqwest::Client,
    node: &harness::TestNode,
    name: &str,
) -> Option<f64> {
    let label = format!("node=\"{}\"", node.id);
    harness::metric_sum(client, node, name, &[&label]).await
}

/// The node ids a node has recorded contact from, per its /v1/nodes.
async fn contacted(client: &reqwest::Client, node: &harness::TestNode) -> Option<Vec<String>> {
    let nodes = harness::get_json(client, node.url("/v1/nodes")).await?;
    Some(
        nodes["nodes"]
            .as_array()?
            .iter()
            .filter(|n| n["last_contact_ms"].as_u64().is_some())
            .filter_map(|n| n["id"].as_str().map(str::to_owned))
            .collect(),
    )
}

#[tokio::test]
async fn a_cluster_certificate_for_one_node_cannot_be_used_to_be_another() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, nodes) = harness::topology(dir.path(), 1);
    let cluster = dir.path().join("cluster");
    harness::make_certs(&config, &cluster);
    // Only eu runs. The test holds the cluster CA, so it can mint genuine cluster
    // certificates for any name: the point is that the name in the certificate is the
    // identity, whatever the connection claims otherwise.
    let (eu, us, ap) = (&nodes[0], &nodes[1], &nodes[2]);
    let _proc: Proc = harness::run_node(dir.path(), &config, &cluster, eu, "t");
    let http = reqwest::Client::new();
    harness::wait_healthy(&http, std::slice::from_ref(eu)).await;
    let ca = certs::ClusterCa::load(&cluster, "test").expect("cluster CA");
    let refused_metric = "statusmesh_transport_connections_refused_total";

    // Connecting with ap's certificate makes the node record contact from ap, and from no
    // one else: not from us-east, which the connection never had a certificate for.
    let as_ap = certs::load_identity(&cluster, &ap.id).expect("ap identity");
    connect_and_send(&as_ap, eu.gossip, &eu.id)
        .await
        .expect("ap's own certificate is accepted");
    harness::wait_for("contact from ap", || async {
        let seen = contacted(&http, eu).await?;
        seen.contains(&ap.id).then_some(())
    })
    .await;
    let seen = contacted(&http, eu).await.expect("nodes");
    assert_eq!(seen, vec![ap.id.clone()], "contact recorded from {seen:?}");

    // A cluster certificate for eu itself cannot speak to eu as a peer.
    let before = counter(&http, eu, refused_metric).await.unwrap_or(0.0);
    let as_self = ca.identity(&eu.id).expect("certificate for eu's own id");
    // The handshake itself succeeds (the certificate is genuine); the node then closes the
    // connection unread. Whether the client notices before its frame is acknowledged at the
    // QUIC level is a race, so the node's own count of refusals is the evidence.
    let _ = connect_and_send(&as_self, eu.gossip, &eu.id).await;
    harness::wait_for("the refusal of eu's own id to be counted", || async {
        let now = counter(&http, eu, refused_metric).await?;
        (now >= before + 1.0).then_some(())
    })
    .await;

    // A cluster certificate for a name outside the topology is refused the same way.
    let as_stranger = ca
        .identity("mallory-1")
        .expect("certificate for a non-member");
    let _ = connect_and_send(&as_stranger, eu.gossip, &eu.id).await;
    harness::wait_for("the refusal of a non-member to be counted", || async {
        let now = counter(&http, eu, refused_metric).await?;
        (now >= before + 2.0).then_some(())
    })
    .await;

    // And the other direction: eu cannot pass for us-east when dialled as us-east, because
    // its certificate does not name us-east.
    let wrong_server = connect_and_send(&as_ap, eu.gossip, &us.id)
        .await
        .expect_err("eu's certificate passed for us-east");
    assert!(
        wrong_server.contains("invalid peer certificate"),
        "failed for another reason: {wrong_server}"
    );

    // Through all of it, eu recorded contact only from ap.
    let seen = contacted(&http, eu).await.expect("nodes");
    assert_eq!(seen, vec![ap.id.clone()], "contact recorded from {seen:?}");
}
