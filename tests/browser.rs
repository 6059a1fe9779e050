//! The browser harness of the tests that drive headless Chromium over WebDriver: whether the
//! browser is installed (the skip rule), chromedriver on a free loopback port, a `Browser`
//! session, and where screenshots are kept.
//!
//! Chromium and chromedriver come from the system's packages (`tests/setup/browser.sh`;
//! `./test.sh` installs them). Without them a browser test says so and passes, unless
//! `STATUSMESH_REQUIRE_BROWSER=1` (set by `./test.sh` and CI), where a missing browser is a
//! failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::harness::{self, Proc};

pub(crate) const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub(crate) const CHROMIUM: &str = "/usr/bin/chromium";
/// WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Whether chromedriver and Chromium are installed. When not, says that the test is skipped
/// and returns false, or fails the test under `STATUSMESH_REQUIRE_BROWSER=1`.
pub(crate) fn installed() -> bool {
    let required = std::env::var("STATUSMESH_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
        assert!(
            !required,
            "{CHROMEDRIVER} or {CHROMIUM} is missing; ./test.sh installs them"
        );
        eprintln!("skipped: {CHROMEDRIVER} not installed (run ./test.sh)");
        return false;
    }
    true
}

/// Starts chromedriver on a free loopback port, logging to `dir/chromedriver.log`, and
/// waits until it says it is ready. Returns its process (killed when dropped) and its URL.
pub(crate) async fn start_chromedriver(client: &reqwest::Client, dir: &Path) -> (Proc, String) {
    let driver_addr = harness::free_tcp();
    let mut driver_cmd = Command::new(CHROMEDRIVER);
    driver_cmd.arg(format!("--port={}", driver_addr.port()));
    let driver_proc = Proc::spawn(driver_cmd, dir.join("chromedriver.log"));
    let driver = format!("http://{driver_addr}");
    harness::wait_for("chromedriver to be ready", || async {
        let status = harness::get_json(client, format!("{driver}/status")).await?;
        (status["value"]["ready"] == true).then_some(())
    })
    .await;
    (driver_proc, driver)
}

/// A WebDriver session; deleted (and the browser closed) by [`Browser::close`].
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

    /// Finds one element by CSS selector; its WebDriver id.
    pub(crate) async fn element(&self, css: &str) -> String {
        let found = self
            .command("/element", json!({ "using": "css selector", "value": css }))
            .await;
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_owned()
    }

    /// The browser console's entries since the last call (chromedriver's log endpoint).
    pub(crate) async fn console_log(&self) -> Vec<String> {
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

    /// Saves a screenshot of the whole page as a PNG at `path`.
    pub(crate) async fn screenshot(&self, path: &Path) {
        let png = self.png("/screenshot").await;
        std::fs::write(path, png).expect("write screenshot");
    }

    /// The PNG of a WebDriver screenshot `endpoint` of the session: `/screenshot`, or
    /// `/element/{id}/screenshot` for one element.
    pub(crate) async fn png(&self, endpoint: &str) -> Vec<u8> {
        let reply: Value = self
            .client
            .get(format!("{}{endpoint}", self.base))
            .send()
            .await
            .expect("screenshot")
            .json()
            .await
            .expect("screenshot reply");
        base64::engine::general_purpose::STANDARD
            .decode(reply["value"].as_str().unwrap_or_default())
            .expect("screenshot is base64")
    }

    pub(crate) async fn close(self) {
        let _ = self.client.delete(&self.base).send().await;
    }
}

/// The repository's `artifacts/` folder, where the committed screenshots are kept.
pub(crate) fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}
