//! Entry points of the fuzz targets in `fuzz/` that reach this crate.
//!
//! Each takes the raw bytes libFuzzer generates and panics only when the code under test
//! broke a promise: a decoder panicked, or something it accepted does not behave. The
//! regression tests (`crdt/tests/fuzz_regressions.rs`) run every committed input through the
//! very same functions, so a crasher that is fixed stays fixed in `cargo test`.
//!
//! Everything here is pure, bytes in: reading and writing the corpus files is the tests' job
//! (`fuzz/corpus.rs`, which they include).

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, Automerge, ObjType, ScalarValue, ROOT};

use crate::model::{Name, Observation, State};
use crate::records::{Impact, Incident, IncidentStatus, IncidentUpdate, Maintenance, Override};
use crate::{Cursor, Replica, ServiceDoc};

/// The service every fuzzed document belongs to.
const SERVICE: &str = "api";
/// Upper bound on the time fed to views, so arithmetic on it is not the thing under test.
const NOW_MS: u64 = 1_700_000_000_000;

/// Splits fuzz input into length-prefixed chunks (u16 little-endian length, then the bytes);
/// a short tail is one last chunk. [`length_prefixed`] is the inverse, for seeds.
pub fn chunks(mut data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while data.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([data[0], data[1]]));
        let rest = &data[2..];
        let take = len.min(rest.len());
        out.push(rest[..take].to_vec());
        data = &rest[take..];
    }
    if !data.is_empty() {
        out.push(data.to_vec());
    }
    out
}

/// The input [`chunks`] splits back into `parts` (each part at most 65,535 bytes).
pub fn length_prefixed(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        let len = u16::try_from(part.len()).expect("a seed chunk fits in u16");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// Target `crdt_remote_changes`: arbitrary bytes as a batch of remote changes (and as a saved
/// document). A batch is applied whole or not at all; what is accepted can be read, is
/// idempotent, and survives save and a validating load.
pub fn remote_changes(data: &[u8]) {
    let service = Name::parse("service", SERVICE).expect("valid name");
    // The same bytes as a saved document from elsewhere: validated like remote changes.
    let _ = ServiceDoc::load(service.clone(), data, ActorId::from(vec![9; 16]));
    let changes = chunks(data);
    let mut replica = Replica::new("fuzz-1", ActorId::from(vec![1; 16]));
    apply_and_check(&mut replica, &changes);
}

/// Target `crdt_structured_changes`: real Automerge changes built from the input (puts of
/// valid and invalid records under schema and non-schema keys, nested objects, lists, text,
/// counters, deletes), so that the fuzzer reaches the schema checks instead of stopping at
/// the binary decoder. Whatever the replica accepts must obey the schema.
pub fn structured_changes(data: &[u8]) {
    let mut input = Input(data);
    let mut author = Automerge::new().with_actor(ActorId::from(vec![input.byte() | 1; 16]));
    let change_count = 1 + input.byte() % 3;
    for _ in 0..change_count {
        let mut tx = author.transaction();
        let op_count = input.byte() % 8;
        for _ in 0..op_count {
            let key = input.key();
            // Automerge refuses some operations (e.g. deleting what is not there); the
            // fuzzer only needs the ones it takes.
            let _ = match input.byte() % 8 {
                0 => tx.put(ROOT, &key, ScalarValue::Str(input.record_json(&key).into())),
                1 => tx.put(ROOT, &key, ScalarValue::Str(input.text(64).into())),
                2 => tx.put(ROOT, &key, ScalarValue::Int(i64::from(input.byte()))),
                3 => tx.delete(ROOT, &key),
                4 => tx
                    .put_object(ROOT, &key, ObjType::Map)
                    .and_then(|map| tx.put(&map, "state", "operational")),
                5 => tx
                    .put_object(ROOT, &key, ObjType::List)
                    .and_then(|list| tx.insert(&list, 0, "x")),
                6 => tx
                    .put(ROOT, &key, ScalarValue::counter(1))
                    .and_then(|()| tx.increment(ROOT, &key, 2)),
                _ => tx
                    .put_object(ROOT, &key, ObjType::Text)
                    .and_then(|text| tx.splice_text(&text, 0, 0, "{}")),
            };
        }
        let time = i64::from(input.byte()) * 1_000;
        let message = input.text(16);
        tx.commit_with(
            CommitOptions::default()
                .with_time(time)
                .with_message(message),
        );
    }
    let changes: Vec<Vec<u8>> = author
        .get_changes(&[])
        .into_iter()
        .map(|mut change| change.bytes().into_owned())
        .collect();
    let mut replica = Replica::new("fuzz-1", ActorId::from(vec![2; 16]));
    apply_and_check(&mut replica, &changes);
}

/// Target `cursor`: arbitrary text as a `Last-Event-ID` / `?cursor=`. A cursor that decodes
/// encodes back to an equal one, and a replica can answer what came after it.
pub fn cursor(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(cursor) = Cursor::decode(&text) else {
        return;
    };
    assert_eq!(
        Cursor::decode(&cursor.encode()).ok().as_ref(),
        Some(&cursor),
        "a decoded cursor re-encodes to the same cursor"
    );
    let replica = seeded_replica();
    let _ = replica.events_since(&cursor);
    let _ = replica.doc_events_since(&cursor);
}

/// A replica holding one observation, for targets that read against real content.
pub fn seeded_replica() -> Replica {
    let mut replica = Replica::new("fuzz-0", ActorId::from(vec![3; 16]));
    let write = crate::StatusWrite::parse(
        SERVICE,
        "db",
        "eu-west",
        Observation {
            state: State::DegradedPerformance,
            message: "slow".into(),
            reporter: "probe".into(),
            observed_at_ms: NOW_MS,
            ttl_ms: 60_000,
        },
    )
    .expect("valid write");
    replica.write_status(NOW_MS, &write).expect("fresh write");
    replica
}

/// Seeds for `crdt_remote_changes`, made by the real encoders: the changes of a replica
/// that wrote an observation, opened and updated an incident, set a maintenance window and an
/// override, as batches (one change, all of them) and as a saved document.
pub fn seed_remote_changes() -> Vec<Vec<u8>> {
    let mut replica = seeded_replica();
    let service = Name::parse("service", SERVICE).expect("valid name");
    let name = |text: &str| Name::parse("name", text).expect("valid name");
    let incident = Incident {
        title: "Elevated errors".into(),
        impact: Impact::Major,
        status: IncidentStatus::Investigating,
        components: vec![name("db")],
        opened_at_ms: NOW_MS,
        resolved_at_ms: None,
        author: "ops".into(),
    };
    replica
        .open_incident(NOW_MS + 1, &service, &name("i1"), incident, "looking")
        .expect("open incident");
    let resolve = crate::IncidentChange {
        status: Some(IncidentStatus::Resolved),
        impact: None,
        title: None,
        components: None,
        text: Some("fixed".into()),
        author: "ops".into(),
    };
    replica
        .change_incident(NOW_MS + 2, &service, &name("i1"), resolve)
        .expect("resolve incident");
    let records = [
        crate::doc::Put::Maintenance {
            id: name("w1"),
            window: Some(Maintenance {
                title: "upgrade".into(),
                components: vec![name("db")],
                starts_at_ms: NOW_MS,
                ends_at_ms: NOW_MS + 3_600_000,
                author: "ops".into(),
            }),
        },
        crate::doc::Put::Override {
            component: name("db"),
            value: Some(Override {
                state: State::MajorOutage,
                reason: "confirmed".into(),
                author: "ops".into(),
                at_ms: NOW_MS,
                until_ms: None,
            }),
        },
    ];
    replica
        .write_records(NOW_MS + 3, &service, &records)
        .expect("records");
    let doc = replica.doc(&service).expect("written document");
    let changes = doc.changes_since(&[]);
    let mut seeds: Vec<Vec<u8>> = changes
        .iter()
        .map(|change| length_prefixed(std::slice::from_ref(change)))
        .collect();
    seeds.push(length_prefixed(&changes));
    let saved = doc.save();
    // An epoch's base and a write carried on top of it: the cut is one change back, so the
    // last records write is carried.
    // One writer, so the changes are a chain: the one before the last is a cut.
    let cut = changes
        .len()
        .checked_sub(2)
        .and_then(|i| automerge::Change::try_from(changes[i].as_slice()).ok())
        .map(|change| vec![change.hash()]);
    if let Some(cut) = cut {
        if let Ok(Some(rolled)) = replica.rollover(&service, &cut) {
            for change in &rolled.made {
                seeds.push(length_prefixed(std::slice::from_ref(change)));
            }
            seeds.push(length_prefixed(&rolled.made));
        }
    }
    // The last seed is a saved document.
    seeds.push(saved);
    seeds
}

/// Seeds for `cursor`: the cursor of a replica with one service, and of none.
pub fn seed_cursors() -> Vec<Vec<u8>> {
    let replica = seeded_replica();
    vec![
        replica.cursor().encode().into_bytes(),
        Cursor::default().encode().into_bytes(),
    ]
}

/// The file name of a seed in a corpus directory: the hash of its content, so a seed is
/// never stored twice (libFuzzer names corpus files by content too).
pub fn seed_name(seed: &[u8]) -> String {
    let mut hash = crate::liveness::Fnv64::new();
    hash.write(seed);
    format!("seed-{:016x}", hash.finish())
}

/// Applies `changes` and checks the promises of `Replica::apply_remote`.
fn apply_and_check(replica: &mut Replica, changes: &[Vec<u8>]) {
    let service = Name::parse("service", SERVICE).expect("valid name");
    let heads_before = replica.doc(&service).map(ServiceDoc::heads);
    let Ok(outcome) = replica.apply_remote(SERVICE, changes) else {
        let heads_after = replica.doc(&service).map(ServiceDoc::heads);
        assert_eq!(
            heads_before.unwrap_or_default(),
            heads_after.unwrap_or_default(),
            "a rejected batch changed the document"
        );
        return;
    };
    let _ = replica.view(NOW_MS, None);
    let _ = replica.view(NOW_MS, Some(&service));
    let heads = replica.doc(&service).map(ServiceDoc::heads);
    replica
        .apply_remote(SERVICE, changes)
        .expect("a batch accepted once is accepted again");
    // Changes still waiting for their dependencies count as new again; the document does not.
    assert_eq!(
        replica.doc(&service).map(ServiceDoc::heads),
        heads,
        "re-applying a batch changed the document"
    );
    if outcome.new_changes == 0 {
        return;
    }
    let doc = replica.doc(&service).expect("a document that took changes");
    let loaded = ServiceDoc::load(service.clone(), &doc.save(), ActorId::from(vec![4; 16]))
        .expect("what was accepted loads back with validation");
    assert_eq!(loaded.heads(), doc.heads(), "save and load keep the heads");
    let _ = doc.cells();
    let _ = doc.incidents();
    let _ = doc.maintenance();
    let _ = doc.overrides();
}

/// A reader over fuzz input that yields zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&first, rest)) => {
                self.0 = rest;
                first
            }
            None => 0,
        }
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |n, _| (n << 8) | u64::from(self.byte()))
    }

    /// A number half of the time, depending on the input.
    fn maybe_u64(&mut self) -> Option<u64> {
        self.byte().is_multiple_of(2).then(|| self.u64())
    }

    /// Up to `max` bytes of input as (lossy) UTF-8.
    fn text(&mut self, max: usize) -> String {
        let len = usize::from(self.byte()).min(max).min(self.0.len());
        let (text, rest) = self.0.split_at(len);
        self.0 = rest;
        String::from_utf8_lossy(text).into_owned()
    }

    /// A root key: mostly the schema's prefixes with a name or two, sometimes anything.
    fn key(&mut self) -> String {
        let names = ["api", "db", "eu-west", "i1", "k1", "w1", "", "UPPER", "a/b"];
        let kind = self.byte() % 7;
        let mut name = || names[usize::from(self.byte()) % names.len()];
        match kind {
            0 => format!("obs/{}/{}", name(), name()),
            1 => format!("inc/{}", name()),
            2 => format!("upd/{}/{}", name(), name()),
            3 => format!("mnt/{}", name()),
            4 => format!("ovr/{}", name()),
            5 => name().to_owned(),
            _ => self.text(32),
        }
    }

    /// A JSON record of the kind the key's prefix calls for, with fields from the input
    /// (valid or not).
    fn record_json(&mut self, key: &str) -> String {
        let name = |input: &mut Self| {
            let text = input.text(12);
            Name::parse("name", &text).unwrap_or_else(|_| Name::parse("name", "n").expect("valid"))
        };
        let state = State::ALL[usize::from(self.byte()) % State::ALL.len()];
        let impact = [Impact::None, Impact::Minor, Impact::Major, Impact::Critical]
            [usize::from(self.byte()) % 4];
        let status = [
            IncidentStatus::Investigating,
            IncidentStatus::Identified,
            IncidentStatus::Monitoring,
            IncidentStatus::Resolved,
        ][usize::from(self.byte()) % 4];
        let value = match key.split('/').next() {
            Some("obs") => serde_json::to_value(Observation {
                state,
                message: self.text(64),
                reporter: self.text(12),
                observed_at_ms: self.u64(),
                ttl_ms: self.u64(),
            }),
            Some("inc") => serde_json::to_value(Incident {
                title: self.text(32),
                impact,
                status,
                components: vec![name(self)],
                opened_at_ms: self.u64(),
                resolved_at_ms: self.maybe_u64(),
                author: self.text(12),
            }),
            Some("upd") => serde_json::to_value(IncidentUpdate {
                at_ms: self.u64(),
                status,
                text: self.text(32),
                author: self.text(12),
            }),
            Some("mnt") => serde_json::to_value(Maintenance {
                title: self.text(32),
                components: vec![name(self)],
                starts_at_ms: self.u64(),
                ends_at_ms: self.u64(),
                author: self.text(12),
            }),
            _ => serde_json::to_value(Override {
                state,
                reason: self.text(32),
                author: self.text(12),
                at_ms: self.u64(),
                until_ms: self.maybe_u64(),
            }),
        };
        value.map(|v| v.to_string()).unwrap_or_default()
    }
}
