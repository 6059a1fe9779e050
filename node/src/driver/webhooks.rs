//! What the webhook dispatcher asks of the driver: every subscription with how far its
//! deliveries got, per followed service, and the mesh's live members (the input of the
//! rendezvous rule that names each (subscription, service)'s sender).

use statusmesh_crdt::webhooks::{Webhook, WebhookProgress};
use statusmesh_crdt::{Cursor, Name};
use statusmesh_gossip::rendezvous;

use super::Driver;

/// One subscription as one of its services' documents holds it.
#[derive(Debug, Clone)]
pub struct HookEntry {
    pub service: Name,
    pub id: Name,
    pub webhook: Webhook,
    pub progress: Option<WebhookProgress>,
}

/// The subscriptions and the live members, as the driver sees them now.
#[derive(Debug, Clone, Default)]
pub struct WebhookPlan {
    /// This node's id.
    pub me: String,
    /// Every member this node considers alive, itself included, sorted.
    pub members: Vec<String>,
    /// Every (service, subscription) pair, by service then id.
    pub hooks: Vec<HookEntry>,
    /// The (subscription, service) pairs this node sends, by the core's sender rule
    /// (`statusmesh_gossip::webhooks::assignments`).
    pub assigned: std::collections::BTreeSet<(Name, Name)>,
    /// The replica's cursor the plan was read at.
    pub cursor: Cursor,
}

impl Driver {
    pub(super) fn webhook_plan(&self) -> WebhookPlan {
        let hooks = self
            .node
            .replica()
            .docs()
            .flat_map(|doc| {
                let service = doc.service().clone();
                let mut progress = doc.webhook_progress();
                doc.webhooks()
                    .into_iter()
                    .map(move |(id, webhook)| HookEntry {
                        service: service.clone(),
                        progress: progress.remove(&id),
                        id,
                        webhook,
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let assigned = statusmesh_gossip::webhooks::assignments(&self.node)
            .into_iter()
            .map(|a| (a.id, a.service))
            .collect();
        WebhookPlan {
            assigned,
            me: self.node.id().to_owned(),
            members: rendezvous::live_members(&self.node),
            hooks,
            cursor: self.node.replica().cursor(),
        }
    }
}

impl WebhookPlan {
    /// The member that sends subscription `id`'s events of `service`; `None` with no live
    /// member (never: this node is one).
    pub fn sender_of(&self, id: &str, service: &str) -> Option<String> {
        statusmesh_gossip::webhooks::sender_of(&self.members, id, service).map(str::to_owned)
    }

    /// The entries of subscription `id`, one per service whose document holds it.
    pub fn entries_of(&self, id: &str) -> Vec<&HookEntry> {
        self.hooks.iter().filter(|e| e.id.as_str() == id).collect()
    }
}
