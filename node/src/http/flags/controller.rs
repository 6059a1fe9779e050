//! The rollout controller: records each step, rollback and resume of staged rollouts as a
//! write of the flag's progress, so that each is a `flag` event and an entry in the
//! document's history (the audit trail).
//!
//! What is served never waits for it: evaluation alone already holds a rollout at its last
//! safe step while a guard is degraded ([`statusmesh_crdt::flags::position`]). The controller
//! makes the pause stick (the schedule does not move on during the outage) and the resume
//! explicit. It runs on the nodes of the topology's first region (sorted by name), so that
//! one region records each transition rather than all of them; an advance carries the
//! schedule's time, so two nodes that record the same step write the same value.
//!
//! Known limit: the controller rewrites the whole flag record. It re-reads the flag right
//! before writing and skips when it changed, so only an operator's `PUT` that reaches the
//! driver between that read and the write (one command apart) can be overwritten by the
//! older spec with new progress.

use std::time::Duration;

use statusmesh_crdt::flags::{advance, Flag};
use statusmesh_crdt::{Name, Put};
use tracing::{info, warn};

use crate::driver::{NodeHandle, RecordOp};

/// How often rollouts are looked at.
pub const TICK: Duration = Duration::from_millis(250);

/// Runs until the node shuts down.
pub async fn run(node: NodeHandle) {
    let first_region = node.info.regions.iter().next().cloned();
    if first_region.as_deref() != Some(node.info.region.as_str()) {
        return;
    }
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(set) = node.flags().await else {
            return;
        };
        for (id, flag) in set.iter() {
            let Some((progress, event)) = advance(flag, &set.availability, set.at_ms) else {
                continue;
            };
            let Some((service, key)) = id.split_once('/') else {
                continue;
            };
            let (Ok(service), Ok(key)) = (Name::parse("service", service), Name::parse("key", key))
            else {
                continue;
            };
            // Re-read just before writing: an operator's write since the read wins.
            match node.flags().await {
                Ok(now) if now.lookup(id) == statusmesh_crdt::flags::Lookup::Found(id, flag) => {}
                Ok(_) => continue,
                Err(_) => return,
            }
            let value = Flag {
                progress: Some(progress),
                ..flag.clone()
            };
            let op = RecordOp::Put(Put::Flag {
                key,
                value: Some(value),
            });
            match node.record(service, op).await {
                Ok(Ok(_)) => info!(flag = %id, ?event, "rollout recorded"),
                Ok(Err(e)) => warn!(flag = %id, error = %e, "rollout not recorded"),
                Err(_) => return,
            }
        }
    }
}
