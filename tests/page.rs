//! The status page in a real browser: headless Chromium driven over WebDriver (chromedriver),
//! watching one node's page while a status is written on a node of another region.
//!
//! Chromium and chromedriver come from the system's packages; `./test.sh` installs them.
//! Without them this test says so and passes, unless `STATUSMESH_REQUIRE_BROWSER=1` (set by
//! `./test.sh` and CI), where a missing browser is a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::harness::{self, Proc};

pub(crate) const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub(crate) const CHROMIUM: &str = "/usr/bin/chromium";

/// A WebDriver session; deleted (and the browser closed) when dropped.
pub(crate) struct Browser {
    pub(crate) client: reqwest::Client,
    pub(crate) base: String,
}

impl Browser {
    pub(crate) async fn start(client: &reqwest::Client, driver: &str, profile: &Path) -> Self {
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--window-size=1400,1000".to_owned(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let capabilities = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
                "goog:loggingPrefs": { "browser": "ALL" }
            }}
        });
        let reply: Value = client
            .post(format!("{driver}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("create a WebDriver session")
            .json()
            .await
            .expect("session reply");
        let session = reply["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {reply}"))
            .to_owned();
        Self {
            client: client.clone(),
            base: format!("{driver}/session/{session}"),
        }
    }

    pub(crate) async fn command(&self, path: &str, body: Value) -> Value {
        let reply: Value = self
            .client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("WebDriver command")
            .json()
            .await
            .expect("WebDriver reply");
        reply["value"].clone()
    }

    pub(crate) async fn goto(&self, url: &str) {
        self.command("/url", json!({ "url": url })).await;
    }

    pub(crate) async fn eval(&self, script: &str) -> Value {
        self.command("/execute/sync", json!({ "script": script, "args": [] }))
            .await
    }

    /// The browser console's entries since the last call (chromedriver's log endpoint).
    async fn console_log(&self) -> Vec<String> {
        let entries = self.command("/se/log", json!({ "type": "browser" })).await;
        entries
            .as_array()
            .map(|all| {
                all.iter()
                    .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) async fn screenshot(&self, path: &Path) {
        let reply: Value = self
            .client
            .get(format!("{}/screenshot", self.base))
            .send()
            .await
            .expect("screenshot")
            .json()
            .await
            .expect("screenshot reply");
        let png = base64::engine::general_purpose::STANDARD
            .decode(reply["value"].as_str().unwrap_or_default())
            .expect("screenshot is base64");
        std::fs::write(path, png).expect("write screenshot");
    }

    pub(crate) async fn close(self) {
        let _ = self.client.delete(&self.base).send().await;
    }
}

pub(crate) fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

#[tokio::test]
async fn the_page_of_one_node_shows_a_write_on_another_region_without_a_reload() {
    let required = std::env::var("STATUSMESH_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
        assert!(
            !required,
            "{CHROMEDRIVER} or {CHROMIUM} is missing; ./test.sh installs them"
        );
        eprintln!("skipped: {CHROMEDRIVER} not installed (run ./test.sh)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, nodes) = harness::topology(dir.path(), 1);
    let mut command = Command::new(harness::BIN);
    command
        .args(["dev", "--token", "page-token", "--config"])
        .arg(&config);
    let _dev = Proc::spawn(command, dir.path().join("dev.log"));
    let client = reqwest::Client::new();
    harness::wait_healthy(&client, &nodes).await;
    harness::wait_ready(&client, &nodes).await;

    let driver_addr = harness::free_tcp();
    let mut driver_cmd = Command::new(CHROMEDRIVER);
    driver_cmd.arg(format!("--port={}", driver_addr.port()));
    let _driver = Proc::spawn(driver_cmd, dir.path().join("chromedriver.log"));
    let driver = format!("http://{driver_addr}");
    harness::wait_for("chromedriver to be ready", || async {
        let status = harness::get_json(&client, format!("{driver}/status")).await?;
        (status["value"]["ready"] == true).then_some(())
    })
    .await;

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
