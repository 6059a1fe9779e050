//! regions.toml, parsed from text into validated types, and the latency model over it.
//!
//! Pure: the caller reads the file and passes its text and its name (for errors). The node
//! layers address checks on top ([`NodeEntry::gossip`] and [`NodeEntry::http`] stay text
//! here); the simulator uses region node counts (`nodes = N`) and [`LatencyModel`].
//!
//! Raw serde structs (unknown keys are errors) are converted into [`Topology`]; every error
//! names the file, the key (`region[2].lat`), the value and the rule.

use std::collections::BTreeSet;

use serde::Deserialize;

/// Most nodes a topology may describe, listed and counted together.
pub const NODES_MAX: usize = 10_000;
/// Most regions a topology may describe.
pub const REGIONS_MAX: usize = 1_000;
/// Mean radius of the Earth, in kilometres.
const EARTH_RADIUS_KM: f64 = 6_371.0;
/// Fixed part of an inter-region round trip (switching, serialisation), in milliseconds.
const RTT_BASE_MS: f64 = 4.0;
/// Kilometres of great-circle distance per millisecond of round trip: light in fibre covers
/// about 200 km/ms one way, and real routes are about 1.3× longer than the great circle.
const RTT_KM_PER_MS: f64 = 75.0;
/// One-way latency between two nodes of one region, in milliseconds.
const INTRA_REGION_ONE_WAY_MS: f64 = 1.0;

/// A topology error: what is wrong, where. Parsing changes nothing, so no state is affected;
/// the fault is always the file's.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyError {
    /// Not valid TOML, a key of the wrong type or an unknown key; toml's message carries the
    /// line and column.
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
    nodes: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: String,
    region: String,
    gossip: Option<String>,
    http: Option<String>,
}

/// A deployment or a simulator topology: the cluster, its regions and nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    pub cluster: String,
    pub regions: Vec<Region>,
    /// The `[[node]]` entries, in file order.
    pub nodes: Vec<NodeEntry>,
}

/// A region with its coordinates (for the latency model and nearest-node choice).
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    pub name: String,
    /// Degrees, -90..=90.
    pub lat: f64,
    /// Degrees, -180..=180.
    pub lon: f64,
    /// Simulator topologies only: this many nodes, named `<region>-<n>` from 1.
    pub nodes: Option<u32>,
}

/// One `[[node]]` entry. Addresses are text here; the node process checks them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    pub id: String,
    pub region: String,
    pub gossip: Option<String>,
    pub http: Option<String>,
}

/// A member as the simulator sees it: an id and the index of its region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub region: usize,
}

impl Topology {
    /// Validates the text of a regions.toml; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, TopologyError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| TopologyError::Syntax {
            file: file.to_owned(),
            reason: e.to_string().trim_end().to_owned(),
        })?;
        let invalid = |key: String, value: String, rule: &str| TopologyError::Invalid {
            file: file.to_owned(),
            key,
            value,
            rule: rule.to_owned(),
        };
        check_name(&raw.cluster.name)
            .map_err(|rule| invalid("cluster.name".into(), raw.cluster.name.clone(), rule))?;
        if raw.region.len() > REGIONS_MAX {
            return Err(invalid(
                "region".into(),
                raw.region.len().to_string(),
                &format!("at most {REGIONS_MAX} regions"),
            ));
        }
        let mut regions = Vec::with_capacity(raw.region.len());
        let mut region_names = BTreeSet::new();
        let mut counted_nodes: usize = 0;
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
                if n == 0 {
                    return Err(invalid(key("nodes"), n.to_string(), "must be at least 1"));
                }
                counted_nodes = counted_nodes.saturating_add(n as usize);
                if counted_nodes > NODES_MAX {
                    return Err(invalid(
                        key("nodes"),
                        n.to_string(),
                        &format!("a topology holds at most {NODES_MAX} nodes in all"),
                    ));
                }
                // Generated ids must be valid node ids, so check the longest one now.
                let longest = format!("{}-{n}", r.name);
                check_node_id(&longest).map_err(|rule| {
                    invalid(
                        key("nodes"),
                        n.to_string(),
                        &format!("generated node id {longest:?} {rule}"),
                    )
                })?;
            }
            regions.push(Region {
                name: r.name.clone(),
                lat: r.lat,
                lon: r.lon,
                nodes: r.nodes,
            });
        }
        if regions.is_empty() {
            return Err(invalid(
                "region".into(),
                String::new(),
                "at least one [[region]] is required",
            ));
        }
        if raw.node.len() + counted_nodes > NODES_MAX {
            return Err(invalid(
                "node".into(),
                raw.node.len().to_string(),
                &format!("a topology holds at most {NODES_MAX} nodes in all"),
            ));
        }
        let mut nodes = Vec::with_capacity(raw.node.len());
        let mut ids = BTreeSet::new();
        for (i, n) in raw.node.into_iter().enumerate() {
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
            nodes.push(NodeEntry {
                id: n.id,
                region: n.region,
                gossip: n.gossip,
                http: n.http,
            });
        }
        if nodes.is_empty() && counted_nodes == 0 {
            return Err(invalid(
                "node".into(),
                String::new(),
                "at least one [[node]], or a [[region]] with nodes = N, is required",
            ));
        }
        let topology = Self {
            cluster: raw.cluster.name,
            regions,
            nodes,
        };
        // Generated ids may collide with listed ones; the member list says which.
        let members = topology.members();
        let mut seen = BTreeSet::new();
        for member in &members {
            if !seen.insert(member.id.as_str()) {
                let region = &topology.regions[member.region].name;
                return Err(invalid(
                    format!("region[{}].nodes", member.region),
                    region.clone(),
                    &format!(
                        "generated node id {:?} is also listed as a [[node]]",
                        member.id
                    ),
                ));
            }
        }
        Ok(topology)
    }

    /// Every member: the listed `[[node]]`s in file order, then the generated nodes of each
    /// region with `nodes = N`, in region order.
    pub fn members(&self) -> Vec<Member> {
        let mut members: Vec<Member> = self
            .nodes
            .iter()
            .filter_map(|n| {
                let region = self.region_index(&n.region)?;
                Some(Member {
                    id: n.id.clone(),
                    region,
                })
            })
            .collect();
        for (index, region) in self.regions.iter().enumerate() {
            for n in 1..=region.nodes.unwrap_or(0) {
                members.push(Member {
                    id: format!("{}-{n}", region.name),
                    region: index,
                });
            }
        }
        members
    }

    /// The index of the region called `name`.
    pub fn region_index(&self, name: &str) -> Option<usize> {
        self.regions.iter().position(|r| r.name == name)
    }
}

/// One-way latencies between regions: great-circle distance, RTT ≈ 4 ms + km/75, one way is
/// half of it; nodes of one region are 1 ms apart.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyModel {
    /// `one_way_ms[a][b]` for region indices `a` and `b`.
    one_way_ms: Vec<Vec<f64>>,
}

impl LatencyModel {
    /// The model over the regions of a topology.
    pub fn new(regions: &[Region]) -> Self {
        let one_way_ms = regions
            .iter()
            .map(|a| regions.iter().map(|b| one_way_ms(a, b)).collect())
            .collect();
        Self { one_way_ms }
    }

    /// The one-way latency from region `a` to region `b`, in milliseconds; 0 for an unknown
    /// index (callers pass indices of the same topology).
    pub fn one_way_ms(&self, a: usize, b: usize) -> f64 {
        self.one_way_ms
            .get(a)
            .and_then(|row| row.get(b))
            .copied()
            .unwrap_or(0.0)
    }

    /// The shortest one-way latency over any chain of regions (Floyd–Warshall): the lower
    /// bound for a message from `a` to reach `b` through relays.
    pub fn shortest_paths_ms(&self) -> Vec<Vec<f64>> {
        let mut dist = self.one_way_ms.clone();
        let n = dist.len();
        for k in 0..n {
            for i in 0..n {
                for j in 0..n {
                    let via = dist[i][k] + dist[k][j];
                    if via < dist[i][j] {
                        dist[i][j] = via;
                    }
                }
            }
        }
        dist
    }
}

/// Great-circle (haversine) distance between two regions, in kilometres.
pub fn great_circle_km(a: &Region, b: &Region) -> f64 {
    let (lat_a, lat_b) = (a.lat.to_radians(), b.lat.to_radians());
    let d_lat = lat_b - lat_a;
    let d_lon = (b.lon - a.lon).to_radians();
    let h = (d_lat / 2.0).sin().powi(2) + lat_a.cos() * lat_b.cos() * (d_lon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// One-way latency between two regions, in milliseconds.
pub fn one_way_ms(a: &Region, b: &Region) -> f64 {
    if a.name == b.name {
        return INTRA_REGION_ONE_WAY_MS;
    }
    (RTT_BASE_MS + great_circle_km(a, b) / RTT_KM_PER_MS) / 2.0
}

/// The rule of cluster and region names; the error is the rule.
pub fn check_name(value: &str) -> Result<(), &'static str> {
    statusmesh_crdt::Name::parse("name", value)
        .map(|_| ())
        .map_err(|_| {
            "must be 1-64 characters of a-z, 0-9, '-', '_', '.', starting with a letter or digit"
        })
}

/// Node ids end up as DNS names in certificates, so they use the DNS label charset; the
/// error is the rule.
pub fn check_node_id(value: &str) -> Result<(), &'static str> {
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

    const SIM: &str = r#"
[cluster]
name = "sim"

[[region]]
name = "eu-west"
lat = 53.35
lon = -6.26
nodes = 2

[[region]]
name = "us-east"
lat = 39.04
lon = -77.49
nodes = 3

[[node]]
id = "extra"
region = "us-east"
"#;

    fn region(name: &str, lat: f64, lon: f64) -> Region {
        Region {
            name: name.into(),
            lat,
            lon,
            nodes: None,
        }
    }

    #[test]
    fn node_counts_expand_into_named_members_after_listed_nodes() {
        let topology = Topology::parse("sim.toml", SIM).expect("valid");
        let ids: Vec<String> = topology.members().into_iter().map(|m| m.id).collect();
        assert_eq!(
            ids,
            [
                "extra",
                "eu-west-1",
                "eu-west-2",
                "us-east-1",
                "us-east-2",
                "us-east-3"
            ]
        );
        assert_eq!(topology.members()[0].region, 1);
    }

    #[test]
    fn errors_name_the_file_the_key_the_value_and_the_rule() {
        let cases = [
            ("lat = 53.35", "lat = 153.35", "region[0].lat", "153.35"),
            ("lon = -77.49", "lon = -277.49", "region[1].lon", "-277.49"),
            ("nodes = 3", "nodes = 0", "region[1].nodes", "0"),
            ("name = \"sim\"", "name = \"Sim\"", "cluster.name", "Sim"),
            (
                "region = \"us-east\"",
                "region = \"mars\"",
                "node[0].region",
                "mars",
            ),
            (
                "id = \"extra\"",
                "id = \"eu-west-1\"",
                "region[0].nodes",
                "eu-west",
            ),
        ];
        for (from, to, key, value) in cases {
            let text = SIM.replacen(from, to, 1);
            let err = Topology::parse("sim.toml", &text)
                .expect_err(to)
                .to_string();
            assert!(
                err.contains("sim.toml") && err.contains(key) && err.contains(value),
                "{err}"
            );
        }
        let err = Topology::parse("sim.toml", &format!("{SIM}\n[extra]\nkey = 1\n"))
            .expect_err("unknown key")
            .to_string();
        assert!(err.contains("extra") && err.contains("line"), "{err}");
    }

    #[test]
    fn a_topology_without_nodes_is_rejected() {
        let text = "[cluster]\nname = \"x\"\n[[region]]\nname = \"a\"\nlat = 0.0\nlon = 0.0\n";
        let err = Topology::parse("x.toml", text).expect_err("no nodes");
        assert!(err.to_string().contains("at least one"), "{err}");
    }

    #[test]
    fn latency_grows_with_distance_and_is_one_ms_within_a_region() {
        let dublin = region("eu-west", 53.35, -6.26);
        let virginia = region("us-east", 39.04, -77.49);
        let singapore = region("ap-southeast", 1.35, 103.82);
        let km = great_circle_km(&dublin, &virginia);
        assert!((5_400.0..5_600.0).contains(&km), "{km}");
        let transatlantic = one_way_ms(&dublin, &virginia);
        assert!((37.0..40.0).contains(&transatlantic), "{transatlantic}");
        assert!(one_way_ms(&dublin, &singapore) > transatlantic);
        assert_eq!(one_way_ms(&dublin, &dublin), 1.0);
        let model = LatencyModel::new(&[dublin, virginia, singapore]);
        let shortest = model.shortest_paths_ms();
        for (a, row) in shortest.iter().enumerate() {
            for (b, best) in row.iter().enumerate() {
                assert!(*best <= model.one_way_ms(a, b));
            }
        }
    }
}
