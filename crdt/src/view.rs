//! Derived views, as pure functions of documents, liveness and the reader's clock.
//!
//! Shaped like Statuspage's summary (a page indicator, then components with a status) so
//! that people who know it feel at home, with per-region observations and their freshness.

use serde::Serialize;

use crate::doc::{CellRead, ServiceDoc};
use crate::liveness::Liveness;
use crate::model::{cell_key, Name, Observation, State};

/// Whether this node has heard the reporter of an observation within its `ttl_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Freshness {
    Fresh,
    /// "Cannot see it from here": not the same as down.
    Stale,
}

/// The page indicator, from the worst fresh component status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Indicator {
    None,
    Minor,
    Major,
    Critical,
}

impl Indicator {
    /// The indicator a state contributes to the page.
    pub fn of(state: State) -> Self {
        match state {
            State::Operational | State::UnderMaintenance => Indicator::None,
            State::DegradedPerformance => Indicator::Minor,
            State::PartialOutage => Indicator::Major,
            State::MajorOutage => Indicator::Critical,
        }
    }

    /// Statuspage's wording for the indicator.
    pub fn description(self) -> &'static str {
        match self {
            Indicator::None => "All Systems Operational",
            Indicator::Minor => "Minor Service Outage",
            Indicator::Major => "Partial System Outage",
            Indicator::Critical => "Major System Outage",
        }
    }
}

/// The whole view of every service this node holds.
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    pub page: PageView,
    pub services: Vec<ServiceView>,
}

/// The page-level summary.
#[derive(Debug, Clone, Serialize)]
pub struct PageView {
    pub indicator: Indicator,
    pub description: &'static str,
}

/// One service.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceView {
    pub name: Name,
    pub indicator: Indicator,
    pub components: Vec<ComponentView>,
}

/// One component, with its derived status and each region's observation.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentView {
    pub name: Name,
    /// The worst fresh observation; the worst stale one when none is fresh.
    pub status: State,
    /// `stale` when no region's observation of this component is fresh.
    pub freshness: Freshness,
    pub regions: Vec<RegionView>,
}

/// One region's observation of a component, as this node sees it now.
#[derive(Debug, Clone, Serialize)]
pub struct RegionView {
    pub region: Name,
    #[serde(flatten)]
    pub observation: Observation,
    pub last_seen_ms: u64,
    pub freshness: Freshness,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<Observation>,
}

/// Freshness of one cell: fresh while its reporter was heard within `ttl_ms` of `now_ms`.
pub fn freshness(observation: &Observation, last_seen_ms: u64, now_ms: u64) -> Freshness {
    if now_ms.saturating_sub(last_seen_ms) <= observation.ttl_ms {
        Freshness::Fresh
    } else {
        Freshness::Stale
    }
}

/// The view of one service at `now_ms`.
pub fn service_view(doc: &ServiceDoc, liveness: &Liveness, now_ms: u64) -> ServiceView {
    let mut components: Vec<ComponentView> = Vec::new();
    for ((component, region), cell) in doc.cells() {
        let region_view = region_view(doc.service(), &component, region, cell, liveness, now_ms);
        match components.last_mut() {
            Some(last) if last.name == component => last.regions.push(region_view),
            _ => components.push(ComponentView {
                name: component,
                status: State::Operational,
                freshness: Freshness::Stale,
                regions: vec![region_view],
            }),
        }
    }
    for component in &mut components {
        derive_component_status(component);
    }
    let indicator = components
        .iter()
        .filter(|c| c.freshness == Freshness::Fresh)
        .map(|c| Indicator::of(c.status))
        .max()
        .unwrap_or(Indicator::None);
    ServiceView {
        name: doc.service().clone(),
        indicator,
        components,
    }
}

/// The page view over several services.
pub fn status_view(services: Vec<ServiceView>) -> StatusView {
    let indicator = services
        .iter()
        .map(|s| s.indicator)
        .max()
        .unwrap_or(Indicator::None);
    StatusView {
        page: PageView {
            indicator,
            description: indicator.description(),
        },
        services,
    }
}

fn region_view(
    service: &Name,
    component: &Name,
    region: Name,
    cell: CellRead,
    liveness: &Liveness,
    now_ms: u64,
) -> RegionView {
    let heard = liveness
        .last_seen(&cell_key(service, component, &region))
        .unwrap_or(0);
    let last_seen_ms = heard.max(cell.observation.observed_at_ms);
    RegionView {
        freshness: freshness(&cell.observation, last_seen_ms, now_ms),
        region,
        observation: cell.observation,
        last_seen_ms,
        conflicts: cell.conflicts,
    }
}

fn derive_component_status(component: &mut ComponentView) {
    let worst = |fresh_only: bool| {
        component
            .regions
            .iter()
            .filter(|r| !fresh_only || r.freshness == Freshness::Fresh)
            .map(|r| r.observation.state)
            .max_by_key(|s| s.severity())
    };
    if let Some(state) = worst(true) {
        component.status = state;
        component.freshness = Freshness::Fresh;
    } else if let Some(state) = worst(false) {
        component.status = state;
        component.freshness = Freshness::Stale;
    }
}
