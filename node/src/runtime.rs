//! The driver: one task owns the gossip state machine and everything it holds.
//!
//! Like quinn's `ConnectionDriver`: a `select!` over inbound frames, commands from the HTTP
//! side, shutdown and one re-armed timer from `poll_timeout`; after every input it drains
//! `poll_transmit` (to the transport) and `poll_event` (to SSE subscribers).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::json;
use statusmesh_crdt::{ActorId, Cursor, Name, Replica, StatusEvent, StatusWrite};
use statusmesh_gossip::{Config as GossipConfig, Event, GossipError, Node, Peer};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::certs::NodeIdentity;
use crate::config::Topology;
use crate::transport::{Inbound, Transport, TransportError};

/// Commands queued from HTTP handlers to the driver.
pub const COMMAND_QUEUE_MAX: usize = 1024;
/// Frames queued from the transport to the driver; a full queue pushes back on peers.
pub const INBOUND_QUEUE_MAX: usize = 8192;
/// Events buffered for SSE subscribers; a subscriber that falls further behind gets a fresh
/// snapshot instead of the events it missed.
pub const PUBLISH_BUFFER: usize = 4096;

/// Milliseconds since the Unix epoch: the wall clock that the pure core is given.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

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
}

/// One event as it goes out on SSE and long-poll.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    /// `snapshot`, `status`, `heartbeat` or `membership`.
    pub kind: &'static str,
    /// The cursor after this event (SSE `id:`).
    pub id: String,
    #[serde(skip)]
    pub service: Option<String>,
    #[serde(skip)]
    pub region: Option<String>,
    /// The JSON payload (SSE `data:`).
    pub data: serde_json::Value,
}

/// A new subscription: what to send first, then the live feed.
#[derive(Debug)]
pub struct Subscription {
    pub initial: Vec<Published>,
    pub live: broadcast::Receiver<Arc<Published>>,
}

/// The reply to a write.
#[derive(Debug, Clone, Serialize)]
pub struct WriteReply {
    pub changed: bool,
    pub cursor: String,
}

enum Command {
    Write {
        write: StatusWrite,
        reply: oneshot::Sender<Result<WriteReply, GossipError>>,
    },
    Status {
        service: Option<Name>,
        reply: oneshot::Sender<(serde_json::Value, String)>,
    },
    Subscribe {
        resume: Option<Cursor>,
        service: Option<String>,
        reply: oneshot::Sender<Subscription>,
    },
    Nodes {
        reply: oneshot::Sender<serde_json::Value>,
    },
}

/// Static facts about the node, shared with the HTTP side.
#[derive(Debug)]
pub struct NodeInfo {
    pub id: String,
    pub region: String,
    pub cluster: String,
    pub token: String,
}

/// A cheap, cloneable handle to a running node's driver.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    commands: mpsc::Sender<Command>,
    pub info: Arc<NodeInfo>,
    ready: watch::Receiver<bool>,
}

/// The driver is gone (the node is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the node is shutting down")]
pub struct Unavailable;

impl NodeHandle {
    /// Applies a client write; replies once it is applied locally and queued to peers.
    pub async fn write(
        &self,
        write: StatusWrite,
    ) -> Result<Result<WriteReply, GossipError>, Unavailable> {
        self.ask(|reply| Command::Write { write, reply }).await
    }

    /// The status view (all services or one) and the cursor it reflects.
    pub async fn status(
        &self,
        service: Option<Name>,
    ) -> Result<(serde_json::Value, String), Unavailable> {
        self.ask(|reply| Command::Status { service, reply }).await
    }

    /// Subscribes to events, resuming after `resume` when the node can tell what came after it.
    pub async fn subscribe(
        &self,
        resume: Option<Cursor>,
        service: Option<String>,
    ) -> Result<Subscription, Unavailable> {
        self.ask(|reply| Command::Subscribe {
            resume,
            service,
            reply,
        })
        .await
    }

    /// Membership and replication state.
    pub async fn nodes(&self) -> Result<serde_json::Value, Unavailable> {
        self.ask(|reply| Command::Nodes { reply }).await
    }

    /// True once the node has heard from a peer (or has none).
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Unavailable> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| Unavailable)?;
        rx.await.map_err(|_| Unavailable)
    }
}

/// A running node: its handle and the addresses it serves.
#[derive(Debug)]
pub struct RunningNode {
    pub handle: NodeHandle,
    pub http_addr: SocketAddr,
    pub gossip_addr: SocketAddr,
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

/// Everything needed to start one node.
#[derive(Debug)]
pub struct NodeOptions {
    pub topology: Topology,
    pub node_id: String,
    pub identity: NodeIdentity,
    pub token: String,
    pub gossip: GossipConfig,
}

/// Starts a node: QUIC transport, the driver, and the HTTP server. Everything stops when
/// `shutdown` turns true.
pub async fn start(
    options: NodeOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<RunningNode, StartError> {
    let topology = &options.topology;
    let spec = topology
        .node(&options.node_id)
        .map_err(|e| StartError::Config(e.to_string()))?
        .clone();
    let peers: Vec<(String, SocketAddr)> = topology
        .nodes
        .iter()
        .filter(|n| n.id != spec.id)
        .map(|n| (n.id.clone(), n.gossip))
        .collect();
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE_MAX);
    let transport = Transport::start(
        &options.identity,
        spec.gossip,
        &peers,
        inbound_tx,
        shutdown.clone(),
    )?;
    let gossip_addr = transport.local_addr().unwrap_or(spec.gossip);

    // A fresh actor id per process start: this node keeps no disk yet, so it never writes
    // under an actor whose sequence numbers peers may already hold.
    let actor = ActorId::from(rand::random::<[u8; 16]>().to_vec());
    let replica = Replica::new(&spec.id, actor);
    let gossip_peers = topology
        .nodes
        .iter()
        .map(|n| Peer {
            id: n.id.clone(),
            region: n.region.clone(),
        })
        .collect();
    let node = Node::new(
        spec.id.clone(),
        options.gossip.clone(),
        gossip_peers,
        replica,
        rand::random(),
    );

    let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE_MAX);
    let (ready_tx, ready_rx) = watch::channel(peers.is_empty());
    let (publish_tx, _) = broadcast::channel(PUBLISH_BUFFER);
    let info = Arc::new(NodeInfo {
        id: spec.id.clone(),
        region: spec.region.clone(),
        cluster: topology.cluster.clone(),
        token: options.token.clone(),
    });
    let handle = NodeHandle {
        commands: commands_tx,
        info: info.clone(),
        ready: ready_rx,
    };
    let regions: BTreeMap<String, String> = topology
        .nodes
        .iter()
        .map(|n| (n.id.clone(), n.region.clone()))
        .collect();
    let driver = Driver {
        node,
        transport,
        publish: publish_tx,
        ready: ready_tx,
        regions,
        info,
    };
    let driver = tokio::spawn(driver.run(inbound_rx, commands_rx, shutdown.clone()));

    let listener = tokio::net::TcpListener::bind(spec.http)
        .await
        .map_err(|e| StartError::HttpBind {
            addr: spec.http,
            reason: e.to_string(),
        })?;
    let http_addr = listener.local_addr().unwrap_or(spec.http);
    let router = crate::http::router(handle.clone());
    let mut http_shutdown = shutdown;
    let http = tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = http_shutdown.wait_for(|stop| *stop).await;
            })
            .await;
        if let Err(e) = served {
            warn!(error = %e, "http server stopped with an error");
        }
    });
    info!(node = %spec.id, http = %http_addr, gossip = %gossip_addr, "node started");
    Ok(RunningNode {
        handle,
        http_addr,
        gossip_addr,
        driver,
        http,
    })
}

struct Driver {
    node: Node,
    transport: Transport,
    publish: broadcast::Sender<Arc<Published>>,
    ready: watch::Sender<bool>,
    regions: BTreeMap<String, String>,
    info: Arc<NodeInfo>,
}

impl Driver {
    async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut commands: mpsc::Receiver<Command>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let now = now_ms();
            let wait_ms = self
                .node
                .poll_timeout()
                .map_or(1_000, |t| t.saturating_sub(now));
            let timer = tokio::time::sleep(Duration::from_millis(wait_ms));
            tokio::select! {
                frame = inbound.recv() => match frame {
                    Some(frame) => self.node.handle_frame(now_ms(), &frame.from, &frame.bytes),
                    None => break,
                },
                command = commands.recv() => match command {
                    Some(command) => self.handle_command(command),
                    None => break,
                },
                _ = timer => self.node.handle_timeout(now_ms()),
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
            self.flush();
        }
        self.transport.close().await;
        info!(node = %self.info.id, "driver stopped");
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Write { write, reply } => {
                let result = self
                    .node
                    .local_write(now_ms(), &write)
                    .map(|changed| WriteReply {
                        changed,
                        cursor: self.node.replica().cursor().encode(),
                    });
                // Flush before replying so the change is queued to peers first.
                self.flush();
                let _ = reply.send(result);
            }
            Command::Status { service, reply } => {
                let _ = reply.send(self.status(service.as_ref()));
            }
            Command::Subscribe {
                resume,
                service,
                reply,
            } => {
                // Subscribing and computing the first events happen in one step of the one
                // task that applies changes: nothing can slip in between (no gap, no dup).
                let live = self.publish.subscribe();
                let initial = self.initial_events(resume.as_ref(), service.as_deref());
                let _ = reply.send(Subscription { initial, live });
            }
            Command::Nodes { reply } => {
                let _ = reply.send(self.nodes());
            }
        }
    }

    fn initial_events(&self, resume: Option<&Cursor>, service: Option<&str>) -> Vec<Published> {
        let replica = self.node.replica();
        if let Some(cursor) = resume {
            if let Some(events) = replica.events_since(cursor) {
                let id = replica.cursor().encode();
                return events
                    .iter()
                    .map(|e| status_published(e, id.clone()))
                    .collect();
            }
        }
        let service = service.and_then(|s| Name::parse("service", s).ok());
        let (view, cursor) = self.status(service.as_ref());
        vec![Published {
            kind: "snapshot",
            id: cursor,
            service: None,
            region: None,
            data: view,
        }]
    }

    fn status(&self, service: Option<&Name>) -> (serde_json::Value, String) {
        let replica = self.node.replica();
        let view = serde_json::to_value(replica.view(now_ms(), service)).unwrap_or_default();
        (view, replica.cursor().encode())
    }

    fn nodes(&self) -> serde_json::Value {
        let now = now_ms();
        let link_stats: BTreeMap<&str, _> = self.transport.link_stats().collect();
        let mut nodes = vec![json!({
            "id": self.info.id,
            "region": self.info.region,
            "self": true,
            "state": "alive",
        })];
        for (id, peer) in self.node.peers() {
            let state = match peer.last_heard_ms {
                Some(t) if now.saturating_sub(t) <= 10_000 => "alive",
                Some(_) => "down",
                None => "unknown",
            };
            let stats = link_stats.get(id.as_str());
            nodes.push(json!({
                "id": id,
                "region": peer.region,
                "self": false,
                "state": state,
                "last_contact_ms": peer.last_heard_ms,
                "frames_sent": stats.map(|s| s.frames_sent.load(std::sync::atomic::Ordering::Relaxed)),
                "frames_dropped": stats.map(|s| s.frames_dropped.load(std::sync::atomic::Ordering::Relaxed)),
            }));
        }
        json!({
            "cluster": self.info.cluster,
            "node": self.info.id,
            "region": self.info.region,
            "nodes": nodes,
            "regions": self.regions.values().collect::<std::collections::BTreeSet<_>>(),
        })
    }

    fn flush(&mut self) {
        while let Some(transmit) = self.node.poll_transmit() {
            self.transport.send(&transmit.to, transmit.bytes);
        }
        while let Some(event) = self.node.poll_event() {
            match event {
                Event::Status { event, cursor } => {
                    if let (Some(origin_ms), Some(origin)) =
                        (event.changed_at_ms, &event.origin_node)
                    {
                        if origin != &self.info.id {
                            let delay = now_ms().saturating_sub(origin_ms);
                            metrics::histogram!("statusmesh_propagation_delay_ms")
                                .record(delay as f64);
                        }
                    }
                    let published = status_published(&event, cursor.encode());
                    // No subscriber is not an error.
                    let _ = self.publish.send(Arc::new(published));
                }
                Event::Heartbeat { .. } => {}
                Event::PeerContact { peer } => {
                    info!(node = %self.info.id, %peer, "first frame from peer");
                    let _ = self.ready.send(true);
                }
                Event::FrameRejected { from, reason } => {
                    warn!(node = %self.info.id, peer = %from, %reason, "rejected a frame");
                    metrics::counter!("statusmesh_frames_rejected_total", "peer" => from)
                        .increment(1);
                }
            }
        }
    }
}

/// The SSE/long-poll form of a status event.
pub fn status_published(event: &StatusEvent, id: String) -> Published {
    let mut data = json!({
        "service": event.service,
        "component": event.component,
        "region": event.region,
        "origin": event.origin_node,
        "changed_at_ms": event.changed_at_ms,
        "conflict": event.conflict,
    });
    if let (Some(obs), Some(map)) = (&event.observation, data.as_object_mut()) {
        map.insert("state".into(), json!(obs.state));
        map.insert("message".into(), json!(obs.message));
        map.insert("reporter".into(), json!(obs.reporter));
        map.insert("observed_at_ms".into(), json!(obs.observed_at_ms));
        map.insert("ttl_ms".into(), json!(obs.ttl_ms));
    } else if let Some(map) = data.as_object_mut() {
        map.insert("state".into(), serde_json::Value::Null);
    }
    Published {
        kind: "status",
        id,
        service: Some(event.service.to_string()),
        region: Some(event.region.to_string()),
        data,
    }
}
