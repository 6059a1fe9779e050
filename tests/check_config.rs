//! `statusmesh check-config`: it passes a configuration `run` starts with, and refuses each
//! broken one with the very error message `run` gives for it (both commands are run).

use std::path::Path;
use std::process::{Command, Output};

use crate::harness::{data_dir, make_certs, run_args, topology, wait_healthy, Proc, BIN};

const TOKEN: &str = "check-config-test-token";

fn statusmesh(args: &[std::ffi::OsString]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run statusmesh")
}

/// The error of a failed command, with its causes (anyhow prints `Error: ...` and a
/// `Caused by:` list on stderr).
fn error_of(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let at = stderr
        .find("Error: ")
        .unwrap_or_else(|| panic!("no error in {stderr:?}"));
    let error = &stderr[at..];
    let end = error.find("\n\nStack backtrace:").unwrap_or(error.len());
    error[..end].trim().to_owned()
}

/// `args` (a `run` command line) as `check-config`.
fn as_check(args: &[std::ffi::OsString]) -> Vec<std::ffi::OsString> {
    let mut check = args.to_vec();
    check[0] = "check-config".into();
    check
}

/// Both commands fail on `args`, with the same message; that message.
fn both_refuse(args: &[std::ffi::OsString]) -> String {
    let checked = statusmesh(&as_check(args));
    assert!(!checked.status.success(), "check-config passed {args:?}");
    let ran = statusmesh(args);
    assert!(!ran.status.success(), "run started with {args:?}");
    assert_eq!(error_of(&checked), error_of(&ran), "{args:?}");
    error_of(&checked)
}

fn with(args: &[std::ffi::OsString], flag: &str, value: &Path) -> Vec<std::ffi::OsString> {
    let mut out = args.to_vec();
    let at = out.iter().position(|a| a == flag).expect("flag present");
    out[at + 1] = value.into();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_passes_what_runs_and_refuses_what_run_refuses_with_its_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (config, nodes) = topology(dir.path(), 1);
    let certs = dir.path().join("certs");
    make_certs(&config, &certs);
    let node = &nodes[0];
    let args = run_args(&config, &certs, node, TOKEN, &data_dir(dir.path(), node));

    let good = statusmesh(&as_check(&args));
    let stdout = String::from_utf8_lossy(&good.stdout);
    assert!(
        good.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&good.stderr)
    );
    for what in [
        "topology",
        "certificates",
        "tokens",
        "data directory",
        "gossip",
        "HTTP",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("ok  ") && l.contains(what)),
            "{what}: {stdout}"
        );
    }

    let mut unknown_node = args.clone();
    let at = unknown_node
        .iter()
        .position(|a| a == "--node")
        .expect("--node");
    unknown_node[at + 1] = "nowhere-1".into();
    let message = both_refuse(&unknown_node);
    assert!(message.contains("nowhere-1"), "{message}");

    let message = both_refuse(&with(&args, "--certs", &dir.path().join("no-certs")));
    assert!(message.contains("no-certs"), "{message}");

    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[cluster]\nname = \"x\"\n[[node]]\nid = 7\n").expect("write");
    let message = both_refuse(&with(&args, "--config", &broken));
    assert!(message.contains("broken.toml"), "{message}");

    // A data directory of another node.
    let other = data_dir(dir.path(), &nodes[1]);
    let mut second = Proc::spawn(
        {
            let mut c = Command::new(BIN);
            c.args(run_args(&config, &certs, &nodes[1], TOKEN, &other));
            c
        },
        dir.path().join("second.log"),
    );
    let client = reqwest::Client::new();
    wait_healthy(&client, &nodes[1..2]).await;
    // Its directory is locked, and its addresses taken: both refuse, with run's words.
    let message = both_refuse(&with(&args, "--data-dir", &other));
    assert!(message.contains("another statusmesh process"), "{message}");
    let busy = run_args(&config, &certs, &nodes[1], TOKEN, &dir.path().join("fresh"));
    let message = both_refuse(&busy);
    assert!(message.contains("cannot bind"), "{message}");
    second.terminate();
    let message = both_refuse(&with(&args, "--data-dir", &other));
    assert!(
        message.contains(&nodes[1].id) && message.contains(&node.id),
        "{message}"
    );
}
