//! The node's own status view (`GET /v1/status`, [`statusmesh_crdt::StatusView`]) read back
//! from its JSON: the input of every Statuspage answer. Only the fields the mapping uses are
//! named; the rest of the view is ignored, so the view may grow without breaking this.

use serde::Deserialize;
use statusmesh_crdt::{Impact, IncidentStatus, Indicator, State};

/// Whether this node hears the reporter of an observation (the core's `Freshness`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Freshness {
    Fresh,
    Stale,
}

/// The whole view.
#[derive(Debug, Clone, Deserialize)]
pub struct View {
    pub page: Page,
    pub services: Vec<Service>,
}

/// The page indicator and Statuspage's wording of it.
#[derive(Debug, Clone, Deserialize)]
pub struct Page {
    pub indicator: String,
    pub description: String,
}

/// One service: a Statuspage component group.
#[derive(Debug, Clone, Deserialize)]
pub struct Service {
    pub name: String,
    pub indicator: String,
    pub components: Vec<Component>,
    pub incidents: Vec<Incident>,
    pub scheduled_maintenances: Vec<Maintenance>,
}

/// One component with its derived status.
#[derive(Debug, Clone, Deserialize)]
pub struct Component {
    pub name: String,
    pub status: State,
    pub freshness: Freshness,
    #[serde(default)]
    pub regions: Vec<Region>,
    #[serde(rename = "override", default)]
    pub operator_override: Option<Override>,
}

/// One region's observation of a component.
#[derive(Debug, Clone, Deserialize)]
pub struct Region {
    pub region: String,
    pub state: State,
    pub observed_at_ms: u64,
    pub freshness: Freshness,
}

/// The override in force on a component.
#[derive(Debug, Clone, Deserialize)]
pub struct Override {
    pub at_ms: u64,
}

/// An incident and its timeline (oldest first).
#[derive(Debug, Clone, Deserialize)]
pub struct Incident {
    pub id: String,
    pub title: String,
    pub impact: Impact,
    pub status: IncidentStatus,
    #[serde(default)]
    pub components: Vec<String>,
    pub opened_at_ms: u64,
    pub resolved_at_ms: Option<u64>,
    #[serde(default)]
    pub updates: Vec<IncidentUpdate>,
}

/// One entry of an incident's timeline.
#[derive(Debug, Clone, Deserialize)]
pub struct IncidentUpdate {
    /// The key it is stored under: the same on every node.
    pub key: String,
    pub at_ms: u64,
    pub status: IncidentStatus,
    pub text: String,
    pub author: String,
}

/// A maintenance window that is active or still to come.
#[derive(Debug, Clone, Deserialize)]
pub struct Maintenance {
    pub id: String,
    pub title: String,
    #[serde(default)]
    pub components: Vec<String>,
    pub starts_at_ms: u64,
    pub ends_at_ms: u64,
    pub active: bool,
    /// Who wrote the window.
    #[serde(default)]
    pub author: String,
}

impl View {
    /// The view from the JSON the driver answers; `None` when it does not have this shape
    /// (a bug, answered as a 500 by the caller).
    pub fn from_json(value: serde_json::Value) -> Option<Self> {
        serde_json::from_value(value).ok()
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
}

impl Service {
    /// The component named `name`.
    pub fn component(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.name == name)
    }

    /// The indicator of the service, as the core spells it.
    pub fn indicator(&self) -> Indicator {
        parse_indicator(&self.indicator)
    }
}

impl Component {
    /// The newest time the component's status is known to have changed or been confirmed:
    /// its newest observation, or the override in force.
    pub fn updated_at_ms(&self) -> u64 {
        let observed = self.regions.iter().map(|r| r.observed_at_ms).max();
        let overridden = self.operator_override.as_ref().map(|o| o.at_ms);
        observed.max(overridden).unwrap_or(0)
    }

    /// The oldest time this node holds for the component.
    pub fn created_at_ms(&self) -> u64 {
        let observed = self.regions.iter().map(|r| r.observed_at_ms).min();
        let overridden = self.operator_override.as_ref().map(|o| o.at_ms);
        match (observed, overridden) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(0),
        }
    }
}

/// The core's indicator from its spelling (`none` for anything unknown).
pub fn parse_indicator(text: &str) -> Indicator {
    match text {
        "minor" => Indicator::Minor,
        "major" => Indicator::Major,
        "critical" => Indicator::Critical,
        _ => Indicator::None,
    }
}
