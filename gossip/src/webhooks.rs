//! Which webhook deliveries this node sends, and from where: the sender rule both drivers
//! apply, read from the node's own replica and its own view of the live members.
//!
//! A subscription is a record of each service it follows (`hook/<id>`), its progress the
//! record beside it (`hookp/<id>`, the service's heads after the last delivered transition).
//! For every (subscription, service) pair the replica holds, the sender is the owner of
//! [`rendezvous::webhook_key`] among [`rendezvous::live_members`] as this node sees them.
//!
//! The flow of a sender:
//! 1. [`assignments`] lists the pairs this node sends now, each with its replicated progress.
//! 2. A node that becomes the sender of a pair starts at that progress (its own position
//!    while it stays the sender), and asks the core for what came after it with the cursor
//!    [`resume_cursor`] builds (`Node::resume` or `Replica::transitions_since`).
//! 3. After delivering each transition it writes the progress record as a local write; when
//!    it dies, the next member of the ranking takes over from the replicated progress.

use statusmesh_crdt::webhooks::WebhookProgress;
use statusmesh_crdt::{Cursor, Name};

use crate::node::{Node, NodeId};
use crate::rendezvous;

/// One (subscription, service) this node sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub id: Name,
    pub service: Name,
    /// The progress record the replica holds for the pair; `None` before one replicated.
    pub progress: Option<WebhookProgress>,
}

/// The member of `members` that sends subscription `id`'s events of `service`.
pub fn sender_of<'a>(members: &'a [NodeId], id: &str, service: &str) -> Option<&'a str> {
    let refs: Vec<&str> = members.iter().map(String::as_str).collect();
    rendezvous::owner(&rendezvous::webhook_key(id, service), &refs)
        .and_then(|owner| members.iter().find(|m| m.as_str() == owner))
        .map(String::as_str)
}

/// Every (subscription, service) this node sends by the rendezvous rule on its own view, by
/// service then id. Disabled subscriptions are sent by no one.
pub fn assignments(node: &Node) -> Vec<Assignment> {
    let members = rendezvous::live_members(node);
    let mut out = Vec::new();
    for doc in node.replica().docs() {
        let service = doc.service();
        let mut progress = doc.webhook_progress();
        for (id, webhook) in doc.webhooks() {
            if webhook.disabled.is_some() {
                continue;
            }
            if sender_of(&members, id.as_str(), service.as_str()) != Some(node.id()) {
                continue;
            }
            out.push(Assignment {
                progress: progress.remove(&id),
                id,
                service: service.clone(),
            });
        }
    }
    out
}

/// The cursor to ask the core with for what came after `position` in `service`: the
/// replica's cursor now (so other documents contribute nothing) with `service` at
/// `position`'s heads and epoch.
pub fn resume_cursor(replica_cursor: &Cursor, service: &Name, position: &Cursor) -> Cursor {
    let mut cursor = replica_cursor.clone();
    let heads = position.heads_of(service).to_vec();
    match position.epoch_of(service) {
        Some(epoch) => cursor.set_in_epoch(service.clone(), heads, epoch),
        None => cursor.set(service.clone(), heads),
    }
    cursor
}

#[cfg(test)]
mod tests {
    use super::*;
    use statusmesh_crdt::ChangeHash;
    use std::collections::BTreeMap;

    fn name(s: &str) -> Name {
        Name::parse("service", s).expect("name")
    }

    #[test]
    fn the_resume_cursor_moves_only_the_followed_service() {
        let a = ChangeHash([1; 32]);
        let b = ChangeHash([2; 32]);
        let c = ChangeHash([3; 32]);
        let now = Cursor::new(BTreeMap::from([
            (name("checkout"), vec![a]),
            (name("search"), vec![b]),
        ]));
        let position = Cursor::new(BTreeMap::from([(name("checkout"), vec![c])]));
        let cursor = resume_cursor(&now, &name("checkout"), &position);
        assert_eq!(cursor.heads_of(&name("checkout")), &[c]);
        assert_eq!(cursor.heads_of(&name("search")), &[b]);
    }
}
