//! `statusmesh check-config`: everything `statusmesh run` checks before it serves, with the
//! same error messages, but nothing started and nothing written beyond what `run` would
//! create anyway (the data directory and its lock file): the flags and gossip settings, the
//! topology and this node's place in it, the certificates (CA, node certificate and key, and
//! that they make a TLS configuration), the tokens, the data directory (creatable, not in use
//! by another process, this node's), the HTTPS certificate and key when given (loaded as `run`
//! loads them, when the flags are read), and that the gossip (UDP) and HTTP (TCP) addresses
//! can be bound. A node that is running fails the last checks, as a second `run` would.

use anyhow::Context;

use crate::certs;
use crate::cli::RunPlan;
use crate::config::Topology;
use crate::start::{bind_http, StartError};
use crate::storage;
use crate::transport::{self, TransportError};

/// Checks `plan` as `run` would; one line per check that passed, or the first error.
pub async fn check(plan: &RunPlan) -> anyhow::Result<Vec<String>> {
    let mut passed = Vec::new();
    // What `run` checks inside its start has the start's context, as there.
    let starting = || format!("starting node {}", plan.node);
    plan.gossip
        .validate()
        .map_err(StartError::gossip)
        .with_context(starting)?;
    let topology = Topology::load(&plan.config)?;
    let spec = match &plan.join {
        // A node not listed: its region and seeds are checked as `run` checks them.
        Some(join) => {
            topology.check_joiner(&plan.config, &plan.node, &join.region)?;
            for seed in &join.seeds {
                topology.seed(*seed)?;
            }
            crate::config::NodeSpec {
                id: plan.node.clone(),
                region: join.region.clone(),
                gossip: join.gossip,
                http: join.http,
            }
        }
        None => topology.node(&plan.node)?.clone(),
    };
    passed.push(format!(
        "topology {}: cluster {}, {} nodes in {} regions; {} is in {}",
        plan.config.display(),
        topology.cluster,
        topology.nodes.len(),
        topology.regions.len(),
        spec.id,
        spec.region
    ));
    let identity = certs::load_identity(&plan.certs, &plan.node)?;
    transport::server_config(&identity)?;
    transport::client_config(&identity)?;
    passed.push(format!(
        "certificates in {}: the CA, {}'s certificate and key",
        plan.certs.display(),
        plan.node
    ));
    if let (Some(tls), Some(loaded)) = (&plan.settings.http_tls, &plan.http_tls) {
        let [cert, key] = tls.files();
        passed.push(format!(
            "HTTPS {} and {}: {} certificate(s), leaf sha256 {}, ALPN h2 and http/1.1",
            cert.display(),
            key.display(),
            loaded.chain_len,
            loaded.leaf_sha256
        ));
    }
    passed.push(format!(
        "tokens: {} (operator scope: {})",
        plan.settings.tokens.len(),
        plan.settings.tokens.operators()
    ));
    let dir = &plan.settings.data_dir;
    let incarnation = storage::check(dir, &plan.node)
        .map_err(StartError::from)
        .with_context(starting)?;
    passed.push(format!(
        "data directory {}: not in use, would start as incarnation {incarnation}",
        dir.display()
    ));
    std::net::UdpSocket::bind(spec.gossip)
        .map_err(|e| {
            StartError::from(TransportError::Bind {
                addr: spec.gossip,
                reason: e.to_string(),
            })
        })
        .with_context(starting)?;
    passed.push(format!("gossip (QUIC over UDP) {}: free", spec.gossip));
    let listener = bind_http(spec.http)
        .map_err(|e| StartError::HttpBind {
            addr: spec.http,
            reason: e.to_string(),
        })
        .with_context(starting)?;
    drop(listener);
    let scheme = if plan.settings.http_tls.is_some() {
        "HTTPS"
    } else {
        "HTTP"
    };
    passed.push(format!("{scheme} (TCP) {}: free", spec.http));
    Ok(passed)
}
