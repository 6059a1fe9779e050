//! The driver: one task owns the gossip state machine and everything it holds.
//!
//! Like quinn's `ConnectionDriver`: a `select!` over inbound frames, commands from the HTTP
//! side, shutdown and one re-armed timer from `poll_timeout`; after every input it drains
//! `poll_transmit` (to the transport) and `poll_event` (to SSE subscribers).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use serde_json::json;
use statusmesh_crdt::doc::REMOTE_BATCH_MAX;
use statusmesh_crdt::{
    ChangeHash, Cursor, DocEvent, Incident, IncidentChange, Name, Put, Replica, StatusEvent,
    StatusWrite,
};
use statusmesh_gossip::codec::{self, Frame, FRAME_BYTES_MAX};
use statusmesh_gossip::{Config as GossipConfig, Event, GossipError, MemberState, Node, Peer};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::certs::NodeIdentity;
use crate::config::Topology;
use crate::settings::{NodeSettings, Tokens};
use crate::storage::{self, Batch, DocWrite, Persisted, StorageError, StorageHandle};
use crate::transport::{Inbound, Transport, TransportError};

/// Commands queued from HTTP handlers to the driver.
pub const COMMAND_QUEUE_MAX: usize = 1024;
/// Frames queued from the transport to the driver; a full queue pushes back on peers.
pub const INBOUND_QUEUE_MAX: usize = 8192;
/// Events buffered for SSE subscribers; a subscriber that falls further behind gets a fresh
/// snapshot instead of the events it missed.
pub const PUBLISH_BUFFER: usize = 4096;
/// Frames taken from the inbound queue per loop iteration after the first, so that one
/// commit covers them all without starving commands.
pub const INBOUND_DRAIN_MAX: usize = 1024;
/// How often queue depths and similar gauges are exported.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

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
    #[error(transparent)]
    Storage(#[from] StorageError),
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
    /// The SSE block, made on first use: one serialization shared by every subscriber the
    /// event fans out to, instead of one per subscriber.
    #[serde(skip)]
    pub frame: std::sync::OnceLock<axum::body::Bytes>,
}

impl Published {
    /// This event as one SSE block (`event:`, `id:`, `data:` lines and the blank line),
    /// serialized once however many subscribers send it; cloning the bytes is a refcount.
    pub fn sse_frame(&self) -> axum::body::Bytes {
        self.frame
            .get_or_init(|| {
                // Compact JSON has no line breaks, so the payload is a single `data:` line.
                let data = serde_json::to_string(&self.data).unwrap_or_default();
                let mut block =
                    String::with_capacity(32 + self.kind.len() + self.id.len() + data.len());
                for (field, value) in [("event", self.kind), ("id", &self.id), ("data", &data)] {
                    block.push_str(field);
                    block.push_str(": ");
                    block.push_str(value);
                    block.push('\n');
                }
                block.push('\n');
                axum::body::Bytes::from(block)
            })
            .clone()
    }
}

/// A new subscription: what to send first, then the live feed.
#[derive(Debug)]
pub struct Subscription {
    pub initial: Vec<Published>,
    pub live: broadcast::Receiver<Arc<Published>>,
    /// True when the client's cursor names changes this node does not hold yet: `initial`
    /// is then a snapshot, and the node has asked its peers for what it lacks.
    pub cursor_ahead: bool,
}

/// The reply to a write.
#[derive(Debug, Clone, Serialize)]
pub struct WriteReply {
    pub changed: bool,
    pub cursor: String,
    /// The change made, for `?ack=N` waits; `None` when nothing changed.
    #[serde(skip)]
    pub change: Option<ChangeHash>,
}

/// A change to an incident, a maintenance window or an override.
#[derive(Debug, Clone)]
pub enum RecordOp {
    OpenIncident {
        id: Name,
        incident: Incident,
        text: String,
    },
    ChangeIncident {
        id: Name,
        change: IncidentChange,
    },
    /// A maintenance window or an override, written as the crdt's own record put.
    Put(Put),
}

/// Most `?ack=N` writes waiting at once; more are answered at once with what is known.
pub const ACK_WAITERS_MAX: usize = 10_000;

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
    Record {
        service: Name,
        op: RecordOp,
        reply: oneshot::Sender<Result<WriteReply, GossipError>>,
    },
    History {
        service: Name,
        component: Name,
        days: u64,
        archived: Vec<statusmesh_crdt::archive::ArchivedWrite>,
        reply: oneshot::Sender<Option<serde_json::Value>>,
    },
    AwaitRegions {
        change: ChangeHash,
        regions: usize,
        reply: oneshot::Sender<usize>,
    },
}

/// Static facts about the node, shared with the HTTP side.
#[derive(Debug)]
pub struct NodeInfo {
    pub id: String,
    pub region: String,
    pub cluster: String,
    /// Who may write.
    pub tokens: Tokens,
    /// How long a client may take to send a request body (see `NodeSettings`).
    pub request_read_timeout: Duration,
    /// The data directory: the history endpoint reads a document's archive from it.
    pub data_dir: std::path::PathBuf,
}

/// A cheap, cloneable handle to a running node's driver.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    commands: mpsc::Sender<Command>,
    pub info: Arc<NodeInfo>,
    ready: watch::Receiver<bool>,
    /// The process's Prometheus recorder, for `/metrics` (absent when none is installed).
    pub metrics: Option<PrometheusHandle>,
    /// Admission limits of the HTTP side.
    pub limits: Arc<crate::limits::Limits>,
}

/// The driver is gone (the node is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the node is shutting down")]
pub struct Unavailable;

impl NodeHandle {
    /// Applies a client write; replies once it is applied locally, queued to peers, and its
    /// change is on disk (fsynced). Storage failure shows as [`Unavailable`].
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

    /// Applies an incident, maintenance or override change; replies once it is durable.
    pub async fn record(
        &self,
        service: Name,
        op: RecordOp,
    ) -> Result<Result<WriteReply, GossipError>, Unavailable> {
        self.ask(|reply| Command::Record { service, op, reply })
            .await
    }

    /// A component's timeline and daily uptime over the last `days`, `None` when unknown.
    pub async fn history(
        &self,
        service: Name,
        component: Name,
        days: u64,
        archived: Vec<statusmesh_crdt::archive::ArchivedWrite>,
    ) -> Result<Option<serde_json::Value>, Unavailable> {
        self.ask(|reply| Command::History {
            service,
            component,
            days,
            archived,
            reply,
        })
        .await
    }

    /// Waits until `regions` regions (this one included) hold `change`; replies with how many
    /// do. The caller bounds the wait.
    pub async fn await_regions(
        &self,
        change: ChangeHash,
        regions: usize,
    ) -> Result<usize, Unavailable> {
        self.ask(|reply| Command::AwaitRegions {
            change,
            regions,
            reply,
        })
        .await
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
    pub settings: NodeSettings,
    pub gossip: GossipConfig,
    /// The Prometheus recorder installed by `main`, served at `/metrics`.
    pub metrics: Option<PrometheusHandle>,
}

/// Starts a node: loads its data directory, then the QUIC transport, the driver, and the
/// HTTP server. Everything stops when `shutdown` turns true; the driver then writes and
/// fsyncs what is pending before it closes connections.
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
    // Load before anything listens: a node serves only what it has on disk and more.
    let loaded = {
        let dir = options.settings.data_dir.clone();
        let id = spec.id.clone();
        tokio::task::spawn_blocking(move || storage::open(&dir, &id))
            .await
            .map_err(|e| StartError::Config(format!("storage load task failed: {e}")))??
    };
    if loaded.truncated_tails > 0 {
        metrics::counter!("statusmesh_storage_truncated_tails_total", "node" => spec.id.clone())
            .increment(loaded.truncated_tails);
    }
    let storage = StorageHandle::start(
        options.settings.data_dir.clone(),
        spec.id.clone(),
        loaded.lock,
    )?;
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE_MAX);
    let transport = Transport::start(
        &options.identity,
        spec.gossip,
        &peers,
        inbound_tx,
        shutdown.clone(),
    )?;
    let gossip_addr = transport.local_addr().unwrap_or(spec.gossip);

    // A fresh actor id per start (recorded by storage::open before use): this node never
    // writes under an actor whose sequence numbers peers may already hold.
    info!(node = %spec.id, incarnation = loaded.incarnation, actor = %loaded.actor, "incarnation");
    let logs = loaded.logs;
    let replica = Replica::from_docs(&spec.id, loaded.actor, loaded.docs);
    let persisted: BTreeMap<Name, Persisted> = replica
        .docs()
        .map(|doc| {
            let log = logs.get(doc.service()).copied().unwrap_or_default();
            (
                doc.service().clone(),
                Persisted {
                    heads: doc.heads(),
                    log,
                    epoch: (doc.epoch(), doc.base()),
                    irregular_applies: doc.irregular_applies(),
                    archived_epoch: doc.prev_epoch(),
                },
            )
        })
        .collect();
    let gossip_peers = topology
        .nodes
        .iter()
        .map(|n| Peer {
            id: n.id.clone(),
            region: n.region.clone(),
        })
        .collect();
    // Each start is a new life in SWIM: peers that declared the last one down take this one.
    let mut gossip_config = options.gossip.clone();
    gossip_config.generation = u32::try_from(loaded.incarnation).unwrap_or(u32::MAX);
    let node = Node::new(
        spec.id.clone(),
        gossip_config,
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
        tokens: options.settings.tokens.clone(),
        request_read_timeout: options.settings.request_read_timeout,
        data_dir: options.settings.data_dir.clone(),
    });
    let handle = NodeHandle {
        commands: commands_tx,
        info: info.clone(),
        ready: ready_rx,
        metrics: options.metrics.clone(),
        limits: Arc::new(crate::limits::Limits::new(options.settings.subscribers_max)),
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
        storage: Some(storage),
        persisted,
        settings: options.settings.clone(),
        pending_acks: Vec::new(),
        touched: false,
        remote_records: BTreeMap::new(),
        remote_broken: BTreeSet::new(),
        writes_this_round: 0,
        gauges_at: Instant::now(),
        ack_waiters: Vec::new(),
        write_batch: Vec::new(),
    };
    let driver = tokio::spawn(driver.run(inbound_rx, commands_rx, shutdown.clone()));

    let listener = bind_http(spec.http).map_err(|e| StartError::HttpBind {
        addr: spec.http,
        reason: e.to_string(),
    })?;
    let http_addr = listener.local_addr().unwrap_or(spec.http);
    let router = crate::http::router(handle.clone());
    let http = tokio::spawn(crate::serve::serve(
        listener,
        router,
        handle.clone(),
        options.settings.request_read_timeout,
        shutdown,
    ));
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
    storage: Option<StorageHandle>,
    /// What storage has been handed, per document.
    persisted: BTreeMap<Name, Persisted>,
    settings: NodeSettings,
    /// Replies to writes of this iteration, sent by the storage thread after the fsync.
    pending_acks: Vec<Box<dyn FnOnce() + Send>>,
    /// True when a write or frame may have changed a document since the last commit.
    touched: bool,
    /// Per document, this iteration's accepted remote change bytes and the heads they lead to.
    remote_records: BTreeMap<Name, (Vec<ChangeHash>, Vec<Vec<u8>>)>,
    /// Documents whose remote batches of this iteration did not chain; `commit` falls back.
    remote_broken: BTreeSet<Name>,
    writes_this_round: usize,
    gauges_at: Instant,
    /// `?ack=N` writes waiting for their change to reach N regions.
    ack_waiters: Vec<(ChangeHash, usize, oneshot::Sender<usize>)>,
    /// This iteration's client writes, applied together by `apply_write_batch`.
    write_batch: Vec<(
        StatusWrite,
        oneshot::Sender<Result<WriteReply, GossipError>>,
    )>,
}

/// The change frames of one peer for one service in one iteration, merged into one batch.
struct MergedChanges {
    from: String,
    service: String,
    /// Eager pushes and repairs are merged apart: a push of nothing new prunes its sender.
    pushed: bool,
    changes: Vec<Vec<u8>>,
    bytes: usize,
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
            let mut frames = Vec::new();
            tokio::select! {
                frame = inbound.recv() => match frame {
                    Some(frame) => frames.push(frame),
                    None => break,
                },
                command = commands.recv() => match command {
                    Some(command) => self.handle_command(command),
                    None => break,
                },
                _ = timer => self.node.handle_timeout(now_ms()),
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
            // Group commit: take what else is queued right now (bounded), so that one fsync
            // acknowledges every write of this iteration.
            for _ in 0..INBOUND_DRAIN_MAX {
                match inbound.try_recv() {
                    Ok(frame) => frames.push(frame),
                    Err(_) => break,
                }
            }
            while self.writes_this_round < self.settings.writes_per_commit_max {
                match commands.try_recv() {
                    Ok(command) => self.handle_command(command),
                    Err(_) => break,
                }
            }
            self.apply_write_batch();
            self.handle_frames(frames);
            // Durable before anything leaves: a change a peer holds but this node lost in a
            // crash would, after the restart (a new actor), be concurrent with the node's
            // next write to the same cell and could win over that acknowledged write.
            self.commit().await;
            self.flush();
            self.answer_ack_waiters();
            if self.gauges_at.elapsed() >= GAUGE_INTERVAL {
                self.export_gauges(inbound.len(), commands.len());
            }
        }
        // Graceful stop: what was applied is written and fsynced (and its writers answered)
        // before connections close.
        self.apply_write_batch();
        self.commit().await;
        self.flush();
        if let Some(storage) = self.storage.take() {
            storage.close().await;
        }
        self.transport.close().await;
        info!(node = %self.info.id, "driver stopped");
    }

    /// Hands this iteration's frames to the gossip core, with the change frames of one peer
    /// for one service merged into one frame (pushes with pushes, repairs with repairs): Automerge applies a batch of changes in about
    /// the time of one (it walks the document once), which is what lets a node keep up with
    /// peers that each push one change per write. A merged batch is rejected whole if one
    /// change in it is bad; all of it came from the same peer, and anti-entropy repairs the
    /// rest. Frames of other kinds, and frames that do not decode, pass through unchanged
    /// (in order) so the core judges and counts them.
    fn handle_frames(&mut self, frames: Vec<Inbound>) {
        if frames.is_empty() {
            return;
        }
        self.touched = true;
        let now = now_ms();
        let mut merged: Vec<MergedChanges> = Vec::new();
        let mut others = Vec::new();
        for frame in frames {
            let (service, changes, pushed) = match codec::decode(&frame.bytes) {
                Ok(Frame::Changes { service, changes }) => (service, changes, false),
                Ok(Frame::Push { service, changes }) => (service, changes, true),
                _ => {
                    others.push(frame);
                    continue;
                }
            };
            let bytes: usize = changes.iter().map(Vec::len).sum();
            let slot = merged.iter_mut().find(|m| {
                m.from == frame.from
                    && m.service == service
                    && m.pushed == pushed
                    && m.changes.len() + changes.len() <= REMOTE_BATCH_MAX
                    && m.bytes + bytes <= FRAME_BYTES_MAX / 2
            });
            match slot {
                Some(m) => {
                    m.changes.extend(changes);
                    m.bytes += bytes;
                }
                None => merged.push(MergedChanges {
                    from: frame.from,
                    service,
                    pushed,
                    changes,
                    bytes,
                }),
            }
        }
        for frame in others {
            self.node.handle_frame(now, &frame.from, &frame.bytes);
        }
        for MergedChanges {
            from,
            service,
            pushed,
            changes,
            ..
        } in merged
        {
            let name = Name::parse("service", &service).ok();
            let before = self.heads_of(name.as_ref());
            let frame = if pushed {
                Frame::Push { service, changes }
            } else {
                Frame::Changes { service, changes }
            };
            match codec::encode(&frame) {
                Ok(bytes) => self.node.handle_frame(now, &from, &bytes),
                Err(e) => {
                    warn!(node = %self.info.id, peer = %from, error = %e, "cannot merge frames");
                    continue;
                }
            }
            if let (Some(name), Frame::Changes { changes, .. } | Frame::Push { changes, .. }) =
                (name, frame)
            {
                self.note_remote(name, before, changes);
            }
        }
    }

    fn heads_of(&self, service: Option<&Name>) -> Vec<ChangeHash> {
        service
            .and_then(|s| self.node.replica().doc(s))
            .map(|d| d.heads())
            .unwrap_or_default()
    }

    /// Remembers the bytes of an accepted remote batch so that `commit` can log them as they
    /// came instead of having Automerge rebuild them (`save_after` re-encodes changes from
    /// its op store: a fifth of a replica's CPU under load). Valid only while the batches of
    /// this iteration chain from the persisted heads; otherwise `commit` falls back.
    fn note_remote(&mut self, service: Name, before: Vec<ChangeHash>, changes: Vec<Vec<u8>>) {
        let after = self.heads_of(Some(&service));
        // Unchanged heads: the batch was rejected whole, or held nothing new.
        if after == before {
            return;
        }
        let persisted = self
            .persisted
            .get(&service)
            .map(|p| p.heads.as_slice())
            .unwrap_or(&[]);
        match self.remote_records.get_mut(&service) {
            Some((tip, records)) if *tip == before => {
                records.extend(changes);
                *tip = after;
            }
            Some(_) => {
                self.remote_records.remove(&service);
                self.remote_broken.insert(service);
            }
            None if before == persisted && !self.remote_broken.contains(&service) => {
                self.remote_records.insert(service, (after, changes));
            }
            None => {}
        }
    }

    /// Hands storage the changes of every document that moved since the last commit (local
    /// and remote alike), with the replies to this iteration's writes; the storage thread
    /// sends those after its fsync. Documents whose log grew past the snapshot policy are
    /// saved whole instead.
    async fn commit(&mut self) {
        self.writes_this_round = 0;
        if !self.touched && self.pending_acks.is_empty() {
            return;
        }
        self.touched = false;
        let policy = self.settings.snapshot;
        let mut docs = Vec::new();
        for doc in self.node.replica().docs() {
            let persisted = self.persisted.entry(doc.service().clone()).or_default();
            let heads = doc.heads();
            if heads == persisted.heads {
                continue;
            }
            let lineage = (doc.epoch(), doc.base());
            if lineage != persisted.epoch {
                // A rollover: the new epoch's document replaces snapshot and log whole, and
                // the closed epoch is kept beside it.
                persisted.epoch = lineage;
                persisted.irregular_applies = doc.irregular_applies();
                persisted.heads = heads;
                persisted.log = storage::LogSize::default();
                self.remote_records.remove(doc.service());
                // The closed epoch's writes go to the archive once, when it becomes the
                // previous one (a switch between concurrent bases of one epoch keeps it).
                let closed = doc.prev_epoch();
                let archive = if closed.is_some() && closed != persisted.archived_epoch {
                    persisted.archived_epoch = closed;
                    statusmesh_crdt::archive::writes_of(&doc.prev_writes())
                } else {
                    Vec::new()
                };
                docs.push(DocWrite {
                    service: doc.service().clone(),
                    records: Vec::new(),
                    snapshot: Some(doc.save()),
                    prev: doc.save_prev(),
                    archive,
                });
                continue;
            }
            // A batch's bytes are what it added only if nothing else entered the document:
            // a change held back from an earlier batch and released now, or a write carried
            // here, is in no batch and would be missing from the log after a restart.
            let regular = doc.irregular_applies() == persisted.irregular_applies;
            persisted.irregular_applies = doc.irregular_applies();
            let records = match self.remote_records.remove(doc.service()) {
                // Accepted remote batches that lead exactly from the persisted heads to now
                // (duplicates among them load again harmlessly).
                Some((tip, records)) if tip == heads && regular => records,
                _ => doc.save_after(&persisted.heads),
            };
            persisted.heads = heads;
            persisted.log.records += records.len() as u64;
            persisted.log.bytes += records.iter().map(|r| r.len() as u64 + 8).sum::<u64>();
            let snapshot = if persisted.log.records > policy.log_records_max
                || persisted.log.bytes > policy.log_bytes_max
            {
                persisted.log = storage::LogSize::default();
                Some(doc.save())
            } else {
                None
            };
            docs.push(DocWrite {
                service: doc.service().clone(),
                records: if snapshot.is_some() {
                    Vec::new()
                } else {
                    records
                },
                snapshot,
                prev: None,
                archive: Vec::new(),
            });
        }
        self.remote_records.clear();
        self.remote_broken.clear();
        if docs.is_empty() && self.pending_acks.is_empty() {
            return;
        }
        let batch = Batch {
            docs,
            on_durable: std::mem::take(&mut self.pending_acks),
        };
        let submitted = match &self.storage {
            Some(storage) => storage.submit(batch).await,
            None => false,
        };
        if !submitted {
            // The replies were dropped with the batch: writers see the node as unavailable,
            // never a false acknowledgement.
            warn!(node = %self.info.id, "storage is gone; writes are not acknowledged");
        }
    }

    fn export_gauges(&mut self, inbound: usize, commands: usize) {
        self.gauges_at = Instant::now();
        let node = self.info.id.clone();
        let gauge = |name: &'static str, value: usize| {
            metrics::gauge!(name, "node" => node.clone()).set(value as f64);
        };
        gauge("statusmesh_inbound_queue_depth", inbound);
        gauge("statusmesh_command_queue_depth", commands);
        gauge(
            "statusmesh_transmit_queue_depth",
            self.node.transmits_queued(),
        );
        gauge("statusmesh_event_queue_depth", self.node.events_queued());
        gauge(
            "statusmesh_storage_queue_depth",
            self.storage.as_ref().map_or(0, StorageHandle::queued),
        );
        // Each SSE stream holds one receiver of the publish channel.
        gauge("statusmesh_sse_subscribers", self.publish.receiver_count());
        gauge("statusmesh_documents", self.persisted.len());
        let stats = self.node.stats();
        let counter = |name: &'static str, value: u64| {
            metrics::counter!(name, "node" => node.clone()).absolute(value);
        };
        counter(
            "statusmesh_gossip_transmits_dropped_total",
            stats.transmits_dropped,
        );
        counter(
            "statusmesh_gossip_events_dropped_total",
            stats.events_dropped,
        );
        counter(
            "statusmesh_gossip_changes_applied_total",
            stats.changes_applied,
        );
        counter(
            "statusmesh_gossip_anti_entropy_rounds_total",
            stats.anti_entropy_rounds,
        );
        counter(
            "statusmesh_gossip_pushes_duplicate_total",
            stats.pushes_duplicate,
        );
        counter("statusmesh_gossip_grafts_sent_total", stats.grafts_sent);
        counter(
            "statusmesh_gossip_announcements_dropped_total",
            stats.announcements_dropped,
        );
        counter(
            "statusmesh_gossip_entries_swapped_total",
            stats.entries_swapped,
        );
        counter("statusmesh_epoch_rollovers_total", stats.rollovers);
        counter(
            "statusmesh_epoch_rollovers_proposed_total",
            stats.rollovers_proposed,
        );
        let (mut carried, mut stale, mut dropped) = (0, 0, 0);
        for doc in self.node.replica().docs() {
            let epoch_stats = doc.epoch_stats();
            carried += epoch_stats.carried;
            stale += epoch_stats.stale;
            dropped += epoch_stats.dropped;
            let labels = [
                ("node", node.clone()),
                ("service", doc.service().to_string()),
            ];
            metrics::gauge!("statusmesh_document_history_changes", &labels)
                .set(doc.history_len() as f64);
            metrics::gauge!("statusmesh_document_history_bytes", &labels)
                .set(doc.history_bytes() as f64);
            metrics::gauge!("statusmesh_document_epoch", &labels).set(f64::from(doc.epoch()));
        }
        counter("statusmesh_epoch_carried_writes_total", carried);
        counter("statusmesh_epoch_stale_changes_total", stale);
        counter("statusmesh_epoch_dropped_changes_total", dropped);
        self.transport.export_gauges();
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Write { write, reply } => {
                // Applied with the rest of this iteration's writes as one change per service.
                self.writes_this_round += 1;
                self.touched = true;
                self.write_batch.push((write, reply));
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
                let (initial, cursor_ahead) =
                    self.initial_events(resume.as_ref(), service.as_deref());
                if cursor_ahead {
                    self.node.sync_now(now_ms());
                }
                let _ = reply.send(Subscription {
                    initial,
                    live,
                    cursor_ahead,
                });
            }
            Command::Nodes { reply } => {
                let _ = reply.send(self.nodes());
            }
            Command::Record { service, op, reply } => {
                self.writes_this_round += 1;
                self.touched = true;
                let now = now_ms();
                let result = self.node.local_change(now, &service, |replica| match op {
                    RecordOp::OpenIncident { id, incident, text } => {
                        replica.open_incident(now, &service, &id, incident, &text)
                    }
                    RecordOp::ChangeIncident { id, change } => {
                        replica.change_incident(now, &service, &id, change)
                    }
                    RecordOp::Put(put) => replica.write_records(now, &service, &[put]),
                });
                match result {
                    Ok(change) => {
                        let value = WriteReply {
                            changed: change.is_some(),
                            cursor: self.node.replica().cursor().encode(),
                            change,
                        };
                        self.pending_acks.push(Box::new(move || {
                            let _ = reply.send(Ok(value));
                        }));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::History {
                service,
                component,
                days,
                archived,
                reply,
            } => {
                let history = self.node.replica().doc(&service).map(|doc| {
                    crate::api_records::history_json(doc, &archived, &component, days, now_ms())
                });
                let _ = reply.send(history);
            }
            Command::AwaitRegions {
                change,
                regions,
                reply,
            } => {
                let holding = self.node.regions_holding(&change).unwrap_or(0);
                if holding >= regions || self.ack_waiters.len() >= ACK_WAITERS_MAX {
                    let _ = reply.send(holding);
                } else {
                    self.ack_waiters.push((change, regions, reply));
                }
            }
        }
    }

    /// Applies this iteration's writes as one group: one Automerge change per service, one
    /// push per peer, one fsync (in `commit`) before any of them is answered.
    fn apply_write_batch(&mut self) {
        if self.write_batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.write_batch);
        let (writes, replies): (Vec<StatusWrite>, Vec<_>) = batch.into_iter().unzip();
        let now = now_ms();
        match self.node.local_write_batch(now, &writes) {
            Ok(results) => {
                let cursor = self.node.replica().cursor().encode();
                for ((changed, change), reply) in results.into_iter().zip(replies) {
                    let value = WriteReply {
                        changed,
                        cursor: cursor.clone(),
                        change,
                    };
                    // Even an unchanged write waits for the commit: the value it confirms
                    // may be from an earlier write of this same iteration.
                    self.pending_acks.push(Box::new(move || {
                        let _ = reply.send(Ok(value));
                    }));
                }
            }
            Err(_) => {
                // One write broke a rule for the whole batch (a limit): apply them one by one
                // so that each gets its own answer.
                for (write, reply) in writes.into_iter().zip(replies) {
                    match self.node.local_write(now, &write) {
                        Ok(changed) => {
                            let value = WriteReply {
                                changed,
                                cursor: self.node.replica().cursor().encode(),
                                change: if changed {
                                    self.node.last_local_change()
                                } else {
                                    None
                                },
                            };
                            self.pending_acks.push(Box::new(move || {
                                let _ = reply.send(Ok(value));
                            }));
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
            }
        }
    }

    fn answer_ack_waiters(&mut self) {
        if self.ack_waiters.is_empty() {
            return;
        }
        let node = &self.node;
        self.ack_waiters.retain_mut(|(change, regions, reply)| {
            if reply.is_closed() {
                return false;
            }
            let holding = node.regions_holding(change).unwrap_or(0);
            if holding < *regions {
                return true;
            }
            // Send needs the sender by value: swap in a closed one.
            let (closed, _) = oneshot::channel();
            let _ = std::mem::replace(reply, closed).send(holding);
            false
        });
    }

    /// What a new subscriber gets first, and whether its cursor is ahead of this node.
    fn initial_events(
        &self,
        resume: Option<&Cursor>,
        service: Option<&str>,
    ) -> (Vec<Published>, bool) {
        let replica = self.node.replica();
        if let Some(cursor) = resume {
            if let Some(events) = replica.doc_events_since(cursor) {
                let id = replica.cursor().encode();
                let events = events
                    .iter()
                    .map(|e| match e {
                        DocEvent::Status(status) => status_published(status, id.clone()),
                        other => record_published(other, id.clone()),
                    })
                    .collect();
                return (events, false);
            }
        }
        let service = service.and_then(|s| Name::parse("service", s).ok());
        let (view, cursor) = self.status(service.as_ref());
        let snapshot = vec![Published {
            kind: "snapshot",
            id: cursor,
            service: None,
            region: None,
            data: view,
            frame: std::sync::OnceLock::new(),
        }];
        // A cursor of a compacted epoch is answered by the snapshot at once; any other cursor
        // this node cannot answer is one it has not caught up with yet.
        let ahead = resume.is_some_and(|cursor| !replica.cursor_is_compacted(cursor));
        (snapshot, ahead)
    }

    fn status(&self, service: Option<&Name>) -> (serde_json::Value, String) {
        let replica = self.node.replica();
        let view = serde_json::to_value(replica.view(now_ms(), service)).unwrap_or_default();
        (view, replica.cursor().encode())
    }

    fn nodes(&self) -> serde_json::Value {
        let link_stats: BTreeMap<&str, _> = self.transport.link_stats().collect();
        let mut nodes = vec![json!({
            "id": self.info.id,
            "region": self.info.region,
            "self": true,
            "state": MemberState::Alive,
        })];
        // A region is visible when any of its nodes is alive to this node.
        let mut visible: BTreeSet<&str> = BTreeSet::from([self.info.region.as_str()]);
        for (id, peer) in self.node.peers() {
            let state = self.node.member_state(id);
            if state == MemberState::Alive || state == MemberState::Suspect {
                visible.insert(peer.region.as_str());
            }
            let stats = link_stats.get(id.as_str());
            let (lag_changes, lag_since_ms) = self.node.peer_lag(id);
            nodes.push(json!({
                "id": id,
                "region": peer.region,
                "self": false,
                "state": state,
                "last_contact_ms": peer.last_heard_ms,
                "lag_changes": lag_changes,
                "lag_oldest_ms": lag_since_ms,
                "frames_sent": stats.map(|s| s.frames_sent.load(std::sync::atomic::Ordering::Relaxed)),
                "frames_dropped": stats.map(|s| s.frames_dropped.load(std::sync::atomic::Ordering::Relaxed)),
            }));
        }
        let regions: BTreeSet<&str> = self.regions.values().map(String::as_str).collect();
        let unreachable: Vec<&str> = regions.difference(&visible).copied().collect();
        json!({
            "cluster": self.info.cluster,
            "node": self.info.id,
            "region": self.info.region,
            "nodes": nodes,
            "regions": regions,
            "unreachable_regions": unreachable,
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
                            metrics::histogram!(
                                "statusmesh_propagation_delay_ms",
                                "node" => self.info.id.clone()
                            )
                            .record(delay as f64);
                        }
                    }
                    let published = status_published(&event, cursor.encode());
                    // No subscriber is not an error.
                    let _ = self.publish.send(Arc::new(published));
                }
                Event::Record { event, cursor } => {
                    let published = record_published(&event, cursor.encode());
                    let _ = self.publish.send(Arc::new(published));
                }
                Event::Heartbeat { .. } => {}
                Event::PeerUp { peer } => {
                    info!(node = %self.info.id, %peer, "peer up");
                    metrics::gauge!("statusmesh_peer_up", "node" => self.info.id.clone(), "peer" => peer)
                        .set(1.0);
                }
                Event::PeerDown { peer } => {
                    warn!(node = %self.info.id, %peer, "peer down");
                    metrics::gauge!("statusmesh_peer_up", "node" => self.info.id.clone(), "peer" => peer)
                        .set(0.0);
                }
                Event::PeerContact { peer } => {
                    info!(node = %self.info.id, %peer, "first frame from peer");
                    let _ = self.ready.send(true);
                }
                Event::FrameRejected { from, reason } => {
                    warn!(node = %self.info.id, peer = %from, %reason, "rejected a frame");
                    metrics::counter!(
                        "statusmesh_frames_rejected_total",
                        "node" => self.info.id.clone(),
                        "peer" => from
                    )
                    .increment(1);
                }
            }
        }
    }
}

/// Pending connections the HTTP listener queues before the kernel drops new ones: a fleet of
/// subscribers reconnecting at once (after a failover) must not overflow it (tokio's default
/// is 128).
const HTTP_LISTEN_BACKLOG: u32 = 4096;

fn bind_http(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(HTTP_LISTEN_BACKLOG)
}

/// The SSE/long-poll form of an incident, maintenance or override event: `event:` is the
/// kind, `data:` the record as JSON.
pub fn record_published(event: &DocEvent, id: String) -> Published {
    let kind = match event {
        DocEvent::Status(_) => "status",
        DocEvent::Incident(_) => "incident",
        DocEvent::Maintenance(_) => "maintenance",
        DocEvent::Override(_) => "override",
    };
    let mut data = serde_json::to_value(event).unwrap_or_default();
    if let Some(map) = data.as_object_mut() {
        map.remove("kind");
    }
    Published {
        kind,
        id,
        service: Some(event.service().to_string()),
        region: None,
        data,
        frame: std::sync::OnceLock::new(),
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
        frame: std::sync::OnceLock::new(),
    }
}
