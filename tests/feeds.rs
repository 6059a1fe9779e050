//! The incident feeds on a running 3-region mesh, read with a real feed parser (`feed-rs`):
//! every incident update and the maintenance window is an entry, user text survives
//! escaping, ids are the same between reads and on another region's node, `ETag` gives 304,
//! `?service=` filters, and a bad or unknown service is the JSON error naming `service`.

use std::time::{SystemTime, UNIX_EPOCH};

use feed_rs::model::{Feed, FeedType};
use serde_json::{json, Value};

use crate::harness::{self, TestNode};

const TOKEN: &str = "feeds-token-0123456789";
const HOSTILE: &str = "Rolled back <b>&\" and ]]> <script>alert(1)</script>";
/// What feed readers send (FreshRSS and SimplePie's default).
const READER_ACCEPT: &str = "application/atom+xml, application/rss+xml, \
    application/rdf+xml;q=0.9, application/xml;q=0.8, text/xml;q=0.8, text/html;q=0.7, \
    unknown/unknown;q=0.1, application/unknown;q=0.1, */*;q=0.1";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.bearer_auth(TOKEN).send().await.expect("send");
    let code = response.status().as_u16();
    (code, response.json().await.unwrap_or(Value::Null))
}

/// GET `path` on `node` as a feed reader would: status, headers and body.
async fn get(
    client: &reqwest::Client,
    node: &TestNode,
    path: &str,
) -> (u16, reqwest::header::HeaderMap, String) {
    let response = client
        .get(node.url(path))
        .header("accept", READER_ACCEPT)
        .send()
        .await
        .expect("GET");
    let code = response.status().as_u16();
    let headers = response.headers().clone();
    (code, headers, response.text().await.unwrap_or_default())
}

/// The feed at `path`, parsed; `None` until it answers 200 with a feed.
async fn read_feed(client: &reqwest::Client, node: &TestNode, path: &str) -> Option<Feed> {
    let (code, _, body) = get(client, node, path).await;
    if code != 200 {
        return None;
    }
    feed_rs::parser::parse(body.as_bytes()).ok()
}

/// Waits until the feed at `path` on `node` holds `entries` entries; returns it.
async fn feed_with(client: &reqwest::Client, node: &TestNode, path: &str, entries: usize) -> Feed {
    harness::wait_for(
        &format!("{path} on {} to hold {entries} entries", node.id),
        || async {
            let feed = read_feed(client, node, path).await?;
            (feed.entries.len() == entries).then_some(feed)
        },
    )
    .await
}

fn ids(feed: &Feed) -> Vec<String> {
    feed.entries.iter().map(|e| e.id.clone()).collect()
}

fn content(entry: &feed_rs::model::Entry) -> String {
    entry
        .content
        .as_ref()
        .and_then(|c| c.body.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn feeds_list_every_update_with_ids_equal_between_reads_and_on_another_region() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = harness::start_mesh_with_args(
        dir.path(),
        TOKEN,
        &["--page-url", "https://status.example.com/"],
    )
    .await;
    let client = &mesh.client;
    let eu = &mesh.nodes[0];
    let us = &mesh.nodes[1];
    let ap = &mesh.nodes[2];

    // An incident of three updates written from two regions, one of them hostile text.
    // Held by every region before another region updates it (?ack=3).
    let (code, reply) = send(client.post(eu.url("/v1/incidents?ack=3")).json(&json!({
        "service": "api", "id": "db-down", "title": "Database <down> & out", "impact": "major",
        "components": ["db"], "message": "Looking into it",
    })))
    .await;
    assert_eq!(code, 201, "{reply}");
    for (node, message, status) in [
        (eu, HOSTILE, "identified"),
        (us, "A fix is out", "monitoring"),
    ] {
        let (code, reply) = send(
            client
                .post(node.url("/v1/incidents/db-down/updates"))
                .json(&json!({"service": "api", "message": message, "status": status})),
        )
        .await;
        assert_eq!(code, 200, "{reply}");
    }
    let (code, reply) = send(client.post(ap.url("/v1/incidents")).json(&json!({
        "service": "shop", "id": "cart", "title": "Cart errors", "impact": "minor",
        "components": ["cart"], "message": "Carts fail to load",
    })))
    .await;
    assert_eq!(code, 201, "{reply}");
    let now = now_ms();
    let (code, reply) = send(
        client
            .put(us.url("/v1/maintenance/api/upgrade"))
            .json(&json!({
                "title": "Web upgrade", "components": ["web"],
                "starts_at_ms": now + 24 * 3600 * 1000, "ends_at_ms": now + 25 * 3600 * 1000,
            })),
    )
    .await;
    assert_eq!(code, 200, "{reply}");

    // 3 + 1 updates and the window, on the node of the farthest region.
    let atom = feed_with(client, ap, "/feeds/incidents.atom", 5).await;
    assert_eq!(atom.feed_type, FeedType::Atom);
    assert_eq!(atom.id, "urn:statusmesh:test:feed:incidents");
    assert!(atom.updated.is_some(), "a feed has `updated`");
    assert_eq!(
        atom.title.as_ref().map(|t| t.content.as_str()),
        Some("test status")
    );
    for entry in &atom.entries {
        assert!(entry.updated.is_some(), "{entry:?}");
        assert!(entry.title.is_some(), "{entry:?}");
        assert!(!entry.authors.is_empty(), "{entry:?}");
        assert!(entry.id.starts_with("urn:statusmesh:test:"), "{}", entry.id);
        assert!(
            entry
                .links
                .iter()
                .any(|l| l.href.starts_with("https://status.example.com/#")),
            "{entry:?}"
        );
    }
    let times: Vec<_> = atom.entries.iter().map(|e| e.updated).collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );
    // The window starts tomorrow: the newest.
    let window = &atom.entries[0];
    assert!(window
        .id
        .starts_with("urn:statusmesh:test:maintenance:api:upgrade:"));
    assert!(content(window).contains("Web upgrade"), "{window:?}");
    let texts: Vec<String> = atom.entries.iter().map(content).collect();
    for text in [
        "Looking into it",
        HOSTILE,
        "A fix is out",
        "Carts fail to load",
    ] {
        assert!(texts.iter().any(|t| t == text), "{text:?} not in {texts:?}");
    }
    let db: Vec<&feed_rs::model::Entry> = atom
        .entries
        .iter()
        .filter(|e| {
            e.id.starts_with("urn:statusmesh:test:incident:api:db-down:")
        })
        .collect();
    assert_eq!(db.len(), 3, "one entry per update");
    assert_eq!(
        db[0].title.as_ref().map(|t| t.content.as_str()),
        Some("api: Database <down> & out (Monitoring)")
    );

    // RSS: the same entries under the same ids, pubDates, HTML descriptions.
    let rss = feed_with(client, ap, "/feeds/incidents.rss", 5).await;
    assert_eq!(rss.feed_type, FeedType::RSS2);
    assert_eq!(ids(&rss), ids(&atom));
    assert!(rss.entries.iter().all(|e| e.published.is_some()));
    let descriptions: Vec<String> = rss
        .entries
        .iter()
        .filter_map(|e| e.summary.as_ref().map(|s| s.content.clone()))
        .collect();
    assert!(
        descriptions
            .iter()
            .any(|d| d.contains("Rolled back &lt;b&gt;&amp;&quot; and ]]&gt; &lt;script&gt;")),
        "the text is HTML that shows it literally: {descriptions:?}"
    );

    // Ids are stable between reads, and the same on a node of another region.
    let again = read_feed(client, ap, "/feeds/incidents.atom")
        .await
        .expect("read again");
    assert_eq!(ids(&again), ids(&atom));
    let on_eu = feed_with(client, eu, "/feeds/incidents.atom", 5).await;
    assert_eq!(ids(&on_eu), ids(&atom));
    let rss_on_eu = feed_with(client, eu, "/feeds/incidents.rss", 5).await;
    assert_eq!(ids(&rss_on_eu), ids(&rss));

    // Content types, ETag and 304.
    for (path, content_type) in [
        (
            "/feeds/incidents.atom",
            "application/atom+xml; charset=utf-8",
        ),
        ("/feeds/incidents.rss", "application/rss+xml; charset=utf-8"),
    ] {
        let (code, headers, _) = get(client, ap, path).await;
        assert_eq!(code, 200);
        assert_eq!(headers["content-type"], content_type);
        let etag = headers["etag"].clone();
        let not_modified = client
            .get(ap.url(path))
            .header("if-none-match", etag.clone())
            .send()
            .await
            .expect("GET");
        assert_eq!(not_modified.status(), 304, "{path}");
        assert_eq!(not_modified.headers()["etag"], etag);
        let any = client
            .get(ap.url(path))
            .header("accept", "*/*")
            .send()
            .await
            .expect("GET");
        assert_eq!(any.status(), 200, "{path} with */*");
        let json_only = client
            .get(ap.url(path))
            .header("accept", "application/json")
            .send()
            .await
            .expect("GET");
        assert_eq!(json_only.status(), 406, "{path} for a JSON-only client");
    }

    // One service.
    let shop = feed_with(client, ap, "/feeds/incidents.atom?service=shop", 1).await;
    assert!(shop.entries[0]
        .id
        .starts_with("urn:statusmesh:test:incident:shop:cart:"));
    assert_eq!(shop.id, "urn:statusmesh:test:feed:incidents:shop");
    let api = feed_with(client, ap, "/feeds/incidents.rss?service=api", 4).await;
    assert!(api.entries.iter().all(|e| e.id.contains(":api:")));

    // A bad or unknown service name is the JSON error naming the field.
    for (query, expected) in [("Not%20A%20Name", 422), ("nosuch", 404)] {
        for path in ["/feeds/incidents.atom", "/feeds/incidents.rss"] {
            let response = client
                .get(ap.url(&format!("{path}?service={query}")))
                .header("accept", READER_ACCEPT)
                .send()
                .await
                .expect("GET");
            assert_eq!(
                response.status().as_u16(),
                expected,
                "{path}?service={query}"
            );
            let body: Value = response.json().await.expect("a JSON error");
            assert_eq!(body["field"], "service", "{body}");
            let detail = body["detail"].as_str().unwrap_or_default();
            if expected == 404 {
                assert!(detail.contains("\"nosuch\""), "{body}");
            }
        }
    }
}
