//! Storage round trips: logs, snapshots, rollovers, locks and archives on a temporary
//! directory.

use std::fs::{self, OpenOptions};
use std::io::Write;

use statusmesh_crdt::archive::{ArchiveWriter, ArchivedWrite};

use super::*;
use statusmesh_crdt::{Observation, Replica, State, StatusWrite};

fn write(component: &str, message: &str) -> StatusWrite {
    StatusWrite::parse(
        "api",
        component,
        "eu-west",
        Observation {
            state: State::Operational,
            message: message.into(),
            reporter: "probe".into(),
            observed_at_ms: 1_000,
            ttl_ms: 60_000,
        },
    )
    .expect("valid write")
}

#[test]
fn a_log_stops_at_the_first_torn_or_corrupt_record() {
    let mut bytes = Vec::new();
    encode_record(&mut bytes, b"one");
    encode_record(&mut bytes, b"two");
    let whole = bytes.len();
    encode_record(&mut bytes, b"three");
    let (records, valid) = parse_log(&bytes);
    assert_eq!(records.len(), 3);
    assert_eq!(valid, bytes.len());
    // Torn: the last record is cut short.
    let (records, valid) = parse_log(&bytes[..bytes.len() - 2]);
    assert_eq!(records, vec![b"one".to_vec(), b"two".to_vec()]);
    assert_eq!(valid, whole);
    // Corrupt: a flipped payload byte fails its checksum.
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    assert_eq!(parse_log(&bytes).1, whole);
}

#[tokio::test]
async fn changes_written_before_a_restart_are_loaded_with_a_new_actor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = open(dir.path(), "n1").expect("open");
    assert_eq!(first.incarnation, 1);
    let first_actor = first.actor.clone();
    let mut replica = Replica::from_docs("n1", first.actor, first.docs);
    let service = Name::parse("service", "api").expect("name");
    let mut records = Vec::new();
    for i in 0..5 {
        let outcome = replica
            .write_status(i, &write(&format!("c{i}"), "ok"))
            .expect("write");
        records.extend(outcome.change);
    }
    let storage =
        StorageHandle::start(dir.path().to_owned(), "n1".into(), first.lock).expect("start");
    let (tx, rx) = tokio::sync::oneshot::channel();
    let acked = storage
        .submit(Batch {
            docs: vec![DocWrite {
                service: service.clone(),
                records,
                snapshot: None,
                prev: None,
                archive: Vec::new(),
            }],
            on_durable: vec![Box::new(move || {
                let _ = tx.send(());
            })],
        })
        .await;
    assert!(acked);
    rx.await.expect("acknowledged after fsync");
    storage.close().await;
    // A torn append after the last acknowledged record is cut off on the next start.
    let log = dir.path().join("docs/api/log");
    let mut file = OpenOptions::new().append(true).open(&log).expect("log");
    file.write_all(&[7, 0, 0, 0, 1]).expect("torn bytes");
    drop(file);

    let second = open(dir.path(), "n1").expect("reopen");
    assert_eq!(second.incarnation, 2);
    assert_ne!(second.actor, first_actor);
    assert_eq!(second.truncated_tails, 1);
    let restored = Replica::from_docs("n1", second.actor, second.docs);
    assert_eq!(restored.cursor(), replica.cursor());
    assert_eq!(restored.doc(&service).map(|d| d.cells().len()), Some(5));
}

#[tokio::test]
async fn a_snapshot_replaces_the_log_and_loads_the_same_document() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loaded = open(dir.path(), "n1").expect("open");
    let mut replica = Replica::from_docs("n1", loaded.actor, loaded.docs);
    let lock = loaded.lock;
    let service = Name::parse("service", "api").expect("name");
    let storage = StorageHandle::start(dir.path().to_owned(), "n1".into(), lock).expect("start");
    let first = replica
        .write_status(1, &write("db", "one"))
        .expect("write")
        .change
        .expect("change");
    replica
        .write_status(2, &write("web", "two"))
        .expect("write");
    let snapshot = replica.doc(&service).expect("doc").save();
    for docs in [
        vec![DocWrite {
            service: service.clone(),
            records: vec![first],
            snapshot: None,
            prev: None,
            archive: Vec::new(),
        }],
        vec![DocWrite {
            service: service.clone(),
            records: Vec::new(),
            snapshot: Some(snapshot),
            prev: None,
            archive: Vec::new(),
        }],
    ] {
        let batch = Batch {
            docs,
            on_durable: Vec::new(),
        };
        assert!(storage.submit(batch).await);
    }
    storage.close().await;
    let log = fs::metadata(dir.path().join("docs/api/log")).expect("log");
    assert_eq!(log.len(), 0);
    let again = open(dir.path(), "n1").expect("reopen");
    let restored = Replica::from_docs("n1", again.actor, again.docs);
    assert_eq!(restored.cursor(), replica.cursor());
}

#[tokio::test]
async fn a_rolled_over_document_loads_with_its_previous_epoch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loaded = open(dir.path(), "n1").expect("open");
    let mut replica = Replica::from_docs("n1", loaded.actor, loaded.docs);
    let storage =
        StorageHandle::start(dir.path().to_owned(), "n1".into(), loaded.lock).expect("start");
    let service = Name::parse("service", "api").expect("name");
    replica.write_status(1, &write("db", "one")).expect("write");
    let old_cursor = replica.cursor();
    replica
        .write_status(2, &write("web", "two"))
        .expect("write");
    let heads = replica.doc(&service).expect("doc").heads();
    replica
        .rollover(&service, &heads)
        .expect("rollover")
        .expect("rolled over");
    let doc = replica.doc(&service).expect("doc");
    let batch = Batch {
        docs: vec![DocWrite {
            service: service.clone(),
            records: Vec::new(),
            snapshot: Some(doc.save()),
            prev: doc.save_prev(),
            archive: statusmesh_crdt::archive::writes_of(&doc.prev_writes()),
        }],
        on_durable: Vec::new(),
    };
    assert!(storage.submit(batch).await);
    storage.close().await;
    let again = open(dir.path(), "n1").expect("reopen");
    let restored = Replica::from_docs("n1", again.actor, again.docs);
    let doc = restored.doc(&service).expect("doc");
    assert_eq!(doc.epoch(), 1);
    assert_eq!(restored.cursor(), replica.cursor());
    assert!(doc.prev_has_all(old_cursor.heads_of(&service)));
    let events = restored
        .events_since(&old_cursor)
        .expect("the previous epoch tells");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].component.as_str(), "web");
}

#[test]
fn a_data_directory_in_use_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let held = open(dir.path(), "n1").expect("open");
    let err = open(dir.path(), "n1").expect_err("locked");
    assert!(
        err.to_string().contains("another statusmesh process"),
        "{err}"
    );
    drop(held);
    open(dir.path(), "n1").expect("free again");
}

#[test]
fn a_data_directory_of_another_node_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(open(dir.path(), "n1").expect("open"));
    let err = open(dir.path(), "n2").expect_err("refused");
    assert!(matches!(err, StorageError::WrongNode { .. }), "{err}");
}

fn archived(n: u64, component: &str) -> ArchivedWrite {
    ArchivedWrite {
        at_ms: 1_000 + n,
        changed_at_ms: 1_000 + n,
        component: Name::parse("component", component).expect("name"),
        region: Name::parse("region", "eu-west").expect("name"),
        state: State::Operational,
        message: "all good".into(),
        reporter: "probe".into(),
        origin_node: Some("eu-1".into()),
        writer: [5; 16],
        n,
    }
}

#[test]
fn archive_appends_load_back_in_order_and_by_component() {
    let dir = tempfile::tempdir().expect("temp dir");
    let service_dir = dir.path().join("docs").join("api");
    assert!(load_archive(&service_dir).expect("load").is_empty());
    let first: Vec<_> = (1..=3).map(|n| archived(n, "db")).collect();
    let second: Vec<_> = (4..=5).map(|n| archived(n, "web")).collect();
    assert!(append_archive(&service_dir, &first).expect("append") > 0);
    assert_eq!(append_archive(&service_dir, &[]).expect("append"), 0);
    append_archive(&service_dir, &second).expect("append");
    assert!(archive_path(&service_dir).ends_with("docs/api/archive"));
    assert_eq!(
        load_archive(&service_dir).expect("load"),
        [first.clone(), second].concat()
    );
    let db = Name::parse("component", "db").expect("name");
    assert_eq!(
        load_archive_component(&service_dir, &db).expect("load"),
        first
    );
}

#[test]
fn a_torn_archive_tail_is_truncated_and_appends_continue_after_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let service_dir = dir.path().join("api");
    let first: Vec<_> = (1..=3).map(|n| archived(n, "db")).collect();
    append_archive(&service_dir, &first).expect("append");
    let whole = fs::metadata(archive_path(&service_dir))
        .expect("stat")
        .len();
    // A crash in the middle of the next append: half a block.
    let mut torn = ArchiveWriter::resume(&fs::read(archive_path(&service_dir)).expect("read"))
        .0
        .encode(&[archived(4, "db")]);
    torn.truncate(torn.len() / 2);
    let mut file = OpenOptions::new()
        .append(true)
        .open(archive_path(&service_dir))
        .expect("open");
    file.write_all(&torn).expect("write");
    drop(file);
    assert_eq!(load_archive(&service_dir).expect("load"), first);
    assert_eq!(
        fs::metadata(archive_path(&service_dir))
            .expect("stat")
            .len(),
        whole
    );
    append_archive(&service_dir, &[archived(5, "db")]).expect("append");
    let all = load_archive(&service_dir).expect("load");
    assert_eq!(all.len(), 4);
    assert_eq!(all[3].n, 5);
}
