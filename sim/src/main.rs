//! The `statusmesh-sim` command: run one seed of a scenario, or a swarm of seeds.
//!
//! The only place of the simulator that does IO: it reads topologies, writes the SVG and
//! prints reports and progress. `sim/clippy.toml` bans IO everywhere else; the functions
//! here that do it say so with an `#[allow]`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use statusmesh_sim::{
    Request, GLOBAL_TOPOLOGY, GLOBAL_TOPOLOGY_PATH, SCENARIOS, SWARM_TOPOLOGY, SWARM_TOPOLOGY_PATH,
};

/// Most seeds one swarm may run.
const SEEDS_MAX: u64 = 10_000_000;
/// Most failures a swarm lists in full.
const FAILURES_LISTED_MAX: usize = 20;
/// Most threads one swarm may run seeds on.
const JOBS_MAX: usize = 256;
/// How far past the next seed to print a swarm's threads may run ahead, per thread: bounds
/// the results held back to print in seed order while one seed runs long.
const AHEAD_PER_JOB: u64 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "statusmesh-sim",
    version,
    about = "Deterministic simulator for statusmesh: the real gossip core under partitions, loss and crashes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one seed of one scenario and print its report.
    Run {
        /// A regions.toml (default: the embedded sim/topologies/global.toml, 200 nodes).
        #[arg(long)]
        topology: Option<PathBuf>,
        /// One of: steady, broadcast, burst, region-partition, one-way-partition,
        /// continent-split, isolate-node, random-halves, flapping, lossy, crash-restart,
        /// empty-disk-restart, clock-skew, swarm, rollover, rollover-concurrent,
        /// rollover-partition, rollover-crash, swarm-epochs, probes, webhooks, rolling-upgrade.
        #[arg(long, default_value = "steady")]
        scenario: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Redistribute the topology's region node counts to this many nodes.
        #[arg(long)]
        nodes: Option<usize>,
        /// Length of the safety phase (faults and writes on), in simulated seconds.
        #[arg(long)]
        duration_s: Option<u64>,
        /// Print the JSON report instead of the human one.
        #[arg(long)]
        json: bool,
        /// Write the SVG timeline to this file.
        #[arg(long)]
        svg: Option<PathBuf>,
        /// Run the seed twice and fail unless every output is byte-identical.
        #[arg(long)]
        check_determinism: bool,
    },
    /// Run many seeds, each with a fault mix drawn from the seed (VOPR-style swarm testing).
    Swarm {
        /// How many seeds to run.
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        /// The first seed; seeds run in order from it.
        #[arg(long, default_value_t = 1)]
        first_seed: u64,
        /// The scenario every seed runs: swarm (the seed picks the faults), swarm-epochs (the
        /// same with rollover at a low bound and forced concurrent proposals), or any other.
        #[arg(long, default_value = "swarm")]
        scenario: String,
        /// A regions.toml (default: the embedded sim/topologies/swarm.toml, 12 nodes).
        #[arg(long)]
        topology: Option<PathBuf>,
        /// Redistribute the topology's region node counts to this many nodes.
        #[arg(long)]
        nodes: Option<usize>,
        /// Threads to run seeds on (default: the available cores). The output is the same
        /// for any number: results print in seed order.
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// List the scenarios.
    Scenarios,
}

// The CLI reports a failure to start on stderr.
#[allow(clippy::disallowed_macros)]
fn main() -> ExitCode {
    match run_cli(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("statusmesh-sim: {e:#}");
            ExitCode::from(2)
        }
    }
}

// The CLI: prints reports and progress, and writes the SVG file it was asked for.
#[allow(clippy::disallowed_methods, clippy::disallowed_macros)]
fn run_cli(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Run {
            topology,
            scenario,
            seed,
            nodes,
            duration_s,
            json,
            svg,
            check_determinism,
        } => {
            let (topology_text, topology_arg) =
                read_topology(topology, GLOBAL_TOPOLOGY, GLOBAL_TOPOLOGY_PATH)?;
            let request = Request {
                seed,
                scenario,
                topology_text,
                topology_arg,
                nodes,
                duration_s,
            };
            // Progress goes to stderr, so that stdout stays the byte-identical report.
            let mut progress = |simulated_s: u64| eprintln!("run: {simulated_s} s simulated");
            let output = statusmesh_sim::run_with_progress(&request, &mut progress)
                .map_err(anyhow::Error::msg)?;
            if check_determinism {
                let again = statusmesh_sim::run(&request).map_err(anyhow::Error::msg)?;
                if again != output {
                    println!(
                        "determinism: FAIL, seed {seed} gave different output on a second run\nreplay: {} --check-determinism",
                        output.replay
                    );
                    return Ok(false);
                }
                eprintln!("determinism: the second run of seed {seed} was byte-identical");
            }
            print!("{}", if json { &output.json } else { &output.text });
            if let Some(path) = svg {
                std::fs::write(&path, &output.svg)
                    .with_context(|| format!("{}: cannot write the SVG", path.display()))?;
            }
            Ok(output.passed)
        }
        Command::Swarm {
            seeds,
            first_seed,
            scenario,
            topology,
            nodes,
            jobs,
        } => {
            let jobs = match jobs {
                Some(n) if n == 0 || n > JOBS_MAX => {
                    anyhow::bail!("--jobs {n}: must be between 1 and {JOBS_MAX}")
                }
                Some(n) => n,
                None => std::thread::available_parallelism().map_or(1, usize::from),
            };
            if seeds == 0 || seeds > SEEDS_MAX {
                anyhow::bail!("--seeds {seeds}: must be between 1 and {SEEDS_MAX}");
            }
            let (topology_text, topology_arg) =
                read_topology(topology, SWARM_TOPOLOGY, SWARM_TOPOLOGY_PATH)?;
            if !SCENARIOS.contains(&scenario.as_str()) {
                anyhow::bail!(
                    "unknown scenario {scenario:?}; scenarios are: {}",
                    SCENARIOS.join(", ")
                );
            }
            swarm(
                &Swarm {
                    scenario,
                    seeds,
                    first_seed,
                    topology_text,
                    topology_arg,
                    nodes,
                },
                jobs,
            )
        }
        Command::Scenarios => {
            for name in SCENARIOS {
                println!("{name}");
            }
            Ok(true)
        }
    }
}

/// What a swarm runs: the same request for every seed but the seed.
struct Swarm {
    scenario: String,
    seeds: u64,
    first_seed: u64,
    topology_text: String,
    topology_arg: String,
    nodes: Option<usize>,
}

/// One seed's result as the swarm prints it: `None` when it passed, else the reason and the
/// replay command.
type SeedResult = Result<Option<(String, String)>, String>;

/// What the swarm's threads and its printer share.
#[derive(Default)]
struct Shared {
    /// The index (from `first_seed`) the next thread to ask runs.
    next_claim: u64,
    /// The index whose result prints next.
    next_print: u64,
    /// Results that finished before an earlier seed's, held to print in seed order.
    done: std::collections::BTreeMap<u64, SeedResult>,
    /// A seed failed to start: every thread stops claiming.
    stop: bool,
}

impl Swarm {
    fn run_seed(&self, k: u64) -> SeedResult {
        let request = Request {
            seed: self.first_seed.wrapping_add(k),
            scenario: self.scenario.clone(),
            topology_text: self.topology_text.clone(),
            topology_arg: self.topology_arg.clone(),
            nodes: self.nodes,
            duration_s: None,
        };
        let output = statusmesh_sim::run(&request)?;
        if output.passed {
            return Ok(None);
        }
        let reason = output
            .failure
            .map(|failure| failure.to_string())
            .unwrap_or_default();
        Ok(Some((reason, output.replay)))
    }
}

/// A swarm thread: claims the next seed (at most `ahead` past the next to print), runs it,
/// and hands the result back, until every seed is claimed or the printer stops.
fn swarm_worker(
    swarm: &Swarm,
    ahead: u64,
    state: &std::sync::Mutex<Shared>,
    cv: &std::sync::Condvar,
) {
    loop {
        let k = {
            let Ok(mut shared) = state.lock() else {
                return;
            };
            loop {
                if shared.stop || shared.next_claim >= swarm.seeds {
                    return;
                }
                if shared.next_claim < shared.next_print + ahead {
                    break;
                }
                shared = match cv.wait(shared) {
                    Ok(shared) => shared,
                    Err(_) => return,
                };
            }
            shared.next_claim += 1;
            shared.next_claim - 1
        };
        // A seed that panics (a simulator bug) is reported as its result, so that the
        // printer waiting for it does not wait forever.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| swarm.run_seed(k)))
            .unwrap_or_else(|_| Err("the simulation panicked (see above)".to_owned()));
        let Ok(mut shared) = state.lock() else {
            return;
        };
        shared.done.insert(k, result);
        cv.notify_all();
    }
}

// The CLI: prints each failure in seed order as soon as every earlier seed is done,
// progress, and the summary. Seeds run on `jobs` threads; each seed is a separate
// deterministic simulation, so the output does not depend on `jobs`.
#[allow(clippy::disallowed_macros)]
fn swarm(swarm: &Swarm, jobs: usize) -> anyhow::Result<bool> {
    let seeds = swarm.seeds;
    let progress_every = (seeds / 20).max(1);
    let ahead = AHEAD_PER_JOB * jobs as u64;
    let state = std::sync::Mutex::new(Shared::default());
    let cv = std::sync::Condvar::new();
    let mut failures: Vec<(u64, String, String)> = Vec::new();
    let mut failed: u64 = 0;
    let printed = std::thread::scope(|scope| -> anyhow::Result<()> {
        for _ in 0..jobs {
            scope.spawn(|| swarm_worker(swarm, ahead, &state, &cv));
        }
        let stop = |state: &std::sync::Mutex<Shared>| {
            if let Ok(mut shared) = state.lock() {
                shared.stop = true;
            }
            cv.notify_all();
        };
        let mut shared = state
            .lock()
            .map_err(|_| anyhow::anyhow!("a swarm thread panicked"))?;
        while shared.next_print < seeds {
            let k = shared.next_print;
            let Some(result) = shared.done.remove(&k) else {
                shared = cv
                    .wait(shared)
                    .map_err(|_| anyhow::anyhow!("a swarm thread panicked"))?;
                continue;
            };
            shared.next_print += 1;
            cv.notify_all();
            let seed = swarm.first_seed.wrapping_add(k);
            match result {
                Ok(None) => {}
                Ok(Some((reason, replay))) => {
                    failed += 1;
                    println!("FAIL seed {seed}: {reason}\nreplay: {replay}");
                    if failures.len() < FAILURES_LISTED_MAX {
                        failures.push((seed, reason, replay));
                    }
                }
                Err(e) => {
                    drop(shared);
                    stop(&state);
                    anyhow::bail!("seed {seed}: {e}");
                }
            }
            if (k + 1) % progress_every == 0 || k + 1 == seeds {
                eprintln!("swarm: {}/{seeds} seeds, {failed} failed", k + 1);
            }
        }
        Ok(())
    });
    printed?;
    println!(
        "swarm: {seeds} seeds of {} from {} on {}: {} passed, {failed} failed",
        swarm.scenario,
        swarm.first_seed,
        swarm.topology_arg,
        seeds - failed
    );
    for (seed, reason, replay) in &failures {
        println!("  seed {seed}: {reason}\n    replay: {replay}");
    }
    Ok(failed == 0)
}

// The CLI: reads the topology file it was given.
#[allow(clippy::disallowed_methods)]
fn read_topology(
    path: Option<PathBuf>,
    default_text: &str,
    default_path: &str,
) -> anyhow::Result<(String, String)> {
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("{}: cannot read the topology", path.display()))?;
            Ok((text, path.display().to_string()))
        }
        None => Ok((default_text.to_owned(), default_path.to_owned())),
    }
}
