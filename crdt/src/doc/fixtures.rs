//! Fixtures shared by the unit tests of the document's files: documents, puts, hand-made
//! changes, and the snapshot that shows an error changed nothing.

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, AutoCommit, ChangeHash, ROOT};

use super::{Put, ServiceDoc};
use crate::liveness::Liveness;
use crate::model::{Name, Observation, State};
use crate::records::{Impact, Incident, IncidentStatus, IncidentUpdate};

/// The reader's clock of every view in these tests.
pub(super) const NOW_MS: u64 = 10_000;

pub(super) fn name(text: &str) -> Name {
    Name::parse("name", text).expect("a valid name")
}

/// An empty document of service `api` writing as `[actor; 16]`.
pub(super) fn doc(actor: u8) -> ServiceDoc {
    ServiceDoc::new(name("api"), ActorId::from(vec![actor; 16]))
}

pub(super) fn observation(state: State, message: &str) -> Observation {
    Observation {
        state,
        message: message.into(),
        reporter: "probe".into(),
        observed_at_ms: 1_000,
        ttl_ms: 60_000,
    }
}

/// The put of an observation of `component` in `eu-west`.
pub(super) fn put(component: &str, state: State, message: &str) -> Put {
    Put::Observation {
        component: name(component),
        region: name("eu-west"),
        observation: observation(state, message),
    }
}

/// Writes an observation as node `n1` and returns the change's bytes.
pub(super) fn write(doc: &mut ServiceDoc, now_ms: u64, component: &str, state: State) -> Vec<u8> {
    let mut change = doc
        .apply_puts(now_ms, "n1", &[put(component, state, "")])
        .expect("a valid write")
        .expect("a change");
    change.bytes().into_owned()
}

pub(super) fn incident() -> Incident {
    Incident {
        title: "Elevated errors".into(),
        impact: Impact::Major,
        status: IncidentStatus::Investigating,
        components: vec![name("db")],
        opened_at_ms: 1_000,
        resolved_at_ms: None,
        author: "ops".into(),
    }
}

pub(super) fn update(at_ms: u64, text: &str) -> IncidentUpdate {
    IncidentUpdate {
        at_ms,
        status: IncidentStatus::Investigating,
        text: text.into(),
        author: "ops".into(),
    }
}

/// A change made by hand under `actor`, putting `value` under the root key `key`: what a
/// peer that ignores the schema could send.
pub(super) fn rogue_change(actor: Vec<u8>, key: &str, value: &str) -> Vec<u8> {
    let mut rogue = AutoCommit::new().with_actor(ActorId::from(actor));
    rogue.put(ROOT, key, value).expect("put");
    rogue.commit_with(CommitOptions::default().with_message("rogue".to_owned()));
    let mut changes = rogue.get_changes(&[]);
    changes.pop().expect("one change").bytes().into_owned()
}

/// Everything a caller can see of a document: an error that "changed nothing" leaves it equal.
#[derive(Debug, PartialEq)]
pub(super) struct Snapshot {
    heads: Vec<ChangeHash>,
    history_len: usize,
    history_bytes: u64,
    view: serde_json::Value,
    epoch: u32,
    saved_prev: Option<Vec<u8>>,
    irregular_applies: u64,
}

pub(super) fn snapshot(doc: &ServiceDoc) -> Snapshot {
    let view = crate::view::service_view(doc, &Liveness::default(), NOW_MS, None);
    Snapshot {
        heads: doc.heads(),
        history_len: doc.history_len(),
        history_bytes: doc.history_bytes(),
        view: serde_json::to_value(view).expect("a view serialises"),
        epoch: doc.epoch(),
        saved_prev: doc.save_prev(),
        irregular_applies: doc.irregular_applies(),
    }
}
