//! A reader that stops reading: the node's memory stays bounded, and when the reader reads
//! again it ends with the correct state (a fresh snapshot replaces what it missed).

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

/// Writes beyond the node's event buffer (4,096 events) while the reader is away.
const WRITES: usize = 6_000;
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
    let mesh = harness::start_mesh(dir.path(), token).await;
    let (nodes, client) = (&mesh.nodes, &mesh.client);
    let (reader_node, writer) = (&nodes[0], &nodes[1]);
    let pid = mesh.procs[0].child.id();

    // A raw connection, so that "not reading" really leaves bytes in the kernel's buffers.
    let mut stream = tokio::net::TcpStream::connect(reader_node.http)
        .await
        .expect("connect");
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
            &format!("api/c{}/us-east", i % 50),
            json!({ "state": state, "message": format!("write {i}") }),
        )
        .await;
        assert_eq!(code, 200, "{reply}");
    }
    let last: Vec<(String, String)> = (0..50)
        .map(|c| {
            let i = (WRITES - 50..WRITES).find(|i| i % 50 == c).unwrap_or(0);
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

    // Read again: whatever was in the pipe, then (if the reader fell behind the node's ring)
    // a fresh snapshot. Either way the reader must end with every cell's final value.
    let deadline = Instant::now() + WAIT;
    let mut text = String::new();
    let mut state: BTreeMap<String, String> = BTreeMap::new();
    let mut parsed_upto = 0;
    loop {
        let all_final = last.iter().all(|(c, m)| state.get(c) == Some(m));
        if all_final {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reader state after resuming: {state:?}"
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
        apply_events(&text[parsed_upto..end], &mut state);
        parsed_upto = end;
    }
}

/// Folds SSE events into component → message: a snapshot replaces everything, a status
/// event sets one cell.
fn apply_events(text: &str, state: &mut BTreeMap<String, String>) {
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
                    state.clear();
                    for service in value["services"].as_array().into_iter().flatten() {
                        for component in service["components"].as_array().into_iter().flatten() {
                            for cell in component["regions"].as_array().into_iter().flatten() {
                                let name =
                                    component["name"].as_str().unwrap_or_default().to_owned();
                                state.insert(
                                    name,
                                    cell["message"].as_str().unwrap_or_default().to_owned(),
                                );
                            }
                        }
                    }
                }
                "status" => {
                    let name = value["component"].as_str().unwrap_or_default().to_owned();
                    state.insert(
                        name,
                        value["message"].as_str().unwrap_or_default().to_owned(),
                    );
                }
                _ => {}
            }
        }
    }
}
