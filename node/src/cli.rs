//! The flags of `statusmesh run` (and of `check-config`, which takes the same ones and
//! checks them as `run` would, see [`crate::check_config`]): one definition for both, so a
//! configuration that checks is one that runs.

use std::path::PathBuf;

use anyhow::bail;
use statusmesh_gossip::version::{FRAME_VERSION_MAX, FRAME_VERSION_MIN};
use statusmesh_gossip::{Config as GossipConfig, VersionRange};

use crate::http::frame_ancestors::FrameAncestors;
use crate::http::tls::HttpTls;
use crate::settings::{NodeSettings, Tokens};

/// When a document's history is compacted into a new epoch (its transitions go to the
/// archive on disk; see the README's "Bounded history").
#[derive(Debug, clap::Args)]
pub struct EpochArgs {
    /// Roll a document over when its live epoch holds more than this many changes (0: never
    /// on count).
    #[arg(long, default_value_t = 2_000)]
    pub epoch_history_changes_max: usize,
    /// Roll a document over when its live epoch's changes add up to more than this many bytes
    /// (0: never on size).
    #[arg(long, default_value_t = 8 << 20)]
    pub epoch_history_bytes_max: u64,
    /// Roll a document over when its live epoch is older than this many seconds and has
    /// changes of its own (0: never on age).
    #[arg(long, default_value_t = 0)]
    pub epoch_age_s_max: u64,
}

impl EpochArgs {
    pub fn apply(&self, mut gossip: GossipConfig) -> GossipConfig {
        gossip.epoch.history_changes_max = self.epoch_history_changes_max;
        gossip.epoch.history_bytes_max = self.epoch_history_bytes_max;
        gossip.epoch.age_ms_max = self.epoch_age_s_max.saturating_mul(1_000);
        gossip
    }
}

/// Which frame versions the node advertises and speaks to its peers (see the README's
/// "Rolling upgrades").
#[derive(Debug, clap::Args)]
pub struct ProtocolArgs {
    /// Speak frame versions up to this one only: the node emulates the release whose newest
    /// version this is (the previous release's is 2), for staged rollouts and their tests.
    #[arg(
        long,
        value_name = "V",
        value_parser = clap::value_parser!(u8)
            .range(i64::from(FRAME_VERSION_MIN)..=i64::from(FRAME_VERSION_MAX))
    )]
    pub protocol_max: Option<u8>,
    /// For tests of the refusal only: advertise frame versions from this one on. Above the
    /// newest this release speaks, the node emulates a later release that no node of this
    /// one talks to (every peer refuses it, and it them).
    #[arg(
        long,
        hide = true,
        value_name = "V",
        value_parser = clap::value_parser!(u8).range(i64::from(FRAME_VERSION_MIN)..)
    )]
    pub protocol_min: Option<u8>,
}

impl ProtocolArgs {
    /// The gossip settings with these versions; a min above the max is an error naming both
    /// flags.
    pub fn apply(&self, mut gossip: GossipConfig) -> anyhow::Result<GossipConfig> {
        let min = self.protocol_min.unwrap_or(FRAME_VERSION_MIN);
        let max = match self.protocol_max {
            Some(max) => max,
            // A min beyond this release's newest version makes a range of that one version.
            None => FRAME_VERSION_MAX.max(min),
        };
        if min > max {
            bail!("--protocol-min {min} is above --protocol-max {max}");
        }
        gossip.versions.frame = VersionRange { min, max };
        Ok(gossip)
    }
}

/// How `POST /v1/integrations/alertmanager` turns alerts into observations (see the
/// README's "Alertmanager in").
#[derive(Debug, clap::Args)]
pub struct AlertmanagerArgs {
    /// The state of a firing alert without a `statusmesh_state` label, by its `severity`
    /// label: SEVERITY=STATE pairs, comma-separated; `*=STATE` for any other severity.
    #[arg(long, default_value = crate::settings::SEVERITY_MAP_DEFAULT)]
    pub alertmanager_severity: crate::settings::SeverityMap,
    /// Open an incident for a component when its first alert fires, resolved when its last
    /// alert resolves (the label `statusmesh_incident` says so per alert).
    #[arg(long)]
    pub alertmanager_incidents: bool,
    /// How long an observation made of firing alerts holds without Alertmanager repeating
    /// them, in seconds (keep it above the route's `repeat_interval`).
    #[arg(
        long,
        default_value_t = crate::settings::ALERTMANAGER_FIRING_TTL_DEFAULT.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..=7 * 24 * 3600)
    )]
    pub alertmanager_firing_ttl_s: u64,
}

impl AlertmanagerArgs {
    pub fn settings(self) -> crate::settings::AlertmanagerSettings {
        crate::settings::AlertmanagerSettings {
            severity: self.alertmanager_severity,
            incidents: self.alertmanager_incidents,
            firing_ttl: std::time::Duration::from_secs(self.alertmanager_firing_ttl_s),
        }
    }
}

/// Everything `statusmesh run` takes.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The topology file.
    #[arg(long)]
    pub config: PathBuf,
    /// This node's id in the topology.
    #[arg(long)]
    pub node: String,
    /// Directory made by `statusmesh certs`.
    #[arg(long)]
    pub certs: PathBuf,
    /// Also reload the certificate, key and CA bundle when their files change, looking every
    /// this many seconds (0: only on SIGHUP).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub certs_watch_s: u64,
    /// Serve the client API over HTTPS with this certificate chain (PEM, the leaf first; ALPN
    /// h2 and http/1.1). Reloaded with the node's certificates (SIGHUP, --certs-watch-s).
    /// Without it the client API is plain HTTP.
    #[arg(long, value_name = "FILE", requires = "http_tls_key")]
    pub http_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --http-tls-cert.
    #[arg(long, value_name = "FILE", requires = "http_tls_cert")]
    pub http_tls_key: Option<PathBuf>,
    /// Where this node keeps its snapshots and change logs.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The write token clients must present (or set STATUSMESH_TOKEN).
    #[arg(
        long,
        env = "STATUSMESH_TOKEN",
        hide_env_values = true,
        required_unless_present = "tokens",
        conflicts_with = "tokens"
    )]
    pub token: Option<String>,
    /// A TOML file of named write tokens ([[token]] name = "..", secret = "..").
    #[arg(long)]
    pub tokens: Option<PathBuf>,
    /// Most SSE subscribers and waiting long-polls served at once (503 beyond it).
    #[arg(long, default_value_t = crate::settings::SUBSCRIBERS_MAX)]
    pub subscribers_max: usize,
    /// Events the node keeps for its SSE subscribers to read at their pace; one that falls
    /// further behind catches up from the document's history (page by page while it keeps
    /// reading). Each holds an event's bytes until it leaves the ring.
    #[arg(
        long,
        default_value_t = crate::driver::PUBLISH_BUFFER as u32,
        value_parser = clap::value_parser!(u32).range(16..=1 << 20)
    )]
    pub sse_ring_events: u32,
    /// Sustained writes per second per token, with a burst of two seconds' worth
    /// (429 with Retry-After beyond it).
    #[arg(
        long,
        default_value_t = crate::http::limits::WRITES_PER_SECOND_PER_TOKEN,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000)
    )]
    pub writes_per_second_per_token: u32,
    /// How long an HTTP client may take to send a request's headers (its connection is
    /// then closed), and again its body (408), in milliseconds (100 to 600000).
    #[arg(
        long,
        default_value_t = 30_000,
        value_parser = clap::value_parser!(u64).range(100..=600_000)
    )]
    pub request_read_timeout_ms: u64,
    /// Who may embed the status page in a frame: the sources of its CSP frame-ancestors,
    /// space-separated ('self', https:, https://status.example.com); 'none' sends
    /// X-Frame-Options: DENY too.
    #[arg(long, value_name = "SOURCES", default_value = "'none'", value_parser = FrameAncestors::parse)]
    pub frame_ancestors: FrameAncestors,
    /// Join the mesh without being listed in regions.toml: this node's region, one of the
    /// topology's (its certificate, from `statusmesh certs issue`, names the same). Needs
    /// --join, --gossip-addr and --http-addr.
    #[arg(long, requires_all = ["join", "gossip_addr", "http_addr"])]
    pub region: Option<String>,
    /// The seeds a joining node announces itself to: gossip addresses (HOST:PORT,
    /// comma-separated) of nodes listed in regions.toml.
    #[arg(long, value_delimiter = ',', requires = "region")]
    pub join: Vec<String>,
    /// Where a joining node serves gossip (QUIC, UDP).
    #[arg(long, value_name = "ADDR", requires = "region")]
    pub gossip_addr: Option<std::net::SocketAddr>,
    /// Where a joining node serves the client API.
    #[arg(long, value_name = "ADDR", requires = "region")]
    pub http_addr: Option<std::net::SocketAddr>,
    /// Remove a joined member from this node's membership once it has been down this many
    /// seconds (0: never; it stays listed as down). Listed nodes are never removed.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=30 * 24 * 3600))]
    pub forget_after_s: u64,
    #[command(flatten)]
    pub epoch: EpochArgs,
    #[command(flatten)]
    pub protocol: ProtocolArgs,
    #[command(flatten)]
    pub alertmanager: AlertmanagerArgs,
    #[command(flatten)]
    pub web: crate::http::cors::WebArgs,
    #[command(flatten)]
    pub webhooks: crate::notify::WebhookArgs,
}

/// What `run` starts from, once the flags are checked.
#[derive(Debug)]
pub struct RunPlan {
    pub config: PathBuf,
    pub node: String,
    pub certs: PathBuf,
    /// How often the certificate files are looked at; `None`: only SIGHUP reloads them.
    pub certs_watch: Option<std::time::Duration>,
    pub settings: NodeSettings,
    pub gossip: GossipConfig,
    /// What the HTTPS files held when the flags were checked (`None`: plain HTTP).
    pub http_tls: Option<crate::http::tls::Loaded>,
    /// Set for a node not listed in regions.toml (`--region`).
    pub join: Option<JoinPlan>,
}

/// How a node not listed in regions.toml joins: `--region`, `--join`, `--gossip-addr`,
/// `--http-addr` (clap requires them together).
#[derive(Debug, Clone)]
pub struct JoinPlan {
    pub region: String,
    /// The seeds' gossip addresses, resolved.
    pub seeds: Vec<std::net::SocketAddr>,
    pub gossip: std::net::SocketAddr,
    pub http: std::net::SocketAddr,
}

/// Resolves each `--join` seed (HOST:PORT); an error names the seed.
fn resolve_seeds(seeds: &[String]) -> anyhow::Result<Vec<std::net::SocketAddr>> {
    use std::net::ToSocketAddrs as _;
    if seeds.is_empty() {
        bail!("--join needs at least one seed (HOST:PORT)");
    }
    seeds
        .iter()
        .map(|seed| {
            let addr = seed
                .to_socket_addrs()
                .map_err(|e| {
                    anyhow::anyhow!("--join {seed:?}: not a HOST:PORT that resolves: {e}")
                })?
                .next();
            addr.ok_or_else(|| anyhow::anyhow!("--join {seed:?}: resolves to no address"))
        })
        .collect()
}

impl RunArgs {
    /// The node's settings from the flags; an empty token, an unreadable tokens file or HTTPS
    /// files that make no TLS configuration are an error naming it.
    pub fn plan(self) -> anyhow::Result<RunPlan> {
        let tokens = match (self.token, self.tokens) {
            (_, Some(path)) => Tokens::load(&path)?,
            (Some(token), None) if !token.is_empty() => Tokens::single(&token),
            _ => bail!("--token must not be empty (or give --tokens FILE)"),
        };
        let (http_tls, http_tls_loaded) = match (&self.http_tls_cert, &self.http_tls_key) {
            (Some(cert), Some(key)) => {
                let (tls, loaded) = HttpTls::load(cert, key)?;
                (Some(std::sync::Arc::new(tls)), Some(loaded))
            }
            // clap requires both or neither.
            _ => (None, None),
        };
        let settings = NodeSettings {
            subscribers_max: self.subscribers_max,
            sse_ring_events: self.sse_ring_events as usize,
            writes_per_second_per_token: self.writes_per_second_per_token,
            request_read_timeout: std::time::Duration::from_millis(self.request_read_timeout_ms),
            frame_ancestors: self.frame_ancestors,
            alertmanager: self.alertmanager.settings(),
            http_tls,
            ..NodeSettings::new(self.data_dir, tokens)
        };
        let settings = self.webhooks.apply(self.web.apply(settings));
        let join = match (self.region, self.gossip_addr, self.http_addr) {
            (Some(region), Some(gossip), Some(http)) => Some(JoinPlan {
                region,
                seeds: resolve_seeds(&self.join)?,
                gossip,
                http,
            }),
            // clap requires all three with --region.
            _ => None,
        };
        let mut gossip = self.protocol.apply(self.epoch.apply(GossipConfig::wan()))?;
        gossip.forget_after_ms = self.forget_after_s.saturating_mul(1_000);
        Ok(RunPlan {
            config: self.config,
            node: self.node,
            certs: self.certs,
            certs_watch: (self.certs_watch_s > 0)
                .then(|| std::time::Duration::from_secs(self.certs_watch_s)),
            settings,
            gossip,
            http_tls: http_tls_loaded,
            join,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_range(
        protocol_min: Option<u8>,
        protocol_max: Option<u8>,
    ) -> anyhow::Result<VersionRange> {
        let args = ProtocolArgs {
            protocol_max,
            protocol_min,
        };
        Ok(args.apply(GossipConfig::wan())?.versions.frame)
    }

    #[test]
    fn protocol_flags_make_the_advertised_frame_range() {
        let range = |min, max| VersionRange { min, max };
        assert_eq!(frame_range(None, None).expect("default"), range(2, 3));
        assert_eq!(frame_range(None, Some(2)).expect("previous"), range(2, 2));
        assert_eq!(frame_range(Some(4), None).expect("later"), range(4, 4));
        let error = frame_range(Some(3), Some(2)).expect_err("empty range");
        assert_eq!(
            error.to_string(),
            "--protocol-min 3 is above --protocol-max 2"
        );
    }
}
