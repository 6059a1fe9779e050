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
async fn connect_and_send(
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
        .ca;
    let mut impostor = certs::load_identity(&stranger, &ap.id).expect("stranger identity");
    impostor.ca = cluster_ca;
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
