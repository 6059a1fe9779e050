//! The firing set: per target (service, component, region), the alerts firing now, keyed
//! by fingerprint, and what they make of the target's observation.
//!
//! Alertmanager groups alerts as its route says, and one component may hear from several
//! groups; so the set is keyed by fingerprint, never by `groupKey`, and a target reads the
//! worst state of all its firing alerts, `operational` once every one has resolved.
//!
//! Applying a delivery is idempotent (the same delivery twice leaves the same set), which
//! makes Alertmanager's retries harmless. Deliveries out of order (an HA pair, a retry that
//! overtook a newer notification) are told apart by `startsAt`, which names an alert's
//! episode: a firing alert no newer than the episode last seen resolving is stale, and so is
//! a resolution of an episode older than the one firing. Nothing here is unbounded: at most
//! [`FIRING_ALERTS_MAX`] firing alerts and [`RESOLVED_KEPT_MAX`] remembered resolutions, and
//! an alert that Alertmanager stops repeating is dropped after the firing TTL.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use statusmesh_crdt::liveness::Fnv64;
use statusmesh_crdt::model::{MESSAGE_LEN_MAX, NAME_LEN_MAX};
use statusmesh_crdt::{Impact, Name, State};

use super::payload::{truncate, Delivery, Skip, Status, Target};
use crate::http::records::base36;

/// Most firing alerts held, over every target; a new one beyond it is skipped (`limit`).
pub const FIRING_ALERTS_MAX: usize = 10_000;
/// Most resolutions remembered (to recognise stale deliveries); the oldest go first.
pub const RESOLVED_KEPT_MAX: usize = 10_000;

/// Every target the receiver has heard of, with its alerts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FiringSet {
    pub(super) targets: BTreeMap<Target, TargetAlerts>,
}

/// One target's alerts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetAlerts {
    /// Firing alerts by fingerprint.
    pub firing: BTreeMap<String, Firing>,
    /// Resolved alerts by fingerprint: the episode that resolved.
    pub resolved: BTreeMap<String, Resolved>,
    /// Who last spoke about the target (`alertmanager.<receiver>`).
    pub reporter: String,
    /// The incident opened for the target, while it is open.
    pub incident: Option<Name>,
}

/// A firing alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Firing {
    pub state: State,
    pub name: String,
    pub starts_at_ms: Option<i64>,
    /// When a delivery last listed it (this node's clock).
    pub seen_at_ms: u64,
    /// The hash of the receiver and `groupKey` of the delivery that last listed it.
    pub group: u64,
    pub incident: bool,
}

/// A resolved alert, remembered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resolved {
    pub starts_at_ms: Option<i64>,
    pub seen_at_ms: u64,
}

/// What applying a delivery did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Targets whose observation is to be written: each an alert the set took names, and
    /// each whose firing alerts changed otherwise (and that the writer may write).
    pub touched: BTreeSet<Target>,
    /// Alerts the set did not take: fingerprint and why.
    pub skipped: Vec<(String, Skip)>,
}

/// The observation a target's alerts make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub state: State,
    pub message: String,
    pub reporter: String,
    pub firing: usize,
}

/// What to do about a target's incident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncidentStep {
    Open {
        id: Name,
        title: String,
        impact: Impact,
    },
    Resolve {
        id: Name,
    },
}

/// `a` is strictly older than `b`, when both are known.
fn older(a: Option<i64>, b: Option<i64>) -> bool {
    matches!((a, b), (Some(a), Some(b)) if a < b)
}

/// `a` is no newer than `b`, when both are known.
fn not_newer(a: Option<i64>, b: Option<i64>) -> bool {
    matches!((a, b), (Some(a), Some(b)) if a <= b)
}

impl FiringSet {
    /// Applies one delivery at `now_ms`. Alerts not listed for `keep_ms` are dropped first
    /// (Alertmanager repeats firing alerts every `repeat_interval`). `may_write` says which
    /// targets the writer may write: the delivery's own were checked before; others it may
    /// not are left as they are.
    pub fn apply(
        &mut self,
        delivery: &Delivery,
        now_ms: u64,
        keep_ms: u64,
        may_write: impl Fn(&Target) -> bool,
    ) -> Outcome {
        let mut outcome = Outcome::default();
        self.expire(now_ms, keep_ms, &may_write, &mut outcome);
        let reporter = reporter(&delivery.receiver);
        let mut firing_total = self.firing_count();
        for alert in &delivery.alerts {
            let entry = self.targets.entry(alert.target.clone()).or_default();
            let fingerprint = &alert.fingerprint;
            match alert.status {
                Status::Firing => {
                    let resolved = entry.resolved.get(fingerprint);
                    if resolved.is_some_and(|r| not_newer(alert.starts_at_ms, r.starts_at_ms)) {
                        // The episode that already resolved, delivered late.
                        outcome.skipped.push((fingerprint.clone(), Skip::Stale));
                        continue;
                    }
                    let known = entry.firing.contains_key(fingerprint);
                    if !known && firing_total >= FIRING_ALERTS_MAX {
                        outcome.skipped.push((fingerprint.clone(), Skip::Limit));
                        continue;
                    }
                    if !known {
                        firing_total += 1;
                    }
                    entry.resolved.remove(fingerprint);
                    let starts_at_ms = entry
                        .firing
                        .get(fingerprint)
                        .map_or(alert.starts_at_ms, |f| {
                            f.starts_at_ms.max(alert.starts_at_ms)
                        });
                    entry.firing.insert(
                        fingerprint.clone(),
                        Firing {
                            state: alert.state,
                            name: alert.name.clone(),
                            starts_at_ms,
                            seen_at_ms: now_ms,
                            group: delivery.group,
                            incident: alert.incident,
                        },
                    );
                }
                Status::Resolved => {
                    let firing = entry.firing.get(fingerprint);
                    if firing.is_some_and(|f| older(alert.starts_at_ms, f.starts_at_ms)) {
                        // The resolution of an earlier episode than the one firing now.
                        outcome.skipped.push((fingerprint.clone(), Skip::Stale));
                        continue;
                    }
                    if entry.firing.remove(fingerprint).is_some() {
                        firing_total -= 1;
                    }
                    entry.resolved.insert(
                        fingerprint.clone(),
                        Resolved {
                            starts_at_ms: alert.starts_at_ms,
                            seen_at_ms: now_ms,
                        },
                    );
                }
            }
            // Taken (a skipped alert touches nothing): the target is written, even when
            // unchanged, which refreshes its heartbeat.
            entry.reporter.clone_from(&reporter);
            outcome.touched.insert(alert.target.clone());
        }
        if delivery.complete {
            self.reconcile(delivery, &may_write, &mut outcome);
        }
        self.bound_resolved();
        outcome
    }

    /// Records the incident opened for `target` (`None`: resolved).
    pub fn set_incident(&mut self, target: &Target, incident: Option<Name>) {
        if let Some(entry) = self.targets.get_mut(target) {
            entry.incident = incident;
        }
    }

    /// The incident open for `target`, if any.
    pub fn incident(&self, target: &Target) -> Option<Name> {
        self.targets.get(target)?.incident.clone()
    }

    /// Forgets targets with nothing left to remember.
    pub fn compact(&mut self) {
        self.targets.retain(|_, entry| {
            !(entry.firing.is_empty() && entry.resolved.is_empty() && entry.incident.is_none())
        });
    }

    /// Firing alerts held, over every target.
    pub fn firing_count(&self) -> usize {
        self.targets.values().map(|t| t.firing.len()).sum()
    }

    /// Resolutions remembered, over every target.
    pub fn resolved_count(&self) -> usize {
        self.targets.values().map(|t| t.resolved.len()).sum()
    }

    /// The observation `target`'s alerts make: the worst state of those firing, and a
    /// message that names them (most severe first), or `operational` when none fires.
    /// `receiver` names the reporter of a target the set does not hold.
    pub fn observed(&self, target: &Target, receiver: &str) -> Observed {
        let entry = self.targets.get(target);
        let reporter = entry
            .map(|e| e.reporter.clone())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| reporter(receiver));
        let mut firing: Vec<(&String, &Firing)> =
            entry.map(|e| e.firing.iter().collect()).unwrap_or_default();
        firing.sort_by(|(fa, a), (fb, b)| {
            (b.state.severity(), &a.name, fa).cmp(&(a.state.severity(), &b.name, fb))
        });
        let Some((_, worst)) = firing.first() else {
            return Observed {
                state: State::Operational,
                message: "all alerts resolved".to_owned(),
                reporter,
                firing: 0,
            };
        };
        let names: Vec<&str> = firing.iter().map(|(_, f)| f.name.as_str()).collect();
        Observed {
            state: worst.state,
            message: message(&names),
            reporter,
            firing: firing.len(),
        }
    }

    /// The incident step `target` needs now: open one when an alert that asks for it fires
    /// and none is open; resolve the open one when nothing fires.
    pub fn incident_step(&self, target: &Target, now_ms: u64) -> Option<IncidentStep> {
        let entry = self.targets.get(target)?;
        match (&entry.incident, entry.firing.is_empty()) {
            (Some(id), true) => Some(IncidentStep::Resolve { id: id.clone() }),
            (None, false) if entry.firing.values().any(|f| f.incident) => {
                let observed = self.observed(target, "");
                // The episode's start names the incident, so a retried delivery opens the
                // same one instead of a second.
                let episode_ms = entry
                    .firing
                    .values()
                    .filter_map(|f| f.starts_at_ms)
                    .min()
                    .map_or(now_ms, |ms| u64::try_from(ms).unwrap_or(0));
                let worst = entry
                    .firing
                    .values()
                    .max_by_key(|f| f.state.severity())
                    .map_or("alert", |f| f.name.as_str());
                Some(IncidentStep::Open {
                    id: incident_id(target, episode_ms),
                    title: truncate(
                        &format!("{}: {worst}", target.component),
                        statusmesh_crdt::records::TITLE_LEN_MAX,
                    )
                    .to_owned(),
                    impact: impact(observed.state),
                })
            }
            _ => None,
        }
    }

    fn expire(
        &mut self,
        now_ms: u64,
        keep_ms: u64,
        may_write: &impl Fn(&Target) -> bool,
        outcome: &mut Outcome,
    ) {
        let live = |seen_at_ms: u64| seen_at_ms.saturating_add(keep_ms) >= now_ms;
        for (target, entry) in &mut self.targets {
            let before = entry.firing.len();
            entry.firing.retain(|_, f| live(f.seen_at_ms));
            if entry.firing.len() != before && may_write(target) {
                outcome.touched.insert(target.clone());
            }
            entry.resolved.retain(|_, r| live(r.seen_at_ms));
        }
    }

    /// A delivery that lists its whole group is the group's state: an alert of the group
    /// that it does not list no longer fires (it resolved while the resolution went
    /// elsewhere, or it is silenced now).
    fn reconcile(
        &mut self,
        delivery: &Delivery,
        may_write: &impl Fn(&Target) -> bool,
        outcome: &mut Outcome,
    ) {
        let listed: BTreeSet<&str> = delivery
            .alerts
            .iter()
            .map(|a| a.fingerprint.as_str())
            .chain(delivery.skipped.iter().map(|(f, _)| f.as_str()))
            .collect();
        for (target, entry) in &mut self.targets {
            if !may_write(target) {
                continue;
            }
            let before = entry.firing.len();
            entry.firing.retain(|fingerprint, f| {
                f.group != delivery.group || listed.contains(&**fingerprint)
            });
            if entry.firing.len() != before {
                outcome.touched.insert(target.clone());
            }
        }
    }

    fn bound_resolved(&mut self) {
        let excess = self.resolved_count().saturating_sub(RESOLVED_KEPT_MAX);
        if excess == 0 {
            return;
        }
        let mut all: Vec<(u64, Target, String)> = self
            .targets
            .iter()
            .flat_map(|(t, e)| {
                e.resolved
                    .iter()
                    .map(move |(f, r)| (r.seen_at_ms, t.clone(), f.clone()))
            })
            .collect();
        all.sort();
        for (_, target, fingerprint) in all.into_iter().take(excess) {
            if let Some(entry) = self.targets.get_mut(&target) {
                entry.resolved.remove(&fingerprint);
            }
        }
    }
}

/// `alertmanager.<receiver>` as a reporter name (lower case, other characters as `-`).
pub fn reporter(receiver: &str) -> String {
    const PREFIX: &str = "alertmanager";
    let cleaned: String = receiver
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(NAME_LEN_MAX - PREFIX.len() - 1)
        .collect();
    if cleaned.is_empty() {
        PREFIX.to_owned()
    } else {
        format!("{PREFIX}.{cleaned}")
    }
}

/// "2 alerts firing: A; B", within the observation's message bound ("(+N more)" when not
/// every name fits).
fn message(names: &[&str]) -> String {
    let head = match names.len() {
        1 => "1 alert firing: ".to_owned(),
        n => format!("{n} alerts firing: "),
    };
    let mut text = head;
    for (shown, name) in names.iter().enumerate() {
        let separator = if shown == 0 { "" } else { "; " };
        let rest = names.len() - shown;
        let more = format!(" (+{rest} more)");
        // Room for this name and, if others follow, the tail that counts them.
        let tail = if rest > 1 { more.len() + 16 } else { 0 };
        if text.len() + separator.len() + name.len() + tail > MESSAGE_LEN_MAX {
            text.push_str(&more);
            return text;
        }
        text.push_str(separator);
        text.push_str(name);
    }
    text
}

/// `am-<component>-<hash of the target>-<episode start in base 36>`: unique per target and
/// episode, within a name's 64 bytes.
fn incident_id(target: &Target, episode_ms: u64) -> Name {
    let mut hash = Fnv64::new();
    for part in [&target.service, &target.component, &target.region] {
        hash.write(part.as_str().as_bytes());
        hash.write(&[0]);
    }
    let component = truncate(target.component.as_str(), 32);
    let id = format!(
        "am-{component}-{:08x}-{}",
        hash.finish() as u32,
        base36(episode_ms)
    );
    // Every part is of a name's charset and at most 58 bytes in all: this always parses.
    Name::parse("id", &id).unwrap_or_else(|_| target.component.clone())
}

/// The incident impact of a state (as the page indicator reads it).
pub fn impact(state: State) -> Impact {
    match state {
        State::Operational | State::UnderMaintenance => Impact::None,
        State::DegradedPerformance => Impact::Minor,
        State::PartialOutage => Impact::Major,
        State::MajorOutage => Impact::Critical,
    }
}

#[cfg(test)]
#[path = "firing_tests.rs"]
mod tests;
