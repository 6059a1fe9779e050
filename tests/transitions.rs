//! Every transition, in order, on any node: a client that was away resumes on a node of a
//! third region with exactly the transitions it missed (within an epoch and across a
//! rollover), each with an identity that is the same on every node; writes name a region of
//! the topology.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::json;

use crate::harness::{self, SseEvent, SseReader, TestNode};

const TOKEN: &str = "transitions-token";
/// Components written while the client is away, 20 transitions each.
const COMPONENTS: usize = 5;
const WRITES: usize = 100;

/// 100 writes on `node` to 5 components of `rsvc`, each flapping between an outage and
/// operational; returns, per component, the messages in the order written.
async fn flap(
    client: &reqwest::Client,
    node: &TestNode,
    round: &str,
) -> BTreeMap<String, Vec<String>> {
    let mut written: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in 0..WRITES {
        let component = format!("c{}", i % COMPONENTS);
        let state = if (i / COMPONENTS).is_multiple_of(2) {
            "major_outage"
        } else {
            "operational"
        };
        let message = format!("{round} {i}");
        let (code, reply) = harness::put_status(
            client,
            node,
            TOKEN,
            &format!("rsvc/{component}/{}", node.region),
            json!({ "state": state, "message": message }),
        )
        .await;
        assert_eq!(code, 200, "{reply}");
        written.entry(component).or_default().push(message);
    }
    written
}

/// Waits until `node` holds the last message written to every component.
async fn wait_holds(
    client: &reqwest::Client,
    node: &TestNode,
    written: &BTreeMap<String, Vec<String>>,
) {
    harness::wait_for("the resuming node to hold every last write", || async {
        let cells = harness::messages(client, node, "rsvc").await?;
        written
            .iter()
            .all(|(c, messages)| cells.get(c) == messages.last())
            .then_some(())
    })
    .await;
}

/// Reads `count` status events and checks each is one transition with an identity.
async fn read_transitions(stream: &mut SseReader, count: usize) -> Vec<SseEvent> {
    let mut events = Vec::with_capacity(count);
    while events.len() < count {
        let event = stream.next().await;
        assert_eq!(
            event.event, "status",
            "a resumable cursor gets no snapshot: {event:?}"
        );
        assert!(
            event.data.get("coalesced").is_none(),
            "nothing folded: {event:?}"
        );
        assert!(event.data["transition"].is_string(), "{event:?}");
        events.push(event);
    }
    events
}

/// Per component, the messages of `events` in the order they came.
fn per_component(events: &[SseEvent]) -> BTreeMap<String, Vec<String>> {
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in events {
        seen.entry(e.data["component"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .push(e.data["message"].as_str().unwrap_or_default().to_owned());
    }
    seen
}

fn transition_ids(events: &[SseEvent]) -> BTreeSet<String> {
    events
        .iter()
        .filter_map(|e| e.data["transition"].as_str().map(str::to_owned))
        .collect()
}

/// A cursor of `rsvc` on `node`: the id of the event of a first write there.
async fn cursor_after_seed(client: &reqwest::Client, node: &TestNode) -> String {
    let mut stream = SseReader::connect(client, &node.url("/v1/events?service=rsvc"), None).await;
    assert_eq!(stream.next().await.event, "snapshot");
    let (code, reply) = harness::put_status(
        client,
        node,
        TOKEN,
        &format!("rsvc/seen/{}", node.region),
        json!({ "state": "operational", "message": "seed" }),
    )
    .await;
    assert_eq!(code, 200, "{reply}");
    stream.next_matching(|e| e.event == "status").await.id
}

#[tokio::test]
async fn a_client_away_for_100_writes_resumes_on_a_third_regions_node_with_exactly_those() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = harness::start_mesh(dir.path(), TOKEN).await;
    let (nodes, client) = (&mesh.nodes, &mesh.client);
    let (eu, us, ap) = (&nodes[0], &nodes[1], &nodes[2]);

    let last_id = cursor_after_seed(client, eu).await;
    // A subscriber on the writer's node, live all along: the identities it is told are the
    // ones the resuming client must get on another node.
    let mut live = SseReader::connect(client, &us.url("/v1/events?service=rsvc"), None).await;
    assert_eq!(live.next().await.event, "snapshot");
    let written = flap(client, us, "away").await;
    let live_events: Vec<SseEvent> = {
        let mut out = Vec::new();
        while out.len() < WRITES {
            let e = live.next_matching(|e| e.event == "status").await;
            if e.data["component"] != "seen" {
                out.push(e);
            }
        }
        out
    };
    assert_eq!(
        per_component(&live_events),
        written,
        "live: every transition, in order"
    );
    wait_holds(client, ap, &written).await;

    let mut resumed =
        SseReader::connect(client, &ap.url("/v1/events?service=rsvc"), Some(&last_id)).await;
    let events = read_transitions(&mut resumed, WRITES).await;
    assert_eq!(
        per_component(&events),
        written,
        "every transition, in order per component"
    );
    let ids = transition_ids(&events);
    assert_eq!(ids.len(), WRITES, "no duplicate");
    assert_eq!(
        ids,
        transition_ids(&live_events),
        "the same identities on every node"
    );

    // Then the next live change, and nothing else before it.
    let (code, reply) = harness::put_status(
        client,
        eu,
        TOKEN,
        "rsvc/c0/eu-west",
        json!({ "state": "degraded_performance", "message": "next" }),
    )
    .await;
    assert_eq!(code, 200, "{reply}");
    let next = resumed.next_matching(|e| e.event == "status").await;
    assert_eq!(next.data["message"], "next", "{next:?}");

    // Resuming from the middle gives exactly the rest.
    let middle = &events[WRITES / 2 - 1].id;
    let mut rest =
        SseReader::connect(client, &eu.url("/v1/events?service=rsvc"), Some(middle)).await;
    let tail = read_transitions(&mut rest, WRITES / 2).await;
    let tail_ids: Vec<_> = tail.iter().map(|e| e.data["transition"].clone()).collect();
    let expected: Vec<_> = events[WRITES / 2..]
        .iter()
        .map(|e| e.data["transition"].clone())
        .collect();
    assert_eq!(tail_ids, expected);

    // State only, when asked: each component once, with what it folds.
    harness::wait_for("the next change on the ap node", || async {
        let state = harness::cell_state(client, ap, "rsvc", "c0", "eu-west").await?;
        (state == "degraded_performance").then_some(())
    })
    .await;
    let mut state = SseReader::connect(
        client,
        &ap.url("/v1/events?service=rsvc&coalesce=state"),
        Some(&last_id),
    )
    .await;
    let mut folded: BTreeMap<String, u64> = BTreeMap::new();
    while folded.len() < COMPONENTS + 1 {
        let e = state.next_matching(|e| e.event == "status").await;
        assert_eq!(e.data["coalesced_reason"], "requested", "{e:?}");
        let cell = format!(
            "{}/{}",
            e.data["component"].as_str().unwrap_or_default(),
            e.data["region"].as_str().unwrap_or_default()
        );
        folded.insert(cell, e.data["coalesced"].as_u64().unwrap_or(0));
    }
    let mut expected: BTreeMap<String, u64> = (0..COMPONENTS)
        .map(|c| (format!("c{c}/us-east"), (WRITES / COMPONENTS) as u64))
        .collect();
    expected.insert("c0/eu-west".into(), 1);
    assert_eq!(
        folded, expected,
        "each cell once, with the transitions it folds"
    );
}

async fn rsvc_epoch(client: &reqwest::Client, node: &TestNode) -> Option<f64> {
    harness::metric_sum(
        client,
        node,
        "statusmesh_document_epoch",
        &["service=\"rsvc\""],
    )
    .await
}

#[tokio::test]
async fn a_cursor_of_the_epoch_before_resumes_with_every_transition_across_the_rollover() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A low history bound, so that 100 writes make the document roll over.
    let mesh =
        harness::start_mesh_with_args(dir.path(), TOKEN, &["--epoch-history-changes-max", "20"])
            .await;
    let (nodes, client) = (&mesh.nodes, mesh.client.clone());
    let (eu, us, ap) = (&nodes[0], &nodes[1], &nodes[2]);

    let last_id = cursor_after_seed(&client, eu).await;
    let epoch_before = harness::wait_for("the epoch gauge", || rsvc_epoch(&client, ap)).await;
    let written = flap(&client, us, "across").await;
    wait_holds(&client, ap, &written).await;
    // 100 changes over a bound of 20: the document rolls over once, and no more writes come
    // to make it roll over again.
    harness::wait_for("a rollover on the resuming node", || async {
        let epoch = rsvc_epoch(&client, ap).await?;
        (epoch > epoch_before).then_some(())
    })
    .await;

    let mut resumed =
        SseReader::connect(&client, &ap.url("/v1/events?service=rsvc"), Some(&last_id)).await;
    let events = read_transitions(&mut resumed, WRITES).await;
    assert_eq!(
        per_component(&events),
        written,
        "every transition across the rollover"
    );
    assert_eq!(transition_ids(&events).len(), WRITES, "no duplicate");
}

#[tokio::test]
async fn a_region_the_topology_does_not_have_is_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = harness::start_mesh(dir.path(), TOKEN).await;
    let (nodes, client) = (&mesh.nodes, &mesh.client);
    let (code, reply) = harness::put_status(
        client,
        &nodes[0],
        TOKEN,
        "api/db/mars",
        json!({ "state": "major_outage" }),
    )
    .await;
    assert_eq!(code, 422, "{reply}");
    assert_eq!(reply["field"], "region", "{reply}");
    let detail = reply["detail"].as_str().unwrap_or_default();
    for region in ["eu-west", "us-east", "ap-southeast"] {
        assert!(
            detail.contains(region),
            "the allowed set is named: {detail}"
        );
    }
    assert_nothing_stored_of_mars(client, &nodes[0]).await;

    // The CLI refuses it before sending, naming the flag and the allowed regions.
    let config = dir.path().join("regions.toml");
    let stderr = set_mars_fails(["--config".as_ref(), config.as_os_str()]);
    assert!(
        stderr.contains("--region") && stderr.contains("eu-west"),
        "{stderr}"
    );
    // With only --nodes, the node's answer is what the CLI reports.
    let nodes_flag = nodes[0].url("");
    let stderr = set_mars_fails(["--nodes".as_ref(), nodes_flag.as_ref()]);
    assert!(
        stderr.contains("422") && stderr.contains("region"),
        "{stderr}"
    );
    assert_nothing_stored_of_mars(client, &nodes[0]).await;
}

/// Runs `statusmesh set api/db major_outage --region mars` with `how` to reach the mesh;
/// asserts that it fails and returns what it said.
fn set_mars_fails(how: [&std::ffi::OsStr; 2]) -> String {
    let output = Command::new(harness::BIN)
        .args(["set", "api/db", "major_outage", "--region", "mars"])
        .args(how)
        .args(["--token", TOKEN])
        .output()
        .expect("run statusmesh set");
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts that no observation of the region `mars` reached `node`'s status.
async fn assert_nothing_stored_of_mars(client: &reqwest::Client, node: &TestNode) {
    let status = client
        .get(node.url("/v1/status"))
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("body");
    assert!(!status.contains("mars"), "nothing stored: {status}");
}

/// Writers at once in the test below, each writing its own component: the writer's node
/// commits up to this many writes as one change.
const BURST_WRITERS: usize = 16;
/// Writes per writer.
const BURST_WRITES: usize = 60;

#[tokio::test]
async fn a_reader_that_keeps_reading_behind_the_ring_is_told_every_transition_page_by_page() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A ring of 16 events: every burst of remote changes leaves a live reader behind it.
    let mesh = harness::start_mesh_with_args(dir.path(), TOKEN, &["--sse-ring-events", "16"]).await;
    let (nodes, client) = (&mesh.nodes, mesh.client.clone());
    let (us, ap) = (nodes[1].clone(), &nodes[2]);
    let mut reader = SseReader::connect(&client, &ap.url("/v1/events?service=rsvc"), None).await;
    assert_eq!(reader.next().await.event, "snapshot");

    let writers: Vec<_> = (0..BURST_WRITERS)
        .map(|w| {
            let (client, us) = (client.clone(), us.clone());
            tokio::spawn(async move {
                let mut messages = Vec::with_capacity(BURST_WRITES);
                for i in 0..BURST_WRITES {
                    let state = if i % 2 == 0 {
                        "major_outage"
                    } else {
                        "operational"
                    };
                    let message = format!("burst {w} {i}");
                    let (code, reply) = harness::put_status(
                        &client,
                        &us,
                        TOKEN,
                        &format!("rsvc/b{w}/{}", us.region),
                        json!({ "state": state, "message": message }),
                    )
                    .await;
                    assert_eq!(code, 200, "{reply}");
                    messages.push(message);
                }
                (format!("b{w}"), messages)
            })
        })
        .collect();
    // Read while they write: this reader never stops reading.
    let events = read_transitions(&mut reader, BURST_WRITERS * BURST_WRITES).await;
    let mut written = BTreeMap::new();
    for writer in writers {
        let (component, messages) = writer.await.expect("writer");
        written.insert(component, messages);
    }
    assert_eq!(
        per_component(&events),
        written,
        "every transition, in order per component"
    );
    assert_eq!(
        transition_ids(&events).len(),
        BURST_WRITERS * BURST_WRITES,
        "no duplicate"
    );
    let pages = harness::metric_sum(
        &client,
        ap,
        "statusmesh_sse_catch_ups_total",
        &["how=\"page\""],
    )
    .await
    .unwrap_or(0.0);
    assert!(
        pages > 0.0,
        "the reader fell behind the ring and caught up by pages"
    );
}
