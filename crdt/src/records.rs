//! Incidents, their updates, maintenance windows and operator overrides.
//!
//! Each is stored as one JSON value under its own root key (see `doc/schema.rs` for the
//! layout), so a concurrent write is a plain register conflict and an incident update,
//! having a key of its own, never conflicts with another.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::CrdtError;
use crate::model::{truncate_for_error, Name, State};

/// Longest incident or maintenance title, in bytes.
pub const TITLE_LEN_MAX: usize = 200;
/// Longest incident update or override reason, in bytes.
pub const TEXT_LEN_MAX: usize = 4096;
/// Most components one incident or maintenance window may name.
pub const COMPONENTS_MAX: usize = 64;
/// Most updates one incident may hold; the incident must be re-opened as a new one beyond it.
pub const UPDATES_MAX: usize = 1000;
/// Longest maintenance window: 30 days, in milliseconds.
pub const MAINTENANCE_MS_MAX: u64 = 30 * 24 * 3600 * 1000;

/// How bad an incident is (Statuspage's impact).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Impact {
    None,
    Minor,
    Major,
    Critical,
}

/// Where an incident stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentStatus {
    Investigating,
    Identified,
    Monitoring,
    Resolved,
}

macro_rules! spelled_enum {
    ($ty:ty, $field:literal, [$($variant:path => $text:literal),+ $(,)?]) => {
        impl $ty {
            /// The wire and API spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($variant => $text),+ }
            }
        }

        impl FromStr for $ty {
            type Err = CrdtError;

            fn from_str(value: &str) -> Result<Self, Self::Err> {
                match value {
                    $($text => Ok($variant),)+
                    _ => Err(CrdtError::InvalidField {
                        field: $field,
                        value: truncate_for_error(value),
                        reason: format!("must be one of {}", [$($text),+].join(", ")),
                    }),
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

spelled_enum!(Impact, "impact", [
    Impact::None => "none",
    Impact::Minor => "minor",
    Impact::Major => "major",
    Impact::Critical => "critical",
]);

spelled_enum!(IncidentStatus, "status", [
    IncidentStatus::Investigating => "investigating",
    IncidentStatus::Identified => "identified",
    IncidentStatus::Monitoring => "monitoring",
    IncidentStatus::Resolved => "resolved",
]);

/// The header of an incident: what it is, how bad, where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Incident {
    pub title: String,
    pub impact: Impact,
    pub status: IncidentStatus,
    pub components: Vec<Name>,
    pub opened_at_ms: u64,
    pub resolved_at_ms: Option<u64>,
    pub author: String,
}

/// One entry of an incident's append-only timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentUpdate {
    pub at_ms: u64,
    pub status: IncidentStatus,
    pub text: String,
    pub author: String,
}

/// A scheduled maintenance window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Maintenance {
    pub title: String,
    pub components: Vec<Name>,
    pub starts_at_ms: u64,
    pub ends_at_ms: u64,
    pub author: String,
}

/// An operator's word on a component, on top of what the regions observe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    pub state: State,
    pub reason: String,
    pub author: String,
    pub at_ms: u64,
    /// The override lapses at this time, if set.
    pub until_ms: Option<u64>,
}

impl Incident {
    /// Checks every bound; the error names the first field that breaks one.
    pub fn validate(&self) -> Result<(), CrdtError> {
        check_text("title", &self.title, TITLE_LEN_MAX, true)?;
        check_components(&self.components)?;
        Name::parse("author", &self.author)?;
        match (self.status, self.resolved_at_ms) {
            (IncidentStatus::Resolved, None) => Err(invalid(
                "resolved_at_ms",
                "null",
                "a resolved incident has a resolution time",
            )),
            (IncidentStatus::Resolved, Some(at)) if at < self.opened_at_ms => Err(invalid(
                "resolved_at_ms",
                &at.to_string(),
                "an incident cannot be resolved before it opened",
            )),
            _ => Ok(()),
        }
    }
}

impl IncidentUpdate {
    /// Checks every bound.
    pub fn validate(&self) -> Result<(), CrdtError> {
        check_text("text", &self.text, TEXT_LEN_MAX, true)?;
        Name::parse("author", &self.author).map(|_| ())
    }
}

impl Maintenance {
    /// Checks every bound.
    pub fn validate(&self) -> Result<(), CrdtError> {
        check_text("title", &self.title, TITLE_LEN_MAX, true)?;
        check_components(&self.components)?;
        if self.components.is_empty() {
            return Err(invalid(
                "components",
                "[]",
                "a maintenance window names at least one component",
            ));
        }
        Name::parse("author", &self.author)?;
        if self.ends_at_ms <= self.starts_at_ms {
            return Err(invalid(
                "ends_at_ms",
                &self.ends_at_ms.to_string(),
                "a window ends after it starts",
            ));
        }
        if self.ends_at_ms - self.starts_at_ms > MAINTENANCE_MS_MAX {
            return Err(invalid(
                "ends_at_ms",
                &self.ends_at_ms.to_string(),
                "a window lasts at most 30 days",
            ));
        }
        Ok(())
    }

    /// True while the window is open at `now_ms`.
    pub fn is_active(&self, now_ms: u64) -> bool {
        (self.starts_at_ms..self.ends_at_ms).contains(&now_ms)
    }
}

impl Override {
    /// Checks every bound.
    pub fn validate(&self) -> Result<(), CrdtError> {
        check_text("reason", &self.reason, TEXT_LEN_MAX, false)?;
        Name::parse("author", &self.author)?;
        if self.until_ms.is_some_and(|until| until <= self.at_ms) {
            return Err(invalid(
                "until_ms",
                &format!("{:?}", self.until_ms),
                "must be after the override is set",
            ));
        }
        Ok(())
    }

    /// True while the override applies at `now_ms`.
    pub fn is_active(&self, now_ms: u64) -> bool {
        self.until_ms.is_none_or(|until| now_ms < until)
    }
}

fn invalid(field: &'static str, value: &str, reason: &str) -> CrdtError {
    CrdtError::InvalidField {
        field,
        value: truncate_for_error(value),
        reason: reason.to_owned(),
    }
}

fn check_text(
    field: &'static str,
    value: &str,
    max: usize,
    required: bool,
) -> Result<(), CrdtError> {
    if required && value.trim().is_empty() {
        return Err(invalid(field, value, "must not be empty"));
    }
    if value.len() > max {
        return Err(invalid(field, value, &format!("longer than {max} bytes")));
    }
    Ok(())
}

fn check_components(components: &[Name]) -> Result<(), CrdtError> {
    if components.len() > COMPONENTS_MAX {
        return Err(invalid(
            "components",
            &components.len().to_string(),
            &format!("at most {COMPONENTS_MAX} components"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incident() -> Incident {
        Incident {
            title: "Elevated errors".into(),
            impact: Impact::Major,
            status: IncidentStatus::Investigating,
            components: vec![Name::parse("component", "db").expect("name")],
            opened_at_ms: 10,
            resolved_at_ms: None,
            author: "oncall".into(),
        }
    }

    #[test]
    fn a_resolved_incident_needs_a_resolution_time_after_it_opened() {
        let mut i = incident();
        assert!(i.validate().is_ok());
        i.status = IncidentStatus::Resolved;
        assert!(i
            .validate()
            .expect_err("no time")
            .to_string()
            .contains("resolved_at_ms"));
        i.resolved_at_ms = Some(5);
        assert!(i.validate().is_err());
        i.resolved_at_ms = Some(20);
        assert!(i.validate().is_ok());
    }

    #[test]
    fn maintenance_windows_end_after_they_start() {
        let mut m = Maintenance {
            title: "DB upgrade".into(),
            components: vec![Name::parse("component", "db").expect("name")],
            starts_at_ms: 100,
            ends_at_ms: 100,
            author: "ops".into(),
        };
        assert!(m.validate().is_err());
        m.ends_at_ms = 200;
        assert!(m.validate().is_ok());
        assert!(m.is_active(100) && m.is_active(199) && !m.is_active(200));
    }

    #[test]
    fn enums_parse_their_spelling_and_name_the_field_otherwise() {
        assert_eq!("critical".parse::<Impact>().ok(), Some(Impact::Critical));
        assert_eq!(
            "monitoring".parse::<IncidentStatus>().ok(),
            Some(IncidentStatus::Monitoring)
        );
        let err = "fixed"
            .parse::<IncidentStatus>()
            .expect_err("bad")
            .to_string();
        assert!(err.contains("status") && err.contains("resolved"), "{err}");
    }
}
