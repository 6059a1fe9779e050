//! The driver: one task owns the gossip state machine and everything it holds.
//!
//! Like quinn's `ConnectionDriver`: a `select!` over inbound frames, commands from the HTTP
//! side, shutdown and one re-armed timer from `poll_timeout`; after every input it drains
//! `poll_transmit` (to the transport) and `poll_event` (to SSE subscribers).
//!
//! This module holds the task and its loop; beside it:
//! - [`handle`]: [`NodeHandle`], the commands the HTTP side sends, and their answers.
//! - [`published`]: events as SSE and long-poll send them.
//! - `writes`: client writes and record changes into the core's group commit; `?ack=N`.
//! - `commit`: handing storage what changed (with the accepted-batch shortcut).
//! - `resume`: subscriptions, and subscribers waiting for changes their cursor names.
//! - `views`: the JSON reads (status, nodes, history); `probes`: the prober's plan.
//! - `gauges`: queue depths and core counters as metrics.
//!
//! Every protocol decision is the core's (`handle_frames`, `local_writes`, `resume`): the
//! driver is IO, timers, storage and metrics. It never imports the HTTP side: `http` holds
//! a [`NodeHandle`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use statusmesh_crdt::{ActorId, ChangeHash, Name, Replica, ServiceDoc};
use statusmesh_gossip::{
    Config as GossipConfig, Event, GossipError, InboundFrame, LocalWrite, Node, Peer,
};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{info, warn};

mod commit;
mod gauges;
pub mod handle;
mod members;
mod probes;
pub mod published;
mod resume;
mod views;
mod webhooks;
mod writes;

use commit::Persisted;
pub use handle::{
    NodeHandle, NodeInfo, RecordOp, Subscription, Unavailable, WriteReply, ACK_WAITERS_MAX,
};
pub use probes::ProbePlan;
pub use published::{record_published, status_published, transition_published, Published};
pub use resume::RESUMES_WAITING_MAX;
use views::history_json;
pub use webhooks::{HookEntry, WebhookPlan};

use crate::settings::NodeSettings;
use crate::start::JoinOptions;
use crate::storage::{LogSize, StorageHandle};
use crate::transport::{Inbound, MemberNotice, Transport};
use handle::Command;
use resume::WaitingResume;

/// Commands queued from HTTP handlers to the driver.
pub const COMMAND_QUEUE_MAX: usize = 1024;
/// Frames queued from the transport to the driver; a full queue pushes back on peers.
pub const INBOUND_QUEUE_MAX: usize = 8192;
/// Events buffered for SSE subscribers by default (`--sse-ring-events`); a subscriber that
/// falls further behind catches up from the document's history.
pub const PUBLISH_BUFFER: usize = 4096;
/// Frames taken from the inbound queue per loop iteration after the first, so that one
/// commit covers them all without starving commands.
pub const INBOUND_DRAIN_MAX: usize = 1024;
/// Membership notices queued from the transport to the driver.
pub const NOTICES_QUEUE_MAX: usize = 1024;
/// How often queue depths and similar gauges are exported.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// Milliseconds since the Unix epoch: the wall clock that the pure core is given.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What the driver is started with: the loaded documents, the running storage thread and
/// transport, and the node's static facts.
#[derive(Debug)]
pub struct Launch {
    pub info: NodeInfo,
    /// The gossip core's configuration; its SWIM generation is set from `incarnation`.
    pub gossip: GossipConfig,
    /// Every node of the topology, this one included.
    pub peers: Vec<Peer>,
    /// Node id to region, for every node of the topology.
    pub regions: BTreeMap<String, String>,
    /// This start's incarnation and actor (see `storage::open`).
    pub incarnation: u64,
    pub actor: ActorId,
    /// The documents on disk, and the size of each one's log.
    pub docs: Vec<ServiceDoc>,
    pub logs: BTreeMap<Name, LogSize>,
    pub storage: StorageHandle,
    pub transport: Transport,
    pub inbound: mpsc::Receiver<Inbound>,
    pub settings: NodeSettings,
    pub shutdown: watch::Receiver<bool>,
    /// Set for a node not listed in the topology (`peers` are then its seeds, all listed).
    pub join: Option<JoinOptions>,
    /// Members that joined or left, from the transport.
    pub notices: mpsc::Receiver<MemberNotice>,
    /// Set true once the node left the mesh.
    pub left: watch::Sender<bool>,
}

/// Builds the gossip core from what was loaded and spawns the task that owns it; returns
/// the handle the HTTP side uses and the task (it ends after shutdown, once what was
/// pending is written and fsynced).
pub fn spawn(launch: Launch) -> (NodeHandle, tokio::task::JoinHandle<()>) {
    let Launch {
        info,
        gossip,
        peers,
        regions,
        incarnation,
        actor,
        docs,
        logs,
        storage,
        transport,
        inbound,
        settings,
        shutdown,
        join,
        notices,
        left,
    } = launch;
    let mut replica = Replica::from_docs(&info.id, actor, docs);
    replica.set_regions(
        info.regions
            .iter()
            .filter_map(|r| Name::parse("region", r).ok())
            .collect(),
    );
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
    // A node without peers is ready at once.
    let alone = peers.iter().all(|peer| peer.id == info.id);
    let (ready_tx, ready_rx) = watch::channel(alone);
    // Each start is a new life in SWIM: peers that declared the last one down take it.
    let gossip = gossip.with_incarnation(incarnation);
    let node = match join {
        Some(join) => Node::new_joined(
            info.id.clone(),
            join.region,
            gossip,
            peers,
            replica,
            rand::random(),
        )
        .with_seeds(join.seeds),
        None => Node::new(info.id.clone(), gossip, peers, replica, rand::random()),
    };
    let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE_MAX);
    let (publish_tx, _) = broadcast::channel(settings.sse_ring_events.max(1));
    let info = Arc::new(info);
    let handle = NodeHandle::new(commands_tx, info.clone(), ready_rx);
    let driver = Driver {
        node,
        transport,
        publish: publish_tx,
        ready: ready_tx,
        regions,
        info,
        storage: Some(storage),
        persisted,
        settings,
        pending_acks: Vec::new(),
        touched: false,
        remote_records: BTreeMap::new(),
        remote_broken: BTreeSet::new(),
        writes_this_round: 0,
        gauges_at: Instant::now(),
        ack_waiters: Vec::new(),
        write_batch: Vec::new(),
        resumes: Vec::new(),
        notices,
        left,
        leaving: None,
    };
    let task = tokio::spawn(driver.run(inbound, commands_rx, shutdown));
    (handle, task)
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
    /// This iteration's client writes and record changes, applied together (in order) by
    /// `apply_write_batch`.
    write_batch: Vec<(LocalWrite, oneshot::Sender<Result<WriteReply, GossipError>>)>,
    /// Subscribers whose cursor names changes this node lacks (at most
    /// [`RESUMES_WAITING_MAX`]).
    resumes: Vec<WaitingResume>,
    /// Members that joined or left, from the transport (`members.rs`).
    notices: mpsc::Receiver<MemberNotice>,
    left: watch::Sender<bool>,
    /// The answer to a `leave`, once this node announced it.
    leaving: Option<oneshot::Sender<Result<(), String>>>,
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
            // Waiting subscribers are asked about again after every iteration, and at the
            // latest when the core said to.
            let resume_at = self.next_resume_at();
            let resume_timer = tokio::time::sleep(Duration::from_millis(
                resume_at.map_or(0, |t| t.saturating_sub(now)),
            ));
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
                _ = resume_timer, if resume_at.is_some() => {}
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
            // Before the frames: a joined member's notice precedes its first frame.
            self.handle_notices();
            self.handle_frames(frames);
            // Durable before anything leaves: a change a peer holds but this node lost in a
            // crash would, after the restart (a new actor), be concurrent with the node's
            // next write to the same cell and could win over that acknowledged write.
            self.commit().await;
            self.flush();
            self.answer_ack_waiters();
            self.answer_waiting_resumes();
            if self.gauges_at.elapsed() >= GAUGE_INTERVAL {
                self.export_gauges(inbound.len(), commands.len());
            }
            if self.leaving.is_some() {
                break;
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
        if let Some(reply) = self.leaving.take() {
            let _ = reply.send(Ok(()));
            self.transport.leave().await;
            info!(node = %self.info.id, "left the mesh");
            let _ = self.left.send(true);
        }
        self.transport.close().await;
        info!(node = %self.info.id, "driver stopped");
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Write { write, reply } => {
                // Applied with the rest of this iteration's writes as one change per service.
                self.writes_this_round += 1;
                self.touched = true;
                self.write_batch.push((LocalWrite::Status(write), reply));
            }
            Command::Status { service, reply } => {
                let _ = reply.send(self.status(service.as_ref()));
            }
            Command::Subscribe {
                resume,
                service,
                delivery,
                reply,
            } => self.subscribe(resume, service, delivery, reply),
            Command::Leave { reply } => self.start_leave(reply),
            Command::Nodes { reply } => {
                let _ = reply.send(self.nodes());
            }
            Command::ProbePlan { since, reply } => {
                let _ = reply.send(self.probe_plan(since));
            }
            Command::WebhookPlan { reply } => {
                let _ = reply.send(self.webhook_plan());
            }
            Command::ReloadIdentity { identity, reply } => {
                let reloaded = self
                    .transport
                    .reload(&identity)
                    .map(|()| self.transport.fingerprint().to_owned())
                    .map_err(|e| e.to_string());
                let _ = reply.send(reloaded);
            }
            Command::Maintenance { service, reply } => {
                let windows = self.node.replica().doc(&service).map(|d| d.maintenance());
                let _ = reply.send(windows.unwrap_or_default());
            }
            Command::Record { service, op, reply } => {
                // Applied in order with the rest of this iteration's writes.
                self.writes_this_round += 1;
                self.touched = true;
                self.write_batch
                    .push((LocalWrite::Record { service, op }, reply));
            }
            Command::History {
                service,
                component,
                days,
                archived,
                reply,
            } => {
                let history = self
                    .node
                    .replica()
                    .doc(&service)
                    .map(|doc| history_json(doc, &archived, &component, days, now_ms()));
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
            Command::Flags { reply } => {
                let set =
                    statusmesh_crdt::flags::FlagSet::from_replica(self.node.replica(), now_ms());
                let _ = reply.send(set);
            }
            Command::FlagHistory {
                service,
                key,
                reply,
            } => {
                let history = self
                    .node
                    .replica()
                    .doc(&service)
                    .map(|doc| statusmesh_crdt::flags::flag_history(doc, &key));
                let _ = reply.send(history);
            }
        }
    }

    /// Hands this iteration's frames to the core, which merges the change frames of one peer
    /// for one service into one batch; the batches it accepted feed the storage shortcut.
    fn handle_frames(&mut self, frames: Vec<Inbound>) {
        if frames.is_empty() {
            return;
        }
        self.touched = true;
        let frames = frames
            .into_iter()
            .map(|Inbound { from, bytes }| InboundFrame { from, bytes })
            .collect();
        for batch in self.node.handle_frames(now_ms(), frames) {
            self.note_remote(batch);
        }
    }

    fn flush(&mut self) {
        while let Some(transmit) = self.node.poll_transmit() {
            self.transport.send(&transmit.to, transmit.bytes);
        }
        self.publish_events();
    }

    /// Hands the core's events to subscribers (and logs and counts the rest). Also called
    /// before a subscriber is answered: its first events are computed from the state they
    /// describe, so they must be out before it takes the live feed (or it gets them twice).
    fn publish_events(&mut self) {
        while let Some(event) = self.node.poll_event() {
            match event {
                Event::Status {
                    event,
                    cursor,
                    transition,
                    coalesced,
                } => {
                    if let (Some(origin_ms), Some(origin)) =
                        (event.changed_at_ms, &event.origin_node)
                    {
                        if origin != &self.info.id {
                            let delay = now_ms().saturating_sub(origin_ms);
                            metrics::histogram!(
                                "statusmesh_propagation_delay_seconds",
                                "node" => self.info.id.clone()
                            )
                            .record(delay as f64 / 1_000.0);
                        }
                    }
                    let mut published = status_published(
                        &event,
                        cursor.encode(),
                        transition.as_deref(),
                        coalesced.as_ref(),
                    );
                    self.annotate_agreement(&mut published, &event);
                    // No subscriber is not an error.
                    let _ = self.publish.send(Arc::new(published));
                }
                Event::Record {
                    event,
                    cursor,
                    transition,
                    coalesced,
                } => {
                    let published = record_published(
                        &event,
                        cursor.encode(),
                        transition.as_deref(),
                        coalesced.as_ref(),
                    );
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
                Event::MemberRemoved { peer } => self.drop_member(&peer),
                Event::PeerContact { peer } => {
                    info!(node = %self.info.id, %peer, "first frame from peer");
                    let _ = self.ready.send(true);
                }
                Event::VersionRefused {
                    peer,
                    frame_version,
                    ours,
                    theirs,
                    first,
                } => {
                    let theirs = theirs.map_or_else(|| "unknown".to_owned(), |r| r.to_string());
                    if first {
                        warn!(
                            node = %self.info.id,
                            %peer,
                            frame_version,
                            ours = %ours,
                            theirs = %theirs,
                            "refused a peer outside this node's version ranges (frame not read)"
                        );
                    }
                    metrics::counter!(
                        "statusmesh_gossip_version_refused_total",
                        "node" => self.info.id.clone(),
                        "peer" => peer,
                        "ours" => ours.to_string(),
                        "theirs" => theirs
                    )
                    .increment(1);
                }
                Event::FrameRejected { from, error } => {
                    warn!(node = %self.info.id, peer = %from, %error, "rejected a frame");
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
