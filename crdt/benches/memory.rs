//! Memory per component once loaded: documents of components × 5 regions are built and
//! saved, then a fresh child process loads them and reports its resident-set growth per
//! component (a fresh process, so memory freed by the builder cannot hide the cost).
//!
//! Run: `cargo bench -p statusmesh-crdt --bench memory`
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "a benchmark is a driver: it measures through files and processes"
)]

use std::path::PathBuf;
use std::process::Command;

use statusmesh_crdt::{ActorId, Name, Observation, Replica, ServiceDoc, State, StatusWrite};

mod common;
use common::REGIONS;
const COMPONENTS: usize = 200;
const SERVICES: usize = 10;

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn write(service: usize, component: usize, region: &str, state: State, at: u64) -> StatusWrite {
    StatusWrite::parse(
        &format!("svc{service}"),
        &format!("c{component}"),
        region,
        Observation {
            state,
            message: "all good".into(),
            reporter: "probe".into(),
            observed_at_ms: at,
            ttl_ms: 60_000,
        },
    )
    .expect("valid")
}

/// Builds the documents with `flips` state changes per cell, `batch` writes per Automerge
/// change (1: one change per write, the worst case for history), and saves them into `dir`.
fn build(dir: &std::path::Path, flips: usize, batch: usize) -> Vec<PathBuf> {
    let mut writer = Replica::new("writer", ActorId::from(vec![1; 16]));
    let mut paths = Vec::new();
    let mut at = 0;
    for s in 0..SERVICES {
        for flip in 0..flips {
            let state = if flip % 2 == 0 {
                State::Operational
            } else {
                State::DegradedPerformance
            };
            let mut writes = Vec::with_capacity(COMPONENTS * REGIONS.len());
            for c in 0..COMPONENTS {
                for r in REGIONS {
                    at += 1;
                    writes.push(write(s, c, r, state, at));
                }
            }
            for chunk in writes.chunks(batch.max(1)) {
                writer.write_status_batch(at, chunk).expect("write");
            }
        }
        let name = Name::parse("service", &format!("svc{s}")).expect("name");
        let path = dir.join(format!("svc{s}.am"));
        std::fs::write(&path, writer.doc(&name).expect("doc").save()).expect("save");
        paths.push(path);
    }
    paths
}

fn child(paths: &[String]) {
    let Some(before) = rss_kib() else {
        println!("0");
        return;
    };
    let docs: Vec<ServiceDoc> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let bytes = std::fs::read(p).expect("read");
            let name = Name::parse("service", &format!("svc{i}")).expect("name");
            ServiceDoc::load_trusted(name, &bytes, ActorId::from(vec![2; 16])).expect("load")
        })
        .collect();
    let after = rss_kib().unwrap_or(before);
    println!("{}", after.saturating_sub(before));
    std::hint::black_box(docs);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(&args[i + 1..]);
        return;
    }
    if rss_kib().is_none() {
        println!("memory: /proc/self/status not available; nothing measured");
        return;
    }
    let dir = std::env::temp_dir().join(format!("statusmesh-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for (flips, batch) in [(1usize, 1usize), (4, 1), (1, 100), (4, 100)] {
        let paths = build(&dir, flips, batch);
        let saved: u64 = paths
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        let exe = std::env::current_exe().expect("exe");
        let output = Command::new(exe)
            .arg("--child")
            .args(&paths)
            .output()
            .expect("child");
        let grown_kib: f64 = String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap_or(0.0);
        let components = (SERVICES * COMPONENTS) as f64;
        println!(
            "memory: {SERVICES} services x {COMPONENTS} components x {} regions, {flips} value(s) per cell, \
             {batch} write(s) per change ({} changes): RSS +{grown_kib:.0} KiB loaded = {:.0} bytes per component; \
             saved {:.0} bytes per component",
            REGIONS.len(),
            SERVICES * COMPONENTS * REGIONS.len() * flips / batch,
            grown_kib * 1024.0 / components,
            saved as f64 / components,
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
