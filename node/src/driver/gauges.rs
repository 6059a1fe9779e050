//! Queue depths, core counters and per-document sizes exported as metrics, once a second.

use std::time::Instant;

use super::Driver;
use crate::storage::StorageHandle;

impl Driver {
    pub(super) fn export_gauges(&mut self, inbound: usize, commands: usize) {
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
            "statusmesh_gossip_versions_refused_total",
            stats.versions_refused,
        );
        counter(
            "statusmesh_gossip_transmits_refused_total",
            stats.transmits_refused,
        );
        // The frame version spoken with each peer (0: not heard yet, or refused).
        for peer in self.node.peers().keys() {
            let version = self.node.spoken_with(peer).map_or(0, |s| s.frame);
            metrics::gauge!(
                "statusmesh_gossip_peer_frame_version",
                "node" => node.clone(),
                "peer" => peer.clone()
            )
            .set(f64::from(version));
        }
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
}
