//! Every input that ever crashed the `gossip_frame` fuzz target
//! (`tests/fuzz-crashers/gossip_frame/`) and every seed of its corpus
//! (`fuzz/seeds/gossip_frame/`), run through the same function the target runs. See
//! fuzz/README.md.

use std::path::{Path, PathBuf};

use statusmesh_crdt::fuzz::seed_name;
use statusmesh_gossip::{codec, fuzz};

/// The corpus IO (`fuzz/corpus.rs`): tests read and write files, the crate does not.
#[path = "../../fuzz/corpus.rs"]
mod corpus;

fn dir(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

#[test]
fn frame_inputs_that_once_failed_pass() {
    corpus::replay_dir(&dir("tests/fuzz-crashers/gossip_frame"), fuzz::frame);
    let seeds = corpus::replay_dir(&dir("../fuzz/seeds/gossip_frame"), fuzz::frame);
    assert!(seeds > 0, "no seeds; run the ignored write_fuzz_seeds");
}

#[test]
fn the_seeds_are_frames_the_codec_accepts() {
    let seeds = fuzz::seed_frames();
    assert!(seeds.len() >= 3, "{} seed frames", seeds.len());
    for seed in &seeds {
        assert!(codec::decode(seed).is_ok(), "{seed:?}");
    }
}

/// Regenerates the seed corpus from the real encoders:
/// `cargo test -p statusmesh-gossip --test fuzz_regressions -- --ignored`.
#[test]
#[ignore = "writes fuzz/seeds; run by hand after a format change"]
fn write_fuzz_seeds() {
    corpus::write_seeds(&dir("../fuzz/seeds/gossip_frame"), &fuzz::seed_frames())
        .expect("write seeds");
}
