//! Why a run failed, as a type: [`Failure`] names what broke and carries its values;
//! [`RunFailure`] adds when, the seed and the one command that replays it.
//!
//! Every failure is the simulator's finding about the code under test (or about the
//! simulator itself): nothing here is a caller error. A run stops at its first failure, so a
//! failure says nothing about the state after it. Errors of the gossip and crdt crates are
//! carried as their messages, since those types are neither `Clone` nor `PartialEq` and an
//! outcome is both (reports of the same seed compare equal).

use statusmesh_crdt::{ChangeHash, Name};

/// A failed run: what broke, when, and how to run it again.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("at {at_ms} ms: {failure}")]
pub struct RunFailure {
    /// Virtual time of the failure, in milliseconds since the start of the run.
    pub at_ms: u64,
    pub failure: Failure,
    /// The run's seed.
    pub seed: u64,
    /// The one command that replays the run, byte for byte.
    pub replay: String,
}

/// What broke in a run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// The run needed more events than its budget: a livelock, or a plan too large.
    #[error("event budget of {events_max} exhausted")]
    EventBudgetExhausted { events_max: u64 },
    /// After the heal, a (check, region) had no prober or more than one by the rendezvous rule.
    #[error("probe c{check} in {region} has {} probers after the heal: {owners:?} ({views:?})", .owners.len())]
    ProbeOwners {
        check: usize,
        region: String,
        owners: Vec<String>,
        /// Each live node of the region with the SWIM state it holds of the others.
        views: Vec<String>,
    },
    /// After the heal, a transition of a followed service never reached a webhook
    /// subscription within the liveness bound.
    #[error("webhook {subscription} never got transition {transition} of {service} within {bound_ms} ms of the heal")]
    WebhookUndelivered {
        subscription: String,
        service: Name,
        transition: String,
        bound_ms: u64,
    },
    /// The heap ran dry before the end event (a bug of the simulator).
    #[error("the run ended without reaching its end event")]
    NoEndEvent,
    /// `gossip::invariants::check` failed on a node after an input.
    #[error("invariant broken on {node}: {violation}")]
    InvariantBroken { node: String, violation: String },
    /// A node rejected a frame; only honest nodes exist here, so that is a bug.
    #[error("{node} rejected a frame from {from}: {reason}")]
    FrameRejected {
        node: String,
        from: String,
        reason: String,
    },
    /// A forced rollover proposal returned an error.
    #[error("{node}: a forced rollover of {service} failed: {error}")]
    ForcedRolloverFailed {
        node: String,
        service: Name,
        error: String,
    },
    /// A node addressed a frame to a node outside the topology.
    #[error("{from} sent to unknown node {to}")]
    UnknownDestination { from: String, to: String },
    /// A node sent bytes that do not decode as a frame, or a change that does not parse.
    #[error("{from} sent a frame that does not decode: {error}")]
    UndecodableFrame { from: String, error: String },
    /// The workload built a write the crdt refuses to parse (a bug of the workload).
    #[error("the workload made an invalid write: {error}")]
    InvalidWorkloadWrite { error: String },
    /// After an acknowledged local write the document's heads are not that one change.
    #[error("{node}: after a local write the heads are {heads:?}")]
    HeadsAfterLocalWrite {
        node: String,
        heads: Vec<ChangeHash>,
    },
    /// An acknowledged local write has no write identity.
    #[error("{node}: a local write {hash} has no write identity")]
    NoWriteIdentity { node: String, hash: ChangeHash },
    /// `local_writes` answered another number of results than it was given writes.
    #[error("{node} answered {results} results for {writes} local writes")]
    WriteResultsMiscounted {
        node: String,
        writes: usize,
        results: usize,
    },
    /// A local write said it changed the document but named no change.
    #[error("{node}: a local write to {service} changed the document but names no change")]
    ChangeWithoutHash { node: String, service: Name },
    /// A node refused a valid local write.
    #[error("{node} refused a valid write: {error}")]
    WriteRefused { node: String, error: String },
    /// A crashed node's saved document does not load on restart.
    #[error("{node}: saved document {service} does not load: {error}")]
    SavedDocUnloadable {
        node: String,
        service: Name,
        error: String,
    },
    /// A crashed node's saved previous epoch does not attach on restart.
    #[error("{node}: the saved previous epoch of {service} does not load: {error}")]
    SavedPrevUnloadable {
        node: String,
        service: Name,
        error: String,
    },
    /// Liveness: the mesh did not converge within the bound after the heal.
    #[error(
        "no convergence within {bound_ms} ms of the heal; nodes that differ from {reference}: {}",
        .differing.join(", ")
    )]
    NoConvergence {
        bound_ms: u64,
        reference: String,
        /// At most ten node ids.
        differing: Vec<String>,
    },
    /// A node's view does not serialize to JSON.
    #[error("view does not serialize: {error}")]
    ViewUnserializable { error: String },
    /// Two converged nodes show different views at the same time.
    #[error("{node} shows another view than {reference} at the same time")]
    ViewsDiffer { node: String, reference: String },
    /// An acknowledged write that no disk loss excuses is missing on every node.
    #[error("acknowledged write #{write} by {node} at {at_ms} ms is missing everywhere")]
    AcknowledgedWriteLost {
        write: usize,
        node: String,
        at_ms: u64,
    },
    /// A subscriber received an event that repeats its cell's value.
    #[error(
        "subscriber {subscriber} {} {node}: {duplicate}",
        if *.resuming { "resuming on" } else { "on" }
    )]
    DuplicateEvent {
        subscriber: usize,
        node: String,
        /// While resuming from its cursor, rather than on a live stream.
        resuming: bool,
        duplicate: DuplicateEvent,
    },
    /// A subscriber's transitions of a record do not match the record's history.
    #[error("subscriber {subscriber} on {node}: {finding}")]
    History {
        subscriber: usize,
        node: String,
        finding: HistoryBreak,
    },
    /// After a batch, the last event's cursor is not the node's cursor, and resuming from it
    /// would not be empty.
    #[error(
        "subscriber {subscriber} on {node}: the last event's cursor is not the node's cursor (services {}), and resuming from it would give {}",
        .services.join(", "),
        .missed.map_or("a snapshot".to_owned(), |m| format!("{m} events"))
    )]
    EventCursorBehind {
        subscriber: usize,
        node: String,
        services: Vec<String>,
        /// Events a resume from the last event's cursor would give; `None`: a snapshot.
        missed: Option<usize>,
    },
    /// A subscriber's new cursor does not cover its old one.
    #[error("subscriber {subscriber} on {node} went backwards: {regression}")]
    WentBackwards {
        subscriber: usize,
        node: String,
        regression: CursorRegression,
    },
    /// A subscriber's cells differ from its node's.
    #[error(
        "subscriber {subscriber} on {node} has a gap {moment}: cell {cell} differs from the node"
    )]
    SubscriberGap {
        subscriber: usize,
        node: String,
        moment: Moment,
        /// The first differing cell, described.
        cell: String,
    },
    /// A subscriber's cursor does not decode from its own text form.
    #[error("subscriber {subscriber}: its cursor does not decode: {error}")]
    CursorUndecodable { subscriber: usize, error: String },
    /// A subscriber's cursor decodes to another cursor than it encoded.
    #[error("subscriber {subscriber}: its cursor does not round-trip")]
    CursorRoundTrip { subscriber: usize },
}

/// An event that repeats what its subscriber holds for the cell.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("duplicate event for {cell}: {value}")]
pub struct DuplicateEvent {
    /// `service/component/region`.
    pub cell: String,
    /// The repeated value, described.
    pub value: String,
}

/// How a subscriber's stream breaks a record's history.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryBreak {
    /// An acknowledged write's transition never reached the subscriber, and its stream did
    /// not say it coalesced that record.
    #[error(
        "transition {id} (written on {writer} at {written_at_ms} ms) was never told, nor coalesced"
    )]
    Missed {
        id: String,
        writer: String,
        written_at_ms: u64,
    },
    /// A writer's transition of a record came after a later one of the same writer.
    #[error("transition {id} came after the same writer's write {after_n} to that record (told at {told_at_ms} ms by {told_by})")]
    OutOfOrder {
        id: String,
        after_n: u64,
        told_at_ms: u64,
        told_by: String,
    },
    /// An event with neither a transition identity nor a `coalesced` mark.
    #[error("an event of {record} names no transition and says no coalescing")]
    Unnamed { record: String },
    /// A transition identity that is not `<writer>-<n>:<service>/<record key>`.
    #[error("transition identity {id:?} is malformed")]
    MalformedId { id: String },
}

/// How a new cursor fails to cover an old one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CursorRegression {
    #[error("the node does not hold service {service}")]
    ServiceMissing { service: Name },
    #[error("the node lacks the new heads of {service}")]
    NewHeadsMissing { service: Name },
    #[error(
        "the new cursor of {service} is of epoch {new_epoch}, the old one of epoch {old_epoch}"
    )]
    OlderEpoch {
        service: Name,
        new_epoch: u32,
        old_epoch: u32,
    },
    #[error("the new cursor of {service} (epoch {epoch}) lost write #{write} of a writer of the previous epoch")]
    LostPreviousWrite {
        service: Name,
        epoch: u32,
        write: u64,
    },
    #[error("the node lacks the old heads of {service}")]
    OldHeadsMissing { service: Name },
    #[error("the new cursor of {service} lost changes")]
    LostChanges { service: Name },
}

/// When a subscriber's cells were compared with its node's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    AfterEventBatch,
    AfterResume,
    AtTheEnd,
}

impl std::fmt::Display for Moment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Moment::AfterEventBatch => "after an event batch",
            Moment::AfterResume => "after resuming with its cursor",
            Moment::AtTheEnd => "at the end",
        })
    }
}
