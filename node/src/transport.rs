//! QUIC between nodes: quinn with rustls mutual TLS on the cluster CA.
//!
//! Each node dials every peer and sends its frames on that outgoing connection, one
//! unidirectional stream per frame; it receives on the connections peers dial to it. A
//! peer's identity is the node id its certificate is valid for, checked against the
//! topology: without a certificate from the cluster CA a peer cannot even finish the
//! handshake, and with one it cannot claim another node's id.
//!
//! A node not listed in the topology joins with a certificate from the cluster CA whose
//! subject names its id and region (`statusmesh certs issue`): a listed node accepts it when
//! the region is one of the topology's, reports it ([`MemberNotice::Joined`], before any of
//! its frames) and dials it back at the address it connected from (the peer's endpoint: one
//! UDP socket serves both directions). A joined node that leaves closes its connections
//! with [`LEAVE_CODE`], which its peers report as [`MemberNotice::Left`].
//!
//! [`Transport::reload`] swaps the node's certificate, key and trusted CAs without a
//! restart (SIGHUP): new handshakes use them at once, and every open connection, both ways,
//! is closed so that it is made again on the new identity (frames in flight then are
//! dropped and anti-entropy repairs them, as after any broken link).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rand::Rng;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, info, warn};

use crate::certs::NodeIdentity;
use statusmesh_gossip::codec::FRAME_BYTES_MAX;

/// ALPN protocol id of the node-to-node protocol.
pub const ALPN: &[u8] = b"statusmesh/1";
/// Frames waiting per peer before new ones are dropped (anti-entropy repairs drops).
pub const PEER_QUEUE_MAX: usize = 4096;
/// Connections accepted at once from peers.
pub const INBOUND_CONNECTIONS_MAX: usize = 256;
/// Streams a peer may have open towards us at once.
const STREAMS_PER_CONNECTION_MAX: u32 = 256;
/// The QUIC application close code of a node that leaves the mesh (`statusmesh leave`).
pub const LEAVE_CODE: u32 = 3;
/// How long a leaving node waits for its queued frames to go out before it closes, at most.
const LEAVE_FLUSH: Duration = Duration::from_secs(1);
/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A transport error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// TLS configuration failed (bad key or certificate).
    #[error("tls configuration: {0}")]
    Tls(String),
    /// The UDP socket could not be bound.
    #[error("cannot bind QUIC on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
}

/// A frame that arrived from an authenticated peer.
#[derive(Debug)]
pub struct Inbound {
    pub from: String,
    pub bytes: Vec<u8>,
}

/// What the transport learned about membership, for the driver (sent before any frame of
/// the connection it is about).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberNotice {
    /// A node not listed in the topology connected with a certificate from the cluster CA
    /// naming `id` in `region` (a region of the topology); `addr` is where to dial it.
    Joined {
        id: String,
        region: String,
        addr: SocketAddr,
    },
    /// A peer closed its connection saying it leaves ([`LEAVE_CODE`]).
    Left { id: String },
}

/// Who may connect: the listed nodes, and joined nodes of these regions.
#[derive(Debug)]
struct Admission {
    /// The ids of the listed nodes other than this one.
    listed: Vec<String>,
    /// The topology's regions: a joined node's certificate must name one.
    regions: Vec<String>,
    /// This node's id: a certificate naming it is refused.
    node: String,
}

/// Counters of one peer link.
#[derive(Debug, Default)]
pub struct LinkStats {
    pub frames_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub frames_dropped: AtomicU64,
    pub connects: AtomicU64,
}

/// The running transport of one node.
#[derive(Debug)]
pub struct Transport {
    /// This node's id: every metric carries it, since `statusmesh dev` runs many in one process.
    node: String,
    endpoint: quinn::Endpoint,
    links: BTreeMap<String, (mpsc::Sender<Vec<u8>>, Arc<LinkStats>)>,
    /// The client side of new connections (replaced by a reload).
    client: watch::Sender<Arc<quinn::ClientConfig>>,
    /// Bumped by each reload: connections of an older identity close.
    generation: watch::Sender<u64>,
    /// SHA-256 of this node's certificate (hex), to tell which one it presents.
    fingerprint: String,
    /// What new links (to joined members) are started with.
    shutdown: watch::Receiver<bool>,
}

impl Transport {
    /// Binds `bind`, accepts authenticated peers (frames go to `inbound`) and starts one
    /// sender per peer in `peers` (id → address). The ids in `peers` may connect, and nodes
    /// whose certificate names an id and one of `regions` (they are reported on `notices`);
    /// a certificate naming this node itself, or no member, is refused. Stops when
    /// `shutdown` turns true.
    pub fn start(
        identity: &NodeIdentity,
        bind: SocketAddr,
        peers: &[(String, SocketAddr)],
        regions: &[String],
        inbound: mpsc::Sender<Inbound>,
        notices: mpsc::Sender<MemberNotice>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, TransportError> {
        let server = server_config(identity)?;
        let endpoint = quinn::Endpoint::server(server, bind).map_err(|e| TransportError::Bind {
            addr: bind,
            reason: e.to_string(),
        })?;
        let client = watch::Sender::new(Arc::new(client_config(identity)?));
        let generation = watch::Sender::new(0u64);
        let node = identity.node_id.clone();
        // This node's own id is not among `peers`: a certificate for it is refused too.
        let admission = Arc::new(Admission {
            listed: peers
                .iter()
                .filter(|(id, _)| *id != node)
                .map(|(id, _)| id.clone())
                .collect(),
            regions: regions.to_vec(),
            node: node.clone(),
        });
        tokio::spawn(accept_loop(
            endpoint.clone(),
            node.clone(),
            admission,
            inbound,
            notices,
            generation.subscribe(),
            shutdown.clone(),
        ));
        let mut links = BTreeMap::new();
        for (id, addr) in peers {
            let (tx, rx) = mpsc::channel(PEER_QUEUE_MAX);
            let stats = Arc::new(LinkStats::default());
            tokio::spawn(send_loop(
                Dial {
                    endpoint: endpoint.clone(),
                    client: client.subscribe(),
                    generation: generation.subscribe(),
                },
                node.clone(),
                id.clone(),
                *addr,
                rx,
                stats.clone(),
                shutdown.clone(),
            ));
            links.insert(id.clone(), (tx, stats));
        }
        Ok(Self {
            node,
            endpoint,
            links,
            client,
            generation,
            fingerprint: fingerprint(identity),
            shutdown,
        })
    }

    /// Starts a link to `id` at `addr` (a joined member); a link it has already is kept.
    pub fn add_link(&mut self, id: &str, addr: SocketAddr) {
        if self.links.contains_key(id) {
            return;
        }
        let (tx, rx) = mpsc::channel(PEER_QUEUE_MAX);
        let stats = Arc::new(LinkStats::default());
        tokio::spawn(send_loop(
            Dial {
                endpoint: self.endpoint.clone(),
                client: self.client.subscribe(),
                generation: self.generation.subscribe(),
            },
            self.node.clone(),
            id.to_owned(),
            addr,
            rx,
            stats.clone(),
            self.shutdown.clone(),
        ));
        self.links.insert(id.to_owned(), (tx, stats));
    }

    /// Drops the link to `id` (a member that left or was forgotten): its sender ends.
    pub fn remove_link(&mut self, id: &str) {
        self.links.remove(id);
    }

    /// Leaves the mesh: waits (at most [`LEAVE_FLUSH`]) for the queued frames to go out,
    /// then closes every connection with [`LEAVE_CODE`], so that peers drop this node.
    pub async fn leave(&self) {
        let step = Duration::from_millis(10);
        for _ in 0..(LEAVE_FLUSH.as_millis() / step.as_millis()) {
            if self
                .links
                .values()
                .all(|(tx, _)| tx.capacity() == PEER_QUEUE_MAX)
            {
                break;
            }
            tokio::time::sleep(step).await;
        }
        self.endpoint.close(LEAVE_CODE.into(), b"leaving");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }

    /// The SHA-256 (hex) of the certificate this node presents now.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Makes `identity` this node's: checked whole first (a certificate and key that do
    /// not make a TLS configuration change nothing), then used for every new handshake;
    /// open connections close and are made again on it.
    pub fn reload(&mut self, identity: &NodeIdentity) -> Result<(), TransportError> {
        let server = server_config(identity)?;
        let client = client_config(identity)?;
        self.endpoint.set_server_config(Some(server));
        self.client.send_replace(Arc::new(client));
        self.generation.send_modify(|g| *g += 1);
        self.fingerprint = fingerprint(identity);
        Ok(())
    }

    /// Queues a frame for `to`. Returns false when it was dropped (unknown peer or full
    /// queue); the drop is counted.
    pub fn send(&self, to: &str, bytes: Vec<u8>) -> bool {
        let Some((tx, stats)) = self.links.get(to) else {
            return false;
        };
        match tx.try_send(bytes) {
            Ok(()) => true,
            Err(_) => {
                stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(
                    "statusmesh_transport_frames_dropped_total",
                    "node" => self.node.clone(),
                    "peer" => to.to_owned()
                )
                .increment(1);
                false
            }
        }
    }

    /// Exports each peer's send queue depth as a gauge.
    pub fn export_gauges(&self) {
        for (peer, (tx, _)) in &self.links {
            metrics::gauge!(
                "statusmesh_transport_send_queue_depth",
                "node" => self.node.clone(),
                "peer" => peer.clone()
            )
            .set((PEER_QUEUE_MAX - tx.capacity()) as f64);
        }
    }

    /// The address the endpoint is bound to.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    /// Counters per peer.
    pub fn link_stats(&self) -> impl Iterator<Item = (&str, &LinkStats)> {
        self.links
            .iter()
            .map(|(id, (_, s))| (id.as_str(), s.as_ref()))
    }

    /// Closes every connection and waits briefly for the close to be sent.
    pub async fn close(&self) {
        self.endpoint.close(0u32.into(), b"shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

/// The rustls provider: ring, TLS 1.3 only (QUIC requires it).
/// SHA-256 (hex) of the identity's leaf certificate.
pub fn fingerprint(identity: &NodeIdentity) -> String {
    use sha2::Digest as _;
    identity.chain.first().map_or_else(String::new, |leaf| {
        sha2::Sha256::digest(leaf.as_ref())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(identity: &NodeIdentity) -> Result<Arc<rustls::RootCertStore>, TransportError> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in &identity.cas {
        roots
            .add(ca.clone())
            .map_err(|e| TransportError::Tls(format!("cluster CA: {e}")))?;
    }
    Ok(Arc::new(roots))
}

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut config = quinn::TransportConfig::default();
    config.keep_alive_interval(Some(Duration::from_secs(2)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(10)) {
        config.max_idle_timeout(Some(idle));
    }
    config.max_concurrent_uni_streams(STREAMS_PER_CONNECTION_MAX.into());
    config.max_concurrent_bidi_streams(0u32.into());
    Arc::new(config)
}

/// The server side: requires a client certificate from the cluster CA.
pub fn server_config(identity: &NodeIdentity) -> Result<quinn::ServerConfig, TransportError> {
    let tls = |e: rustls::Error| TransportError::Tls(e.to_string());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(identity)?, provider())
            .build()
            .map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(tls)?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let quic =
        QuicServerConfig::try_from(crypto).map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport_config());
    Ok(config)
}

/// The client side: trusts only the cluster CA and presents this node's certificate.
pub fn client_config(identity: &NodeIdentity) -> Result<quinn::ClientConfig, TransportError> {
    let tls = |e: rustls::Error| TransportError::Tls(e.to_string());
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_root_certificates(roots(identity)?)
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(tls)?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let quic =
        QuicClientConfig::try_from(crypto).map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config());
    Ok(config)
}

/// Which of the `known` node ids the peer's certificate is valid for (the chain itself was
/// already verified against the cluster CA during the handshake).
pub fn peer_node_id(connection: &quinn::Connection, known: &[String]) -> Option<String> {
    let identity = connection.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    let leaf = chain.first()?;
    let cert = webpki::EndEntityCert::try_from(leaf).ok()?;
    let mut matches = known.iter().filter(|id| {
        ServerName::try_from(id.as_str())
            .ok()
            .is_some_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
    });
    let first = matches.next()?.clone();
    // A certificate valid for two node ids identifies neither.
    matches.next().is_none().then_some(first)
}

/// Who the peer of an authenticated connection is: a listed node its certificate is valid
/// for, or a joined node its certificate names (with its region); `None`: refused.
fn admit(
    connection: &quinn::Connection,
    admission: &Admission,
) -> Option<(String, Option<String>)> {
    if let Some(id) = peer_node_id(connection, &admission.listed) {
        return Some((id, None));
    }
    let identity = connection.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    let leaf = chain.first()?;
    let (id, region) = crate::certs::member_claim(leaf)?;
    statusmesh_gossip::topology::check_node_id(&id).ok()?;
    if id == admission.node || !admission.regions.contains(&region) {
        return None;
    }
    // The id it names must be the DNS name it is valid for, as for listed nodes.
    peer_node_id(connection, std::slice::from_ref(&id))?;
    Some((id, Some(region)))
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    node: String,
    admission: Arc<Admission>,
    inbound: mpsc::Sender<Inbound>,
    notices: mpsc::Sender<MemberNotice>,
    generation: watch::Receiver<u64>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(INBOUND_CONNECTIONS_MAX));
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            _ = shutdown.changed() => return,
        };
        let Some(incoming) = incoming else { return };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            incoming.refuse();
            metrics::counter!("statusmesh_transport_connections_refused_total", "node" => node.clone())
                .increment(1);
            continue;
        };
        let admission = admission.clone();
        let inbound = inbound.clone();
        let notices = notices.clone();
        let node = node.clone();
        let mut generation = generation.clone();
        generation.mark_unchanged();
        tokio::spawn(async move {
            let _permit = permit;
            let remote = incoming.remote_address();
            let connection = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    // A certificate not from the cluster CA ends here (unknown issuer).
                    warn!(%node, %remote, error = %e, "peer handshake failed: refused (a certificate from another CA, or none)");
                    metrics::counter!("statusmesh_transport_handshakes_failed_total", "node" => node)
                        .increment(1);
                    return;
                }
            };
            let Some((peer, joined)) = admit(&connection, &admission) else {
                warn!(%node, %remote, "peer certificate names no other member of this cluster (nor an id and a region of it); closing");
                metrics::counter!("statusmesh_transport_connections_refused_total", "node" => node)
                    .increment(1);
                connection.close(1u32.into(), b"unknown node id");
                return;
            };
            debug!(%remote, %peer, "peer connected");
            if let Some(region) = joined {
                let notice = MemberNotice::Joined {
                    id: peer.clone(),
                    region,
                    addr: remote,
                };
                if notices.send(notice).await.is_err() {
                    return;
                }
            }
            let left = receive_frames(connection, node, peer.clone(), inbound, generation).await;
            if left {
                let _ = notices.send(MemberNotice::Left { id: peer }).await;
            }
        });
    }
}

/// Reads the frames of one connection until it ends; true when the peer closed it saying
/// it leaves ([`LEAVE_CODE`]).
async fn receive_frames(
    connection: quinn::Connection,
    node: String,
    peer: String,
    inbound: mpsc::Sender<Inbound>,
    mut generation: watch::Receiver<u64>,
) -> bool {
    loop {
        let accepted = tokio::select! {
            accepted = connection.accept_uni() => accepted,
            _ = generation.changed() => {
                // This node's identity changed: the peer must handshake with the new one.
                connection.close(2u32.into(), b"identity reloaded");
                return false;
            }
        };
        let mut stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                debug!(%peer, error = %e, "peer connection ended");
                return matches!(
                    e,
                    quinn::ConnectionError::ApplicationClosed(ref close)
                        if close.error_code == quinn::VarInt::from_u32(LEAVE_CODE)
                );
            }
        };
        // Read one frame at a time per connection: the bounded inbound queue then pushes
        // back on a peer that sends faster than the node applies.
        match stream.read_to_end(FRAME_BYTES_MAX).await {
            Ok(bytes) => {
                metrics::counter!("statusmesh_frames_in_total", "node" => node.clone(), "peer" => peer.clone())
                    .increment(1);
                metrics::counter!("statusmesh_bytes_in_total", "node" => node.clone(), "peer" => peer.clone())
                    .increment(bytes.len() as u64);
                if inbound
                    .send(Inbound {
                        from: peer.clone(),
                        bytes,
                    })
                    .await
                    .is_err()
                {
                    return false;
                }
            }
            Err(e) => {
                warn!(%peer, error = %e, "frame too large or stream broken; ignored");
                metrics::counter!("statusmesh_frames_rejected_total", "node" => node.clone(), "peer" => peer.clone())
                    .increment(1);
            }
        }
    }
}

/// What a send loop dials with: the endpoint, the current client configuration, and the
/// reload generation that retires its connection.
struct Dial {
    endpoint: quinn::Endpoint,
    client: watch::Receiver<Arc<quinn::ClientConfig>>,
    generation: watch::Receiver<u64>,
}

async fn send_loop(
    mut dial: Dial,
    node: String,
    peer: String,
    addr: SocketAddr,
    mut frames: mpsc::Receiver<Vec<u8>>,
    stats: Arc<LinkStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_MIN;
    let mut connection: Option<quinn::Connection> = None;
    loop {
        let conn = match &connection {
            Some(c) if c.close_reason().is_none() => c.clone(),
            _ => {
                let client = (**dial.client.borrow_and_update()).clone();
                dial.generation.mark_unchanged();
                match connect(&dial.endpoint, client, &peer, addr).await {
                    Ok(c) => {
                        info!(%peer, %addr, "connected to peer");
                        stats.connects.fetch_add(1, Ordering::Relaxed);
                        backoff = BACKOFF_MIN;
                        connection = Some(c.clone());
                        c
                    }
                    Err(reason) => {
                        debug!(%peer, %addr, %reason, "connect failed; backing off");
                        let jittered = backoff.mul_f64(rand::rng().random_range(0.5..1.0));
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        // Frames queued while the peer is unreachable are dropped, not held:
                        // anti-entropy brings the peer up to date when it is back.
                        let sleep = tokio::time::sleep(jittered);
                        tokio::pin!(sleep);
                        loop {
                            tokio::select! {
                                _ = &mut sleep => break,
                                frame = frames.recv() => match frame {
                                    Some(_) => {
                                        stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
                                        metrics::counter!(
                                            "statusmesh_transport_frames_dropped_total",
                                            "node" => node.clone(),
                                            "peer" => peer.clone()
                                        )
                                        .increment(1);
                                    }
                                    None => return,
                                },
                                _ = shutdown.changed() => return,
                            }
                        }
                        continue;
                    }
                }
            }
        };
        let frame = tokio::select! {
            frame = frames.recv() => frame,
            _ = dial.generation.changed() => {
                // Reloaded: this connection carries the old identity; dial again.
                conn.close(2u32.into(), b"identity reloaded");
                connection = None;
                continue;
            }
            _ = shutdown.changed() => return,
        };
        let Some(bytes) = frame else { return };
        let len = bytes.len() as u64;
        match send_frame(&conn, &bytes).await {
            Ok(()) => {
                stats.frames_sent.fetch_add(1, Ordering::Relaxed);
                stats.bytes_sent.fetch_add(len, Ordering::Relaxed);
                metrics::counter!("statusmesh_frames_out_total", "node" => node.clone(), "peer" => peer.clone())
                    .increment(1);
                metrics::counter!("statusmesh_bytes_out_total", "node" => node.clone(), "peer" => peer.clone())
                    .increment(len);
            }
            Err(reason) => {
                debug!(%peer, %reason, "send failed; reconnecting");
                stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(
                    "statusmesh_transport_frames_dropped_total",
                    "node" => node.clone(),
                    "peer" => peer.clone()
                )
                .increment(1);
                connection = None;
            }
        }
    }
}

async fn connect(
    endpoint: &quinn::Endpoint,
    client: quinn::ClientConfig,
    peer: &str,
    addr: SocketAddr,
) -> Result<quinn::Connection, String> {
    let connecting = endpoint
        .connect_with(client, addr, peer)
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(5), connecting)
        .await
        .map_err(|_| "handshake timed out".to_owned())?
        .map_err(|e| e.to_string())
}

async fn send_frame(connection: &quinn::Connection, bytes: &[u8]) -> Result<(), String> {
    let mut stream = connection.open_uni().await.map_err(|e| e.to_string())?;
    stream.write_all(bytes).await.map_err(|e| e.to_string())?;
    stream.finish().map_err(|e| e.to_string())?;
    Ok(())
}
