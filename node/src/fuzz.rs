//! Entry points of the fuzz targets in `fuzz/` that reach this crate: the files a node reads
//! at start (regions.toml, the tokens file) and what an HTTP client sends (JSON bodies, query
//! strings), through the same parse-and-validate functions the handlers call.
//!
//! Each takes the raw bytes libFuzzer generates and panics only when the code under test
//! broke a promise. The regression tests (`node/tests/fuzz_regressions.rs`) run every
//! committed input through the very same functions.

use axum::http::Uri;

use crate::config::Topology;
use crate::http::records::{self as api_records, HistoryQuery};
use crate::http::{self, AckQuery, EventsQuery, PollQuery};
use crate::settings::Tokens;

/// Time of the fuzzed writes (ms); fixed so that a crasher replays the same way.
const NOW_MS: u64 = 1_700_000_000_000;

/// Target `config`: arbitrary text as regions.toml (the node's and the simulator's parser)
/// and as a tokens file. A topology that parses names each of its nodes.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(topology) = Topology::parse("fuzz.toml", &text) {
        for node in &topology.nodes {
            let found = topology.node(&node.id).expect("a listed node is found");
            assert_eq!(found.id, node.id, "lookup by id finds that node");
        }
    }
    let _ = statusmesh_gossip::Topology::parse("fuzz.toml", &text);
    if let Ok(tokens) = Tokens::parse("tokens.toml", &text) {
        assert!(!tokens.is_empty(), "a tokens file that parses has a token");
    }
}

/// The request bodies [`http_body`] knows; the first input byte picks one.
const BODY_KINDS: [&str; 6] = [
    "status",
    "incident",
    "incident_update",
    "incident_patch",
    "maintenance",
    "override",
];

/// Target `http_body`: the first byte picks a write endpoint, the rest is its JSON body,
/// parsed and validated as the handler does before anything is written.
pub fn http_body(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let _ = write_request(BODY_KINDS[usize::from(kind) % BODY_KINDS.len()], body);
}

/// A write endpoint's body parsed and validated into what the handler would write.
fn write_request(kind: &str, body: &[u8]) -> Result<(), http::ApiError> {
    let author = || "fuzz".to_owned();
    match kind {
        "status" => {
            http::status_write(["api", "db", "eu-west"], body, author(), NOW_MS).map(|_| ())
        }
        "incident" => http::parse_json(body)
            .and_then(|b| api_records::open_incident_op(b, "eu-west-1", author(), NOW_MS))
            .map(|_| ()),
        "incident_update" => http::parse_json(body)
            .and_then(|b| api_records::incident_update_op(b, "i1", author()))
            .map(|_| ()),
        "incident_patch" => http::parse_json(body)
            .and_then(|b| api_records::patch_incident_op(b, "i1", author()))
            .map(|_| ()),
        "maintenance" => http::parse_json(body)
            .and_then(|b| api_records::maintenance_op(b, "w1", author()))
            .map(|_| ()),
        _ => http::parse_json(body)
            .and_then(|b| api_records::override_op(b, "db", author(), NOW_MS))
            .map(|_| ()),
    }
}

/// The query strings [`query`] knows; the first input byte picks one.
const QUERY_KINDS: [&str; 4] = ["ack", "events", "poll", "history"];

/// Target `query`: the first byte picks an endpoint, the rest is its query string (and, for
/// `/v1/events`, also its `Last-Event-ID`), parsed and validated as the handler does.
pub fn query(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    // What a client can put on the request line; anything else never reaches a handler.
    let Ok(uri) = format!("/v1/x?{text}").parse::<Uri>() else {
        return;
    };
    let _ = match QUERY_KINDS[usize::from(kind) % QUERY_KINDS.len()] {
        "ack" => http::parse_query::<AckQuery>(&uri).map(|_| ()),
        "events" => http::parse_query::<EventsQuery>(&uri).and_then(|q| {
            q.resume(None)?;
            q.resume(Some(&text)).map(|_| ())
        }),
        "poll" => http::parse_query::<PollQuery>(&uri).and_then(|q| q.validate().map(|_| ())),
        _ => http::parse_query::<HistoryQuery>(&uri).and_then(|q| q.days().map(|_| ())),
    };
}

/// Seeds for `config`: the repository's regions.toml and a tokens file with scopes.
pub fn seed_configs() -> Vec<Vec<u8>> {
    let tokens = "[[token]]\nname = \"ci\"\nsecret = \"0123456789abcdef\"\nservices = [\"api\"]\n\
                  regions = [\"eu-west\"]\noperator = false\n\n[[token]]\nname = \"ops\"\n\
                  secret = \"fedcba9876543210\"\n";
    vec![
        crate::config::EMBEDDED_REGIONS.as_bytes().to_vec(),
        tokens.as_bytes().to_vec(),
    ]
}

/// Seeds for `http_body`: a valid body of each kind, as the README documents them.
pub fn seed_bodies() -> Vec<Vec<u8>> {
    let bodies = [
        r#"{"state":"partial_outage","message":"replication lag","ttl_s":60,"reporter":"probe"}"#,
        r#"{"service":"api","title":"Elevated errors","impact":"major","components":["db"],"message":"looking","id":"i1","status":"investigating"}"#,
        r#"{"service":"api","message":"fixed","status":"resolved","impact":"minor"}"#,
        r#"{"service":"api","status":"monitoring","impact":"minor","title":"t","components":["db"],"message":"m"}"#,
        r#"{"title":"upgrade","components":["db"],"starts_at_ms":1700000000000,"ends_at_ms":1700003600000}"#,
        r#"{"state":"major_outage","reason":"confirmed","until_ms":1800000000000}"#,
    ];
    bodies
        .iter()
        .enumerate()
        .map(|(kind, body)| {
            let mut seed = vec![kind as u8];
            seed.extend_from_slice(body.as_bytes());
            seed
        })
        .collect()
}

/// Seeds for `query`: a valid query string of each kind, with a real cursor where one fits.
pub fn seed_queries() -> Vec<Vec<u8>> {
    let cursor = statusmesh_crdt::fuzz::seeded_replica().cursor().encode();
    let queries = [
        "ack=2&ack_timeout_ms=500".to_owned(),
        format!("service=api&region=eu-west&last_event_id={cursor}"),
        format!("cursor={cursor}&wait_s=5&service=api&region=eu-west"),
        "days=30".to_owned(),
    ];
    queries
        .iter()
        .enumerate()
        .map(|(kind, query)| {
            let mut seed = vec![kind as u8];
            seed.extend_from_slice(query.as_bytes());
            seed
        })
        .collect()
}

/// The corpus IO of the regression tests (`fuzz/corpus.rs`): tests read and write files.
#[cfg(test)]
#[path = "../../fuzz/corpus.rs"]
mod corpus;
#[cfg(test)]
use statusmesh_crdt::fuzz::seed_name;

#[cfg(test)]
mod tests {
    //! Every input that ever crashed a fuzz target of this crate
    //! (`node/tests/fuzz-crashers/<target>/`) and every seed of its corpus
    //! (`fuzz/seeds/<target>/`), run through the same function the target runs.

    use std::path::{Path, PathBuf};

    use super::corpus::{replay_dir, write_seeds};
    use super::*;

    fn dir(relative: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
    }

    fn replay(target: &str, run: fn(&[u8])) {
        replay_dir(&dir(&format!("tests/fuzz-crashers/{target}")), run);
        let seeds = replay_dir(&dir(&format!("../fuzz/seeds/{target}")), run);
        assert!(
            seeds > 0,
            "no seeds for {target}; run the ignored write_fuzz_seeds"
        );
    }

    #[test]
    fn config_inputs_that_once_failed_pass() {
        replay("config", config);
    }

    #[test]
    fn http_body_inputs_that_once_failed_pass() {
        replay("http_body", http_body);
    }

    #[test]
    fn query_inputs_that_once_failed_pass() {
        replay("query", query);
    }

    #[test]
    fn the_seeds_are_inputs_the_handlers_accept() {
        let configs = seed_configs();
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        assert!(Topology::parse("regions.toml", &text(&configs[0])).is_ok());
        assert!(Tokens::parse("tokens.toml", &text(&configs[1])).is_ok());
        for seed in seed_bodies() {
            let parsed = write_request(BODY_KINDS[usize::from(seed[0])], &seed[1..]);
            assert!(parsed.is_ok(), "{}: {parsed:?}", text(&seed));
        }
    }

    /// Regenerates the seed corpora:
    /// `cargo test -p statusmesh-node --lib fuzz::tests::write_fuzz_seeds -- --ignored`.
    #[test]
    #[ignore = "writes fuzz/seeds; run by hand after a format change"]
    fn write_fuzz_seeds() {
        for (target, seeds) in [
            ("config", seed_configs()),
            ("http_body", seed_bodies()),
            ("query", seed_queries()),
        ] {
            write_seeds(&dir(&format!("../fuzz/seeds/{target}")), &seeds).expect("write seeds");
        }
    }
}
