//! regions.toml: the deployment, parsed into validated types.
//!
//! Raw serde structs (unknown keys are errors) are converted into [`Topology`]; every error
//! names the file, the key, the value and the rule.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    cluster: RawCluster,
    #[serde(default)]
    region: Vec<RawRegion>,
    #[serde(default)]
    node: Vec<RawNode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    name: String,
    lat: f64,
    lon: f64,
    /// Simulator only: a node count instead of listed nodes.
    nodes: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: String,
    region: String,
    gossip: String,
    http: String,
}

/// A deployment: the cluster, its regions and nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    pub cluster: String,
    pub regions: Vec<Region>,
    pub nodes: Vec<NodeSpec>,
}

/// A region with its coordinates (for latency models and nearest-node choice).
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    pub name: String,
    pub lat: f64,
    pub lon: f64,
}

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
        let raw: RawFile = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: file.to_owned(),
            reason: e.to_string().trim_end().to_owned(),
        })?;
        let invalid = |key: String, value: String, rule: &str| ConfigError::Invalid {
            file: file.to_owned(),
            key,
            value,
            rule: rule.to_owned(),
        };
        check_name(&raw.cluster.name)
            .map_err(|rule| invalid("cluster.name".into(), raw.cluster.name.clone(), rule))?;
        let mut regions = Vec::new();
        let mut region_names = BTreeSet::new();
        for (i, r) in raw.region.iter().enumerate() {
            let key = |field: &str| format!("region[{i}].{field}");
            check_name(&r.name).map_err(|rule| invalid(key("name"), r.name.clone(), rule))?;
            if !region_names.insert(r.name.clone()) {
                return Err(invalid(
                    key("name"),
                    r.name.clone(),
                    "region names must be unique",
                ));
            }
            if !(-90.0..=90.0).contains(&r.lat) {
                return Err(invalid(
                    key("lat"),
                    r.lat.to_string(),
                    "latitude must be within -90..=90",
                ));
            }
            if !(-180.0..=180.0).contains(&r.lon) {
                return Err(invalid(
                    key("lon"),
                    r.lon.to_string(),
                    "longitude must be within -180..=180",
                ));
            }
            if let Some(n) = r.nodes {
                return Err(invalid(
                    key("nodes"),
                    n.to_string(),
                    "node counts are for simulator topologies; list [[node]] entries for a deployment",
                ));
            }
            regions.push(Region {
                name: r.name.clone(),
                lat: r.lat,
                lon: r.lon,
            });
        }
        if regions.is_empty() {
            return Err(invalid(
                "region".into(),
                String::new(),
                "at least one [[region]] is required",
            ));
        }
        let mut nodes = Vec::new();
        let mut ids = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for (i, n) in raw.node.iter().enumerate() {
            let key = |field: &str| format!("node[{i}].{field}");
            check_node_id(&n.id).map_err(|rule| invalid(key("id"), n.id.clone(), rule))?;
            if !ids.insert(n.id.clone()) {
                return Err(invalid(key("id"), n.id.clone(), "node ids must be unique"));
            }
            if !region_names.contains(&n.region) {
                return Err(invalid(
                    key("region"),
                    n.region.clone(),
                    "must name a [[region]] of this file",
                ));
            }
            let gossip: SocketAddr = n.gossip.parse().map_err(|_| {
                invalid(
                    key("gossip"),
                    n.gossip.clone(),
                    "must be an IP:port socket address",
                )
            })?;
            let http: SocketAddr = n.http.parse().map_err(|_| {
                invalid(
                    key("http"),
                    n.http.clone(),
                    "must be an IP:port socket address",
                )
            })?;
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
            cluster: raw.cluster.name,
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

fn check_name(value: &str) -> Result<(), &'static str> {
    statusmesh_crdt::Name::parse("name", value)
        .map(|_| ())
        .map_err(|_| {
            "must be 1-64 characters of a-z, 0-9, '-', '_', '.', starting with a letter or digit"
        })
}

/// Node ids end up as DNS names in certificates, so they use the DNS label charset.
fn check_node_id(value: &str) -> Result<(), &'static str> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err("must be 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'")
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
}
