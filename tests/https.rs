//! HTTPS for the client API (`--http-tls-cert`, `--http-tls-key`), driven by the system's
//! curl and by the `statusmesh` client commands: reads, writes and event streams over
//! HTTP/1.1 (the lean SSE door behind the TLS handshake) and HTTP/2 (ALPN h2); SIGHUP with a
//! renewed certificate serves its serial to new connections while open streams go on, and a
//! broken one keeps the old; the CLI trusts a node with `--ca` and fails clearly without.
//! curl comes from the system's packages (`tests/setup/curl.sh`; `./test.sh` installs it).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{
    data_dir, make_certs, metric_sum_in, run_node_with_args, topology, wait_for, Proc, TestNode,
    BIN, WAIT,
};

const TOKEN: &str = "https-test-token-0123";
/// curl from the system's packages (`tests/setup/curl.sh`), built with HTTP/2 (nghttp2).
const CURL: &str = "/usr/bin/curl";

/// A curl command; fails the test saying how to get curl when it is missing.
fn curl() -> Command {
    assert!(
        Path::new(CURL).exists(),
        "{CURL} is missing; ./test.sh installs it (tests/setup/curl.sh)"
    );
    Command::new(CURL)
}

/// The web CA and where each node's HTTPS certificate and key live.
struct WebPki {
    ca_key: rcgen::KeyPair,
    ca_params: rcgen::CertificateParams,
    ca_file: PathBuf,
}

impl WebPki {
    fn new(dir: &Path) -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "statusmesh test web CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let ca_file = dir.join("web-ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("write web CA");
        Self {
            ca_key,
            ca_params,
            ca_file,
        }
    }

    /// Writes a certificate for localhost and 127.0.0.1 with `serial` (hex) and its key.
    fn issue(&self, serial: &str, cert: &Path, key: &Path) {
        let issuer = rcgen::Issuer::from_params(&self.ca_params, &self.ca_key);
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&hex(serial)));
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
        let leaf = params.signed_by(&leaf_key, &issuer).expect("leaf");
        // Written whole, then renamed: a reload never sees half a file.
        let write = |path: &Path, text: String| {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).expect("write");
            std::fs::rename(&tmp, path).expect("rename");
        };
        write(cert, leaf.pem());
        write(key, leaf_key.serialize_pem());
    }
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Serials of the first and the renewed certificate (a first byte below 0x80, so DER
/// writes them as they are).
const SERIAL_FIRST: &str = "5e11223344550001";
const SERIAL_RENEWED: &str = "5e11223344550002";

/// Three nodes, one per region, each serving HTTPS with its own certificate files.
struct HttpsMesh {
    nodes: Vec<TestNode>,
    procs: Vec<Proc>,
    pki: WebPki,
    config: PathBuf,
    certs: PathBuf,
    dir: PathBuf,
}

impl HttpsMesh {
    /// Starts the mesh with `extra` flags on every node.
    async fn start(dir: &Path, extra: &[&str]) -> Self {
        let (config, nodes) = topology(dir, 1);
        let certs = dir.join("certs");
        make_certs(&config, &certs);
        let pki = WebPki::new(dir);
        let mut procs = Vec::new();
        for node in &nodes {
            let (cert, key) = web_files(dir, node);
            pki.issue(SERIAL_FIRST, &cert, &key);
            let args: Vec<std::ffi::OsString> = vec![
                "--token".into(),
                TOKEN.into(),
                "--http-tls-cert".into(),
                cert.into(),
                "--http-tls-key".into(),
                key.into(),
            ];
            let args = args.into_iter().chain(extra.iter().map(Into::into));
            procs.push(run_node_with_args(
                dir,
                &config,
                &certs,
                node,
                &data_dir(dir, node),
                args,
            ));
        }
        let mesh = Self {
            nodes,
            procs,
            pki,
            config,
            certs,
            dir: dir.to_owned(),
        };
        for node in &mesh.nodes {
            wait_for(&format!("{} ready over https", node.id), || async {
                let (code, _, _) = mesh.curl(&["--http1.1"], &https(node, "/readyz"));
                (code == "200").then_some(())
            })
            .await;
        }
        mesh
    }

    /// Runs curl trusting the web CA; returns the status code, the HTTP version and the
    /// body (what `-w` and `-o` give).
    fn curl(&self, args: &[&str], url: &str) -> (String, String, String) {
        let body = self.dir.join(format!("body-{}", std::process::id()));
        let output = curl()
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&self.pki.ca_file)
            .arg("-o")
            .arg(&body)
            .args(["-w", "%{http_code} %{http_version}"])
            .args(args)
            .arg(url)
            .output()
            .expect("run curl");
        let written = String::from_utf8_lossy(&output.stdout).into_owned();
        let mut parts = written.split(' ');
        let code = parts.next().unwrap_or_default().to_owned();
        let version = parts.next().unwrap_or_default().to_owned();
        let text = std::fs::read_to_string(&body).unwrap_or_default();
        (code, version, text)
    }

    /// The serial of the certificate a new connection to `node` is served (curl's
    /// `%{certs}`), lower-case hex.
    fn served_serial(&self, node: &TestNode) -> Option<String> {
        let output = curl()
            .args(["-sS", "--max-time", "10", "--http1.1", "--cacert"])
            .arg(&self.pki.ca_file)
            .args(["-o", "/dev/null", "-w", "%{certs}"])
            .arg(https(node, "/healthz"))
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let line = text.lines().find(|l| l.starts_with("Serial Number:"))?;
        Some(
            line.trim_start_matches("Serial Number:")
                .replace(':', "")
                .trim()
                .to_lowercase(),
        )
    }

    fn hangup(&self, index: usize) {
        let pid = self.procs[index].child.id().to_string();
        let status = Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// A metric of `node` summed over the series whose labels contain each of `labels`.
    fn metric(&self, node: &TestNode, name: &str, labels: &[&str]) -> f64 {
        let (_, _, text) = self.curl(&["--http1.1"], &https(node, "/metrics"));
        metric_sum_in(&text, name, labels)
    }

    /// A status write on `node` with curl over `version`; the status code and HTTP version.
    fn put(
        &self,
        version: &str,
        node: &TestNode,
        component: &str,
        message: &str,
    ) -> (String, String) {
        let url = https(node, &format!("/v1/status/api/{component}/{}", node.region));
        let body = format!(r#"{{"state":"degraded_performance","message":"{message}"}}"#);
        let auth = format!("Authorization: Bearer {TOKEN}");
        let (code, http, text) = self.curl(
            &[
                version,
                "-X",
                "PUT",
                "-H",
                &auth,
                "-H",
                "content-type: application/json",
                "-d",
                &body,
            ],
            &url,
        );
        assert!(code == "200", "PUT over {version}: {code} {text}");
        (code, http)
    }
}

fn web_files(dir: &Path, node: &TestNode) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("web-{}.pem", node.id)),
        dir.join(format!("web-{}.key", node.id)),
    )
}

fn https(node: &TestNode, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", node.http.port())
}

/// A long-running child (curl -N, statusmesh watch) whose stdout lines arrive on a channel;
/// killed by its own pid when dropped.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: PathBuf,
}

impl Follower {
    fn spawn(mut command: Command, stderr: PathBuf) -> Self {
        let err = std::fs::File::create(&stderr).expect("stderr file");
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("spawn follower");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            stderr,
        }
    }

    /// curl following `/v1/events` on `node` over `version`, verbose (its stderr tells the
    /// protocol).
    fn curl_events(mesh: &HttpsMesh, version: &str, node: &TestNode, name: &str) -> Self {
        let mut command = curl();
        command
            .args([
                "-sSN",
                "-v",
                version,
                "-H",
                "accept: text/event-stream",
                "--cacert",
            ])
            .arg(&mesh.pki.ca_file)
            .arg(https(node, "/v1/events?service=api"));
        Self::spawn(command, mesh.dir.join(format!("{name}.stderr")))
    }

    /// Blocks (at most [`WAIT`]) until a line containing `needle` arrives.
    fn wait_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "no line with {needle:?} within {WAIT:?}; stderr: {}",
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                ),
            }
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reads_writes_and_follows_events_over_http1_and_http2() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A short read timeout, to see a silent connection cut off during its handshake.
    let mesh = HttpsMesh::start(dir.path(), &["--request-read-timeout-ms", "1000"]).await;
    let (eu, us) = (&mesh.nodes[0], &mesh.nodes[1]);
    for (version, expected) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let (code, http, body) = mesh.curl(&[version], &https(eu, "/v1/status"));
        assert_eq!((code.as_str(), http.as_str()), ("200", expected), "{body}");
        let view: Value = serde_json::from_str(&body).expect("status JSON");
        assert!(view["services"].is_array(), "{view}");

        let name = format!("events{}", expected.replace('.', ""));
        let events = Follower::curl_events(&mesh, version, eu, &name);
        events.wait_line("event: snapshot");
        // Written on another region's node, seen on the stream of this one.
        let message = format!("over {version}");
        let (_, written) = mesh.put(version, us, "db", &message);
        assert_eq!(written, expected);
        events.wait_line(&message);
        let response_line = if expected == "2" {
            "< HTTP/2 200"
        } else {
            "< HTTP/1.1 200"
        };
        let stderr = events.stderr();
        assert!(stderr.contains(response_line), "{stderr}");
        let alpn = if expected == "2" { "h2" } else { "http/1.1" };
        assert!(
            stderr.contains(&format!("ALPN: server accepted {alpn}")),
            "{stderr}"
        );
    }
    // The HTTP/1.1 stream went through the lean door behind TLS, the HTTP/2 one through
    // hyper on an h2 connection.
    let id = format!("node=\"{}\"", eu.id);
    assert!(
        mesh.metric(
            eu,
            "statusmesh_http_connections_total",
            &[&id, "path=\"events_lean\""]
        ) >= 1.0
    );
    assert!(
        mesh.metric(
            eu,
            "statusmesh_https_handshakes_total",
            &[&id, "result=\"h2\""]
        ) >= 1.0
    );
    // URLs made from the request's host are https, over HTTP/2 (:authority) too.
    let (code, _, body) = mesh.curl(&["--http2"], &https(eu, "/api/v2/summary.json"));
    assert_eq!(code, "200", "{body}");
    let summary: Value = serde_json::from_str(&body).expect("summary JSON");
    assert_eq!(
        summary["page"]["url"],
        format!("https://127.0.0.1:{}", eu.http.port())
    );
    // A connection that never sends its ClientHello is closed after the read timeout.
    let silent = tokio::net::TcpStream::connect(eu.http)
        .await
        .expect("connect");
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(WAIT, async {
        let mut silent = silent;
        tokio::io::AsyncReadExt::read(&mut silent, &mut byte).await
    })
    .await
    .expect("the silent connection was not closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    wait_for("the handshake timeout counted", || async {
        let timeouts = mesh.metric(
            eu,
            "statusmesh_https_handshakes_total",
            &[&id, "result=\"timeout\""],
        );
        (timeouts >= 1.0).then_some(())
    })
    .await;
    // Plain HTTP on an HTTPS port gets no answer it could mistake for one.
    let plain = curl()
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(format!("http://{}/healthz", eu.http))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&plain.stdout), "000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_a_renewed_certificate_to_new_connections_while_open_streams_continue() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mesh = HttpsMesh::start(dir.path(), &[]).await;
    let (eu, us) = (&mesh.nodes[0], &mesh.nodes[1]);
    assert_eq!(mesh.served_serial(eu).as_deref(), Some(SERIAL_FIRST));
    let lean = Follower::curl_events(&mesh, "--http1.1", eu, "lean");
    let h2 = Follower::curl_events(&mesh, "--http2", eu, "h2");
    lean.wait_line("event: snapshot");
    h2.wait_line("event: snapshot");

    let (cert, key) = web_files(dir.path(), eu);
    mesh.pki.issue(SERIAL_RENEWED, &cert, &key);
    mesh.hangup(0);
    wait_for("the renewed certificate on new connections", || async {
        (mesh.served_serial(eu).as_deref() == Some(SERIAL_RENEWED)).then_some(())
    })
    .await;
    assert_eq!(
        mesh.metric(eu, "statusmesh_http_tls_reloads_total", &["result=\"ok\""]),
        1.0
    );
    // The streams opened on the first certificate still receive changes.
    mesh.put("--http2", us, "db", "after the reload");
    lean.wait_line("after the reload");
    h2.wait_line("after the reload");

    // A broken certificate on SIGHUP is refused and the renewed one stays.
    std::fs::write(&cert, "not a certificate").expect("break the certificate");
    mesh.hangup(0);
    wait_for("the refused reload counted", || async {
        (mesh.metric(
            eu,
            "statusmesh_http_tls_reloads_total",
            &["result=\"error\""],
        ) == 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(mesh.served_serial(eu).as_deref(), Some(SERIAL_RENEWED));
    let log = mesh.procs[0].output();
    assert!(
        log.contains("HTTPS certificate not reloaded; the old one stays"),
        "{log}"
    );
    mesh.put("--http1.1", us, "db", "after the refused reload");
    lean.wait_line("after the refused reload");
    h2.wait_line("after the refused reload");
}

/// Runs `statusmesh` with `args`; exit success, stdout, stderr.
fn statusmesh(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(BIN)
        .args(args)
        .env_remove("STATUSMESH_NODES")
        .env_remove("STATUSMESH_TOKEN")
        .env_remove("STATUSMESH_CA")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run statusmesh");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_trusts_a_node_with_ca_and_fails_clearly_without() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mesh = HttpsMesh::start(dir.path(), &[]).await;
    let (eu, us) = (&mesh.nodes[0], &mesh.nodes[1]);
    let ca = mesh.pki.ca_file.to_str().expect("utf-8 path").to_owned();
    // A bare HOST:PORT with --ca is https.
    let eu_addr = eu.http.to_string();

    let watch = {
        let mut command = Command::new(BIN);
        command
            .args([
                "watch",
                "--service",
                "api",
                "--nodes",
                &eu_addr,
                "--ca",
                &ca,
            ])
            .env_remove("STATUSMESH_NODES")
            .env_remove("STATUSMESH_CA");
        Follower::spawn(command, dir.path().join("watch.stderr"))
    };
    watch.wait_line(&format!("# following https://{eu_addr}"));

    let (ok, out, err) = statusmesh(&[
        "set",
        "api/web",
        "partial_outage",
        "--region",
        &us.region,
        "--message",
        "set with --ca",
        "--nodes",
        &us.http.to_string(),
        "--ca",
        &ca,
        "--token",
        TOKEN,
    ]);
    assert!(ok, "set: {out} {err}");
    watch.wait_line("set with --ca");
    let (ok, out, err) = statusmesh(&["get", "api", "--json", "--nodes", &eu_addr, "--ca", &ca]);
    assert!(ok, "get: {err}");
    let view: Value = serde_json::from_str(&out).expect("get --json");
    // The watch on eu saw the write, so eu's view holds it.
    let web = view["components"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "web"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(web["regions"][0]["message"], "set with --ca", "{view}");

    // Without --ca the node's certificate is not trusted, and the error says what to do.
    let url = https(eu, "");
    let (ok, _, err) = statusmesh(&["get", "--nodes", &url]);
    assert!(!ok);
    assert!(err.contains("invalid peer certificate"), "{err}");
    assert!(err.contains("pass --ca FILE"), "{err}");
    // watch says so at once too, instead of reconnecting until it gives up.
    let (ok, _, err) = statusmesh(&["watch", "--nodes", &url, "--max-reconnects", "0"]);
    assert!(!ok);
    assert!(err.contains("pass --ca FILE"), "{err}");
    // A --ca file without a certificate is named.
    let not_ca = dir.path().join("not-a-ca.pem");
    std::fs::write(&not_ca, "nothing").expect("write");
    let not_ca = not_ca.to_str().expect("utf-8 path");
    let (ok, _, err) = statusmesh(&["get", "--nodes", &url, "--ca", not_ca]);
    assert!(!ok);
    assert!(
        err.contains(&format!("--ca {not_ca}: no certificate in the file")),
        "{err}"
    );

    // check-config loads the HTTPS files as run does: a key of another certificate fails
    // with the same message.
    let (cert, _) = web_files(dir.path(), eu);
    let (_, other_key) = web_files(dir.path(), us);
    let data = data_dir(dir.path(), eu);
    let mut args: Vec<&str> = vec!["check-config", "--config"];
    let config = mesh.config.to_str().expect("utf-8");
    let certs = mesh.certs.to_str().expect("utf-8");
    let cert = cert.to_str().expect("utf-8");
    let other_key = other_key.to_str().expect("utf-8");
    let data = data.to_str().expect("utf-8");
    args.extend([
        config,
        "--node",
        &eu.id,
        "--certs",
        certs,
        "--data-dir",
        data,
        "--token",
        TOKEN,
        "--http-tls-cert",
        cert,
        "--http-tls-key",
        other_key,
    ]);
    let (ok, _, checked) = statusmesh(&args);
    assert!(!ok);
    assert!(checked.contains("make no TLS configuration"), "{checked}");
    args[0] = "run";
    let (ok, _, ran) = statusmesh(&args);
    assert!(!ok);
    assert_eq!(error_line(&ran), error_line(&checked));
    args[0] = "check-config";
    let (ok, _, err) = statusmesh(&args[..args.len() - 2]);
    assert!(!ok);
    assert!(err.contains("--http-tls-key"), "{err}");
}

/// The `Error: ...` line of a command's stderr.
fn error_line(stderr: &str) -> String {
    stderr
        .lines()
        .find(|l| l.starts_with("Error: "))
        .unwrap_or(stderr)
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_certs_watch_a_renewed_https_certificate_loads_without_a_signal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mesh = HttpsMesh::start(dir.path(), &["--certs-watch-s", "1"]).await;
    let eu = &mesh.nodes[0];
    assert_eq!(mesh.served_serial(eu).as_deref(), Some(SERIAL_FIRST));
    let (cert, key) = web_files(dir.path(), eu);
    mesh.pki.issue(SERIAL_RENEWED, &cert, &key);
    wait_for("the renewed certificate, by watching", || async {
        (mesh.served_serial(eu).as_deref() == Some(SERIAL_RENEWED)).then_some(())
    })
    .await;
    // Only the HTTPS certificate changed: the cluster identity (and every link) stays.
    assert_eq!(
        mesh.metric(eu, "statusmesh_tls_reloads_total", &["result=\"ok\""]),
        0.0
    );
    assert!(mesh.metric(eu, "statusmesh_http_tls_reloads_total", &["result=\"ok\""]) >= 1.0);
}

/// An HTTP/2 connection to `node` over TLS (ALPN h2) with hyper's client; the task that
/// drives it ends when the connection closes.
async fn h2_connect(
    mesh: &HttpsMesh,
    node: &TestNode,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    use rustls_pki_types::pem::PemObject;
    let ca = std::fs::read(&mesh.pki.ca_file).expect("read CA");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.expect("CA PEM")).expect("add CA");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(node.http)
        .await
        .expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .expect("h2 handshake");
    (send, tokio::spawn(connection))
}

fn h2_get(node: &TestNode, path: &str) -> hyper::Request<http_body_util::Empty<bytes::Bytes>> {
    hyper::Request::get(https(node, path))
        .header("accept", "text/event-stream, application/json")
        .body(http_body_util::Empty::new())
        .expect("request")
}

/// Reads `events` into `received` until it holds `needle`, within [`WAIT`].
async fn read_until(needle: &str, received: &mut String, events: &mut hyper::body::Incoming) {
    use http_body_util::BodyExt;
    tokio::time::timeout(WAIT, async {
        while !received.contains(needle) {
            let frame = events.frame().await.expect("stream open").expect("frame");
            if let Ok(data) = frame.into_data() {
                received.push_str(&String::from_utf8_lossy(&data));
            }
        }
    })
    .await
    .expect("event within WAIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed_and_one_holding_a_stream_is_not() {
    use http_body_util::BodyExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let mesh = HttpsMesh::start(dir.path(), &["--request-read-timeout-ms", "1000"]).await;
    let (eu, us) = (&mesh.nodes[0], &mesh.nodes[1]);

    // A: an event stream, open from here on.
    let (mut streaming, streaming_task) = h2_connect(&mesh, eu).await;
    let response = streaming
        .send_request(h2_get(eu, "/v1/events?service=api"))
        .await
        .expect("events response");
    assert_eq!(response.status(), 200);
    let mut events = response.into_body();
    let mut received = String::new();
    read_until("event: snapshot", &mut received, &mut events).await;

    // B: one request, then nothing: closed once idle for the read timeout (1 s).
    let (mut idle, idle_task) = h2_connect(&mesh, eu).await;
    let response = idle
        .send_request(h2_get(eu, "/healthz"))
        .await
        .expect("healthz");
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.expect("healthz body");
    let closed = tokio::time::timeout(WAIT, idle_task)
        .await
        .expect("the idle connection was not closed");
    assert!(matches!(closed, Ok(Ok(()))), "{closed:?}");

    // A was open all that time, with its stream: still open, still receiving.
    assert!(!streaming_task.is_finished());
    mesh.put("--http2", us, "db", "to the long stream");
    read_until("to the long stream", &mut received, &mut events).await;
}
