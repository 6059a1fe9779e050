//! CORS as the README documents it: reads (the Statuspage API, `/v1/status`, SSE on both
//! doors, badges) from any origin by default or from a configured list; preflights answered
//! at once; writes get CORS only from `--cors-write-origins`, and a write from any other
//! foreign origin is refused (403, field `origin`). In a real Chromium, a page of another
//! origin reads a node with `fetch` and follows it with EventSource only when allowed.

use reqwest::header::HeaderMap;
use serde_json::{json, Value};

use crate::browser::{self, Browser};
use crate::errors::start_one;
use crate::harness::{self, TestNode};

const TOKEN: &str = "cors-token-0123456789";
const OPS: &str = "https://ops.example";
const STRANGER: &str = "https://stranger.example";

fn allow_origin(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("access-control-allow-origin")
        .and_then(|v| v.to_str().ok())
}

fn header_list(headers: &HeaderMap, name: &str) -> String {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",")
        .to_ascii_lowercase()
}

async fn preflight(
    client: &reqwest::Client,
    node: &TestNode,
    path: &str,
    origin: &str,
    method: &str,
    headers: &str,
) -> reqwest::Response {
    client
        .request(reqwest::Method::OPTIONS, node.url(path))
        .header("origin", origin)
        .header("access-control-request-method", method)
        .header("access-control-request-headers", headers)
        .send()
        .await
        .expect("OPTIONS")
}

async fn put(
    client: &reqwest::Client,
    node: &TestNode,
    origin: Option<&str>,
) -> (u16, HeaderMap, Value) {
    let mut request = client
        .put(node.url("/v1/status/api/db/eu-west"))
        .bearer_auth(TOKEN)
        .json(&json!({"state": "operational", "message": "", "ttl_s": 600}));
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    let response = request.send().await.expect("PUT");
    let code = response.status().as_u16();
    let headers = response.headers().clone();
    (code, headers, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn reads_are_open_by_default_and_writes_only_from_listed_origins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, _proc) =
        start_one(dir.path(), &["--token", TOKEN, "--cors-write-origins", OPS]).await;
    let client = reqwest::Client::new();
    let (code, _, reply) = put(&client, &node, None).await;
    assert_eq!(code, 200, "a client that sends no Origin writes: {reply}");

    // Simple cross-origin reads of every public kind get the origin back.
    for path in [
        "/api/v2/summary.json",
        "/v1/status",
        "/badge/api.svg",
        "/badge/api/db.json",
    ] {
        let response = client
            .get(node.url(path))
            .header("origin", STRANGER)
            .send()
            .await
            .expect("GET");
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(allow_origin(response.headers()), Some(STRANGER), "{path}");
        assert!(
            header_list(response.headers(), "vary").contains("origin"),
            "{path}"
        );
        assert!(
            header_list(response.headers(), "access-control-expose-headers").contains("etag"),
            "{path}"
        );
        assert!(response
            .headers()
            .get("access-control-allow-credentials")
            .is_none());
    }
    // The lean SSE door (a fresh connection whose first request is GET /v1/events).
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let stream = fresh
        .get(node.url("/v1/events"))
        .header("origin", STRANGER)
        .send()
        .await
        .expect("GET /v1/events");
    assert_eq!(stream.status(), 200);
    assert_eq!(allow_origin(stream.headers()), Some(STRANGER));
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    drop(stream);

    // EventSource's preflight (Last-Event-ID is not a simple header) is answered.
    let answer = preflight(
        &client,
        &node,
        "/v1/events",
        STRANGER,
        "GET",
        "last-event-id",
    )
    .await;
    assert_eq!(answer.status(), 200);
    assert_eq!(allow_origin(answer.headers()), Some(STRANGER));
    assert!(
        header_list(answer.headers(), "access-control-allow-headers").contains("last-event-id")
    );
    assert!(header_list(answer.headers(), "access-control-allow-methods").contains("get"));
    assert_eq!(answer.headers()["access-control-max-age"], "600");
    assert_eq!(
        answer.text().await.expect("body"),
        "",
        "a preflight has no body"
    );

    // A write preflight from an unlisted origin gets no Access-Control-Allow-Origin ...
    let answer = preflight(
        &client,
        &node,
        "/v1/status/api/db/eu-west",
        STRANGER,
        "PUT",
        "authorization, content-type",
    )
    .await;
    assert_eq!(allow_origin(answer.headers()), None);
    // ... and the write itself, sent anyway, is refused before it runs.
    let (code, headers, body) = put(&client, &node, Some(STRANGER)).await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(body["field"], "origin", "{body}");
    assert_eq!(allow_origin(&headers), None);

    // The listed origin may write.
    let answer = preflight(
        &client,
        &node,
        "/v1/status/api/db/eu-west",
        OPS,
        "PUT",
        "authorization, content-type",
    )
    .await;
    assert_eq!(allow_origin(answer.headers()), Some(OPS));
    assert!(header_list(answer.headers(), "access-control-allow-methods").contains("put"));
    let allowed = header_list(answer.headers(), "access-control-allow-headers");
    assert!(
        allowed.contains("authorization") && allowed.contains("content-type"),
        "{allowed}"
    );
    let (code, headers, body) = put(&client, &node, Some(OPS)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(allow_origin(&headers), Some(OPS));

    // The node's own origin is not foreign.
    let own = format!("http://{}", node.http);
    let (code, _, body) = put(&client, &node, Some(&own)).await;
    assert_eq!(code, 200, "{body}");
    // Any other write from an unlisted origin is refused the same way.
    let response = client
        .post(node.url("/v1/incidents"))
        .header("origin", STRANGER)
        .bearer_auth(TOKEN)
        .json(&json!({"service": "api", "title": "t", "impact": "minor", "message": "m"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 403);
}

#[tokio::test]
async fn a_configured_read_list_answers_only_its_origins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listed = "https://status.example.com";
    let (node, _proc) = start_one(
        dir.path(),
        &[
            "--token",
            TOKEN,
            "--cors-origins",
            &format!("{listed}, https://other.example"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    for (origin, expected) in [(listed, Some(listed)), (STRANGER, None)] {
        let response = client
            .get(node.url("/api/v2/status.json"))
            .header("origin", origin)
            .send()
            .await
            .expect("GET");
        assert_eq!(
            response.status(),
            200,
            "the read itself is served: {origin}"
        );
        assert_eq!(allow_origin(response.headers()), expected, "{origin}");
        let answer = preflight(&client, &node, "/v1/events", origin, "GET", "last-event-id").await;
        assert_eq!(
            allow_origin(answer.headers()),
            expected,
            "preflight {origin}"
        );
        let stream = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client")
            .get(node.url("/v1/events"))
            .header("origin", origin)
            .send()
            .await
            .expect("GET /v1/events");
        assert_eq!(
            allow_origin(stream.headers()),
            expected,
            "lean SSE {origin}"
        );
    }
    // A bad list is refused at start, naming the origin.
    let output = std::process::Command::new(harness::BIN)
        .args([
            "run",
            "--config",
            "x",
            "--node",
            "x",
            "--certs",
            "x",
            "--data-dir",
            "x",
        ])
        .args(["--token", TOKEN, "--cors-origins", "https://a.example/path"])
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("https://a.example/path"), "{stderr}");
}

/// Runs `script` (which calls `done(value)`) in the browser and returns the value.
async fn eval_async(browser: &Browser, script: &str) -> Value {
    let wrapped = format!("const done = arguments[arguments.length - 1]; {script}");
    browser
        .command("/execute/async", json!({ "script": wrapped, "args": [] }))
        .await
}

/// What a page of another origin (a `file://` page: origin `null`) can read from `node` in
/// Chromium: the Statuspage summary with `fetch`, and the first SSE event with EventSource.
async fn cross_origin_reads(browser: &Browser, page: &str, node: &TestNode) -> (Value, Value) {
    browser.goto(page).await;
    let summary = eval_async(
        browser,
        &format!(
            "fetch('{}').then(r => r.json()).then(j => done(j.page.id), e => done('refused: ' + e))",
            node.url("/api/v2/summary.json")
        ),
    )
    .await;
    let event = eval_async(
        browser,
        &format!(
            "const s = new EventSource('{}');
             s.addEventListener('snapshot', () => {{ s.close(); done('snapshot'); }});
             s.onerror = () => {{ s.close(); done('refused'); }};",
            node.url("/v1/events")
        ),
    )
    .await;
    (summary, event)
}

#[tokio::test]
async fn a_page_of_another_origin_reads_and_follows_a_node_in_chromium_only_when_allowed() {
    if !browser::installed() {
        return;
    }
    let open_dir = tempfile::tempdir().expect("tempdir");
    let (open, _open_proc) = start_one(open_dir.path(), &["--token", TOKEN]).await;
    let closed_dir = tempfile::tempdir().expect("tempdir");
    let (closed, _closed_proc) = start_one(
        closed_dir.path(),
        &[
            "--token",
            TOKEN,
            "--cors-origins",
            "https://status.example.com",
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let page = open_dir.path().join("elsewhere.html");
    std::fs::write(&page, "<!doctype html><title>another origin</title>").expect("page");
    let page = format!("file://{}", page.display());

    let (_driver, driver) = browser::start_chromedriver(&client, open_dir.path()).await;
    let browser = Browser::start(&client, &driver, &open_dir.path().join("profile")).await;
    browser
        .command("/timeouts", json!({ "script": 20_000 }))
        .await;

    let (summary, event) = cross_origin_reads(&browser, &page, &open).await;
    let expected = harness::get_json(&client, open.url("/api/v2/summary.json"))
        .await
        .expect("summary");
    assert_eq!(summary, expected["page"]["id"], "fetch from another origin");
    assert_eq!(event, "snapshot", "EventSource from another origin");

    let (summary, event) = cross_origin_reads(&browser, &page, &closed).await;
    assert!(
        summary.as_str().is_some_and(|s| s.starts_with("refused")),
        "an unlisted origin must not read: {summary}"
    );
    assert_eq!(event, "refused", "an unlisted origin must not follow");
    browser.close().await;
}
