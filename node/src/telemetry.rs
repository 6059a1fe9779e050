//! The catalogue of every metric the node exports: its name, type, unit and help text.
//!
//! `/metrics` must pass `promtool check metrics` (the integration test runs it on every node
//! of a mesh): every series needs a `# HELP` line, which `metrics-exporter-prometheus` writes
//! only for metrics described to the recorder; and names carry base units (`_seconds`, not
//! `_ms`). A metric added elsewhere without an entry here fails that test.

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric: name, kind and help text.
pub type Entry = (&'static str, Kind, &'static str);

/// Every metric of the node. Each series also carries the label `node` (one process may run
/// several nodes); the help text names the other labels.
pub const METRICS: &[Entry] = &[
    // Transport (QUIC between nodes).
    (
        "statusmesh_frames_in_total",
        Kind::Counter,
        "Gossip frames received, per peer.",
    ),
    (
        "statusmesh_frames_out_total",
        Kind::Counter,
        "Gossip frames sent, per peer.",
    ),
    (
        "statusmesh_bytes_in_total",
        Kind::Counter,
        "Bytes of gossip frames received, per peer.",
    ),
    (
        "statusmesh_bytes_out_total",
        Kind::Counter,
        "Bytes of gossip frames sent, per peer.",
    ),
    (
        "statusmesh_frames_rejected_total",
        Kind::Counter,
        "Frames refused as too large, broken or invalid, per peer.",
    ),
    (
        "statusmesh_transport_frames_dropped_total",
        Kind::Counter,
        "Frames to a peer dropped because its send queue was full or the send failed.",
    ),
    (
        "statusmesh_transport_send_queue_depth",
        Kind::Gauge,
        "Frames queued to each peer.",
    ),
    (
        "statusmesh_transport_connections_refused_total",
        Kind::Counter,
        "Inbound QUIC connections refused (no free slot, or a certificate of no member).",
    ),
    (
        "statusmesh_transport_handshakes_failed_total",
        Kind::Counter,
        "Inbound QUIC handshakes that failed.",
    ),
    (
        "statusmesh_peer_up",
        Kind::Gauge,
        "1 while SWIM considers the peer up, 0 once it is declared down.",
    ),
    (
        "statusmesh_propagation_delay_seconds",
        Kind::Histogram,
        "Origin time of a remote change to the time it was applied here, in seconds.",
    ),
    // Driver queues and the gossip core.
    (
        "statusmesh_inbound_queue_depth",
        Kind::Gauge,
        "Frames waiting for the driver.",
    ),
    (
        "statusmesh_command_queue_depth",
        Kind::Gauge,
        "HTTP commands waiting for the driver.",
    ),
    (
        "statusmesh_transmit_queue_depth",
        Kind::Gauge,
        "Transmits the gossip core holds for the transport.",
    ),
    (
        "statusmesh_event_queue_depth",
        Kind::Gauge,
        "Events the gossip core holds for subscribers.",
    ),
    (
        "statusmesh_storage_queue_depth",
        Kind::Gauge,
        "Batches waiting for the storage thread.",
    ),
    (
        "statusmesh_sse_subscribers",
        Kind::Gauge,
        "Server-Sent Events streams connected.",
    ),
    (
        "statusmesh_sse_catch_ups_total",
        Kind::Counter,
        "Catch-ups of streams that fell behind the event ring, by how: a page of every \
         transition (`page`), or as a resuming client, coalesced beyond the bound (`resume`).",
    ),
    (
        "statusmesh_documents",
        Kind::Gauge,
        "Service documents held.",
    ),
    (
        "statusmesh_gossip_transmits_dropped_total",
        Kind::Counter,
        "Transmits the gossip core dropped because its queue was full.",
    ),
    (
        "statusmesh_gossip_events_dropped_total",
        Kind::Counter,
        "Events the gossip core dropped because its queue was full.",
    ),
    (
        "statusmesh_gossip_changes_applied_total",
        Kind::Counter,
        "Remote changes applied.",
    ),
    (
        "statusmesh_gossip_anti_entropy_rounds_total",
        Kind::Counter,
        "Anti-entropy rounds started.",
    ),
    (
        "statusmesh_gossip_pushes_duplicate_total",
        Kind::Counter,
        "Broadcast pushes that brought nothing new.",
    ),
    (
        "statusmesh_gossip_grafts_sent_total",
        Kind::Counter,
        "Changes requested after an announcement.",
    ),
    (
        "statusmesh_gossip_version_refused_total",
        Kind::Counter,
        "Frames refused unread because the peer's version ranges do not meet this node's, per peer, with both ranges (labels ours, theirs).",
    ),
    (
        "statusmesh_gossip_versions_refused_total",
        Kind::Counter,
        "Frames refused on their versions, all peers together.",
    ),
    (
        "statusmesh_gossip_transmits_refused_total",
        Kind::Counter,
        "Frames not sent because the peer's version ranges do not meet this node's.",
    ),
    (
        "statusmesh_gossip_peer_frame_version",
        Kind::Gauge,
        "The frame version spoken with each peer (0: not heard yet, or refused), per peer.",
    ),
    (
        "statusmesh_gossip_announcements_dropped_total",
        Kind::Counter,
        "Announcements dropped because a peer's batch was full.",
    ),
    (
        "statusmesh_gossip_entries_swapped_total",
        Kind::Counter,
        "Times this node's entry into a region moved to another peer.",
    ),
    // Epochs and documents.
    (
        "statusmesh_epoch_rollovers_total",
        Kind::Counter,
        "Document rollovers into a new epoch.",
    ),
    (
        "statusmesh_epoch_rollovers_proposed_total",
        Kind::Counter,
        "Rollovers this node proposed.",
    ),
    (
        "statusmesh_epoch_carried_writes_total",
        Kind::Counter,
        "Old-epoch writes carried into a new epoch.",
    ),
    (
        "statusmesh_epoch_stale_changes_total",
        Kind::Counter,
        "Old-epoch changes the new base already covered.",
    ),
    (
        "statusmesh_epoch_dropped_changes_total",
        Kind::Counter,
        "Old-epoch changes dropped.",
    ),
    (
        "statusmesh_document_history_changes",
        Kind::Gauge,
        "Changes in a document's live epoch, per service.",
    ),
    (
        "statusmesh_document_history_bytes",
        Kind::Gauge,
        "Bytes of a document's live epoch, per service.",
    ),
    (
        "statusmesh_document_epoch",
        Kind::Gauge,
        "A document's epoch number, per service.",
    ),
    // Storage.
    (
        "statusmesh_document_bytes",
        Kind::Gauge,
        "Bytes of a document on disk (snapshot and log), per service.",
    ),
    (
        "statusmesh_storage_fsync_seconds",
        Kind::Histogram,
        "Time to append and fsync one group commit, in seconds.",
    ),
    (
        "statusmesh_storage_records_total",
        Kind::Counter,
        "Log records written.",
    ),
    (
        "statusmesh_storage_group_batches",
        Kind::Histogram,
        "Batches folded into one group commit.",
    ),
    (
        "statusmesh_storage_errors_total",
        Kind::Counter,
        "Storage failures (writes are no longer acknowledged after one).",
    ),
    (
        "statusmesh_storage_truncated_tails_total",
        Kind::Counter,
        "Torn or corrupt log tails truncated at start.",
    ),
    (
        "statusmesh_storage_archive_truncated_tails_total",
        Kind::Counter,
        "Torn or corrupt archive tails truncated, per service.",
    ),
    // HTTP.
    (
        "statusmesh_http_connections_total",
        Kind::Counter,
        "HTTP connections accepted, per path (the lean SSE door or axum).",
    ),
    (
        "statusmesh_alertmanager_deliveries_total",
        Kind::Counter,
        "Alertmanager webhook deliveries, per result (applied, unchanged, refused, failed).",
    ),
    (
        "statusmesh_alertmanager_alerts_total",
        Kind::Counter,
        "Alerts received from Alertmanager, per status (firing, resolved).",
    ),
    (
        "statusmesh_alertmanager_alerts_skipped_total",
        Kind::Counter,
        "Alerts from Alertmanager not applied, per reason (no_target, no_state, stale, limit).",
    ),
    (
        "statusmesh_alertmanager_firing_alerts",
        Kind::Gauge,
        "Firing Alertmanager alerts held (they decide their components' observations).",
    ),
    // Regional probes.
    (
        "statusmesh_probes_total",
        Kind::Counter,
        "Probes run by this node, per check (service/component) and result (answered, failed).",
    ),
    (
        "statusmesh_probe_duration_seconds",
        Kind::Histogram,
        "Time one probe took (DNS, connect, TLS, request, body), per kind, in seconds.",
    ),
    (
        "statusmesh_probe_lag_seconds",
        Kind::Histogram,
        "Delay from a probe's due time to its start (scheduling lag), in seconds.",
    ),
    (
        "statusmesh_probes_assigned",
        Kind::Gauge,
        "Checks this node probes for its region (rendezvous over the region's live members).",
    ),
    (
        "statusmesh_probe_handovers_total",
        Kind::Counter,
        "Checks this node took over from another member of its region.",
    ),
    (
        "statusmesh_probe_missed_intervals_total",
        Kind::Counter,
        "Probe intervals that passed without a probe starting.",
    ),
    (
        "statusmesh_tls_reloads_total",
        Kind::Counter,
        "SIGHUP reloads of the node's certificate, key and CA bundle, per result (ok, error).",
    ),
    (
        "statusmesh_http_tls_reloads_total",
        Kind::Counter,
        "Reloads of the client API's HTTPS certificate and key (SIGHUP or a file change), per result (ok, error).",
    ),
    (
        "statusmesh_https_handshakes_total",
        Kind::Counter,
        "TLS handshakes on the client API, per result: the ALPN protocol (h2, http/1.1, none), failed or timeout.",
    ),
    // Outgoing webhooks.
    (
        "statusmesh_webhook_attempts_total",
        Kind::Counter,
        "Webhook delivery attempts made by this node, per result (delivered, failed, gone).",
    ),
    (
        "statusmesh_webhook_events_given_up_total",
        Kind::Counter,
        "Webhook events whose every scheduled attempt failed (the subscription moves on).",
    ),
    (
        "statusmesh_webhook_events_coalesced_total",
        Kind::Counter,
        "Transitions folded into a later webhook event because the subscription's backlog \
         passed its bound (the payload says how many).",
    ),
    (
        "statusmesh_webhook_history_gaps_total",
        Kind::Counter,
        "Times a sender found its progress compacted away and resumed from the current state.",
    ),
    (
        "statusmesh_webhook_senders",
        Kind::Gauge,
        "(subscription, service) pairs this node sends (rendezvous over the live members).",
    ),
];

/// Histogram buckets of the `_seconds` metrics: 0.1 ms to 5 s.
pub const SECONDS_BUCKETS: [f64; 14] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Describes every metric of [`METRICS`] to the installed recorder (call once, after
/// installing it), so that `/metrics` gives each its `# HELP` line.
pub fn describe() {
    for &(name, kind, help) in METRICS {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_named_once_with_prometheus_conventions() {
        let mut names = std::collections::BTreeSet::new();
        for &(name, kind, help) in METRICS {
            assert!(names.insert(name), "{name} is listed twice");
            assert!(name.starts_with("statusmesh_"), "{name}");
            assert!(!help.is_empty(), "{name} has no help");
            assert_eq!(
                kind == Kind::Counter,
                name.ends_with("_total"),
                "{name}: counters, and only counters, end in _total"
            );
            for unit in ["_ms", "_us", "_ns", "_sec", "_milliseconds"] {
                assert!(
                    !name.contains(&format!("{unit}_")) && !name.ends_with(unit),
                    "{name}: base units only"
                );
            }
        }
    }
}
