//! Statuspage v2's objects, built from the node's view ([`super::local::View`]): the page,
//! its status rollup, components and their groups, incidents with their updates, and
//! scheduled maintenances. Field names, types and enum values are Statuspage's; how each is
//! derived is documented on the field and, for the mappings that are not one-to-one, in
//! [`super`]'s module doc.

use serde::Serialize;
use statusmesh_crdt::{IncidentStatus, Indicator, State};

use super::ids::{id, iso8601};
use super::local::{self, Freshness};

/// Most incidents `incidents.json` lists (Statuspage lists the 50 most recent).
pub const INCIDENTS_MAX: usize = 50;

/// What every object of one answer shares: the page's id and address.
#[derive(Debug, Clone)]
pub struct Context {
    pub page_id: String,
    /// The page's address, without a trailing `/`.
    pub page_url: String,
}

/// `page`: the page is the cluster.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    pub id: String,
    /// The cluster's name.
    pub name: String,
    pub url: String,
    /// Every time here is UTC.
    pub time_zone: &'static str,
    /// The newest time anything on the page changed.
    pub updated_at: String,
}

/// `status`: the rollup of the whole page.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// `none`, `minor`, `major`, `critical` or `maintenance`.
    pub indicator: &'static str,
    pub description: &'static str,
}

/// A component, or a component group (`group: true`, with its members' ids).
#[derive(Debug, Clone, Serialize)]
pub struct Component {
    pub id: String,
    pub name: String,
    pub status: State,
    pub created_at: String,
    pub updated_at: String,
    /// 1-based: a group's place among the services, a component's within its service.
    pub position: u32,
    pub description: Option<String>,
    pub showcase: bool,
    pub start_date: Option<String>,
    pub group_id: Option<String>,
    pub page_id: String,
    pub group: bool,
    pub only_show_if_degraded: bool,
    /// A group's members (Statuspage sends this on groups only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub components: Option<Vec<String>>,
}

/// An incident, or a scheduled maintenance (which adds `scheduled_for` and
/// `scheduled_until`).
#[derive(Debug, Clone, Serialize)]
pub struct Incident {
    pub id: String,
    pub name: String,
    /// Incidents: `investigating`, `identified`, `monitoring`, `resolved`; maintenances:
    /// `scheduled`, `in_progress`.
    pub status: &'static str,
    /// Incidents: `none`, `minor`, `major`, `critical`; maintenances: `maintenance`.
    pub impact: &'static str,
    pub created_at: String,
    pub updated_at: String,
    pub monitoring_at: Option<String>,
    pub resolved_at: Option<String>,
    pub started_at: String,
    pub shortlink: String,
    pub page_id: String,
    /// Newest first.
    pub incident_updates: Vec<IncidentUpdate>,
    pub components: Vec<Component>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_until: Option<String>,
}

/// One entry of an incident's timeline.
#[derive(Debug, Clone, Serialize)]
pub struct IncidentUpdate {
    pub id: String,
    pub status: &'static str,
    pub body: String,
    pub incident_id: String,
    pub created_at: String,
    pub updated_at: String,
    pub display_at: String,
    /// statusmesh does not record which component moved from what to what with an update.
    pub affected_components: Option<Vec<serde_json::Value>>,
    pub deliver_notifications: bool,
    pub custom_tweet: Option<String>,
    pub tweet_id: Option<String>,
}

/// The whole page, mapped once per request.
#[derive(Debug, Clone)]
pub struct Mapped {
    pub page: Page,
    pub status: Status,
    /// Groups, each followed by its members.
    pub components: Vec<Component>,
    /// Newest first.
    pub incidents: Vec<Incident>,
    /// Soonest first.
    pub maintenances: Vec<Incident>,
}

/// Maps the node's view onto Statuspage's objects.
pub fn map(view: &local::View, cx: &Context, cluster: &str, now_ms: u64) -> Mapped {
    let mut components = Vec::new();
    let mut incidents = Vec::new();
    let mut maintenances = Vec::new();
    for (index, service) in view.services.iter().enumerate() {
        let members: Vec<Component> = service
            .components
            .iter()
            .enumerate()
            .map(|(i, c)| component(cx, service, c, i))
            .collect();
        components.push(group(cx, service, &members, index));
        for incident in &service.incidents {
            incidents.push(map_incident(cx, service, &members, incident));
        }
        for window in &service.scheduled_maintenances {
            maintenances.push(map_maintenance(cx, service, &members, window));
        }
        components.extend(members);
    }
    incidents.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
    maintenances.sort_by(|a, b| a.scheduled_for.cmp(&b.scheduled_for).then(a.id.cmp(&b.id)));
    let in_maintenance = maintenances.iter().any(|m| m.status == "in_progress");
    // ISO 8601 in UTC with a fixed width sorts as the times do; 0 is "never".
    let never = iso8601(0);
    let updated_at = components
        .iter()
        .map(|c| &c.updated_at)
        .chain(incidents.iter().map(|i| &i.updated_at))
        .filter(|t| **t != never)
        .max()
        .cloned()
        .unwrap_or_else(|| iso8601(now_ms));
    let status = rollup(local::parse_indicator(&view.page.indicator), in_maintenance);
    Mapped {
        page: Page {
            id: cx.page_id.clone(),
            name: cluster.to_owned(),
            url: cx.page_url.clone(),
            time_zone: "Etc/UTC",
            updated_at,
        },
        status,
        components,
        incidents,
        maintenances,
    }
}

/// The page's id: one per cluster.
pub fn page_id(cluster: &str) -> String {
    id("page", &[cluster])
}

/// The page rollup: the core's indicator, or `maintenance` when all is well but a window is
/// open (Statuspage's own rule and wording).
fn rollup(indicator: Indicator, in_maintenance: bool) -> Status {
    let (indicator, description) = match indicator {
        Indicator::None if in_maintenance => ("maintenance", "Service Under Maintenance"),
        Indicator::None => ("none", Indicator::None.description()),
        Indicator::Minor => ("minor", Indicator::Minor.description()),
        Indicator::Major => ("major", Indicator::Major.description()),
        Indicator::Critical => ("critical", Indicator::Critical.description()),
    };
    Status {
        indicator,
        description,
    }
}

/// A service's group: the worst status of its members.
fn group(cx: &Context, service: &local::Service, members: &[Component], index: usize) -> Component {
    let status = members
        .iter()
        .map(|m| m.status)
        .max_by_key(|s| s.severity())
        .unwrap_or(State::Operational);
    // ISO 8601 in UTC with a fixed width sorts as the times do.
    let created = members.iter().map(|m| m.created_at.clone()).min();
    let updated = members.iter().map(|m| m.updated_at.clone()).max();
    Component {
        id: id("group", &[&service.name]),
        name: service.name.clone(),
        status,
        created_at: created.unwrap_or_else(|| iso8601(0)),
        updated_at: updated.unwrap_or_else(|| iso8601(0)),
        position: index as u32 + 1,
        description: None,
        showcase: false,
        start_date: None,
        group_id: None,
        page_id: cx.page_id.clone(),
        group: true,
        only_show_if_degraded: false,
        components: Some(members.iter().map(|m| m.id.clone()).collect()),
    }
}

/// When a component was first and last known to change: its observations and override,
/// else (a component named only by records) the windows and incidents that name it.
fn component_times(service: &local::Service, c: &local::Component) -> (u64, u64) {
    if !c.regions.is_empty() || c.operator_override.is_some() {
        return (c.created_at_ms(), c.updated_at_ms());
    }
    let named = |components: &[String]| components.contains(&c.name);
    let times: Vec<u64> = service
        .scheduled_maintenances
        .iter()
        .filter(|w| named(&w.components))
        .map(|w| w.starts_at_ms)
        .chain(
            service
                .incidents
                .iter()
                .filter(|i| named(&i.components))
                .map(|i| i.opened_at_ms),
        )
        .collect();
    let created = times.iter().copied().min().unwrap_or(0);
    (created, times.iter().copied().max().unwrap_or(created))
}

/// One component: its derived status (worst fresh region, maintenance, override).
fn component(
    cx: &Context,
    service: &local::Service,
    c: &local::Component,
    index: usize,
) -> Component {
    let (created_ms, updated_ms) = component_times(service, c);
    let service = service.name.as_str();
    let description = (c.freshness == Freshness::Stale).then(|| {
        let regions: Vec<&str> = c.regions.iter().map(|r| r.region.as_str()).collect();
        format!(
            "stale: no fresh observation reaches this node (last heard from: {}); the last known status is shown",
            if regions.is_empty() { "none".to_owned() } else { regions.join(", ") }
        )
    });
    Component {
        id: component_id(service, &c.name),
        name: c.name.clone(),
        status: c.status,
        created_at: iso8601(created_ms),
        updated_at: iso8601(updated_ms),
        position: index as u32 + 1,
        description,
        showcase: true,
        start_date: None,
        group_id: Some(id("group", &[service])),
        page_id: cx.page_id.clone(),
        group: false,
        only_show_if_degraded: false,
        components: None,
    }
}

/// The id of `component` of `service`.
pub fn component_id(service: &str, component: &str) -> String {
    id("component", &[service, component])
}

/// The id of incident `incident` of `service`.
pub fn incident_id(service: &str, incident: &str) -> String {
    id("incident", &[service, incident])
}

/// The id of maintenance window `window` of `service`.
pub fn maintenance_id(service: &str, window: &str) -> String {
    id("scheduled_maintenance", &[service, window])
}

/// The page's link to a record with `kind` (`incident`, `maintenance`) and Statuspage `id`:
/// the `shortlink` of Statuspage's answers, and the link of a feed's entries.
pub fn shortlink(page_url: &str, kind: &str, id: &str) -> String {
    format!("{page_url}/#{kind}-{id}")
}

fn incident_updated_ms(incident: &local::Incident) -> u64 {
    incident
        .updates
        .iter()
        .map(|u| u.at_ms)
        .chain(incident.resolved_at_ms)
        .fold(incident.opened_at_ms, u64::max)
}

fn affected(members: &[Component], service: &str, names: &[String]) -> Vec<Component> {
    names
        .iter()
        .filter_map(|name| {
            let wanted = component_id(service, name);
            members.iter().find(|m| m.id == wanted).cloned()
        })
        .collect()
}

fn map_incident(
    cx: &Context,
    service: &local::Service,
    members: &[Component],
    incident: &local::Incident,
) -> Incident {
    let incident_id = incident_id(&service.name, &incident.id);
    // Identical entries (same time, author, status and text) are told apart by their rank.
    let mut seen: Vec<(u64, &str, IncidentStatus, &str)> = Vec::new();
    let mut updates: Vec<IncidentUpdate> = incident
        .updates
        .iter()
        .map(|u| {
            let key = (u.at_ms, u.author.as_str(), u.status, u.text.as_str());
            let rank = seen.iter().filter(|k| **k == key).count().to_string();
            seen.push(key);
            let at = iso8601(u.at_ms);
            IncidentUpdate {
                id: id(
                    "incident_update",
                    &[
                        &service.name,
                        &incident.id,
                        &u.at_ms.to_string(),
                        &u.author,
                        u.status.as_str(),
                        &u.text,
                        &rank,
                    ],
                ),
                status: u.status.as_str(),
                body: u.text.clone(),
                incident_id: incident_id.clone(),
                created_at: at.clone(),
                updated_at: at.clone(),
                display_at: at,
                affected_components: None,
                deliver_notifications: true,
                custom_tweet: None,
                tweet_id: None,
            }
        })
        .collect();
    updates.reverse();
    let monitoring_at = incident
        .updates
        .iter()
        .find(|u| u.status == IncidentStatus::Monitoring)
        .map(|u| iso8601(u.at_ms));
    Incident {
        shortlink: shortlink(&cx.page_url, "incident", &incident_id),
        id: incident_id,
        name: incident.title.clone(),
        status: incident.status.as_str(),
        impact: incident.impact.as_str(),
        created_at: iso8601(incident.opened_at_ms),
        updated_at: iso8601(incident_updated_ms(incident)),
        monitoring_at,
        resolved_at: incident.resolved_at_ms.map(iso8601),
        started_at: iso8601(incident.opened_at_ms),
        page_id: cx.page_id.clone(),
        incident_updates: updates,
        components: affected(members, &service.name, &incident.components),
        scheduled_for: None,
        scheduled_until: None,
    }
}

fn map_maintenance(
    cx: &Context,
    service: &local::Service,
    members: &[Component],
    window: &local::Maintenance,
) -> Incident {
    let maintenance_id = maintenance_id(&service.name, &window.id);
    let status = if window.active {
        "in_progress"
    } else {
        "scheduled"
    };
    let starts = iso8601(window.starts_at_ms);
    // statusmesh keeps a window, not a timeline: its one update is the window itself.
    let update = IncidentUpdate {
        id: id(
            "scheduled_maintenance_update",
            &[&service.name, &window.id, status],
        ),
        status,
        body: window.title.clone(),
        incident_id: maintenance_id.clone(),
        created_at: starts.clone(),
        updated_at: starts.clone(),
        display_at: starts.clone(),
        affected_components: None,
        deliver_notifications: true,
        custom_tweet: None,
        tweet_id: None,
    };
    Incident {
        shortlink: shortlink(&cx.page_url, "maintenance", &maintenance_id),
        id: maintenance_id,
        name: window.title.clone(),
        status,
        impact: "maintenance",
        created_at: starts.clone(),
        updated_at: starts.clone(),
        monitoring_at: None,
        resolved_at: None,
        started_at: starts.clone(),
        page_id: cx.page_id.clone(),
        incident_updates: vec![update],
        components: affected(members, &service.name, &window.components),
        scheduled_for: Some(starts),
        scheduled_until: Some(iso8601(window.ends_at_ms)),
    }
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
