//! Version negotiation: which frame version and document schema two nodes speak.
//!
//! Every node advertises two ranges, `[min, max]` of the frame protocol ([`crate::codec`])
//! and `[min, max]` of the document schema (`statusmesh_crdt::SCHEMA_VERSION`), in the
//! header of every frame from version 3 on. Two nodes speak the highest version in both
//! ranges, separately for frames and for the schema ([`negotiate`]); a peer whose ranges do
//! not meet this node's is refused ([`VersionError`]), its frames never read past the header.
//!
//! # Flow, per peer ([`PeerVersion`])
//! 1. Before anything is heard from a peer, frames go to it at this node's highest frame
//!    version (the opening). A peer of the previous release cannot read them and refuses
//!    them; its own frames (version 2, which carry no ranges) soon tell this node so.
//! 2. A frame with ranges (version 3 on) is the peer's own word: from then on frames go to
//!    it at the negotiated version, or not at all when the ranges do not meet.
//! 3. A version-2 frame stands for the ranges of the previous release ([`Ranges::RELEASE_2`]),
//!    unless the peer advertised ranges less than [`DOWNGRADE_AFTER_MS`] ago: then it is a
//!    frame sent before the peer heard this node's ranges (both nodes started at once, or
//!    crossed with a restart), and is read without changing what is spoken. Without that
//!    grace two upgraded nodes whose frames cross could flip each other between 2 and 3.
//! 4. While a peer's ranges are only implied by its version-2 frames, this node probes it
//!    every [`PROBE_INTERVAL_MS`] with one frame at its highest version: two upgraded nodes
//!    that each heard the other's version-2 frames first (one restarted while the other
//!    still took it for an old node) would otherwise speak version 2 for ever. A node of the
//!    previous release refuses that one frame (a refusal per probe, counted on its side).
//!    A peer whose ranges do not meet is probed as often: nothing else goes to it, and so it
//!    learns this node's ranges and logs its side of the refusal too.
//!
//! A node that emulates the previous release (`statusmesh run --protocol-max 2`) has ranges
//! whose frame max is 2: it sends and reads version 2 only, as that release did.
//!
//! ```
//! use statusmesh_gossip::version::{negotiate, Ranges, VersionRange};
//!
//! // This release and one that emulates the previous: they speak frames of version 2.
//! let previous = Ranges::CURRENT.with_frame_max(2);
//! let spoken = negotiate(&Ranges::CURRENT, &previous).expect("they meet");
//! assert_eq!((spoken.frame, spoken.schema), (2, 1));
//! // A release that speaks frames of version 4 only is refused, naming both ranges.
//! let later = Ranges { frame: VersionRange { min: 4, max: 4 }, ..Ranges::CURRENT };
//! assert!(negotiate(&Ranges::CURRENT, &later).is_err());
//! ```

use serde::{Deserialize, Serialize};
use statusmesh_crdt::{SCHEMA_VERSION, SCHEMA_VERSION_MIN};

/// The oldest frame version this release reads and writes (release N−1's).
pub const FRAME_VERSION_MIN: u8 = 2;
/// The newest frame version this release speaks.
/// Version 3: every frame carries the sender's [`Ranges`] in its header.
pub const FRAME_VERSION_MAX: u8 = 3;
/// How long a peer's advertised ranges outweigh version-2 frames from it, in ms: longer than
/// a frame is in flight, shorter than a restart (a node rolled back to the previous release
/// is spoken to in version 2 again at most this long after its last frame of version 3).
pub const DOWNGRADE_AFTER_MS: u64 = 5_000;

/// How often a peer whose ranges are only implied by its version-2 frames is sent one frame
/// at this node's highest version (step 4 of the flow), in ms.
pub const PROBE_INTERVAL_MS: u64 = 5_000;

/// An inclusive range of versions, `min ≤ max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VersionRange {
    pub min: u8,
    pub max: u8,
}

impl VersionRange {
    /// The highest version in both ranges, if they meet.
    #[must_use]
    pub fn highest_common(&self, other: &VersionRange) -> Option<u8> {
        let high = self.max.min(other.max);
        let low = self.min.max(other.min);
        (low <= high).then_some(high)
    }

    /// Whether `version` lies in the range.
    #[must_use]
    pub fn contains(&self, version: u8) -> bool {
        (self.min..=self.max).contains(&version)
    }
}

impl std::fmt::Display for VersionRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

/// What a node advertises: the frame versions and the schema versions it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ranges {
    pub frame: VersionRange,
    pub schema: VersionRange,
}

impl Ranges {
    /// This release: frames 2 to 3, schema 1.
    pub const CURRENT: Ranges = Ranges {
        frame: VersionRange {
            min: FRAME_VERSION_MIN,
            max: FRAME_VERSION_MAX,
        },
        schema: VersionRange {
            min: SCHEMA_VERSION_MIN,
            max: SCHEMA_VERSION,
        },
    };
    /// The previous release, which advertised nothing: frames of version 2 only, schema 1.
    /// What a version-2 frame stands for.
    pub const RELEASE_2: Ranges = Ranges {
        frame: VersionRange { min: 2, max: 2 },
        schema: VersionRange { min: 1, max: 1 },
    };

    /// This release's ranges with the frame max lowered to `max` (`--protocol-max`): the
    /// node emulates the release whose newest version that is.
    #[must_use]
    pub fn with_frame_max(mut self, max: u8) -> Self {
        self.frame.max = max;
        self
    }
}

impl std::fmt::Display for Ranges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "frame {} schema {}", self.frame, self.schema)
    }
}

/// The versions two nodes speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spoken {
    pub frame: u8,
    pub schema: u8,
}

/// Why two nodes cannot talk. Neither node's state changes; the peer is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VersionError {
    /// The frame ranges do not meet.
    #[error("no common frame version: ours {ours}, theirs {theirs}")]
    Frame { ours: Ranges, theirs: Ranges },
    /// The schema ranges do not meet.
    #[error("no common schema version: ours {ours}, theirs {theirs}")]
    Schema { ours: Ranges, theirs: Ranges },
}

/// The negotiation rule: the highest frame version and the highest schema version both
/// nodes speak. Symmetric, so both ends reach the same answer from each other's ranges.
///
/// # Errors
/// [`VersionError`] when either pair of ranges does not meet.
pub fn negotiate(ours: &Ranges, theirs: &Ranges) -> Result<Spoken, VersionError> {
    let frame = ours
        .frame
        .highest_common(&theirs.frame)
        .ok_or(VersionError::Frame {
            ours: *ours,
            theirs: *theirs,
        })?;
    let schema = ours
        .schema
        .highest_common(&theirs.schema)
        .ok_or(VersionError::Schema {
            ours: *ours,
            theirs: *theirs,
        })?;
    Ok(Spoken { frame, schema })
}

/// What this node knows of one peer's versions (see the module's flow).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerVersion {
    /// The peer's ranges: advertised, or implied by its version-2 frames; `None` before
    /// anything was heard.
    pub theirs: Option<Ranges>,
    /// When the peer last advertised its ranges (a frame of version 3 on), in ms.
    pub advertised_ms: Option<u64>,
    /// Whether this node refused the peer's last frame on its versions.
    pub refused: bool,
    /// The last refusal (the frame's version, the ranges its header said), so that a driver
    /// logs a refusal once while the same one repeats.
    pub last_refusal: Option<(u8, Option<Ranges>)>,
    /// When this node last probed the peer at its highest version (step 4), in ms.
    pub probed_ms: Option<u64>,
}

impl PeerVersion {
    /// Notes a frame of `version` from the peer, with the ranges its header carried (none
    /// for version 2). Returns the peer's ranges as this node now takes them.
    pub fn heard(&mut self, now_ms: u64, version: u8, advertised: Option<Ranges>) -> Ranges {
        match advertised {
            Some(ranges) => {
                self.theirs = Some(ranges);
                self.advertised_ms = Some(now_ms);
            }
            None => {
                debug_assert_eq!(version, 2, "only version 2 carries no ranges");
                let recent = self
                    .advertised_ms
                    .is_some_and(|at| now_ms.saturating_sub(at) < DOWNGRADE_AFTER_MS);
                if !recent {
                    self.theirs = Some(Ranges::RELEASE_2);
                }
            }
        }
        self.theirs.unwrap_or(Ranges::RELEASE_2)
    }

    /// Whether to probe the peer now (step 4): its ranges are implied, not advertised (or
    /// advertised long ago) and this node speaks a version above 2, or the peer is refused
    /// (it then learns why from the probe); and the last probe is at least
    /// [`PROBE_INTERVAL_MS`] old. Notes the probe when it is due.
    pub fn probe_due(&mut self, now_ms: u64, ours: &Ranges) -> bool {
        let implied = self.theirs == Some(Ranges::RELEASE_2)
            && self
                .advertised_ms
                .is_none_or(|at| now_ms.saturating_sub(at) >= DOWNGRADE_AFTER_MS);
        let due = self
            .probed_ms
            .is_none_or(|at| now_ms.saturating_sub(at) >= PROBE_INTERVAL_MS);
        // A refused peer is told this node's ranges as often, so that both sides log why.
        let outside = self
            .theirs
            .is_some_and(|theirs| negotiate(ours, &theirs).is_err());
        if ((implied && ours.frame.max > 2) || outside) && due {
            self.probed_ms = Some(now_ms);
            return true;
        }
        false
    }

    /// The versions to send to this peer in: negotiated from what is known of it, or the
    /// opening (this node's highest frame version) before anything was heard.
    ///
    /// # Errors
    /// [`VersionError`] when the peer's ranges do not meet `ours`: nothing is sent to it.
    pub fn spoken(&self, ours: &Ranges) -> Result<Spoken, VersionError> {
        match &self.theirs {
            Some(theirs) => negotiate(ours, theirs),
            None => Ok(Spoken {
                frame: ours.frame.max,
                schema: ours.schema.max,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(frame: (u8, u8), schema: (u8, u8)) -> Ranges {
        Ranges {
            frame: VersionRange {
                min: frame.0,
                max: frame.1,
            },
            schema: VersionRange {
                min: schema.0,
                max: schema.1,
            },
        }
    }

    #[test]
    fn overlapping_ranges_speak_the_highest_common_version() {
        let ours = ranges((2, 3), (1, 1));
        let spoken = negotiate(&ours, &ranges((2, 2), (1, 1))).expect("they meet");
        assert_eq!(
            spoken,
            Spoken {
                frame: 2,
                schema: 1
            }
        );
        let spoken = negotiate(&ours, &ranges((3, 5), (1, 2))).expect("they meet");
        assert_eq!(
            spoken,
            Spoken {
                frame: 3,
                schema: 1
            }
        );
        assert_eq!(
            negotiate(&ranges((3, 5), (1, 2)), &ours).expect("symmetric"),
            spoken
        );
        let spoken = negotiate(&ranges((2, 4), (1, 3)), &ranges((3, 6), (2, 4))).expect("meet");
        assert_eq!(
            spoken,
            Spoken {
                frame: 4,
                schema: 3
            }
        );
    }

    #[test]
    fn disjoint_frame_ranges_are_refused_with_both_ranges() {
        let ours = Ranges::CURRENT;
        let theirs = ranges((4, 4), (1, 1));
        let error = negotiate(&ours, &theirs).expect_err("disjoint");
        assert_eq!(error, VersionError::Frame { ours, theirs });
        assert_eq!(
            error.to_string(),
            "no common frame version: ours frame 2-3 schema 1-1, theirs frame 4-4 schema 1-1"
        );
        assert!(negotiate(&Ranges::RELEASE_2, &ranges((3, 3), (1, 1))).is_err());
    }

    #[test]
    fn disjoint_schema_ranges_are_refused_even_when_frames_meet() {
        let ours = Ranges::CURRENT;
        let theirs = ranges((2, 3), (2, 2));
        assert_eq!(
            negotiate(&ours, &theirs),
            Err(VersionError::Schema { ours, theirs })
        );
    }

    #[test]
    fn a_peer_not_heard_yet_is_opened_at_the_highest_frame_version() {
        let peer = PeerVersion::default();
        let spoken = peer.spoken(&Ranges::CURRENT).expect("opening");
        assert_eq!(spoken.frame, FRAME_VERSION_MAX);
        let emulated = Ranges::CURRENT.with_frame_max(2);
        assert_eq!(peer.spoken(&emulated).expect("opening").frame, 2);
    }

    #[test]
    fn a_version_2_frame_stands_for_the_previous_release() {
        let mut peer = PeerVersion::default();
        assert_eq!(peer.heard(10, 2, None), Ranges::RELEASE_2);
        assert_eq!(peer.spoken(&Ranges::CURRENT).expect("meet").frame, 2);
        // The peer restarts upgraded: its first advertisement switches to version 3.
        assert_eq!(peer.heard(20, 3, Some(Ranges::CURRENT)), Ranges::CURRENT);
        assert_eq!(peer.spoken(&Ranges::CURRENT).expect("meet").frame, 3);
    }

    #[test]
    fn version_2_frames_crossing_an_advertisement_do_not_flip_the_version() {
        let mut peer = PeerVersion::default();
        peer.heard(1_000, 3, Some(Ranges::CURRENT));
        // Sent by the peer before it heard this node's ranges.
        peer.heard(1_000 + DOWNGRADE_AFTER_MS - 1, 2, None);
        assert_eq!(peer.spoken(&Ranges::CURRENT).expect("meet").frame, 3);
        // Long after its last advertisement, version 2 alone: the peer was rolled back.
        peer.heard(1_000 + DOWNGRADE_AFTER_MS, 2, None);
        assert_eq!(peer.spoken(&Ranges::CURRENT).expect("meet").frame, 2);
    }

    #[test]
    fn a_peer_known_only_by_version_2_frames_is_probed_at_the_highest_version_now_and_then() {
        let mut peer = PeerVersion::default();
        peer.heard(0, 2, None);
        assert!(peer.probe_due(100, &Ranges::CURRENT));
        assert!(!peer.probe_due(100 + PROBE_INTERVAL_MS - 1, &Ranges::CURRENT));
        assert!(peer.probe_due(100 + PROBE_INTERVAL_MS, &Ranges::CURRENT));
        // A node that emulates the previous release has nothing to probe with.
        let mut old = PeerVersion::default();
        old.heard(0, 2, None);
        assert!(!old.probe_due(100, &Ranges::CURRENT.with_frame_max(2)));
        // An advertised peer is not probed.
        let mut new = PeerVersion::default();
        new.heard(0, 3, Some(Ranges::CURRENT));
        assert!(!new.probe_due(100, &Ranges::CURRENT));
        // A refused one is, so that it learns why.
        let mut later = PeerVersion::default();
        let future = Ranges {
            frame: VersionRange { min: 4, max: 4 },
            ..Ranges::CURRENT
        };
        later.heard(0, 4, Some(future));
        assert!(later.probe_due(100, &Ranges::CURRENT));
    }
}
