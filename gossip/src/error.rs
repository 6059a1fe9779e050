//! Errors of the gossip core: what a frame or a write can break ([`GossipError`]) and what a
//! configuration can break ([`ConfigError`]).

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
    /// A frame of a version this release does not read; `advertised` holds the sender's
    /// ranges when its header (version 3 on) could be read. The peer is refused; the state
    /// did not change.
    #[error(
        "frame version {got} is outside the versions this release reads, {}-{}",
        crate::version::FRAME_VERSION_MIN,
        crate::version::FRAME_VERSION_MAX
    )]
    Version {
        got: u8,
        advertised: Option<crate::version::Ranges>,
    },
    /// A frame came from a node that is not a member. The state did not change.
    #[error("frame from unknown node {0:?}")]
    UnknownPeer(String),
    /// A member cannot be added or removed (see `Node::add_member`, `Node::remove_member`).
    /// The caller's fault; the state did not change.
    #[error("member {node:?}: {reason}")]
    Membership { node: String, reason: String },
    /// The crdt layer refused a local write or a remote change. The state did not change.
    #[error(transparent)]
    Crdt(#[from] statusmesh_crdt::CrdtError),
}

/// A setting of [`crate::Config`] that breaks its rule (see [`crate::Config::validate`]).
/// The caller's fault; nothing was built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A setting is below the least value the protocol works with (a bound of zero would
    /// drop every frame, a chunk size of zero would split nothing, a period of zero would
    /// fire without end).
    #[error("{field} must be at least {min}, got {value}")]
    BelowMinimum {
        /// The setting's path in [`crate::Config`], e.g. `broadcast.graft_timeout_ms`.
        field: &'static str,
        value: u64,
        min: u64,
    },
}

impl ConfigError {
    /// `Ok` when `value` of `field` is at least `min`.
    pub(crate) fn at_least(field: &'static str, value: u64, min: u64) -> Result<(), Self> {
        if value < min {
            return Err(Self::BelowMinimum { field, value, min });
        }
        Ok(())
    }
}
