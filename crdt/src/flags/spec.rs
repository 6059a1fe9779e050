//! Flag specs as operators write them (`PUT /v1/flags/{service}/{key}`), and their
//! validation into [`Flag`] records: every bound is checked, and an error names the field
//! (with the index of the rule or step in the reason).
//!
//! ```json
//! {
//!   "description": "new checkout",
//!   "variants": {"on": true, "off": false},
//!   "default_variant": "off",
//!   "rules": [
//!     {"when": [{"attribute": "region", "op": "in", "value": ["eu-west"]}],
//!      "split": [{"variant": "on", "weight": 10}, {"variant": "off", "weight": 90}]},
//!     {"when": [{"attribute": "plan", "op": "eq", "value": "beta"}], "variant": "on"}
//!   ],
//!   "availability": [
//!     {"service": "payments", "component": "api", "at_or_worse": "major_outage",
//!      "scope": "mesh", "variant": "off"}
//!   ],
//!   "rollout": {"variant": "on", "steps": [{"percent": 5, "hold_ms": 600000},
//!               {"percent": 25, "hold_ms": 600000}, {"percent": 100}],
//!               "guard": [{"service": "payments", "component": "api",
//!                          "at_or_worse": "degraded_performance"}]}
//! }
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::rollout::RolloutProgress;
use crate::error::CrdtError;
use crate::model::{truncate_for_error, Name, State};

/// Most variants one flag may have.
pub const VARIANTS_MAX: usize = 64;
/// Most targeting rules one flag may have.
pub const RULES_MAX: usize = 64;
/// Most conditions one rule may have.
pub const CONDITIONS_MAX: usize = 16;
/// Most values an `in` / `not_in` list may hold.
pub const LIST_MAX: usize = 256;
/// Most availability rules, and most rollout guards, one flag may have.
pub const AVAILABILITY_MAX: usize = 16;
/// Most steps one staged rollout may have.
pub const STEPS_MAX: usize = 32;
/// Largest variant value, as JSON, in bytes.
pub const VALUE_BYTES_MAX: usize = 8 * 1024;
/// Longest context attribute name, and longest string compared in a condition, in bytes.
pub const ATTRIBUTE_LEN_MAX: usize = 256;
/// Longest description, in bytes.
pub const DESCRIPTION_LEN_MAX: usize = 1024;
/// Longest hold of one rollout step: 30 days, in milliseconds.
pub const HOLD_MS_MAX: u64 = 30 * 24 * 3600 * 1000;
/// Largest weight of one split entry.
pub const WEIGHT_MAX: u32 = 1_000_000;

/// A feature flag as an operator writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagSpec {
    #[serde(default)]
    pub description: String,
    /// Variant name to value; every value has the same type (boolean, string, number or
    /// JSON object).
    pub variants: BTreeMap<String, Value>,
    /// Served when nothing else matches.
    pub default_variant: String,
    /// A disabled flag serves its default variant, reason `DISABLED`.
    #[serde(default)]
    pub disabled: bool,
    /// Availability rules, first match wins; they come before targeting (a kill switch).
    #[serde(default)]
    pub availability: Vec<AvailabilityRule>,
    /// Targeting rules in order, first match wins.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// A staged rollout of one variant, after the rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
}

/// A targeting rule: when every condition holds, serve a variant or split by weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub when: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Vec<Weighted>>,
}

/// One share of a percentage split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Weighted {
    pub variant: String,
    pub weight: u32,
}

/// A test on one context attribute (`targetingKey` names the targeting key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub attribute: String,
    pub op: Op,
    pub value: Value,
}

/// What a condition compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Equal (string, number or boolean).
    Eq,
    Ne,
    /// One of a list.
    In,
    NotIn,
    StartsWith,
    EndsWith,
    /// Number comparisons.
    Lt,
    Le,
    Gt,
    Ge,
    /// Semantic version comparisons (`1.2.3`, `1.2.3-beta.1`; a leading `v` is allowed).
    SemverEq,
    SemverLt,
    SemverLe,
    SemverGt,
    SemverGe,
}

/// Where an availability condition looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The component's derived status across the mesh.
    #[default]
    Mesh,
    /// The caller's region: the context's `region`, else the evaluating node's.
    Region,
}

/// "Serve `variant` while `component` of `service` is at or worse than `at_or_worse`."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AvailabilityRule {
    pub service: Name,
    pub component: Name,
    pub at_or_worse: State,
    #[serde(default)]
    pub scope: Scope,
    pub variant: String,
}

/// A component whose degradation pauses a rollout and returns it to its last safe step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guard {
    pub service: Name,
    pub component: Name,
    pub at_or_worse: State,
}

/// A staged rollout: `variant` for a growing share of targeting keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    pub variant: String,
    pub steps: Vec<Step>,
    /// When the first step starts (default: when the flag is written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at_ms: Option<u64>,
    /// Mesh-wide component states that pause the rollout.
    #[serde(default)]
    pub guard: Vec<Guard>,
}

/// One step: `percent` of targeting keys, held `hold_ms` before the next (the last step's
/// hold is not used).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub percent: u32,
    #[serde(default)]
    pub hold_ms: u64,
}

/// A stored flag: the spec, who wrote it and when, and the rollout's recorded progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flag {
    pub spec: FlagSpec,
    pub author: String,
    pub updated_at_ms: u64,
    /// Set by the rollout controller as steps advance, pause and resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<RolloutProgress>,
}

/// The type every variant of a flag has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VariantType {
    Boolean,
    String,
    Number,
    Object,
}

impl VariantType {
    /// The type of `value`, if it may be a variant's.
    pub fn of(value: &Value) -> Option<Self> {
        match value {
            Value::Bool(_) => Some(Self::Boolean),
            Value::String(_) => Some(Self::String),
            Value::Number(_) => Some(Self::Number),
            Value::Object(_) => Some(Self::Object),
            Value::Null | Value::Array(_) => None,
        }
    }

    /// The spelling in errors and in `/ofrep/v1/configuration`-style listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Boolean => "boolean",
            Self::String => "string",
            Self::Number => "number",
            Self::Object => "object",
        }
    }
}

impl FlagSpec {
    /// Validates the spec into a flag written by `author` at `now_ms`.
    pub fn into_flag(self, author: &str, now_ms: u64) -> Result<Flag, CrdtError> {
        let flag = Flag {
            spec: self,
            author: author.to_owned(),
            updated_at_ms: now_ms,
            progress: None,
        };
        flag.validate()?;
        Ok(flag)
    }

    /// The type of the variants (validated specs have one).
    pub fn variant_type(&self) -> Option<VariantType> {
        self.variants.values().next().and_then(VariantType::of)
    }

    /// Checks every bound; the error names the first field that breaks one.
    pub fn validate(&self) -> Result<(), CrdtError> {
        if self.description.len() > DESCRIPTION_LEN_MAX {
            return Err(invalid(
                "description",
                &self.description,
                format!("longer than {DESCRIPTION_LEN_MAX} bytes"),
            ));
        }
        self.check_variants()?;
        self.known_variant("default_variant", &self.default_variant, "")?;
        if self.availability.len() > AVAILABILITY_MAX {
            return Err(count("availability", AVAILABILITY_MAX));
        }
        for (i, rule) in self.availability.iter().enumerate() {
            self.known_variant("availability.variant", &rule.variant, &at("rule", i))?;
        }
        if self.rules.len() > RULES_MAX {
            return Err(count("rules", RULES_MAX));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            self.check_rule(i, rule)?;
        }
        if let Some(rollout) = &self.rollout {
            self.check_rollout(rollout)?;
        }
        Ok(())
    }

    fn check_variants(&self) -> Result<(), CrdtError> {
        if self.variants.is_empty() {
            return Err(invalid(
                "variants",
                "{}",
                "a flag has at least one variant".into(),
            ));
        }
        if self.variants.len() > VARIANTS_MAX {
            return Err(count("variants", VARIANTS_MAX));
        }
        let mut kind = None;
        for (name, value) in &self.variants {
            Name::parse("variants", name)?;
            let Some(this) = VariantType::of(value) else {
                return Err(invalid(
                    "variants",
                    name,
                    "a variant's value is a boolean, string, number or JSON object".into(),
                ));
            };
            if kind.is_some_and(|k| k != this) {
                return Err(invalid(
                    "variants",
                    name,
                    format!(
                        "every variant has the same type; this one is a {}, another a {}",
                        this.as_str(),
                        kind.map_or("", VariantType::as_str)
                    ),
                ));
            }
            kind = Some(this);
            let size = serde_json::to_string(value).map_or(usize::MAX, |s| s.len());
            if size > VALUE_BYTES_MAX {
                return Err(invalid(
                    "variants",
                    name,
                    format!("a variant's value is at most {VALUE_BYTES_MAX} bytes of JSON"),
                ));
            }
        }
        Ok(())
    }

    fn known_variant(&self, field: &'static str, name: &str, wher: &str) -> Result<(), CrdtError> {
        if self.variants.contains_key(name) {
            return Ok(());
        }
        let known: Vec<&str> = self.variants.keys().map(String::as_str).collect();
        Err(invalid(
            field,
            name,
            format!(
                "{wher}no such variant; the variants are {}",
                known.join(", ")
            ),
        ))
    }

    fn check_rule(&self, i: usize, rule: &Rule) -> Result<(), CrdtError> {
        let wher = at("rule", i);
        if rule.when.len() > CONDITIONS_MAX {
            return Err(count("rules.when", CONDITIONS_MAX));
        }
        for (j, condition) in rule.when.iter().enumerate() {
            check_condition(&format!("{wher}{}", at("condition", j)), condition)?;
        }
        match (&rule.variant, &rule.split) {
            (Some(variant), None) => self.known_variant("rules.variant", variant, &wher),
            (None, Some(split)) => {
                if split.is_empty() || split.len() > VARIANTS_MAX {
                    return Err(invalid(
                        "rules.split",
                        &split.len().to_string(),
                        format!("{wher}a split has 1 to {VARIANTS_MAX} entries"),
                    ));
                }
                let mut total: u64 = 0;
                for share in split {
                    self.known_variant("rules.split.variant", &share.variant, &wher)?;
                    if share.weight > WEIGHT_MAX {
                        return Err(invalid(
                            "rules.split.weight",
                            &share.weight.to_string(),
                            format!("{wher}a weight is at most {WEIGHT_MAX}"),
                        ));
                    }
                    total += u64::from(share.weight);
                }
                if total == 0 {
                    return Err(invalid(
                        "rules.split.weight",
                        "0",
                        format!("{wher}the weights add up to more than 0"),
                    ));
                }
                Ok(())
            }
            _ => Err(invalid(
                "rules.variant",
                "",
                format!("{wher}a rule serves exactly one of variant and split"),
            )),
        }
    }

    fn check_rollout(&self, rollout: &Rollout) -> Result<(), CrdtError> {
        self.known_variant("rollout.variant", &rollout.variant, "")?;
        if rollout.steps.is_empty() || rollout.steps.len() > STEPS_MAX {
            return Err(invalid(
                "rollout.steps",
                &rollout.steps.len().to_string(),
                format!("a rollout has 1 to {STEPS_MAX} steps"),
            ));
        }
        let last = rollout.steps.len() - 1;
        let mut previous = 0;
        for (i, step) in rollout.steps.iter().enumerate() {
            let wher = at("step", i);
            if step.percent > 100 || step.percent < previous {
                return Err(invalid(
                    "rollout.steps.percent",
                    &step.percent.to_string(),
                    format!("{wher}percentages grow from step to step, up to 100"),
                ));
            }
            previous = step.percent;
            if i < last && !(1..=HOLD_MS_MAX).contains(&step.hold_ms) {
                return Err(invalid(
                    "rollout.steps.hold_ms",
                    &step.hold_ms.to_string(),
                    format!("{wher}a step before the last is held 1 ms to 30 days"),
                ));
            }
        }
        if rollout.guard.len() > AVAILABILITY_MAX {
            return Err(count("rollout.guard", AVAILABILITY_MAX));
        }
        Ok(())
    }
}

impl Flag {
    /// Checks every bound (a flag from a peer is validated like one from a client).
    pub fn validate(&self) -> Result<(), CrdtError> {
        Name::parse("author", &self.author)?;
        self.spec.validate()?;
        if let (Some(progress), Some(rollout)) = (&self.progress, &self.spec.rollout) {
            if progress.stage > rollout.steps.len() {
                return Err(invalid(
                    "progress.stage",
                    &progress.stage.to_string(),
                    "past the rollout's last step".into(),
                ));
            }
        }
        Ok(())
    }
}

fn check_condition(wher: &str, condition: &Condition) -> Result<(), CrdtError> {
    let name = &condition.attribute;
    if name.is_empty() || name.len() > ATTRIBUTE_LEN_MAX {
        return Err(invalid(
            "rules.when.attribute",
            name,
            format!("{wher}1 to {ATTRIBUTE_LEN_MAX} bytes"),
        ));
    }
    let bad = |reason: &str| {
        Err(invalid(
            "rules.when.value",
            &condition.value.to_string(),
            format!("{wher}{reason}"),
        ))
    };
    let scalar = |v: &Value| match v {
        Value::String(s) => s.len() <= ATTRIBUTE_LEN_MAX,
        Value::Number(_) | Value::Bool(_) => true,
        _ => false,
    };
    match condition.op {
        Op::Eq | Op::Ne if !scalar(&condition.value) => {
            bad("compares with a string, number or boolean")
        }
        Op::In | Op::NotIn => match &condition.value {
            Value::Array(list) if list.len() <= LIST_MAX && list.iter().all(scalar) => Ok(()),
            _ => bad(&format!(
                "is a list of at most {LIST_MAX} strings, numbers or booleans"
            )),
        },
        Op::StartsWith | Op::EndsWith => match &condition.value {
            Value::String(s) if s.len() <= ATTRIBUTE_LEN_MAX => Ok(()),
            _ => bad("is a string"),
        },
        Op::Lt | Op::Le | Op::Gt | Op::Ge if !condition.value.is_number() => bad("is a number"),
        Op::SemverEq | Op::SemverLt | Op::SemverLe | Op::SemverGt | Op::SemverGe => match condition
            .value
            .as_str()
            .and_then(super::eval::Semver::parse)
        {
            Some(_) => Ok(()),
            None => bad("is a semantic version such as 1.2.3"),
        },
        _ => Ok(()),
    }
}

fn at(what: &str, index: usize) -> String {
    format!("{what} {index}: ")
}

fn count(field: &'static str, max: usize) -> CrdtError {
    invalid(field, "", format!("at most {max} entries"))
}

pub(super) fn invalid(field: &'static str, value: &str, reason: String) -> CrdtError {
    CrdtError::InvalidField {
        field,
        value: truncate_for_error(value),
        reason,
    }
}
