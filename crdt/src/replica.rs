//! A node's replica: one document per service, the liveness map, and the actor it writes as.

use std::collections::{BTreeMap, BTreeSet};

use automerge::{ActorId, ChangeHash};

use crate::cursor::Cursor;
use crate::doc::{
    Delivery, DocEvent, LocalChange, PlannedPuts, Put, RemoteApplied, ServiceDoc, StatusEvent,
    Transition,
};
use crate::error::CrdtError;
use crate::liveness::Liveness;
use crate::model::{Name, State, StatusWrite};
use crate::records::{Impact, Incident, IncidentStatus, IncidentUpdate};
use crate::view::{service_view, status_view, ServiceView, StatusView};

/// Default bound on the number of services (documents) a replica holds.
pub const SERVICES_MAX: usize = 1024;

/// What a local write did.
#[derive(Debug, Clone)]
pub struct WriteOutcome {
    /// The service written.
    pub service: Name,
    /// False when the cell already held this value: only liveness was refreshed.
    pub changed: bool,
    /// The encoded Automerge change to gossip, when `changed`.
    pub change: Option<Vec<u8>>,
    /// Its hash: what peers acknowledge.
    pub change_hash: Option<ChangeHash>,
    /// The cell events the write produced (empty when unchanged).
    pub events: Vec<StatusEvent>,
    /// Every event the write produced, observations and records alike.
    pub doc_events: Vec<DocEvent>,
    /// The same events as transitions: with their identity and the heads after them.
    pub transitions: Vec<Transition>,
}

/// What a client asks to change in an incident; `None` fields keep their value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentChange {
    pub status: Option<IncidentStatus>,
    pub impact: Option<Impact>,
    pub title: Option<String>,
    pub components: Option<Vec<Name>>,
    /// The text of the timeline entry this change appends; `None` appends none.
    pub text: Option<String>,
    pub author: String,
}

/// What applying a batch from a peer did.
#[derive(Debug, Clone, Default)]
pub struct RemoteOutcome {
    /// Changes that were new here.
    pub new_changes: usize,
    /// The cell events that became visible (dependencies may hold some back).
    pub events: Vec<StatusEvent>,
    /// Every event that became visible, observations and records alike.
    pub doc_events: Vec<DocEvent>,
    /// The same events as transitions: one per change of a record, in causal order.
    pub transitions: Vec<Transition>,
    /// Changes this replica now holds, with their origin node: what it acknowledges.
    pub held: Vec<(ChangeHash, Option<String>)>,
    /// Changes this replica made while applying (a base it proposed, writes it carried into
    /// a new epoch): broadcast them like local changes.
    pub made: Vec<Vec<u8>>,
    /// The epoch the document rolled over to, when it did.
    pub rolled_over: Option<u32>,
}

/// All documents of one node.
#[derive(Debug)]
pub struct Replica {
    node: String,
    actor: ActorId,
    docs: BTreeMap<Name, ServiceDoc>,
    liveness: Liveness,
    /// The topology's regions, when the driver gave them: views list observations of other
    /// regions (since removed) apart, as retired.
    regions: Option<BTreeSet<Name>>,
}

impl Replica {
    /// An empty replica writing as `actor`. The actor id must be new: a node that lost its
    /// disk must not reuse one, or it would repeat sequence numbers peers already hold.
    /// `node` is recorded on every change as its origin.
    pub fn new(node: &str, actor: ActorId) -> Self {
        Self {
            node: node.to_owned(),
            actor,
            docs: BTreeMap::new(),
            liveness: Liveness::default(),
            regions: None,
        }
    }

    /// A replica restored from documents loaded from disk, writing as `actor` from now on.
    /// The actor must not be one that wrote before (see [`Replica::new`]).
    pub fn from_docs(node: &str, actor: ActorId, docs: Vec<ServiceDoc>) -> Self {
        let mut replica = Self::new(node, actor.clone());
        for mut doc in docs {
            doc.set_actor(actor.clone());
            // Every observation is also a heartbeat of its cell, as of when it was made.
            for ((component, region), cell) in doc.cells() {
                let key = crate::model::cell_key(doc.service(), &component, &region);
                replica.liveness.observe(&key, cell.value.observed_at_ms);
            }
            replica.docs.insert(doc.service().clone(), doc);
        }
        replica
    }

    /// Applies a validated local write at `now_ms`: refreshes liveness always, and makes an
    /// Automerge change only when the value differs.
    pub fn write_status(
        &mut self,
        now_ms: u64,
        write: &StatusWrite,
    ) -> Result<WriteOutcome, CrdtError> {
        let put = Put::Observation {
            component: write.component.clone(),
            region: write.region.clone(),
            observation: write.observation.clone(),
        };
        let outcome = self.write_records(now_ms, &write.service, std::slice::from_ref(&put))?;
        self.liveness.observe(&write.cell_key(), now_ms);
        Ok(outcome)
    }

    /// Applies many status writes at once, one Automerge change per service (group commit):
    /// this is what keeps history small and throughput high under load. All writes are
    /// validated, and checked against their documents, before any is applied: an error
    /// leaves every document as it was. Returns one outcome per service touched.
    pub fn write_status_batch(
        &mut self,
        now_ms: u64,
        writes: &[StatusWrite],
    ) -> Result<Vec<WriteOutcome>, CrdtError> {
        let mut by_service: BTreeMap<&Name, Vec<Put>> = BTreeMap::new();
        for write in writes {
            write.observation.validate()?;
            by_service
                .entry(&write.service)
                .or_default()
                .push(Put::Observation {
                    component: write.component.clone(),
                    region: write.region.clone(),
                    observation: write.observation.clone(),
                });
        }
        let mut plans = Vec::with_capacity(by_service.len());
        let mut new_services = 0;
        for (service, puts) in &by_service {
            plans.push(self.plan_records(service, puts, new_services)?);
            new_services += usize::from(!self.docs.contains_key(*service));
        }
        let mut outcomes = Vec::with_capacity(by_service.len());
        for ((service, puts), plan) in by_service.into_iter().zip(plans) {
            outcomes.push(self.commit_records(now_ms, service, &puts, plan)?);
        }
        for write in writes {
            self.liveness.observe(&write.cell_key(), now_ms);
        }
        Ok(outcomes)
    }

    /// Opens incident `id` of `service` with its first timeline entry.
    pub fn open_incident(
        &mut self,
        now_ms: u64,
        service: &Name,
        id: &Name,
        incident: Incident,
        text: &str,
    ) -> Result<WriteOutcome, CrdtError> {
        if self.doc(service).and_then(|d| d.incident(id)).is_some() {
            return Err(CrdtError::InvalidField {
                field: "id",
                value: id.to_string(),
                reason: "an incident with this id exists already".into(),
            });
        }
        // The first entry is the opening: dated as the incident is (unless that is in the
        // future), so that its event says "created" on every node.
        let update = IncidentUpdate {
            at_ms: incident.opened_at_ms.min(now_ms),
            status: incident.status,
            text: text.to_owned(),
            author: incident.author.clone(),
        };
        let puts = [
            Put::Incident {
                id: id.clone(),
                incident,
            },
            self.update_put(service, id, update),
        ];
        self.write_records(now_ms, service, &puts)
    }

    /// Changes incident `id`: its header fields and/or a new timeline entry. Resolving sets
    /// the resolution time; any other status clears it (a re-opened incident).
    pub fn change_incident(
        &mut self,
        now_ms: u64,
        service: &Name,
        id: &Name,
        change: IncidentChange,
    ) -> Result<WriteOutcome, CrdtError> {
        let Some(mut incident) = self.doc(service).and_then(|d| d.incident(id)) else {
            return Err(CrdtError::InvalidField {
                field: "id",
                value: id.to_string(),
                reason: format!("no incident with this id in service {service}"),
            });
        };
        if let Some(status) = change.status {
            incident.status = status;
            incident.resolved_at_ms = (status == IncidentStatus::Resolved).then_some(now_ms);
        }
        if let Some(impact) = change.impact {
            incident.impact = impact;
        }
        if let Some(title) = change.title {
            incident.title = title;
        }
        if let Some(components) = change.components {
            incident.components = components;
        }
        let mut puts = Vec::new();
        if let Some(text) = change.text {
            let update = IncidentUpdate {
                at_ms: now_ms,
                status: incident.status,
                text,
                author: change.author,
            };
            puts.push(self.update_put(service, id, update));
        }
        puts.push(Put::Incident {
            id: id.clone(),
            incident,
        });
        self.write_records(now_ms, service, &puts)
    }

    /// Writes records of one service as one change (see [`ServiceDoc::apply_puts`]). A
    /// refused write leaves the replica as it was (no empty document either).
    pub fn write_records(
        &mut self,
        now_ms: u64,
        service: &Name,
        puts: &[Put],
    ) -> Result<WriteOutcome, CrdtError> {
        let plan = self.plan_records(service, puts, 0)?;
        self.commit_records(now_ms, service, puts, plan)
    }

    /// Applies a batch of changes from a peer to one service's document; see
    /// [`ServiceDoc::apply_remote`] for what is checked. Rejected batches change nothing: a
    /// document is made for a new service only when its first batch is accepted.
    pub fn apply_remote(
        &mut self,
        service: &str,
        changes: &[Vec<u8>],
    ) -> Result<RemoteOutcome, CrdtError> {
        let service = Name::parse("service", service)?;
        let (before, applied) = match self.docs.get_mut(&service) {
            Some(doc) => (doc.heads(), doc.apply_remote_keys(changes)?),
            None => {
                self.check_room(&service, 0)?;
                let mut doc = ServiceDoc::new(service.clone(), self.actor.clone());
                let applied = doc.apply_remote_keys(changes)?;
                self.docs.insert(service.clone(), doc);
                (Vec::new(), applied)
            }
        };
        Ok(self.outcome(&service, before, applied))
    }

    /// Rolls `service` over to its next epoch at the cut `at` (see [`ServiceDoc::rollover`]).
    /// `None` when the document does not hold `at` or has nothing to compact.
    pub fn rollover(
        &mut self,
        service: &Name,
        at: &[ChangeHash],
    ) -> Result<Option<RemoteOutcome>, CrdtError> {
        let Some(doc) = self.docs.get_mut(service) else {
            return Ok(None);
        };
        let before = doc.heads();
        let Some(applied) = doc.rollover(at)? else {
            return Ok(None);
        };
        Ok(Some(self.outcome(service, before, applied)))
    }

    fn outcome(
        &mut self,
        service: &Name,
        before: Vec<ChangeHash>,
        applied: RemoteApplied,
    ) -> RemoteOutcome {
        let Some(doc) = self.docs.get(service) else {
            return RemoteOutcome::default();
        };
        let transitions = doc.transitions_of_apply(
            &before,
            &applied.keys,
            applied.rolled_over.is_some(),
            &applied.late,
        );
        let doc_events: Vec<DocEvent> = transitions.iter().map(|t| t.event.clone()).collect();
        // An observation that arrives is also a heartbeat of its cell, so liveness agrees
        // everywhere without a separate frame for every changed value.
        for event in &doc_events {
            if let DocEvent::Status(StatusEvent {
                service,
                component,
                region,
                observation: Some(observation),
                ..
            }) = event
            {
                let key = crate::model::cell_key(service, component, region);
                self.liveness.observe(&key, observation.observed_at_ms);
            }
        }
        RemoteOutcome {
            new_changes: applied.new_changes,
            events: status_only(&doc_events),
            doc_events,
            transitions,
            held: applied.held,
            made: applied.made,
            rolled_over: applied.rolled_over,
        }
    }

    /// The liveness map.
    pub fn liveness(&self) -> &Liveness {
        &self.liveness
    }

    /// Merges liveness entries from a peer; returns those that moved forward.
    pub fn merge_liveness(&mut self, entries: &Liveness) -> Vec<(String, u64)> {
        self.liveness.merge(entries)
    }

    /// The document of a service, if this replica holds it.
    pub fn doc(&self, service: &Name) -> Option<&ServiceDoc> {
        self.docs.get(service)
    }

    /// Every document, ordered by service.
    pub fn docs(&self) -> impl Iterator<Item = &ServiceDoc> {
        self.docs.values()
    }

    /// Heads of every document, as a cursor: "everything this replica holds now".
    pub fn cursor(&self) -> Cursor {
        Cursor::with_epochs(
            self.docs
                .iter()
                .map(|(k, d)| (k.clone(), d.heads()))
                .collect(),
            self.docs
                .iter()
                .map(|(k, d)| (k.clone(), d.epoch()))
                .collect(),
        )
    }

    /// True when `cursor` names a document epoch this replica has compacted away (older than
    /// the epoch before the current one): only a snapshot can answer it, and waiting for
    /// peers would not help. A cursor whose epochs are unknown (version 1) is never called
    /// compacted.
    pub fn cursor_is_compacted(&self, cursor: &Cursor) -> bool {
        cursor.iter().any(|(service, heads)| {
            let (Some(epoch), Some(doc)) = (cursor.epoch_of(service), self.docs.get(service))
            else {
                return false;
            };
            epoch < doc.epoch() && !doc.has_all(heads) && !doc.prev_has_all(heads)
        })
    }

    /// The observation events a client at `cursor` has not seen (see [`Self::doc_events_since`]).
    pub fn events_since(&self, cursor: &Cursor) -> Option<Vec<StatusEvent>> {
        self.doc_events_since(cursor).map(|e| status_only(&e))
    }

    /// The events a client at `cursor` has not seen: every transition (see
    /// [`Self::transitions_since`]). `None` when this replica cannot tell.
    pub fn doc_events_since(&self, cursor: &Cursor) -> Option<Vec<DocEvent>> {
        self.transitions_since(cursor, Delivery::Every)
            .map(|all| all.into_iter().map(|(t, _)| t.event).collect())
    }

    /// The changes of `service` that a peer with `their_heads` lacks.
    pub fn changes_since(&self, service: &Name, their_heads: &[ChangeHash]) -> Vec<Vec<u8>> {
        self.docs
            .get(service)
            .map(|d| d.changes_since(their_heads))
            .unwrap_or_default()
    }

    /// The view of every service (or only `service`) at `now_ms`.
    pub fn view(&self, now_ms: u64, service: Option<&Name>) -> StatusView {
        let services: Vec<ServiceView> = self
            .docs
            .values()
            .filter(|d| service.is_none_or(|s| d.service() == s))
            .map(|d| service_view(d, &self.liveness, now_ms, self.regions.as_ref()))
            .collect();
        status_view(services)
    }

    /// The k-of-n status and advisories of a probe-backed component now (see
    /// [`crate::view::probe_agreement`]); `None` without a check.
    pub fn probe_agreement(
        &self,
        now_ms: u64,
        service: &Name,
        component: &Name,
    ) -> Option<(State, Vec<crate::agreement::Advisory>)> {
        let doc = self.docs.get(service)?;
        crate::view::probe_agreement(
            doc,
            &self.liveness,
            now_ms,
            self.regions.as_ref(),
            component,
        )
    }

    /// Tells the replica the topology's regions (see [`StatusView`]'s retired regions).
    pub fn set_regions(&mut self, regions: BTreeSet<Name>) {
        self.regions = Some(regions);
    }

    /// The put of a timeline entry, under a key that sorts by time and is unique per node.
    fn update_put(&self, service: &Name, id: &Name, update: IncidentUpdate) -> Put {
        let count = self.doc(service).map_or(0, |d| d.update_count(id));
        let node: String = self
            .node
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(48)
            .collect();
        Put::Update {
            incident: id.clone(),
            key: format!("{:015}-{node}-{count}", update.at_ms),
            update,
        }
    }

    /// Checks a write of `puts` to `service` without writing: against its document, or a
    /// new one when there is none (`new_services` of them already planned in this batch).
    fn plan_records(
        &self,
        service: &Name,
        puts: &[Put],
        new_services: usize,
    ) -> Result<Option<PlannedPuts>, CrdtError> {
        match self.docs.get(service) {
            Some(doc) => doc.plan_puts(puts),
            None => {
                self.check_room(service, new_services)?;
                ServiceDoc::new(service.clone(), self.actor.clone()).plan_puts(puts)
            }
        }
    }

    /// Commits a write planned by [`Self::plan_records`]; a new service's document is kept
    /// only when the write succeeds.
    fn commit_records(
        &mut self,
        now_ms: u64,
        service: &Name,
        puts: &[Put],
        plan: Option<PlannedPuts>,
    ) -> Result<WriteOutcome, CrdtError> {
        if let Some(doc) = self.docs.get_mut(service) {
            return Self::commit_into(doc, &self.node, now_ms, puts, plan);
        }
        let mut doc = ServiceDoc::new(service.clone(), self.actor.clone());
        let outcome = Self::commit_into(&mut doc, &self.node, now_ms, puts, plan)?;
        self.docs.insert(service.clone(), doc);
        Ok(outcome)
    }

    fn commit_into(
        doc: &mut ServiceDoc,
        node: &str,
        now_ms: u64,
        puts: &[Put],
        plan: Option<PlannedPuts>,
    ) -> Result<WriteOutcome, CrdtError> {
        let written = match plan {
            Some(plan) => doc.commit_puts(now_ms, node, plan)?,
            None => None,
        };
        let Some(LocalChange { mut change, keys }) = written else {
            return Ok(WriteOutcome {
                service: doc.service().clone(),
                changed: false,
                change: None,
                change_hash: None,
                events: Vec::new(),
                doc_events: Vec::new(),
                transitions: Vec::new(),
            });
        };
        let doc_events = doc.events_for_local_puts(puts, &keys, node, now_ms);
        let hash = change.hash();
        Ok(WriteOutcome {
            service: doc.service().clone(),
            changed: true,
            change_hash: Some(hash),
            change: Some(change.bytes().into_owned()),
            events: status_only(&doc_events),
            transitions: doc.transitions_of_local(&hash, doc_events.clone()),
            doc_events,
        })
    }

    /// Refuses a new service beyond [`SERVICES_MAX`] documents (`pending` new ones already
    /// planned).
    fn check_room(&self, service: &Name, pending: usize) -> Result<(), CrdtError> {
        if self.docs.len() + pending >= SERVICES_MAX {
            return Err(CrdtError::InvalidField {
                field: "service",
                value: service.to_string(),
                reason: format!("this node already holds the maximum of {SERVICES_MAX} services"),
            });
        }
        Ok(())
    }
}

fn status_only(events: &[DocEvent]) -> Vec<StatusEvent> {
    events
        .iter()
        .filter_map(|e| match e {
            DocEvent::Status(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
#[path = "replica_tests.rs"]
mod tests;
