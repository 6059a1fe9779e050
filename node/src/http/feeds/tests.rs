//! Unit tests of the feeds over a fixed view: the id rule, order, bounds and escaping.

use serde_json::json;

use super::*;

const HOSTILE: &str = "<script>alert(1)</script> & \"q\" ]]> <b>&\"";

fn fixture() -> local::View {
    let view = json!({
        "page": {"indicator": "major", "description": "Partial System Outage"},
        "services": [
            {
                "name": "api", "indicator": "major", "components": [],
                "incidents": [{
                    "id": "i1", "title": "DB <slow>", "impact": "major", "status": "monitoring",
                    "components": ["db"], "opened_at_ms": 1500, "resolved_at_ms": null,
                    "author": "ops",
                    "updates": [
                        {"key": "000000000001500-eu-1-0", "at_ms": 1500,
                         "status": "investigating", "text": "looking", "author": "ops"},
                        {"key": "000000000001800-us-1-1", "at_ms": 1800,
                         "status": "monitoring", "text": HOSTILE, "author": "ops"}
                    ]
                }],
                "scheduled_maintenances": [{
                    "id": "m1", "title": "Upgrade", "components": ["db", "web"],
                    "starts_at_ms": 3000, "ends_at_ms": 4000, "author": "dba", "active": false
                }]
            },
            {
                "name": "shop", "indicator": "none", "components": [],
                "incidents": [{
                    "id": "cart", "title": "Cart", "impact": "minor", "status": "resolved",
                    "components": [], "opened_at_ms": 1000, "resolved_at_ms": 2000,
                    "author": "ops",
                    "updates": [
                        {"key": "000000000001000-ap-1-0", "at_ms": 1000,
                         "status": "investigating", "text": "down", "author": "ops"},
                        {"key": "000000000002000-ap-1-1", "at_ms": 2000,
                         "status": "resolved", "text": "up", "author": "ops"}
                    ]
                }],
                "scheduled_maintenances": []
            }
        ]
    });
    local::View::from_json(view).expect("the fixture has the view's shape")
}

fn feed(service: Option<&str>) -> Feed {
    build(
        &fixture(),
        "demo",
        service,
        "https://status.example.com",
        "https://status.example.com/feeds/incidents.atom".to_owned(),
    )
}

#[test]
fn entry_ids_are_urns_of_the_cluster_service_record_and_update_key() {
    assert_eq!(
        update_id("demo", "api", "i1", "000000000001500-eu-1-0"),
        "urn:statusmesh:demo:incident:api:i1:000000000001500-eu-1-0"
    );
    assert_eq!(
        maintenance_entry_id("demo", "api", "m1", 3000, 4000),
        "urn:statusmesh:demo:maintenance:api:m1:3000-4000"
    );
    assert_eq!(feed_id("demo", None), "urn:statusmesh:demo:feed:incidents");
    assert_eq!(
        feed_id("demo", Some("api")),
        "urn:statusmesh:demo:feed:incidents:api"
    );
    // A separator or a space in a cluster name cannot make two ids collide.
    assert_eq!(
        update_id("a:b c", "api", "i1", "k"),
        "urn:statusmesh:a%3Ab%20c:incident:api:i1:k"
    );
    assert_ne!(
        update_id("a:incident", "x", "y", "z"),
        update_id("a", "incident", "x:y", "z")
    );
}

#[test]
fn ids_depend_on_names_only_not_on_the_page_address_or_the_order_of_services() {
    let here = feed(None);
    let mut reversed = fixture();
    reversed.services.reverse();
    let there = build(
        &reversed,
        "demo",
        None,
        "http://10.0.0.7:8101",
        "http://10.0.0.7:8101/feeds/incidents.atom".to_owned(),
    );
    let ids = |f: &Feed| f.entries.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&here), ids(&there));
    assert_eq!(here.id, there.id);
}

#[test]
fn every_update_and_window_is_an_entry_newest_first() {
    let f = feed(None);
    let times: Vec<u64> = f.entries.iter().map(|e| e.updated_ms).collect();
    assert_eq!(times, [3000, 2000, 1800, 1500, 1000]);
    assert_eq!(f.updated_ms, 3000);
    let window = &f.entries[0];
    assert_eq!(window.title, "api: maintenance: Upgrade");
    assert_eq!(window.author, "dba");
    assert!(
        window.content.contains("Components: db, web."),
        "{window:?}"
    );
    assert_eq!(f.entries[2].title, "api: DB <slow> (Monitoring)");
    assert_eq!(f.entries[2].content, HOSTILE);
    assert_eq!(
        f.entries[2].link,
        model::shortlink(
            "https://status.example.com",
            "incident",
            &model::incident_id("api", "i1")
        )
    );
}

#[test]
fn a_service_feed_lists_that_service_only() {
    let f = feed(Some("shop"));
    assert_eq!(f.entries.len(), 2);
    assert!(f.entries.iter().all(|e| e.service == "shop"));
    assert_eq!(f.title, "demo status: shop");
    let none = feed(Some("nothing"));
    assert!(none.entries.is_empty());
    assert_eq!(none.updated_ms, 0);
}

#[test]
fn a_feed_holds_at_most_the_newest_records_and_entries() {
    let mut view = fixture();
    let template = view.services[0].incidents[0].clone();
    view.services[0].incidents = (0..RECORDS_MAX as u64 + 10)
        .map(|n| {
            let mut incident = template.clone();
            incident.id = format!("i{n}");
            for update in &mut incident.updates {
                update.at_ms += n * 10_000;
            }
            incident
        })
        .collect();
    view.services[0].scheduled_maintenances.clear();
    let f = build(
        &view,
        "demo",
        Some("api"),
        "http://x",
        "http://x/f".to_owned(),
    );
    // Each incident has two updates: the newest RECORDS_MAX incidents fit in ENTRIES_MAX.
    assert_eq!(f.entries.len(), (2 * RECORDS_MAX).min(ENTRIES_MAX));
    assert!(
        f.entries.iter().all(|e| !e.id.contains(":i0:")),
        "the oldest incident is left out"
    );
    assert!(f
        .entries
        .windows(2)
        .all(|w| w[0].updated_ms >= w[1].updated_ms));
}

#[test]
fn atom_escapes_every_user_string_and_has_the_required_elements() {
    let text = atom::render(&feed(None));
    assert!(!text.contains("<script>"), "{text}");
    assert!(!text.contains("<b>"), "{text}");
    assert!(!text.contains("]]>"), "{text}");
    assert!(text.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;q&quot; ]]&gt;"));
    assert!(text.contains("<title type=\"text\">api: DB &lt;slow&gt; (Monitoring)</title>"));
    for required in [
        "<feed xmlns=\"http://www.w3.org/2005/Atom\">",
        "<id>urn:statusmesh:demo:feed:incidents</id>",
        "<updated>1970-01-01T00:00:03.000Z</updated>",
        "<author><name>demo</name></author>",
        "<id>urn:statusmesh:demo:incident:api:i1:000000000001800-us-1-1</id>",
        "<link rel=\"self\" type=\"application/atom+xml\"",
    ] {
        assert!(text.contains(required), "{required} missing in {text}");
    }
    assert_eq!(text.matches("<entry>").count(), 5);
}

#[test]
fn rss_escapes_every_user_string_and_has_the_required_elements() {
    let text = rss::render(&feed(None));
    assert!(!text.contains("<script>"), "{text}");
    assert!(!text.contains("]]>"), "{text}");
    // HTML-escaped for the reader, then XML-escaped.
    assert!(
        text.contains("&amp;lt;b&amp;gt;&amp;amp;&amp;quot;"),
        "{text}"
    );
    for required in [
        "<rss version=\"2.0\"",
        "<title>demo status</title>",
        "<link>https://status.example.com/</link>",
        "<guid isPermaLink=\"false\">urn:statusmesh:demo:incident:shop:cart:000000000002000-ap-1-1</guid>",
        "<pubDate>Thu, 01 Jan 1970 00:00:02 GMT</pubDate>",
        "<description>",
    ] {
        assert!(text.contains(required), "{required} missing in {text}");
    }
    assert_eq!(text.matches("<item>").count(), 5);
}

#[test]
fn the_body_is_the_etag_and_a_matching_if_none_match_is_a_304() {
    let first = respond(&HeaderMap::new(), "<a/>".to_owned(), "application/atom+xml");
    assert_eq!(first.status(), StatusCode::OK);
    let etag = first.headers()[header::ETAG].clone();
    assert_eq!(etag.len(), 34, "a quoted 128-bit hex digest: {etag:?}");
    let mut headers = HeaderMap::new();
    headers.insert(header::IF_NONE_MATCH, etag.clone());
    let again = respond(&headers, "<a/>".to_owned(), "application/atom+xml");
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    let changed = respond(&headers, "<b/>".to_owned(), "application/atom+xml");
    assert_eq!(changed.status(), StatusCode::OK);
    assert_ne!(changed.headers()[header::ETAG], etag);
}

#[test]
fn feed_routes_answer_feed_readers_and_xml_accepts() {
    use super::super::negotiate::{also_admitted, check_accept_any, produces};
    let admits = |path: &str, accept: &str| {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, accept.parse().expect("accept"));
        check_accept_any(&headers, produces(path), also_admitted(path)).is_ok()
    };
    let reader = "application/atom+xml, application/rss+xml, application/rdf+xml;q=0.9, \
                  application/xml;q=0.8, text/xml;q=0.8, text/html;q=0.7, */*;q=0.1";
    for path in [ATOM_PATH, RSS_PATH] {
        assert!(admits(path, reader), "{path}");
        assert!(admits(path, "*/*"), "{path}");
        assert!(admits(path, "application/xml"), "{path}");
        assert!(admits(path, "text/xml"), "{path}");
        assert!(admits(path, "application/rss+xml"), "{path}");
        assert!(admits(path, "application/atom+xml"), "{path}");
        assert!(!admits(path, "application/json"), "{path}");
    }
    assert_eq!(produces(ATOM_PATH).to_string(), "application/atom+xml");
    assert_eq!(produces(RSS_PATH).to_string(), "application/rss+xml");
}
