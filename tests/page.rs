//! The status page in a real browser: headless Chromium driven over WebDriver (chromedriver),
//! watching one node's page while a status is written on a node of another region.
//!
//! The browser comes from the system's packages (see [`crate::browser`] for when this test
//! skips).

use serde_json::json;

use crate::browser::{self, artifacts_dir, Browser};
use crate::harness;

#[tokio::test]
async fn the_page_of_one_node_shows_a_write_on_another_region_without_a_reload() {
    if !browser::installed() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let client = reqwest::Client::new();
    let (nodes, _dev) = harness::start_dev(&client, dir.path(), 1, "page-token").await;

    let (_driver, driver) = browser::start_chromedriver(&client, dir.path()).await;

    let reader = nodes
        .iter()
        .find(|n| n.region == "ap-southeast")
        .expect("ap node");
    let writer = nodes
        .iter()
        .find(|n| n.region == "eu-west")
        .expect("eu node");
    let browser = Browser::start(&client, &driver, &dir.path().join("profile")).await;
    browser.goto(&reader.url("/")).await;
    harness::wait_for("the page to go live", || async {
        let state = browser
            .eval("return document.getElementById('conn')?.dataset.state")
            .await;
        (state == "live").then_some(())
    })
    .await;

    let (code, reply) = harness::put_status(
        &client,
        writer,
        "page-token",
        "web/frontend/eu-west",
        json!({"state": "major_outage", "message": "edge down"}),
    )
    .await;
    assert_eq!(code, 200, "{reply}");
    let cell =
        "return document.querySelector('td[data-key=\"web/frontend/eu-west\"]')?.textContent || ''";
    let text = harness::wait_for("the cell to change in the browser", || async {
        let text = browser.eval(cell).await;
        let text = text.as_str().unwrap_or_default().to_owned();
        text.contains("Major outage").then_some(text)
    })
    .await;
    assert!(text.contains("edge down"), "{text}");
    // The banner says it in words too: colour is never the only signal.
    let banner = browser
        .eval("return document.getElementById('banner-text').textContent")
        .await;
    assert_eq!(banner, "Major System Outage");
    let reloads = browser
        .eval("return performance.getEntriesByType('navigation').length")
        .await;
    assert_eq!(reloads, 1, "the page must not have reloaded");

    // An injected script in a status message is shown as text and never runs.
    let injected = "<script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=2\">";
    let (code, reply) = harness::put_status(
        &client,
        writer,
        "page-token",
        "web/injected/eu-west",
        json!({"state": "degraded_performance", "message": injected}),
    )
    .await;
    assert_eq!(code, 200, "{reply}");
    let injected_cell =
        "return document.querySelector('td[data-key=\"web/injected/eu-west\"]')?.textContent || ''";
    let text = harness::wait_for("the injected message to show", || async {
        let text = browser.eval(injected_cell).await;
        let text = text.as_str().unwrap_or_default().to_owned();
        text.contains("window.__pwned").then_some(text)
    })
    .await;
    assert!(text.contains("<script>"), "shown as text: {text}");
    let pwned = browser.eval("return typeof window.__pwned").await;
    assert_eq!(pwned, "undefined", "the injected script ran");
    let scripts = browser
        .eval("return document.querySelectorAll('#services script, #services img').length")
        .await;
    assert_eq!(scripts, 0, "the message became markup");
    let violations: Vec<String> = browser
        .console_log()
        .await
        .into_iter()
        .filter(|m| m.contains("Content Security Policy") || m.contains("Content-Security-Policy"))
        .collect();
    assert!(violations.is_empty(), "CSP violations: {violations:#?}");

    browser
        .screenshot(&artifacts_dir().join("status-page.png"))
        .await;
    browser.close().await;
}
