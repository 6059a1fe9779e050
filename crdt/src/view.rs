//! Derived views, as pure functions of documents, liveness and the reader's clock.
//!
//! Shaped like Statuspage's summary (a page indicator, then components with a status) so
//! that people who know it feel at home, with per-region observations and their freshness.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::agreement::{self, Advisory, Seen};
use crate::doc::{CellRead, ServiceDoc};
use crate::liveness::Liveness;
use crate::model::{cell_key, Name, Observation, State};
use crate::records::{Impact, Incident, IncidentStatus, IncidentUpdate, Maintenance, Override};

/// How long a resolved incident stays on the page, in milliseconds (7 days).
pub const RESOLVED_INCIDENT_SHOWN_MS: u64 = 7 * 24 * 3600 * 1000;

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

    /// The indicator an open incident contributes to the page.
    pub fn of_impact(impact: Impact) -> Self {
        match impact {
            Impact::None => Indicator::None,
            Impact::Minor => Indicator::Minor,
            Impact::Major => Indicator::Major,
            Impact::Critical => Indicator::Critical,
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
    /// Open incidents, and those resolved in the last 7 days; newest first.
    pub incidents: Vec<IncidentView>,
    /// Maintenance windows that are active or still to come, soonest first.
    pub scheduled_maintenances: Vec<MaintenanceView>,
}

/// An incident with its timeline.
#[derive(Debug, Clone, Serialize)]
pub struct IncidentView {
    pub id: Name,
    #[serde(flatten)]
    pub incident: Incident,
    /// Oldest first.
    pub updates: Vec<UpdateView>,
}

/// One entry of an incident's timeline, with the key it is stored under.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateView {
    /// The update's key in the document (`<at_ms>-<node>-<n>`): written once by the node
    /// that made the update, so the same on every node for as long as the incident lives
    /// (feeds build their entry ids from it).
    pub key: String,
    #[serde(flatten)]
    pub update: IncidentUpdate,
}

/// A maintenance window, and whether it is open now.
#[derive(Debug, Clone, Serialize)]
pub struct MaintenanceView {
    pub id: Name,
    #[serde(flatten)]
    pub window: Maintenance,
    pub active: bool,
}

/// One component, with its derived status and each region's observation.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentView {
    pub name: Name,
    /// The derived status: the worst fresh observation (the worst stale one when none is
    /// fresh), `under_maintenance` during an active window, an operator override on top.
    pub status: State,
    /// `stale` when no region's observation of this component is fresh.
    pub freshness: Freshness,
    /// What the regions observe, before maintenance and overrides are applied.
    pub observed_status: State,
    /// Ids of the maintenance windows open now for this component.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub maintenance: Vec<Name>,
    /// The operator override in force, if any.
    #[serde(rename = "override", skip_serializing_if = "Option::is_none")]
    pub operator_override: Option<Override>,
    pub regions: Vec<RegionView>,
    /// For a component with a regional probe check: how many fresh regions must agree on
    /// `major_outage` and how many probe it (see [`crate::agreement`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agreement: Option<AgreementView>,
    /// Regions that see the component worse than its agreed status.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub advisories: Vec<Advisory>,
    /// Observations by regions the topology no longer has: kept (history is the audit
    /// trail) and shown, but they no longer count toward the derived status.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retired_regions: Vec<RegionView>,
}

/// The k-of-n rule a probe-backed component is derived with.
#[derive(Debug, Clone, Serialize)]
pub struct AgreementView {
    pub down_when: usize,
    pub regions_probing: usize,
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

/// The view of one service at `now_ms`. With `regions` (the topology's), observations of
/// any other region are listed apart as retired and do not count.
pub fn service_view(
    doc: &ServiceDoc,
    liveness: &Liveness,
    now_ms: u64,
    regions: Option<&BTreeSet<Name>>,
) -> ServiceView {
    let mut components: Vec<ComponentView> = Vec::new();
    for ((component, region), cell) in doc.cells() {
        let retired = regions.is_some_and(|known| !known.contains(&region));
        let region_view = region_view(doc.service(), &component, region, cell, liveness, now_ms);
        let (regions, retired_regions) = if retired {
            (Vec::new(), vec![region_view])
        } else {
            (vec![region_view], Vec::new())
        };
        match components.last_mut() {
            Some(last) if last.name == component => {
                last.regions.extend(regions);
                last.retired_regions.extend(retired_regions);
            }
            _ => components.push(ComponentView {
                name: component,
                status: State::Operational,
                freshness: Freshness::Stale,
                observed_status: State::Operational,
                maintenance: Vec::new(),
                operator_override: None,
                regions,
                agreement: None,
                advisories: Vec::new(),
                retired_regions,
            }),
        }
    }
    let windows = doc.maintenance();
    let overrides = doc.overrides();
    // Components named only by a window or an override still show.
    for name in windows
        .iter()
        .flat_map(|(_, w)| w.components.iter())
        .chain(overrides.keys())
    {
        if !components.iter().any(|c| &c.name == name) {
            components.push(ComponentView {
                name: name.clone(),
                status: State::Operational,
                freshness: Freshness::Fresh,
                observed_status: State::Operational,
                maintenance: Vec::new(),
                operator_override: None,
                regions: Vec::new(),
                agreement: None,
                advisories: Vec::new(),
                retired_regions: Vec::new(),
            });
        }
    }
    components.sort_by(|a, b| a.name.cmp(&b.name));
    let checks = doc.checks();
    for component in &mut components {
        derive_component_status(component);
        if let Some(check) = checks.get(&component.name) {
            agree(component, check, regions);
        }
        component.maintenance = windows
            .iter()
            .filter(|(_, w)| w.is_active(now_ms) && w.components.contains(&component.name))
            .map(|(id, _)| id.clone())
            .collect();
        if !component.maintenance.is_empty() {
            component.status = State::UnderMaintenance;
            component.freshness = Freshness::Fresh;
        }
        if let Some(o) = overrides
            .get(&component.name)
            .filter(|o| o.is_active(now_ms))
        {
            component.status = o.state;
            component.freshness = Freshness::Fresh;
            component.operator_override = Some(o.clone());
        }
    }
    let mut incidents: Vec<IncidentView> = doc
        .incidents()
        .into_iter()
        .filter(|(_, read, _)| {
            read.value
                .resolved_at_ms
                .is_none_or(|at| now_ms.saturating_sub(at) <= RESOLVED_INCIDENT_SHOWN_MS)
        })
        .map(|(id, read, updates)| IncidentView {
            id,
            incident: read.value,
            updates: updates
                .into_iter()
                .map(|(key, update)| UpdateView { key, update })
                .collect(),
        })
        .collect();
    incidents.sort_by(|a, b| {
        b.incident
            .opened_at_ms
            .cmp(&a.incident.opened_at_ms)
            .then(a.id.cmp(&b.id))
    });
    let mut scheduled_maintenances: Vec<MaintenanceView> = windows
        .into_iter()
        .filter(|(_, w)| w.ends_at_ms > now_ms)
        .map(|(id, window)| MaintenanceView {
            active: window.is_active(now_ms),
            id,
            window,
        })
        .collect();
    scheduled_maintenances.sort_by(|a, b| {
        a.window
            .starts_at_ms
            .cmp(&b.window.starts_at_ms)
            .then(a.id.cmp(&b.id))
    });
    let from_components = components
        .iter()
        .filter(|c| c.freshness == Freshness::Fresh)
        .map(|c| Indicator::of(c.status));
    let from_incidents = incidents
        .iter()
        .filter(|i| i.incident.status != IncidentStatus::Resolved)
        .map(|i| Indicator::of_impact(i.incident.impact));
    let indicator = from_components
        .chain(from_incidents)
        .max()
        .unwrap_or(Indicator::None);
    ServiceView {
        name: doc.service().clone(),
        indicator,
        components,
        incidents,
        scheduled_maintenances,
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
    let last_seen_ms = heard.max(cell.value.observed_at_ms);
    RegionView {
        freshness: freshness(&cell.value, last_seen_ms, now_ms),
        region,
        observation: cell.value,
        last_seen_ms,
        conflicts: cell.conflicts,
    }
}

/// The k-of-n status and advisories of one probe-backed component at `now_ms`, before
/// maintenance and overrides; `None` when it has no check. Reads only that component (for
/// annotating a live event, where a whole view per event would cost too much).
pub fn probe_agreement(
    doc: &ServiceDoc,
    liveness: &Liveness,
    now_ms: u64,
    regions: Option<&BTreeSet<Name>>,
    component: &Name,
) -> Option<(State, Vec<Advisory>)> {
    let check = doc.check(component)?;
    let mut view = ComponentView {
        name: component.clone(),
        status: State::Operational,
        freshness: Freshness::Stale,
        observed_status: State::Operational,
        maintenance: Vec::new(),
        operator_override: None,
        regions: Vec::new(),
        agreement: None,
        advisories: Vec::new(),
        retired_regions: Vec::new(),
    };
    for (region, cell) in doc.cells_of(component) {
        if regions.is_none_or(|known| known.contains(&region)) {
            let seen = region_view(doc.service(), component, region, cell, liveness, now_ms);
            view.regions.push(seen);
        }
    }
    derive_component_status(&mut view);
    agree(&mut view, &check, regions);
    Some((view.status, view.advisories))
}

/// A probe-backed component: its status by k-of-n agreement over the regions probing it.
fn agree(
    component: &mut ComponentView,
    check: &crate::checks::Check,
    topology: Option<&BTreeSet<Name>>,
) {
    let seen: Vec<Seen> = component
        .regions
        .iter()
        .filter(|r| check.probed_from(r.region.as_str()))
        .map(|r| Seen {
            region: r.region.clone(),
            state: r.observation.state,
            freshness: r.freshness,
        })
        .collect();
    let probing = match (&check.regions, topology) {
        (Some(list), _) => list.len(),
        (None, Some(all)) => all.len(),
        (None, None) => seen.len(),
    }
    .max(seen.len());
    let down_when = check.down_when_of(probing);
    component.agreement = Some(AgreementView {
        down_when,
        regions_probing: probing,
    });
    if let Some(decision) = agreement::decide(&seen, probing, down_when) {
        component.status = decision.status;
        component.freshness = decision.freshness;
        component.observed_status = decision.status;
        component.advisories = decision.advisories;
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
    component.observed_status = component.status;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::StatusWrite;
    use crate::replica::Replica;
    use automerge::ActorId;

    fn observe(replica: &mut Replica, region: &str, state: State) {
        let write = StatusWrite::parse(
            "api",
            "db",
            region,
            Observation {
                state,
                message: String::new(),
                reporter: "probe".into(),
                observed_at_ms: 1_000,
                ttl_ms: 60_000,
            },
        )
        .expect("valid");
        replica.write_status(1_000, &write).expect("write");
    }

    #[test]
    fn a_probe_backed_component_is_down_only_when_enough_regions_agree() {
        let mut replica = Replica::new("n1", ActorId::from(vec![1; 16]));
        let spec: crate::checks::CheckSpec =
            serde_json::from_str(r#"{"kind":"http","target":"http://x"}"#).expect("spec");
        let check = spec.into_check("ops", 1_000).expect("valid");
        let service = Name::parse("service", "api").expect("name");
        let db = Name::parse("component", "db").expect("name");
        replica
            .write_records(
                1_000,
                &service,
                &[crate::doc::Put::Check {
                    component: db.clone(),
                    value: Some(check),
                }],
            )
            .expect("check written");
        replica.set_regions(
            ["eu", "us", "ap"]
                .iter()
                .map(|r| Name::parse("region", r).expect("name"))
                .collect(),
        );
        observe(&mut replica, "eu", State::Operational);
        observe(&mut replica, "us", State::Operational);
        observe(&mut replica, "ap", State::MajorOutage);
        let view = replica.view(2_000, None);
        let component = &view.services[0].components[0];
        assert_eq!(component.status, State::Operational);
        assert_eq!(component.advisories.len(), 1);
        assert_eq!(component.advisories[0].region.as_str(), "ap");
        // The one-component reading for live events agrees with the view.
        let (status, advisories) = replica
            .probe_agreement(2_000, &service, &db)
            .expect("probe-backed");
        assert_eq!(status, State::Operational);
        assert_eq!(advisories, component.advisories);
        observe(&mut replica, "us", State::MajorOutage);
        let view = replica.view(2_000, None);
        assert_eq!(view.services[0].components[0].status, State::MajorOutage);
    }

    #[test]
    fn a_region_gone_from_the_topology_is_listed_apart_and_does_not_count() {
        let mut replica = Replica::new("n1", ActorId::from(vec![1; 16]));
        observe(&mut replica, "eu", State::Operational);
        observe(&mut replica, "mars", State::MajorOutage);
        let before = replica.view(2_000, None);
        assert_eq!(before.services[0].components[0].status, State::MajorOutage);
        let known = BTreeSet::from([Name::parse("region", "eu").expect("name")]);
        replica.set_regions(known);
        let view = replica.view(2_000, None);
        let db = &view.services[0].components[0];
        assert_eq!(db.status, State::Operational);
        assert_eq!(db.regions.len(), 1);
        assert_eq!(db.retired_regions.len(), 1);
        assert_eq!(db.retired_regions[0].region.as_str(), "mars");
    }
}
