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

#[tokio::test]
async fn bench_sse_reports_no_lost_and_no_duplicated_deliveries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = "bench-sse-token";
    let mesh = harness::start_mesh(dir.path(), token).await;
    let nodes = &mesh.nodes;

    let target_pid = mesh.procs[0].child.id().to_string();
    let mut command = Command::new(harness::BIN);
    command.args([
        "bench",
        "sse",
        "--subscribers",
        "5",
        "--rate",
        "10",
        "--duration",
        "2s",
        "--target",
        &nodes[0].url(""),
        "--write",
        &nodes[1].url(""),
        "--token",
        token,
        "--target-pid",
        &target_pid,
    ]);
    let mut bench = Proc::spawn(command, dir.path().join("bench.log"));
    let deadline = Instant::now() + BENCH_WAIT;
    let status = loop {
        if let Some(status) = bench.child.try_wait().expect("poll the bench process") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "bench sse did not finish within {BENCH_WAIT:?}:\n{}",
            bench.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let report = bench.output();
    assert!(status.success(), "bench sse failed:\n{report}");
    let expected = figure(&report, "expected").expect("an expected count");
    assert_eq!(expected, 5 * 20, "5 subscribers x 20 writes:\n{report}");
    assert_eq!(figure(&report, "received"), Some(expected), "{report}");
    assert_eq!(figure(&report, "lost"), Some(0), "{report}");
    assert_eq!(figure(&report, "duplicated"), Some(0), "{report}");
    assert!(report.contains("per subscriber"), "RSS measured:\n{report}");
}
