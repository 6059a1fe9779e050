//! k-of-n agreement: a probe-backed component's status from its regions' observations.
//!
//! A component probed from several regions is `major_outage` only when at least `down_when`
//! regions with fresh observations report it down; below that it shows the worst state that
//! `down_when` fresh regions agree on (each reports that state or worse). A stale observation
//! counts as "cannot see", never as down. Every fresh region that sees worse than the agreed
//! status gets an [`Advisory`], so a persistently failing region never hides behind the
//! majority. Pure: the view calls [`decide`] with what it read.

use serde::Serialize;

use crate::model::{Name, State};
use crate::view::Freshness;

/// One region's observation of the component, as the reader sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub region: Name,
    pub state: State,
    pub freshness: Freshness,
}

/// A region that sees the component worse than the agreed status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Advisory {
    pub region: Name,
    pub state: State,
    /// Fresh regions that report this state or worse.
    pub agreeing: usize,
    /// Regions probing the component.
    pub probing: usize,
    /// "major_outage as seen from ap-southeast, 1 of 3 regions".
    pub text: String,
}

/// The agreed status of a component and the advisories beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub status: State,
    /// `Stale` when no region's observation is fresh (the status is then the worst stale one,
    /// as for a component without a check).
    pub freshness: Freshness,
    pub advisories: Vec<Advisory>,
}

/// Decides the status of a component observed as `seen` by the regions probing it, of which
/// there are `probing` (at least `seen.len()`), when `down_when` fresh regions must agree.
/// `None` when no region has observed it.
pub fn decide(seen: &[Seen], probing: usize, down_when: usize) -> Option<Decision> {
    let k = down_when.max(1);
    let probing = probing.max(seen.len());
    let fresh: Vec<State> = seen
        .iter()
        .filter(|s| s.freshness == Freshness::Fresh)
        .map(|s| s.state)
        .collect();
    if fresh.is_empty() {
        let worst = seen.iter().map(|s| s.state).max_by_key(|s| s.severity())?;
        return Some(Decision {
            status: worst,
            freshness: Freshness::Stale,
            advisories: Vec::new(),
        });
    }
    let at_least = |state: State| {
        fresh
            .iter()
            .filter(|s| s.severity() >= state.severity())
            .count()
    };
    let status = match State::ALL.into_iter().rev().find(|s| at_least(*s) >= k) {
        Some(agreed) => agreed,
        // Fewer fresh regions than `down_when`: what every fresh region agrees on, and never
        // `major_outage`, which takes `down_when` of them.
        None => {
            let best = fresh
                .iter()
                .copied()
                .min_by_key(|s| s.severity())
                .unwrap_or(State::Operational);
            if best == State::MajorOutage {
                State::PartialOutage
            } else {
                best
            }
        }
    };
    let advisories = seen
        .iter()
        .filter(|s| s.freshness == Freshness::Fresh && s.state.severity() > status.severity())
        .map(|s| {
            let agreeing = at_least(s.state);
            Advisory {
                region: s.region.clone(),
                state: s.state,
                agreeing,
                probing,
                text: format!(
                    "{} as seen from {}, {agreeing} of {probing} regions",
                    s.state, s.region
                ),
            }
        })
        .collect();
    Some(Decision {
        status,
        freshness: Freshness::Fresh,
        advisories,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(list: &[(&str, State, bool)]) -> Vec<Seen> {
        list.iter()
            .map(|(region, state, fresh)| Seen {
                region: Name::parse("region", region).expect("name"),
                state: *state,
                freshness: if *fresh {
                    Freshness::Fresh
                } else {
                    Freshness::Stale
                },
            })
            .collect()
    }

    use State::{DegradedPerformance as Degraded, MajorOutage as Down, Operational as Up};

    #[test]
    fn one_region_down_of_three_is_an_advisory_not_an_outage() {
        let d = decide(
            &seen(&[("a", Up, true), ("b", Up, true), ("c", Down, true)]),
            3,
            2,
        )
        .expect("decided");
        assert_eq!(d.status, Up);
        assert_eq!(d.advisories.len(), 1);
        assert_eq!(d.advisories[0].region.as_str(), "c");
        assert_eq!(
            d.advisories[0].text,
            "major_outage as seen from c, 1 of 3 regions"
        );
    }

    #[test]
    fn down_when_regions_agreeing_make_a_major_outage() {
        let d = decide(
            &seen(&[("a", Down, true), ("b", Up, true), ("c", Down, true)]),
            3,
            2,
        )
        .expect("decided");
        assert_eq!(d.status, Down);
        assert!(d.advisories.is_empty());
    }

    #[test]
    fn the_worst_state_enough_regions_agree_on_wins() {
        // One down, one degraded: two regions agree on "degraded or worse".
        let d = decide(
            &seen(&[("a", Down, true), ("b", Degraded, true), ("c", Up, true)]),
            3,
            2,
        )
        .expect("decided");
        assert_eq!(d.status, Degraded);
        assert_eq!(d.advisories.len(), 1);
        assert_eq!(d.advisories[0].agreeing, 1);
    }

    #[test]
    fn stale_regions_cannot_see_and_never_count_as_down() {
        let d = decide(
            &seen(&[("a", Down, false), ("b", Down, true), ("c", Up, true)]),
            3,
            2,
        )
        .expect("decided");
        assert_eq!(d.status, Up);
        // Only one fresh region and it says down: not enough for an outage.
        let d = decide(&seen(&[("a", Down, false), ("b", Down, true)]), 3, 2).expect("decided");
        assert_eq!(d.status, State::PartialOutage);
        assert_eq!(d.freshness, Freshness::Fresh);
        // Nothing fresh at all: the worst stale value, marked stale.
        let d = decide(&seen(&[("a", Down, false)]), 3, 2).expect("decided");
        assert_eq!((d.status, d.freshness), (Down, Freshness::Stale));
        assert_eq!(decide(&[], 3, 2), None);
    }

    #[test]
    fn one_of_one_decides_alone() {
        let d = decide(&seen(&[("a", Down, true)]), 1, 1).expect("decided");
        assert_eq!(d.status, Down);
    }
}
