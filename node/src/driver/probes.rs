//! What the prober asks of the driver: every check of every service, and the members of
//! this node's region that SWIM considers alive (the input of the rendezvous rule).

use std::collections::BTreeMap;

use serde_json::json;
use statusmesh_crdt::checks::Check;
use statusmesh_crdt::{Cursor, Name, StatusEvent};
use statusmesh_gossip::rendezvous;

use super::{now_ms, Driver, Published};

/// The checks and this region's live members, as the driver sees them now.
#[derive(Debug, Clone, Default)]
pub struct ProbePlan {
    /// This node's id and region.
    pub me: String,
    pub region: String,
    /// Live members of this region, this node included, sorted.
    pub members: Vec<String>,
    /// Live members of every region of the topology, as this node sees them.
    pub members_by_region: BTreeMap<String, Vec<String>>,
    /// Every check, by (service, component); `None` when no document changed since the
    /// cursor the asker named (reading every check parses each, which the prober asks for
    /// four times a second).
    pub checks: Option<Vec<(Name, Name, Check)>>,
    /// The replica's cursor the checks were read at.
    pub cursor: Cursor,
}

impl Driver {
    /// Adds `agreement` (the component's k-of-n status and advisories as of now) to a live
    /// status event of a probe-backed component, so that a stream shows a region that sees
    /// worse than the rest without re-reading the view. Replayed events do not get it: it is
    /// a reading of now, not of the transition.
    pub(super) fn annotate_agreement(&self, published: &mut Published, event: &StatusEvent) {
        let agreement =
            self.node
                .replica()
                .probe_agreement(now_ms(), &event.service, &event.component);
        if let (Some((status, advisories)), Some(map)) = (agreement, published.data.as_object_mut())
        {
            map.insert(
                "agreement".into(),
                json!({ "status": status, "advisories": advisories }),
            );
        }
    }

    pub(super) fn probe_plan(&self, since: Option<Cursor>) -> ProbePlan {
        let region = self.node.region().to_owned();
        let cursor = self.node.replica().cursor();
        let checks = (since.as_ref() != Some(&cursor)).then(|| {
            self.node
                .replica()
                .docs()
                .flat_map(|doc| {
                    let service = doc.service().clone();
                    doc.checks()
                        .into_iter()
                        .map(move |(component, check)| (service.clone(), component, check))
                })
                .collect()
        });
        let members_by_region = self
            .regions
            .values()
            .map(|r| (r.clone(), rendezvous::live_members_in(&self.node, r)))
            .collect();
        ProbePlan {
            me: self.node.id().to_owned(),
            members_by_region,
            members: rendezvous::live_members_in(&self.node, &region),
            region,
            checks,
            cursor,
        }
    }
}

impl ProbePlan {
    /// The member that probes (service, component) from `region`, as this node sees the
    /// region's live members; `None` when none of them is alive to it.
    pub fn prober_of(&self, service: &str, component: &str, region: &str) -> Option<String> {
        let members = self.members_by_region.get(region)?;
        let refs: Vec<&str> = members.iter().map(String::as_str).collect();
        let key = rendezvous::probe_key(service, component, region);
        rendezvous::owner(&key, &refs).map(str::to_owned)
    }
}
