//! Unit tests of flags: validation, targeting, splits, availability rules and staged
//! rollouts in virtual time.

use serde_json::{json, Map, Value};

use super::*;
use crate::model::State;

fn flag(spec: Value) -> Flag {
    let spec: FlagSpec = serde_json::from_value(spec).expect("spec parses");
    spec.into_flag("ops", 1_000).expect("spec is valid")
}

fn spec_error(spec: Value) -> String {
    let spec: FlagSpec = serde_json::from_value(spec).expect("spec parses");
    let err = spec.into_flag("ops", 1_000).expect_err("spec is invalid");
    format!("{} | {err}", err.field().unwrap_or(""))
}

fn ctx(value: Value) -> Map<String, Value> {
    value.as_object().cloned().expect("an object")
}

fn eval<'f>(
    f: &'f Flag,
    avail: &AvailabilityView,
    c: &Map<String, Value>,
    now: u64,
) -> Evaluation<'f> {
    evaluate(
        "shop/checkout",
        f,
        avail,
        &Context::new(c, Some("eu-west")),
        now,
    )
    .expect("evaluates")
}

fn bool_flag(extra: Value) -> Flag {
    let mut spec = json!({"variants": {"on": true, "off": false}, "default_variant": "off"});
    if let (Some(map), Some(more)) = (spec.as_object_mut(), extra.as_object()) {
        map.extend(more.clone());
    }
    flag(spec)
}

#[test]
fn invalid_specs_name_the_field() {
    for (spec, field) in [
        (json!({"variants": {}, "default_variant": "x"}), "variants"),
        (
            json!({"variants": {"a": true, "b": "x"}, "default_variant": "a"}),
            "variants",
        ),
        (
            json!({"variants": {"a": null}, "default_variant": "a"}),
            "variants",
        ),
        (
            json!({"variants": {"a": 1}, "default_variant": "b"}),
            "default_variant",
        ),
        (
            json!({"variants": {"a": 1}, "default_variant": "a",
                   "rules": [{"when": [], "variant": "zz"}]}),
            "rules.variant",
        ),
        (
            json!({"variants": {"a": 1}, "default_variant": "a",
                   "rules": [{"when": [{"attribute": "v", "op": "semver_gt", "value": "x"}],
                              "variant": "a"}]}),
            "rules.when.value",
        ),
        (
            json!({"variants": {"a": 1}, "default_variant": "a",
                   "rules": [{"when": [], "split": [{"variant": "a", "weight": 0}]}]}),
            "rules.split.weight",
        ),
        (
            json!({"variants": {"a": 1}, "default_variant": "a",
                   "rollout": {"variant": "a", "steps": [{"percent": 50, "hold_ms": 1},
                                                         {"percent": 10}]}}),
            "rollout.steps.percent",
        ),
        (
            json!({"variants": {"a": 1}, "default_variant": "a",
                   "rollout": {"variant": "a", "steps": [{"percent": 5}, {"percent": 10}]}}),
            "rollout.steps.hold_ms",
        ),
    ] {
        let err = spec_error(spec);
        assert!(err.starts_with(&format!("{field} |")), "{field}: {err}");
    }
}

#[test]
fn targeting_rules_match_in_order_with_every_operator_kind() {
    let f = flag(json!({
        "variants": {"blue": "blue", "green": "green", "red": "red"},
        "default_variant": "blue",
        "rules": [
            {"when": [{"attribute": "region", "op": "in", "value": ["us-east"]},
                      {"attribute": "plan", "op": "eq", "value": "beta"}], "variant": "green"},
            {"when": [{"attribute": "app_version", "op": "semver_ge", "value": "2.0.0"}],
             "variant": "red"},
            {"when": [{"attribute": "age", "op": "lt", "value": 18}], "variant": "green"},
            {"when": [{"attribute": "targetingKey", "op": "starts_with", "value": "staff-"}],
             "variant": "red"}
        ]
    }));
    let avail = AvailabilityView::default();
    let c = ctx(json!({"region": "us-east", "plan": "beta"}));
    let e = eval(&f, &avail, &c, 0);
    assert_eq!(
        (e.variant, e.reason, e.rule),
        ("green", Reason::TargetingMatch, Some(0))
    );
    // The node's region (eu-west) stands in when the context names none.
    let c = ctx(json!({"plan": "beta"}));
    assert_eq!(eval(&f, &avail, &c, 0).reason, Reason::Default);
    let c = ctx(json!({"app_version": "2.0.0-rc.1"}));
    assert_eq!(eval(&f, &avail, &c, 0).variant, "blue");
    let c = ctx(json!({"app_version": "v2.1.0"}));
    assert_eq!(eval(&f, &avail, &c, 0).variant, "red");
    let c = ctx(json!({"age": 17.5}));
    assert_eq!(eval(&f, &avail, &c, 0).variant, "green");
    let c = ctx(json!({"age": "17"}));
    assert_eq!(eval(&f, &avail, &c, 0).variant, "blue");
    let c = ctx(json!({"targetingKey": "staff-9"}));
    assert_eq!(eval(&f, &avail, &c, 0).variant, "red");
    assert_eq!(eval(&f, &avail, &c, 0).value, &json!("red"));
}

#[test]
fn semver_orders_pre_releases_below_releases() {
    let v = |s| Semver::parse(s).expect(s);
    assert!(v("1.2.3") < v("1.10.0"));
    assert!(v("1.0.0-alpha") < v("1.0.0-alpha.1"));
    assert!(v("1.0.0-alpha.1") < v("1.0.0-beta"));
    assert!(v("1.0.0-rc.2") < v("1.0.0-rc.10"));
    assert!(v("1.0.0-rc.1") < v("1.0.0"));
    assert_eq!(v("1.0.0+build.5"), v("1.0.0"));
    for bad in ["1.2", "1.2.3.4", "a.b.c", "1.2.3-", ""] {
        assert!(Semver::parse(bad).is_none(), "{bad}");
    }
}

#[test]
fn a_split_serves_its_share_within_one_percent_and_the_same_on_every_evaluator() {
    let spec = json!({
        "variants": {"on": true, "off": false}, "default_variant": "off",
        "rules": [{"when": [], "split": [{"variant": "on", "weight": 25},
                                         {"variant": "off", "weight": 75}]}]
    });
    // Two evaluators: flags decoded separately, as two nodes hold them.
    let a = flag(spec.clone());
    let b: Flag = serde_json::from_str(&serde_json::to_string(&a).expect("json")).expect("back");
    let avail = AvailabilityView::default();
    let mut on = 0;
    for i in 0..100_000 {
        let c = ctx(json!({"targetingKey": format!("user-{i}")}));
        let x = eval(&a, &avail, &c, 0);
        let y = eval(&b, &avail, &c, 0);
        assert_eq!(x.variant, y.variant, "user-{i}");
        assert_eq!(x.reason, Reason::Split);
        on += usize::from(x.variant == "on");
    }
    let share = on as f64 / 100_000.0;
    assert!((share - 0.25).abs() <= 0.01, "share {share}");
}

#[test]
fn a_split_without_a_targeting_key_is_an_error() {
    let f = bool_flag(json!({"rules": [{"when": [], "split": [{"variant": "on", "weight": 1}]}]}));
    let c = ctx(json!({"region": "eu-west"}));
    let got = evaluate(
        "s/k",
        &f,
        &AvailabilityView::default(),
        &Context::new(&c, None),
        0,
    );
    assert_eq!(got, Err(EvalError::TargetingKeyMissing));
}

#[test]
fn buckets_are_pinned() {
    // A change here moves users between variants on upgrade: these values are the contract.
    let got: Vec<u32> = ["user-1", "user-2", "", "ü"]
        .iter()
        .map(|k| bucket("shop/checkout", k))
        .collect();
    assert_eq!(got, PINNED_BUCKETS.to_vec());
}

/// Computed independently from the documented algorithm (see `hash.rs`).
const PINNED_BUCKETS: [u32; 4] = [7708, 9162, 9205, 3337];

#[test]
fn availability_rules_serve_the_safe_variant_mesh_wide_or_in_the_callers_region() {
    let f = bool_flag(json!({
        "rules": [{"when": [], "variant": "on"}],
        "availability": [
            {"service": "payments", "component": "api", "at_or_worse": "major_outage",
             "scope": "region", "variant": "off"},
            {"service": "payments", "component": "db", "at_or_worse": "partial_outage",
             "variant": "off"}
        ]
    }));
    let mut avail = AvailabilityView::default();
    let eu = ctx(json!({"region": "eu-west"}));
    let us = ctx(json!({"region": "us-east"}));
    assert_eq!(eval(&f, &avail, &eu, 0).variant, "on");
    avail.set_region("payments", "api", "eu-west", State::MajorOutage);
    let e = eval(&f, &avail, &eu, 0);
    assert_eq!(
        (e.variant, e.reason, e.rule),
        ("off", Reason::Availability, Some(0))
    );
    assert_eq!(eval(&f, &avail, &us, 0).variant, "on");
    avail.set_mesh("payments", "db", State::DegradedPerformance);
    assert_eq!(eval(&f, &avail, &us, 0).variant, "on");
    avail.set_mesh("payments", "db", State::MajorOutage);
    assert_eq!(eval(&f, &avail, &us, 0).variant, "off");
}

#[test]
fn a_disabled_flag_serves_its_default() {
    let f = bool_flag(json!({"disabled": true, "rules": [{"when": [], "variant": "on"}]}));
    let e = eval(&f, &AvailabilityView::default(), &ctx(json!({})), 0);
    assert_eq!((e.variant, e.reason), ("off", Reason::Disabled));
    let f = bool_flag(json!({}));
    let e = eval(&f, &AvailabilityView::default(), &ctx(json!({})), 0);
    assert_eq!((e.variant, e.reason), ("off", Reason::Static));
}

const MIN: u64 = 60_000;

fn rollout_flag() -> Flag {
    bool_flag(json!({"rollout": {
        "variant": "on", "start_at_ms": 10 * MIN,
        "steps": [{"percent": 5, "hold_ms": 10 * MIN}, {"percent": 25, "hold_ms": 10 * MIN},
                  {"percent": 100}],
        "guard": [{"service": "payments", "component": "api",
                   "at_or_worse": "degraded_performance"}]
    }}))
}

/// The share of 20 000 keys served `on`.
fn share_on(f: &Flag, avail: &AvailabilityView, now: u64) -> f64 {
    let on = (0..20_000)
        .filter(|i| {
            let c = ctx(json!({"targetingKey": format!("k{i}")}));
            eval(f, avail, &c, now).variant == "on"
        })
        .count();
    on as f64 / 20_000.0
}

#[test]
fn a_rollout_follows_its_schedule_in_virtual_time() {
    let f = rollout_flag();
    let avail = AvailabilityView::default();
    let at = |now| position(&f, &avail, now).map(|p| (p.stage, p.percent));
    assert_eq!(at(0), Some((0, 0)));
    assert_eq!(at(10 * MIN), Some((1, 5)));
    assert_eq!(at(20 * MIN - 1), Some((1, 5)));
    assert_eq!(at(20 * MIN), Some((2, 25)));
    assert_eq!(at(30 * MIN), Some((3, 100)));
    assert_eq!(at(300 * MIN), Some((3, 100)));
    assert_eq!(share_on(&f, &avail, 0), 0.0);
    assert!((share_on(&f, &avail, 15 * MIN) - 0.05).abs() < 0.01);
    assert!((share_on(&f, &avail, 25 * MIN) - 0.25).abs() < 0.01);
    assert_eq!(share_on(&f, &avail, 35 * MIN), 1.0);
}

/// Runs the controller at `now`: records what it says, like the node does.
fn control(f: &mut Flag, avail: &AvailabilityView, now: u64) -> Option<RolloutEvent> {
    let (progress, event) = advance(f, avail, now)?;
    f.progress = Some(progress);
    Some(event)
}

#[test]
fn a_rollout_pauses_rolls_back_to_its_last_safe_step_and_resumes_in_virtual_time() {
    let mut f = rollout_flag();
    let mut avail = AvailabilityView::default();
    assert_eq!(control(&mut f, &avail, 0), None);
    assert_eq!(
        control(&mut f, &avail, 10 * MIN),
        Some(RolloutEvent::Advanced {
            stage: 1,
            percent: 5
        })
    );
    assert_eq!(
        control(&mut f, &avail, 21 * MIN),
        Some(RolloutEvent::Advanced {
            stage: 2,
            percent: 25
        })
    );
    assert_eq!(control(&mut f, &avail, 22 * MIN), None);
    // Payments degrades at minute 25: 5 % at once, before the controller writes anything.
    avail.set_mesh("payments", "api", State::DegradedPerformance);
    let p = position(&f, &avail, 25 * MIN).expect("a rollout");
    assert_eq!((p.stage, p.percent, p.paused), (1, 5, true));
    assert!((share_on(&f, &avail, 25 * MIN) - 0.05).abs() < 0.01);
    assert_eq!(
        control(&mut f, &avail, 25 * MIN),
        Some(RolloutEvent::RolledBack {
            from: 2,
            to: 1,
            percent: 5
        })
    );
    // Paused: the schedule does not move however long the outage lasts.
    assert_eq!(control(&mut f, &avail, 90 * MIN), None);
    assert_eq!(position(&f, &avail, 90 * MIN).map(|p| p.percent), Some(5));
    // Healed at minute 100: resumes at the safe step, held in full again.
    avail.set_mesh("payments", "api", State::Operational);
    assert_eq!(position(&f, &avail, 100 * MIN).map(|p| p.percent), Some(5));
    assert_eq!(
        control(&mut f, &avail, 100 * MIN),
        Some(RolloutEvent::Resumed {
            stage: 1,
            percent: 5
        })
    );
    assert_eq!(position(&f, &avail, 109 * MIN).map(|p| p.percent), Some(5));
    assert_eq!(
        control(&mut f, &avail, 110 * MIN),
        Some(RolloutEvent::Advanced {
            stage: 2,
            percent: 25
        })
    );
    assert_eq!(
        control(&mut f, &avail, 120 * MIN),
        Some(RolloutEvent::Advanced {
            stage: 3,
            percent: 100
        })
    );
    assert_eq!(share_on(&f, &avail, 120 * MIN), 1.0);
    // A stored flag with progress validates and round-trips.
    f.validate().expect("valid");
    let back: Flag = serde_json::from_str(&serde_json::to_string(&f).expect("json")).expect("back");
    assert_eq!(back, f);
}

#[test]
fn the_ofrep_namespace_finds_full_keys_and_unique_bare_keys() {
    let name = |s: &str| crate::model::Name::parse("n", s).expect("name");
    let mut set = FlagSet::default();
    set.insert(&name("shop"), &name("checkout"), bool_flag(json!({})));
    set.insert(&name("shop"), &name("search"), bool_flag(json!({})));
    set.insert(&name("blog"), &name("search"), bool_flag(json!({})));
    assert!(matches!(
        set.lookup("shop/checkout"),
        Lookup::Found("shop/checkout", _)
    ));
    assert!(matches!(
        set.lookup("checkout"),
        Lookup::Found("shop/checkout", _)
    ));
    assert!(matches!(set.lookup("search"), Lookup::Ambiguous(keys) if keys.len() == 2));
    assert!(matches!(set.lookup("blog/search"), Lookup::Found(..)));
    assert_eq!(set.lookup("nope"), Lookup::NotFound);
}

#[test]
fn a_flags_history_lists_every_write_with_its_origin_and_a_flag_set_reads_replicas() {
    use crate::doc::Put;
    use crate::replica::Replica;
    let name = |s: &str| crate::model::Name::parse("n", s).expect("name");
    let mut replica = Replica::new("n1", automerge::ActorId::from(vec![1; 16]));
    let (service, key) = (name("shop"), name("checkout"));
    let mut f = bool_flag(json!({"rules": [{"when": [], "variant": "on"}]}));
    let put = |value: Option<Flag>| Put::Flag {
        key: key.clone(),
        value,
    };
    replica
        .write_records(10, &service, &[put(Some(f.clone()))])
        .expect("written");
    f.spec.disabled = true;
    replica
        .write_records(20, &service, &[put(Some(f.clone()))])
        .expect("written");
    let set = FlagSet::from_replica(&replica, 30);
    let Lookup::Found(id, stored) = set.lookup("shop/checkout") else {
        panic!("not found");
    };
    let e = evaluate(
        id,
        stored,
        &set.availability,
        &Context::new(&Map::new(), None),
        30,
    )
    .expect("evaluates");
    assert_eq!(e.reason, Reason::Disabled);
    replica
        .write_records(40, &service, &[put(None)])
        .expect("deleted");
    let doc = replica.doc(&service).expect("doc");
    let history = flag_history(doc, &key);
    let actions: Vec<(u64, &str)> = history.iter().map(|h| (h.at_ms, h.action)).collect();
    assert_eq!(actions, [(10, "put"), (20, "put"), (40, "delete")]);
    assert_eq!(history[0].origin_node.as_deref(), Some("n1"));
    assert_eq!(
        history[1].flag.as_ref().map(|f| f.spec.disabled),
        Some(true)
    );
    assert!(FlagSet::from_replica(&replica, 50).is_empty());
}
