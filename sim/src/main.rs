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
        } => {
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
                &scenario,
                seeds,
                first_seed,
                topology_text,
                topology_arg,
                nodes,
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

// The CLI: prints each failure as it happens, progress, and the summary.
#[allow(clippy::disallowed_macros)]
fn swarm(
    scenario: &str,
    seeds: u64,
    first_seed: u64,
    topology_text: String,
    topology_arg: String,
    nodes: Option<usize>,
) -> anyhow::Result<bool> {
    let progress_every = (seeds / 20).max(1);
    let mut failures: Vec<(u64, String, String)> = Vec::new();
    let mut failed: u64 = 0;
    for k in 0..seeds {
        let seed = first_seed.wrapping_add(k);
        let request = Request {
            seed,
            scenario: scenario.to_owned(),
            topology_text: topology_text.clone(),
            topology_arg: topology_arg.clone(),
            nodes,
            duration_s: None,
        };
        let output = statusmesh_sim::run(&request).map_err(anyhow::Error::msg)?;
        if !output.passed {
            failed += 1;
            let reason = output
                .failure
                .map(|failure| failure.to_string())
                .unwrap_or_default();
            println!("FAIL seed {seed}: {reason}\nreplay: {}", output.replay);
            if failures.len() < FAILURES_LISTED_MAX {
                failures.push((seed, reason, output.replay));
            }
        }
        if (k + 1) % progress_every == 0 || k + 1 == seeds {
            eprintln!("swarm: {}/{seeds} seeds, {failed} failed", k + 1);
        }
    }
    println!(
        "swarm: {seeds} seeds of {scenario} from {first_seed} on {topology_arg}: {} passed, {failed} failed",
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
