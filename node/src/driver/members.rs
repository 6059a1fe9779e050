//! Members that join and leave while the node runs: the transport's notices handed to the
//! gossip core (which owns the membership rule, `statusmesh_gossip` `members.rs`), the links
//! and region map kept in step, and this node's own leave.

use statusmesh_gossip::Peer;
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::{now_ms, Driver, NOTICES_QUEUE_MAX};
use crate::transport::MemberNotice;

impl Driver {
    /// Applies the notices the transport queued (bounded per iteration).
    pub(super) fn handle_notices(&mut self) {
        for _ in 0..NOTICES_QUEUE_MAX {
            let Ok(notice) = self.notices.try_recv() else {
                break;
            };
            match notice {
                MemberNotice::Joined { id, region, addr } => {
                    let peer = Peer {
                        id: id.clone(),
                        region: region.clone(),
                    };
                    match self.node.add_member(now_ms(), peer) {
                        Ok(new) => {
                            // A member seen again (a new connection) may come from a new address.
                            if new {
                                info!(node = %self.info.id, member = %id, %region, %addr, "member joined");
                                metrics::counter!("statusmesh_members_joined_total", "node" => self.info.id.clone())
                                    .increment(1);
                            }
                            self.transport.add_link(&id, addr);
                            self.regions.insert(id, region);
                        }
                        Err(error) => {
                            warn!(node = %self.info.id, member = %id, %error, "member refused");
                        }
                    }
                }
                MemberNotice::Left { id } => match self.node.remove_member(&id) {
                    Ok(_) => info!(node = %self.info.id, member = %id, "member left"),
                    Err(error) => {
                        warn!(node = %self.info.id, member = %id, %error, "a leave not taken");
                    }
                },
            }
        }
    }

    /// Drops what the driver keeps of a member the core removed.
    pub(super) fn drop_member(&mut self, peer: &str) {
        info!(node = %self.info.id, member = %peer, "member removed");
        metrics::counter!("statusmesh_members_removed_total", "node" => self.info.id.clone())
            .increment(1);
        self.transport.remove_link(peer);
        self.regions.remove(peer);
    }

    /// `statusmesh leave`: a joined node announces it leaves; the loop then stops and the
    /// transport closes saying so. A listed node is refused (it is a voter).
    pub(super) fn start_leave(&mut self, reply: oneshot::Sender<Result<(), String>>) {
        if self.node.is_voter() {
            let _ = reply.send(Err(format!(
                "node {} is listed in regions.toml (a voter): remove it from regions.toml instead",
                self.info.id
            )));
            return;
        }
        if self.leaving.is_some() {
            let _ = reply.send(Err("already leaving".to_owned()));
            return;
        }
        self.node.leave(now_ms());
        self.leaving = Some(reply);
    }
}
