//! regions.toml: the deployment, parsed into validated types.
//!
//! A thin layer over [`statusmesh_gossip::topology`], which parses the file (shared with the
//! simulator); this layer adds what only a deployment needs: every node listed with valid,
//! unique addresses, and no simulator node counts. Every error names the file, the key, the
//! value and the rule.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

use statusmesh_gossip::topology::{self as shared, TopologyError};

/// The repository's regions.toml, embedded so that `statusmesh dev` needs no set-up.
pub const EMBEDDED_REGIONS: &str = include_str!("../../regions.toml");

/// A config error: what is wrong, where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {reason}")]
    Read { file: String, reason: String },
    /// The file is not valid TOML or has a key of the wrong type or an unknown key; toml's
    /// message carries the line and column.
    #[error("{file}: {reason}")]
    Syntax { file: String, reason: String },
    /// A value breaks a rule.
    #[error("{file}: {key} = {value:?}: {rule}")]
    Invalid {
        file: String,
        key: String,
        value: String,
        rule: String,
    },
}

/// A deployment: the cluster, its regions and nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    pub cluster: String,
    pub regions: Vec<Region>,
    pub nodes: Vec<NodeSpec>,
}

/// A region with its coordinates; the one type the simulator reads too (`nodes` is always
/// `None` in a deployment).
pub use shared::Region;

/// One node of the deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub id: String,
    pub region: String,
    pub gossip: SocketAddr,
    pub http: SocketAddr,
}

impl Topology {
    /// Reads and validates a regions.toml file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            file: file.clone(),
            reason: e.to_string(),
        })?;
        Self::parse(&file, &text)
    }

    /// Validates the text of a regions.toml; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        let parsed = shared::Topology::parse(file, text).map_err(ConfigError::from)?;
        let invalid = |key: String, value: String, rule: &str| ConfigError::Invalid {
            file: file.to_owned(),
            key,
            value,
            rule: rule.to_owned(),
        };
        let mut regions = Vec::with_capacity(parsed.regions.len());
        for (i, r) in parsed.regions.iter().enumerate() {
            if let Some(n) = r.nodes {
                return Err(invalid(
                    format!("region[{i}].nodes"),
                    n.to_string(),
                    "node counts are for simulator topologies; list [[node]] entries for a deployment",
                ));
            }
            regions.push(r.clone());
        }
        let mut nodes = Vec::with_capacity(parsed.nodes.len());
        let mut addrs = BTreeSet::new();
        for (i, n) in parsed.nodes.iter().enumerate() {
            let key = |field: &str| format!("node[{i}].{field}");
            let address =
                |field: &str, value: &Option<String>| -> Result<SocketAddr, ConfigError> {
                    let text = value.as_deref().ok_or_else(|| {
                        invalid(key(field), String::new(), "is required for a deployment")
                    })?;
                    text.parse().map_err(|_| {
                        invalid(
                            key(field),
                            text.to_owned(),
                            "must be an IP:port socket address",
                        )
                    })
                };
            let gossip = address("gossip", &n.gossip)?;
            let http = address("http", &n.http)?;
            for (field, addr) in [("gossip", gossip), ("http", http)] {
                if !addrs.insert((field == "gossip", addr)) {
                    return Err(invalid(
                        key(field),
                        addr.to_string(),
                        "addresses must be unique",
                    ));
                }
            }
            nodes.push(NodeSpec {
                id: n.id.clone(),
                region: n.region.clone(),
                gossip,
                http,
            });
        }
        if nodes.is_empty() {
            return Err(invalid(
                "node".into(),
                String::new(),
                "at least one [[node]] is required",
            ));
        }
        Ok(Self {
            cluster: parsed.cluster,
            regions,
            nodes,
        })
    }

    /// The embedded default topology (the repository's regions.toml).
    pub fn embedded() -> Result<Self, ConfigError> {
        Self::parse("regions.toml (embedded)", EMBEDDED_REGIONS)
    }

    /// The node with `id`, or an error that lists the ids there are.
    pub fn node(&self, id: &str) -> Result<&NodeSpec, ConfigError> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .ok_or_else(|| ConfigError::Invalid {
                file: "--node".into(),
                key: "node".into(),
                value: id.to_owned(),
                rule: format!(
                    "no such node in the topology; nodes are: {}",
                    self.nodes
                        .iter()
                        .map(|n| n.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
    }
}

impl Topology {
    /// Checks that a node not listed in the topology may join it as `id` in `region`: the
    /// region is one of the topology's (`file` names it in the error) and the id is none of
    /// its nodes' (a listed node runs with `--node` alone).
    pub fn check_joiner(&self, file: &Path, id: &str, region: &str) -> Result<(), ConfigError> {
        if !self.regions.iter().any(|r| r.name == region) {
            return Err(ConfigError::Invalid {
                file: "--region".into(),
                key: "region".into(),
                value: region.to_owned(),
                rule: format!(
                    "not a region of {}; regions are: {}",
                    file.display(),
                    self.regions
                        .iter()
                        .map(|r| r.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        if self.nodes.iter().any(|n| n.id == id) {
            return Err(ConfigError::Invalid {
                file: "--node".into(),
                key: "node".into(),
                value: id.to_owned(),
                rule: format!(
                    "listed in {}: a listed node runs without --region and --join",
                    file.display()
                ),
            });
        }
        shared::check_node_id(id).map_err(|rule| ConfigError::Invalid {
            file: "--node".into(),
            key: "node".into(),
            value: id.to_owned(),
            rule: rule.to_owned(),
        })
    }

    /// The listed node whose gossip address is `seed` (a `--join` address), or an error
    /// naming the addresses there are: a seed is dialled by the node id its certificate must
    /// be valid for.
    pub fn seed(&self, seed: SocketAddr) -> Result<&NodeSpec, ConfigError> {
        self.nodes
            .iter()
            .find(|n| n.gossip == seed)
            .ok_or_else(|| ConfigError::Invalid {
                file: "--join".into(),
                key: "join".into(),
                value: seed.to_string(),
                rule: format!(
                    "no node of the topology has this gossip address; they are: {}",
                    self.nodes
                        .iter()
                        .map(|n| n.gossip.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
    }
}

impl From<TopologyError> for ConfigError {
    fn from(error: TopologyError) -> Self {
        match error {
            TopologyError::Syntax { file, reason } => ConfigError::Syntax { file, reason },
            TopologyError::Invalid {
                file,
                key,
                value,
                rule,
            } => ConfigError::Invalid {
                file,
                key,
                value,
                rule,
            },
            // The shared error is non-exhaustive; a future variant still names the file.
            other => ConfigError::Syntax {
                file: String::new(),
                reason: other.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_topology_has_three_regions_of_two_nodes() {
        let topology = Topology::embedded().expect("valid");
        assert_eq!(topology.regions.len(), 3);
        assert_eq!(topology.nodes.len(), 6);
    }

    #[test]
    fn errors_name_the_key_the_value_and_the_rule() {
        let text = EMBEDDED_REGIONS.replacen("lat = 53.35", "lat = 153.35", 1);
        let err = Topology::parse("x.toml", &text)
            .expect_err("bad lat")
            .to_string();
        assert!(
            err.contains("x.toml") && err.contains("region[0].lat") && err.contains("153.35"),
            "{err}"
        );
        let text = format!("{EMBEDDED_REGIONS}\n[extra]\nkey = 1\n");
        let err = Topology::parse("x.toml", &text)
            .expect_err("unknown key")
            .to_string();
        assert!(err.contains("extra") && err.contains("line"), "{err}");
        let text = EMBEDDED_REGIONS.replacen("127.0.0.1:7101", "nowhere", 1);
        let err = Topology::parse("x.toml", &text)
            .expect_err("bad addr")
            .to_string();
        assert!(err.contains("node[0].gossip"), "{err}");
    }

    #[test]
    fn simulator_node_counts_are_rejected_for_a_deployment() {
        // A new region, so that its generated ids do not collide with listed nodes.
        let text = EMBEDDED_REGIONS.replacen(
            "[[node]]",
            "[[region]]\nname = \"eu-north\"\nlat = 59.33\nlon = 18.07\nnodes = 4\n\n[[node]]",
            1,
        );
        let err = Topology::parse("x.toml", &text)
            .expect_err("node count")
            .to_string();
        assert!(
            err.contains("region[3].nodes") && err.contains('4'),
            "{err}"
        );
    }

    #[test]
    fn a_node_without_an_address_is_rejected() {
        let text = EMBEDDED_REGIONS.replacen("http = \"127.0.0.1:8101\"\n", "", 1);
        let err = Topology::parse("x.toml", &text)
            .expect_err("no http")
            .to_string();
        assert!(
            err.contains("node[0].http") && err.contains("required"),
            "{err}"
        );
    }
}
