//! Regional probe assignment: the rendezvous rule of `gossip::rendezvous`, judged from outside.
//!
//! For [`PROBE_CHECKS`] synthetic checks in every region, the claimants of a (check, region)
//! are the live nodes of that region that, by their own view of the region's live members,
//! own it. Sampled every [`SAMPLE_INTERVAL_US`] of virtual time (reading the nodes, adding no
//! event, so a run's trajectory does not change), the watch records the longest stretch a
//! (check, region) whose region had a live node went without any claimant (a crashed prober
//! not yet detected), and how often two claimed at once (a split view). After the heal, with
//! membership settled, every (check, region) with a live node must have exactly one claimant.

use std::collections::BTreeMap;

use statusmesh_gossip::{rendezvous, Node};

/// Synthetic checks whose assignment is watched.
pub const PROBE_CHECKS: usize = 16;
/// How often claims are sampled, in microseconds of virtual time.
pub const SAMPLE_INTERVAL_US: u64 = 250_000;

/// The synthetic service of the watched checks.
const SERVICE: &str = "probe-sim";

/// The claimants of each (check, region): ids of live nodes of the region that own it.
pub(crate) fn claimants<'a>(
    live: impl Iterator<Item = &'a Node> + Clone,
    regions: &[String],
) -> BTreeMap<(usize, String), Vec<String>> {
    let mut out = BTreeMap::new();
    for region in regions {
        let in_region: Vec<&Node> = live
            .clone()
            .filter(|n| n.region() == region.as_str())
            .collect();
        if in_region.is_empty() {
            continue;
        }
        let views: Vec<(&Node, Vec<String>)> = in_region
            .iter()
            .map(|n| (*n, rendezvous::live_members_in(n, region)))
            .collect();
        // The nodes of a region mostly share one view: each check's owner is computed once
        // per distinct view (it is what `rendezvous::owns` computes for each node).
        let mut distinct: Vec<Vec<&str>> = Vec::new();
        let mut view_of: Vec<usize> = Vec::with_capacity(views.len());
        for (_, members) in &views {
            let refs: Vec<&str> = members.iter().map(String::as_str).collect();
            let at = distinct.iter().position(|d| *d == refs).unwrap_or_else(|| {
                distinct.push(refs);
                distinct.len() - 1
            });
            view_of.push(at);
        }
        for check in 0..PROBE_CHECKS {
            let key = rendezvous::probe_key(SERVICE, &format!("c{check}"), region);
            let owner_of: Vec<Option<&str>> = distinct
                .iter()
                .map(|members| rendezvous::owner(&key, members))
                .collect();
            let owners: Vec<String> = views
                .iter()
                .zip(&view_of)
                .filter(|((n, _), at)| owner_of[**at] == Some(n.id()))
                .map(|((n, _), _)| n.id().to_owned())
                .collect();
            out.insert((check, region.clone()), owners);
        }
    }
    out
}

/// What the samples showed over a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeWatch {
    /// When the next sample is due, in microseconds.
    pub(crate) next_sample_us: u64,
    /// Since when each (check, region) has had no claimant, while it has none.
    unclaimed_since_us: BTreeMap<(usize, String), u64>,
    /// The longest stretch without a claimant, in milliseconds.
    pub max_gap_ms: u64,
    /// (check, region) samples with more than one claimant (a split view under faults).
    pub split_samples: u64,
    /// (check, region) samples taken.
    pub key_samples: u64,
    pub samples: u64,
    /// When every (check, region) had exactly one claimant at the end, after the heal.
    pub settled_after_heal_ms: Option<u64>,
    /// End checks that found membership not yet settled (the run then converged again).
    pub unsettled_at_end: u64,
}

impl ProbeWatch {
    /// Records one sample at `now_us`.
    pub(crate) fn sample(&mut self, now_us: u64, claims: &BTreeMap<(usize, String), Vec<String>>) {
        self.samples += 1;
        self.next_sample_us = now_us + SAMPLE_INTERVAL_US;
        for (key, owners) in claims {
            self.key_samples += 1;
            if owners.len() > 1 {
                self.split_samples += 1;
            }
            if owners.is_empty() {
                self.unclaimed_since_us.entry(key.clone()).or_insert(now_us);
            } else if let Some(since) = self.unclaimed_since_us.remove(key) {
                self.max_gap_ms = self.max_gap_ms.max((now_us - since) / 1_000);
            }
        }
        // A region with no live node left has nothing to claim: its gap is not the rule's.
        self.unclaimed_since_us
            .retain(|key, _| claims.contains_key(key));
    }

    /// The longest stretch so far, counting stretches still open at `now_us`.
    pub fn max_gap_ms_at(&self, now_us: u64) -> u64 {
        self.unclaimed_since_us
            .values()
            .map(|since| (now_us - since) / 1_000)
            .fold(self.max_gap_ms, u64::max)
    }
}

/// The first (check, region) that does not have exactly one claimant, with its claimants.
pub(crate) fn not_exactly_one(
    claims: &BTreeMap<(usize, String), Vec<String>>,
) -> Option<(usize, String, Vec<String>)> {
    claims
        .iter()
        .find(|(_, owners)| owners.len() != 1)
        .map(|((check, region), owners)| (*check, region.clone(), owners.clone()))
}

impl crate::sim::Sim {
    /// Samples who claims each watched (check, region) now.
    pub(crate) fn sample_probes(&mut self) {
        let regions = self.out.region_names.clone();
        let claims = claimants(self.slots.iter().filter_map(|s| s.node.as_ref()), &regions);
        self.out.probes.sample(self.now_us, &claims);
    }

    /// After the heal: exactly one prober per (check, region) that has a live node. False
    /// while membership has not settled (the caller waits), and after a failure: when it has
    /// not settled within the liveness bound after the heal.
    pub(crate) fn check_probe_owners(&mut self) -> bool {
        let regions = self.out.region_names.clone();
        let claims = claimants(self.slots.iter().filter_map(|s| s.node.as_ref()), &regions);
        self.out.probes.sample(self.now_us, &claims);
        let since_heal_us = self.now_us - self.out.heal_us;
        match not_exactly_one(&claims) {
            None => {
                self.out.probes.settled_after_heal_ms = Some(since_heal_us / 1_000);
                true
            }
            Some(_) if since_heal_us <= self.spec.plan.liveness_bound_ms * 1_000 => {
                self.out.probes.unsettled_at_end += 1;
                false
            }
            Some((check, region, owners)) => {
                // What each live node of the region thinks of its region's members.
                let views = self
                    .slots
                    .iter()
                    .filter_map(|s| s.node.as_ref())
                    .filter(|n| n.region() == region.as_str())
                    .map(|n| {
                        let states: Vec<String> = n
                            .peers()
                            .iter()
                            .filter(|(_, p)| p.region == region)
                            .map(|(id, _)| format!("{id}={:?}", n.member_state(id)))
                            .collect();
                        format!("{} sees {}", n.id(), states.join(" "))
                    })
                    .collect();
                self.fail(crate::failure::Failure::ProbeOwners {
                    check,
                    region,
                    owners,
                    views,
                });
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(list: &[(usize, &str, &[&str])]) -> BTreeMap<(usize, String), Vec<String>> {
        list.iter()
            .map(|(c, r, o)| {
                (
                    (*c, r.to_string()),
                    o.iter().map(|s| s.to_string()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn a_gap_is_measured_from_the_first_unclaimed_sample_to_the_next_claim() {
        let mut watch = ProbeWatch::default();
        watch.sample(0, &claims(&[(0, "eu", &["eu-1"])]));
        watch.sample(250_000, &claims(&[(0, "eu", &[])]));
        watch.sample(500_000, &claims(&[(0, "eu", &[])]));
        assert_eq!(watch.max_gap_ms_at(750_000), 500);
        watch.sample(1_250_000, &claims(&[(0, "eu", &["eu-2"])]));
        assert_eq!(watch.max_gap_ms, 1_000);
        watch.sample(1_500_000, &claims(&[(0, "eu", &["eu-1", "eu-2"])]));
        assert_eq!(watch.split_samples, 1);
        assert_eq!(
            not_exactly_one(&claims(&[(0, "eu", &["eu-1", "eu-2"])])),
            Some((0, "eu".into(), vec!["eu-1".into(), "eu-2".into()]))
        );
    }
}
