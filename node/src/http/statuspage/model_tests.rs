//! Unit tests of the Statuspage mapping over a fixed view.

use serde_json::json;

use super::*;

fn fixture() -> local::View {
    let view = json!({
        "page": {"indicator": "major", "description": "Partial System Outage"},
        "services": [{
            "name": "api",
            "indicator": "major",
            "components": [
                {"name": "db", "status": "partial_outage", "freshness": "fresh",
                 "observed_status": "partial_outage", "regions": [
                    {"region": "eu-west", "state": "partial_outage", "message": "", "reporter": "n1",
                     "observed_at_ms": 2000, "ttl_ms": 60000, "last_seen_ms": 2000, "freshness": "fresh"},
                    {"region": "us-east", "state": "operational", "message": "", "reporter": "n2",
                     "observed_at_ms": 1000, "ttl_ms": 60000, "last_seen_ms": 1000, "freshness": "fresh"}]},
                {"name": "web", "status": "major_outage", "freshness": "stale",
                 "observed_status": "major_outage", "regions": [
                    {"region": "eu-west", "state": "major_outage", "message": "", "reporter": "n1",
                     "observed_at_ms": 500, "ttl_ms": 60000, "last_seen_ms": 500, "freshness": "stale"}]}
            ],
            "incidents": [{
                "id": "i1", "title": "DB slow", "impact": "major", "status": "monitoring",
                "components": ["db", "nowhere"], "opened_at_ms": 1500, "resolved_at_ms": null,
                "author": "ops",
                "updates": [
                    {"key": "000000000001500-n1-0", "at_ms": 1500, "status": "investigating", "text": "looking", "author": "ops"},
                    {"key": "000000000001800-n1-1", "at_ms": 1800, "status": "monitoring", "text": "fixed", "author": "ops"}
                ]
            }],
            "scheduled_maintenances": [{
                "id": "m1", "title": "Upgrade", "components": ["db"], "starts_at_ms": 3000,
                "ends_at_ms": 4000, "author": "ops", "active": false
            }]
        }]
    });
    local::View::from_json(view).expect("the fixture has the view's shape")
}

fn context() -> Context {
    Context {
        page_id: page_id("demo"),
        page_url: "https://status.example.com".to_owned(),
    }
}

#[test]
fn a_service_is_a_group_followed_by_its_components() {
    let m = map(&fixture(), &context(), "demo", 9999);
    let names: Vec<(&str, bool)> = m
        .components
        .iter()
        .map(|c| (c.name.as_str(), c.group))
        .collect();
    assert_eq!(names, [("api", true), ("db", false), ("web", false)]);
    let group = &m.components[0];
    assert_eq!(group.status, State::MajorOutage, "the worst member");
    assert_eq!(
        group.components.as_deref(),
        Some(&[m.components[1].id.clone(), m.components[2].id.clone()][..])
    );
    assert_eq!(m.components[1].group_id.as_deref(), Some(group.id.as_str()));
    assert_eq!(m.components[1].created_at, "1970-01-01T00:00:01.000Z");
    assert_eq!(m.components[1].updated_at, "1970-01-01T00:00:02.000Z");
    assert_eq!(m.components[2].position, 2);
}

#[test]
fn a_stale_component_says_so_and_a_fresh_one_has_no_description() {
    let m = map(&fixture(), &context(), "demo", 9999);
    assert_eq!(m.components[1].description, None);
    let stale = m.components[2].description.as_deref().expect("stale");
    assert!(stale.starts_with("stale:"), "{stale}");
    assert!(stale.contains("eu-west"), "{stale}");
}

#[test]
fn incidents_keep_statuspage_fields_and_list_updates_newest_first() {
    let m = map(&fixture(), &context(), "demo", 9999);
    let incident = &m.incidents[0];
    assert_eq!(incident.status, "monitoring");
    assert_eq!(incident.impact, "major");
    assert_eq!(
        incident.monitoring_at.as_deref(),
        Some("1970-01-01T00:00:01.800Z")
    );
    assert_eq!(incident.resolved_at, None);
    assert_eq!(incident.updated_at, "1970-01-01T00:00:01.800Z");
    let bodies: Vec<&str> = incident
        .incident_updates
        .iter()
        .map(|u| u.body.as_str())
        .collect();
    assert_eq!(bodies, ["fixed", "looking"]);
    assert!(incident
        .incident_updates
        .iter()
        .all(|u| u.incident_id == incident.id));
    let components: Vec<&str> = incident
        .components
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(components, ["db"], "unknown components are left out");
    assert!(incident
        .shortlink
        .starts_with("https://status.example.com/#"));
}

#[test]
fn a_window_is_a_scheduled_maintenance_with_its_times() {
    let m = map(&fixture(), &context(), "demo", 9999);
    let window = &m.maintenances[0];
    assert_eq!(window.status, "scheduled");
    assert_eq!(window.impact, "maintenance");
    assert_eq!(
        window.scheduled_for.as_deref(),
        Some("1970-01-01T00:00:03.000Z")
    );
    assert_eq!(
        window.scheduled_until.as_deref(),
        Some("1970-01-01T00:00:04.000Z")
    );
    assert_eq!(window.incident_updates.len(), 1);
}

#[test]
fn ids_are_the_same_for_the_same_names_and_the_page_is_the_cluster() {
    let a = map(&fixture(), &context(), "demo", 1);
    let b = map(&fixture(), &context(), "demo", 2);
    let ids = |m: &Mapped| -> Vec<String> {
        m.components
            .iter()
            .map(|c| c.id.clone())
            .chain(m.incidents.iter().map(|i| i.id.clone()))
            .chain(
                m.incidents
                    .iter()
                    .flat_map(|i| i.incident_updates.iter().map(|u| u.id.clone())),
            )
            .collect()
    };
    assert_eq!(ids(&a), ids(&b));
    assert_eq!(a.page.name, "demo");
    assert_eq!(a.page.updated_at, "1970-01-01T00:00:02.000Z");
    assert_eq!(a.status.indicator, "major");
    assert_eq!(a.status.description, "Partial System Outage");
}

#[test]
fn an_open_window_on_a_quiet_page_is_the_maintenance_indicator() {
    let status = rollup(Indicator::None, true);
    assert_eq!(status.indicator, "maintenance");
    assert_eq!(rollup(Indicator::Minor, true).indicator, "minor");
}
