//! The chaos harness's network: one network namespace per node on a bridge, partitions by
//! routes, and a userspace relay that gives each inter-node link its latency and loss.
//!
//! Layout of one run (names and subnet unique per run, so parallel runs do not collide):
//!
//! ```text
//!  root namespace (the test process)          node namespaces
//!  bridge <tag>br 10.77.S.1/24  ── veth ──── <tag>n0: eth0 10.77.S.11  statusmesh run
//!   + relay addresses 10.77.S.101..106/32 ── <tag>n1: eth0 10.77.S.12  ...
//! ```
//!
//! Every node reads its own regions.toml, in which each peer's gossip address is a relay
//! socket in the root namespace (on that peer's relay address). The relay holds each datagram
//! for the regions' one-way latency (the simulator's model, from the coordinates) and drops a
//! chosen share of them, then sends it from the sender's relay address to the peer's real
//! socket: real QUIC over real kernel sockets. This kernel has no `sch_netem` and no tc
//! actions (`gact`), so no qdisc can delay or drop at random; the relay does it instead.
//!
//! A partition of node a from node b is a blackhole route to b's relay address in a's
//! namespace and to a's relay address in b's: each side's datagrams for the other die in its
//! own kernel (sendmsg fails with EINVAL, which quinn counts as a lost datagram), while HTTP
//! between the test and every node keeps working.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The port every node's QUIC endpoint binds in its own namespace.
pub const GOSSIP_PORT: u16 = 7000;
/// The port every node's HTTP server binds in its own namespace.
pub const HTTP_PORT: u16 = 8000;
/// Datagrams one direction of one link may hold in flight before it drops (a router queue).
const LINK_QUEUE_MAX: usize = 4096;
/// Largest datagram the relay carries (QUIC stays far below it).
const DATAGRAM_MAX: usize = 65_535;

/// Why the chaos harness cannot run here, if it cannot: it needs root and `ip`.
pub fn unavailable() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        });
    if uid.as_deref() != Some("0") {
        return Some(format!(
            "needs root for network namespaces (uid is {})",
            uid.as_deref().unwrap_or("unknown")
        ));
    }
    match Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "`ip -V` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )),
        Err(e) => Some(format!("`ip` (iproute2) is not available: {e}")),
    }
}

/// libfaketime's multithreaded preload library, if installed: it shifts CLOCK_REALTIME for
/// one process, which no namespace can (a time namespace offsets only CLOCK_MONOTONIC and
/// CLOCK_BOOTTIME).
pub fn faketime_library() -> Option<std::path::PathBuf> {
    std::fs::read_dir("/usr/lib")
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path().join("faketime/libfaketimeMT.so.1"))
        .find(|path| path.exists())
}

/// Runs `ip` with `args`; its stderr on failure.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The namespaces, links and addresses of one run; removed when dropped.
#[derive(Debug)]
pub struct Net {
    tag: String,
    subnet: u8,
    namespaces: Vec<String>,
    bridge_made: bool,
    cuts: Mutex<BTreeSet<(usize, usize)>>,
}

impl Net {
    /// Makes a bridge and `nodes` namespaces, each with a veth on the bridge. A failure
    /// removes whatever was made (the value is dropped).
    pub fn create(nodes: usize) -> Result<Self, String> {
        assert!(nodes <= 50, "addresses .11.. and .101.. must not overlap");
        let mut rng = rand::rngs::SmallRng::from_os_rng();
        let subnet = (0..64)
            .map(|_| rng.random_range(1..=254u8))
            .find(|s| !subnet_in_use(*s))
            .ok_or("no free 10.77.x.0/24 subnet after 64 tries")?;
        let mut net = Self {
            tag: format!("sm{:05x}", rng.random_range(0..0x10_0000u32)),
            subnet,
            namespaces: Vec::new(),
            bridge_made: false,
            cuts: Mutex::default(),
        };
        let bridge = net.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        net.bridge_made = true;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", net.host_ip()),
            "dev",
            &bridge,
        ])?;
        for i in 0..nodes {
            ip(&[
                "addr",
                "add",
                &format!("{}/32", net.relay_ip(i)),
                "dev",
                &bridge,
            ])?;
        }
        ip(&["link", "set", &bridge, "up"])?;
        for i in 0..nodes {
            let ns = format!("{}n{i}", net.tag);
            ip(&["netns", "add", &ns])?;
            net.namespaces.push(ns.clone());
            let veth = format!("{}v{i}", net.tag);
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &veth, "master", &bridge, "up"])?;
            let addr = format!("{}/24", net.node_ip(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    /// The namespace of node `i`.
    pub fn namespace(&self, i: usize) -> &str {
        &self.namespaces[i]
    }

    /// The address node `i` has in its namespace.
    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 11 + i as u8)
    }

    /// The root namespace's address on the bridge (the test's HTTP clients use it).
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 1)
    }

    /// The relay's address for traffic to and from node `i`.
    pub fn relay_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 101 + i as u8)
    }

    /// A short description for the run log.
    pub fn describe(&self) -> String {
        format!(
            "bridge {} 10.77.{}.0/24, namespaces {}",
            self.bridge(),
            self.subnet,
            self.namespaces.join(" ")
        )
    }

    /// Adds `10.77.S.<host>` to the bridge in the root namespace (a server the nodes reach,
    /// apart from the test's own address); it goes with the bridge.
    pub fn add_bridge_address(&self, host: u8) -> Result<Ipv4Addr, String> {
        let address = Ipv4Addr::new(10, 77, self.subnet, host);
        ip(&[
            "addr",
            "add",
            &format!("{address}/32"),
            "dev",
            &self.bridge(),
        ])?;
        Ok(address)
    }

    /// Node `i` can (`false`) or cannot (`true`) reach `address`: a blackhole route in its
    /// namespace.
    pub fn blackhole(&self, i: usize, address: Ipv4Addr, on: bool) -> Result<(), String> {
        let verb = if on { "add" } else { "del" };
        let route = format!("{address}/32");
        ip(&[
            "-n",
            &self.namespaces[i],
            "route",
            verb,
            "blackhole",
            &route,
        ])
    }

    /// Cuts every link between a node in `side` and a node outside it, both ways.
    pub fn partition(&self, side: &[usize]) -> Result<(), String> {
        for a in side.iter().copied() {
            for b in (0..self.namespaces.len()).filter(|b| !side.contains(b)) {
                self.cut(a, b)?;
                self.cut(b, a)?;
            }
        }
        Ok(())
    }

    /// Removes every cut.
    pub fn heal(&self) -> Result<(), String> {
        let cuts = std::mem::take(&mut *self.cuts.lock().expect("cuts"));
        for (from, to) in cuts {
            let relay = format!("{}/32", self.relay_ip(to));
            ip(&[
                "-n",
                &self.namespaces[from],
                "route",
                "del",
                "blackhole",
                &relay,
            ])?;
        }
        Ok(())
    }

    /// Node `from`'s datagrams for node `to` are dropped by `from`'s own kernel.
    fn cut(&self, from: usize, to: usize) -> Result<(), String> {
        if !self.cuts.lock().expect("cuts").insert((from, to)) {
            return Ok(());
        }
        let relay = format!("{}/32", self.relay_ip(to));
        ip(&[
            "-n",
            &self.namespaces[from],
            "route",
            "add",
            "blackhole",
            &relay,
        ])
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth, and with it the bridge's end.
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
        if self.bridge_made {
            let _ = ip(&["link", "del", &self.bridge()]);
        }
    }
}

fn subnet_in_use(subnet: u8) -> bool {
    Command::new("ip")
        .args(["-4", "addr", "show", "to", &format!("10.77.{subnet}.0/24")])
        .output()
        .map(|out| !out.stdout.is_empty())
        .unwrap_or(true)
}

/// What the relay did, over all links.
#[derive(Debug, Default)]
pub struct RelayCounters {
    pub forwarded: AtomicU64,
    pub lost: AtomicU64,
    pub queue_full: AtomicU64,
}

/// One relay socket per directed link: node `from` sends to `listen`, the relay forwards to
/// node `to`'s real gossip socket.
#[derive(Debug)]
pub struct Link {
    pub from: usize,
    pub to: usize,
    pub listen: SocketAddr,
}

/// The relay: every directed link between nodes, with its latency and the current loss.
#[derive(Debug)]
pub struct Relay {
    pub links: Vec<Link>,
    pub counters: Arc<RelayCounters>,
    loss_per_mille: Arc<AtomicU32>,
    tasks: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Binds a relay for every ordered pair of nodes; `one_way(a, b)` is the latency from
    /// node a to node b.
    pub async fn start(
        net: &Net,
        nodes: usize,
        one_way: impl Fn(usize, usize) -> Duration,
        seed: u64,
    ) -> Result<Self, String> {
        let counters = Arc::new(RelayCounters::default());
        let loss_per_mille = Arc::new(AtomicU32::new(0));
        let mut relay = Self {
            links: Vec::new(),
            counters,
            loss_per_mille,
            tasks: Vec::new(),
        };
        for from in 0..nodes {
            for to in (0..nodes).filter(|to| *to != from) {
                let bind = |ip: Ipv4Addr| async move {
                    UdpSocket::bind((ip, 0))
                        .await
                        .map_err(|e| format!("relay bind {ip}: {e}"))
                };
                let listen = bind(net.relay_ip(to)).await?;
                let upstream = bind(net.relay_ip(from)).await?;
                upstream
                    .connect((net.node_ip(to), GOSSIP_PORT))
                    .await
                    .map_err(|e| format!("relay connect: {e}"))?;
                let listen_addr = listen.local_addr().map_err(|e| e.to_string())?;
                relay.links.push(Link {
                    from,
                    to,
                    listen: listen_addr,
                });
                let link = LinkState {
                    listen: Arc::new(listen),
                    upstream: Arc::new(upstream),
                    delay: one_way(from, to),
                    back_delay: one_way(to, from),
                    loss_per_mille: relay.loss_per_mille.clone(),
                    counters: relay.counters.clone(),
                    rng: rand::rngs::SmallRng::seed_from_u64(
                        seed ^ ((from as u64) << 32 | to as u64),
                    ),
                };
                relay.tasks.extend(link.spawn());
            }
        }
        Ok(relay)
    }

    /// The listening address of the link from node `from` to node `to`.
    pub fn listen(&self, from: usize, to: usize) -> Option<SocketAddr> {
        self.links
            .iter()
            .find(|l| l.from == from && l.to == to)
            .map(|l| l.listen)
    }

    /// Drops this share of every link's datagrams, each direction (0..=1000 per mille).
    pub fn set_loss_per_mille(&self, per_mille: u32) {
        self.loss_per_mille
            .store(per_mille.min(1000), Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

struct LinkState {
    listen: Arc<UdpSocket>,
    upstream: Arc<UdpSocket>,
    delay: Duration,
    back_delay: Duration,
    loss_per_mille: Arc<AtomicU32>,
    counters: Arc<RelayCounters>,
    rng: rand::rngs::SmallRng,
}

/// A datagram and when to send it on.
type Held = (Instant, Vec<u8>);

impl LinkState {
    /// The receiving task and one sending task per direction (each a FIFO: constant delay
    /// keeps datagrams in order).
    fn spawn(mut self) -> [JoinHandle<()>; 3] {
        let (to_peer_tx, mut to_peer_rx) = mpsc::channel::<Held>(LINK_QUEUE_MAX);
        let (to_sender_tx, mut to_sender_rx) = mpsc::channel::<Held>(LINK_QUEUE_MAX);
        // The sending node's address, learned from its first datagram.
        let sender: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let upstream = self.upstream.clone();
        let forward = tokio::spawn(async move {
            while let Some((at, bytes)) = to_peer_rx.recv().await {
                tokio::time::sleep_until(at).await;
                let _ = upstream.send(&bytes).await;
            }
        });
        let (listen, sender_out) = (self.listen.clone(), sender.clone());
        let back = tokio::spawn(async move {
            while let Some((at, bytes)) = to_sender_rx.recv().await {
                tokio::time::sleep_until(at).await;
                let to = *sender_out.lock().expect("sender");
                if let Some(to) = to {
                    let _ = listen.send_to(&bytes, to).await;
                }
            }
        });
        let receive = tokio::spawn(async move {
            let mut from_sender = vec![0u8; DATAGRAM_MAX];
            let mut from_peer = vec![0u8; DATAGRAM_MAX];
            loop {
                let (bytes, queue, delay) = tokio::select! {
                    got = self.listen.recv_from(&mut from_sender) => {
                        let Ok((len, from)) = got else { continue };
                        *sender.lock().expect("sender") = Some(from);
                        (&from_sender[..len], &to_peer_tx, self.delay)
                    }
                    got = self.upstream.recv(&mut from_peer) => {
                        // An ICMP error from a peer that is down; the socket stays usable.
                        let Ok(len) = got else { continue };
                        (&from_peer[..len], &to_sender_tx, self.back_delay)
                    }
                };
                let loss = self.loss_per_mille.load(Ordering::Relaxed);
                if loss > 0 && self.rng.random_range(0..1000) < loss {
                    self.counters.lost.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                match queue.try_send((Instant::now() + delay, bytes.to_vec())) {
                    Ok(()) => self.counters.forwarded.fetch_add(1, Ordering::Relaxed),
                    Err(_) => self.counters.queue_full.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
        [forward, back, receive]
    }
}
