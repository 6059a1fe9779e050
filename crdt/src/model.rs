//! The value types of the availability model: names, states and observations.
//!
//! Everything here is validated on construction ("parse, don't validate"): a `Name` is
//! known to be short and of a safe charset, an `Observation` is known to be in bounds.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::CrdtError;

/// Longest service, component, region or reporter name, in bytes.
pub const NAME_LEN_MAX: usize = 64;
/// Longest observation message, in bytes.
pub const MESSAGE_LEN_MAX: usize = 1024;
/// Longest time-to-live of an observation: a week, in milliseconds.
pub const TTL_MS_MAX: u64 = 7 * 24 * 3600 * 1000;
/// Shortest time-to-live of an observation, in milliseconds.
pub const TTL_MS_MIN: u64 = 1000;

/// A service, component, region or reporter name: 1 to 64 bytes of `[a-z0-9_.-]`,
/// starting with a letter or digit. The charset keeps names safe in paths, keys and logs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl TryFrom<String> for Name {
    type Error = CrdtError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Name::parse("name", &value)
    }
}

impl From<Name> for String {
    fn from(name: Name) -> Self {
        name.0
    }
}

impl Name {
    /// Validates `value` as a name; `field` says which input it came from, for the error.
    pub fn parse(field: &'static str, value: &str) -> Result<Self, CrdtError> {
        let invalid = |reason: &str| CrdtError::InvalidField {
            field,
            value: truncate_for_error(value),
            reason: reason.to_owned(),
        };
        if value.is_empty() {
            return Err(invalid("must not be empty"));
        }
        if value.len() > NAME_LEN_MAX {
            return Err(invalid(&format!("longer than {NAME_LEN_MAX} bytes")));
        }
        let first_ok = value
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !first_ok {
            return Err(invalid("must start with a lower-case letter or a digit"));
        }
        if let Some(bad) = value.chars().find(|c| {
            !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
        }) {
            return Err(invalid(&format!(
                "character {bad:?} is not allowed (use a-z, 0-9, '-', '_', '.')"
            )));
        }
        Ok(Self(value.to_owned()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The state of a component as one region observes it (Statuspage's vocabulary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Operational,
    UnderMaintenance,
    DegradedPerformance,
    PartialOutage,
    MajorOutage,
}

impl State {
    /// Every state, from the least to the most severe.
    pub const ALL: [State; 5] = [
        State::Operational,
        State::UnderMaintenance,
        State::DegradedPerformance,
        State::PartialOutage,
        State::MajorOutage,
    ];

    /// The wire and API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Operational => "operational",
            State::DegradedPerformance => "degraded_performance",
            State::PartialOutage => "partial_outage",
            State::MajorOutage => "major_outage",
            State::UnderMaintenance => "under_maintenance",
        }
    }

    /// Severity rank used to derive a component's status: the worst fresh observation wins.
    /// Maintenance ranks above operational (it is news) but below any degradation.
    pub fn severity(self) -> u8 {
        match self {
            State::Operational => 0,
            State::UnderMaintenance => 1,
            State::DegradedPerformance => 2,
            State::PartialOutage => 3,
            State::MajorOutage => 4,
        }
    }
}

impl FromStr for State {
    type Err = CrdtError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        State::ALL
            .into_iter()
            .find(|s| s.as_str() == value)
            .ok_or_else(|| CrdtError::InvalidField {
                field: "state",
                value: truncate_for_error(value),
                reason: "must be one of operational, degraded_performance, partial_outage, \
                         major_outage, under_maintenance"
                    .to_owned(),
            })
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one reporter in one region says about one component.
///
/// Stored as one atomic value per (component, region) cell, so a concurrent write never
/// mixes the state of one writer with the message of another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Observation {
    pub state: State,
    pub message: String,
    pub reporter: String,
    pub observed_at_ms: u64,
    pub ttl_ms: u64,
}

impl Observation {
    /// Checks the bounds of every field; the error names the first field that breaks one.
    pub fn validate(&self) -> Result<(), CrdtError> {
        if self.message.len() > MESSAGE_LEN_MAX {
            return Err(CrdtError::InvalidField {
                field: "message",
                value: truncate_for_error(&self.message),
                reason: format!("longer than {MESSAGE_LEN_MAX} bytes"),
            });
        }
        Name::parse("reporter", &self.reporter)?;
        if !(TTL_MS_MIN..=TTL_MS_MAX).contains(&self.ttl_ms) {
            return Err(CrdtError::InvalidField {
                field: "ttl_ms",
                value: self.ttl_ms.to_string(),
                reason: format!("must be between {TTL_MS_MIN} and {TTL_MS_MAX} milliseconds"),
            });
        }
        Ok(())
    }

    /// True when `other` says the same thing; the time it was said is not part of the value,
    /// so re-asserting a state only refreshes liveness and makes no Automerge change.
    pub fn same_value(&self, other: &Observation) -> bool {
        self.state == other.state
            && self.message == other.message
            && self.reporter == other.reporter
            && self.ttl_ms == other.ttl_ms
    }
}

/// A write of one observation, as a client asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusWrite {
    pub service: Name,
    pub component: Name,
    pub region: Name,
    pub observation: Observation,
}

impl StatusWrite {
    /// Validates raw strings into a write. Nothing is stored until the write is applied.
    pub fn parse(
        service: &str,
        component: &str,
        region: &str,
        observation: Observation,
    ) -> Result<Self, CrdtError> {
        let write = Self {
            service: Name::parse("service", service)?,
            component: Name::parse("component", component)?,
            region: Name::parse("region", region)?,
            observation,
        };
        write.observation.validate()?;
        Ok(write)
    }

    /// The liveness key of the cell this write refreshes.
    pub fn cell_key(&self) -> String {
        cell_key(&self.service, &self.component, &self.region)
    }
}

/// The key of one (service, component, region) cell in the liveness map.
pub fn cell_key(service: &Name, component: &Name, region: &Name) -> String {
    format!("{service}/{component}/{region}")
}

/// Cuts a user-supplied value to a size that is safe to echo back in an error.
pub(crate) fn truncate_for_error(value: &str) -> String {
    const ECHO_MAX: usize = 80;
    if value.len() <= ECHO_MAX {
        return value.to_owned();
    }
    format!("{}…", &value[..value.floor_char_boundary(ECHO_MAX)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_accept_the_safe_charset_only() {
        assert!(Name::parse("service", "api-gateway_2.eu").is_ok());
        for bad in ["", "Api", "-api", "a/b", "a b", "ä", &"x".repeat(65)] {
            let err = Name::parse("service", bad).expect_err(bad);
            assert!(err.to_string().contains("service"), "{err}");
        }
    }

    #[test]
    fn states_round_trip_through_their_spelling() {
        for state in State::ALL {
            assert_eq!(state.as_str().parse::<State>().ok(), Some(state));
        }
        assert!("down".parse::<State>().is_err());
    }

    #[test]
    fn observation_bounds_name_the_field() {
        let mut obs = Observation {
            state: State::Operational,
            message: String::new(),
            reporter: "probe".into(),
            observed_at_ms: 1,
            ttl_ms: 60_000,
        };
        assert!(obs.validate().is_ok());
        obs.ttl_ms = 5;
        assert!(obs
            .validate()
            .expect_err("ttl")
            .to_string()
            .contains("ttl_ms"));
        obs.ttl_ms = 60_000;
        obs.message = "x".repeat(MESSAGE_LEN_MAX + 1);
        assert!(obs
            .validate()
            .expect_err("msg")
            .to_string()
            .contains("message"));
    }
}
