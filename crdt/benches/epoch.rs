//! Bounded history: 1,000,000 state-changing status writes on 1,000 components x 5 regions,
//! group-committed 250 writes per change, rolling over whenever the history exceeds a bound
//! and archiving each closed epoch. After each quarter of the writes it prints the epoch, the
//! history length, the saved size of the live document, the resident memory of that document
//! once loaded (RSS growth of a fresh child process that loads it, as `memory.rs` measures),
//! its load time, and the archive's bytes per transition.
//!
//! Run: `cargo bench -p statusmesh-crdt --bench epoch` (defaults: 1,000,000 writes,
//! `--rollover-changes 20`); `-- --no-rollover --writes 100000` for the comparison without
//! epochs.
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "a benchmark is a driver: it measures through files and processes"
)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use statusmesh_crdt::archive::{ArchiveReader, ArchiveWriter};
use statusmesh_crdt::history;
use statusmesh_crdt::{ActorId, Name, Observation, Replica, ServiceDoc, State, StatusWrite};

mod common;
use common::REGIONS;
const COMPONENTS: usize = 1_000;
const BATCH: usize = 250;
const SERVICE: &str = "api";
/// Loads timed in the child; the median is reported.
const LOADS: usize = 7;

struct Settings {
    writes: usize,
    rollover_changes: Option<usize>,
}

impl Settings {
    fn parse(args: &[String]) -> Self {
        let value = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|i| args.get(i + 1))
                .and_then(|v| v.replace('_', "").parse::<usize>().ok())
        };
        let no_rollover = args.iter().any(|a| a == "--no-rollover");
        Self {
            writes: value("--writes").unwrap_or(if no_rollover { 100_000 } else { 1_000_000 }),
            rollover_changes: (!no_rollover).then(|| value("--rollover-changes").unwrap_or(20)),
        }
    }
}

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Wall time of `f`. Benchmarks measure time; the pure crate's own code never reads a clock.
#[allow(clippy::disallowed_methods)]
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

/// Write `i`: cell `i mod 5,000`, flipping state every round over all cells, so every write
/// changes its cell's value (a transition).
fn write(i: usize) -> StatusWrite {
    let cell = i % (COMPONENTS * REGIONS.len());
    let round = i / (COMPONENTS * REGIONS.len());
    let state = if round.is_multiple_of(2) {
        State::Operational
    } else {
        State::DegradedPerformance
    };
    StatusWrite::parse(
        SERVICE,
        &format!("c{}", cell / REGIONS.len()),
        REGIONS[cell % REGIONS.len()],
        Observation {
            state,
            message: if round.is_multiple_of(2) {
                "all good".into()
            } else {
                "slow responses".into()
            },
            reporter: "probe".into(),
            observed_at_ms: 1_700_000_000_000 + i as u64 * 10,
            ttl_ms: 60_000,
        },
    )
    .expect("valid write")
}

/// In the child: loads the saved document, prints `rss_growth_kib median_load_us`.
fn child(path: &str) {
    let bytes = std::fs::read(path).expect("read saved document");
    let name = Name::parse("service", SERVICE).expect("name");
    let before = rss_kib().unwrap_or(0);
    let doc =
        ServiceDoc::load_trusted(name.clone(), &bytes, ActorId::from(vec![2; 16])).expect("load");
    let grown = rss_kib().unwrap_or(before).saturating_sub(before);
    std::hint::black_box(&doc);
    let mut loads: Vec<Duration> = (0..LOADS)
        .map(|_| {
            let (doc, took) = timed(|| {
                ServiceDoc::load_trusted(name.clone(), &bytes, ActorId::from(vec![3; 16]))
                    .expect("load")
            });
            std::hint::black_box(doc);
            took
        })
        .collect();
    loads.sort();
    println!("{grown} {}", loads[LOADS / 2].as_micros());
}

fn measure_in_child(path: &Path) -> (u64, u64) {
    let exe = std::env::current_exe().expect("exe");
    let output = Command::new(exe)
        .arg("--child")
        .arg(path)
        .output()
        .expect("child");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut fields = text.split_whitespace().map(|f| f.parse().unwrap_or(0));
    (fields.next().unwrap_or(0), fields.next().unwrap_or(0))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--child") {
        if let Some(path) = args.get(i + 1) {
            child(path);
        }
        return;
    }
    if rss_kib().is_none() {
        println!("epoch: /proc/self/status not available; nothing measured");
        return;
    }
    let settings = Settings::parse(&args);
    let dir = std::env::temp_dir().join(format!("statusmesh-epoch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let saved_path = dir.join("live.am");
    let service = Name::parse("service", SERVICE).expect("name");
    let mut replica = Replica::new("eu-1", ActorId::from(vec![1; 16]));
    let mut archiver = ArchiveWriter::new();
    let mut archive: Vec<u8> = Vec::new();
    let mut archived = 0_usize;
    let mut rollovers = 0_u64;
    let mut rollover_time = Duration::ZERO;
    let report_every = (settings.writes / 4).max(BATCH);
    println!(
        "epoch: {} writes, {COMPONENTS} components x {} regions, {BATCH} writes per change, {}",
        settings.writes,
        REGIONS.len(),
        match settings.rollover_changes {
            Some(n) => format!("rollover when history > {n} changes"),
            None => "no rollover".to_owned(),
        }
    );
    let (_, total) = timed(|| {
        let mut done = 0;
        while done < settings.writes {
            let count = BATCH.min(settings.writes - done);
            let batch: Vec<StatusWrite> = (done..done + count).map(write).collect();
            replica
                .write_status_batch(done as u64, &batch)
                .expect("write batch");
            done += count;
            let doc = replica.doc(&service).expect("doc");
            if settings
                .rollover_changes
                .is_some_and(|n| doc.history_len() > n)
            {
                let heads = doc.heads();
                let (closed, took) = timed(|| {
                    replica
                        .rollover(&service, &heads)
                        .expect("rollover")
                        .expect("rolled over");
                    let doc = replica.doc(&service).expect("doc");
                    statusmesh_crdt::archive::writes_of(&doc.prev_writes())
                });
                rollover_time += took;
                rollovers += 1;
                archived += closed.len();
                archive.extend(archiver.encode(&closed));
            }
            if done.is_multiple_of(report_every) || done == settings.writes {
                let doc = replica.doc(&service).expect("doc");
                let saved = doc.save();
                std::fs::write(&saved_path, &saved).expect("save");
                let (rss_kib, load_us) = measure_in_child(&saved_path);
                let per_transition = if archived == 0 {
                    "-".to_owned()
                } else {
                    format!("{:.2}", archive.len() as f64 / archived as f64)
                };
                println!(
                    "  after {done:>9} writes: epoch {:>4}, history {:>5} changes, saved {:>8} B, \
                     loaded RSS +{:>7} KiB ({:.2}x saved), load {:>7.2} ms, archive {:>9} B \
                     for {archived} transitions = {per_transition} B/transition",
                    doc.epoch(),
                    doc.history_len(),
                    saved.len(),
                    rss_kib,
                    rss_kib as f64 * 1024.0 / saved.len().max(1) as f64,
                    load_us as f64 / 1000.0,
                    archive.len(),
                );
            }
        }
    });
    println!(
        "  {rollovers} rollovers, {:.2} ms each on average (archiving included); whole run {:.1} s",
        rollover_time.as_secs_f64() * 1000.0 / rollovers.max(1) as f64,
        total.as_secs_f64()
    );
    if archived > 0 {
        let ((writes, valid), took) = timed(|| ArchiveReader::read(&archive));
        assert_eq!(valid, archive.len(), "the archive reads back whole");
        assert_eq!(writes.len(), archived, "every archived write reads back");
        let component = Name::parse("component", "c0").expect("name");
        let ((mine, _), took_one) = timed(|| ArchiveReader::read_component(&archive, &component));
        let doc = replica.doc(&service).expect("doc");
        let (timeline, took_timeline) = timed(|| history::timeline_with(doc, &mine, &component));
        let expected = REGIONS.len() * settings.writes / (COMPONENTS * REGIONS.len());
        println!(
            "  archive read back: {} writes in {:.1} ms; one component's {} writes in {:.1} ms; \
             its timeline over archive + live epoch: {} transitions (expected {expected}) in {:.1} ms",
            writes.len(),
            took.as_secs_f64() * 1000.0,
            mine.len(),
            took_one.as_secs_f64() * 1000.0,
            timeline.len(),
            took_timeline.as_secs_f64() * 1000.0,
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
