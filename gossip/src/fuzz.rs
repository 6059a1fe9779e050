//! Entry points of the fuzz targets in `fuzz/` that reach this crate.
//!
//! Each takes the raw bytes libFuzzer generates and panics only when the code under test
//! broke a promise. The regression tests (`gossip/tests/fuzz_regressions.rs`) run every
//! committed input through the very same functions.

use statusmesh_crdt::{ActorId, Observation, Replica, State, StatusWrite};

use crate::codec::{self, Frame};
use crate::node::{Config, Node, Peer};

/// The node that receives fuzzed frames.
const RECEIVER: &str = "n0";
/// The peer fuzzed frames come from (a member, so the frame is decoded, not refused unread).
const SENDER: &str = "n1";
/// The time of the first frame; later inputs move the clock forward.
const START_MS: u64 = 1_000;

/// Target `gossip_frame`: arbitrary bytes as a frame from a member. The codec never panics,
/// what it decodes re-encodes to the same frame, and a node that handles it (and the same
/// bytes as the payload of a SWIM frame) keeps its invariants.
pub fn frame(data: &[u8]) {
    if let Ok(frame) = codec::decode(data) {
        let bytes = codec::encode(&frame).expect("a decoded frame encodes");
        let again = codec::decode(&bytes).expect("an encoded frame decodes");
        assert_eq!(again, frame, "a frame survives decode, encode, decode");
    }
    let mut node = receiver();
    node.handle_timeout(START_MS);
    drain(&mut node);
    node.handle_frame(START_MS + 1, SENDER, data);
    drain(&mut node);
    // The same bytes as SWIM data, so the failure detector's decoder is reached directly.
    let swim = codec::encode(&Frame::Swim {
        data: data.to_vec(),
    });
    if let Ok(swim) = swim {
        node.handle_frame(START_MS + 2, SENDER, &swim);
        drain(&mut node);
    }
    node.handle_timeout(START_MS + 60_000);
    drain(&mut node);
    if let Err(broken) = crate::invariants::check(&node) {
        panic!("invariant broken after a fuzzed frame: {broken}");
    }
}

/// The frames `SENDER` sends `RECEIVER` while it starts, writes a status and runs
/// anti-entropy: valid inputs for a seed corpus, made by the real encoders.
pub fn seed_frames() -> Vec<Vec<u8>> {
    let mut sender = node(SENDER, 2);
    let mut receiver = receiver();
    let mut frames = Vec::new();
    let mut now_ms = START_MS;
    let write = StatusWrite::parse(
        "api",
        "db",
        "r1",
        Observation {
            state: State::PartialOutage,
            message: "replication lag".into(),
            reporter: "probe".into(),
            observed_at_ms: now_ms,
            ttl_ms: 60_000,
        },
    )
    .expect("valid write");
    for round in 0..6 {
        now_ms += 1_000;
        if round == 1 {
            sender.local_write(now_ms, &write).expect("write");
        }
        sender.handle_timeout(now_ms);
        receiver.handle_timeout(now_ms);
        for _ in 0..4 {
            while let Some(t) = sender.poll_transmit() {
                if t.to == RECEIVER {
                    receiver.handle_frame(now_ms, SENDER, &t.bytes);
                    frames.push(t.bytes);
                }
            }
            while let Some(t) = receiver.poll_transmit() {
                if t.to == SENDER {
                    sender.handle_frame(now_ms, RECEIVER, &t.bytes);
                }
            }
        }
        drain(&mut sender);
        drain(&mut receiver);
    }
    frames.sort();
    frames.dedup();
    frames
}

fn receiver() -> Node {
    node(RECEIVER, 1)
}

/// A small node of a three-node, two-region mesh.
fn node(id: &str, actor: u8) -> Node {
    let peers = [(RECEIVER, "r0"), (SENDER, "r1"), ("n2", "r1")]
        .into_iter()
        .map(|(id, region)| Peer {
            id: id.into(),
            region: region.into(),
        })
        .collect();
    let replica = Replica::new(id, ActorId::from(vec![actor; 16]));
    Node::new(id.into(), Config::lan(), peers, replica, u64::from(actor))
}

fn drain(node: &mut Node) {
    while node.poll_transmit().is_some() {}
    while node.poll_event().is_some() {}
}
