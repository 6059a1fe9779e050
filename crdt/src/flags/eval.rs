//! Evaluation: a pure function of (flag, availability, context, now), the same on every
//! node for the same state, without IO or allocation on the common paths.
//!
//! Order: a disabled flag serves its default (`DISABLED`); then the availability rules, first
//! match wins (`AVAILABILITY`); then the targeting rules, first match wins (`TARGETING_MATCH`
//! for a variant, `SPLIT` for a weighted split); then the staged rollout (`SPLIT` inside its
//! share, or `ROLLED_BACK` metadata while a guard holds it); then the default variant
//! (`DEFAULT`, or `STATIC` for a flag with nothing to evaluate).

use std::cmp::Ordering;

use serde_json::{Map, Value};

use super::availability::AvailabilityView;
use super::hash::{bucket, BUCKETS};
use super::rollout::{position, Position};
use super::spec::{Condition, Flag, Op, Scope};

/// The context attribute that names the targeting key.
pub const TARGETING_KEY: &str = "targetingKey";
/// The context attribute that names the caller's region.
pub const REGION: &str = "region";

/// The value of a variant that does not exist (only an unvalidated flag names one).
static NULL: Value = Value::Null;

/// An evaluation context: OFREP's `context` object, and the region to assume when it names
/// none (the evaluating node's).
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    attributes: &'a Map<String, Value>,
    region: Option<&'a str>,
}

impl<'a> Context<'a> {
    /// A context over `attributes`; `node_region` stands in for a missing `region`.
    pub fn new(attributes: &'a Map<String, Value>, node_region: Option<&'a str>) -> Self {
        let region = attributes
            .get(REGION)
            .and_then(Value::as_str)
            .or(node_region);
        Self { attributes, region }
    }

    /// The targeting key, if the context has one.
    pub fn targeting_key(&self) -> Option<&'a str> {
        self.attributes.get(TARGETING_KEY).and_then(Value::as_str)
    }

    /// The caller's region.
    pub fn region(&self) -> Option<&'a str> {
        self.region
    }

    fn attribute(&self, name: &str) -> Option<Attr<'a>> {
        match self.attributes.get(name) {
            Some(value) => Some(Attr::Json(value)),
            None if name == REGION => self.region.map(Attr::Str),
            None => None,
        }
    }
}

/// A context attribute: a JSON value or the node's region.
#[derive(Debug, Clone, Copy)]
enum Attr<'a> {
    Json(&'a Value),
    Str(&'a str),
}

impl<'a> Attr<'a> {
    fn as_str(self) -> Option<&'a str> {
        match self {
            Attr::Json(v) => v.as_str(),
            Attr::Str(s) => Some(s),
        }
    }

    fn as_f64(self) -> Option<f64> {
        match self {
            Attr::Json(v) => v.as_f64(),
            Attr::Str(_) => None,
        }
    }

    /// Equality with a rule's scalar: strings with strings, numbers by value, booleans.
    fn equals(self, rule: &Value) -> bool {
        match (self, rule) {
            (Attr::Str(s), Value::String(r)) => s == r,
            (Attr::Json(Value::String(s)), Value::String(r)) => s == r,
            (Attr::Json(Value::Number(a)), Value::Number(b)) => a.as_f64() == b.as_f64(),
            (Attr::Json(Value::Bool(a)), Value::Bool(b)) => a == b,
            _ => false,
        }
    }
}

/// Why a variant was served (OFREP's reasons, and `AVAILABILITY` for availability rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Static,
    Default,
    TargetingMatch,
    Split,
    Disabled,
    Availability,
}

impl Reason {
    /// The OFREP spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Static => "STATIC",
            Reason::Default => "DEFAULT",
            Reason::TargetingMatch => "TARGETING_MATCH",
            Reason::Split => "SPLIT",
            Reason::Disabled => "DISABLED",
            Reason::Availability => "AVAILABILITY",
        }
    }
}

/// An evaluation that failed because of the context.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// A split or rollout needs a targeting key and the context has none.
    #[error("this flag splits by targeting key and the context has no string targetingKey")]
    TargetingKeyMissing,
}

/// What an evaluation served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evaluation<'f> {
    pub variant: &'f str,
    pub value: &'f Value,
    pub reason: Reason,
    /// The index of the availability or targeting rule that matched.
    pub rule: Option<usize>,
    /// The rollout's position, when the flag has one.
    pub rollout: Option<Position>,
}

/// Evaluates `flag` (whose OFREP key is `id`, `<service>/<key>`, the split's hash input).
pub fn evaluate<'f>(
    id: &str,
    flag: &'f Flag,
    availability: &AvailabilityView,
    context: &Context<'_>,
    now_ms: u64,
) -> Result<Evaluation<'f>, EvalError> {
    let spec = &flag.spec;
    let serve = |variant: &'f String, reason: Reason, rule: Option<usize>| Evaluation {
        variant: variant.as_str(),
        // Validated: every variant named exists; `null` only for an unvalidated flag.
        value: spec.variants.get(variant).unwrap_or(&NULL),
        reason,
        rule,
        rollout: None,
    };
    if spec.disabled {
        return Ok(serve(&spec.default_variant, Reason::Disabled, None));
    }
    for (i, rule) in spec.availability.iter().enumerate() {
        let region = match rule.scope {
            Scope::Mesh => None,
            Scope::Region => match context.region() {
                Some(region) => Some(region),
                None => continue,
            },
        };
        if availability.at_or_worse(
            rule.service.as_str(),
            rule.component.as_str(),
            region,
            rule.at_or_worse,
        ) {
            return Ok(serve(&rule.variant, Reason::Availability, Some(i)));
        }
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        if !rule.when.iter().all(|c| holds(c, context)) {
            continue;
        }
        if let Some(variant) = &rule.variant {
            return Ok(serve(variant, Reason::TargetingMatch, Some(i)));
        }
        if let Some(split) = &rule.split {
            let key = context
                .targeting_key()
                .ok_or(EvalError::TargetingKeyMissing)?;
            let total: u64 = split.iter().map(|s| u64::from(s.weight)).sum();
            let point = u64::from(bucket(id, key)) * total / u64::from(BUCKETS);
            let mut acc = 0;
            for share in split {
                acc += u64::from(share.weight);
                if point < acc {
                    return Ok(serve(&share.variant, Reason::Split, Some(i)));
                }
            }
        }
    }
    if let Some(rollout) = &spec.rollout {
        let at = position(flag, availability, now_ms);
        let percent = at.map_or(0, |p| p.percent);
        if percent > 0 {
            let key = context
                .targeting_key()
                .ok_or(EvalError::TargetingKeyMissing)?;
            if bucket(id, key) < percent * (BUCKETS / 100) {
                let mut served = serve(&rollout.variant, Reason::Split, None);
                served.rollout = at;
                return Ok(served);
            }
        }
        let mut served = serve(&spec.default_variant, Reason::Default, None);
        served.rollout = at;
        return Ok(served);
    }
    let reason = if spec.rules.is_empty() && spec.availability.is_empty() {
        Reason::Static
    } else {
        Reason::Default
    };
    Ok(serve(&spec.default_variant, reason, None))
}

/// Whether one condition holds in `context`. A missing attribute, or one of the wrong type,
/// fails every operator but `ne` and `not_in`.
fn holds(condition: &Condition, context: &Context<'_>) -> bool {
    let attr = if condition.attribute == TARGETING_KEY {
        context.targeting_key().map(Attr::Str)
    } else {
        context.attribute(&condition.attribute)
    };
    let rule = &condition.value;
    let list = || rule.as_array().map_or(&[][..], Vec::as_slice);
    let Some(attr) = attr else {
        return matches!(condition.op, Op::Ne | Op::NotIn);
    };
    let number = |cmp: fn(f64, f64) -> bool| match (attr.as_f64(), rule.as_f64()) {
        (Some(a), Some(b)) => cmp(a, b),
        _ => false,
    };
    let semver = |want: fn(Ordering) -> bool| {
        let parsed = attr.as_str().and_then(Semver::parse);
        match (parsed, rule.as_str().and_then(Semver::parse)) {
            (Some(a), Some(b)) => want(a.cmp(&b)),
            _ => false,
        }
    };
    let text = |test: fn(&str, &str) -> bool| match (attr.as_str(), rule.as_str()) {
        (Some(a), Some(b)) => test(a, b),
        _ => false,
    };
    match condition.op {
        Op::Eq => attr.equals(rule),
        Op::Ne => !attr.equals(rule),
        Op::In => list().iter().any(|v| attr.equals(v)),
        Op::NotIn => !list().iter().any(|v| attr.equals(v)),
        Op::StartsWith => text(|a, b| a.starts_with(b)),
        Op::EndsWith => text(|a, b| a.ends_with(b)),
        Op::Lt => number(|a, b| a < b),
        Op::Le => number(|a, b| a <= b),
        Op::Gt => number(|a, b| a > b),
        Op::Ge => number(|a, b| a >= b),
        Op::SemverEq => semver(Ordering::is_eq),
        Op::SemverLt => semver(Ordering::is_lt),
        Op::SemverLe => semver(Ordering::is_le),
        Op::SemverGt => semver(Ordering::is_gt),
        Op::SemverGe => semver(Ordering::is_ge),
    }
}

/// A semantic version, ordered as semver.org says (build metadata ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Semver<'a> {
    core: [u64; 3],
    pre: Option<&'a str>,
}

impl<'a> Semver<'a> {
    /// Parses `1.2.3`, `v1.2.3`, `1.2.3-rc.1`, `1.2.3+build`; `None` otherwise.
    pub fn parse(text: &'a str) -> Option<Self> {
        let text = text.strip_prefix('v').unwrap_or(text);
        let text = text.split_once('+').map_or(text, |(v, _)| v);
        let (core_text, pre) = match text.split_once('-') {
            Some((core, pre)) if !pre.is_empty() => (core, Some(pre)),
            Some(_) => return None,
            None => (text, None),
        };
        let mut core = [0u64; 3];
        let mut parts = core_text.split('.');
        for slot in &mut core {
            let part = parts.next()?;
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            *slot = part.parse().ok()?;
        }
        if parts.next().is_some() {
            return None;
        }
        Some(Self { core, pre })
    }
}

impl Ord for Semver<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.core
            .cmp(&other.core)
            .then_with(|| match (self.pre, other.pre) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => Ordering::Greater,
                (Some(_), None) => Ordering::Less,
                (Some(a), Some(b)) => compare_pre(a, b),
            })
    }
}

impl PartialOrd for Semver<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Pre-release identifiers: numeric ones by value and below alphanumeric ones.
fn compare_pre(a: &str, b: &str) -> Ordering {
    let mut left = a.split('.');
    let mut right = b.split('.');
    loop {
        match (left.next(), right.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let order = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(m), Ok(n)) => m.cmp(&n),
                    (Ok(_), Err(_)) => Ordering::Less,
                    (Err(_), Ok(_)) => Ordering::Greater,
                    (Err(_), Err(_)) => x.cmp(y),
                };
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}
