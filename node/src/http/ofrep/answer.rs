//! OFREP answers as pure functions of (flag set, request body, node region): the success
//! body, the error bodies, the bulk body. No IO, so the wire format is unit-tested here.

use axum::http::StatusCode;
use serde_json::{json, Map, Value};
use statusmesh_crdt::flags::{evaluate, Context, EvalError, Evaluation, FlagSet, Lookup};

/// An OFREP error: the status and the `{key, errorCode, errorDetails}` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfrepError {
    pub status: StatusCode,
    pub code: &'static str,
    pub details: String,
}

impl OfrepError {
    fn new(status: StatusCode, code: &'static str, details: impl Into<String>) -> Self {
        Self {
            status,
            code,
            details: details.into(),
        }
    }

    /// 400 `PARSE_ERROR`: the body is not a JSON object.
    pub fn parse(details: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "PARSE_ERROR", details)
    }

    /// The body, for `key`.
    pub fn body(&self, key: Option<&str>) -> Value {
        let mut body = json!({ "errorCode": self.code, "errorDetails": self.details });
        if let (Some(map), Some(key)) = (body.as_object_mut(), key) {
            map.insert("key".into(), Value::String(key.to_owned()));
        }
        body
    }
}

/// The evaluation context of a request body `{"context": {...}}` (a missing context is an
/// empty one).
pub fn context_of(body: &[u8]) -> Result<Map<String, Value>, OfrepError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| OfrepError::parse(format!("the body is not JSON: {e}")))?;
    let Value::Object(mut request) = value else {
        return Err(OfrepError::parse(
            "the body is a JSON object {\"context\": {...}}",
        ));
    };
    let context = match request.remove("context") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(context)) => context,
        Some(_) => {
            return Err(OfrepError::new(
                StatusCode::BAD_REQUEST,
                "INVALID_CONTEXT",
                "context is a JSON object",
            ))
        }
    };
    match context.get("targetingKey") {
        None | Some(Value::String(_)) => {}
        Some(_) => {
            return Err(OfrepError::new(
                StatusCode::BAD_REQUEST,
                "INVALID_CONTEXT",
                "context.targetingKey is a string",
            ))
        }
    }
    if let Some(region) = context.get("region").filter(|r| !r.is_string()) {
        return Err(OfrepError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_CONTEXT",
            format!("context.region is a string, not {region}"),
        ));
    }
    Ok(context)
}

/// The answer for flag `key`: the success body or an error.
pub fn evaluate_key(
    set: &FlagSet,
    key: &str,
    context: &Map<String, Value>,
    node_region: &str,
) -> Result<Value, OfrepError> {
    let (id, flag) = match set.lookup(key) {
        Lookup::Found(id, flag) => (id, flag),
        Lookup::NotFound => {
            return Err(OfrepError::new(
                StatusCode::NOT_FOUND,
                "FLAG_NOT_FOUND",
                format!("no flag {key:?}; flag keys are <service>/<key>"),
            ))
        }
        Lookup::Ambiguous(ids) => {
            return Err(OfrepError::new(
                StatusCode::BAD_REQUEST,
                "GENERAL",
                format!(
                    "{key:?} names a flag of more than one service; use one of {}",
                    ids.join(", ")
                ),
            ))
        }
    };
    let context = Context::new(context, Some(node_region));
    match evaluate(id, flag, &set.availability, &context, set.at_ms) {
        Ok(evaluation) => Ok(success(key, id, &evaluation)),
        Err(EvalError::TargetingKeyMissing) => Err(OfrepError::new(
            StatusCode::BAD_REQUEST,
            "TARGETING_KEY_MISSING",
            EvalError::TargetingKeyMissing.to_string(),
        )),
    }
}

/// `{key, value, reason, variant, metadata}`; the metadata names the flag's service, the
/// rule that matched and where its rollout stands.
fn success(key: &str, id: &str, e: &Evaluation<'_>) -> Value {
    let mut metadata = Map::new();
    if let Some((service, flag)) = id.split_once('/') {
        metadata.insert("service".into(), json!(service));
        metadata.insert("flag".into(), json!(flag));
    }
    if let Some(rule) = e.rule {
        metadata.insert("rule".into(), json!(rule));
    }
    if let Some(p) = e.rollout {
        metadata.insert("rolloutStage".into(), json!(p.stage));
        metadata.insert("rolloutPercent".into(), json!(p.percent));
        metadata.insert("rolloutPaused".into(), json!(p.paused));
    }
    json!({
        "key": key,
        "value": e.value,
        "reason": e.reason.as_str(),
        "variant": e.variant,
        "metadata": metadata,
    })
}

/// The bulk answer: every flag under its full key, errors inline.
pub fn evaluate_all(set: &FlagSet, context: &Map<String, Value>, node_region: &str) -> Value {
    let flags: Vec<Value> = set
        .iter()
        .map(
            |(id, _)| match evaluate_key(set, id, context, node_region) {
                Ok(body) => body,
                Err(e) => e.body(Some(id)),
            },
        )
        .collect();
    json!({ "flags": flags })
}

#[cfg(test)]
mod tests {
    use super::*;
    use statusmesh_crdt::flags::FlagSpec;
    use statusmesh_crdt::Name;

    fn set() -> FlagSet {
        let spec: FlagSpec = serde_json::from_value(json!({
            "variants": {"on": true, "off": false}, "default_variant": "off",
            "rules": [{"when": [{"attribute": "region", "op": "eq", "value": "us-east"}],
                       "variant": "on"},
                      {"when": [{"attribute": "plan", "op": "eq", "value": "x"}],
                       "split": [{"variant": "on", "weight": 1}]}]
        }))
        .expect("spec");
        let flag = spec.into_flag("ops", 1).expect("valid");
        let mut set = FlagSet::default();
        let name = |s| Name::parse("n", s).expect("name");
        set.insert(&name("shop"), &name("checkout"), flag);
        set
    }

    #[test]
    fn a_flag_evaluates_to_the_ofrep_success_shape() {
        let context = context_of(br#"{"context": {"targetingKey": "u1"}}"#).expect("context");
        let body = evaluate_key(&set(), "shop/checkout", &context, "us-east").expect("ok");
        assert_eq!(body["key"], "shop/checkout");
        assert_eq!(body["value"], true);
        assert_eq!(body["variant"], "on");
        assert_eq!(body["reason"], "TARGETING_MATCH");
        assert_eq!(body["metadata"]["service"], "shop");
        let body = evaluate_key(&set(), "checkout", &context, "eu-west").expect("ok");
        assert_eq!(
            (body["value"].clone(), body["reason"].clone()),
            (json!(false), json!("DEFAULT"))
        );
    }

    #[test]
    fn errors_carry_the_ofrep_codes() {
        let code = |r: Result<Map<String, Value>, OfrepError>| r.expect_err("error").code;
        assert_eq!(code(context_of(b"{nope")), "PARSE_ERROR");
        assert_eq!(code(context_of(b"[1]")), "PARSE_ERROR");
        assert_eq!(code(context_of(br#"{"context": 5}"#)), "INVALID_CONTEXT");
        assert_eq!(
            code(context_of(br#"{"context": {"targetingKey": 5}}"#)),
            "INVALID_CONTEXT"
        );
        assert!(context_of(b"").expect("empty").is_empty());
        let missing = evaluate_key(&set(), "shop/nope", &Map::new(), "eu-west").expect_err("404");
        assert_eq!(
            (missing.status, missing.code),
            (StatusCode::NOT_FOUND, "FLAG_NOT_FOUND")
        );
        assert_eq!(missing.body(Some("shop/nope"))["key"], "shop/nope");
        let context = context_of(br#"{"context": {"plan": "x"}}"#).expect("context");
        let no_key = evaluate_key(&set(), "shop/checkout", &context, "eu-west").expect_err("400");
        assert_eq!(no_key.code, "TARGETING_KEY_MISSING");
        let bulk = evaluate_all(&set(), &context, "eu-west");
        assert_eq!(bulk["flags"][0]["errorCode"], "TARGETING_KEY_MISSING");
    }
}
