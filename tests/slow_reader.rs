//! A reader that stops reading: the node's memory stays bounded, and when the reader reads
//! again it catches up from its last event: every transition it missed, or beyond the bound
//! each record once with the number of transitions folded into it, and then live events.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{self, WAIT};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Writes beyond the node's event buffer (4,096 events) and beyond the transitions one
/// catch-up replays one by one (5,000), while the reader is away.
const WRITES: usize = 8_000;
/// Components written, round robin.
const COMPONENTS: usize = 50;
/// How long the reader does not read.
const PAUSE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_reader_that_stops_for_thirty_seconds_does_not_grow_memory_and_catches_up() {
    if !std::path::Path::new("/proc/self/status").exists() {
        eprintln!("skipped: no /proc to read memory from");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let token = "slow-token";
    // No rollover while the reader is away: its cursor's history stays, so the catch-up is
    // from the document (a cursor of an epoch compacted since gets a fresh snapshot).
    let mesh = harness::start_mesh_with_args(
        dir.path(),
        token,
        &["--epoch-history-changes-max", "1000000"],
    )
    .await;
    let (nodes, client) = (&mesh.nodes, &mesh.client);
    let (reader_node, writer) = (&nodes[0], &nodes[1]);
    let pid = mesh.procs[0].child.id();

    // A raw connection, so that "not reading" really leaves bytes in the kernel's buffers,
    // with a small receive buffer so that what the kernel holds for it stays small next to
    // what it misses (loopback otherwise autotunes it to megabytes).
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(16 * 1024)
        .expect("receive buffer");
    let mut stream = socket.connect(reader_node.http).await.expect("connect");
    stream
        .write_all(
            b"GET /v1/events?service=api HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
        )
        .await
        .expect("request");
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + WAIT;
    while !String::from_utf8_lossy(&seen).contains("event: snapshot") {
        assert!(Instant::now() < deadline, "no snapshot");
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("read")
            .expect("read");
        assert!(n > 0, "closed before the snapshot");
        seen.extend_from_slice(&buf[..n]);
    }
    let rss_before = rss_kib(pid);

    // Stop reading; the mesh keeps changing.
    let paused_at = Instant::now();
    for i in 0..WRITES {
        let state = if i % 2 == 0 {
            "major_outage"
        } else {
            "operational"
        };
        let (code, reply) = harness::put_status(
            client,
            writer,
            token,
            &format!("api/c{}/us-east", i % COMPONENTS),
            json!({ "state": state, "message": format!("write {i}") }),
        )
        .await;
        assert_eq!(code, 200, "{reply}");
    }
    let last: Vec<(String, String)> = (0..COMPONENTS)
        .map(|c| {
            let i = (WRITES - COMPONENTS..WRITES)
                .find(|i| i % COMPONENTS == c)
                .unwrap_or(0);
            (format!("c{c}"), format!("write {i}"))
        })
        .collect();
    harness::wait_for("the reader's node to hold the last write", || async {
        let view = harness::get_json(client, reader_node.url("/v1/status/api")).await?;
        let text = view.to_string();
        text.contains(&format!("write {}", WRITES - 1))
            .then_some(())
    })
    .await;
    if let Some(rest) = PAUSE.checked_sub(paused_at.elapsed()) {
        // The pause itself is the test's subject: the reader is away this long.
        tokio::time::sleep(rest).await;
    }
    let rss_after = rss_kib(pid);
    // Bounded: the node buffers at most its fixed event ring for everyone, not per reader.
    assert!(
        rss_after < rss_before + 64 * 1024,
        "node RSS grew from {rss_before} KiB to {rss_after} KiB while a reader was away"
    );

    // Read again: whatever was in the pipe, then the catch-up from the last event the node
    // queued. The reader must end with every cell's final value, told of every transition
    // one by one or as part of a coalesced event that says how many it folds.
    let deadline = Instant::now() + WAIT;
    let mut text = String::new();
    let mut state = ReaderState::default();
    let mut parsed_upto = 0;
    loop {
        let all_final = last.iter().all(|(c, m)| state.cells.get(c) == Some(m));
        if all_final {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reader state after resuming: {:?}",
            state.cells
        );
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("read")
            .expect("read");
        assert!(
            n > 0,
            "the node closed the slow reader instead of catching it up"
        );
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        // Whole SSE events only; HTTP chunk-size lines between them are skipped.
        let Some(end) = text.rfind("\n\n") else {
            continue;
        };
        state.apply(&text[parsed_upto..end]);
        parsed_upto = end;
    }
    assert!(
        state.coalesced_events > 0,
        "{WRITES} writes while away: the catch-up is beyond its bound and coalesces \
         (told {} transitions, {} snapshots)",
        state.transitions.values().sum::<u64>(),
        state.snapshots
    );
    assert_eq!(state.snapshots, 0, "caught up without a fresh snapshot");
    for c in 0..COMPONENTS {
        let told = state.transitions.get(&format!("c{c}")).copied();
        assert_eq!(
            told,
            Some((WRITES / COMPONENTS) as u64),
            "c{c}: the transitions told and folded add up to those written"
        );
    }

    // Then live events again, one by one.
    let (code, reply) = harness::put_status(
        client,
        writer,
        token,
        "api/c0/us-east",
        json!({ "state": "degraded_performance", "message": "live again" }),
    )
    .await;
    assert_eq!(code, 200, "{reply}");
    let deadline = Instant::now() + WAIT;
    while state.cells.get("c0").map(String::as_str) != Some("live again") {
        assert!(
            Instant::now() < deadline,
            "no live event after the catch-up"
        );
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("read")
            .expect("read");
        assert!(n > 0, "closed after the catch-up");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        let Some(end) = text.rfind("\n\n") else {
            continue;
        };
        state.apply(&text[parsed_upto..end]);
        parsed_upto = end;
    }
    assert_eq!(state.last_coalesced, None, "a live event is one transition");
}

/// What the reader knows: component → message, and how many transitions it was told of per
/// component after the first snapshot (one per event, or what a coalesced event folds).
#[derive(Debug, Default)]
struct ReaderState {
    cells: BTreeMap<String, String>,
    transitions: BTreeMap<String, u64>,
    coalesced_events: u64,
    last_coalesced: Option<u64>,
    /// Snapshots read after the pause (the first came before it).
    snapshots: u64,
}

impl ReaderState {
    /// Folds SSE events in: a snapshot replaces every cell, a status event sets one.
    fn apply(&mut self, text: &str) {
        let mut kind = String::new();
        for line in text.lines() {
            if let Some(k) = line.strip_prefix("event: ") {
                kind = k.trim().to_owned();
            } else if let Some(data) = line.strip_prefix("data: ") {
                let Ok(value) = serde_json::from_str::<serde_json::Value>(data) else {
                    continue;
                };
                match kind.as_str() {
                    "snapshot" => {
                        self.snapshots += 1;
                        apply_snapshot(&value, &mut self.cells);
                    }
                    "status" => {
                        let name = value["component"].as_str().unwrap_or_default().to_owned();
                        let folded = value["coalesced"].as_u64();
                        self.coalesced_events += u64::from(folded.is_some());
                        self.last_coalesced = folded;
                        *self.transitions.entry(name.clone()).or_default() += folded.unwrap_or(1);
                        self.cells.insert(
                            name,
                            value["message"].as_str().unwrap_or_default().to_owned(),
                        );
                    }
                    _ => {}
                }
            }
        }
    }
}

/// A snapshot's cells: component → message.
fn apply_snapshot(value: &serde_json::Value, cells: &mut BTreeMap<String, String>) {
    cells.clear();
    for service in value["services"].as_array().into_iter().flatten() {
        for component in service["components"].as_array().into_iter().flatten() {
            for cell in component["regions"].as_array().into_iter().flatten() {
                let name = component["name"].as_str().unwrap_or_default().to_owned();
                cells.insert(
                    name,
                    cell["message"].as_str().unwrap_or_default().to_owned(),
                );
            }
        }
    }
}
