//! HTTP conformance over raw TCP: every route gets malformed requests (methods it does not
//! take, unknown methods, wrong content types, accepts that admit nothing, duplicate headers,
//! invalid UTF-8 and bad percent-encoding in the path, oversized headers, broken JSON). The
//! node never panics, stays up, and every refusal it sends is the JSON error shape.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::errors::start_one;
use crate::harness::TestNode;

const TOKEN: &str = "conformance-token-0123456789";

/// Every route, with its parameters filled in.
const PATHS: &[&str] = &[
    "/",
    "/page.js",
    "/page.css",
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/status",
    "/v1/status/api",
    "/v1/status/api/db/eu-west",
    "/v1/status/api/db/history",
    "/v1/events",
    "/v1/poll",
    "/v1/nodes",
    "/v1/incidents",
    "/v1/incidents/i1",
    "/v1/incidents/i1/updates",
    "/v1/maintenance/api/m1",
    "/v1/overrides/api/db",
    "/api/v2/summary.json",
    "/api/v2/incidents/unresolved.json",
    "/api/v2/scheduled-maintenances/active.json",
    "/badge/api.svg",
    "/badge/api/db.json",
    "/feeds/incidents.atom",
    "/feeds/incidents.rss",
];

/// Sends `request` on a fresh connection and reads the whole answer (the request asks the
/// node to close); `None` when the node closed without answering.
async fn exchange(node: &TestNode, request: &[u8]) -> Option<(u16, String, Vec<u8>)> {
    let mut stream = TcpStream::connect(node.http).await.expect("connect");
    stream.write_all(request).await.expect("send");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            if answer.len() > 1 << 20 {
                break;
            }
        }
    })
    .await;
    let _ = read;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split(' ').nth(1)?.parse().ok()?;
    Some((code, head.to_owned(), body.as_bytes().to_vec()))
}

/// A request head with `lines` as headers (plus Host and Connection: close) and `body`.
fn request(method: &str, path: &[u8], lines: &[String], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path);
    out.extend_from_slice(b" HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n");
    for line in lines {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

/// Decodes a chunked body (hyper's, for bodies of unknown length) or returns it as it is.
fn unchunk(head: &str, body: &[u8]) -> Vec<u8> {
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_vec();
    }
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(end) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..end]).unwrap_or("0"), 16)
            .unwrap_or(0);
        if size == 0 || rest.len() < end + 2 + size {
            break;
        }
        out.extend_from_slice(&rest[end + 2..end + 2 + size]);
        rest = &rest[(end + 4 + size).min(rest.len())..];
    }
    out
}

#[tokio::test]
async fn malformed_requests_to_every_route_get_json_errors_and_never_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, proc) = start_one(dir.path(), &["--token", TOKEN]).await;
    let auth = format!("authorization: Bearer {TOKEN}");
    let json = "content-type: application/json".to_owned();
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for path in PATHS {
        let p = path.as_bytes();
        for method in [
            "GET", "PUT", "POST", "PATCH", "DELETE", "OPTIONS", "TRACE", "BREW",
        ] {
            cases.push((
                format!("{method} {path}"),
                request(method, p, std::slice::from_ref(&auth), b""),
            ));
        }
        for (what, headers, body) in [
            (
                "bad json",
                vec![auth.clone(), json.clone()],
                &b"{\"state\": "[..],
            ),
            (
                "not json",
                vec![auth.clone(), "content-type: text/plain".to_owned()],
                &b"hello"[..],
            ),
            (
                "form",
                vec![
                    auth.clone(),
                    "content-type: application/x-www-form-urlencoded".to_owned(),
                ],
                &b"a=b"[..],
            ),
            (
                "duplicate auth",
                vec![
                    auth.clone(),
                    "authorization: Bearer other-token-000000".to_owned(),
                    json.clone(),
                ],
                &b"{}"[..],
            ),
            (
                "duplicate content-type",
                vec![
                    auth.clone(),
                    json.clone(),
                    "content-type: text/html".to_owned(),
                ],
                &b"{}"[..],
            ),
            (
                "huge header",
                vec![auth.clone(), format!("x-pad: {}", "a".repeat(20_000))],
                &b""[..],
            ),
            (
                "multipart",
                vec![
                    auth.clone(),
                    "content-type: multipart/form-data; boundary=x".to_owned(),
                ],
                &b"--x--"[..],
            ),
            (
                "accepts nothing produced",
                vec![
                    auth.clone(),
                    json.clone(),
                    "accept: image/png, */*;q=0".to_owned(),
                ],
                &b"{}"[..],
            ),
            (
                "malformed accept",
                vec![auth.clone(), json.clone(), "accept: ;;, /, q=x".to_owned()],
                &b"{}"[..],
            ),
            (
                "bad auth",
                vec!["authorization: Basic Zm9vOmJhcg==".to_owned(), json.clone()],
                &b"{}"[..],
            ),
        ] {
            for method in ["GET", "PUT", "POST", "PATCH"] {
                cases.push((
                    format!("{method} {path} {what}"),
                    request(method, p, &headers, body),
                ));
            }
        }
        let mut utf8 = p.to_vec();
        utf8.extend_from_slice(b"/%FF%FE%C0");
        cases.push((format!("GET {path}/%FF"), request("GET", &utf8, &[], b"")));
        let mut raw = p.to_vec();
        raw.extend_from_slice(b"/\xff\xfe\xc0");
        cases.push((
            format!("GET {path}/<raw 0xff>"),
            request("GET", &raw, &[], b""),
        ));
        let mut query = p.to_vec();
        query.extend_from_slice(b"?cursor=%ZZ&wait_s=-1&ack=x&service=%FF");
        cases.push((
            format!("GET {path}?bad query"),
            request("GET", &query, &[], b""),
        ));
        cases.push((
            format!("PUT {path}?bad query"),
            request("PUT", &query, &[auth.clone(), json.clone()], b"{}"),
        ));
    }
    let mut answered = 0usize;
    let mut closed = Vec::new();
    for (what, bytes) in &cases {
        let Some((code, head, body)) = exchange(&node, bytes).await else {
            closed.push(what.clone());
            continue;
        };
        answered += 1;
        if code < 400 {
            continue;
        }
        let body = unchunk(&head, &body);
        let parsed: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "{what}: {code} is not JSON ({e}): {head}\n{}",
                String::from_utf8_lossy(&body)
            )
        });
        assert!(
            parsed["error"].is_string()
                && parsed["detail"].is_string()
                && parsed.get("field").is_some(),
            "{what}: {parsed}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{what}: {head}"
        );
        if code == 405 {
            assert!(
                head.to_ascii_lowercase().contains("\r\nallow: "),
                "{what}: 405 without Allow: {head}"
            );
        }
    }
    assert!(
        closed.is_empty(),
        "every request gets an answer: {closed:?}"
    );
    eprintln!(
        "{answered} of {} answered; closed without an answer: {closed:?}",
        cases.len()
    );
    let log = proc.output();
    assert!(!log.contains("panicked"), "the node panicked:\n{log}");
    let health = reqwest::get(node.url("/healthz")).await.expect("still up");
    assert_eq!(health.status().as_u16(), 200);
}
