//! Content negotiation and head bounds on a real node: an `Accept` that admits nothing a
//! route produces is a JSON 406 (on the axum routes and on the lean SSE door alike), a body
//! declared as anything but JSON is a JSON 415, while the writes real clients make keep
//! working (`curl -d`, `curl --json`, no Content-Type, EventSource's `Accept`);
//! `--frame-ancestors` sets who may frame the page; heads beyond the node's bounds but
//! within hyper's raised ones get the JSON 431.
//!
//! curl comes from the system's packages (`tests/setup/curl.sh`; `./test.sh` installs it).

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::errors::{error_of, start_one};
use crate::harness::{self, SseReader, TestNode};

const TOKEN: &str = "negotiation-token-0123456789";
const CURL: &str = "/usr/bin/curl";

/// Reads one response from `stream`: its status code, head (lower-cased) and body (the
/// body's first bytes only for a stream that stays open); bounded in bytes and time.
async fn read_response(stream: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut head_end = None;
    while bytes.len() < 4 << 20 {
        if let Some(end) = head_end {
            let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse::<usize>().ok());
            // A stream (no length): its head is the answer.
            if length.is_none_or(|n| bytes.len() >= end + n) {
                break;
            }
        }
        let read = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await;
        match read {
            Ok(Ok(n)) if n > 0 => bytes.extend_from_slice(&buf[..n]),
            _ => break,
        }
        if head_end.is_none() {
            head_end = bytes
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|p| p + 4);
        }
    }
    let end = head_end.unwrap_or_else(|| panic!("no response head: {bytes:?}"));
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status: {head}"));
    (code, head, bytes[end..].to_vec())
}

/// Sends `request` on a fresh connection and reads the response.
async fn exchange(node: &TestNode, request: &[u8]) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(node.http).await.expect("connect");
    stream.write_all(request).await.expect("send");
    read_response(&mut stream).await
}

/// The JSON error body of a raw response, checked for the shape.
fn raw_error(what: &str, (code, head, body): &(u16, String, Vec<u8>)) -> Value {
    assert!(
        head.contains("content-type: application/json"),
        "{what}: {code} {head}"
    );
    let body: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{what}: {code} not JSON ({e}): {body:?}"));
    assert!(
        body["error"].is_string() && body["detail"].is_string() && body.get("field").is_some(),
        "{what}: {body}"
    );
    body
}

/// Runs curl with `args` against a node; its stdout (the body, then the status code).
fn curl(args: &[&str]) -> (u16, Value) {
    assert!(
        std::path::Path::new(CURL).exists(),
        "{CURL} is missing; ./test.sh installs it (tests/setup/curl.sh)"
    );
    let output = Command::new(CURL)
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "curl {args:?}: {text} {output:?}");
    let (body, code) = text.rsplit_once('\n').expect("status line");
    let code = code.trim().parse().unwrap_or(0);
    (code, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn accept_is_negotiated_on_every_route_with_a_json_406() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, _proc) = start_one(dir.path(), &["--token", TOKEN]).await;
    let client = reqwest::Client::new();
    let get = |path: &str, accept: &str| client.get(node.url(path)).header("accept", accept).send();

    // Refused: nothing the route produces is admitted.
    for (path, accept, produced) in [
        ("/v1/status", "text/html", "application/json"),
        (
            "/v1/status",
            "application/json;q=0, */*",
            "application/json",
        ),
        ("/v1/nodes", "application/xml, text/*", "application/json"),
        ("/", "application/json", "text/html"),
        ("/metrics", "text/html", "text/plain"),
        (
            "/feeds/incidents.atom",
            "application/json",
            "application/atom+xml",
        ),
        ("/feeds/incidents.rss", "text/html", "application/rss+xml"),
    ] {
        let (code, _, body) = error_of(get(path, accept).await.expect("get")).await;
        assert_eq!(code, 406, "{path} {accept}: {body}");
        assert_eq!(body["error"], "not_acceptable", "{body}");
        assert_eq!(body["field"], "accept", "{body}");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(produced), "{path}: {detail}");
    }

    // Admitted: no Accept, wildcards, q-values, what browsers and fetch() send.
    let navigation = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    for (path, accept) in [
        ("/v1/status", "*/*"),
        ("/v1/status", "application/*"),
        ("/v1/status", "text/html;q=0.9, application/json;q=0.1"),
        ("/v1/status", navigation),
        ("/", navigation),
        ("/page.js", "*/*"),
        ("/metrics", "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"),
        // Feed readers: both feed types and generic XML, whichever feed they follow.
        ("/feeds/incidents.atom", "application/atom+xml"),
        (
            "/feeds/incidents.atom",
            "application/rss+xml, application/xml;q=0.9",
        ),
        ("/feeds/incidents.rss", "text/xml"),
        ("/feeds/incidents.rss", navigation),
    ] {
        let response = get(path, accept).await.expect("get");
        assert_eq!(response.status().as_u16(), 200, "{path} {accept}");
    }
    let bare = client
        .get(node.url("/v1/status"))
        .header("accept", "")
        .send()
        .await
        .expect("get");
    assert_eq!(bare.status().as_u16(), 200);

    // A 404 stays a 404 whatever the Accept.
    let (code, _, _) = error_of(get("/no/such", "text/html").await.expect("get")).await;
    assert_eq!(code, 404);

    // /v1/events, on the lean door (a fresh connection's first request): EventSource's
    // Accept streams, an Accept without event streams is a JSON 406.
    let events = |accept: &str| {
        format!("GET /v1/events HTTP/1.1\r\nhost: x\r\naccept: {accept}\r\ncache-control: no-cache\r\n\r\n")
    };
    let answer = exchange(&node, events("text/event-stream").as_bytes()).await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert!(
        answer.1.contains("content-type: text/event-stream"),
        "{}",
        answer.1
    );
    let answer = exchange(&node, events("application/json").as_bytes()).await;
    assert_eq!(answer.0, 406, "{}", answer.1);
    assert_eq!(raw_error("lean 406", &answer)["field"], "accept");

    // And on the axum route (an events request on a reused keep-alive connection).
    for (accept, expected) in [("application/json", 406), ("text/event-stream", 200)] {
        let mut stream = TcpStream::connect(node.http).await.expect("connect");
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("send");
        assert_eq!(read_response(&mut stream).await.0, 200);
        stream
            .write_all(events(accept).as_bytes())
            .await
            .expect("send");
        let answer = read_response(&mut stream).await;
        assert_eq!(answer.0, expected, "axum {accept}: {}", answer.1);
        if expected == 406 {
            assert_eq!(raw_error("axum 406", &answer)["field"], "accept");
        } else {
            assert!(
                answer.1.contains("content-type: text/event-stream"),
                "{}",
                answer.1
            );
        }
    }

    // An EventSource-style subscriber gets its snapshot.
    let mut reader = SseReader::connect(&client, &node.url("/v1/events"), None).await;
    assert_eq!(reader.next().await.event, "snapshot");
}

#[tokio::test]
async fn writes_declared_as_anything_but_json_are_a_415_and_real_clients_still_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, _proc) = start_one(dir.path(), &["--token", TOKEN]).await;
    let client = reqwest::Client::new();
    let url = node.url("/v1/status/api/db/eu-west");
    let body = json!({ "state": "major_outage", "message": "declared" }).to_string();

    for content_type in [
        "text/xml",
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/json; charset=iso-8859-1",
    ] {
        let response = client
            .put(&url)
            .bearer_auth(TOKEN)
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await
            .expect("put");
        let (code, headers, error) = error_of(response).await;
        assert_eq!(code, 415, "{content_type}: {error}");
        assert_eq!(error["error"], "unsupported_media_type", "{error}");
        assert_eq!(error["field"], "content-type", "{error}");
        let detail = error["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("application/json"), "{detail}");
        let accept = headers.get("accept").and_then(|v| v.to_str().ok());
        assert!(
            accept.is_some_and(|a| a.contains("application/json")),
            "{accept:?}"
        );
    }
    // The method is judged before the body's type (405), and the token (401).
    let response = client
        .put(node.url("/v1/status"))
        .header("content-type", "text/xml")
        .body("<x/>")
        .send()
        .await
        .expect("put");
    assert_eq!(error_of(response).await.0, 405);
    let response = client
        .put(&url)
        .header("content-type", "text/xml")
        .body("<x/>")
        .send()
        .await
        .expect("put");
    assert_eq!(error_of(response).await.0, 401);

    // The records' routes too; a refused write stored nothing.
    let response = client
        .post(node.url("/v1/incidents"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/xml")
        .body("<incident/>")
        .send()
        .await
        .expect("post");
    assert_eq!(error_of(response).await.0, 415);
    let nothing = client
        .get(node.url("/v1/status/api"))
        .send()
        .await
        .expect("get");
    assert_eq!(
        nothing.status().as_u16(),
        404,
        "a refused write stored nothing"
    );

    // No Content-Type at all.
    let response = client
        .put(&url)
        .bearer_auth(TOKEN)
        .body(json!({ "state": "degraded_performance" }).to_string())
        .send()
        .await
        .expect("put");
    assert_eq!(response.status().as_u16(), 200);

    // The README's `curl -d` (form-urlencoded), `curl --json`, a +json type, and -d with a
    // type curl is told to send.
    let auth = format!("Authorization: Bearer {TOKEN}");
    for (state, extra) in [
        ("major_outage", &["-d"][..]),
        ("partial_outage", &["--json"]),
        (
            "operational",
            &["-H", "Content-Type: application/merge-patch+json", "-d"],
        ),
    ] {
        let data = json!({ "state": state, "message": "via curl", "ttl_s": 60 }).to_string();
        let mut args = vec!["-X", "PUT", "-H", auth.as_str()];
        args.extend_from_slice(extra);
        args.extend([data.as_str(), url.as_str()]);
        let (code, reply) = curl(&args);
        assert_eq!(code, 200, "curl {extra:?}: {reply}");
        assert_eq!(reply["changed"], true, "{reply}");
        let stored = harness::cell_state(&client, &node, "api", "db", "eu-west").await;
        assert_eq!(stored.as_deref(), Some(state), "curl {extra:?}");
    }
    let data = json!({ "state": "major_outage" }).to_string();
    let (code, reply) = curl(&[
        "-X",
        "PUT",
        "-H",
        &auth,
        "-H",
        "Content-Type: text/xml",
        "-d",
        &data,
        &url,
    ]);
    assert_eq!(
        (code, reply["field"].as_str()),
        (415, Some("content-type")),
        "{reply}"
    );
}

#[tokio::test]
async fn frame_ancestors_is_a_flag_and_a_bad_value_fails_the_start_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let embed = "'self' https://status.example.com";
    let (node, _proc) =
        start_one(dir.path(), &["--token", TOKEN, "--frame-ancestors", embed]).await;
    let response = reqwest::get(node.url("/")).await.expect("page");
    let csp = response
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        csp.ends_with(&format!("; frame-ancestors {embed}")),
        "{csp}"
    );
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(
        response.headers().get("x-frame-options").is_none(),
        "the CSP alone governs framing"
    );

    // The default: no framing, said both ways.
    let other = tempfile::tempdir().expect("tempdir");
    let (default_node, _default) = start_one(other.path(), &["--token", TOKEN]).await;
    let response = reqwest::get(default_node.url("/")).await.expect("page");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert!(
        header("content-security-policy").is_some_and(|c| c.ends_with("; frame-ancestors 'none'"))
    );
    assert_eq!(header("x-frame-options").as_deref(), Some("DENY"));

    // A value that would add a directive: the process refuses to start and names the flag.
    let bad = tempfile::tempdir().expect("tempdir");
    let (config, nodes) = harness::topology(bad.path(), 1);
    let certs = bad.path().join("certs");
    harness::make_certs(&config, &certs);
    let mut proc = harness::run_node_with_args(
        bad.path(),
        &config,
        &certs,
        &nodes[0],
        &harness::data_dir(bad.path(), &nodes[0]),
        [
            "--token",
            TOKEN,
            "--frame-ancestors",
            "'self'; script-src *",
        ],
    );
    let status = harness::wait_for("the refused start to exit", || {
        let exited = proc.child.try_wait().ok().flatten();
        async move { exited }
    })
    .await;
    assert!(!status.success(), "{status:?}");
    let output = proc.output();
    assert!(output.contains("--frame-ancestors"), "{output}");
    assert!(output.contains("';'"), "{output}");
    assert!(
        TcpStream::connect(nodes[0].http).await.is_err(),
        "nothing listens"
    );
}

#[tokio::test]
async fn heads_beyond_the_node_bounds_but_within_hyper_ones_get_the_json_431() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, _proc) = start_one(dir.path(), &["--token", TOKEN]).await;
    let head = |path: &str, lines: &[String]| {
        let mut text = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n");
        for line in lines {
            text.push_str(line);
            text.push_str("\r\n");
        }
        text.push_str("\r\n");
        text.into_bytes()
    };
    let lines = |n: usize| (0..n).map(|i| format!("x-h{i}: v")).collect::<Vec<_>>();

    // Within the bound: 90 more lines are fine.
    assert_eq!(
        exchange(&node, &head("/v1/status", &lines(90))).await.0,
        200
    );

    // More than 100 lines (hyper's default bound, which answered with an empty body).
    for path in ["/v1/status", "/v1/events"] {
        let answer = exchange(&node, &head(path, &lines(150))).await;
        assert_eq!(answer.0, 431, "{path}: {}", answer.1);
        let body = raw_error(path, &answer);
        assert_eq!(body["field"], "headers", "{body}");
        assert!(
            body["detail"].as_str().unwrap_or_default().contains("100"),
            "{body}"
        );
    }

    // A ~500 KB head (beyond hyper's default buffer of ~400 KB), as one header and as many.
    let one = vec![format!("x-pad: {}", "a".repeat(500_000))];
    let many: Vec<String> = (0..500)
        .map(|i| format!("x-p{i}: {}", "b".repeat(1000)))
        .collect();
    for (what, lines) in [("one header", one), ("500 headers", many)] {
        let answer = exchange(&node, &head("/v1/status", &lines)).await;
        assert_eq!(answer.0, 431, "{what}: {}", answer.1);
        assert_eq!(raw_error(what, &answer)["field"], "headers");
    }
    let health = reqwest::get(node.url("/healthz")).await.expect("still up");
    assert_eq!(health.status().as_u16(), 200);
}
