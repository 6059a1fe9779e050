//! Starting a node: the only module that knows both the driver and the HTTP side. It loads
//! the data directory, starts storage, the QUIC transport, the driver, and the HTTP server.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use statusmesh_gossip::error::ConfigError;
use statusmesh_gossip::{Config as GossipConfig, Peer};
use tokio::sync::{mpsc, watch};
use tracing::info;

use crate::certs::NodeIdentity;
use crate::config::Topology;
use crate::driver::{self, NodeHandle};
use crate::http::{self, limits::Limits, HttpState};
use crate::settings::NodeSettings;
use crate::storage::{self, StorageError, StorageHandle};
use crate::transport::{Transport, TransportError};

/// An error starting a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("cannot bind HTTP on {addr}: {reason}")]
    HttpBind { addr: SocketAddr, reason: String },
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A gossip setting breaks its rule; `setting` is the flag that sets it (or, for a
    /// setting no flag sets, its path in the gossip configuration). Nothing was started.
    #[error("{setting}: {source}")]
    Gossip {
        setting: String,
        source: ConfigError,
    },
}

impl StartError {
    /// The error of an invalid gossip configuration, naming the flag behind the setting.
    pub(crate) fn gossip(source: ConfigError) -> Self {
        let field = match &source {
            ConfigError::BelowMinimum { field, .. } => *field,
            _ => "",
        };
        let setting = match field {
            "epoch.history_changes_max" => "--epoch-history-changes-max".to_owned(),
            "epoch.history_bytes_max" => "--epoch-history-bytes-max".to_owned(),
            "epoch.age_ms_max" => "--epoch-age-s-max".to_owned(),
            "" => "gossip configuration".to_owned(),
            other => format!("gossip setting {other}"),
        };
        Self::Gossip { setting, source }
    }
}

/// A running node: its handle and the addresses it serves.
#[derive(Debug)]
pub struct RunningNode {
    pub handle: NodeHandle,
    pub http_addr: SocketAddr,
    /// `https` with `--http-tls-cert`, else `http`.
    pub http_scheme: &'static str,
    pub gossip_addr: SocketAddr,
    /// Turns true once the node left the mesh (`statusmesh leave`): the caller stops it.
    pub left: watch::Receiver<bool>,
    driver: tokio::task::JoinHandle<()>,
    http: tokio::task::JoinHandle<()>,
}

impl RunningNode {
    /// Waits until the driver and the HTTP server have stopped (after shutdown).
    pub async fn join(self) {
        let _ = self.http.await;
        let _ = self.driver.await;
    }
}

/// How a node not listed in the topology runs (`statusmesh run --region --join`).
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// Its region: one of the topology's.
    pub region: String,
    /// Where it serves gossip (QUIC) and the client API.
    pub gossip: SocketAddr,
    pub http: SocketAddr,
    /// The listed nodes it announces itself to (ids of the `--join` addresses).
    pub seeds: Vec<String>,
}

/// Everything needed to start one node.
#[derive(Debug)]
pub struct NodeOptions {
    pub topology: Topology,
    pub node_id: String,
    pub identity: NodeIdentity,
    pub settings: NodeSettings,
    pub gossip: GossipConfig,
    /// The Prometheus recorder installed by `main`, served at `/metrics`.
    pub metrics: Option<PrometheusHandle>,
    /// Set for a node not listed in the topology.
    pub join: Option<JoinOptions>,
}

/// Starts a node: loads its data directory, then the QUIC transport, the driver, and the
/// HTTP server. Everything stops when `shutdown` turns true; the driver then writes and
/// fsyncs what is pending before it closes connections.
pub async fn start(
    options: NodeOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<RunningNode, StartError> {
    // Checked before anything is built: the core asserts a valid configuration.
    options.gossip.validate().map_err(StartError::gossip)?;
    let topology = &options.topology;
    let spec = match &options.join {
        Some(join) => crate::config::NodeSpec {
            id: options.node_id.clone(),
            region: join.region.clone(),
            gossip: join.gossip,
            http: join.http,
        },
        None => topology
            .node(&options.node_id)
            .map_err(|e| StartError::Config(e.to_string()))?
            .clone(),
    };
    let peers: Vec<(String, SocketAddr)> = topology
        .nodes
        .iter()
        .filter(|n| n.id != spec.id)
        .map(|n| (n.id.clone(), n.gossip))
        .collect();
    // Load before anything listens: a node serves only what it has on disk and more.
    let loaded = {
        let dir = options.settings.data_dir.clone();
        let id = spec.id.clone();
        tokio::task::spawn_blocking(move || storage::open(&dir, &id))
            .await
            .map_err(|e| StartError::Config(format!("storage load task failed: {e}")))??
    };
    // The Alertmanager receiver's firing set, from the same directory (see its `store`).
    let alertmanager = {
        let (dir, settings) = (
            options.settings.data_dir.clone(),
            options.settings.alertmanager.clone(),
        );
        tokio::task::spawn_blocking(move || http::alertmanager::Receiver::open(&dir, settings))
            .await
            .map_err(|e| StartError::Config(format!("alertmanager load task failed: {e}")))??
    };
    if loaded.truncated_tails > 0 {
        metrics::counter!("statusmesh_storage_truncated_tails_total", "node" => spec.id.clone())
            .increment(loaded.truncated_tails);
    }
    let storage::Loaded {
        incarnation,
        actor,
        docs,
        logs,
        lock,
        ..
    } = loaded;
    let storage = StorageHandle::start(options.settings.data_dir.clone(), spec.id.clone(), lock)?;
    let (inbound_tx, inbound_rx) = mpsc::channel(driver::INBOUND_QUEUE_MAX);
    let (notices_tx, notices_rx) = mpsc::channel(driver::NOTICES_QUEUE_MAX);
    let region_names: Vec<String> = topology.regions.iter().map(|r| r.name.clone()).collect();
    let transport = Transport::start(
        &options.identity,
        spec.gossip,
        &peers,
        &region_names,
        inbound_tx,
        notices_tx,
        shutdown.clone(),
    )?;
    let gossip_addr = transport.local_addr().unwrap_or(spec.gossip);

    // A fresh actor id per start (recorded by storage::open before use): this node never
    // writes under an actor whose sequence numbers peers may already hold.
    info!(node = %spec.id, incarnation, actor = %actor, "incarnation");
    let gossip_peers = topology
        .nodes
        .iter()
        .map(|n| Peer {
            id: n.id.clone(),
            region: n.region.clone(),
        })
        .collect();
    let mut regions: BTreeMap<String, String> = topology
        .nodes
        .iter()
        .map(|n| (n.id.clone(), n.region.clone()))
        .collect();
    let mut http_addrs: BTreeMap<String, SocketAddr> = topology
        .nodes
        .iter()
        .map(|n| (n.id.clone(), n.http))
        .collect();
    if options.join.is_some() {
        regions.insert(spec.id.clone(), spec.region.clone());
        http_addrs.insert(spec.id.clone(), spec.http);
    }
    let (left_tx, left_rx) = watch::channel(false);
    let (handle, driver) = driver::spawn(driver::Launch {
        info: driver::NodeInfo {
            id: spec.id.clone(),
            region: spec.region.clone(),
            cluster: topology.cluster.clone(),
            regions: topology.regions.iter().map(|r| r.name.clone()).collect(),
            tokens: options.settings.tokens.clone(),
            request_read_timeout: options.settings.request_read_timeout,
            data_dir: options.settings.data_dir.clone(),
            http_addrs: http_addrs.into_iter().collect(),
        },
        join: options.join.clone(),
        notices: notices_rx,
        left: left_tx,
        gossip: options.gossip.clone(),
        peers: gossip_peers,
        regions,
        incarnation,
        actor,
        docs,
        logs,
        storage,
        transport,
        inbound: inbound_rx,
        settings: options.settings.clone(),
        shutdown: shutdown.clone(),
    });

    let listener = bind_http(spec.http).map_err(|e| StartError::HttpBind {
        addr: spec.http,
        reason: e.to_string(),
    })?;
    let http_addr = listener.local_addr().unwrap_or(spec.http);
    let http_scheme = if options.settings.http_tls.is_some() {
        "https"
    } else {
        "http"
    };
    let state = HttpState {
        node: handle.clone(),
        limits: Arc::new(Limits::new(
            options.settings.subscribers_max,
            options.settings.writes_per_second_per_token,
        )),
        metrics: options.metrics.clone(),
        frame_ancestors: options
            .settings
            .frame_ancestors
            .clone()
            .with_mesh_connect(topology.nodes.iter().map(|n| n.http)),
        alertmanager: Arc::new(alertmanager),
        cors: http::cors::Cors::new(options.settings.cors.clone()),
        page_url: options.settings.page_url.as_deref().map(Arc::from),
        https: options.settings.http_tls.is_some(),
        flags: Arc::default(),
        deliveries: Arc::default(),
    };
    tokio::spawn(http::flags::controller::run(handle.clone()));
    let router = http::router(state.clone());
    // Regional probes: detached; it stops with `shutdown` or when the driver is gone.
    drop(crate::probe::spawn(handle.clone(), shutdown.clone()));
    // Outgoing webhooks: detached likewise.
    drop(crate::notify::spawn(
        handle.clone(),
        crate::notify::NotifyConfig::new(&options.settings.webhooks),
        Arc::clone(&state.deliveries),
        shutdown.clone(),
    ));
    let http = tokio::spawn(http::serve::serve(
        listener,
        router,
        state,
        options.settings.request_read_timeout,
        options.settings.http_tls.clone(),
        shutdown,
    ));
    info!(node = %spec.id, http = %http_addr, scheme = http_scheme, gossip = %gossip_addr, "node started");
    Ok(RunningNode {
        handle,
        http_addr,
        http_scheme,
        gossip_addr,
        left: left_rx,
        driver,
        http,
    })
}

/// Pending connections the HTTP listener queues before the kernel drops new ones: a fleet of
/// subscribers reconnecting at once (after a failover) must not overflow it (tokio's default
/// is 128).
const HTTP_LISTEN_BACKLOG: u32 = 4096;

pub(crate) fn bind_http(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(HTTP_LISTEN_BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::ClusterCa;
    use crate::settings::Tokens;

    #[tokio::test]
    async fn an_invalid_gossip_setting_is_a_start_error_that_names_it() {
        let topology = Topology::embedded().expect("embedded topology");
        let node_id = topology.nodes[0].id.clone();
        let ca = ClusterCa::generate(&topology.cluster).expect("ca");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut gossip = GossipConfig::lan();
        gossip.anti_entropy_interval_ms = 0;
        let options = NodeOptions {
            identity: ca.identity(&node_id).expect("identity"),
            settings: NodeSettings::new(
                dir.path().join("data"),
                Tokens::single("0123456789abcdef"),
            ),
            topology,
            node_id,
            gossip,
            metrics: None,
            join: None,
        };
        let (_stop, shutdown) = watch::channel(false);
        let error = start(options, shutdown).await.expect_err("refused");
        assert_eq!(
            error.to_string(),
            "gossip setting anti_entropy_interval_ms: anti_entropy_interval_ms must be at least 1, got 0"
        );
        // Nothing was built: not even the data directory.
        assert!(!dir.path().join("data").exists());
    }
}
