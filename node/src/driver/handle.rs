//! The driver's handle: what the HTTP side may ask of the one task that owns the core.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use statusmesh_crdt::{ChangeHash, Cursor, Delivery, Name, StatusWrite};
use statusmesh_gossip::GossipError;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::published::Published;
use crate::settings::Tokens;

/// A new subscription: what to send first, then the live feed.
#[derive(Debug)]
pub struct Subscription {
    pub initial: Vec<Published>,
    pub live: broadcast::Receiver<Arc<Published>>,
    /// Asked with [`statusmesh_crdt::Delivery::Pages`], `initial` is one page and more came
    /// after it: ask again from its last event before following `live`.
    pub more: bool,
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

/// A change to an incident, a maintenance window or an override (the core's type, kept
/// reachable here for the HTTP side).
pub use statusmesh_gossip::RecordOp;

/// Most `?ack=N` writes waiting at once; more are answered at once with what is known.
pub const ACK_WAITERS_MAX: usize = 10_000;

/// What a handle asks of the driver; each carries the channel of its answer.
pub(super) enum Command {
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
        delivery: Delivery,
        reply: oneshot::Sender<Subscription>,
    },
    Nodes {
        reply: oneshot::Sender<serde_json::Value>,
    },
    /// Leave the mesh and stop (`statusmesh leave`); refused for a listed node.
    Leave {
        reply: oneshot::Sender<Result<(), String>>,
    },
    ProbePlan {
        since: Option<Cursor>,
        reply: oneshot::Sender<super::ProbePlan>,
    },
    WebhookPlan {
        reply: oneshot::Sender<super::WebhookPlan>,
    },
    ReloadIdentity {
        identity: Box<crate::certs::NodeIdentity>,
        reply: oneshot::Sender<Result<String, String>>,
    },
    Maintenance {
        service: Name,
        reply: oneshot::Sender<Vec<(Name, statusmesh_crdt::Maintenance)>>,
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
    Flags {
        reply: oneshot::Sender<statusmesh_crdt::flags::FlagSet>,
    },
    FlagHistory {
        service: Name,
        key: Name,
        reply: oneshot::Sender<Option<Vec<statusmesh_crdt::flags::FlagHistoryEntry>>>,
    },
}

/// Static facts about the node, shared with the HTTP side.
#[derive(Debug)]
pub struct NodeInfo {
    pub id: String,
    pub region: String,
    pub cluster: String,
    /// The topology's regions: the only regions an observation may name.
    pub regions: std::collections::BTreeSet<String>,
    /// Who may write.
    pub tokens: Tokens,
    /// How long a client may take to send a request body (see `NodeSettings`).
    pub request_read_timeout: Duration,
    /// The data directory: the history endpoint reads a document's archive from it.
    pub data_dir: std::path::PathBuf,
    /// Each node's HTTP address as the topology gives it (node id → address), so that
    /// `/v1/nodes` can tell a page where else it can read from.
    pub http_addrs: std::collections::BTreeMap<String, std::net::SocketAddr>,
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
    pub(super) fn new(
        commands: mpsc::Sender<Command>,
        info: Arc<NodeInfo>,
        ready: watch::Receiver<bool>,
    ) -> Self {
        Self {
            commands,
            info,
            ready,
        }
    }

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
    /// A cursor that names changes this node lacks is answered once they arrive (the node has
    /// asked its peers), or with a snapshot after `statusmesh_gossip::RESUME_WAIT_MS`.
    /// `delivery` says whether the client wants every transition or the state only.
    pub async fn subscribe(
        &self,
        resume: Option<Cursor>,
        service: Option<String>,
        delivery: Delivery,
    ) -> Result<Subscription, Unavailable> {
        self.ask(|reply| Command::Subscribe {
            resume,
            service,
            delivery,
            reply,
        })
        .await
    }

    /// Membership and replication state.
    pub async fn nodes(&self) -> Result<serde_json::Value, Unavailable> {
        self.ask(|reply| Command::Nodes { reply }).await
    }

    /// Makes this node leave the mesh: it announces it, closes its connections saying so and
    /// stops. `Err` names why it may not (a node listed in regions.toml is a voter).
    pub async fn leave(&self) -> Result<Result<(), String>, Unavailable> {
        self.ask(|reply| Command::Leave { reply }).await
    }

    /// Every check and the live members of each region, for the prober (and
    /// `GET /v1/checks`); the checks are left out when nothing changed since `since`.
    pub async fn probe_plan(&self, since: Option<Cursor>) -> Result<super::ProbePlan, Unavailable> {
        self.ask(|reply| Command::ProbePlan { since, reply }).await
    }

    /// Every webhook subscription with its progress, and the mesh's live members, for the
    /// dispatcher and `/v1/webhooks`.
    pub async fn webhook_plan(&self) -> Result<super::WebhookPlan, Unavailable> {
        self.ask(|reply| Command::WebhookPlan { reply }).await
    }

    /// Makes `identity` the node's TLS identity between nodes (SIGHUP); the new
    /// certificate's SHA-256, or why nothing changed.
    pub async fn reload_identity(
        &self,
        identity: crate::certs::NodeIdentity,
    ) -> Result<Result<String, String>, Unavailable> {
        self.ask(|reply| Command::ReloadIdentity {
            identity: Box::new(identity),
            reply,
        })
        .await
    }

    /// Every maintenance window of `service` (past, present and to come), by id.
    pub async fn maintenance(
        &self,
        service: Name,
    ) -> Result<Vec<(Name, statusmesh_crdt::Maintenance)>, Unavailable> {
        self.ask(|reply| Command::Maintenance { service, reply })
            .await
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

    /// Every feature flag, with the availability they are evaluated against now.
    pub async fn flags(&self) -> Result<statusmesh_crdt::flags::FlagSet, Unavailable> {
        self.ask(|reply| Command::Flags { reply }).await
    }

    /// A flag's writes from its document's history; `None` when the service is unknown.
    pub async fn flag_history(
        &self,
        service: Name,
        key: Name,
    ) -> Result<Option<Vec<statusmesh_crdt::flags::FlagHistoryEntry>>, Unavailable> {
        self.ask(|reply| Command::FlagHistory {
            service,
            key,
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
