//! Feature flags against running nodes: a real OpenFeature client (`open-feature` with the
//! `open-feature-ofrep` provider) evaluating targeting, percentage splits and defaults; the
//! OFREP error codes, bulk ETag and configuration; availability rules across a 3-region
//! mesh; a staged rollout with a compressed schedule that rolls back and resumes.

use std::collections::BTreeMap;
use std::time::Duration;

use open_feature::{EvaluationContext, OpenFeature};
use open_feature_ofrep::{OfrepOptions, OfrepProvider};
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{json, Value};

use crate::errors::start_one;
use crate::harness::{self, TestNode};

const OPS: &str = "ops-secret-0123456789";
const APP: &str = "app-secret-0123456789";

fn tokens_file(dir: &std::path::Path) -> String {
    let path = dir.join("tokens.toml");
    std::fs::write(
        &path,
        format!(
            "[[token]]\nname = \"ops\"\nsecret = \"{OPS}\"\n\n\
             [[token]]\nname = \"app\"\nsecret = \"{APP}\"\nevaluate_only = true\n"
        ),
    )
    .expect("tokens file");
    path.display().to_string()
}

async fn put_flag(
    client: &reqwest::Client,
    node: &TestNode,
    token: &str,
    id: &str,
    spec: Value,
) -> (u16, Value) {
    let response = client
        .put(node.url(&format!("/v1/flags/{id}")))
        .bearer_auth(token)
        .json(&spec)
        .send()
        .await
        .expect("PUT flag");
    let code = response.status().as_u16();
    (code, response.json().await.unwrap_or(Value::Null))
}

/// `POST /ofrep/v1/evaluate/flags/{key}`: the status and JSON body.
async fn ofrep(
    client: &reqwest::Client,
    node: &TestNode,
    token: &str,
    key: &str,
    body: &str,
) -> (u16, Value) {
    let response = client
        .post(node.url(&format!("/ofrep/v1/evaluate/flags/{key}")))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("POST ofrep");
    let code = response.status().as_u16();
    (code, response.json().await.unwrap_or(Value::Null))
}

/// An OpenFeature client bound to `node` through the OFREP provider, under its own name.
async fn openfeature_client(node: &TestNode, name: &str) -> open_feature::Client {
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {APP}")).expect("header"),
    );
    let provider = OfrepProvider::new(OfrepOptions {
        base_url: format!("http://{}", node.http),
        headers,
        connect_timeout: Duration::from_secs(5),
        ..Default::default()
    })
    .await
    .expect("provider");
    let mut api = OpenFeature::singleton_mut().await;
    api.set_named_provider(name, provider).await;
    api.create_named_client(name)
}

fn checkout_spec() -> Value {
    json!({
        "description": "the new checkout",
        "variants": {"on": true, "off": false},
        "default_variant": "off",
        "rules": [
            {"when": [{"attribute": "region", "op": "in", "value": ["us-east"]}], "variant": "on"},
            {"when": [{"attribute": "plan", "op": "eq", "value": "beta"}],
             "split": [{"variant": "on", "weight": 30}, {"variant": "off", "weight": 70}]}
        ]
    })
}

/// The variant of each of `keys` for the beta split, through the OpenFeature client.
async fn split_variants(client: &open_feature::Client, keys: usize) -> BTreeMap<String, bool> {
    let mut out = BTreeMap::new();
    for i in 0..keys {
        let key = format!("user-{i}");
        let context = EvaluationContext::default()
            .with_targeting_key(key.clone())
            .with_custom_field("plan", "beta")
            .with_custom_field("region", "eu-west");
        let value = client
            .get_bool_value("shop/checkout", Some(&context), None)
            .await
            .expect("evaluates");
        out.insert(key, value);
    }
    out
}

#[tokio::test]
async fn an_openfeature_client_evaluates_targeting_splits_and_defaults_through_ofrep() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = tokens_file(dir.path());
    let (node, mut proc) = start_one(dir.path(), &["--tokens", &tokens]).await;
    let http = reqwest::Client::new();

    // An evaluation token writes nothing; an operator token writes flags.
    let (code, body) = put_flag(&http, &node, APP, "shop/checkout", checkout_spec()).await;
    assert_eq!(code, 403, "{body}");
    let status = json!({"state": "operational"});
    let (code, body) = harness::put_status(&http, &node, APP, "shop/web/eu-west", status).await;
    assert_eq!(
        (code, body["field"].as_str()),
        (403, Some("authorization")),
        "{body}"
    );
    let (code, body) = put_flag(&http, &node, OPS, "shop/checkout", checkout_spec()).await;
    assert_eq!(code, 200, "{body}");
    let mut bad = checkout_spec();
    bad["default_variant"] = json!("maybe");
    let (code, body) = put_flag(&http, &node, OPS, "shop/bad", bad).await;
    assert_eq!(
        (code, body["field"].as_str()),
        (422, Some("default_variant")),
        "{body}"
    );
    let (code, body) = put_flag(&http, &node, OPS, "shop/bad", json!({"variants": 1})).await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = put_flag(
        &http,
        &node,
        OPS,
        "shop/banner",
        json!({"variants": {"red": "#f00", "blue": "#00f"}, "default_variant": "blue"}),
    )
    .await;
    assert_eq!(code, 200, "{body}");

    let client = openfeature_client(&node, "flags-single").await;
    // Targeting: us-east callers get the new checkout.
    let us = EvaluationContext::default()
        .with_targeting_key("u1")
        .with_custom_field("region", "us-east");
    let details = client
        .get_bool_details("shop/checkout", Some(&us), None)
        .await
        .expect("evaluates");
    assert!(details.value);
    assert_eq!(details.variant.as_deref(), Some("on"));
    // Default: nobody else, outside the beta split.
    let eu = EvaluationContext::default()
        .with_targeting_key("u1")
        .with_custom_field("region", "eu-west");
    assert!(!client
        .get_bool_value("shop/checkout", Some(&eu), None)
        .await
        .expect("evaluates"));
    // A bare key works while one service has it; string flags too.
    let banner = client
        .get_string_value("banner", Some(&eu), None)
        .await
        .expect("evaluates");
    assert_eq!(banner, "#00f");
    // Percentage: a share near 30 %, the same key always the same variant.
    let before = split_variants(&client, 400).await;
    let on = before.values().filter(|v| **v).count();
    assert!((60..=180).contains(&on), "{on} of 400 in a 30 % split");
    assert_eq!(split_variants(&client, 400).await, before);
    // Unknown flags are the client's FLAG_NOT_FOUND.
    let missing = client.get_bool_value("shop/nope", Some(&eu), None).await;
    assert!(missing.is_err());

    // The wire: the OFREP error codes and the success shape.
    let (code, body) = ofrep(&http, &node, APP, "shop/nope", r#"{"context":{}}"#).await;
    assert_eq!(
        (code, body["errorCode"].as_str()),
        (404, Some("FLAG_NOT_FOUND")),
        "{body}"
    );
    assert_eq!(body["key"], "shop/nope");
    let (code, body) = ofrep(&http, &node, APP, "shop/checkout", "{not json").await;
    assert_eq!(
        (code, body["errorCode"].as_str()),
        (400, Some("PARSE_ERROR")),
        "{body}"
    );
    let (code, body) = ofrep(&http, &node, APP, "shop/checkout", r#"{"context":[1]}"#).await;
    assert_eq!(
        (code, body["errorCode"].as_str()),
        (400, Some("INVALID_CONTEXT")),
        "{body}"
    );
    let (code, body) = ofrep(
        &http,
        &node,
        APP,
        "shop/checkout",
        r#"{"context":{"plan":"beta","region":"eu-west"}}"#,
    )
    .await;
    assert_eq!(
        (code, body["errorCode"].as_str()),
        (400, Some("TARGETING_KEY_MISSING")),
        "{body}"
    );
    let (code, body) = ofrep(
        &http,
        &node,
        APP,
        "shop/checkout",
        r#"{"context":{"targetingKey":"u1","region":"us-east"}}"#,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        (
            &body["key"],
            &body["value"],
            &body["variant"],
            &body["reason"]
        ),
        (
            &json!("shop/checkout"),
            &json!(true),
            &json!("on"),
            &json!("TARGETING_MATCH")
        )
    );
    assert_eq!(body["metadata"]["service"], "shop");
    let (code, _) = ofrep(&http, &node, "not-a-token-at-all", "shop/checkout", "{}").await;
    assert_eq!(code, 401);

    // Bulk with ETag / 304.
    let bulk = |etag: Option<String>| {
        let mut request = http
            .post(node.url("/ofrep/v1/evaluate/flags"))
            .bearer_auth(APP)
            .json(&json!({"context": {"targetingKey": "u1", "region": "us-east"}}));
        if let Some(etag) = etag {
            request = request.header("if-none-match", etag);
        }
        request.send()
    };
    let response = bulk(None).await.expect("bulk");
    assert_eq!(response.status(), 200);
    let etag = response.headers()["etag"]
        .to_str()
        .expect("etag")
        .to_owned();
    let body: Value = response.json().await.expect("json");
    let keys: Vec<&str> = body["flags"]
        .as_array()
        .expect("flags")
        .iter()
        .filter_map(|f| f["key"].as_str())
        .collect();
    assert_eq!(keys, ["shop/banner", "shop/checkout"]);
    assert_eq!(bulk(Some(etag)).await.expect("bulk").status(), 304);
    let config = harness::get_json(&http, node.url("/ofrep/v1/configuration"))
        .await
        .expect("configuration");
    assert_eq!(config["name"], "statusmesh");

    // The stored flag and its audit fields.
    let stored = harness::get_json(&http, node.url("/v1/flags/shop/checkout"))
        .await
        .expect("flag");
    assert_eq!(stored["flag"]["author"], "ops");
    assert_eq!(stored["ofrep_key"], "shop/checkout");

    // After a restart every key lands in the same variant.
    proc.terminate();
    drop(proc);
    let config = dir.path().join("regions.toml");
    let _restarted = harness::run_node_with_args(
        dir.path(),
        &config,
        &dir.path().join("certs"),
        &node,
        &harness::data_dir(dir.path(), &node),
        ["--tokens", tokens.as_str()],
    );
    harness::wait_healthy(&http, std::slice::from_ref(&node)).await;
    assert_eq!(split_variants(&client, 400).await, before);
}

/// The value `node` serves for `key` to a caller of `region`, once it answers 200.
async fn served(
    http: &reqwest::Client,
    node: &TestNode,
    token: &str,
    key: &str,
    body: &str,
) -> Option<Value> {
    let (code, body) = ofrep(http, node, token, key, body).await;
    (code == 200).then_some(body)
}

#[tokio::test]
async fn an_outage_in_one_region_flips_the_flag_to_its_safe_variant_elsewhere_and_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = "flag-mesh-token-0123";
    let mesh = harness::start_mesh(dir.path(), token).await;
    let (nodes, http) = (&mesh.nodes, &mesh.client);
    let (eu, us) = (&nodes[0], &nodes[1]);
    // Payments is up everywhere before the flag is written.
    for node in nodes {
        let path = format!("payments/api/{}", node.region);
        let (code, body) = harness::put_status(
            http,
            node,
            token,
            &path,
            json!({"state": "operational", "ttl_s": 600}),
        )
        .await;
        assert_eq!(code, 200, "{body}");
    }
    let spec = json!({
        "variants": {"new": "new-checkout", "safe": "old-checkout"},
        "default_variant": "new",
        "availability": [
            {"service": "payments", "component": "api", "at_or_worse": "major_outage",
             "scope": "mesh", "variant": "safe"}
        ]
    });
    let (code, body) = put_flag(http, eu, token, "shop/checkout", spec).await;
    assert_eq!(code, 200, "{body}");
    // A regional kill switch: only callers of a region where payments is down.
    let regional = json!({
        "variants": {"on": true, "off": false}, "default_variant": "on",
        "availability": [
            {"service": "payments", "component": "api", "at_or_worse": "partial_outage",
             "scope": "region", "variant": "off"}
        ],
        "rules": [{"when": [], "split": [{"variant": "on", "weight": 1}, {"variant": "off", "weight": 1}]}]
    });
    let (code, body) = put_flag(http, eu, token, "shop/regional", regional).await;
    assert_eq!(code, 200, "{body}");
    // A split key gets the same variant on every node.
    let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
    let mut per_node = Vec::new();
    for node in nodes {
        let mut variants = Vec::new();
        for key in &keys {
            let request = format!(r#"{{"context":{{"targetingKey":"{key}","region":"us-east"}}}}"#);
            let body = harness::wait_for(&format!("shop/regional on {}", node.id), || async {
                served(http, node, token, "shop/regional", &request).await
            })
            .await;
            variants.push(body["variant"].as_str().unwrap_or_default().to_owned());
        }
        per_node.push(variants);
    }
    assert!(per_node.windows(2).all(|w| w[0] == w[1]), "{per_node:?}");
    let halves = per_node[0].iter().filter(|v| *v == "on").count();
    assert!(
        (25..=75).contains(&halves),
        "{halves} of 100 in a 50 % split"
    );
    let request = r#"{"context":{"targetingKey":"u1"}}"#;
    harness::wait_for("the flag on us-east", || async {
        let body = served(http, us, token, "shop/checkout", request).await?;
        (body["value"] == "new-checkout").then_some(())
    })
    .await;

    // Payments goes down in eu-west, written on eu-west's node: us-east serves the safe one.
    let (code, body) = harness::put_status(
        http,
        eu,
        token,
        "payments/api/eu-west",
        json!({"state": "major_outage", "ttl_s": 600}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let body = harness::wait_for("the safe variant on us-east", || async {
        let body = served(http, us, token, "shop/checkout", request).await?;
        (body["value"] == "old-checkout").then_some(body)
    })
    .await;
    assert_eq!(body["reason"], "AVAILABILITY");
    assert_eq!(body["variant"], "safe");
    // Regional scope on the us-east node: eu-west callers get `off`, us-east callers split.
    let eu_caller = r#"{"context":{"targetingKey":"k1","region":"eu-west"}}"#;
    let body = harness::wait_for("the regional kill switch for eu-west callers", || async {
        let body = served(http, us, token, "shop/regional", eu_caller).await?;
        (body["reason"] == "AVAILABILITY").then_some(body)
    })
    .await;
    assert_eq!(body["value"], false);
    let us_caller = r#"{"context":{"targetingKey":"k1","region":"us-east"}}"#;
    let body = served(http, us, token, "shop/regional", us_caller)
        .await
        .expect("evaluates");
    assert_eq!(body["reason"], "SPLIT");

    // Healed: back to the new checkout.
    let (code, body) = harness::put_status(
        http,
        eu,
        token,
        "payments/api/eu-west",
        json!({"state": "operational", "ttl_s": 600}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    harness::wait_for("the new variant back on us-east", || async {
        let body = served(http, us, token, "shop/checkout", request).await?;
        (body["value"] == "new-checkout").then_some(())
    })
    .await;
}

/// The rollout's stage and whether it is paused, as `GET /v1/flags/...` reports it.
async fn rollout_of(http: &reqwest::Client, node: &TestNode) -> Option<(u64, bool, Value)> {
    let body = harness::get_json(http, node.url("/v1/flags/shop/rollout")).await?;
    let progress = body["flag"]["progress"].clone();
    Some((
        progress["stage"].as_u64()?,
        progress["paused_since_ms"].is_u64(),
        body,
    ))
}

#[tokio::test]
async fn a_staged_rollout_rolls_back_when_its_guard_degrades_and_resumes_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = "flag-rollout-token-01";
    let mesh = harness::start_mesh(dir.path(), token).await;
    let (nodes, http) = (&mesh.nodes, &mesh.client);
    let eu = &nodes[0];
    let mut sse = harness::SseReader::connect(http, &eu.url("/v1/events"), None).await;
    // Compressed schedule: 10 % at once, 50 % after 1 s, then held at 50 % for an hour.
    let spec = json!({
        "variants": {"on": true, "off": false}, "default_variant": "off",
        "rollout": {"variant": "on",
                    "steps": [{"percent": 10, "hold_ms": 1000}, {"percent": 50, "hold_ms": 3600000},
                              {"percent": 100}],
                    "guard": [{"service": "payments", "component": "api",
                               "at_or_worse": "partial_outage"}]}
    });
    let (code, body) = put_flag(http, eu, token, "shop/rollout", spec).await;
    assert_eq!(code, 200, "{body}");
    let event = sse.next_matching(|e| e.event == "flag").await;
    assert_eq!(event.data["key"], "rollout");
    // The controller records stage 1, then stage 2 after the hold.
    harness::wait_for("stage 2 recorded", || async {
        let (stage, paused, _) = rollout_of(http, eu).await?;
        (stage == 2 && !paused).then_some(())
    })
    .await;
    harness::wait_for("50 % served", || async {
        let body = served(
            http,
            eu,
            token,
            "shop/rollout",
            r#"{"context":{"targetingKey":"k"}}"#,
        )
        .await?;
        (body["metadata"]["rolloutPercent"] == 50).then_some(())
    })
    .await;

    // The guard degrades: back to the last safe step (10 %), paused.
    let (code, body) = harness::put_status(
        http,
        eu,
        token,
        "payments/api/eu-west",
        json!({"state": "major_outage", "ttl_s": 600}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (_, _, body) = harness::wait_for("the rollback recorded", || async {
        let (stage, paused, body) = rollout_of(http, eu).await?;
        (stage == 1 && paused).then_some((stage, paused, body))
    })
    .await;
    assert_eq!(body["rollout"]["percent"], 10);
    // Evaluations read a flag set at most 100 ms old.
    let evaluated = harness::wait_for("10 % served while paused", || async {
        let body = served(
            http,
            eu,
            token,
            "shop/rollout",
            r#"{"context":{"targetingKey":"k"}}"#,
        )
        .await?;
        (body["metadata"]["rolloutPercent"] == 10).then_some(body)
    })
    .await;
    assert_eq!(evaluated["metadata"]["rolloutPaused"], true);
    // Each step and the rollback were `flag` events.
    sse.next_matching(|e| {
        e.event == "flag" && e.data["value"]["progress"]["paused_since_ms"].is_u64()
    })
    .await;

    // Healed: resumes at the safe step, then advances after its hold.
    let (code, body) = harness::put_status(
        http,
        eu,
        token,
        "payments/api/eu-west",
        json!({"state": "operational", "ttl_s": 600}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    harness::wait_for("the rollout resumed and advanced", || async {
        let (stage, paused, _) = rollout_of(http, eu).await?;
        (stage == 2 && !paused).then_some(())
    })
    .await;

    // The audit trail: the operator's write, then the controller's steps, rollback, resume.
    let history = harness::get_json(http, eu.url("/v1/flags/shop/rollout/history"))
        .await
        .expect("history");
    let entries = history["history"].as_array().expect("entries");
    assert_eq!(entries[0]["flag"]["author"], "cli");
    assert!(entries[0]["flag"]["progress"].is_null(), "{history}");
    let mut progress: Vec<(u64, bool)> = entries
        .iter()
        .filter_map(|e| {
            let p = &e["flag"]["progress"];
            Some((p["stage"].as_u64()?, p["paused_since_ms"].is_u64()))
        })
        .collect();
    progress.dedup();
    // In this order (stage 1 may be skipped by a controller slower than its hold).
    let wanted = [(2, false), (1, true), (1, false), (2, false)];
    let mut rest = progress.iter();
    assert!(
        wanted.iter().all(|w| rest.any(|p| p == w)),
        "{progress:?} in {history}"
    );
    assert!(
        entries.iter().all(|e| e["origin_node"].is_string()),
        "{history}"
    );
}
