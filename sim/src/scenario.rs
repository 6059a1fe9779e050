//! Scenarios: named fault mixes and workloads, and the swarm mix a seed picks.
//!
//! A [`Plan`] is everything a run does apart from the topology and the seed. Named scenarios
//! are fixed plans (their random choices, such as which region is cut off, are drawn from the
//! run's seed); `swarm` draws the plan itself from the seed, the way TigerBeetle's VOPR does.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use statusmesh_gossip::node::EpochConfig;

/// Every scenario name `run --scenario` accepts, in the order the tests sweep them.
pub const SCENARIOS: [&str; 22] = [
    "steady",
    "broadcast",
    "burst",
    "region-partition",
    "one-way-partition",
    "continent-split",
    "isolate-node",
    "random-halves",
    "flapping",
    "lossy",
    "crash-restart",
    "empty-disk-restart",
    "clock-skew",
    "swarm",
    "rollover",
    "rollover-concurrent",
    "rollover-partition",
    "rollover-crash",
    "swarm-epochs",
    "probes",
    "webhooks",
    "rolling-upgrade",
];

/// How a partition chooses the side that is cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionMode {
    /// One region, drawn from the seed.
    Region,
    /// The Americas (longitude below -30°) against the rest, or Asia-Pacific (above 60°)
    /// against the rest, drawn from the seed; a region cut when one side would be empty.
    Continent,
    /// One node, drawn from the seed.
    IsolateNode,
    /// Every node flips a coin.
    RandomHalves,
}

impl PartitionMode {
    /// The name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            PartitionMode::Region => "region",
            PartitionMode::Continent => "continent",
            PartitionMode::IsolateNode => "isolate-node",
            PartitionMode::RandomHalves => "random-halves",
        }
    }
}

/// A partition during the safety phase.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionPlan {
    pub mode: PartitionMode,
    /// False: only frames from the cut-off side to the rest are lost (one-way).
    pub symmetric: bool,
    /// When the partition starts, ms after the start of the run.
    pub start_ms: u64,
    /// `Some((on_ms, off_ms))`: the partition flaps, cut for `on_ms` then whole for `off_ms`.
    pub flapping: Option<(u64, u64)>,
}

/// Crashes during the safety phase.
#[derive(Debug, Clone, PartialEq)]
pub struct CrashPlan {
    /// Mean time between crashes anywhere in the mesh, in milliseconds.
    pub interval_ms: u64,
    /// How long a crashed node stays down: uniform in this range, in milliseconds.
    pub down_ms: (u64, u64),
    /// Probability that a crash loses the disk (restart with an empty replica).
    pub empty_disk_probability: f64,
    /// Most nodes down at once, so the mesh keeps a majority running.
    pub down_max: usize,
}

/// Network and node faults of the safety phase. The liveness phase switches all of them off.
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    pub partition: Option<PartitionPlan>,
    /// Probability that a frame is lost.
    pub loss: f64,
    /// Probability that a frame is delivered twice.
    pub duplicate: f64,
    /// Extra uniform delay up to this many ms on every frame, so frames overtake each other.
    pub reorder_ms: u64,
    /// Probability that a frame is delayed by a spike.
    pub spike_probability: f64,
    /// A spike's extra delay, uniform in this range, in milliseconds.
    pub spike_ms: (u64, u64),
    pub crash: Option<CrashPlan>,
    /// Each node's clock is off by up to this many ms either way (fixed per node).
    pub clock_skew_ms: u64,
}

impl Faults {
    /// No faults at all.
    pub fn none() -> Self {
        Self {
            partition: None,
            loss: 0.0,
            duplicate: 0.0,
            reorder_ms: 0,
            spike_probability: 0.0,
            spike_ms: (0, 0),
            crash: None,
            clock_skew_ms: 0,
        }
    }

    /// A one-line summary for reports, the same for the same faults.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(p) = &self.partition {
            let mut text = format!(
                "partition {} {}",
                p.mode.as_str(),
                if p.symmetric { "symmetric" } else { "one-way" }
            );
            if let Some((on, off)) = p.flapping {
                text.push_str(&format!(" flapping {on}/{off} ms"));
            }
            parts.push(text);
        }
        if self.loss > 0.0 {
            parts.push(format!("loss {:.1}%", self.loss * 100.0));
        }
        if self.duplicate > 0.0 {
            parts.push(format!("duplication {:.1}%", self.duplicate * 100.0));
        }
        if self.reorder_ms > 0 {
            parts.push(format!("reorder {} ms", self.reorder_ms));
        }
        if self.spike_probability > 0.0 {
            parts.push(format!(
                "delay spikes {:.1}% of {}-{} ms",
                self.spike_probability * 100.0,
                self.spike_ms.0,
                self.spike_ms.1
            ));
        }
        if let Some(c) = &self.crash {
            parts.push(format!(
                "crashes every ~{} ms, down {}-{} ms, {:.0}% lose the disk",
                c.interval_ms,
                c.down_ms.0,
                c.down_ms.1,
                c.empty_disk_probability * 100.0
            ));
        }
        if self.clock_skew_ms > 0 {
            parts.push(format!("clock skew ±{} ms", self.clock_skew_ms));
        }
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

/// Forced rollovers: at several moments two or three nodes in different regions call
/// `Node::propose_rollover` for one service at the same instant (concurrent proposals).
#[derive(Debug, Clone, PartialEq)]
pub struct ForcedRollovers {
    /// The first moment, ms after the start of the run.
    pub first_ms: u64,
    /// Time between moments, in milliseconds.
    pub interval_ms: u64,
    /// How many nodes propose at each moment: uniform in this range (each in another region
    /// while there are regions left).
    pub proposers: (usize, usize),
}

/// The proposer crashes right after each rollover it proposes, and restarts.
#[derive(Debug, Clone, PartialEq)]
pub struct ProposerCrash {
    /// How long it stays down: uniform in this range, in milliseconds.
    pub down_ms: (u64, u64),
    /// Probability that the frames of the proposal never leave (it crashed mid-broadcast).
    pub drop_frames_probability: f64,
    /// Most nodes down at once, so the mesh keeps a majority running.
    pub down_max: usize,
}

/// The epoch part of a plan: when documents roll over, and the epoch faults.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochPlan {
    /// The nodes' rollover triggers (`Config::epoch`).
    pub config: EpochConfig,
    pub forced: Option<ForcedRollovers>,
    pub proposer_crash: Option<ProposerCrash>,
    /// While a partition is on, this share of writes is made by a node of the cut-off side
    /// (so that writes made while isolated exist and must survive the rollovers).
    pub cut_write_share: f64,
}

impl EpochPlan {
    /// The default triggers of `Config::wan()`, no epoch faults.
    pub fn default_triggers() -> Self {
        Self {
            config: EpochConfig::default(),
            forced: None,
            proposer_crash: None,
            cut_write_share: 0.0,
        }
    }

    /// Rollover above `changes` changes per epoch, proposals at most a second apart.
    fn low(changes: usize) -> Self {
        Self {
            config: EpochConfig {
                history_changes_max: changes,
                propose_interval_ms: 1_000,
                ..EpochConfig::default()
            },
            ..Self::default_triggers()
        }
    }

    /// A one-line summary for reports, the same for the same plan.
    pub fn summary(&self) -> String {
        let c = &self.config;
        let mut parts = Vec::new();
        if c.history_changes_max == 0 && c.history_bytes_max == 0 && c.age_ms_max == 0 {
            parts.push("rollover off".to_owned());
        } else {
            let mut text = format!(
                "rollover above {} changes or {} bytes",
                c.history_changes_max, c.history_bytes_max
            );
            if c.age_ms_max > 0 {
                text.push_str(&format!(" or {} ms of age", c.age_ms_max));
            }
            text.push_str(&format!(", proposals {} ms apart", c.propose_interval_ms));
            parts.push(text);
        }
        if let Some(f) = &self.forced {
            parts.push(format!(
                "forced concurrent proposals by {}-{} nodes every {} ms from {} ms",
                f.proposers.0, f.proposers.1, f.interval_ms, f.first_ms
            ));
        }
        if let Some(p) = &self.proposer_crash {
            parts.push(format!(
                "the proposer crashes after proposing (disk kept on every other crash), down {}-{} ms, {:.0}% before its frames leave",
                p.down_ms.0,
                p.down_ms.1,
                p.drop_frames_probability * 100.0
            ));
        }
        if self.cut_write_share > 0.0 {
            parts.push(format!(
                "{:.0}% of writes on the cut-off side while partitioned",
                self.cut_write_share * 100.0
            ));
        }
        parts.join(", ")
    }
}

/// What clients write.
#[derive(Debug, Clone, PartialEq)]
pub enum Workload {
    /// A status write every `interval_ms` (±50%) by a random live node about its own region;
    /// with `burst_probability` a write is a burst of `burst_size` writes at once. A write
    /// repeats the cell's value with `heartbeat_probability` (liveness only, no change).
    Flips {
        interval_ms: u64,
        services: usize,
        components: usize,
        burst_probability: f64,
        burst_size: usize,
        heartbeat_probability: f64,
    },
    /// One node of every region writes once, `spacing_ms` apart: the all-regions broadcast.
    Broadcast { spacing_ms: u64 },
}

/// Everything a run does apart from the topology and the seed.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub scenario: String,
    pub faults: Faults,
    pub workload: Workload,
    /// Length of the safety phase (faults on, writes on), in milliseconds.
    pub safety_ms: u64,
    /// The liveness phase must converge within this many milliseconds after the heal.
    pub liveness_bound_ms: u64,
    /// Quiet time after convergence over which idle traffic is measured, in milliseconds.
    pub idle_ms: u64,
    /// Simulated SSE subscribers; the first one roams between nodes.
    pub subscribers: usize,
    /// The roaming subscriber reconnects to another node this often, in milliseconds.
    pub roam_interval_ms: u64,
    /// Rollover triggers and epoch faults.
    pub epochs: EpochPlan,
    /// A rolling upgrade: each node's first incarnation emulates the previous release (frame
    /// versions up to 2, as `statusmesh run --protocol-max 2`), each restart comes back at
    /// this release's ranges, so that old and new nodes run side by side.
    pub upgrade: bool,
}

/// Longest safety phase a plan may ask for: a day of simulated time.
pub const SAFETY_MS_MAX: u64 = 24 * 3600 * 1000;

impl Plan {
    /// The plan of a named scenario. `duration_ms` overrides the safety phase length. The RNG
    /// is the run's: `swarm` draws its fault mix from it.
    pub fn named(
        name: &str,
        duration_ms: Option<u64>,
        rng: &mut ChaCha8Rng,
    ) -> Result<Self, String> {
        let flips = Workload::Flips {
            interval_ms: 1_000,
            services: 2,
            components: 4,
            burst_probability: 0.0,
            burst_size: 1,
            heartbeat_probability: 0.1,
        };
        let partition = |mode, symmetric, flapping| {
            Some(PartitionPlan {
                mode,
                symmetric,
                start_ms: 5_000,
                flapping,
            })
        };
        let mut plan = Plan {
            scenario: name.to_owned(),
            faults: Faults::none(),
            workload: flips.clone(),
            safety_ms: 120_000,
            liveness_bound_ms: 60_000,
            idle_ms: 10_000,
            subscribers: 3,
            roam_interval_ms: 20_000,
            epochs: EpochPlan::default_triggers(),
            upgrade: false,
        };
        // Steady writes under load for the epoch scenarios: ~10 changes per second.
        let load = Workload::Flips {
            interval_ms: 100,
            services: 2,
            components: 4,
            burst_probability: 0.0,
            burst_size: 1,
            heartbeat_probability: 0.1,
        };
        match name {
            "steady" => plan.safety_ms = 600_000,
            "broadcast" => {
                plan.workload = Workload::Broadcast { spacing_ms: 1_000 };
                plan.safety_ms = 0;
            }
            "burst" => {
                plan.workload = Workload::Flips {
                    interval_ms: 2_000,
                    services: 3,
                    components: 6,
                    burst_probability: 0.2,
                    burst_size: 40,
                    heartbeat_probability: 0.1,
                }
            }
            "region-partition" => {
                plan.faults.partition = partition(PartitionMode::Region, true, None)
            }
            "one-way-partition" => {
                plan.faults.partition = partition(PartitionMode::Region, false, None)
            }
            "continent-split" => {
                plan.faults.partition = partition(PartitionMode::Continent, true, None)
            }
            "isolate-node" => {
                plan.faults.partition = partition(PartitionMode::IsolateNode, true, None)
            }
            "random-halves" => {
                plan.faults.partition = partition(PartitionMode::RandomHalves, true, None)
            }
            "flapping" => {
                plan.faults.partition = partition(PartitionMode::Region, true, Some((5_000, 5_000)))
            }
            "lossy" => {
                plan.faults.loss = 0.2;
                plan.faults.duplicate = 0.05;
                plan.faults.reorder_ms = 50;
                plan.faults.spike_probability = 0.02;
                plan.faults.spike_ms = (200, 3_000);
            }
            "crash-restart" => plan.faults.crash = Some(crash_plan(0.0)),
            // Regional probe assignment (checker::probes) under crashes and a node cut off
            // from its region: every check still has one prober per region after the heal.
            "probes" => {
                plan.faults.crash = Some(crash_plan(0.0));
                plan.faults.partition = partition(PartitionMode::IsolateNode, true, None);
            }
            // Webhook senders by rendezvous (senders, checker::webhooks) under crashes and a
            // node cut off from the mesh: every transition reaches every subscription after
            // the heal. Rollover off, so that no history after a subscription's start is
            // compacted; ~120 transitions, far below TRANSITIONS_MAX.
            "webhooks" => {
                plan.faults.crash = Some(crash_plan(0.0));
                plan.faults.partition = partition(PartitionMode::IsolateNode, true, None);
                plan.epochs.config = EpochConfig::off();
            }
            "empty-disk-restart" => plan.faults.crash = Some(crash_plan(1.0)),
            // Crashes with their disk are the restarts of a rolling upgrade: every node starts
            // at the previous release and comes back at this one.
            "rolling-upgrade" => {
                plan.faults.crash = Some(crash_plan(0.0));
                plan.upgrade = true;
            }
            "clock-skew" => plan.faults.clock_skew_ms = 5_000,
            "swarm" => plan = swarm(rng),
            "rollover" => {
                plan.workload = load;
                plan.epochs = EpochPlan::low(40);
                plan.roam_interval_ms = 3_000;
            }
            "rollover-concurrent" => {
                plan.workload = load;
                plan.epochs = EpochPlan::low(200);
                plan.epochs.forced = Some(ForcedRollovers {
                    first_ms: 3_000,
                    interval_ms: 4_000,
                    proposers: (2, 3),
                });
                plan.roam_interval_ms = 3_000;
            }
            "rollover-partition" => {
                plan.workload = Workload::Flips {
                    interval_ms: 100,
                    services: 1,
                    components: 4,
                    burst_probability: 0.0,
                    burst_size: 1,
                    heartbeat_probability: 0.1,
                };
                plan.faults.partition = Some(PartitionPlan {
                    mode: PartitionMode::IsolateNode,
                    symmetric: true,
                    start_ms: 2_000,
                    flapping: None,
                });
                plan.epochs = EpochPlan::low(40);
                plan.epochs.cut_write_share = 0.2;
                plan.roam_interval_ms = 3_000;
            }
            "rollover-crash" => {
                plan.workload = load;
                plan.epochs = EpochPlan::low(40);
                plan.epochs.proposer_crash = Some(ProposerCrash {
                    down_ms: (1_000, 8_000),
                    drop_frames_probability: 0.5,
                    down_max: 3,
                });
                plan.roam_interval_ms = 3_000;
            }
            "swarm-epochs" => {
                plan = swarm(rng);
                plan.scenario = name.to_owned();
                plan.epochs = swarm_epochs(rng);
            }
            _ => {
                return Err(format!(
                    "unknown scenario {name:?}; scenarios are: {}",
                    SCENARIOS.join(", ")
                ))
            }
        }
        if let Some(duration_ms) = duration_ms {
            if duration_ms > SAFETY_MS_MAX {
                return Err(format!(
                    "--duration-s {} is above the limit of {} s",
                    duration_ms / 1_000,
                    SAFETY_MS_MAX / 1_000
                ));
            }
            plan.safety_ms = duration_ms;
        }
        Ok(plan)
    }
}

fn crash_plan(empty_disk_probability: f64) -> CrashPlan {
    CrashPlan {
        interval_ms: 10_000,
        down_ms: (2_000, 20_000),
        empty_disk_probability,
        down_max: 3,
    }
}

/// The swarm plan: the seed picks every fault, its strength and the workload.
fn swarm(rng: &mut ChaCha8Rng) -> Plan {
    let mut faults = Faults::none();
    if rng.random_bool(0.7) {
        let mode = match rng.random_range(0..4) {
            0 => PartitionMode::Region,
            1 => PartitionMode::Continent,
            2 => PartitionMode::IsolateNode,
            _ => PartitionMode::RandomHalves,
        };
        let flapping = rng
            .random_bool(0.3)
            .then(|| (rng.random_range(500..10_000), rng.random_range(500..10_000)));
        faults.partition = Some(PartitionPlan {
            mode,
            symmetric: rng.random_bool(0.6),
            start_ms: rng.random_range(0..10_000),
            flapping,
        });
    }
    if rng.random_bool(0.5) {
        faults.loss = rng.random_range(0.0..0.4);
    }
    if rng.random_bool(0.4) {
        faults.duplicate = rng.random_range(0.0..0.2);
    }
    if rng.random_bool(0.4) {
        faults.reorder_ms = rng.random_range(1..500);
    }
    if rng.random_bool(0.3) {
        faults.spike_probability = rng.random_range(0.0..0.1);
        faults.spike_ms = (100, rng.random_range(200..10_000));
    }
    if rng.random_bool(0.5) {
        faults.crash = Some(CrashPlan {
            interval_ms: rng.random_range(2_000..20_000),
            down_ms: (500, rng.random_range(1_000..30_000)),
            empty_disk_probability: rng.random_range(0.0..1.0),
            down_max: rng.random_range(1..4),
        });
    }
    if rng.random_bool(0.3) {
        faults.clock_skew_ms = rng.random_range(1..10_000);
    }
    let workload = Workload::Flips {
        interval_ms: rng.random_range(50..2_000),
        services: rng.random_range(1..4),
        components: rng.random_range(1..6),
        burst_probability: if rng.random_bool(0.3) { 0.1 } else { 0.0 },
        burst_size: rng.random_range(2..30),
        heartbeat_probability: rng.random_range(0.0..0.5),
    };
    Plan {
        scenario: "swarm".to_owned(),
        faults,
        workload,
        safety_ms: rng.random_range(10_000..40_000),
        liveness_bound_ms: 60_000,
        idle_ms: 2_000,
        subscribers: 3,
        roam_interval_ms: rng.random_range(2_000..15_000),
        epochs: EpochPlan::default_triggers(),
        upgrade: false,
    }
}

/// The epoch part of `swarm-epochs`: a low bound, and forced concurrent proposals on some
/// seeds. Drawn after the swarm plan, so a seed's faults are those of `swarm`.
fn swarm_epochs(rng: &mut ChaCha8Rng) -> EpochPlan {
    let mut epochs = EpochPlan::low(rng.random_range(10..120));
    epochs.config.propose_interval_ms = rng.random_range(200..5_000);
    if rng.random_bool(0.5) {
        epochs.forced = Some(ForcedRollovers {
            first_ms: rng.random_range(1_000..10_000),
            interval_ms: rng.random_range(1_000..10_000),
            proposers: (2, 3),
        });
    }
    if rng.random_bool(0.3) {
        epochs.cut_write_share = rng.random_range(0.0..0.5);
    }
    epochs
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn every_listed_scenario_has_a_plan_and_others_are_refused() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for name in SCENARIOS {
            let plan = Plan::named(name, None, &mut rng).expect(name);
            assert_eq!(plan.scenario, name);
        }
        let err = Plan::named("nope", None, &mut rng).expect_err("unknown");
        assert!(err.contains("nope") && err.contains("steady"), "{err}");
    }

    #[test]
    fn the_same_seed_draws_the_same_swarm_plan() {
        let a = Plan::named("swarm", None, &mut ChaCha8Rng::seed_from_u64(9)).expect("plan");
        let b = Plan::named("swarm", None, &mut ChaCha8Rng::seed_from_u64(9)).expect("plan");
        assert_eq!(a, b);
        let c = Plan::named("swarm-epochs", None, &mut ChaCha8Rng::seed_from_u64(9)).expect("plan");
        assert_eq!(
            c.faults, a.faults,
            "swarm-epochs keeps the swarm's fault mix"
        );
        assert!(c.epochs.config.history_changes_max < 200);
    }
}
