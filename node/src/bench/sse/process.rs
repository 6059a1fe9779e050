//! What `bench soak` samples from /proc: RSS and open files of the mesh's processes, and
//! the growth from the first sample after warm-up to the last.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;

use super::subscriber::Shared;

/// What a run samples as it goes (`bench soak`).
#[derive(Debug, Clone)]
pub(super) struct Sampling {
    pub(super) interval: Duration,
    pub(super) pids: Vec<u32>,
}

/// One sample of a soak.
#[derive(Debug, Clone)]
pub(super) struct Sample {
    pub(super) at: Duration,
    /// (pid, RSS KiB, open files) per sampled process.
    pub(super) processes: Vec<(u32, u64, u64)>,
}

/// Every `interval` until stopped: one line with each process's RSS and open files and the
/// delivery latency of the interval.
pub(super) async fn sample(
    sampling: Sampling,
    shared: Arc<Shared>,
    started: Instant,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Vec<Sample>> {
    let mut samples = Vec::new();
    let mut ticker =
        tokio::time::interval_at((started + sampling.interval).into(), sampling.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut received_before = shared.received.load(Ordering::Relaxed);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return Ok(samples),
        }
        let mut processes = Vec::with_capacity(sampling.pids.len());
        for &pid in &sampling.pids {
            let (rss, files) = read_process(pid)?;
            processes.push((pid, rss, files));
        }
        let received = shared.received.load(Ordering::Relaxed);
        let latency = match shared.window.drain(&[0.50, 0.99]) {
            Some((values, max)) => format!(
                "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                values[0], values[1], max
            ),
            None => "no deliveries".to_owned(),
        };
        let at = started.elapsed();
        let nodes: Vec<String> = processes
            .iter()
            .map(|(pid, rss, files)| {
                format!("pid {pid} {:.1} MiB {files} fds", *rss as f64 / 1024.0)
            })
            .collect();
        println!(
            "sample {:>6.0}s  {} deliveries  {latency}  {}",
            at.as_secs_f64(),
            received - received_before,
            nodes.join("; ")
        );
        received_before = received;
        samples.push(Sample { at, processes });
    }
}

/// RSS and open files of each sampled process from the first sample after warm-up (the
/// second: the first interval holds allocator and cache growth) to the last.
pub(super) fn print_growth(samples: &[Sample]) {
    let (Some(first), Some(last)) = (samples.get(1).or(samples.first()), samples.last()) else {
        return;
    };
    for ((pid, rss0, files0), (_, rss1, files1)) in first.processes.iter().zip(&last.processes) {
        let percent = |from: u64, to: u64| (to as f64 - from as f64) * 100.0 / from.max(1) as f64;
        println!(
            "growth         pid {pid} from {:.0}s to {:.0}s: RSS {:.1} -> {:.1} MiB ({:+.1}%), open files {files0} -> {files1} ({:+.1}%)",
            first.at.as_secs_f64(),
            last.at.as_secs_f64(),
            *rss0 as f64 / 1024.0,
            *rss1 as f64 / 1024.0,
            percent(*rss0, *rss1),
            percent(*files0, *files1),
        );
    }
}

/// RSS (KiB) and open file descriptors of a process.
pub(super) fn read_process(pid: u32) -> anyhow::Result<(u64, u64)> {
    let rss = read_rss_kib(pid)?;
    let dir = format!("/proc/{pid}/fd");
    let files = std::fs::read_dir(&dir)
        .with_context(|| format!("--pid {pid}: cannot list {dir}"))?
        .count() as u64;
    Ok((rss, files))
}

/// The resident set of a process, from /proc/<pid>/status, in KiB.
pub(super) fn read_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("--target-pid {pid}: cannot read {path}"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .with_context(|| format!("{path} has no VmRSS line"))?;
    line.trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("{path}: cannot read {line:?}"))
}
