//! Every input that ever crashed a fuzz target of this crate (`tests/fuzz-crashers/<target>/`)
//! and every seed of its corpus (`fuzz/seeds/<target>/`), run through the same function the
//! target runs. See fuzz/README.md.

use std::path::{Path, PathBuf};

use statusmesh_crdt::fuzz;
use statusmesh_crdt::fuzz::seed_name;

/// The corpus IO (`fuzz/corpus.rs`): tests read and write files, the crate does not.
#[path = "../../fuzz/corpus.rs"]
mod corpus;

fn dir(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn replay(target: &str, run: fn(&[u8])) {
    corpus::replay_dir(&dir(&format!("tests/fuzz-crashers/{target}")), run);
    let seeds = corpus::replay_dir(&dir(&format!("../fuzz/seeds/{target}")), run);
    assert!(
        seeds > 0,
        "no seeds for {target}; run the ignored write_fuzz_seeds"
    );
}

#[test]
fn remote_change_inputs_that_once_failed_pass() {
    replay("crdt_remote_changes", fuzz::remote_changes);
}

#[test]
fn structured_change_inputs_that_once_failed_pass() {
    replay("crdt_structured_changes", fuzz::structured_changes);
}

#[test]
fn cursor_inputs_that_once_failed_pass() {
    replay("cursor", fuzz::cursor);
}

#[test]
fn the_seeds_are_inputs_the_decoders_accept() {
    for seed in fuzz::seed_cursors() {
        let text = String::from_utf8(seed).expect("a cursor is text");
        assert!(statusmesh_crdt::Cursor::decode(&text).is_ok(), "{text}");
    }
    let changes = fuzz::seed_remote_changes();
    // All but the last (a saved document) are batches of changes.
    let (saved, batches) = changes.split_last().expect("seeds");
    for batch in batches {
        let mut replica = fuzz::seeded_replica();
        let chunks = fuzz::chunks(batch);
        let applied = replica.apply_remote("api", &chunks);
        assert!(applied.is_ok(), "{applied:?}");
    }
    let service = statusmesh_crdt::Name::parse("service", "api").expect("name");
    let loaded = statusmesh_crdt::ServiceDoc::load(service, saved, vec![5; 16].into());
    assert!(loaded.is_ok(), "{loaded:?}");
}

/// Regenerates the seed corpora from the real encoders:
/// `cargo test -p statusmesh-crdt --test fuzz_regressions -- --ignored`.
#[test]
#[ignore = "writes fuzz/seeds; run by hand after a format change"]
fn write_fuzz_seeds() {
    corpus::write_seeds(
        &dir("../fuzz/seeds/crdt_remote_changes"),
        &fuzz::seed_remote_changes(),
    )
    .expect("write seeds");
    // Structured inputs are read byte by byte: a few spread over the choices.
    let structured: Vec<Vec<u8>> = (0u8..8)
        .map(|kind| {
            (0u8..48)
                .map(|i| i.wrapping_mul(37).wrapping_add(kind))
                .collect()
        })
        .collect();
    corpus::write_seeds(&dir("../fuzz/seeds/crdt_structured_changes"), &structured)
        .expect("write seeds");
    corpus::write_seeds(&dir("../fuzz/seeds/cursor"), &fuzz::seed_cursors()).expect("write seeds");
}
