//! Staged rollouts: where a schedule stands, and what the controller records.
//!
//! A rollout is a list of steps (`percent`, `hold_ms`). Its position is a *stage*: stage 0
//! serves no one, stage `k` (1 to n) serves step `k - 1`'s percentage. From its start the
//! rollout moves one stage on each time a stage's hold has passed, so the position is a pure
//! function of (flag, availability, now):
//!
//! - while a guard component is at or worse than its threshold (mesh-wide), the rollout
//!   serves its *last safe stage* (the one before the current: it was held fully while the
//!   guards were healthy), at once, on every node, before anything is written;
//! - the controller ([`advance`]) records each step, each rollback (progress paused at the
//!   last safe stage) and each resume (the safe stage is held again in full from the heal)
//!   in the flag's [`RolloutProgress`]; those writes are the events and the audit trail.
//!   A paused rollout stays at its safe stage until the controller resumes it.

use serde::{Deserialize, Serialize};

use super::availability::AvailabilityView;
use super::spec::{Flag, Rollout};

/// What the controller recorded of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutProgress {
    /// 0: not started; `k`: step `k - 1` of the schedule.
    pub stage: usize,
    /// When this stage began.
    pub since_ms: u64,
    /// Set while a guard holds the rollout at its safe stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_since_ms: Option<u64>,
}

/// Where a rollout stands at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub stage: usize,
    /// When the stage began (schedule time).
    pub since_ms: u64,
    /// The share served, in percent.
    pub percent: u32,
    /// True while held at the last safe stage (a guard is degraded, or the controller has
    /// recorded a pause and not resumed yet).
    pub paused: bool,
}

/// What the controller records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "rollout", rename_all = "snake_case")]
pub enum RolloutEvent {
    /// The schedule reached `stage`.
    Advanced { stage: usize, percent: u32 },
    /// A guard degraded at `from`: held at `to`, the last safe stage.
    RolledBack {
        from: usize,
        to: usize,
        percent: u32,
    },
    /// The guards healed: `stage` is held again from now.
    Resumed { stage: usize, percent: u32 },
}

/// The share stage `stage` serves, in percent.
pub fn percent_of(rollout: &Rollout, stage: usize) -> u32 {
    match stage {
        0 => 0,
        k => rollout.steps.get(k - 1).map_or(100, |s| s.percent),
    }
}

/// Whether any guard of `rollout` is degraded now.
pub fn guard_degraded(rollout: &Rollout, availability: &AvailabilityView) -> bool {
    rollout.guard.iter().any(|g| {
        availability.at_or_worse(
            g.service.as_str(),
            g.component.as_str(),
            None,
            g.at_or_worse,
        )
    })
}

/// The stage the schedule reaches at `now_ms` from `progress` (or from the start).
fn scheduled(flag: &Flag, rollout: &Rollout, now_ms: u64) -> (usize, u64) {
    let (mut stage, mut since) = match &flag.progress {
        Some(p) => (p.stage, p.since_ms),
        None => (0, rollout.start_at_ms.unwrap_or(flag.updated_at_ms)),
    };
    let stages = rollout.steps.len();
    while stage < stages && now_ms >= since {
        let hold = match stage {
            0 => 0,
            k => rollout.steps[k - 1].hold_ms,
        };
        match since.checked_add(hold) {
            Some(next) if now_ms >= next => {
                since = next;
                stage += 1;
            }
            _ => break,
        }
    }
    (stage, since)
}

/// Where the rollout of `flag` stands at `now_ms`; `None` when it has none.
pub fn position(flag: &Flag, availability: &AvailabilityView, now_ms: u64) -> Option<Position> {
    let rollout = flag.spec.rollout.as_ref()?;
    if let Some(p) = flag
        .progress
        .as_ref()
        .filter(|p| p.paused_since_ms.is_some())
    {
        return Some(Position {
            stage: p.stage,
            since_ms: p.since_ms,
            percent: percent_of(rollout, p.stage),
            paused: true,
        });
    }
    let (stage, since_ms) = scheduled(flag, rollout, now_ms);
    if guard_degraded(rollout, availability) {
        let safe = stage.saturating_sub(1);
        return Some(Position {
            stage: safe,
            since_ms,
            percent: percent_of(rollout, safe),
            paused: true,
        });
    }
    Some(Position {
        stage,
        since_ms,
        percent: percent_of(rollout, stage),
        paused: false,
    })
}

/// What the controller should record for `flag` at `now_ms`, if anything: the new progress
/// and the event it is. Advances carry the schedule's time, so every node that records the
/// same step records the same value.
pub fn advance(
    flag: &Flag,
    availability: &AvailabilityView,
    now_ms: u64,
) -> Option<(RolloutProgress, RolloutEvent)> {
    let rollout = flag.spec.rollout.as_ref()?;
    let degraded = guard_degraded(rollout, availability);
    if let Some(p) = flag
        .progress
        .as_ref()
        .filter(|p| p.paused_since_ms.is_some())
    {
        if degraded {
            return None;
        }
        let progress = RolloutProgress {
            stage: p.stage,
            since_ms: now_ms,
            paused_since_ms: None,
        };
        let event = RolloutEvent::Resumed {
            stage: p.stage,
            percent: percent_of(rollout, p.stage),
        };
        return Some((progress, event));
    }
    let (stage, since_ms) = scheduled(flag, rollout, now_ms);
    if degraded {
        let to = stage.saturating_sub(1);
        let progress = RolloutProgress {
            stage: to,
            since_ms: now_ms,
            paused_since_ms: Some(now_ms),
        };
        let event = RolloutEvent::RolledBack {
            from: stage,
            to,
            percent: percent_of(rollout, to),
        };
        return Some((progress, event));
    }
    let recorded = flag.progress.as_ref().map_or(0, |p| p.stage);
    if stage == recorded {
        return None;
    }
    let progress = RolloutProgress {
        stage,
        since_ms,
        paused_since_ms: None,
    };
    let event = RolloutEvent::Advanced {
        stage,
        percent: percent_of(rollout, stage),
    };
    Some((progress, event))
}
