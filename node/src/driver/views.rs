//! The JSON reads the driver answers: status, nodes and history.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;
use statusmesh_crdt::archive::ArchivedWrite;
use statusmesh_crdt::{history, Name, ServiceDoc};
use statusmesh_gossip::MemberState;

use super::{now_ms, Driver};

impl Driver {
    /// The status view (all services or one) and the cursor it reflects.
    pub(super) fn status(&self, service: Option<&Name>) -> (serde_json::Value, String) {
        let replica = self.node.replica();
        let view = serde_json::to_value(replica.view(now_ms(), service)).unwrap_or_default();
        (view, replica.cursor().encode())
    }

    pub(super) fn nodes(&self) -> serde_json::Value {
        let link_stats: BTreeMap<&str, _> = self.transport.link_stats().collect();
        let mut nodes = vec![json!({
            "id": self.info.id,
            "region": self.info.region,
            "self": true,
            "state": MemberState::Alive,
            "certificate_sha256": self.transport.fingerprint(),
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
                "connects": stats.map(|s| s.connects.load(std::sync::atomic::Ordering::Relaxed)),
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
}

/// The history answer of `component`: its timeline and daily uptime over the last `days`
/// (1 to 365) up to `now_ms`, over the archived writes of closed epochs and the live epoch
/// of `doc`. The newest 200 transitions are listed, newest first.
///
/// A day before the component's first observation (`first_observed_ms`) knew nothing: its
/// `uptime` is null, and `days_with_data` counts only the days that knew something, so a
/// component first seen today is not shown 89 days of zero uptime.
pub fn history_json(
    doc: &ServiceDoc,
    archived: &[ArchivedWrite],
    component: &Name,
    days: u64,
    now_ms: u64,
) -> serde_json::Value {
    const DAY_MS: u64 = 24 * 3600 * 1000;
    let days = days.clamp(1, 365);
    // Whole days, so that the bars line up with calendar days (UTC).
    let to = (now_ms / DAY_MS + 1) * DAY_MS;
    let from = to.saturating_sub(days * DAY_MS);
    let transitions = history::timeline_with(doc, archived, component);
    let buckets =
        history::uptime_buckets_with(doc, archived, component, from, to.min(now_ms), DAY_MS);
    let whole = history::uptime_with(doc, archived, component, from, now_ms);
    let overall = whole.last();
    let first_observed_ms = transitions.iter().map(|t| t.at_ms).min();
    let days_with_data = buckets.iter().filter(|d| d.known_ms > 0).count();
    json!({
        "service": doc.service(),
        "component": component,
        "from_ms": from,
        "to_ms": now_ms,
        "uptime": overall.and_then(|u| u.uptime),
        "first_observed_ms": first_observed_ms,
        "days_with_data": days_with_data,
        "days": buckets,
        "regions": whole.iter().filter(|u| u.region.is_some()).collect::<Vec<_>>(),
        "transitions": transitions.iter().rev().take(200).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use statusmesh_crdt::{Observation, State, StatusWrite};

    const DAY_MS: u64 = 24 * 3600 * 1000;

    #[test]
    fn days_before_the_first_observation_are_no_data_and_not_counted() {
        let mut doc = ServiceDoc::new(
            Name::parse("service", "web").expect("name"),
            automerge::ActorId::from(vec![7; 16]),
        );
        let first_ms = 100 * DAY_MS + 3_600_000;
        let write = StatusWrite::parse(
            "web",
            "api",
            "eu-west",
            Observation {
                state: State::MajorOutage,
                message: "down".into(),
                reporter: "probe".into(),
                observed_at_ms: first_ms,
                ttl_ms: 60_000,
            },
        )
        .expect("write");
        doc.put_observation(first_ms, "n1", &write).expect("put");
        let api = Name::parse("component", "api").expect("name");
        let history = history_json(&doc, &[], &api, 5, first_ms + 60_000);
        assert_eq!(history["first_observed_ms"], first_ms);
        assert_eq!(history["days_with_data"], 1);
        let days = history["days"].as_array().expect("days");
        assert_eq!(days.len(), 5);
        assert!(days[..4].iter().all(|d| d["uptime"].is_null()));
        // Over the one day with data, not over five days of which four are unknown.
        assert_eq!(history["uptime"], 0.0);
        assert_eq!(days[4]["uptime"], 0.0);

        let never = Name::parse("component", "other").expect("name");
        let empty = history_json(&doc, &[], &never, 5, first_ms);
        assert!(empty["first_observed_ms"].is_null());
        assert_eq!(empty["days_with_data"], 0);
        assert!(empty["uptime"].is_null());
    }
}
