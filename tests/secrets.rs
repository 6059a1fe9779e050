//! Secrets at rest and in flight: a tokens file that holds only `secret_sha256` (printed by
//! `statusmesh token hash`) authenticates the secret; a copy of that file grants nothing (the
//! hash itself as a bearer token is refused); and no secret, right or wrong, reaches the
//! node's log, its /metrics or an error body.

use std::io::Write as _;
use std::process::{Command, Stdio};

use serde_json::json;

use crate::errors::start_one;
use crate::harness::{self, BIN};

const SECRET: &str = "hashed-secret-5f3a9c0e71d2";
const WRONG: &str = "wrong-secret-8b41d7e2c09a";

/// `statusmesh token hash` with the secret on stdin.
fn token_hash(secret: &str) -> String {
    let mut child = Command::new(BIN)
        .args(["token", "hash"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn token hash");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{secret}\n").as_bytes())
        .expect("write secret");
    let output = child.wait_with_output().expect("token hash");
    assert!(output.status.success());
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

#[tokio::test]
async fn a_hashed_token_authenticates_its_secret_and_no_secret_leaks() {
    let hash = token_hash(SECRET);
    assert_eq!(hash.len(), 64, "{hash}");
    assert!(!hash.contains(SECRET));
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        format!("[[token]]\nname = \"hashed\"\nsecret_sha256 = \"{hash}\"\n"),
    )
    .expect("tokens file");
    let tokens_arg = tokens.display().to_string();
    let (node, proc) = start_one(dir.path(), &["--tokens", &tokens_arg]).await;
    let client = reqwest::Client::new();
    let write = |token: &str| {
        client
            .put(node.url("/v1/status/api/db/eu-west"))
            .bearer_auth(token)
            .json(&json!({ "state": "operational", "message": "hashed" }))
            .send()
    };

    let mut bodies = String::new();
    for (token, expected) in [(WRONG, 401), (hash.as_str(), 401), (SECRET, 200)] {
        let response = write(token).await.expect("put");
        let code = response.status().as_u16();
        bodies.push_str(&response.text().await.unwrap_or_default());
        assert_eq!(code, expected, "token {token:?}: {bodies}");
    }
    // A write beyond its scope or malformed still names no secret.
    let response = client
        .put(node.url("/v1/status/api/db/eu-west"))
        .bearer_auth(SECRET)
        .body("{not json")
        .send()
        .await
        .expect("put");
    bodies.push_str(&response.text().await.unwrap_or_default());

    let metrics = harness::metrics_text(&client, &node)
        .await
        .unwrap_or_default();
    let log = proc.output();
    for secret in [SECRET, WRONG] {
        assert!(!log.contains(secret), "the log holds {secret:?}:\n{log}");
        assert!(!metrics.contains(secret), "/metrics holds {secret:?}");
        assert!(
            !bodies.contains(secret),
            "an error body holds {secret:?}: {bodies}"
        );
    }
}
