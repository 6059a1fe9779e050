//! A rolling upgrade with real processes: six nodes start as the previous release
//! (`--protocol-max 2`) and are restarted one at a time, each with its disk, at this release,
//! while two writers (`?ack=2`) and an SSE client run. No acknowledged write is lost, the
//! client sees every write once and in order (resuming with `Last-Event-ID` on another node
//! whenever its node restarts), the upgraded mesh speaks version 3, and a node of a later
//! release (frame versions 4 only) is refused with a log line and a metric naming the ranges.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::watch;

use crate::harness::{self, Proc, SseReader, TestNode};

const TOKEN: &str = "upgrade-token";
const SERVICE: &str = "upg";
const WRITERS: usize = 2;
/// Most writes per writer: below the default rollover trigger (2,000 changes), so that the
/// client's stream holds plain transitions only.
const WRITES_PER_WRITER_MAX: u64 = 700;
/// Time between one writer's writes.
const WRITE_EVERY: Duration = Duration::from_millis(60);
/// The longest the writers and the client run.
const RUN_MAX: Duration = Duration::from_secs(240);

/// What the writers and the client saw, shared with the test.
#[derive(Default)]
struct Record {
    /// Per component, the sequence numbers of the writes answered 200 (held by 2 regions).
    acked: BTreeMap<String, Vec<u64>>,
    /// Writes answered otherwise (202, an error, a node down): they may or may not be there.
    unsure: u64,
    /// Per component, the sequence numbers the client received, in the order received.
    received: BTreeMap<String, Vec<u64>>,
    /// Every status event's id and data as received, for failure messages.
    events: Vec<String>,
    /// Events that say transitions were folded, or a fresh snapshot after the first.
    coalesced_or_snapshot: Vec<String>,
    /// How often the client resumed with Last-Event-ID, and on which nodes.
    resumes: Vec<String>,
}

/// `"<component> <seq>"` as the writers write it.
fn parse_message(message: &str) -> Option<(String, u64)> {
    let (component, seq) = message.split_once(' ')?;
    Some((component.to_owned(), seq.parse().ok()?))
}

/// One writer: `w{index}`'s writes with `?ack=2`, on one node while it answers. When it does
/// not (it is restarting), the writer moves to the next node once that one holds its last
/// acknowledged write, so that each write is made after the one before it (causally).
async fn writer(
    index: usize,
    nodes: Vec<TestNode>,
    record: Arc<Mutex<Record>>,
    stop: watch::Receiver<bool>,
) {
    // A fresh connection per write: hyper resends a request whose reused connection closed
    // under it (a node draining), and a node that took the write before closing plus the
    // restarted one that takes the resent copy make two writes of one message.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let component = format!("w{index}");
    let region = nodes[0].region.clone();
    let started = Instant::now();
    let mut at = index;
    let mut last_acked = 0u64;
    for seq in 1..=WRITES_PER_WRITER_MAX {
        if *stop.borrow() || started.elapsed() > RUN_MAX {
            break;
        }
        let node = &nodes[at % nodes.len()];
        let state = if seq % 2 == 0 {
            "operational"
        } else {
            "major_outage"
        };
        let response = client
            .put(node.url(&format!("/v1/status/{SERVICE}/{component}/{region}?ack=2")))
            .bearer_auth(TOKEN)
            .json(&json!({"state": state, "message": format!("{component} {seq}")}))
            .send()
            .await;
        let status = response.as_ref().map(|r| r.status().as_u16()).ok();
        {
            let mut record = record.lock().expect("record");
            if status == Some(200) {
                record.acked.entry(component.clone()).or_default().push(seq);
                last_acked = seq;
            } else {
                record.unsure += 1;
            }
        }
        // 202: held here, not yet by two regions; go on here. Anything else: move on.
        if !matches!(status, Some(200 | 202)) {
            at = next_holding(&client, &nodes, at + 1, &component, last_acked).await;
        }
        tokio::time::sleep(WRITE_EVERY).await;
    }
}

/// The first node from `from` on that answers and holds `component`'s write `seq` (or a
/// later one); each node is given a bounded time.
async fn next_holding(
    client: &reqwest::Client,
    nodes: &[TestNode],
    from: usize,
    component: &str,
    seq: u64,
) -> usize {
    for at in from..from + 2 * nodes.len() {
        let node = &nodes[at % nodes.len()];
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let held = harness::messages(client, node, SERVICE).await.map(|cells| {
                seq == 0
                    || cells
                        .get(component)
                        .and_then(|m| parse_message(m))
                        .is_some_and(|(_, held)| held >= seq)
            });
            match held {
                Some(true) => return at,
                Some(false) => tokio::time::sleep(Duration::from_millis(20)).await,
                None => break, // down: the next one
            }
        }
    }
    panic!("no node holds {component} {seq}");
}

/// The client: follows `/v1/events?service=upg`, and when its node goes away resumes with
/// the last event id on the next node that answers.
async fn follower(
    nodes: Vec<TestNode>,
    record: Arc<Mutex<Record>>,
    mut stop: watch::Receiver<bool>,
) {
    let client = reqwest::Client::new();
    let url = |node: &TestNode| node.url(&format!("/v1/events?service={SERVICE}"));
    let mut last_id: Option<String> = None;
    let mut at = 0usize;
    let started = Instant::now();
    while started.elapsed() < RUN_MAX && !*stop.borrow() {
        let node = &nodes[at % nodes.len()];
        let Ok(mut stream) = SseReader::open(&client, &url(node), last_id.as_deref()).await else {
            // Down or restarting: the next node, after a pause that bounds the retry rate.
            at += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if last_id.is_some() {
            record.lock().expect("record").resumes.push(node.id.clone());
        }
        loop {
            let event = tokio::select! {
                event = stream.try_next() => event,
                _ = stop.changed() => return,
            };
            let Ok(event) = event else {
                break; // the node went away
            };
            let mut record = record.lock().expect("record");
            match event.event.as_str() {
                "snapshot" if last_id.is_some() => record
                    .coalesced_or_snapshot
                    .push(format!("a snapshot on resuming at {}", node.id)),
                "status" => {
                    if event.data.get("coalesced").is_some() {
                        record.coalesced_or_snapshot.push(event.data.to_string());
                    }
                    record
                        .events
                        .push(format!("{} at {} {}", event.id, node.id, event.data));
                    if let Some((component, seq)) =
                        event.data["message"].as_str().and_then(parse_message)
                    {
                        record.received.entry(component).or_default().push(seq);
                    }
                }
                _ => {}
            }
            if !event.id.is_empty() {
                last_id = Some(event.id.clone());
            }
        }
        at += 1;
    }
}

/// The frame version `node` speaks with each of its peers (its gauge), by peer id.
async fn peer_versions(client: &reqwest::Client, node: &TestNode) -> Option<BTreeMap<String, u64>> {
    let text = harness::metrics_text(client, node).await?;
    let mut versions = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("statusmesh_gossip_peer_frame_version{"))
    {
        let peer = line.split("peer=\"").nth(1)?.split('"').next()?;
        let value: f64 = line.rsplit(' ').next()?.parse().ok()?;
        versions.insert(peer.to_owned(), value as u64);
    }
    Some(versions)
}

/// Waits until every node in `nodes` speaks `version` with each of the other five; the
/// failure names what each node speaks.
async fn wait_all_speak(client: &reqwest::Client, nodes: &[TestNode], version: u64) {
    let deadline = Instant::now() + harness::WAIT;
    loop {
        let mut all = BTreeMap::new();
        for node in nodes {
            all.insert(node.id.clone(), peer_versions(client, node).await);
        }
        let done = all.values().all(|versions| {
            versions.as_ref().is_some_and(|v| {
                v.len() == nodes.len() - 1 && v.values().all(|spoken| *spoken == version)
            })
        });
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not every node speaks version {version} with every peer: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn start(dir: &Path, config: &Path, certs: &Path, node: &TestNode, extra: &[&str]) -> Proc {
    harness::run_node_with_extra(dir, config, certs, node, TOKEN, extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn six_nodes_upgrade_one_at_a_time_under_writes_and_a_following_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, nodes) = harness::topology(dir.path(), 2);
    assert_eq!(nodes.len(), 6);
    let certs = dir.path().join("certs");
    harness::make_certs(&config, &certs);
    let client = reqwest::Client::new();

    // The previous release everywhere.
    let mut procs: Vec<Proc> = nodes
        .iter()
        .map(|n| start(dir.path(), &config, &certs, n, &["--protocol-max", "2"]))
        .collect();
    harness::wait_ready(&client, &nodes).await;
    wait_all_speak(&client, &nodes, 2).await;

    let record = Arc::new(Mutex::new(Record::default()));
    let (stop_writers, writers_stopped) = watch::channel(false);
    let (stop_follower, follower_stopped) = watch::channel(false);
    let follower_task = tokio::spawn(follower(nodes.clone(), record.clone(), follower_stopped));
    // The client holds its first snapshot before any write.
    harness::wait_for("the client's first stream", || async {
        let ok = harness::metric_sum(&client, &nodes[0], "statusmesh_sse_subscribers", &[]).await?;
        (ok >= 1.0).then_some(())
    })
    .await;
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| {
            tokio::spawn(writer(
                i,
                nodes.clone(),
                record.clone(),
                writers_stopped.clone(),
            ))
        })
        .collect();
    let acked_count = |record: &Arc<Mutex<Record>>| -> usize {
        record
            .lock()
            .expect("record")
            .acked
            .values()
            .map(Vec::len)
            .sum()
    };
    harness::wait_for("writes before the upgrade", || async {
        (acked_count(&record) >= 20).then_some(())
    })
    .await;

    // One node at a time: SIGTERM (it drains), the same disk, this release, wait for /readyz,
    // and writes acknowledged while it was away and after it came back.
    for (i, node) in nodes.iter().enumerate() {
        procs[i].terminate();
        let before = acked_count(&record);
        harness::wait_for("writes while a node is down", || async {
            (acked_count(&record) >= before + 10).then_some(())
        })
        .await;
        procs[i] = start(dir.path(), &config, &certs, node, &[]);
        harness::wait_ready(&client, std::slice::from_ref(node)).await;
        let before = acked_count(&record);
        harness::wait_for("writes after the node came back", || async {
            (acked_count(&record) >= before + 10).then_some(())
        })
        .await;
    }
    wait_all_speak(&client, &nodes, 3).await;

    // Stop the writers, then wait for the client to hold every acknowledged write.
    stop_writers.send(true).expect("stop");
    for task in writers {
        task.await.expect("writer");
    }
    let expected: BTreeMap<String, BTreeSet<u64>> = {
        let record = record.lock().expect("record");
        record
            .acked
            .iter()
            .map(|(c, seqs)| (c.clone(), seqs.iter().copied().collect()))
            .collect()
    };
    let deadline = Instant::now() + harness::WAIT;
    loop {
        let missing: BTreeMap<String, Vec<u64>> = {
            let record = record.lock().expect("record");
            expected
                .iter()
                .map(|(c, acked)| {
                    let got: BTreeSet<u64> = record
                        .received
                        .get(c)
                        .into_iter()
                        .flatten()
                        .copied()
                        .collect();
                    (
                        c.clone(),
                        acked.difference(&got).copied().collect::<Vec<u64>>(),
                    )
                })
                .filter(|(_, missing)| !missing.is_empty())
                .collect()
        };
        if missing.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let record = record.lock().expect("record");
            panic!(
                "acknowledged writes the client never received: {missing:?}; resumes {:?}; \
                 received {:?}",
                record.resumes, record.received
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop_follower.send(true).expect("stop");
    follower_task.await.expect("follower");

    // The writers and the client are done: the record is the test's alone now.
    let record = std::mem::take(&mut *record.lock().expect("record"));
    let acked_total: usize = record.acked.values().map(Vec::len).sum();
    let received_total: usize = record.received.values().map(Vec::len).sum();
    eprintln!(
        "upgrade: {acked_total} writes acknowledged, {} unsure, {received_total} events received, {} resumes ({:?})",
        record.unsure,
        record.resumes.len(),
        record.resumes
    );
    assert!(
        record.coalesced_or_snapshot.is_empty(),
        "{:?}",
        record.coalesced_or_snapshot
    );
    assert!(
        record.resumes.len() >= 2,
        "the client never resumed: {:?}",
        record.resumes
    );
    for (component, seqs) in &record.received {
        // Each write once and in its writer's order: strictly increasing.
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{component}: a duplicate or out of order: {seqs:?}\n{}",
            record.events.join("\n")
        );
    }
    // Nothing acknowledged is lost: every node holds each component's last write.
    for (component, acked) in &expected {
        let last = acked.iter().max().copied().expect("acked writes");
        for node in &nodes {
            harness::wait_for(
                &format!("{} to hold {component}'s last write", node.id),
                || async {
                    let cells = harness::messages(&client, node, SERVICE).await?;
                    let (_, held) = parse_message(cells.get(component)?)?;
                    (held >= last).then_some(())
                },
            )
            .await;
        }
    }

    // A node of a later release (frame versions 4 only) in place of the last one: every
    // peer refuses it, logs it with both ranges, and counts it.
    let outsider = &nodes[5];
    procs[5].terminate();
    let outsider_data = dir.path().join("outsider-data");
    procs[5] = harness::run_node_with_args(
        dir.path(),
        &config,
        &certs,
        outsider,
        &outsider_data,
        ["--token", TOKEN, "--protocol-min", "4"],
    );
    harness::wait_healthy(&client, std::slice::from_ref(outsider)).await;
    let peer_label = format!("peer=\"{}\"", outsider.id);
    for node in &nodes[..5] {
        harness::wait_for(&format!("{} to refuse the outsider", node.id), || async {
            let refused = harness::metric_sum(
                &client,
                node,
                "statusmesh_gossip_version_refused_total",
                &[
                    &peer_label,
                    "theirs=\"frame 4-4 schema 1-1\"",
                    "ours=\"frame 2-3 schema 1-1\"",
                ],
            )
            .await?;
            (refused >= 1.0).then_some(())
        })
        .await;
    }
    let log = procs[0].output();
    assert!(
        log.lines().any(
            |l| l.contains("refused a peer outside this node's version ranges")
                && l.contains(&outsider.id)
                && l.contains("frame 4-4")
        ),
        "no refusal in the log of {}:\n{log}",
        nodes[0].id
    );
    // And the outsider refuses them: it reads nothing of theirs.
    harness::wait_for("the outsider to refuse the mesh", || async {
        let refused = harness::metric_sum(
            &client,
            outsider,
            "statusmesh_gossip_version_refused_total",
            &["ours=\"frame 4-4 schema 1-1\""],
        )
        .await?;
        (refused >= 1.0).then_some(())
    })
    .await;
    let held = harness::messages(&client, outsider, SERVICE)
        .await
        .expect("outsider status");
    assert!(
        held.is_empty(),
        "the outsider read the mesh's documents: {held:?}"
    );
}
