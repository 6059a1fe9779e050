//! Feature flags that follow availability: records per service (`flag/<key>` in the
//! service's document), validated specs, and a pure evaluator.
//!
//! - `spec`: [`FlagSpec`] (what an operator writes) validated into [`Flag`] (what is
//!   stored): variants of one type, a default, availability rules, targeting rules, a
//!   staged rollout.
//! - `eval`: [`evaluate`]: (flag, availability, context, now) to a variant and a reason.
//! - `hash`: [`bucket`], the fixed consistent hash of percentage splits.
//! - `availability`: [`AvailabilityView`], component states mesh-wide and per region.
//! - `rollout`: staged rollouts: [`position`] and the controller's [`advance`].
//! - `history`: [`flag_history`], a flag's writes from the Automerge history.
//! - `set`: [`FlagSet`], every flag of a replica and the OFREP key namespace.

mod availability;
mod eval;
mod hash;
mod history;
mod rollout;
mod set;
mod spec;

pub use availability::{AvailabilityView, ComponentAvailability};
pub use eval::{evaluate, Context, EvalError, Evaluation, Reason, Semver, REGION, TARGETING_KEY};
pub use hash::{bucket, BUCKETS};
pub use history::{flag_history, FlagHistoryEntry, HISTORY_MAX};
pub use rollout::{
    advance, guard_degraded, percent_of, position, Position, RolloutEvent, RolloutProgress,
};
pub use set::{ofrep_key, FlagSet, Lookup};
pub use spec::{
    AvailabilityRule, Condition, Flag, FlagSpec, Guard, Op, Rollout, Rule, Scope, Step,
    VariantType, Weighted,
};

#[cfg(test)]
mod tests;
