//! What a run measured, as a human report, a JSON report and an SVG timeline.
//!
//! Every figure is computed from the [`Outcome`] alone with fixed formatting, so the same seed
//! gives the same bytes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::json;

use crate::sim::{Outcome, Spec};

/// Most partition spans the human report lists one by one.
const PARTITIONS_LISTED_MAX: usize = 5;
/// Most writes drawn on the SVG timeline; later ones are left out (the report says so).
const SVG_WRITES_MAX: usize = 400;

/// Percentiles of a sample (nearest rank).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Percentiles {
    pub count: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// The percentiles of `values` (order does not matter).
    pub fn of(mut values: Vec<f64>) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let index = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
            values[index]
        };
        Self {
            count: values.len(),
            p50: rank(0.50),
            p99: rank(0.99),
            max: values[values.len() - 1],
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "count": self.count,
            "p50": round3(self.p50),
            "p99": round3(self.p99),
            "max": round3(self.max),
        })
    }
}

/// The figures of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    pub nodes: usize,
    pub regions: usize,
    /// Per (write, receiving node): delivery delay, in ms.
    pub delivery_ms: Percentiles,
    /// Per (write, receiving node): delay over the shortest-path lower bound.
    pub delivery_ratio: Percentiles,
    /// Per write: time until the last node held it, in ms.
    pub full_mesh_ms: Percentiles,
    /// Per write: full-mesh time over the largest lower bound from its origin.
    pub full_mesh_ratio: Percentiles,
    pub copies_per_node_per_change: f64,
    pub payload_bytes_per_change: f64,
    pub traffic_bytes_per_change: f64,
    pub idle_bytes_per_s_per_node: f64,
    pub convergence_after_heal_ms: Option<f64>,
    pub heads_after_heal_ms: Option<f64>,
    pub writes_lost_with_disk: usize,
    /// Per (crash, observer): time to declare the crashed node down, in ms.
    pub detection_ms: Percentiles,
}

impl Figures {
    /// Computes the figures from a run's outcome.
    pub fn of(outcome: &Outcome) -> Self {
        let nodes = outcome.members.len();
        let region_of = |i: usize| outcome.members[i].region;
        let mut delivery_ms = Vec::new();
        let mut delivery_ratio = Vec::new();
        let mut full_ms = Vec::new();
        let mut full_ratio = Vec::new();
        let mut copies: u64 = 0;
        for write in &outcome.writes {
            copies += write.copies;
            if write.under_faults {
                continue;
            }
            let origin = region_of(write.node);
            let mut last: Option<f64> = Some(0.0);
            let mut bound: f64 = 0.0;
            for (node, delivered) in write.delivered_us.iter().enumerate() {
                if node == write.node {
                    continue;
                }
                let lower = outcome.shortest_ms[origin][region_of(node)];
                bound = bound.max(lower);
                match delivered {
                    Some(us) => {
                        let ms = *us as f64 / 1_000.0;
                        delivery_ms.push(ms);
                        delivery_ratio.push(ms / lower.max(f64::MIN_POSITIVE));
                        last = last.map(|l| l.max(ms));
                    }
                    None => last = None,
                }
            }
            if let (Some(last), true) = (last, nodes > 1) {
                full_ms.push(last);
                full_ratio.push(last / bound.max(f64::MIN_POSITIVE));
            }
        }
        let changes = outcome.writes.len() as f64;
        let per_change = |total: f64| if changes > 0.0 { total / changes } else { 0.0 };
        let idle_s = outcome.idle_us as f64 / 1e6;
        Self {
            nodes,
            regions: outcome.region_names.len(),
            delivery_ms: Percentiles::of(delivery_ms),
            delivery_ratio: Percentiles::of(delivery_ratio),
            full_mesh_ms: Percentiles::of(full_ms),
            full_mesh_ratio: Percentiles::of(full_ratio),
            copies_per_node_per_change: per_change(copies as f64) / (nodes.max(2) - 1) as f64,
            payload_bytes_per_change: per_change(
                crate::sim::CHANGES_KINDS
                    .iter()
                    .filter_map(|kind| outcome.sent_by_kind.get(kind))
                    .map(|sent| sent.bytes as f64)
                    .sum(),
            ),
            traffic_bytes_per_change: per_change(outcome.bytes_sent_safety as f64),
            idle_bytes_per_s_per_node: if idle_s > 0.0 {
                outcome.idle_bytes as f64 / idle_s / nodes as f64
            } else {
                0.0
            },
            convergence_after_heal_ms: outcome.converged_us.map(|us| us as f64 / 1_000.0),
            heads_after_heal_ms: outcome.heads_converged_us.map(|us| us as f64 / 1_000.0),
            writes_lost_with_disk: outcome.writes.iter().filter(|w| w.lost_with_disk).count(),
            detection_ms: Percentiles::of(
                outcome
                    .detection_us
                    .iter()
                    .map(|us| *us as f64 / 1_000.0)
                    .collect(),
            ),
        }
    }
}

/// The command that replays a run ([`Spec::replay_command`]).
pub fn replay_command(spec: &Spec) -> String {
    spec.replay_command()
}

/// The human report.
pub fn text(spec: &Spec, outcome: &Outcome) -> String {
    let f = Figures::of(outcome);
    let plan = &spec.plan;
    let mut out = String::new();
    let ms = |us: u64| us as f64 / 1_000.0;
    let _ = writeln!(
        out,
        "statusmesh-sim: scenario {}, seed {}, topology {} ({} nodes in {} regions)",
        plan.scenario, spec.seed, spec.topology_arg, f.nodes, f.regions
    );
    let _ = writeln!(out, "faults: {}", plan.faults.summary());
    let _ = writeln!(out, "epochs plan: {}", plan.epochs.summary());
    let _ = writeln!(
        out,
        "phases: safety {:.1} s, heal at {:.1} s, liveness bound {:.1} s, end at {:.1} s",
        plan.safety_ms as f64 / 1_000.0,
        ms(outcome.heal_us) / 1_000.0,
        plan.liveness_bound_ms as f64 / 1_000.0,
        ms(outcome.end_us) / 1_000.0
    );
    let _ = writeln!(
        out,
        "writes: {} acknowledged changes, {} heartbeats (no change), {} lost with every disk that held them",
        outcome.writes.len(),
        outcome.heartbeats,
        f.writes_lost_with_disk
    );
    if f.delivery_ms.count == 0 {
        let _ = writeln!(
            out,
            "delivery: no writes without faults in this scenario (latency figures need steady or broadcast)"
        );
    }
    let _ = writeln!(out, "delivery (fault-free writes, per receiving node):");
    let _ = writeln!(
        out,
        "  delay ms            p50 {:>9.2}  p99 {:>9.2}  max {:>9.2}  ({} deliveries)",
        f.delivery_ms.p50, f.delivery_ms.p99, f.delivery_ms.max, f.delivery_ms.count
    );
    let _ = writeln!(
        out,
        "  / lower bound       p50 {:>9.3}  p99 {:>9.3}  max {:>9.3}",
        f.delivery_ratio.p50, f.delivery_ratio.p99, f.delivery_ratio.max
    );
    let _ = writeln!(
        out,
        "  full mesh ms        p50 {:>9.2}  p99 {:>9.2}  max {:>9.2}  ({} writes)",
        f.full_mesh_ms.p50, f.full_mesh_ms.p99, f.full_mesh_ms.max, f.full_mesh_ms.count
    );
    let _ = writeln!(
        out,
        "  / lower bound       p50 {:>9.3}  p99 {:>9.3}  max {:>9.3}",
        f.full_mesh_ratio.p50, f.full_mesh_ratio.p99, f.full_mesh_ratio.max
    );
    let _ = writeln!(
        out,
        "cost: {:.3} payload copies per node per change, {:.0} payload bytes per change, {:.0} bytes of all traffic per change",
        f.copies_per_node_per_change, f.payload_bytes_per_change, f.traffic_bytes_per_change
    );
    let _ = writeln!(
        out,
        "idle: {:.1} bytes/s per node over {:.1} s without writes",
        f.idle_bytes_per_s_per_node,
        ms(outcome.idle_us) / 1_000.0
    );
    let show = |v: Option<f64>| v.map_or("not reached".to_owned(), |ms| format!("{ms:.1} ms"));
    let _ = writeln!(
        out,
        "convergence after heal: heads {}, views (heads and liveness) {}; {} re-convergences after late frames",
        show(f.heads_after_heal_ms),
        show(f.convergence_after_heal_ms),
        outcome.reconvergences
    );
    let _ = writeln!(
        out,
        "detection ms        p50 {:>9.1}  p99 {:>9.1}  max {:>9.1}  ({} of {} observer x crash pairs detected while down; {} running nodes declared down, a restarted node's old incarnation included)",
        f.detection_ms.p50,
        f.detection_ms.p99,
        f.detection_ms.max,
        f.detection_ms.count,
        outcome.crashes.len() * f.nodes.saturating_sub(1),
        outcome.false_downs
    );
    let _ = writeln!(
        out,
        "probe assignment: longest (check, region) without a prober {} ms; {} of {} (check, region) samples with two probers; one prober each {} after the heal ({} end checks waited for membership)",
        outcome.probes.max_gap_ms_at(outcome.end_us),
        outcome.probes.split_samples,
        outcome.probes.key_samples,
        outcome
            .probes
            .settled_after_heal_ms
            .map_or("not reached".to_owned(), |ms| format!("{ms} ms")),
        outcome.probes.unsettled_at_end
    );
    if spec.plan.scenario == crate::sim::WEBHOOKS_SCENARIO {
        let w = &outcome.webhooks;
        let _ = writeln!(
            out,
            "webhooks: {} of {} (subscription, transition) pairs delivered at least once, all {}; {} deliveries, {} duplicates: {} in flight at a crash, {} by two senders at once, {} after a takeover from progress not replicated yet; {} deliveries cut by a crash, {} sender starts, {} progress writes ({} held within a change), {} unnamed transitions passed over, {} end checks waited",
            w.delivered_unique,
            w.expected,
            w.complete_after_heal_ms
                .map_or("not reached".to_owned(), |ms| format!("{ms} ms after the heal")),
            w.deliveries.len() as u64 + w.deliveries_dropped,
            w.duplicates(),
            w.duplicates_in_flight,
            w.duplicates_two_senders,
            w.duplicates_stale_progress,
            w.interrupted,
            w.sender_starts,
            w.progress_writes,
            w.progress_held,
            w.unnamed,
            w.waited_at_end
        );
    }
    if spec.plan.upgrade {
        let upgraded: std::collections::BTreeSet<usize> =
            outcome.crashes.iter().map(|c| c.node).collect();
        let _ = writeln!(
            out,
            "versions: {} of {} nodes upgraded (restarted at this release), {} frames refused on their versions (upgraded nodes' openings and probes, refused by old ones)",
            upgraded.len(),
            outcome.members.len(),
            outcome.versions_refused
        );
    }
    let _ = write!(out, "frames:");
    for (kind, sent) in &outcome.sent_by_kind {
        let _ = write!(out, " {kind} {} ({} B)", sent.frames, sent.bytes);
    }
    let _ = writeln!(out);
    let empty_disk = outcome.crashes.iter().filter(|c| c.empty_disk).count();
    let _ = writeln!(
        out,
        "network: {} lost to partitions, {} lost to loss, {} to crashed nodes, {} duplicated; {} partition spans; {} crashes ({} with an empty disk)",
        outcome.dropped_partition,
        outcome.dropped_loss,
        outcome.dropped_down,
        outcome.duplicated,
        outcome.partitions.len(),
        outcome.crashes.len(),
        empty_disk
    );
    for span in outcome.partitions.iter().take(PARTITIONS_LISTED_MAX) {
        let names: Vec<&str> = span
            .regions
            .iter()
            .map(|r| outcome.region_names[*r].as_str())
            .collect();
        let _ = writeln!(
            out,
            "  partition {:.1}-{:.1} s cut off nodes in: {}",
            span.start_us as f64 / 1e6,
            span.end_us as f64 / 1e6,
            names.join(", ")
        );
    }
    if outcome.partitions.len() > PARTITIONS_LISTED_MAX {
        let _ = writeln!(
            out,
            "  ... and {} more partition spans",
            outcome.partitions.len() - PARTITIONS_LISTED_MAX
        );
    }
    let _ = writeln!(
        out,
        "subscribers: {} events checked, {} streams checked against every write's transition, {} late transitions told again after a reconnect, {} reconnects with a cursor, {} snapshots; {} conflict flags changed without an event, {} winners re-announced for a new losing value",
        outcome.subscriber_events,
        outcome.history_checks,
        outcome.late_retold,
        outcome.reconnects,
        outcome.snapshots,
        outcome.conflict_flags_missed,
        outcome.conflict_reannouncements
    );
    let e = &outcome.epochs;
    let reached: Vec<String> = e
        .reached
        .iter()
        .map(|(service, epoch)| format!("{service} {epoch}"))
        .collect();
    let _ = writeln!(
        out,
        "epochs: reached {} (first node, per service); {} rollovers proposed ({} forced, {} forced moments skipped while a contest was open), {} adopted over all nodes; {} writes carried; history at the end {} changes ({} without rollover); {} epochs ahead of the cut-off side at the heal, {} writes made there while cut off; {} proposer crashes ({} with an empty disk)",
        if reached.is_empty() { "nothing".to_owned() } else { reached.join(", ") },
        e.proposed,
        e.forced,
        e.forced_skipped,
        e.adopted,
        e.carried,
        e.history_len,
        e.history_len_without,
        e.gap_at_heal,
        e.cut_writes,
        e.proposer_crashes,
        e.proposer_crashes_empty_disk
    );
    let d = &outcome.driver;
    let _ = writeln!(
        out,
        "driver: {} iterations; handle_frames {} calls ({} with more than one frame, {} frames), {} change frames merged with another of the same peer and service, {} batches accepted; local_writes {} calls ({} group commits of more than one write, {} writes); {} inbox overflows",
        d.iterations,
        d.frame_calls,
        d.frame_batches,
        d.frames,
        d.change_frames_merged,
        d.accepted_batches,
        d.write_calls,
        d.group_commits,
        d.writes,
        d.inbox_overflows
    );
    let _ = writeln!(
        out,
        "resumes: {} answered with events ({} after waiting), {} snapshots ({} after waiting), {} told to wait, {} still waiting at the end",
        d.resumes_events,
        d.waits_then_events,
        outcome.snapshots,
        d.waits_then_snapshot,
        d.resumes_wait,
        d.waiting_at_end
    );
    let _ = writeln!(
        out,
        "events processed: {}, trace digest {:016x}",
        outcome.events_processed, outcome.trace_digest
    );
    match &outcome.failure {
        None => {
            let _ = writeln!(out, "result: PASS");
        }
        Some(failure) => {
            let _ = writeln!(out, "result: FAIL {failure}");
            let _ = writeln!(out, "replay: {}", failure.replay);
        }
    }
    out
}

/// The JSON report (keys sorted, so the bytes are stable).
pub fn json(spec: &Spec, outcome: &Outcome) -> String {
    let f = Figures::of(outcome);
    let frames: BTreeMap<&str, serde_json::Value> = outcome
        .sent_by_kind
        .iter()
        .map(|(kind, sent)| (*kind, json!({"frames": sent.frames, "bytes": sent.bytes})))
        .collect();
    let epochs = json!({
        "plan": spec.plan.epochs.summary(),
        "reached": outcome.epochs.reached.iter().map(|(s, e)| (s.to_string(), *e)).collect::<BTreeMap<String, u32>>(),
        "rollovers_proposed": outcome.epochs.proposed,
        "rollovers_forced": outcome.epochs.forced,
        "forced_skipped": outcome.epochs.forced_skipped,
        "rollovers_adopted": outcome.epochs.adopted,
        "carried": outcome.epochs.carried,
        "history_len": outcome.epochs.history_len,
        "history_len_without_rollover": outcome.epochs.history_len_without,
        "gap_at_heal": outcome.epochs.gap_at_heal,
        "cut_writes": outcome.epochs.cut_writes,
        "proposer_crashes": outcome.epochs.proposer_crashes,
        "proposer_crashes_empty_disk": outcome.epochs.proposer_crashes_empty_disk,
    });
    let mut value = json!({
        "seed": spec.seed,
        "scenario": spec.plan.scenario,
        "topology": spec.topology_arg,
        "nodes": f.nodes,
        "regions": f.regions,
        "faults": spec.plan.faults.summary(),
        "safety_ms": spec.plan.safety_ms,
        "heal_ms": outcome.heal_us / 1_000,
        "end_ms": outcome.end_us / 1_000,
        "writes": outcome.writes.len(),
        "heartbeats": outcome.heartbeats,
        "writes_lost_with_disk": f.writes_lost_with_disk,
        "delivery_ms": f.delivery_ms.json(),
        "delivery_over_lower_bound": f.delivery_ratio.json(),
        "full_mesh_ms": f.full_mesh_ms.json(),
        "full_mesh_over_lower_bound": f.full_mesh_ratio.json(),
        "payload_copies_per_node_per_change": round3(f.copies_per_node_per_change),
        "payload_bytes_per_change": round3(f.payload_bytes_per_change),
        "traffic_bytes_per_change": round3(f.traffic_bytes_per_change),
        "idle_bytes_per_s_per_node": round3(f.idle_bytes_per_s_per_node),
        "convergence_after_heal_ms": f.convergence_after_heal_ms.map(round3),
        "heads_converged_after_heal_ms": f.heads_after_heal_ms.map(round3),
        "reconvergences": outcome.reconvergences,
        "frames": frames,
        "dropped": {
            "partition": outcome.dropped_partition,
            "loss": outcome.dropped_loss,
            "down": outcome.dropped_down,
        },
        "duplicated": outcome.duplicated,
        "partitions": outcome.partitions.len(),
        "crashes": outcome.crashes.len(),
        "crashes_empty_disk": outcome.crashes.iter().filter(|c| c.empty_disk).count(),
        "detection_ms": f.detection_ms.json(),
        "false_downs": outcome.false_downs,
        "subscriber_events": outcome.subscriber_events,
        "reconnects": outcome.reconnects,
        "snapshots": outcome.snapshots,
        "conflict_flags_missed": outcome.conflict_flags_missed,
        "conflict_reannouncements": outcome.conflict_reannouncements,
        "events_processed": outcome.events_processed,
        "trace_digest": format!("{:016x}", outcome.trace_digest),
        "result": if outcome.failure.is_none() { "pass" } else { "fail" },
        "failure": outcome.failure.as_ref().map(ToString::to_string),
        "replay": replay_command(spec),
    });
    if let Some(map) = value.as_object_mut() {
        map.insert(
            "probes".into(),
            json!({
                "max_gap_ms": outcome.probes.max_gap_ms_at(outcome.end_us),
                "split_samples": outcome.probes.split_samples,
                "key_samples": outcome.probes.key_samples,
                "settled_after_heal_ms": outcome.probes.settled_after_heal_ms,
                "unsettled_at_end": outcome.probes.unsettled_at_end,
            }),
        );
        if spec.plan.scenario == crate::sim::WEBHOOKS_SCENARIO {
            let w = &outcome.webhooks;
            map.insert(
                "webhooks".into(),
                json!({
                    "expected": w.expected,
                    "delivered_unique": w.delivered_unique,
                    "complete_after_heal_ms": w.complete_after_heal_ms,
                    "deliveries": w.deliveries.len() as u64 + w.deliveries_dropped,
                    "duplicates": w.duplicates(),
                    "duplicates_in_flight_at_crash": w.duplicates_in_flight,
                    "duplicates_two_senders": w.duplicates_two_senders,
                    "duplicates_stale_progress": w.duplicates_stale_progress,
                    "interrupted": w.interrupted,
                    "sender_starts": w.sender_starts,
                    "progress_writes": w.progress_writes,
                    "progress_held": w.progress_held,
                    "unnamed": w.unnamed,
                    "waited_at_end": w.waited_at_end,
                }),
            );
        }
    }
    let d = &outcome.driver;
    let driver = json!({
        "iterations": d.iterations,
        "frame_calls": d.frame_calls,
        "frame_batches": d.frame_batches,
        "frames": d.frames,
        "change_frames_merged": d.change_frames_merged,
        "accepted_batches": d.accepted_batches,
        "write_calls": d.write_calls,
        "group_commits": d.group_commits,
        "writes": d.writes,
        "inbox_overflows": d.inbox_overflows,
        "resumes_events": d.resumes_events,
        "waits_then_events": d.waits_then_events,
        "waits_then_snapshot": d.waits_then_snapshot,
        "resumes_wait": d.resumes_wait,
        "waiting_at_end": d.waiting_at_end,
    });
    // Apart, as more keys would pass the json! macro's recursion limit.
    value["epochs"] = epochs;
    value["driver"] = driver;
    value["history_checks"] = json!(outcome.history_checks);
    value["late_retold"] = json!(outcome.late_retold);
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_else(|e| format!("{e}"));
    text.push('\n');
    text
}

/// The SVG timeline: one row per region; a dot where a change was written, a tick where a
/// region first held it, partitions shaded over the regions they cut off, crashes as crosses.
pub fn svg(spec: &Spec, outcome: &Outcome) -> String {
    const LEFT: f64 = 130.0;
    const WIDTH: f64 = 1_000.0;
    const ROW: f64 = 22.0;
    const TOP: f64 = 40.0;
    let regions = outcome.region_names.len();
    let height = TOP + ROW * regions as f64 + 56.0;
    let end_us = outcome.end_us.max(1) as f64;
    let x = |us: u64| LEFT + WIDTH * (us as f64 / end_us);
    let y = |region: usize| TOP + ROW * region as f64 + ROW / 2.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{:.0}" height="{height:.0}" font-family="monospace" font-size="11">"#,
        LEFT + WIDTH + 20.0
    );
    let _ = writeln!(
        out,
        r#"<text x="4" y="16">statusmesh-sim {} seed {} ({} nodes): which region saw a change when</text>"#,
        xml(&spec.plan.scenario),
        spec.seed,
        outcome.members.len()
    );
    for span in &outcome.partitions {
        for &region in &span.regions {
            let _ = writeln!(
                out,
                r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{ROW:.1}" fill="#f4c7c3" opacity="0.7"><title>partition</title></rect>"##,
                x(span.start_us),
                TOP + ROW * region as f64,
                (x(span.end_us) - x(span.start_us)).max(1.0)
            );
        }
    }
    for (r, name) in outcome.region_names.iter().enumerate() {
        let _ = writeln!(
            out,
            r##"<text x="4" y="{:.1}">{}</text><line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            y(r) + 4.0,
            xml(name),
            y(r),
            LEFT + WIDTH,
            y(r)
        );
    }
    let heal = x(outcome.heal_us);
    let _ = writeln!(
        out,
        r##"<line x1="{heal:.1}" y1="{TOP}" x2="{heal:.1}" y2="{:.1}" stroke="#393" stroke-dasharray="4"/><text x="{heal:.1}" y="{:.1}">heal</text>"##,
        TOP + ROW * regions as f64,
        TOP - 4.0
    );
    const COLORS: [&str; 6] = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#17becf",
    ];
    for (w, write) in outcome.writes.iter().take(SVG_WRITES_MAX).enumerate() {
        let color = COLORS[w % COLORS.len()];
        let origin = outcome.members[write.node].region;
        let mut first: BTreeMap<usize, u64> = BTreeMap::new();
        for (node, delivered) in write.delivered_us.iter().enumerate() {
            if let Some(us) = delivered {
                let region = outcome.members[node].region;
                let seen = first.entry(region).or_insert(*us);
                *seen = (*seen).min(*us);
            }
        }
        for (region, us) in first {
            if region == origin {
                continue;
            }
            let _ = writeln!(
                out,
                r#"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="{color}"/>"#,
                x(write.at_us + us),
                y(region) - 6.0,
                y(region) + 6.0
            );
        }
        let _ = writeln!(
            out,
            r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"><title>write #{w}</title></circle>"#,
            x(write.at_us),
            y(origin)
        );
    }
    for crash in &outcome.crashes {
        let (cx, cy) = (x(crash.at_us), y(outcome.members[crash.node].region));
        let _ = writeln!(
            out,
            r##"<path d="M{:.1} {:.1} l8 8 m0 -8 l-8 8" stroke="#c00"><title>crash {}{}</title></path>"##,
            cx - 4.0,
            cy - 4.0,
            xml(&outcome.members[crash.node].id),
            if crash.empty_disk {
                " (empty disk)"
            } else {
                ""
            }
        );
    }
    let seconds = end_us / 1e6;
    let step = [
        1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1_800.0, 3_600.0,
    ]
    .into_iter()
    .find(|s| seconds / s <= 12.0)
    .unwrap_or(7_200.0);
    let axis = TOP + ROW * regions as f64 + 16.0;
    let mut t = 0.0;
    while t <= seconds {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{axis:.1}">{t:.0}s</text>"#,
            x((t * 1e6) as u64)
        );
        t += step;
    }
    if outcome.writes.len() > SVG_WRITES_MAX {
        let _ = writeln!(
            out,
            r#"<text x="{LEFT}" y="{:.1}">first {SVG_WRITES_MAX} of {} writes drawn</text>"#,
            axis + 14.0,
            outcome.writes.len()
        );
    }
    out.push_str("</svg>\n");
    out
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn round3(value: f64) -> f64 {
    (value * 1_000.0).round() / 1_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let p = Percentiles::of((1..=100).map(f64::from).collect());
        assert_eq!((p.count, p.p50, p.p99, p.max), (100, 50.0, 99.0, 100.0));
        assert_eq!(Percentiles::of(Vec::new()), Percentiles::default());
    }
}
