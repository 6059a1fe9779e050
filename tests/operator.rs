//! The operator's page in real Chromium (chromedriver), over a mesh of three `statusmesh run`
//! processes: a new component's history reads "no data" before its first observation; an
//! operator signs in and sets a state that goes pending, then confirmed (held by 3 of 3
//! regions) and shows on a second browser on another region's node; a write the token may
//! not make is reverted with the node's 403 text; and after `kill -9` of the page's node the
//! page follows another node and receives every change, once, without a reload.
//!
//! With `STATUSMESH_SCREENSHOTS=DIR` each state is saved as a PNG in DIR (the committed ones
//! are in `artifacts/`); CI leaves the repository alone.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};

use crate::browser::{self, Browser};
use crate::harness::{self, Proc, TestNode};

const ADMIN: &str = "admin-secret-0123456789";
const WEBOPS: &str = "webops-secret-0123456789";

fn screenshots() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("STATUSMESH_SCREENSHOTS")?);
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    Some(dir)
}

async fn shot(browser: &Browser, name: &str) {
    if let Some(dir) = screenshots() {
        browser.screenshot(&dir.join(name)).await;
    }
}

/// Types `text` into the element as keystrokes.
async fn type_into(browser: &Browser, css: &str, text: &str) {
    let id = browser.element(css).await;
    browser
        .command(&format!("/element/{id}/value"), json!({ "text": text }))
        .await;
}

async fn click(browser: &Browser, css: &str) {
    let id = browser.element(css).await;
    browser
        .command(&format!("/element/{id}/click"), json!({}))
        .await;
}

/// Chrome DevTools through chromedriver: network conditions, so that a pending state lasts
/// long enough to be seen.
async fn latency(browser: &Browser, ms: u64) {
    browser
        .command(
            "/goog/cdp/execute",
            json!({ "cmd": "Network.enable", "params": {} }),
        )
        .await;
    browser
        .command(
            "/goog/cdp/execute",
            json!({ "cmd": "Network.emulateNetworkConditions", "params": {
                "offline": false, "latency": ms, "downloadThroughput": -1, "uploadThroughput": -1 } }),
        )
        .await;
}

async fn text_of(browser: &Browser, script: &str) -> String {
    browser
        .eval(script)
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn wait_text(browser: &Browser, what: &str, script: &str, wanted: &[&str]) -> String {
    harness::wait_for(what, || async {
        let text = text_of(browser, script).await;
        wanted.iter().all(|w| text.contains(w)).then_some(text)
    })
    .await
}

async fn sign_in(browser: &Browser, token: &str, name: &str) {
    type_into(browser, "#token", token).await;
    click(browser, "#signin-submit").await;
    wait_text(
        browser,
        "the sign-in",
        "return document.getElementById('auth-name').textContent",
        &[name],
    )
    .await;
    let kept = browser
        .eval("return sessionStorage.getItem('statusmesh.operator.token')")
        .await;
    assert_eq!(kept, token, "the token is kept in sessionStorage");
    let url = text_of(browser, "return location.href").await;
    assert!(!url.contains(token), "the token is never in a URL: {url}");
}

/// Fills the "set a state" form (by value, as a user picking from the lists would) and
/// submits it; the page shows the write as pending at once, in the same turn.
async fn set_state(
    browser: &Browser,
    service: &str,
    component: &str,
    target: &str,
    state: &str,
    message: &str,
) {
    let fill = format!(
        "const set = (id, v) => {{ document.getElementById(id).value = v; }};\
         set('op-status-service', {service:?}); set('op-status-component', {component:?});\
         set('op-status-target', {target:?}); set('op-status-state', {state:?});\
         set('op-status-message', {message:?});"
    );
    browser.eval(&fill).await;
    let at_once = browser.eval(SUBMIT_AND_LOOK).await;
    assert_eq!(at_once[0], "pending", "{at_once}");
}

/// Clicks the form's button and reports, in the same turn, what the page shows at once.
const SUBMIT_AND_LOOK: &str = "document.getElementById('op-status-submit').click();\
    const r = document.getElementById('op-status-result');\
    return [r.dataset.state, r.textContent];";

fn cell(key: &str) -> String {
    format!("return document.querySelector('td[data-key=\"{key}\"]')?.outerHTML || ''")
}

/// An admin's write of `state` with `message` at `path` on `node`; it must succeed.
async fn write(client: &reqwest::Client, node: &TestNode, path: &str, state: &str, message: &str) {
    let (code, reply) = harness::put_status(
        client,
        node,
        ADMIN,
        path,
        json!({"state": state, "message": message}),
    )
    .await;
    assert_eq!(code, 200, "{reply}");
}

async fn start_mesh(dir: &Path) -> (Vec<TestNode>, Vec<Proc>) {
    let (config, nodes) = harness::topology(dir, 1);
    let certs = dir.join("certs");
    harness::make_certs(&config, &certs);
    let tokens = dir.join("tokens.toml");
    std::fs::write(
        &tokens,
        format!(
            "[[token]]\nname = \"admin\"\nsecret = \"{ADMIN}\"\n\n\
             [[token]]\nname = \"webops\"\nsecret = \"{WEBOPS}\"\n\
             services = [\"web\"]\nregions = [\"eu-west\"]\noperator = false\n"
        ),
    )
    .expect("tokens file");
    // The page writes to the node it follows, which after a failover is another origin.
    let origins: Vec<String> = nodes.iter().map(|n| format!("http://{}", n.http)).collect();
    let origins = origins.join(",");
    let procs = nodes
        .iter()
        .map(|n| {
            harness::run_node_with_args(
                dir,
                &config,
                &certs,
                n,
                &harness::data_dir(dir, n),
                [
                    "--tokens",
                    tokens.to_str().expect("utf-8 path"),
                    "--cors-write-origins",
                    &origins,
                ],
            )
        })
        .collect();
    let client = reqwest::Client::new();
    harness::wait_healthy(&client, &nodes).await;
    harness::wait_ready(&client, &nodes).await;
    (nodes, procs)
}

#[tokio::test]
async fn an_operator_acts_from_the_page_and_the_page_follows_another_node() {
    if !browser::installed() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (nodes, mut procs) = start_mesh(dir.path()).await;
    let client = reqwest::Client::new();
    let index = |region: &str| {
        nodes
            .iter()
            .position(|n| n.region == region)
            .expect("a node per region")
    };
    let (eu, us, ap) = (index("eu-west"), index("us-east"), index("ap-southeast"));

    write(
        &client,
        &nodes[eu],
        "web/api/eu-west",
        "operational",
        "fine",
    )
    .await;

    // What the page learns of a token, and of the mesh.
    let whoami = client
        .get(nodes[eu].url("/v1/whoami"))
        .send()
        .await
        .expect("whoami");
    assert_eq!(whoami.status(), 401);
    let refusal: Value = whoami.json().await.expect("json");
    assert_eq!(refusal["field"], "authorization");
    let scope: Value = client
        .get(nodes[eu].url("/v1/whoami"))
        .bearer_auth(WEBOPS)
        .send()
        .await
        .expect("whoami")
        .json()
        .await
        .expect("json");
    assert_eq!(
        scope,
        json!({"name": "webops", "scope": {"services": ["web"], "regions": ["eu-west"],
            "operator": false, "evaluate_only": false}, "may": {"status": true, "operator": false}})
    );
    let mesh = harness::get_json(&client, nodes[eu].url("/v1/nodes"))
        .await
        .expect("nodes");
    for node in &nodes {
        let listed = mesh["nodes"]
            .as_array()
            .and_then(|all| all.iter().find(|n| n["id"] == node.id.as_str()))
            .unwrap_or_else(|| panic!("{} listed: {mesh}", node.id));
        assert_eq!(listed["url"], format!("http://{}", node.http));
    }

    let (_driver, driver) = browser::start_chromedriver(&client, dir.path()).await;

    // Page A on the eu-west node.
    let a = Browser::start(&client, &driver, &dir.path().join("profile-a")).await;
    a.goto(&nodes[eu].url("/")).await;
    wait_text(
        &a,
        "page A to go live",
        "return document.getElementById('conn').dataset.state",
        &["live"],
    )
    .await;

    // History without fiction: first observed just now, so 89 of 90 days are no data.
    let label = wait_text(
        &a,
        "the uptime label",
        "return document.querySelector('[data-uptime=\"web/api\"]')?.textContent || ''",
        &["with data"],
    )
    .await;
    assert_eq!(label, "100.000% uptime over 1 day with data");
    let nodata = a
        .eval("return document.querySelectorAll('[data-bar=\"web/api\"] span.nodata').length")
        .await;
    assert_eq!(nodata, 89, "every day before the first observation");
    let first_day = text_of(
        &a,
        "return document.querySelector('[data-bar=\"web/api\"] span').title",
    )
    .await;
    assert!(first_day.ends_with(": no data"), "{first_day}");
    click(&a, "a[data-timeline=\"web/api\"]").await;
    let summary = wait_text(
        &a,
        "the timeline view",
        "return document.getElementById('timeline-summary')?.textContent || ''",
        &["First observed"],
    )
    .await;
    assert!(
        summary.contains("the 89 days before it are no data, not downtime"),
        "{summary}"
    );
    assert_eq!(
        a.eval("return document.getElementById('grid').hidden")
            .await,
        true
    );
    shot(&a, "history-no-data.png").await;
    a.eval("location.hash = ''; return null").await;
    wait_text(
        &a,
        "the grid again",
        "return String(document.getElementById('grid').hidden)",
        &["false"],
    )
    .await;

    // Sign in and set a state: pending at once, confirmed once the mesh has it.
    sign_in(&a, ADMIN, "admin").await;
    latency(&a, 1500).await;
    set_state(&a, "web", "api", "us-east", "major_outage", "db down").await;
    let pending_cell = text_of(&a, &cell("web/api/us-east")).await;
    assert!(
        pending_cell.contains("pending") && pending_cell.contains("Major outage"),
        "the new value shows at once, marked pending: {pending_cell}"
    );
    shot(&a, "operator-pending.png").await;
    let confirmed = wait_text(
        &a,
        "the write to be confirmed",
        &result("op-status-result"),
        &["confirmed: "],
    )
    .await;
    assert!(confirmed.contains("held by 3 of 3 regions"), "{confirmed}");
    let took = text_of(
        &a,
        "return document.getElementById('op-status-result').dataset.ms",
    )
    .await;
    eprintln!("click to confirmed (ack=3, 1.5 s of added latency): {took} ms");
    let announced = text_of(&a, "return document.getElementById('announce').textContent").await;
    assert!(
        announced.contains("Confirmed"),
        "said to screen readers: {announced}"
    );
    let confirmed_cell = text_of(&a, &cell("web/api/us-east")).await;
    assert!(
        !confirmed_cell.contains("pending") && confirmed_cell.contains("db down"),
        "{confirmed_cell}"
    );
    // The derived view (the component's status, the banner) follows the confirmed write.
    wait_text(
        &a,
        "the banner to follow",
        "return document.getElementById('banner-text').textContent",
        &["Major System Outage"],
    )
    .await;
    shot(&a, "operator-confirmed.png").await;
    latency(&a, 0).await;

    // Page B on the ap-southeast node sees it; its token may write only web in eu-west.
    let b = Browser::start(&client, &driver, &dir.path().join("profile-b")).await;
    b.goto(&nodes[ap].url("/")).await;
    wait_text(
        &b,
        "the write on page B",
        &cell("web/api/us-east"),
        &["Major outage", "db down"],
    )
    .await;
    sign_in(&b, WEBOPS, "webops").await;
    assert_eq!(
        b.eval("return document.getElementById('op-incidents').hidden")
            .await,
        true,
        "no incident controls for a token without operator"
    );
    let targets = b
        .eval("return [...document.getElementById('op-status-target').options].map(o => o.value)")
        .await;
    assert_eq!(targets, json!(["eu-west"]), "only the regions of its scope");
    set_state(
        &b,
        "billing",
        "db",
        "eu-west",
        "degraded_performance",
        "slow",
    )
    .await;
    let reverted = wait_text(
        &b,
        "the forbidden write to be reverted",
        &result("op-status-result"),
        &["reverted: "],
    )
    .await;
    assert!(
        reverted.contains("403")
            && reverted.contains("this token may not write service \"billing\""),
        "{reverted}"
    );
    let described = b
        .eval("return document.getElementById('op-status-submit').getAttribute('aria-describedby')")
        .await;
    assert_eq!(
        described, "op-status-result",
        "the error is tied to its control"
    );
    harness::wait_for("the optimistic cell to go", || async {
        (text_of(&b, &cell("billing/db/eu-west")).await.is_empty()).then_some(())
    })
    .await;
    shot(&b, "operator-reverted.png").await;
    b.close().await;

    // kill -9 the node page A follows; changes keep coming through another node.
    let following = a.eval("return SM.conn.following.id").await;
    assert_eq!(following, nodes[eu].id.as_str());
    procs[eu].child.kill().expect("kill -9 the page's node");
    let _ = procs[eu].child.wait();
    let messages: Vec<String> = (1..=6).map(|i| format!("failover change {i}")).collect();
    for (i, message) in messages.iter().enumerate() {
        let state = if i % 2 == 0 {
            "partial_outage"
        } else {
            "operational"
        };
        write(&client, &nodes[us], "web/api/ap-southeast", state, message).await;
    }
    let received_script =
        "return SM.conn.received.filter(e => e.kind === 'status' && e.service === 'web' \
        && e.component === 'api' && e.region === 'ap-southeast').map(e => e.message)";
    let received = harness::wait_for("every change on page A after the kill", || async {
        let got = a.eval(received_script).await;
        (got.as_array().map_or(0, Vec::len) >= messages.len()).then_some(got)
    })
    .await;
    assert_eq!(received, json!(messages), "each change once, in order");
    assert_eq!(a.eval("return SM.conn.duplicates").await, 0);
    let gap = a.eval("return SM.conn.lastGapMs").await;
    eprintln!("page A was without a stream for {gap} ms after kill -9 of its node");
    let now_following = text_of(
        &a,
        "return document.getElementById('following').dataset.node",
    )
    .await;
    assert!(
        now_following == nodes[us].id || now_following == nodes[ap].id,
        "follows another node: {now_following}"
    );
    let shown = text_of(
        &a,
        "return document.getElementById('following').textContent",
    )
    .await;
    assert!(shown.contains(&now_following), "{shown}");
    wait_text(
        &a,
        "the last change in page A's grid",
        &cell("web/api/ap-southeast"),
        &["failover change 6"],
    )
    .await;
    // And a live change after the failover arrives too.
    write(
        &client,
        &nodes[ap],
        "web/api/ap-southeast",
        "operational",
        "after failover",
    )
    .await;
    wait_text(
        &a,
        "a live change after the failover",
        &cell("web/api/ap-southeast"),
        &["after failover"],
    )
    .await;
    let reloads = a
        .eval("return performance.getEntriesByType('navigation').length")
        .await;
    assert_eq!(reloads, 1, "the page must not have reloaded");
    assert_eq!(
        text_of(&a, "return document.getElementById('conn').dataset.state").await,
        "live"
    );
    shot(&a, "operator-failover.png").await;

    // Writes follow too (to another origin, listed in --cors-write-origins): with eu-west's
    // only node gone, ?ack=3 ends at 2 regions, and the page says so.
    set_state(
        &a,
        "web",
        "api",
        "us-east",
        "degraded_performance",
        "written after failover",
    )
    .await;
    let confirmed = wait_text(
        &a,
        "the write after the failover to be confirmed",
        &result("op-status-result"),
        &["confirmed: "],
    )
    .await;
    assert!(
        confirmed.contains("held by 2 of 3 regions when the wait ended"),
        "{confirmed}"
    );
    let state = harness::cell_state(&client, &nodes[ap], "web", "api", "us-east").await;
    assert_eq!(state.as_deref(), Some("degraded_performance"));
    a.close().await;
}

/// The result line of the form whose result element is `id`: `state: text`.
fn result(id: &str) -> String {
    format!(
        "const r = document.getElementById('{id}'); return r.dataset.state + ': ' + r.textContent"
    )
}

async fn wait_confirmed(browser: &Browser, id: &str) -> String {
    let text = harness::wait_for(id, || async {
        let text = text_of(browser, &result(id)).await;
        (text.starts_with("confirmed: ") || text.starts_with("reverted: ")).then_some(text)
    })
    .await;
    assert!(text.starts_with("confirmed: "), "{id}: {text}");
    text
}

/// Waits until the list `select` offers `count` options.
async fn wait_options(browser: &Browser, what: &str, select: &str, count: u64) {
    let script = format!("return document.getElementById({select:?}).options.length");
    harness::wait_for(what, || async {
        (browser.eval(&script).await == count).then_some(())
    })
    .await;
}

/// Sets form fields by id (as a user picking from the lists would) and clicks `button`.
async fn submit(browser: &Browser, fields: &[(&str, &str)], button: &str) {
    let mut script = String::new();
    for (id, value) in fields {
        script.push_str(&format!(
            "document.getElementById({id:?}).value = {value:?};"
        ));
    }
    script.push_str(&format!(
        "document.getElementById({button:?}).click(); return null;"
    ));
    browser.eval(&script).await;
}

#[tokio::test]
async fn incidents_maintenance_overrides_and_checks_are_confirmed_from_the_page() {
    if !browser::installed() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let client = reqwest::Client::new();
    let (nodes, _dev) = harness::start_dev(&client, dir.path(), 1, ADMIN).await;
    write(&client, &nodes[0], "web/api/eu-west", "operational", "fine").await;

    let (_driver, driver) = browser::start_chromedriver(&client, dir.path()).await;
    let browser = Browser::start(&client, &driver, &dir.path().join("profile")).await;
    browser.goto(&nodes[1].url("/")).await;
    wait_text(
        &browser,
        "the page to show the component",
        &cell("web/api/eu-west"),
        &["Operational"],
    )
    .await;
    sign_in(&browser, ADMIN, "cli").await;

    // An incident: opened, updated, resolved.
    submit(
        &browser,
        &[
            ("op-incident-service", "web"),
            ("op-incident-title", "Elevated errors"),
            ("op-incident-components", "api"),
            ("op-incident-message", "looking into it"),
        ],
        "op-incident-open-submit",
    )
    .await;
    wait_confirmed(&browser, "op-incident-open-result").await;
    let incident = "return document.querySelector('[data-incident]')?.textContent || ''";
    wait_text(
        &browser,
        "the incident",
        incident,
        &["Elevated errors", "looking into it"],
    )
    .await;
    wait_options(
        &browser,
        "the incident to be offered for updates",
        "op-incident-id",
        1,
    )
    .await;
    submit(
        &browser,
        &[
            ("op-incident-status", "monitoring"),
            ("op-incident-update-message", "fix deployed"),
        ],
        "op-incident-update-submit",
    )
    .await;
    wait_confirmed(&browser, "op-incident-update-result").await;
    wait_text(
        &browser,
        "the update",
        incident,
        &["monitoring", "fix deployed"],
    )
    .await;
    submit(
        &browser,
        &[("op-incident-update-message", "all good")],
        "op-incident-resolve",
    )
    .await;
    wait_confirmed(&browser, "op-incident-update-result").await;
    wait_text(
        &browser,
        "the resolution",
        incident,
        &["resolved", "all good"],
    )
    .await;

    // A maintenance window: scheduled, then cancelled.
    submit(
        &browser,
        &[
            ("op-maint-service", "web"),
            ("op-maint-title", "Database upgrade"),
            ("op-maint-components", "api"),
            ("op-maint-starts", "2099-01-01T10:00"),
            ("op-maint-ends", "2099-01-01T12:00"),
        ],
        "op-maint-new-submit",
    )
    .await;
    wait_confirmed(&browser, "op-maint-new-result").await;
    let maintenance = "return document.getElementById('maintenance').textContent";
    wait_text(&browser, "the window", maintenance, &["Database upgrade"]).await;
    wait_options(
        &browser,
        "the window to be offered for cancelling",
        "op-maint-id",
        1,
    )
    .await;
    submit(&browser, &[], "op-maint-cancel-submit").await;
    wait_confirmed(&browser, "op-maint-cancel-result").await;
    wait_text(
        &browser,
        "the window to go",
        maintenance,
        &["None scheduled."],
    )
    .await;

    // An override over every region, and a probe check (a closed port on loopback).
    submit(
        &browser,
        &[
            ("op-status-service", "web"),
            ("op-status-component", "api"),
            ("op-status-target", "__override__"),
            ("op-status-state", "under_maintenance"),
            ("op-status-message", "planned work"),
        ],
        "op-status-submit",
    )
    .await;
    let held = wait_confirmed(&browser, "op-status-result").await;
    assert!(held.contains("held by 3 of 3 regions"), "{held}");
    let took = text_of(
        &browser,
        "return document.getElementById('op-status-result').dataset.ms",
    )
    .await;
    eprintln!("override click to confirmed (ack=3, loopback): {took} ms");
    wait_text(
        &browser,
        "the override",
        "return document.querySelector('td[data-status=\"web/api\"]')?.textContent || ''",
        &["Maintenance", "override"],
    )
    .await;
    let closed = harness::free_tcp();
    submit(
        &browser,
        &[
            ("op-check-service", "web"),
            ("op-check-component", "api"),
            ("op-check-kind", "tcp"),
            ("op-check-target", &closed.to_string()),
            ("op-check-interval", "30"),
        ],
        "op-check-submit",
    )
    .await;
    wait_confirmed(&browser, "op-check-result").await;
    wait_text(
        &browser,
        "the check in the list",
        "return document.getElementById('checks-list').textContent",
        &["web/api: tcp"],
    )
    .await;
    shot(&browser, "operator-records.png").await;
    browser.close().await;
}
