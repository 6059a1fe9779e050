//! Badges: the SVGs render in a real headless Chromium (a screenshot of them is kept in
//! `artifacts/badges.png`), say their state in words, and the shields.io endpoint JSON has
//! exactly the fields of shields' endpoint schema.
//!
//! Chromium and chromedriver come from the system's packages (`tests/setup/browser.sh`);
//! without them the browser part says so and passes, unless `STATUSMESH_REQUIRE_BROWSER=1`.

use serde_json::{json, Value};
use std::path::Path;

use crate::browser::{self, artifacts_dir, Browser};
use crate::errors::start_one;
use crate::harness::{self, TestNode};

const TOKEN: &str = "badge-token-0123456789";

/// shields.io's named colours (its `color` also takes hex and CSS colours).
const SHIELDS_COLOURS: &[&str] = &[
    "brightgreen",
    "green",
    "yellowgreen",
    "yellow",
    "orange",
    "red",
    "blue",
    "lightgrey",
    "grey",
    "gray",
    "success",
    "important",
    "critical",
    "informational",
    "inactive",
];

/// Checks `body` against shields' endpoint schema: `schemaVersion` 1, `label` a string,
/// `message` a non-empty string, optional fields of their types, nothing else.
fn check_shields_endpoint(body: &Value) -> Result<(), String> {
    let object = body.as_object().ok_or("not an object")?;
    let known = [
        "schemaVersion",
        "label",
        "message",
        "color",
        "labelColor",
        "isError",
        "namedLogo",
        "logoSvg",
        "logoColor",
        "logoWidth",
        "style",
        "cacheSeconds",
    ];
    if let Some(unknown) = object.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(format!("unknown field {unknown}"));
    }
    if body["schemaVersion"] != 1 {
        return Err("schemaVersion must be 1".into());
    }
    if !body["label"].is_string() {
        return Err("label must be a string".into());
    }
    if body["message"].as_str().is_none_or(str::is_empty) {
        return Err("message must be a non-empty string".into());
    }
    if let Some(colour) = body.get("color") {
        let colour = colour.as_str().ok_or("color must be a string")?;
        let hex = colour.len() <= 7
            && colour
                .trim_start_matches('#')
                .bytes()
                .all(|b| b.is_ascii_hexdigit());
        if !SHIELDS_COLOURS.contains(&colour) && !hex {
            return Err(format!("color {colour} is not a shields colour"));
        }
    }
    Ok(())
}

async fn write(client: &reqwest::Client, node: &TestNode, path: &str, state: &str) {
    let (code, reply) = harness::put_status(
        client,
        node,
        TOKEN,
        path,
        json!({"state": state, "message": "", "ttl_s": 3600}),
    )
    .await;
    assert_eq!(code, 200, "{path}: {reply}");
}

#[tokio::test]
async fn badges_say_the_state_in_words_and_the_json_is_a_shields_endpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, _proc) = start_one(dir.path(), &["--token", TOKEN]).await;
    let client = reqwest::Client::new();
    write(&client, &node, "api/db/eu-west", "major_outage").await;
    write(&client, &node, "api/web/eu-west", "operational").await;
    write(&client, &node, "docs/site/eu-west", "operational").await;

    let cases = [
        ("/badge/api.json", "api", "major outage", "red"),
        ("/badge/api/db.json", "api/db", "major outage", "red"),
        (
            "/badge/api/web.json",
            "api/web",
            "operational",
            "brightgreen",
        ),
        ("/badge/docs.json", "docs", "operational", "brightgreen"),
    ];
    for (path, label, message, colour) in cases {
        let response = client.get(node.url(path)).send().await.expect("GET");
        assert_eq!(response.status(), 200, "{path}");
        let body: Value = response.json().await.expect("JSON");
        check_shields_endpoint(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        assert_eq!(
            body,
            json!({"schemaVersion": 1, "label": label, "message": message, "color": colour}),
            "{path}"
        );
    }
    let svg = client
        .get(node.url("/badge/api/db.svg"))
        .send()
        .await
        .expect("GET svg");
    assert_eq!(
        svg.headers()["content-type"],
        "image/svg+xml; charset=utf-8"
    );
    let text = svg.text().await.expect("svg text");
    assert!(text.contains(">major outage</text>"), "{text}");
    assert!(
        text.contains("<title>api/db: major outage</title>"),
        "{text}"
    );
    for (path, field) in [
        ("/badge/nope.svg", "service"),
        ("/badge/api/nope.json", "component"),
        ("/badge/api.png", "badge"),
    ] {
        let response = client.get(node.url(path)).send().await.expect("GET");
        assert_eq!(response.status(), 404, "{path}");
        let body: Value = response.json().await.expect("a JSON error");
        assert_eq!(body["field"], field, "{path}: {body}");
    }
    // An SVG badge for a client that takes only JSON is refused, and the reverse.
    let refused = client
        .get(node.url("/badge/api.svg"))
        .header("accept", "application/json")
        .send()
        .await
        .expect("GET");
    assert_eq!(refused.status(), 406);
    let refused = client
        .get(node.url("/badge/api.json"))
        .header("accept", "image/svg+xml")
        .send()
        .await
        .expect("GET");
    assert_eq!(refused.status(), 406);

    render_in_chromium(&client, dir.path(), &node).await;
}

/// Shows every SVG badge on a page in Chromium; each must load with a size, and the
/// screenshot of them is kept.
async fn render_in_chromium(client: &reqwest::Client, dir: &Path, node: &TestNode) {
    if !browser::installed() {
        return;
    }
    let badges = [
        "/badge/api.svg",
        "/badge/api/db.svg",
        "/badge/api/web.svg",
        "/badge/docs.svg",
    ];
    let images: String = badges
        .iter()
        .map(|b| format!("<div><img alt=\"{b}\" src=\"{}\"></div>", node.url(b)))
        .collect();
    let page = dir.join("badges.html");
    std::fs::write(
        &page,
        format!(
            "<!doctype html><html><body style=\"margin:0;background:#fff\"><div id=\"badges\" style=\"display:inline-block;padding:8px\">{images}</div></body></html>"
        ),
    )
    .expect("write the page");

    let (_driver, driver) = browser::start_chromedriver(client, dir).await;
    let browser = Browser::start(client, &driver, &dir.join("profile")).await;
    browser.goto(&format!("file://{}", page.display())).await;
    let sizes = harness::wait_for("every badge to load", || async {
        let sizes = browser
            .eval("return [...document.images].map(i => i.complete ? [i.naturalWidth, i.naturalHeight] : null)")
            .await;
        let all = sizes.as_array()?;
        (all.len() == badges.len() && all.iter().all(|s| !s.is_null())).then_some(sizes)
    })
    .await;
    for (badge, size) in badges.iter().zip(sizes.as_array().into_iter().flatten()) {
        assert!(size[0].as_u64() > Some(40), "{badge} has no width: {size}");
        assert_eq!(size[1], 20, "{badge} is 20 px high: {size}");
    }
    // The badge itself, opened as a document: its text says the state.
    browser.goto(&node.url("/badge/api/db.svg")).await;
    let words = browser
        .eval("return [...document.querySelectorAll('text:not([aria-hidden])')].map(t => t.textContent)")
        .await;
    assert_eq!(words, json!(["api/db", "major outage"]));
    browser.goto(&format!("file://{}", page.display())).await;
    harness::wait_for("the badges to load again", || async {
        let done = browser
            .eval("return [...document.images].every(i => i.complete && i.naturalWidth > 0)")
            .await;
        (done == true).then_some(())
    })
    .await;
    let id = browser.element("#badges").await;
    let png = browser.png(&format!("/element/{id}/screenshot")).await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(artifacts_dir().join("badges.png"), png).expect("write the screenshot");
    browser.close().await;
}
