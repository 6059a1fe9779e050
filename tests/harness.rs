//! The test harness: topologies on free loopback ports, node processes, an SSE reader.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

/// How long any one condition may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(30);

pub const BIN: &str = env!("CARGO_BIN_EXE_statusmesh");

/// A free loopback TCP port (bound and released; the kernel does not hand it out again soon).
pub fn free_tcp() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind tcp");
    listener.local_addr().expect("addr")
}

/// A free loopback UDP port.
pub fn free_udp() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    socket.local_addr().expect("addr")
}

/// One node of a test topology.
#[derive(Debug, Clone)]
pub struct TestNode {
    pub id: String,
    pub region: String,
    pub gossip: SocketAddr,
    pub http: SocketAddr,
}

impl TestNode {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }
}

/// Regions with real coordinates, as in the repository's regions.toml.
pub const REGIONS: [(&str, f64, f64); 3] = [
    ("eu-west", 53.35, -6.26),
    ("us-east", 39.04, -77.49),
    ("ap-southeast", 1.35, 103.82),
];

/// `per_region` nodes in each of the three regions (ids `<region>-<n>`), with the addresses
/// `addrs(index)` gives each.
pub fn test_nodes(
    per_region: usize,
    mut addrs: impl FnMut(usize) -> (SocketAddr, SocketAddr),
) -> Vec<TestNode> {
    let mut nodes = Vec::new();
    for (region, _, _) in REGIONS {
        for i in 1..=per_region {
            let (gossip, http) = addrs(nodes.len());
            nodes.push(TestNode {
                id: format!("{region}-{i}"),
                region: region.to_owned(),
                gossip,
                http,
            });
        }
    }
    nodes
}

/// The regions.toml text of the three regions and `nodes`.
pub fn regions_toml(nodes: &[TestNode]) -> String {
    let mut text = String::from("[cluster]\nname = \"test\"\n\n");
    for (region, lat, lon) in REGIONS {
        text.push_str(&format!(
            "[[region]]\nname = \"{region}\"\nlat = {lat}\nlon = {lon}\n\n"
        ));
    }
    for n in nodes {
        text.push_str(&format!(
            "[[node]]\nid = \"{}\"\nregion = \"{}\"\ngossip = \"{}\"\nhttp = \"{}\"\n\n",
            n.id, n.region, n.gossip, n.http
        ));
    }
    text
}

/// A topology with `per_region` nodes in each of the three regions, on free ports,
/// written as regions.toml into `dir`.
pub fn topology(dir: &Path, per_region: usize) -> (PathBuf, Vec<TestNode>) {
    let nodes = test_nodes(per_region, |_| (free_udp(), free_tcp()));
    let path = dir.join("regions.toml");
    std::fs::write(&path, regions_toml(&nodes)).expect("write regions.toml");
    (path, nodes)
}

/// Runs `statusmesh certs` for a topology into `out`.
pub fn make_certs(config: &Path, out: &Path) {
    let status = Command::new(BIN)
        .args(["certs", "--config"])
        .arg(config)
        .arg("--out")
        .arg(out)
        .stdout(Stdio::null())
        .status()
        .expect("run statusmesh certs");
    assert!(status.success(), "statusmesh certs failed");
}

/// A child process that is killed (by its own pid) when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(mut command: Command, log: PathBuf) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let err = file.try_clone().expect("clone log");
        command.stdout(file).stderr(err).env("RUST_LOG", "info");
        let child = command.spawn().expect("spawn statusmesh");
        Self { child, log }
    }

    /// Stops the process with SIGTERM (a graceful shutdown) and waits for it to exit, at
    /// most [`WAIT`]; then it is killed.
    pub fn terminate(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!("the process did not stop within {WAIT:?} of SIGTERM");
    }

    /// The process's output so far, for failure messages.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `statusmesh run` for one node, with its data in `dir/<node-id>-data`.
pub fn run_node(dir: &Path, config: &Path, certs: &Path, node: &TestNode, token: &str) -> Proc {
    run_node_with_data(dir, config, certs, node, token, &data_dir(dir, node))
}

/// [`run_node`] with `extra` flags after the token.
pub fn run_node_with_extra(
    dir: &Path,
    config: &Path,
    certs: &Path,
    node: &TestNode,
    token: &str,
    extra: &[&str],
) -> Proc {
    let mut args = vec!["--token", token];
    args.extend_from_slice(extra);
    run_node_with_args(dir, config, certs, node, &data_dir(dir, node), args)
}

/// The data directory [`run_node`] gives a node.
pub fn data_dir(dir: &Path, node: &TestNode) -> PathBuf {
    dir.join(format!("{}-data", node.id))
}

/// Starts `statusmesh run` for one node with its data in `data`. Each start appends to the
/// node's log file, so a restarted node's earlier output stays readable.
pub fn run_node_with_data(
    dir: &Path,
    config: &Path,
    certs: &Path,
    node: &TestNode,
    token: &str,
    data: &Path,
) -> Proc {
    run_node_with_args(dir, config, certs, node, data, ["--token", token])
}

/// Starts `statusmesh run` for one node with its data in `data` and `args` after the
/// required ones (the token or tokens file, limits).
pub fn run_node_with_args<I, S>(
    dir: &Path,
    config: &Path,
    certs: &Path,
    node: &TestNode,
    data: &Path,
    args: I,
) -> Proc
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut command = Command::new(BIN);
    command
        .args(base_run_args(config, certs, node, data))
        .args(args);
    Proc::spawn(command, dir.join(format!("{}.log", node.id)))
}

/// The arguments of `statusmesh run` for one node.
pub fn run_args(
    config: &Path,
    certs: &Path,
    node: &TestNode,
    token: &str,
    data: &Path,
) -> Vec<std::ffi::OsString> {
    let mut args = base_run_args(config, certs, node, data);
    args.extend(["--token".into(), token.into()]);
    args
}

/// `statusmesh run` arguments up to the data directory (the token or tokens file follow).
fn base_run_args(
    config: &Path,
    certs: &Path,
    node: &TestNode,
    data: &Path,
) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec!["run".into(), "--config".into()];
    args.push(config.into());
    args.extend(["--node".into(), node.id.clone().into(), "--certs".into()]);
    args.push(certs.into());
    args.push("--data-dir".into());
    args.push(data.into());
    args
}

/// Polls `check` until it returns Some, at most [`WAIT`]; panics with `what` otherwise.
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    let mut delay = Duration::from_millis(10);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(250));
    }
}

/// Waits until a GET of `url` answers with a 2xx status.
pub async fn wait_ok(client: &reqwest::Client, url: &str) {
    wait_for(url, || async {
        let response = client.get(url).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;
}

/// Waits until every node answers /healthz.
pub async fn wait_healthy(client: &reqwest::Client, nodes: &[TestNode]) {
    for node in nodes {
        wait_ok(client, &node.url("/healthz")).await;
    }
}

/// Waits until every node answers /readyz with 200 (it has heard from a peer).
pub async fn wait_ready(client: &reqwest::Client, nodes: &[TestNode]) {
    for node in nodes {
        wait_ok(client, &node.url("/readyz")).await;
    }
}

/// One parsed SSE event.
#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    pub event: String,
    pub id: String,
    pub data: serde_json::Value,
}

/// A minimal SSE reader over reqwest's byte stream.
pub struct SseReader {
    stream: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl SseReader {
    pub async fn connect(client: &reqwest::Client, url: &str, last_event_id: Option<&str>) -> Self {
        Self::open(client, url, last_event_id)
            .await
            .expect("connect SSE")
    }

    /// Connects, or says why not (for tests where a node may be down or cut off).
    pub async fn open(
        client: &reqwest::Client,
        url: &str,
        last_event_id: Option<&str>,
    ) -> Result<Self, String> {
        let mut request = client.get(url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        if response.status() != 200 {
            return Err(format!("SSE status {}", response.status()));
        }
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if !content_type.starts_with("text/event-stream") {
            return Err(format!("content-type {content_type}"));
        }
        Ok(Self {
            stream: response.bytes_stream().boxed(),
            buffer: String::new(),
        })
    }

    /// The next event (comments skipped), within [`WAIT`].
    pub async fn next(&mut self) -> SseEvent {
        tokio::time::timeout(WAIT, self.next_inner())
            .await
            .expect("timed out waiting for an SSE event")
    }

    /// The next event that satisfies `pred`, within [`WAIT`] in all.
    pub async fn next_matching(&mut self, pred: impl Fn(&SseEvent) -> bool) -> SseEvent {
        tokio::time::timeout(WAIT, async {
            loop {
                let event = self.next_inner().await;
                if pred(&event) {
                    return event;
                }
            }
        })
        .await
        .expect("timed out waiting for a matching SSE event")
    }

    async fn next_inner(&mut self) -> SseEvent {
        self.try_next().await.expect("SSE stream")
    }

    /// The next event (comments skipped), or why the stream ended; no time limit.
    pub async fn try_next(&mut self) -> Result<SseEvent, String> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent::default();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event.event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        event.id = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if event.event.is_empty() && data.is_empty() {
                    continue; // a heartbeat comment or a bare retry
                }
                event.data = serde_json::from_str(&data).unwrap_or(serde_json::Value::Null);
                return Ok(event);
            }
            let chunk = self
                .stream
                .next()
                .await
                .ok_or("SSE stream ended")?
                .map_err(|e| format!("SSE stream error: {e}"))?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// A node's `/metrics` exposition; `None` when it does not answer.
pub async fn metrics_text(client: &reqwest::Client, node: &TestNode) -> Option<String> {
    client
        .get(node.url("/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// The sum of the series of metric `name` in a node's `/metrics` whose labels contain every
/// one of `labels` (e.g. `service="api"`); `None` when `/metrics` does not answer.
pub async fn metric_sum(
    client: &reqwest::Client,
    node: &TestNode,
    name: &str,
    labels: &[&str],
) -> Option<f64> {
    let text = metrics_text(client, node).await?;
    Some(metric_sum_in(&text, name, labels))
}

/// The sum of the series of metric `name` in the exposition `text` whose labels contain
/// every one of `labels`.
pub fn metric_sum_in(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// PUTs a status and returns the JSON reply.
pub async fn put_status(
    client: &reqwest::Client,
    node: &TestNode,
    token: &str,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let response = client
        .put(node.url(&format!("/v1/status/{path}")))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("PUT");
    let status = response.status().as_u16();
    (
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}

/// Every cell of `service` on `node`: component → message (for tests whose cells are all in
/// one region per component); empty when the node does not know the service.
pub async fn messages(
    client: &reqwest::Client,
    node: &TestNode,
    service: &str,
) -> Option<BTreeMap<String, String>> {
    let response = client
        .get(node.url(&format!("/v1/status/{service}")))
        .send()
        .await
        .ok()?;
    if response.status() == 404 {
        return Some(BTreeMap::new());
    }
    let view: serde_json::Value = response.json().await.ok()?;
    service_messages(&view)
}

/// The component → message cells of one service's view (`GET /v1/status/{service}`, or one
/// entry of a snapshot's `services`).
pub fn service_messages(view: &serde_json::Value) -> Option<BTreeMap<String, String>> {
    let mut cells = BTreeMap::new();
    for component in view["components"].as_array()? {
        for region in component["regions"].as_array()? {
            cells.insert(
                component["name"].as_str()?.to_owned(),
                region["message"].as_str()?.to_owned(),
            );
        }
    }
    Some(cells)
}

/// The state of one cell in a node's GET /v1/status, if present.
/// GET `url` as JSON; None when it fails or is not JSON (callers poll until it works).
pub async fn get_json(
    client: &reqwest::Client,
    url: impl reqwest::IntoUrl,
) -> Option<serde_json::Value> {
    client.get(url).send().await.ok()?.json().await.ok()
}

pub async fn cell_state(
    client: &reqwest::Client,
    node: &TestNode,
    service: &str,
    component: &str,
    region: &str,
) -> Option<String> {
    let view = get_json(client, node.url("/v1/status")).await?;
    let services = view["services"].as_array()?;
    let service = services.iter().find(|s| s["name"] == service)?;
    let component = service["components"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == component)?;
    let cell = component["regions"]
        .as_array()?
        .iter()
        .find(|r| r["region"] == region)?;
    cell["state"].as_str().map(str::to_owned)
}

/// A running mesh of one `statusmesh run` process per region, ready (every node has heard
/// from a peer). The processes are killed when the mesh is dropped.
pub struct Mesh {
    pub nodes: Vec<TestNode>,
    pub procs: Vec<Proc>,
    pub client: reqwest::Client,
}

/// Starts one node per region in `dir` with write token `token`, and waits until all are
/// healthy and ready.
pub async fn start_mesh(dir: &Path, token: &str) -> Mesh {
    start_mesh_with_args(dir, token, &[]).await
}

/// [`start_mesh`] with `args` added to every node's `statusmesh run`.
pub async fn start_mesh_with_args(dir: &Path, token: &str, args: &[&str]) -> Mesh {
    let (config, nodes) = topology(dir, 1);
    let certs = dir.join("certs");
    make_certs(&config, &certs);
    let procs = nodes
        .iter()
        .map(|n| run_node_with_extra(dir, &config, &certs, n, token, args))
        .collect();
    let client = reqwest::Client::new();
    wait_healthy(&client, &nodes).await;
    wait_ready(&client, &nodes).await;
    Mesh {
        nodes,
        procs,
        client,
    }
}

/// Starts `statusmesh dev` (one process serving every node of a topology with `per_region`
/// nodes in each region) in `dir` with write token `token`, and waits until every node is
/// healthy and ready. The process is killed when the returned [`Proc`] is dropped.
pub async fn start_dev(
    client: &reqwest::Client,
    dir: &Path,
    per_region: usize,
    token: &str,
) -> (Vec<TestNode>, Proc) {
    let (config, nodes) = topology(dir, per_region);
    let mut command = Command::new(BIN);
    command
        .args(["dev", "--token", token, "--config"])
        .arg(&config);
    let dev = Proc::spawn(command, dir.join("dev.log"));
    wait_healthy(client, &nodes).await;
    wait_ready(client, &nodes).await;
    (nodes, dev)
}
