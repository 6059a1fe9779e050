//! criterion benchmark of flag evaluation: flags evaluated per second on one core, for a
//! static flag, a flag with targeting rules and a split, and a flag with availability
//! rules, targeting and a staged rollout (the worst case of the evaluator).
//!
//! Run: `cargo bench -p statusmesh-crdt --bench flags`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::{json, Map, Value};
use statusmesh_crdt::flags::{evaluate, AvailabilityView, Context, Flag, FlagSpec};
use statusmesh_crdt::State;

fn flag(spec: Value) -> Flag {
    let spec: FlagSpec = serde_json::from_value(spec).expect("spec");
    spec.into_flag("bench", 0).expect("valid")
}

fn contexts() -> Vec<Map<String, Value>> {
    (0..1024)
        .map(|i| {
            let region = ["eu-west", "us-east", "ap-southeast"][i % 3];
            let plan = ["free", "pro", "beta"][i % 3];
            json!({
                "targetingKey": format!("user-{i}"),
                "region": region,
                "plan": plan,
                "app_version": format!("2.{}.0", i % 20),
                "age": i % 90,
            })
            .as_object()
            .cloned()
            .expect("object")
        })
        .collect()
}

fn bench_evaluate(c: &mut Criterion) {
    let static_flag =
        flag(json!({"variants": {"on": true, "off": false}, "default_variant": "on"}));
    let targeted = flag(json!({
        "variants": {"on": true, "off": false}, "default_variant": "off",
        "rules": [
            {"when": [{"attribute": "plan", "op": "eq", "value": "enterprise"}], "variant": "on"},
            {"when": [{"attribute": "age", "op": "lt", "value": 18}], "variant": "off"},
            {"when": [{"attribute": "app_version", "op": "semver_ge", "value": "2.15.0"}],
             "variant": "on"},
            {"when": [{"attribute": "region", "op": "in", "value": ["eu-west", "us-east"]}],
             "split": [{"variant": "on", "weight": 10}, {"variant": "off", "weight": 90}]}
        ]
    }));
    let full = flag(json!({
        "variants": {"on": true, "off": false}, "default_variant": "off",
        "availability": [
            {"service": "payments", "component": "api", "at_or_worse": "major_outage",
             "scope": "region", "variant": "off"},
            {"service": "payments", "component": "db", "at_or_worse": "partial_outage",
             "variant": "off"}
        ],
        "rules": [
            {"when": [{"attribute": "plan", "op": "eq", "value": "enterprise"}], "variant": "on"},
            {"when": [{"attribute": "app_version", "op": "semver_lt", "value": "2.1.0"}],
             "variant": "off"}
        ],
        "rollout": {"variant": "on", "start_at_ms": 0,
                    "steps": [{"percent": 5, "hold_ms": 600000}, {"percent": 25, "hold_ms": 600000},
                              {"percent": 100}],
                    "guard": [{"service": "payments", "component": "api",
                               "at_or_worse": "degraded_performance"}]}
    }));
    let mut availability = AvailabilityView::default();
    for region in ["eu-west", "us-east", "ap-southeast"] {
        availability.set_region("payments", "api", region, State::Operational);
    }
    availability.set_mesh("payments", "api", State::Operational);
    availability.set_mesh("payments", "db", State::Operational);
    let contexts = contexts();
    let mut group = c.benchmark_group("flags");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(3));
    for (name, f) in [
        ("static", &static_flag),
        ("targeting_split", &targeted),
        ("availability_rollout", &full),
    ] {
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % contexts.len();
                let context = Context::new(&contexts[i], Some("eu-west"));
                let e = evaluate("shop/checkout", f, &availability, &context, 900_000);
                black_box(e.map(|e| e.variant == "on"))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_evaluate);
criterion_main!(benches);
