//! Outgoing webhooks with real processes and a receiver the test runs on loopback, which
//! verifies every signature with the `standardwebhooks` crate (an independent
//! implementation of Standard Webhooks).
//!
//! Shown: 200 status changes written on 3 regions reach the receiver once each, in causal
//! order per component, from one sender for the mesh; a receiver answering 503 for 30 s gets
//! everything after it comes back, none lost; `kill -9` of the sending node mid-stream hands
//! the subscription to another node, every event arrives, and a duplicate carries the same
//! `webhook-id`; 410 disables the subscription on every node. Times are printed, never
//! asserted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::harness::{get_json, put_status, start_mesh_with_args, wait_for, Mesh, TestNode};

const TOKEN: &str = "webhook-test-token";
/// Retries compressed so that a 30 s outage is covered: about 40 s of attempts in all.
const SCHEDULE: &str = "200ms,500ms,1s,2s,3s,4s,5s,5s,5s,5s,5s,5s";

/// One delivery the receiver accepted.
#[derive(Debug, Clone)]
struct Got {
    id: String,
    body: Value,
}

/// The receiver: answers `answer` (200 accepts, after verifying the signature), and
/// records what it accepted and every attempt.
#[derive(Default)]
struct Receiver {
    secret: Mutex<Option<String>>,
    answer: AtomicU16,
    got: Mutex<Vec<Got>>,
    bad_signatures: AtomicUsize,
    attempts: AtomicUsize,
}

impl Receiver {
    fn got(&self) -> Vec<Got> {
        self.got.lock().expect("lock").clone()
    }

    /// The messages of the status events accepted, in arrival order.
    fn messages(&self) -> Vec<String> {
        self.got()
            .iter()
            .filter(|g| g.body["type"] == "component.status_changed")
            .filter_map(|g| g.body["data"]["message"].as_str().map(str::to_owned))
            .collect()
    }
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    receiver.attempts.fetch_add(1, Ordering::SeqCst);
    let answer = receiver.answer.load(Ordering::SeqCst);
    if answer != 200 {
        let status = StatusCode::from_u16(answer).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return (status, [("retry-after", "1")], "not now").into_response();
    }
    let secret = receiver.secret.lock().expect("lock").clone();
    let verified = secret.is_some_and(|s| {
        standardwebhooks::Webhook::new(&s)
            .and_then(|w| w.verify(&body, &headers))
            .is_ok()
    });
    if !verified {
        receiver.bad_signatures.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::BAD_REQUEST, "bad signature").into_response();
    }
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    receiver.got.lock().expect("lock").push(Got { id, body });
    StatusCode::NO_CONTENT.into_response()
}

/// Starts the receiver on loopback; its URL.
async fn start_receiver() -> (Arc<Receiver>, String) {
    let receiver = Arc::new(Receiver::default());
    receiver.answer.store(200, Ordering::SeqCst);
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(Arc::clone(&receiver));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (receiver, format!("http://{addr}/hook"))
}

/// PUTs subscription `id` for service `api` on `node`; the generated secret.
async fn subscribe(mesh: &Mesh, node: &TestNode, id: &str, url: &str) -> String {
    let response = mesh
        .client
        .put(node.url(&format!("/v1/webhooks/{id}")))
        .bearer_auth(TOKEN)
        .json(&json!({"url": url, "services": ["api"], "events": ["component.status_changed"]}))
        .send()
        .await
        .expect("PUT webhook");
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.expect("json");
    let secret = body["secret"]
        .as_str()
        .expect("a generated secret")
        .to_owned();
    assert!(secret.starts_with("whsec_"));
    // Every node knows it, and they agree on the sender.
    let sender = wait_for(
        "every node to know the subscription and its sender",
        || async {
            let mut senders = BTreeSet::new();
            for n in &mesh.nodes {
                let view = get_authed(mesh, n, &format!("/v1/webhooks/{id}")).await?;
                assert!(view.get("secret").is_none() && !view.to_string().contains(&secret));
                senders.insert(view["progress"]["api"]["sender"].as_str()?.to_owned());
            }
            (senders.len() == 1).then(|| senders.into_iter().next())?
        },
    )
    .await;
    println!("subscription {id}: sender {sender}");
    secret
}

async fn get_authed(mesh: &Mesh, node: &TestNode, path: &str) -> Option<Value> {
    let response = mesh
        .client
        .get(node.url(path))
        .bearer_auth(TOKEN)
        .send()
        .await
        .ok()?;
    response.status().is_success().then_some(())?;
    response.json().await.ok()
}

/// The sender of subscription `id`'s `api` events, as `node` sees it.
async fn sender_of(mesh: &Mesh, node: &TestNode, id: &str) -> String {
    let view = get_authed(mesh, node, &format!("/v1/webhooks/{id}"))
        .await
        .expect("the subscription");
    view["progress"]["api"]["sender"]
        .as_str()
        .expect("a sender")
        .to_owned()
}

/// Writes `count` status changes, numbered from `first`, on `writers` in turn, each node
/// to components of its own region; the messages, by cell, in the order written.
async fn write_changes(
    mesh: &Mesh,
    writers: &[&TestNode],
    first: usize,
    count: usize,
) -> BTreeMap<String, Vec<String>> {
    let mut by_cell: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in first..first + count {
        let node = writers[i % writers.len()];
        let component = format!("c{}", i % 4);
        let state = if (i / 4) % 2 == 0 {
            "major_outage"
        } else {
            "operational"
        };
        let message = format!("m{i}");
        let (status, _) = put_status(
            &mesh.client,
            node,
            TOKEN,
            &format!("api/{component}/{}", node.region),
            json!({"state": state, "message": message, "ttl_s": 3600}),
        )
        .await;
        assert_eq!(status, 200, "write {i}");
        by_cell
            .entry(format!("{component}/{}", node.region))
            .or_default()
            .push(message);
    }
    by_cell
}

/// Waits (bounded by `limit`) until the receiver holds every message of `expected`.
async fn wait_all(receiver: &Receiver, expected: &BTreeMap<String, Vec<String>>, limit: Duration) {
    let wanted: BTreeSet<&String> = expected.values().flatten().collect();
    let deadline = Instant::now() + limit;
    loop {
        let got: BTreeSet<String> = receiver.messages().into_iter().collect();
        if wanted.iter().all(|m| got.contains(*m)) {
            return;
        }
        let missing: Vec<&&String> = wanted.iter().filter(|m| !got.contains(**m)).collect();
        assert!(
            Instant::now() < deadline,
            "after {limit:?}, {} events not delivered, e.g. {:?}",
            missing.len(),
            missing.iter().take(5).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Per cell, the messages in the order the receiver first accepted them.
fn delivered_by_cell(receiver: &Receiver) -> BTreeMap<String, Vec<String>> {
    let mut seen = BTreeSet::new();
    let mut by_cell: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for got in receiver.got() {
        let data = &got.body["data"];
        let (Some(component), Some(region), Some(message)) = (
            data["component"].as_str(),
            data["region"].as_str(),
            data["message"].as_str(),
        ) else {
            continue;
        };
        if seen.insert(message.to_owned()) {
            by_cell
                .entry(format!("{component}/{region}"))
                .or_default()
                .push(message.to_owned());
        }
    }
    by_cell
}

/// Messages accepted more than once, and whether each came with one `webhook-id` only.
fn duplicates(receiver: &Receiver) -> (usize, bool) {
    let mut ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut count = 0;
    for got in receiver.got() {
        let Some(message) = got.body["data"]["message"].as_str() else {
            continue;
        };
        let entry = ids.entry(message.to_owned()).or_default();
        if !entry.is_empty() {
            count += 1;
        }
        entry.insert(got.id.clone());
    }
    (count, ids.values().all(|set| set.len() == 1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_changes_on_three_regions_are_delivered_once_each_in_order_and_signed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mesh =
        start_mesh_with_args(dir.path(), TOKEN, &["--webhook-retry-schedule", SCHEDULE]).await;
    let (receiver, url) = start_receiver().await;
    let secret = subscribe(&mesh, &mesh.nodes[0], "pager", &url).await;
    *receiver.secret.lock().expect("lock") = Some(secret);

    let writers: Vec<&TestNode> = mesh.nodes.iter().collect();
    let started = Instant::now();
    let expected = write_changes(&mesh, &writers, 0, 200).await;
    wait_all(&receiver, &expected, Duration::from_secs(60)).await;
    println!(
        "200 changes on 3 regions delivered in {:?}",
        started.elapsed()
    );

    assert_eq!(receiver.bad_signatures.load(Ordering::SeqCst), 0);
    assert_eq!(
        delivered_by_cell(&receiver),
        expected,
        "causal order per component"
    );
    let got = receiver.got();
    assert_eq!(got.len(), 200, "each change exactly once");
    let ids: BTreeSet<&str> = got.iter().map(|g| g.id.as_str()).collect();
    assert_eq!(ids.len(), 200, "a webhook-id per transition");
    // Every node counts the same delivered total once the progress has replicated.
    wait_for("the progress to replicate", || async {
        for n in &mesh.nodes {
            let view = get_authed(&mesh, n, "/v1/webhooks/pager").await?;
            (view["progress"]["api"]["delivered"] == 200).then_some(())?;
        }
        Some(())
    })
    .await;
    // The sender's log shows the attempts; the other nodes made none.
    let sender = sender_of(&mesh, &mesh.nodes[0], "pager").await;
    for n in &mesh.nodes {
        let log = get_authed(&mesh, n, "/v1/webhooks/pager/deliveries")
            .await
            .expect("deliveries");
        let attempts = log["attempts"].as_array().map_or(0, Vec::len);
        if n.id == sender {
            assert!(attempts > 0, "{log}");
        } else {
            assert_eq!(attempts, 0, "{} sent though {sender} is the sender", n.id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_thirty_seconds_gets_everything_and_410_disables() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mesh =
        start_mesh_with_args(dir.path(), TOKEN, &["--webhook-retry-schedule", SCHEDULE]).await;
    let (receiver, url) = start_receiver().await;
    let secret = subscribe(&mesh, &mesh.nodes[1], "relay", &url).await;
    *receiver.secret.lock().expect("lock") = Some(secret);
    let writers: Vec<&TestNode> = mesh.nodes.iter().collect();

    receiver.answer.store(503, Ordering::SeqCst);
    let down = Instant::now();
    let expected = write_changes(&mesh, &writers, 0, 20).await;
    // The sender keeps trying while the receiver is down (bounded wait on attempts).
    wait_for("attempts while the receiver is down", || async {
        (receiver.attempts.load(Ordering::SeqCst) >= 2).then_some(())
    })
    .await;
    let remaining = Duration::from_secs(30).saturating_sub(down.elapsed());
    tokio::time::sleep(remaining).await; // the outage itself, not a wait for an outcome
    let attempts_down = receiver.attempts.load(Ordering::SeqCst);
    receiver.answer.store(200, Ordering::SeqCst);
    let back = Instant::now();
    wait_all(&receiver, &expected, Duration::from_secs(60)).await;
    println!(
        "down 30 s ({attempts_down} attempts refused); all 20 delivered {:?} after it came back",
        back.elapsed()
    );
    assert_eq!(
        delivered_by_cell(&receiver),
        expected,
        "none lost, in order"
    );
    assert_eq!(receiver.got().len(), 20, "each once");

    // 410: the subscription is disabled everywhere, and says why.
    receiver.answer.store(410, Ordering::SeqCst);
    write_changes(&mesh, &writers, 20, 1).await;
    wait_for("every node to show the subscription disabled", || async {
        for n in &mesh.nodes {
            let view = get_authed(&mesh, n, "/v1/webhooks/relay").await?;
            view["disabled"]["reason"]
                .as_str()?
                .contains("410")
                .then_some(())?;
        }
        Some(())
    })
    .await;
    let listed = get_json(&mesh.client, mesh.nodes[0].url("/v1/webhooks")).await;
    assert!(
        listed.is_none_or(|v| v.get("webhooks").is_none()),
        "listing needs a token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_sender_mid_stream_hands_over_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut mesh =
        start_mesh_with_args(dir.path(), TOKEN, &["--webhook-retry-schedule", SCHEDULE]).await;
    let (receiver, url) = start_receiver().await;
    let secret = subscribe(&mesh, &mesh.nodes[0], "failover", &url).await;
    *receiver.secret.lock().expect("lock") = Some(secret);
    let sender = sender_of(&mesh, &mesh.nodes[0], "failover").await;
    let victim = mesh
        .nodes
        .iter()
        .position(|n| n.id == sender)
        .expect("the sender is a node");
    let survivors: Vec<TestNode> = mesh
        .nodes
        .iter()
        .filter(|n| n.id != sender)
        .cloned()
        .collect();
    let writers: Vec<&TestNode> = survivors.iter().collect();

    let mut expected = write_changes(&mesh, &writers, 0, 50).await;
    wait_for("some deliveries before the kill", || async {
        (receiver.messages().len() >= 10).then_some(())
    })
    .await;
    mesh.procs[victim].child.kill().expect("kill -9 the sender");
    let _ = mesh.procs[victim].child.wait();
    let killed = Instant::now();
    for (cell, messages) in write_changes(&mesh, &writers, 50, 50).await {
        expected.entry(cell).or_default().extend(messages);
    }
    let new_sender = wait_for("another node to become the sender", || async {
        let s = sender_of(&mesh, &survivors[0], "failover").await;
        (s != sender).then_some(s)
    })
    .await;
    wait_all(&receiver, &expected, Duration::from_secs(60)).await;
    let (dups, same_ids) = duplicates(&receiver);
    println!(
        "sender {sender} killed; {new_sender} took over; all 100 delivered {:?} after the kill, \
         {dups} duplicate(s)",
        killed.elapsed()
    );
    assert!(same_ids, "a duplicate carries the same webhook-id");
    assert_eq!(
        delivered_by_cell(&receiver),
        expected,
        "in order per component"
    );
    assert_eq!(receiver.bad_signatures.load(Ordering::SeqCst), 0);
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn put_webhook(mesh: &Mesh, id: &str, body: Value) -> (u16, Value) {
    let response = mesh
        .client
        .put(mesh.nodes[0].url(&format!("/v1/webhooks/{id}")))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .expect("PUT webhook");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_is_told_when_scheduled_started_and_ended_and_bad_subscriptions_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mesh = start_mesh_with_args(
        dir.path(),
        TOKEN,
        &["--webhook-retry-schedule", "100ms,200ms"],
    )
    .await;
    let (receiver, url) = start_receiver().await;

    // Bad subscriptions are refused with the field named, and nothing is stored.
    for (body, code, field) in [
        (json!({"url": "ftp://x/", "services": ["api"]}), 422, "url"),
        (json!({"url": url, "services": []}), 422, "services"),
        (
            json!({"url": url, "services": ["api"], "events": ["nope"]}),
            422,
            "events",
        ),
        (
            json!({"url": url, "services": ["api"], "secret": "plain"}),
            422,
            "secret",
        ),
        (
            json!({"url": url, "services": ["api"], "colour": "red"}),
            400,
            "colour",
        ),
    ] {
        let (status, reply) = put_webhook(&mesh, "bad", body.clone()).await;
        assert_eq!(
            (status, reply["field"].as_str()),
            (code, Some(field)),
            "{body}: {reply}"
        );
    }
    let unauthenticated = mesh
        .client
        .get(mesh.nodes[0].url("/v1/webhooks/bad"))
        .send()
        .await
        .expect("GET");
    assert_eq!(unauthenticated.status(), 401);
    assert!(get_authed(&mesh, &mesh.nodes[0], "/v1/webhooks/bad")
        .await
        .is_none());

    // A window from 2 s to 4 s from now: scheduled at once, started and ended by the clock.
    let (status, reply) = put_webhook(
        &mesh,
        "windows",
        json!({"url": url, "services": ["api"],
               "events": ["maintenance.scheduled", "maintenance.started", "maintenance.ended"]}),
    )
    .await;
    assert_eq!(status, 201, "{reply}");
    *receiver.secret.lock().expect("lock") = reply["secret"].as_str().map(str::to_owned);
    let start = now_ms() + 2_000;
    let response = mesh
        .client
        .put(mesh.nodes[1].url("/v1/maintenance/api/upgrade"))
        .bearer_auth(TOKEN)
        .json(&json!({"title": "db upgrade", "components": ["db"],
                      "starts_at_ms": start, "ends_at_ms": start + 2_000}))
        .send()
        .await
        .expect("PUT maintenance");
    assert!(
        response.status().is_success(),
        "{:?}",
        response.text().await
    );
    let types = wait_for("scheduled, started and ended", || async {
        let types: Vec<String> = receiver
            .got()
            .iter()
            .filter_map(|g| g.body["type"].as_str().map(str::to_owned))
            .collect();
        (types.len() >= 3).then_some(types)
    })
    .await;
    assert_eq!(
        types,
        [
            "maintenance.scheduled",
            "maintenance.started",
            "maintenance.ended"
        ],
        "each once, in order"
    );
    let started = &receiver.got()[1];
    assert_eq!(started.id, format!("mnt:api/upgrade:started:{start}"));
    assert_eq!(started.body["data"]["window"]["title"], "db upgrade");

    // The SSRF rule: a metadata address is refused, and the log says so.
    let (status, _) = put_webhook(
        &mesh,
        "metadata",
        json!({"url": "http://169.254.169.254/latest/meta-data", "services": ["api"]}),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = put_status(
        &mesh.client,
        &mesh.nodes[2],
        TOKEN,
        "api/db/ap-southeast",
        json!({"state": "major_outage", "message": "to the metadata service"}),
    )
    .await;
    assert_eq!(status, 200);
    let error = wait_for("the refused attempt in a deliveries log", || async {
        for n in &mesh.nodes {
            let log = get_authed(&mesh, n, "/v1/webhooks/metadata/deliveries").await?;
            let found = log["attempts"].as_array()?.iter().find_map(|a| {
                a["error"]
                    .as_str()
                    .filter(|e| e.contains("refused"))
                    .map(str::to_owned)
            });
            if found.is_some() {
                return found;
            }
        }
        None
    })
    .await;
    println!("metadata address: {error}");
    assert!(error.contains("link-local or cloud metadata"), "{error}");
}
