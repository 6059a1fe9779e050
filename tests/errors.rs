//! Every error path of a real node answers the JSON shape `{"error", "field", "detail"}`:
//! unknown routes, methods a route does not take (with `Allow`), axum's own extractor
//! rejections, JSON decoding errors that name the key and give line and column, bodies and
//! headers beyond their bounds.

use serde_json::{json, Value};

use crate::harness::{self, Proc, TestNode};

const TOKEN: &str = "errors-token-0123456789";

/// One node (the first of a one-per-region topology), healthy.
pub async fn start_one(dir: &std::path::Path, args: &[&str]) -> (TestNode, Proc) {
    let (config, nodes) = harness::topology(dir, 1);
    let certs = dir.join("certs");
    harness::make_certs(&config, &certs);
    let node = nodes.into_iter().next().expect("a node");
    let proc = harness::run_node_with_args(
        dir,
        &config,
        &certs,
        &node,
        &harness::data_dir(dir, &node),
        args.iter().copied(),
    );
    harness::wait_healthy(&reqwest::Client::new(), std::slice::from_ref(&node)).await;
    (node, proc)
}

/// The status, headers and JSON body of a response; panics when the body is not the shape.
pub async fn error_of(response: reqwest::Response) -> (u16, reqwest::header::HeaderMap, Value) {
    let code = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    let body: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{code}: not JSON ({e}): {text:?}"));
    assert!(body["error"].is_string(), "{code}: {body}");
    assert!(body["detail"].is_string(), "{code}: {body}");
    assert!(body.get("field").is_some(), "{code}: {body}");
    assert!(
        headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json")),
        "{code}: {headers:?}"
    );
    (code, headers, body)
}

#[tokio::test]
async fn every_error_status_answers_the_json_shape() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, _proc) = start_one(dir.path(), &["--token", TOKEN]).await;
    let client = reqwest::Client::new();
    let put = |path: &str| {
        client
            .put(node.url(path))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
    };

    // 404: an unknown route.
    let (code, _, body) = error_of(
        client
            .get(node.url("/no/such/path"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(
        (code, body["error"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );

    // 405: a method the route does not take, with Allow.
    let response = client
        .delete(node.url("/v1/status/api/db/eu-west"))
        .send()
        .await
        .expect("delete");
    let (code, headers, body) = error_of(response).await;
    assert_eq!(code, 405, "{body}");
    assert_eq!(body["error"], "method_not_allowed");
    let allow = headers
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(allow.contains("PUT"), "Allow: {allow:?}");

    // 400: a JSON value of the wrong type names its key, with line and column.
    let response = put("/v1/status/api/db/eu-west")
        .body(r#"{"state": "operational", "ttl_s": -5}"#)
        .send()
        .await
        .expect("put");
    let (code, _, body) = error_of(response).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["field"], "ttl_s", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("line 1 column"),
        "{body}"
    );

    // 400: a malformed document has no field.
    let response = put("/v1/status/api/db/eu-west")
        .body("{\"state\": \n \"operational\",,}")
        .send()
        .await
        .expect("put");
    let (code, _, body) = error_of(response).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["field"], Value::Null, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("line 2 column"),
        "{body}"
    );

    // 400: an unknown key is named.
    let response = put("/v1/status/api/db/eu-west")
        .json(&json!({ "state": "operational", "colour": "red" }))
        .send()
        .await
        .expect("put");
    let (code, _, body) = error_of(response).await;
    assert_eq!(
        (code, body["field"].as_str()),
        (400, Some("colour")),
        "{body}"
    );

    // 400: axum's own path rejection (invalid UTF-8 once percent-decoded).
    let response = client
        .get(node.url("/v1/status/%FF%FE"))
        .send()
        .await
        .expect("get");
    let (code, _, body) = error_of(response).await;
    assert_eq!(code, 400, "{body}");

    // 413: a body beyond its bound.
    let big = format!(
        "{{\"state\":\"operational\",\"message\":\"{}\"}}",
        "x".repeat(70_000)
    );
    let (code, _, body) = error_of(
        put("/v1/status/api/db/eu-west")
            .body(big)
            .send()
            .await
            .expect("put"),
    )
    .await;
    assert_eq!(
        (code, body["error"].as_str()),
        (413, Some("too_large")),
        "{body}"
    );

    // 431: headers beyond their bound.
    let response = client
        .get(node.url("/v1/status"))
        .header("x-padding", "p".repeat(20_000))
        .send()
        .await
        .expect("get");
    let (code, _, body) = error_of(response).await;
    assert_eq!(
        (code, body["field"].as_str()),
        (431, Some("headers")),
        "{body}"
    );

    // 401 without a token and 422 for an unknown region keep their shape.
    let response = client
        .put(node.url("/v1/status/api/db/eu-west"))
        .json(&json!({ "state": "operational" }))
        .send()
        .await
        .expect("put");
    assert_eq!(error_of(response).await.0, 401);
    let response = put("/v1/status/api/db/mars")
        .json(&json!({ "state": "operational" }))
        .send()
        .await
        .expect("put");
    assert_eq!(error_of(response).await.0, 422);

    // A write still works, and its reply says nosniff.
    let response = put("/v1/status/api/db/eu-west")
        .json(&json!({ "state": "operational" }))
        .send()
        .await
        .expect("put");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response
            .headers()
            .get("x-content-type-options")
            .and_then(|v| v.to_str().ok()),
        Some("nosniff")
    );

    // The page: a strict policy, its script and style from files, never inline.
    let response = client.get(node.url("/")).send().await.expect("page");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let csp = header("content-security-policy");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert_eq!(header("referrer-policy"), "no-referrer");
    let html = response.text().await.expect("page body");
    assert!(
        html.contains("<script src=\"/page.js\"></script>"),
        "{html}"
    );
    // Every script from a file (the page's scripts are one per concern), none inline.
    assert_eq!(
        html.matches("<script").count(),
        html.matches("<script src=\"/").count(),
        "scripts only from files"
    );
    assert_eq!(
        html.matches("></script>").count(),
        html.matches("<script").count(),
        "no script has a body"
    );
    assert!(!html.contains("<style"), "no inline style");
    for (path, kind) in [
        ("/page.js", "text/javascript"),
        ("/history.js", "text/javascript"),
        ("/failover.js", "text/javascript"),
        ("/operator.js", "text/javascript"),
        ("/page.css", "text/css"),
    ] {
        let response = client.get(node.url(path)).send().await.expect("asset");
        assert_eq!(response.status().as_u16(), 200, "{path}");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok());
        assert!(
            content_type.is_some_and(|v| v.starts_with(kind)),
            "{path}: {content_type:?}"
        );
    }

    // Event streams (the lean front door) say nosniff too.
    let response = client
        .get(node.url("/v1/events"))
        .send()
        .await
        .expect("events");
    assert_eq!(
        response
            .headers()
            .get("x-content-type-options")
            .and_then(|v| v.to_str().ok()),
        Some("nosniff")
    );
}

#[tokio::test]
async fn timeouts_and_a_full_node_answer_the_json_shape() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().expect("tempdir");
    let args = [
        "--token",
        TOKEN,
        "--request-read-timeout-ms",
        "300",
        "--subscribers-max",
        "1",
    ];
    let (node, _proc) = start_one(dir.path(), &args).await;
    let client = reqwest::Client::new();

    // 408: a body that does not arrive in time.
    let mut stream = tokio::net::TcpStream::connect(node.http)
        .await
        .expect("connect");
    let head = format!(
        "PUT /v1/status/api/db/eu-west HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"state\":"
    );
    stream.write_all(head.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let body: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
    assert_eq!(body["error"], "request_timeout", "{body}");
    assert_eq!(body["field"], "body", "{body}");

    // 503: the only subscriber place is taken.
    let held = client
        .get(node.url("/v1/events"))
        .send()
        .await
        .expect("first subscriber");
    assert_eq!(held.status().as_u16(), 200);
    let (code, _, body) = error_of(
        client
            .get(node.url("/v1/poll?wait_s=5"))
            .send()
            .await
            .expect("poll"),
    )
    .await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["error"], "too_many_subscribers", "{body}");
    drop(held);
}

#[tokio::test]
async fn a_token_past_its_write_rate_gets_a_json_429_with_retry_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = ["--token", TOKEN, "--writes-per-second-per-token", "1"];
    let (node, _proc) = start_one(dir.path(), &args).await;
    let client = reqwest::Client::new();
    // Ten writes at once against a bucket of two: at least one is refused, whatever the
    // machine's speed (refilling the bucket for all ten would take eight seconds).
    let writes = (0..10).map(|i| {
        client
            .put(node.url(&format!("/v1/status/api/db{i}/{}", node.region)))
            .bearer_auth(TOKEN)
            .json(&json!({ "state": "operational" }))
            .send()
    });
    let mut refused = Vec::new();
    for response in futures_util::future::join_all(writes).await {
        let response = response.expect("write");
        if response.status().as_u16() != 200 {
            refused.push(error_of(response).await);
        }
    }
    assert!(!refused.is_empty(), "no write was refused");
    for (code, headers, body) in &refused {
        assert_eq!(*code, 429, "{body}");
        assert_eq!(body["error"], "rate_limited", "{body}");
        assert_eq!(body["field"], "authorization", "{body}");
        assert!(
            !body.to_string().contains(TOKEN),
            "the secret leaks: {body}"
        );
        let retry: u64 = headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no Retry-After: {headers:?}"));
        assert!((1..=2).contains(&retry), "Retry-After {retry}");
    }
}
