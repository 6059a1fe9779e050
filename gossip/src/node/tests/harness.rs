//! The harness of the node tests: a tiny network on virtual time over real [`Node`]s, with
//! per-link latencies, cuts and losses, that checks the invariants after every input.

use super::*;

/// A tiny network on virtual time: every frame takes `latency_ms`; `drop_every` > 0
/// drops every n-th frame; pushes to the nodes in `drop_pushes_to` are lost. Node `i` is
/// in region `r{i % 3}`.
pub(super) struct Harness {
    pub(super) nodes: Vec<Node>,
    pub(super) in_flight: Vec<(u64, usize, String, Vec<u8>)>,
    pub(super) now_ms: u64,
    pub(super) latency_ms: u64,
    /// Latencies of particular links (either way), instead of `latency_ms`.
    pub(super) link_latency_ms: BTreeMap<(usize, usize), u64>,
    pub(super) cut: Option<usize>,
    pub(super) drop_every: u64,
    pub(super) drop_pushes_to: BTreeSet<usize>,
    pub(super) sent: u64,
    /// Frames delivered, per (receiver, frame kind).
    pub(super) delivered: BTreeMap<(usize, &'static str), u64>,
}

impl Harness {
    pub(super) fn new(count: usize) -> Self {
        Self::with_config(count, Config::lan())
    }

    /// A harness whose anti-entropy rounds are a day apart: whatever converges, the
    /// broadcast did.
    pub(super) fn without_anti_entropy(count: usize) -> Self {
        Self::with_config(
            count,
            Config {
                anti_entropy_interval_ms: 86_400_000,
                ..Config::lan()
            },
        )
    }

    pub(super) fn with_config(count: usize, config: Config) -> Self {
        Self::with_configs(vec![config; count])
    }

    /// A harness of one node per config, node `i` with `configs[i]`.
    pub(super) fn with_configs(configs: Vec<Config>) -> Self {
        let count = configs.len();
        let peers: Vec<Peer> = (0..count)
            .map(|i| Peer {
                id: format!("n{i}"),
                region: format!("r{}", i % 3),
            })
            .collect();
        let nodes = configs
            .into_iter()
            .enumerate()
            .map(|(i, config)| {
                let replica = Replica::new(&format!("n{i}"), ActorId::from(vec![i as u8 + 1; 16]));
                Node::new(format!("n{i}"), config, peers.clone(), replica, i as u64)
            })
            .collect();
        Self {
            nodes,
            in_flight: Vec::new(),
            now_ms: 1_000,
            latency_ms: 5,
            link_latency_ms: BTreeMap::new(),
            cut: None,
            drop_every: 0,
            drop_pushes_to: BTreeSet::new(),
            sent: 0,
            delivered: BTreeMap::new(),
        }
    }

    pub(super) fn index(id: &str) -> usize {
        id[1..].parse().expect("node id")
    }

    pub(super) fn drain(&mut self, i: usize) {
        let node = &self.nodes[i];
        assert_eq!(crate::invariants::check(node), Ok(()));
        assert_eq!(node.broadcast_state().check_all(node.id()), Ok(()));
        while let Some(t) = self.nodes[i].poll_transmit() {
            self.sent += 1;
            let to = Self::index(&t.to);
            let cut = self.cut.is_some_and(|c| c == i || c == to);
            // A frame of a version no node reads (a test of refusal) has no kind.
            let kind = codec::peek_kind(&t.bytes).unwrap_or("unreadable");
            let dropped = (self.drop_every > 0 && self.sent.is_multiple_of(self.drop_every))
                || (kind == "push" && self.drop_pushes_to.contains(&to));
            if !cut && !dropped {
                let from = self.nodes[i].id().to_owned();
                let latency_ms = self
                    .link_latency_ms
                    .get(&(i.min(to), i.max(to)))
                    .copied()
                    .unwrap_or(self.latency_ms);
                self.in_flight
                    .push((self.now_ms + latency_ms, to, from, t.bytes));
            }
        }
        while self.nodes[i].poll_event().is_some() {}
    }

    /// A status write of `api/{component}/r0`, observed now.
    pub(super) fn status_write(&self, component: &str, state: State) -> StatusWrite {
        StatusWrite::parse(
            "api",
            component,
            "r0",
            Observation {
                state,
                message: String::new(),
                reporter: "probe".into(),
                observed_at_ms: self.now_ms,
                ttl_ms: 60_000,
            },
        )
        .expect("valid")
    }

    /// Three nodes without anti-entropy, n0 having written `db`; its push to n1 is taken
    /// from its queue (not delivered) and returned with the time of the write.
    pub(super) fn with_push_from_n0_to_n1() -> (Self, u64, Vec<u8>) {
        let mut h = Harness::without_anti_entropy(3);
        h.run_for(100);
        let write = h.status_write("db", State::MajorOutage);
        let now = h.now_ms;
        h.nodes[0].local_write(now, &write).expect("write");
        let push = h.take_push(0, "n1");
        (h, now, push)
    }

    /// Node `i`'s push of its last write to `to`, taken from its queue (the rest of the
    /// queue is dropped).
    pub(super) fn take_push(&mut self, i: usize, to: &str) -> Vec<u8> {
        std::iter::from_fn(|| self.nodes[i].poll_transmit())
            .find(|t| t.to == to && matches!(codec::decode(&t.bytes), Ok(Frame::Push { .. })))
            .expect("a push")
            .bytes
    }

    pub(super) fn write(&mut self, i: usize, component: &str, state: State) {
        let write = self.status_write(component, state);
        self.nodes[i]
            .local_write(self.now_ms, &write)
            .expect("write");
        self.drain(i);
    }

    pub(super) fn run_for(&mut self, duration_ms: u64) {
        let end = self.now_ms + duration_ms;
        while self.now_ms < end {
            self.now_ms += 1;
            let due: Vec<_> = {
                let now = self.now_ms;
                let (due, rest) = std::mem::take(&mut self.in_flight)
                    .into_iter()
                    .partition(|f| f.0 <= now);
                self.in_flight = rest;
                due
            };
            for (_, to, from, bytes) in due {
                let kind = codec::peek_kind(&bytes).unwrap_or("unreadable");
                *self.delivered.entry((to, kind)).or_default() += 1;
                self.nodes[to].handle_frame(self.now_ms, &from, &bytes);
                self.drain(to);
            }
            for i in 0..self.nodes.len() {
                if self.nodes[i]
                    .poll_timeout()
                    .is_some_and(|t| t <= self.now_ms)
                {
                    self.nodes[i].handle_timeout(self.now_ms);
                    self.drain(i);
                }
            }
        }
    }

    pub(super) fn converged(&self) -> bool {
        let first = self.nodes[0].replica().cursor();
        self.nodes.iter().all(|n| n.replica().cursor() == first)
    }

    /// Whether every node but `except` holds node `writer`'s last change.
    pub(super) fn all_hold_last_change_of(&self, writer: usize, except: Option<usize>) -> bool {
        let hash = self.nodes[writer].last_local_change().expect("a change");
        let api = Name::parse("service", "api").expect("name");
        (0..self.nodes.len())
            .filter(|i| Some(*i) != except)
            .all(|i| {
                self.nodes[i]
                    .replica()
                    .doc(&api)
                    .is_some_and(|d| d.has_all(&[hash]))
            })
    }

    pub(super) fn delivered(&self, to: usize, kind: &'static str) -> u64 {
        self.delivered.get(&(to, kind)).copied().unwrap_or(0)
    }

    /// Runs until `done` holds, one millisecond at a time, for at most `limit_ms`;
    /// returns how long it took.
    pub(super) fn run_until(&mut self, limit_ms: u64, done: impl Fn(&Self) -> bool) -> Option<u64> {
        for elapsed in 0..=limit_ms {
            if done(self) {
                return Some(elapsed);
            }
            self.run_for(1);
        }
        None
    }
}
