//! What the crdt benchmarks share: the regions their cells are observed from.

/// Five regions, as a mesh of edge nodes across three continents would have.
pub const REGIONS: [&str; 5] = [
    "eu-west",
    "eu-central",
    "us-east",
    "us-west",
    "ap-southeast",
];
