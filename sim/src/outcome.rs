//! A run's inputs ([`Spec`]) and everything it measured ([`Outcome`]), which
//! [`crate::report`] turns into text, JSON and SVG.

use std::collections::BTreeMap;

use statusmesh_crdt::epoch::WriteId;
use statusmesh_crdt::{ChangeHash, Name};
use statusmesh_gossip::topology::{Member, Topology};

use crate::failure::RunFailure;
use crate::scenario::Plan;

/// A run's inputs: everything that determines its output.
#[derive(Debug, Clone)]
pub struct Spec {
    pub seed: u64,
    pub topology: Topology,
    /// How the topology was named on the command line, for the replay command.
    pub topology_arg: String,
    pub plan: Plan,
    /// Extra flags the replay command must repeat (`--nodes 50 --duration-s 60`).
    pub replay_flags: String,
}

impl Spec {
    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        let mut command = format!(
            "statusmesh-sim run --topology {} --scenario {} --seed {}",
            self.topology_arg, self.plan.scenario, self.seed
        );
        if !self.replay_flags.is_empty() {
            command.push(' ');
            command.push_str(&self.replay_flags);
        }
        command
    }
}

/// One partition interval, for the timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionSpan {
    pub start_us: u64,
    pub end_us: u64,
    /// Regions with at least one node on the cut-off side.
    pub regions: Vec<usize>,
}

/// One crash of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashRecord {
    pub at_us: u64,
    pub node: usize,
    /// The node lost its disk: it restarts with an empty replica.
    pub empty_disk: bool,
}

/// Frames and bytes sent of one frame kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    pub frames: u64,
    pub bytes: u64,
}

/// One acknowledged write: the node's write result said it changed the document.
#[derive(Debug, Clone)]
pub struct WriteRecord {
    pub node: usize,
    pub service: Name,
    pub hash: ChangeHash,
    /// The write's identity, which survives rollovers (its change may be compacted into a
    /// base or carried under another hash): "present" means `holds_write(&id)`.
    pub id: WriteId,
    /// For a status write, the identity of the transition every subscriber must be told
    /// (the write's identity and the cell's record key).
    pub transition: Option<String>,
    pub at_us: u64,
    /// When each node first held the change, microseconds after the write.
    pub delivered_us: Vec<Option<u64>>,
    /// Frames that carried this change.
    pub copies: u64,
    /// Every node that held it lost its disk before it spread: it may be gone.
    pub lost_with_disk: bool,
    /// Written during the safety phase with faults on (excluded from latency figures).
    pub under_faults: bool,
}

/// Everything a run measured; [`crate::report`] turns it into text, JSON and SVG.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub failure: Option<RunFailure>,
    pub members: Vec<Member>,
    pub region_names: Vec<String>,
    /// Shortest-path one-way latency between regions, in milliseconds.
    pub shortest_ms: Vec<Vec<f64>>,
    pub writes: Vec<WriteRecord>,
    pub heartbeats: u64,
    /// Frames and bytes sent, per frame kind (`Frame::kind`).
    pub sent_by_kind: BTreeMap<&'static str, Sent>,
    pub bytes_sent: u64,
    pub bytes_sent_safety: u64,
    pub dropped_partition: u64,
    pub dropped_loss: u64,
    pub dropped_down: u64,
    pub duplicated: u64,
    pub crashes: Vec<CrashRecord>,
    /// Per (crash, observer): how long until the observer declared the crashed node down.
    pub detection_us: Vec<u64>,
    /// Running nodes declared down (partitions and loss make these expected).
    pub false_downs: u64,
    pub partitions: Vec<PartitionSpan>,
    pub heal_us: u64,
    pub converged_us: Option<u64>,
    /// Times the mesh diverged after converging (late frames) and had to converge again.
    pub reconvergences: u64,
    /// Regional probe assignment as sampled over the run (see `checker::probes`).
    pub probes: crate::checker::probes::ProbeWatch,
    /// Webhook deliveries of the `webhooks` scenario (see `checker::webhooks`).
    pub webhooks: crate::checker::webhooks::WebhookWatch,
    /// When every node first held the same heads after the heal (liveness may still differ).
    pub heads_converged_us: Option<u64>,
    pub idle_bytes: u64,
    pub idle_us: u64,
    pub end_us: u64,
    pub subscriber_events: u64,
    pub reconnects: u64,
    pub snapshots: u64,
    /// Cells whose conflict flag changed without an event (see the subscriber checker).
    pub conflict_flags_missed: u64,
    /// Events that repeated a winner because a losing concurrent value arrived.
    pub conflict_reannouncements: u64,
    /// Subscribers whose streams were checked at the end against every write's transition.
    pub history_checks: u64,
    /// Transitions a subscriber was told again, with the same identity, by the node it
    /// reconnected to: writes of a closed epoch that node learned only after the next base.
    pub late_retold: u64,
    pub events_processed: u64,
    pub frames_rejected: u64,
    /// Frames refused on their versions (a rolling upgrade's first frames to an old node).
    pub versions_refused: u64,
    pub trace_digest: u64,
    pub epochs: EpochFigures,
    pub driver: DriverFigures,
}

impl Outcome {
    /// An outcome with nothing measured yet.
    pub(crate) fn new(
        members: Vec<Member>,
        region_names: Vec<String>,
        shortest_ms: Vec<Vec<f64>>,
        heal_us: u64,
    ) -> Self {
        Self {
            failure: None,
            members,
            region_names,
            shortest_ms,
            writes: Vec::new(),
            heartbeats: 0,
            sent_by_kind: BTreeMap::new(),
            bytes_sent: 0,
            bytes_sent_safety: 0,
            dropped_partition: 0,
            dropped_loss: 0,
            dropped_down: 0,
            duplicated: 0,
            crashes: Vec::new(),
            detection_us: Vec::new(),
            false_downs: 0,
            partitions: Vec::new(),
            heal_us,
            converged_us: None,
            reconvergences: 0,
            probes: Default::default(),
            webhooks: Default::default(),
            heads_converged_us: None,
            idle_bytes: 0,
            idle_us: 0,
            end_us: 0,
            subscriber_events: 0,
            reconnects: 0,
            snapshots: 0,
            conflict_flags_missed: 0,
            conflict_reannouncements: 0,
            history_checks: 0,
            late_retold: 0,
            events_processed: 0,
            frames_rejected: 0,
            versions_refused: 0,
            trace_digest: 0,
            epochs: EpochFigures::default(),
            driver: DriverFigures::default(),
        }
    }
}

/// What the epoch machinery did in a run (summed over every node and incarnation).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EpochFigures {
    /// The epoch of each service on the first node at the end.
    pub reached: BTreeMap<Name, u32>,
    /// Rollovers proposed (`Stats::rollovers_proposed`), forced ones included.
    pub proposed: u64,
    /// Epochs moved to, proposed or adopted (`Stats::rollovers`), over all nodes.
    pub adopted: u64,
    /// Forced proposals that rolled over, and forced moments skipped because the nodes did
    /// not agree on the service's epoch yet (a contest still open; see `force_rollovers`).
    pub forced: u64,
    pub forced_skipped: u64,
    /// Writes carried into a newer epoch (`EpochStats::carried`), over all nodes.
    pub carried: u64,
    /// Proposers that crashed right after proposing, and how many of those lost the disk.
    pub proposer_crashes: u64,
    pub proposer_crashes_empty_disk: u64,
    /// Changes in the first node's documents at the end, and what they would be without
    /// rollover: one per acknowledged write (the histories are equal at convergence).
    pub history_len: usize,
    pub history_len_without: usize,
    /// At the heal: how many epochs the rest of the mesh was ahead of the cut-off side, the
    /// most over services (a node partitioned through that many rollovers).
    pub gap_at_heal: u32,
    /// Acknowledged writes made by a node of the cut-off side while the partition was on.
    pub cut_writes: u64,
}

/// What the node drivers handed the core, summed over every node: evidence that the batched
/// entry points (frame merging, group commit, resume) ran, and how often.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriverFigures {
    /// Driver iterations (each hands the core a timeout, writes, frames or several).
    pub iterations: u64,
    /// `handle_frames` calls, those with more than one frame, and the frames in all.
    pub frame_calls: u64,
    pub frame_batches: u64,
    pub frames: u64,
    /// Change frames handed in together with another of the same peer, service and kind:
    /// the ones the core merges into one batch.
    pub change_frames_merged: u64,
    /// Merged batches the core accepted (they moved a document's heads).
    pub accepted_batches: u64,
    /// `local_writes` calls, those with more than one write (group commits), writes in all.
    pub write_calls: u64,
    pub group_commits: u64,
    pub writes: u64,
    /// Frames lost because a node's inbox was full.
    pub inbox_overflows: u64,
    /// Resumes the core answered with events (possibly none), and how many of those had
    /// been told to wait first.
    pub resumes_events: u64,
    pub waits_then_events: u64,
    /// Resumes the core answered with a snapshot after a wait (all snapshots are
    /// `Outcome::snapshots`).
    pub waits_then_snapshot: u64,
    /// Resumes the core told to wait for changes the cursor names (counted once per wait).
    pub resumes_wait: u64,
    /// Subscribers still waiting when the run ended (their final check is skipped).
    pub waiting_at_end: u64,
}
