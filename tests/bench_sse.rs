//! `statusmesh bench sse` against a real mesh: a few subscribers on one node, writes on
//! another, and the report says every write reached every subscriber exactly once.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{self, Proc};

/// How long the bench may run in all: two seconds of writes, connects and its bounded
/// grace period, with room for a loaded machine.
const BENCH_WAIT: Duration = Duration::from_secs(120);

/// The number after `label` in the report's `deliveries` line.
fn figure(report: &str, label: &str) -> Option<u64> {
    let line = report.lines().find(|l| l.starts_with("deliveries"))?;
    let rest = &line[line.find(label)? + label.len()..];
    rest.trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Runs `statusmesh bench <args>` to the end (bounded) and returns its report.
async fn run_bench(dir: &std::path::Path, args: &[&str]) -> String {
    let mut command = Command::new(harness::BIN);
    command.arg("bench").args(args);
    let mut bench = Proc::spawn(command, dir.join(format!("bench-{}.log", args[0])));
    let deadline = Instant::now() + BENCH_WAIT;
    let status = loop {
        if let Some(status) = bench.child.try_wait().expect("poll the bench process") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "bench {} did not finish within {BENCH_WAIT:?}:\n{}",
            args[0],
            bench.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let report = bench.output();
    assert!(status.success(), "bench {} failed:\n{report}", args[0]);
    report
}

#[tokio::test]
async fn bench_sse_and_soak_report_no_lost_and_no_duplicated_deliveries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = "bench-sse-token";
    let mesh = harness::start_mesh(dir.path(), token).await;
    let nodes = &mesh.nodes;
    let (target, write) = (nodes[0].url(""), nodes[1].url(""));
    let target_pid = mesh.procs[0].child.id().to_string();
    let writer_pid = mesh.procs[1].child.id().to_string();
    let load = [
        "--subscribers",
        "5",
        "--rate",
        "10",
        "--target",
        &target,
        "--write",
        &write,
        "--token",
        token,
    ];

    let mut sse = vec!["sse", "--duration", "2s", "--target-pid", &target_pid];
    sse.extend(load);
    let report = run_bench(dir.path(), &sse).await;
    let expected = figure(&report, "expected").expect("an expected count");
    assert_eq!(expected, 5 * 20, "5 subscribers x 20 writes:\n{report}");
    assert_eq!(figure(&report, "received"), Some(expected), "{report}");
    assert_eq!(figure(&report, "lost"), Some(0), "{report}");
    assert_eq!(figure(&report, "duplicated"), Some(0), "{report}");
    assert!(report.contains("per subscriber"), "RSS measured:\n{report}");

    // A soak of 3 s sampled every second: samples of both nodes, then the growth line.
    let mut soak = vec![
        "soak",
        "--minutes",
        "0.05",
        "--interval",
        "1s",
        "--pid",
        &target_pid,
        "--pid",
        &writer_pid,
    ];
    soak.extend(load);
    let report = run_bench(dir.path(), &soak).await;
    assert_eq!(figure(&report, "lost"), Some(0), "{report}");
    assert_eq!(figure(&report, "duplicated"), Some(0), "{report}");
    let samples = report.lines().filter(|l| l.starts_with("sample")).count();
    assert!(samples >= 2, "a sample per second:\n{report}");
    for pid in [&target_pid, &writer_pid] {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with("growth") && l.contains(&format!("pid {pid} "))),
            "growth of {pid}:\n{report}"
        );
    }
}

#[tokio::test]
async fn bench_write_reports_every_acknowledged_write_seen_on_the_observer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = "bench-write-token";
    let mesh = harness::start_mesh(dir.path(), token).await;
    let nodes = &mesh.nodes;
    let (target, observe) = (nodes[0].url(""), nodes[2].url(""));
    let args = [
        "write",
        "--target",
        &target,
        "--token",
        token,
        "--concurrency",
        "4",
        "--duration",
        "1s",
        "--observe",
        &observe,
    ];
    let report = run_bench(dir.path(), &args).await;
    let line = report
        .lines()
        .find(|l| l.trim_start().starts_with("of "))
        .unwrap_or_else(|| panic!("no visibility line:\n{report}"));
    let acked: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(acked > 0, "{report}");
    assert!(
        line.contains(&format!("{acked} seen as their own event")) && line.contains(", 0 not seen"),
        "a light load: every write seen as its own event:\n{report}"
    );
}
