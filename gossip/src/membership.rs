//! Membership and failure detection: SWIM (probes, indirect probes, suspicion, refutation)
//! by the `foca` crate, driven sans-IO like the rest of the core.
//!
//! foca is itself a sans-IO state machine; this module gives it virtual time (its timers
//! are kept here and fired from `handle_timeout`), a seeded RNG, and the frame codec, and
//! turns its notifications into member states the node can report.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::OnceLock;
use std::time::Duration;

use foca::{AccumulatingRuntime, Foca, Identity, NoCustomBroadcast, OwnedNotification, Timer};
use rand010::rngs::SmallRng;
use rand010::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::codec::SwimCodec;

/// Most foca timers pending at once; foca keeps a handful per member.
const TIMERS_MAX: usize = 65_536;

/// Most direct probes awaiting their ack, and most round-trip samples awaiting the node.
const PROBES_MAX: usize = 65_536;

/// A member's identity in SWIM: its node id, and a generation that grows each time it
/// rejoins after being declared down (so that the new life wins over the old).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SwimId {
    pub node: String,
    pub generation: u32,
}

impl Identity for SwimId {
    type Addr = String;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            node: self.node.clone(),
            generation: self.generation.wrapping_add(1),
        })
    }

    fn addr(&self) -> String {
        self.node.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// What the failure detector says about a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// Never heard of through SWIM yet.
    Unknown,
    Alive,
    /// Someone failed to reach it; it has a while to refute before it is declared down.
    Suspect,
    Down,
}

/// A change of a peer's state, for the node to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberChange {
    pub node: String,
    pub up: bool,
}

/// Timing presets of the failure detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// One network: probe every second.
    Lan,
    /// Across regions: probe every second with a longer round-trip allowance; detection
    /// stays within a few seconds at 5% loss and 200 ms of jitter.
    Wan,
}

/// The SWIM state of one node.
pub struct Membership {
    foca: Foca<SwimId, SwimCodec, SmallRng, NoCustomBroadcast>,
    runtime: AccumulatingRuntime<SwimId>,
    timers: BTreeMap<(u64, u64), Timer<SwimId>>,
    timer_seq: u64,
    outbox: Vec<(String, Vec<u8>)>,
    changes: Vec<MemberChange>,
    errors: u64,
    /// The last direct probe sent to each member: its number and when (ms).
    probes: BTreeMap<String, (foca::ProbeNumber, u64)>,
    /// Round trips (member, ms) timed from probes and their acks, for the broadcast.
    rtt_samples: Vec<(String, u64)>,
    /// Index of [`Self::state_of`], built on the first query after foca changed (reset in
    /// `drain`, which follows every foca call): positions in foca's member list by a hash
    /// of the node id. The tree policy, rollover and the
    /// simulator's checkers ask about every peer in turn; a scan each was quadratic.
    states: OnceLock<Vec<(u64, usize)>>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("timers", &self.timers.len())
            .field("errors", &self.errors)
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// The failure detector of `node` in a cluster of about `cluster_size` members.
    pub fn new(
        node: &str,
        generation: u32,
        cluster_size: usize,
        preset: Preset,
        seed: u64,
    ) -> Self {
        let size = NonZeroU32::new(cluster_size.clamp(1, u32::MAX as usize) as u32)
            .unwrap_or(NonZeroU32::MIN);
        let mut config = foca::Config::new_lan(size);
        if preset == Preset::Wan {
            // A cross-region round trip is up to ~300 ms; a probe gets twice that before
            // indirect probes are tried, and suspicion lasts long enough to be refuted
            // through lossy links.
            config.probe_rtt = Duration::from_millis(600);
            config.probe_period = Duration::from_millis(1_500);
        }
        config.remove_down_after = Some(Duration::from_secs(3600));
        // A node cut off from everyone declares everyone down, and after the heal its view
        // spreads; members learn they were declared down (and renew their identity) when
        // someone talks to them. Reaching out to down members often keeps that window to
        // seconds instead of foca's default minute.
        config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(3),
            num_members: std::num::NonZeroUsize::new(3).unwrap_or(std::num::NonZeroUsize::MIN),
        });
        config.periodic_announce = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(10),
            num_members: std::num::NonZeroUsize::MIN,
        });
        let identity = SwimId {
            node: node.to_owned(),
            generation,
        };
        Self {
            foca: Foca::new(identity, config, SmallRng::seed_from_u64(seed), SwimCodec),
            runtime: AccumulatingRuntime::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            outbox: Vec::new(),
            probes: BTreeMap::new(),
            rtt_samples: Vec::new(),
            changes: Vec::new(),
            errors: 0,
            states: OnceLock::new(),
        }
    }

    /// Announces this node to `peer` (used at start for every seed).
    pub fn announce(&mut self, now_ms: u64, peer: &str) {
        let target = SwimId {
            node: peer.to_owned(),
            generation: 0,
        };
        if self.foca.announce(target, &mut self.runtime).is_err() {
            self.errors += 1;
        }
        self.drain(now_ms);
    }

    /// Tells the members this node knows that it leaves: foca declares this identity down
    /// and gossips it (to be sent before the driver stops).
    pub fn leave(&mut self, now_ms: u64) {
        if self.foca.leave_cluster(&mut self.runtime).is_err() {
            self.errors += 1;
        }
        self.drain(now_ms);
    }

    /// Handles SWIM bytes that arrived from `from`. A message whose sender is not `from`
    /// (the transport's authenticated identity) is refused: no one speaks for another node.
    pub fn handle_data(&mut self, now_ms: u64, from: &str, data: &[u8]) -> Result<(), String> {
        let header = SwimCodec::peek_header(data)?;
        let src = header.src.node;
        if src != from {
            return Err(format!(
                "SWIM message from {from:?} claims to come from {src:?}"
            ));
        }
        // Probes are answered at once: the ack of a direct probe times a round trip free.
        if let foca::Message::Ack(number) = header.message {
            if self.probes.get(from).is_some_and(|(n, _)| *n == number) {
                if let Some((_, sent_ms)) = self.probes.remove(from) {
                    if self.rtt_samples.len() < PROBES_MAX {
                        let rtt_ms = now_ms.saturating_sub(sent_ms);
                        self.rtt_samples.push((from.to_owned(), rtt_ms));
                    }
                }
            }
        }
        let result = self.foca.handle_data(data, &mut self.runtime);
        self.drain(now_ms);
        result.map_err(|e| {
            self.errors += 1;
            e.to_string()
        })
    }

    /// Fires every foca timer due at `now_ms`.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        // Bounded: a timer handler schedules new timers in the future, never at `now`.
        for _ in 0..TIMERS_MAX {
            let Some(entry) = self.timers.first_entry() else {
                break;
            };
            if entry.key().0 > now_ms {
                break;
            }
            let timer = entry.remove();
            if self.foca.handle_timer(timer, &mut self.runtime).is_err() {
                self.errors += 1;
            }
            self.drain(now_ms);
        }
    }

    /// When the next foca timer is due.
    pub fn next_timeout(&self) -> Option<u64> {
        self.timers.keys().next().map(|(at, _)| *at)
    }

    /// SWIM messages to send, as (node, bytes).
    pub fn take_outbox(&mut self) -> Vec<(String, Vec<u8>)> {
        std::mem::take(&mut self.outbox)
    }

    /// Round trips (member, ms) timed since the last call.
    pub fn take_rtt_samples(&mut self) -> Vec<(String, u64)> {
        std::mem::take(&mut self.rtt_samples)
    }

    /// Peers that came up or went down since the last call.
    pub fn take_changes(&mut self) -> Vec<MemberChange> {
        std::mem::take(&mut self.changes)
    }

    /// What the failure detector says about `node` now.
    pub fn state_of(&self, node: &str) -> MemberState {
        let index = self.states.get_or_init(|| self.index_states());
        let hash = id_hash(node);
        let start = index.partition_point(|&(h, _)| h < hash);
        // Within one hash, positions ascend: the last member of the highest generation
        // wins, as a scan with `max_by_key` picks.
        let mut found: Option<&foca::Member<SwimId>> = None;
        for &(h, i) in &index[start..] {
            if h != hash {
                break;
            }
            let Some(member) = self.foca.iter_membership_state().nth(i) else {
                continue;
            };
            if member.id().node == node
                && found.is_none_or(|f| member.id().generation >= f.id().generation)
            {
                found = Some(member);
            }
        }
        found.map_or(MemberState::Unknown, |m| match m.state() {
            foca::State::Alive => MemberState::Alive,
            foca::State::Suspect => MemberState::Suspect,
            foca::State::Down => MemberState::Down,
        })
    }

    /// The index of [`Self::state_of`]: (hash of the node id, position) of every member,
    /// sorted. Hashes sort without comparing the ids; a lookup compares ids only within one
    /// hash, so a collision costs a comparison, never a wrong answer.
    fn index_states(&self) -> Vec<(u64, usize)> {
        let mut index: Vec<(u64, usize)> = self
            .foca
            .iter_membership_state()
            .enumerate()
            .map(|(i, m)| (id_hash(&m.id().node), i))
            .collect();
        index.sort_unstable();
        index
    }

    /// Errors foca reported (bad messages, mostly), for metrics.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    fn drain(&mut self, now_ms: u64) {
        self.states = OnceLock::new();
        while let Some((to, bytes)) = self.runtime.to_send() {
            if let Ok(foca::Message::Ping(number)) =
                SwimCodec::peek_header(&bytes).map(|h| h.message)
            {
                if self.probes.len() < PROBES_MAX || self.probes.contains_key(&to.node) {
                    self.probes.insert(to.node.clone(), (number, now_ms));
                }
            }
            self.outbox.push((to.node, bytes.to_vec()));
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            if self.timers.len() >= TIMERS_MAX {
                self.errors += 1;
                continue;
            }
            let at = now_ms + after.as_millis() as u64;
            self.timer_seq += 1;
            self.timers.insert((at, self.timer_seq), timer);
        }
        while let Some(notification) = self.runtime.to_notify() {
            match notification {
                OwnedNotification::MemberUp(id) => self.changes.push(MemberChange {
                    node: id.node,
                    up: true,
                }),
                OwnedNotification::MemberDown(id) => self.changes.push(MemberChange {
                    node: id.node,
                    up: false,
                }),
                _ => {}
            }
        }
    }
}

/// The hash [`Membership::state_of`] indexes node ids by.
fn id_hash(node: &str) -> u64 {
    let mut hash = statusmesh_crdt::liveness::Fnv64::new();
    hash.write(node.as_bytes());
    hash.finish()
}
