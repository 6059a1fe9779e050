//! Reading and writing fuzz corpora: the file IO of the fuzz regression tests, kept out of
//! the pure crates' code (their `clippy.toml` bans `std::fs`). A regression test includes
//! this file as a module, beside the seed naming it uses:
//!
//! ```ignore
//! use statusmesh_crdt::fuzz::seed_name;
//! #[path = "../../fuzz/corpus.rs"] // relative to the including file's directory
//! mod corpus;
//! ```
//!
//! It is not a target of the fuzz crate: each target calls a pure `fuzz` function of the
//! crate it exercises, and the regression tests run the committed inputs through the same
//! function.
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "the one place the fuzz corpora are read and written, for tests"
)]
#![allow(dead_code, reason = "an includer may use one of the two")]

use std::path::Path;

use super::seed_name;

/// Runs every file in `dir` through `target` (a regression test's replay of committed
/// crashers or seeds), in file-name order; returns how many ran. A missing directory runs
/// none.
pub fn replay_dir(dir: &Path, target: impl Fn(&[u8])) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in &paths {
        let data = std::fs::read(path).expect("a committed fuzz input is readable");
        eprintln!("replaying {}", path.display());
        target(&data);
    }
    paths.len()
}

/// Writes `seeds` into `dir`, each under [`seed_name`] (named by its content, as libFuzzer
/// names corpus files, so a seed is never stored twice).
pub fn write_seeds(dir: &Path, seeds: &[Vec<u8>]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for seed in seeds {
        std::fs::write(dir.join(seed_name(seed)), seed)?;
    }
    Ok(())
}
