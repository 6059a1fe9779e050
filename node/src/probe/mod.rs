//! The prober: runs the regional probe checks this node owns and writes its region's
//! observations through the normal write path.
//!
//! 1. Every [`PLAN_REFRESH`] it asks the driver for the plan: every check, and the members of
//!    this region SWIM considers alive. For each check probed from this region, the rendezvous
//!    rule of `statusmesh_gossip::rendezvous` over those members names one owner; this node
//!    keeps the checks it owns. A check newly owned after the first plan is a takeover
//!    (another member left or was suspected). A check newly owned is first due at a fixed
//!    offset within its interval (from a hash of its key), so that thousands of checks do not
//!    all fire at the same instant, and a takeover probes within one interval.
//! 2. Each owned check is due every `interval_s`, on a fixed cadence (a late probe does not
//!    shift the next one); a probe that could not start within an interval of its due time
//!    counts as a missed interval.
//! 3. At most [`PROBES_CONCURRENT_MAX`] probes run at once (a semaphore); each is bounded by
//!    its check's timeout (DNS included) and reads at most 64 KiB of body (`run.rs`).
//! 4. The outcome goes through `failures_before_down` and becomes the observation of this
//!    region, written as reporter `probe.<node>` with `ttl = 3 × interval`: an unchanged
//!    state makes no change (a heartbeat), so probing does not grow history.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use statusmesh_crdt::checks::{Check, FailureCount, ProbeOutcome};
use statusmesh_crdt::{Name, Observation, StatusWrite};
use statusmesh_gossip::rendezvous;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;

use crate::driver::{now_ms, NodeHandle, ProbePlan};

pub mod run;

/// Most probes one node runs at once; more due probes wait for a slot (and count as lag).
pub const PROBES_CONCURRENT_MAX: usize = 256;
/// How often the prober asks the driver for checks and membership.
pub const PLAN_REFRESH: Duration = Duration::from_millis(250);
/// Most probe outcomes queued from finished probes to the scheduler.
const OUTCOMES_QUEUE_MAX: usize = 4096;
/// Most observation writes waiting for the driver at once; an outcome beyond it is not
/// written (the next probe's is), so a slow disk cannot pile up tasks.
pub const WRITES_IN_FLIGHT_MAX: usize = 1024;

/// Starts the prober of `node`; it stops when `shutdown` turns true or the driver is gone.
pub fn spawn(node: NodeHandle, shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(Prober::new(node).run(shutdown))
}

type Key = (Name, Name);

/// One check this node owns.
#[derive(Debug)]
struct Owned {
    check: Check,
    due: Instant,
    failures: FailureCount,
    running: bool,
}

/// Where in its interval a check's probes fall: a fixed offset below the interval from a
/// hash of its key, so that many checks spread over the interval instead of firing together,
/// and a new check or a takeover is probed within one interval.
fn phase((service, component): &Key, check: &Check) -> Duration {
    let window_ms = (check.interval_s * 1000).max(1);
    let key = format!("{service}/{component}");
    Duration::from_millis(rendezvous::weight(key.as_bytes(), "phase") % window_ms)
}

/// What a finished probe sends back.
#[derive(Debug)]
struct Finished {
    key: Key,
    check: Check,
    outcome: ProbeOutcome,
}

#[derive(Debug)]
struct Prober {
    node: NodeHandle,
    me: String,
    region: String,
    reporter: String,
    owned: BTreeMap<Key, Owned>,
    /// (due, key) of every owned check: the timer queue.
    queue: BTreeSet<(Instant, Key)>,
    slots: Arc<Semaphore>,
    writes: Arc<Semaphore>,
    tls: Arc<rustls::ClientConfig>,
    finished_tx: mpsc::Sender<Finished>,
    finished_rx: mpsc::Receiver<Finished>,
    planned_once: bool,
    /// The (service, component) of every check this region probed at the last plan: a key
    /// among them that becomes this node's is a takeover; a new check is not.
    known: BTreeSet<Key>,
    /// The checks of the last plan and the cursor they were read at.
    checks: Vec<(Name, Name, Check)>,
    cursor: Option<statusmesh_crdt::Cursor>,
}

impl Prober {
    fn new(node: NodeHandle) -> Self {
        let (finished_tx, finished_rx) = mpsc::channel(OUTCOMES_QUEUE_MAX);
        let me = node.info.id.clone();
        // A reporter is a name: `probe.<node>` when it fits, else `probe`.
        let reporter = Name::parse("reporter", &format!("probe.{me}"))
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "probe".to_owned());
        Self {
            region: node.info.region.clone(),
            node,
            me,
            reporter,
            owned: BTreeMap::new(),
            queue: BTreeSet::new(),
            slots: Arc::new(Semaphore::new(PROBES_CONCURRENT_MAX)),
            writes: Arc::new(Semaphore::new(WRITES_IN_FLIGHT_MAX)),
            tls: run::tls_config(),
            finished_tx,
            finished_rx,
            planned_once: false,
            known: BTreeSet::new(),
            checks: Vec::new(),
            cursor: None,
        }
    }

    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut refresh = tokio::time::interval(PLAN_REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_due = self.queue.first().map(|(at, _)| *at);
            let timer = tokio::time::sleep_until(
                next_due.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)),
            );
            let stop = async {
                let _ = shutdown.wait_for(|stop| *stop).await;
            };
            let refresh_due = tokio::select! {
                _ = refresh.tick() => true,
                _ = timer, if next_due.is_some() => {
                    self.launch_due();
                    false
                }
                Some(done) = self.finished_rx.recv() => {
                    self.finish(done);
                    false
                }
                _ = stop => break,
            };
            if refresh_due {
                match self.node.probe_plan(self.cursor.clone()).await {
                    Ok(plan) => self.replan(plan),
                    Err(_) => break,
                }
            }
        }
    }

    /// Keeps the checks this node owns under `plan`; new ones are due at once.
    fn replan(&mut self, plan: ProbePlan) {
        debug_assert_eq!(plan.me, self.me);
        if let Some(checks) = plan.checks {
            self.checks = checks;
        }
        self.cursor = Some(plan.cursor);
        let mut wanted: BTreeMap<Key, Check> = BTreeMap::new();
        let mut known = BTreeSet::new();
        for (service, component, check) in &self.checks {
            if !check.probed_from(&plan.region) {
                continue;
            }
            known.insert((service.clone(), component.clone()));
            let key = rendezvous::probe_key(service.as_str(), component.as_str(), &plan.region);
            if rendezvous::owns(&key, &plan.members, &self.me) {
                wanted.insert((service.clone(), component.clone()), check.clone());
            }
        }
        let gone: Vec<Key> = self
            .owned
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(owned) = self.owned.remove(&key) {
                self.queue.remove(&(owned.due, key));
            }
        }
        let now = Instant::now();
        let mut handovers = 0u64;
        for (key, check) in wanted {
            match self.owned.get_mut(&key) {
                Some(owned) if owned.check == check => {}
                Some(owned) => {
                    // The check changed: probe the new one soon, counting afresh.
                    self.queue.remove(&(owned.due, key.clone()));
                    let due = now + phase(&key, &check);
                    owned.check = check;
                    owned.failures = FailureCount::default();
                    owned.due = due;
                    self.queue.insert((due, key));
                }
                None => {
                    if self.planned_once && self.known.contains(&key) {
                        handovers += 1;
                    }
                    let due = now + phase(&key, &check);
                    self.owned.insert(
                        key.clone(),
                        Owned {
                            check,
                            due,
                            failures: FailureCount::default(),
                            running: false,
                        },
                    );
                    self.queue.insert((due, key));
                }
            }
        }
        self.planned_once = true;
        self.known = known;
        let node = self.me.clone();
        if handovers > 0 {
            metrics::counter!("statusmesh_probe_handovers_total", "node" => node.clone())
                .increment(handovers);
        }
        metrics::gauge!("statusmesh_probes_assigned", "node" => node).set(self.owned.len() as f64);
    }

    /// Starts every probe that is due, and schedules its next run one interval later.
    fn launch_due(&mut self) {
        let now = Instant::now();
        while let Some((due, key)) = self.queue.first().cloned() {
            if due > now {
                break;
            }
            self.queue.pop_first();
            let Some(owned) = self.owned.get_mut(&key) else {
                continue;
            };
            let interval = Duration::from_secs(owned.check.interval_s);
            let mut next = due + interval;
            let mut missed = 0u64;
            while next <= now {
                next += interval;
                missed += 1;
            }
            if owned.running {
                // The previous probe has not even started or finished: this interval is lost.
                missed += 1;
            }
            owned.due = next;
            self.queue.insert((next, key.clone()));
            if missed > 0 {
                metrics::counter!("statusmesh_probe_missed_intervals_total", "node" => self.me.clone())
                    .increment(missed);
            }
            if owned.running {
                continue;
            }
            owned.running = true;
            let check = owned.check.clone();
            let slots = self.slots.clone();
            let tls = self.tls.clone();
            let done = self.finished_tx.clone();
            let node = self.me.clone();
            let agent = format!("statusmesh-probe/{node}");
            tokio::spawn(async move {
                let Ok(_slot) = slots.acquire_owned().await else {
                    return;
                };
                let lag = due.elapsed();
                metrics::histogram!("statusmesh_probe_lag_seconds", "node" => node.clone())
                    .record(lag.as_secs_f64());
                let started = std::time::Instant::now();
                let outcome = run::probe(&check, &tls, &agent).await;
                metrics::histogram!("statusmesh_probe_duration_seconds", "node" => node, "kind" => check.kind.to_string())
                    .record(started.elapsed().as_secs_f64());
                let _ = done
                    .send(Finished {
                        key,
                        check,
                        outcome,
                    })
                    .await;
            });
        }
    }

    /// Judges a finished probe and writes this region's observation.
    fn finish(&mut self, done: Finished) {
        let Some(owned) = self.owned.get_mut(&done.key) else {
            return;
        };
        owned.running = false;
        if owned.check != done.check {
            return;
        }
        let result = match &done.outcome {
            ProbeOutcome::Failed { .. } => "failed",
            ProbeOutcome::Answered { .. } => "answered",
        };
        let (service, component) = &done.key;
        metrics::counter!(
            "statusmesh_probes_total",
            "node" => self.me.clone(),
            "check" => format!("{service}/{component}"),
            "result" => result
        )
        .increment(1);
        let (state, message) = owned.failures.report(&done.check, &done.outcome);
        let observation = Observation {
            state,
            message,
            reporter: self.reporter.clone(),
            observed_at_ms: now_ms(),
            ttl_ms: done.check.ttl_ms(),
        };
        let write = match StatusWrite::parse(
            service.as_str(),
            component.as_str(),
            &self.region,
            observation,
        ) {
            Ok(write) => write,
            Err(error) => {
                tracing::warn!(%error, check = %format!("{service}/{component}"), "probe observation refused");
                return;
            }
        };
        let Ok(permit) = self.writes.clone().try_acquire_owned() else {
            tracing::warn!(check = %format!("{service}/{component}"), "probe observation skipped: {WRITES_IN_FLIGHT_MAX} writes in flight");
            return;
        };
        let node = self.node.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match node.write(write).await {
                Ok(Ok(_)) | Err(_) => {}
                Ok(Err(error)) => tracing::warn!(%error, "probe observation not written"),
            }
        });
    }
}
