//! The client contract against real nodes: resume on any node with no gap and no duplicate,
//! long-poll, and the refusals (401, 403, 400, 413, 422) with JSON bodies.

use base64::Engine as _;
use serde_json::{json, Value};

use crate::harness::{self, SseReader, TestNode};

const TOKEN: &str = "contract-token";

async fn put(client: &reqwest::Client, node: &TestNode, path: &str, state: &str) {
    let (code, reply) =
        harness::put_status(client, node, TOKEN, path, json!({ "state": state })).await;
    assert_eq!(code, 200, "{reply}");
}

#[tokio::test]
async fn a_client_resumes_on_another_regions_node_with_exactly_the_changes_it_missed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = harness::start_mesh(dir.path(), TOKEN).await;
    let (nodes, client) = (&mesh.nodes, &mesh.client);
    let (eu, us, ap) = (&nodes[0], &nodes[1], &nodes[2]);

    let mut sse = SseReader::connect(client, &eu.url("/v1/events?service=api"), None).await;
    assert_eq!(sse.next().await.event, "snapshot");
    put(client, eu, "api/seen/eu-west", "operational").await;
    let last = sse.next_matching(|e| e.event == "status").await;
    drop(sse);

    // 100 changes while the client is away, written in another region.
    for i in 0..100 {
        put(
            client,
            us,
            &format!("api/c{i:03}/us-east"),
            "degraded_performance",
        )
        .await;
    }
    harness::wait_for("the last change on the ap node", || async {
        let state = harness::cell_state(client, ap, "api", "c099", "us-east").await?;
        (state == "degraded_performance").then_some(())
    })
    .await;

    let mut resumed =
        SseReader::connect(client, &ap.url("/v1/events?service=api"), Some(&last.id)).await;
    let mut components = Vec::new();
    for _ in 0..100 {
        let event = resumed.next().await;
        assert_eq!(
            event.event, "status",
            "a resumable cursor gets no snapshot: {event:?}"
        );
        components.push(
            event.data["component"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    let expected: Vec<String> = (0..100).map(|i| format!("c{i:03}")).collect();
    assert_eq!(
        components, expected,
        "exactly the 100 missed changes, in the order written"
    );
    // Nothing else was queued before the next live change: no duplicate, nothing extra.
    put(client, us, "api/after/us-east", "major_outage").await;
    let next = resumed.next().await;
    assert_eq!(next.data["component"], "after");

    // A cursor no node can know (a stranger's) gets a fresh snapshot.
    let mut bytes = vec![1u8, 3, b'a', b'p', b'i', 1];
    bytes.extend_from_slice(&[7u8; 32]);
    let stranger = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let mut fresh = SseReader::connect(client, &ap.url("/v1/events"), Some(&stranger)).await;
    assert_eq!(fresh.next().await.event, "snapshot");
}

#[tokio::test]
async fn long_poll_returns_a_snapshot_then_waits_for_the_next_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = harness::start_mesh(dir.path(), TOKEN).await;
    let (nodes, client) = (&mesh.nodes, &mesh.client);
    let (eu, ap) = (&nodes[0], &nodes[2]);
    let first: Value = client
        .get(ap.url("/v1/poll"))
        .send()
        .await
        .expect("poll")
        .json()
        .await
        .expect("json");
    assert_eq!(first["events"][0]["event"], "snapshot");
    let cursor = first["cursor"].as_str().expect("cursor").to_owned();
    let waiting = tokio::spawn({
        let client = client.clone();
        let url = ap.url(&format!("/v1/poll?wait_s=20&cursor={cursor}"));
        async move {
            client
                .get(url)
                .send()
                .await
                .expect("poll")
                .json::<Value>()
                .await
                .expect("json")
        }
    });
    put(client, eu, "api/db/eu-west", "partial_outage").await;
    let answer = waiting.await.expect("poll task");
    assert_eq!(answer["events"][0]["event"], "status", "{answer}");
    assert_eq!(answer["events"][0]["data"]["state"], "partial_outage");
    assert_ne!(answer["cursor"], Value::String(cursor));
    let bad: reqwest::Response = client
        .get(ap.url("/v1/poll?wait_s=600"))
        .send()
        .await
        .expect("poll");
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.expect("json");
    assert_eq!(body["field"], "wait_s");
}

#[tokio::test]
async fn refusals_are_json_with_the_right_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, nodes) = harness::topology(dir.path(), 1);
    let certs = dir.path().join("certs");
    harness::make_certs(&config, &certs);
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        "[[token]]\nname = \"admin\"\nsecret = \"admin-secret-0123456789\"\n\n\
         [[token]]\nname = \"eu-probe\"\nsecret = \"probe-secret-0123456789\"\n\
         services = [\"api\"]\nregions = [\"eu-west\"]\noperator = false\n",
    )
    .expect("tokens file");
    let node = &nodes[0];
    let _proc = harness::run_node_with_args(
        dir.path(),
        &config,
        &certs,
        node,
        &dir.path().join("data"),
        [std::ffi::OsStr::new("--tokens"), tokens.as_os_str()],
    );
    let client = reqwest::Client::new();
    harness::wait_healthy(&client, std::slice::from_ref(node)).await;

    let send = |method: reqwest::Method, path: &str, token: Option<&str>, body: String| {
        let mut request = client.request(method, node.url(path)).body(body);
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        async move {
            let response = request.send().await.expect("request");
            let status = response.status().as_u16();
            let body: Value = response.json().await.expect("a JSON body");
            (status, body)
        }
    };
    let put = reqwest::Method::PUT;
    let ok = r#"{"state":"operational"}"#.to_owned();
    let probe = Some("probe-secret-0123456789");

    let (code, body) = send(put.clone(), "/v1/status/api/db/eu-west", None, ok.clone()).await;
    assert_eq!(
        (code, body["field"].as_str()),
        (401, Some("authorization")),
        "{body}"
    );
    let (code, body) = send(
        put.clone(),
        "/v1/status/api/db/eu-west",
        Some("wrong"),
        ok.clone(),
    )
    .await;
    assert_eq!(code, 401, "{body}");
    let (code, body) = send(put.clone(), "/v1/status/api/db/eu-west", probe, ok.clone()).await;
    assert_eq!(code, 200, "in scope: {body}");
    let (code, body) = send(put.clone(), "/v1/status/api/db/us-east", probe, ok.clone()).await;
    assert_eq!(code, 403, "another region: {body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("us-east"),
        "{body}"
    );
    let (code, body) = send(
        put.clone(),
        "/v1/status/billing/db/eu-west",
        probe,
        ok.clone(),
    )
    .await;
    assert_eq!(code, 403, "another service: {body}");
    let incident = r#"{"service":"api","title":"x","impact":"minor","message":"y"}"#.to_owned();
    let (code, body) = send(
        reqwest::Method::POST,
        "/v1/incidents",
        probe,
        incident.clone(),
    )
    .await;
    assert_eq!(code, 403, "not an operator: {body}");
    let (code, body) = send(
        reqwest::Method::POST,
        "/v1/incidents",
        Some("admin-secret-0123456789"),
        incident,
    )
    .await;
    assert_eq!(code, 201, "{body}");

    let (code, body) = send(
        put.clone(),
        "/v1/status/api/db/eu-west",
        probe,
        "{not json".to_owned(),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = send(
        put.clone(),
        "/v1/status/api/db/eu-west",
        probe,
        r#"{"state":"up"}"#.to_owned(),
    )
    .await;
    assert_eq!(
        (code, body["field"].as_str()),
        (422, Some("state")),
        "{body}"
    );
    let (code, body) = send(put.clone(), "/v1/status/api/DB/eu-west", probe, ok.clone()).await;
    assert_eq!(
        (code, body["field"].as_str()),
        (422, Some("component")),
        "{body}"
    );
    let huge = format!(
        r#"{{"state":"operational","message":"{}"}}"#,
        "x".repeat(100_000)
    );
    let (code, body) = send(put.clone(), "/v1/status/api/db/eu-west", probe, huge).await;
    assert_eq!(
        (code, body["field"].as_str()),
        (413, Some("body")),
        "{body}"
    );
    let (code, body) = send(put, "/v1/status/api/db/eu-west?ack=x", probe, ok).await;
    assert_eq!((code, body["field"].as_str()), (400, Some("ack")), "{body}");
    // Nothing stored was lost along the way.
    let state = harness::cell_state(&client, node, "api", "db", "eu-west").await;
    assert_eq!(state.as_deref(), Some("operational"));
}

/// Reads from `stream` into `seen` until it contains `needle` (bounded by harness::WAIT).
async fn read_until(stream: &mut tokio::net::TcpStream, seen: &mut String, needle: &str) {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + harness::WAIT;
    while !seen.contains(needle) {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {needle:?}; got {seen:?}"))
            .expect("read");
        assert!(n > 0, "connection closed before {needle:?}; got {seen:?}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

async fn raw_request(node: &TestNode, request: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(node.http)
        .await
        .expect("connect");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    stream
}

#[tokio::test]
async fn event_streams_are_served_on_fresh_and_on_reused_connections_alike() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, nodes) = harness::topology(dir.path(), 1);
    let certs = dir.path().join("certs");
    harness::make_certs(&config, &certs);
    let node = &nodes[0];
    let _proc = harness::run_node(dir.path(), &config, &certs, node, TOKEN);
    let client = reqwest::Client::new();
    harness::wait_healthy(&client, std::slice::from_ref(node)).await;

    // A fresh connection whose first request is an event stream.
    let mut fresh = raw_request(
        node,
        "GET /v1/events?service=api HTTP/1.1\r\nHost: test\r\n\r\n",
    )
    .await;
    let mut seen = String::new();
    read_until(&mut fresh, &mut seen, "event: snapshot").await;
    let (head, body) = seen.split_once("\r\n\r\n").expect("a response head");
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("cache-control: no-cache"), "{head}");
    assert!(body.starts_with("retry: 1000\n"), "{body:?}");
    put(&client, node, "api/db/eu-west", "major_outage").await;
    read_until(&mut fresh, &mut seen, "\"major_outage\"").await;

    // A bad cursor on a fresh connection: a JSON 400 naming the field, then the close.
    let mut bad = raw_request(
        node,
        "GET /v1/events?last_event_id=not-a-cursor HTTP/1.1\r\nHost: test\r\n\r\n",
    )
    .await;
    let mut refused = String::new();
    read_until(&mut bad, &mut refused, "}").await;
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    let json: Value =
        serde_json::from_str(refused.split_once("\r\n\r\n").expect("body").1).expect("a JSON body");
    assert_eq!(json["field"], "last_event_id", "{json}");

    // A keep-alive connection that asks for something else first still gets its stream.
    let mut reused = raw_request(node, "GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n").await;
    let mut first = String::new();
    read_until(&mut reused, &mut first, "\"ok\"").await;
    {
        use tokio::io::AsyncWriteExt;
        reused
            .write_all(b"GET /v1/events?service=api HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .expect("second request");
    }
    let mut second = String::new();
    read_until(&mut reused, &mut second, "event: snapshot").await;
    assert!(second.contains("text/event-stream"), "{second}");
    assert!(second.contains("major_outage"), "{second}");

    let metrics = harness::metrics_text(&client, node).await.expect("metrics");
    let count = |path: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("statusmesh_http_connections_total")
                    && l.contains(&format!("path=\"{path}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert!(count("events_lean") >= 2, "{metrics}");
    assert!(count("axum") >= 1, "{metrics}");
}
