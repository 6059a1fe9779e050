//! The node's settings: tuning and bounds of every part of the protocol, the LAN and WAN
//! presets, and the rules a configuration must meet ([`Config::validate`]), checked once when
//! a [`crate::Node`] is built instead of clamped where each value is used.

use crate::error::ConfigError;
use crate::membership::Preset;
use crate::plumtree::BroadcastConfig;
use crate::version::{Ranges, FRAME_VERSION_MIN};

/// Tuning and bounds of the protocol. Every queue has a bound here.
#[derive(Debug, Clone)]
pub struct Config {
    /// Time between anti-entropy rounds, in milliseconds; at least 1. Default 1,000.
    pub anti_entropy_interval_ms: u64,
    /// Most frames waiting for the driver to send; the oldest is dropped (and counted) beyond
    /// it, since anti-entropy repairs whatever is dropped. At least 1. Default 65,536.
    pub transmit_queue_max: usize,
    /// Most events waiting for the driver; the oldest is dropped (and counted) beyond it.
    /// At least 1. Default 65,536.
    pub event_queue_max: usize,
    /// Most changes per [`Frame::Changes`](crate::codec::Frame::Changes); larger repairs are split. At least 1.
    /// Default 512.
    pub changes_per_frame_max: usize,
    /// Most liveness entries per [`Frame::Liveness`](crate::codec::Frame::Liveness); larger maps are split. At least 1.
    /// Default 4,096.
    pub liveness_per_frame_max: usize,
    /// Timing of the SWIM failure detector.
    pub failure_detector: Preset,
    /// This node's generation in SWIM: a node that restarts with a higher one is a new life
    /// (foca renews it by itself when it finds itself declared down). Default 0.
    pub generation: u32,
    /// Timing and bounds of the Plumtree broadcast.
    pub broadcast: BroadcastConfig,
    /// When documents roll over to a new epoch (bounded history).
    pub epoch: EpochConfig,
    /// The frame and schema versions this node advertises and speaks
    /// ([`crate::version`]). Frame min at least [`FRAME_VERSION_MIN`], schema min at least
    /// 1, each min at most its max. Default [`Ranges::CURRENT`]; a lower frame max emulates
    /// an older release (`--protocol-max`), a frame min above
    /// [`FRAME_VERSION_MAX`](crate::version::FRAME_VERSION_MAX) a later
    /// one that this release cannot talk to (for tests of the refusal).
    pub versions: Ranges,
    /// How long a joined member (one added by [`crate::Node::add_member`], not listed in
    /// regions.toml) may stay down before it is removed from this node's membership, in ms;
    /// 0: never (it stays in the peer table, shown down). Listed members are never removed.
    /// Default 0 (`statusmesh run --forget-after-s`).
    pub forget_after_ms: u64,
}

/// When a document's history is compacted into a new epoch (see `statusmesh_crdt::epoch`).
/// A rollover is proposed by the live voter with the smallest id, only while a majority of
/// the voters (the members listed in regions.toml) is alive, at a cut every live member was
/// seen to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochConfig {
    /// Roll over when the live epoch holds more than this many changes; 0 never does on
    /// count. Default 2,000 (Automerge holds ~2 KB of memory per change).
    pub history_changes_max: usize,
    /// Roll over when the live epoch's changes add up to more than this many bytes; 0 never
    /// does on size. Default 8 MiB.
    pub history_bytes_max: u64,
    /// Roll over when the live epoch is older than this (ms) and has changes of its own; 0
    /// never does on age. Default 0.
    pub age_ms_max: u64,
    /// Least time between two proposals for one document (ms). Default 5,000.
    pub propose_interval_ms: u64,
}

impl EpochConfig {
    /// Rollover switched off: history grows without bound (the behaviour before epochs).
    pub fn off() -> Self {
        Self {
            history_changes_max: 0,
            history_bytes_max: 0,
            age_ms_max: 0,
            ..Self::default()
        }
    }

    /// Whether any trigger is on.
    pub(crate) fn enabled(&self) -> bool {
        self.history_changes_max > 0 || self.history_bytes_max > 0 || self.age_ms_max > 0
    }
}

impl Default for EpochConfig {
    fn default() -> Self {
        Self {
            history_changes_max: 2_000,
            history_bytes_max: 8 << 20,
            age_ms_max: 0,
            propose_interval_ms: 5_000,
        }
    }
}

impl Config {
    /// Settings for nodes on one local network: frequent repair.
    pub fn lan() -> Self {
        Self {
            anti_entropy_interval_ms: 500,
            failure_detector: Preset::Lan,
            broadcast: BroadcastConfig::lan(),
            ..Self::wan()
        }
    }

    /// Settings for nodes across regions.
    pub fn wan() -> Self {
        Self {
            anti_entropy_interval_ms: 1_000,
            transmit_queue_max: 65_536,
            event_queue_max: 65_536,
            changes_per_frame_max: 512,
            liveness_per_frame_max: 4_096,
            failure_detector: Preset::Wan,
            generation: 0,
            broadcast: BroadcastConfig::wan(),
            epoch: EpochConfig::default(),
            versions: Ranges::CURRENT,
            forget_after_ms: 0,
        }
    }

    /// Checks the rules each setting's doc states; the error names the first setting that
    /// breaks one, with its value. [`crate::Node::new`] requires a valid configuration, so
    /// a driver that builds one from user input calls this first.
    pub fn validate(&self) -> Result<(), ConfigError> {
        ConfigError::at_least("anti_entropy_interval_ms", self.anti_entropy_interval_ms, 1)?;
        ConfigError::at_least("transmit_queue_max", self.transmit_queue_max as u64, 1)?;
        ConfigError::at_least("event_queue_max", self.event_queue_max as u64, 1)?;
        ConfigError::at_least(
            "changes_per_frame_max",
            self.changes_per_frame_max as u64,
            1,
        )?;
        ConfigError::at_least(
            "liveness_per_frame_max",
            self.liveness_per_frame_max as u64,
            1,
        )?;
        let frame = &self.versions.frame;
        ConfigError::at_least(
            "versions.frame.min",
            u64::from(frame.min),
            u64::from(FRAME_VERSION_MIN),
        )?;
        ConfigError::at_least(
            "versions.frame.max",
            u64::from(frame.max),
            u64::from(frame.min),
        )?;
        let schema = &self.versions.schema;
        ConfigError::at_least("versions.schema.min", u64::from(schema.min), 1)?;
        ConfigError::at_least(
            "versions.schema.max",
            u64::from(schema.max),
            u64::from(schema.min),
        )?;
        self.broadcast.validate()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::wan()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_presets_are_valid() {
        assert_eq!(Config::lan().validate(), Ok(()));
        assert_eq!(Config::wan().validate(), Ok(()));
        let off = Config {
            epoch: EpochConfig::off(),
            ..Config::wan()
        };
        assert_eq!(off.validate(), Ok(()));
    }

    #[test]
    fn a_zero_that_would_stall_or_divide_names_its_field_value_and_rule() {
        let config = Config {
            anti_entropy_interval_ms: 0,
            ..Config::wan()
        };
        let error = config.validate().expect_err("invalid");
        assert_eq!(
            error.to_string(),
            "anti_entropy_interval_ms must be at least 1, got 0"
        );
        let mut config = Config::lan();
        config.broadcast.graft_timeout_ms = 0;
        let error = config.validate().expect_err("invalid");
        assert_eq!(
            error.to_string(),
            "broadcast.graft_timeout_ms must be at least 1, got 0"
        );
        for config in [
            Config {
                transmit_queue_max: 0,
                ..Config::wan()
            },
            Config {
                event_queue_max: 0,
                ..Config::wan()
            },
            Config {
                changes_per_frame_max: 0,
                ..Config::wan()
            },
            Config {
                liveness_per_frame_max: 0,
                ..Config::wan()
            },
        ] {
            assert!(matches!(
                config.validate(),
                Err(ConfigError::BelowMinimum {
                    value: 0,
                    min: 1,
                    ..
                })
            ));
        }
        let mut config = Config::wan();
        config.broadcast.roots_max = 0;
        assert_eq!(
            config.validate(),
            Err(ConfigError::BelowMinimum {
                field: "broadcast.roots_max",
                value: 0,
                min: 1
            })
        );
    }
}
