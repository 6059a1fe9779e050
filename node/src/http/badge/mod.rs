//! Status badges: `GET /badge/{service}.svg`, `/badge/{service}/{component}.svg`, and the
//! same paths with `.json`, which answer shields.io's endpoint schema
//! (`{"schemaVersion": 1, "label", "message", "color"}`) for a shields badge of its own style.
//!
//! The message says the state in words (`operational`, `degraded performance`,
//! `partial outage`, `major outage`, `under maintenance`), so a badge reads the same without
//! its colour. A service badge shows the service's indicator (its worst fresh component and
//! its open incidents): `operational`, `degraded`, `partial outage`, `major outage`, or
//! `under maintenance` when nothing is worse than an open window; `stale` (grey) when no
//! component of it is fresh on this node. A component badge shows the component's derived
//! status; when stale, its last known status followed by `(stale)`, in grey: "cannot see it
//! from here" is not "down". An unknown service or component is a 404 (JSON error).

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use statusmesh_crdt::{Indicator, Name, State as ComponentState};

use super::statuspage::local::{self, Freshness};
use super::{ApiError, HttpState};

pub mod svg;

/// The routes of this module, to merge into the node's router.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/badge/{badge}", get(service_badge))
        .route("/badge/{service}/{badge}", get(component_badge))
}

/// The route templates of this module: they produce what their file extension names.
pub const TEMPLATES: [&str; 2] = ["/badge/{badge}", "/badge/{service}/{badge}"];

/// shields.io's endpoint schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub schema_version: u8,
    pub label: String,
    pub message: String,
    pub color: &'static str,
}

/// What a badge says and its colour (a shields name and its `#rrggbb`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Badge {
    pub label: String,
    pub message: String,
    pub colour: Colour,
}

/// The colours a badge takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colour {
    Green,
    Yellow,
    Orange,
    Red,
    Blue,
    Grey,
}

impl Colour {
    /// shields.io's name of the colour.
    pub fn name(self) -> &'static str {
        match self {
            Colour::Green => "brightgreen",
            Colour::Yellow => "yellow",
            Colour::Orange => "orange",
            Colour::Red => "red",
            Colour::Blue => "blue",
            Colour::Grey => "lightgrey",
        }
    }

    /// The colour as shields.io draws it.
    pub fn hex(self) -> &'static str {
        match self {
            Colour::Green => "#4c1",
            Colour::Yellow => "#dfb317",
            Colour::Orange => "#fe7d37",
            Colour::Red => "#e05d44",
            Colour::Blue => "#007ec6",
            Colour::Grey => "#9f9f9f",
        }
    }
}

/// The words and colour of a component state.
pub fn state_words(state: ComponentState) -> (&'static str, Colour) {
    match state {
        ComponentState::Operational => ("operational", Colour::Green),
        ComponentState::DegradedPerformance => ("degraded performance", Colour::Yellow),
        ComponentState::PartialOutage => ("partial outage", Colour::Orange),
        ComponentState::MajorOutage => ("major outage", Colour::Red),
        ComponentState::UnderMaintenance => ("under maintenance", Colour::Blue),
    }
}

/// The badge of a whole service.
pub fn of_service(service: &local::Service) -> Badge {
    let (message, colour) = match service.indicator() {
        Indicator::Critical => ("major outage", Colour::Red),
        Indicator::Major => ("partial outage", Colour::Orange),
        Indicator::Minor => ("degraded", Colour::Yellow),
        Indicator::None
            if service
                .components
                .iter()
                .any(|c| c.status == ComponentState::UnderMaintenance) =>
        {
            ("under maintenance", Colour::Blue)
        }
        Indicator::None
            if !service.components.is_empty()
                && service
                    .components
                    .iter()
                    .all(|c| c.freshness == Freshness::Stale) =>
        {
            ("stale", Colour::Grey)
        }
        Indicator::None => ("operational", Colour::Green),
    };
    Badge {
        label: service.name.clone(),
        message: message.to_owned(),
        colour,
    }
}

/// The badge of one component of a service.
pub fn of_component(service: &str, component: &local::Component) -> Badge {
    let (words, colour) = state_words(component.status);
    let (message, colour) = match component.freshness {
        Freshness::Fresh => (words.to_owned(), colour),
        Freshness::Stale => (format!("{words} (stale)"), Colour::Grey),
    };
    Badge {
        label: format!("{service}/{}", component.name),
        message,
        colour,
    }
}

/// The format a badge file name asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Svg,
    Json,
}

/// `name.svg` or `name.json`, split; any other extension is a 404 naming `badge`.
fn split_file(file: &str) -> Result<(&str, Format), ApiError> {
    let split = file
        .strip_suffix(".svg")
        .map(|n| (n, Format::Svg))
        .or_else(|| file.strip_suffix(".json").map(|n| (n, Format::Json)));
    split.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            Some("badge"),
            "a badge is NAME.svg or NAME.json",
        )
    })
}

async fn view_of(state: &HttpState, service: &Name) -> Result<local::Service, ApiError> {
    let (value, _) = state.node.status(Some(service.clone())).await?;
    let view = local::View::from_json(value).ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            None,
            "the node's status view did not have the expected shape",
        )
    })?;
    view.service(service.as_str()).cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            Some("service"),
            format!("no status has been written for service {service:?}"),
        )
    })
}

async fn service_badge(
    State(state): State<HttpState>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let (name, format) = split_file(&file)?;
    let service = Name::parse("service", name)?;
    let view = view_of(&state, &service).await?;
    Ok(respond(&of_service(&view), format))
}

async fn component_badge(
    State(state): State<HttpState>,
    Path((service, file)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (name, format) = split_file(&file)?;
    let service = Name::parse("service", &service)?;
    let component = Name::parse("component", name)?;
    let view = view_of(&state, &service).await?;
    let found = view.component(component.as_str()).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            Some("component"),
            format!("service {service:?} has no component {component:?}"),
        )
    })?;
    Ok(respond(&of_component(service.as_str(), found), format))
}

fn respond(badge: &Badge, format: Format) -> Response {
    let cache = (header::CACHE_CONTROL, "no-cache, max-age=0");
    match format {
        Format::Svg => (
            [
                (header::CONTENT_TYPE, "image/svg+xml; charset=utf-8"),
                cache,
            ],
            svg::render(&badge.label, &badge.message, badge.colour.hex()),
        )
            .into_response(),
        Format::Json => (
            [cache],
            Json(Endpoint {
                schema_version: 1,
                label: badge.label.clone(),
                message: badge.message.clone(),
                color: badge.colour.name(),
            }),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn badge_files_are_svg_or_json() {
        assert_eq!(split_file("api.svg").expect("svg"), ("api", Format::Svg));
        assert_eq!(split_file("api.json").expect("json"), ("api", Format::Json));
        let refused = split_file("api.png").expect_err("404");
        assert_eq!(refused.status(), StatusCode::NOT_FOUND);
        assert_eq!(refused.body()["field"], "badge");
    }

    #[test]
    fn a_badge_route_produces_what_its_extension_names() {
        use super::super::negotiate::{produces_for, JSON, SVG};
        assert_eq!(produces_for(TEMPLATES[0], "/badge/api.svg"), &SVG);
        assert_eq!(produces_for(TEMPLATES[1], "/badge/api/db.svg"), &SVG);
        assert_eq!(produces_for(TEMPLATES[1], "/badge/api/db.json"), &JSON);
        assert_eq!(produces_for("/v1/status", "/v1/status"), &JSON);
    }

    #[test]
    fn every_state_has_words_and_stale_is_said_in_grey() {
        for state in ComponentState::ALL {
            let (words, _) = state_words(state);
            assert_eq!(words, state.as_str().replace('_', " "));
        }
        let component: local::Component = serde_json::from_value(serde_json::json!({
            "name": "db", "status": "major_outage", "freshness": "stale", "regions": []
        }))
        .expect("component");
        let badge = of_component("api", &component);
        assert_eq!(badge.message, "major outage (stale)");
        assert_eq!(badge.colour, Colour::Grey);
        assert_eq!(badge.label, "api/db");
    }

    #[test]
    fn the_endpoint_json_has_shields_field_names() {
        let value = serde_json::to_value(Endpoint {
            schema_version: 1,
            label: "api".into(),
            message: "operational".into(),
            color: "brightgreen",
        })
        .expect("json");
        assert_eq!(
            value,
            serde_json::json!({"schemaVersion": 1, "label": "api", "message": "operational", "color": "brightgreen"})
        );
    }
}
