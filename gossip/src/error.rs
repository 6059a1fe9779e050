//! Errors of the gossip core.

/// Everything that can go wrong in the gossip core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GossipError {
    /// A frame could not be encoded. Our fault; the state did not change.
    #[error("frame does not encode: {0}")]
    Encode(String),
    /// A peer's frame does not decode. The peer's fault; the state did not change.
    #[error("frame does not decode: {0}")]
    Decode(String),
    /// A frame is larger than the hard limit. The state did not change.
    #[error("frame of {bytes} bytes exceeds the limit of {limit}")]
    FrameTooLarge { bytes: usize, limit: usize },
    /// A peer speaks another version of the wire. The state did not change.
    #[error("frame version {got} is not the supported version {expected}")]
    Version { got: u8, expected: u8 },
    /// A frame came from a node that is not a member. The state did not change.
    #[error("frame from unknown node {0:?}")]
    UnknownPeer(String),
    /// The crdt layer refused a local write or a remote change. The state did not change.
    #[error(transparent)]
    Crdt(#[from] statusmesh_crdt::CrdtError),
}
