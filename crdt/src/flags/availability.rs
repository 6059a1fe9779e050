//! The availability a flag evaluation sees: each component's state mesh-wide and per region,
//! taken from the status view (pure: the view is computed from documents and a clock).
//!
//! - Mesh-wide, a component is at its derived status (the worst fresh observation, under
//!   maintenance during a window, an operator override on top), as the status page shows it.
//! - In a region, a component is at that region's observation while it is fresh; an operator
//!   override applies in every region. A stale observation ("cannot see it from here") and a
//!   region with no observation are unknown: no availability rule fires on them.

use std::collections::BTreeMap;

use crate::model::State;
use crate::view::{Freshness, StatusView};

/// One component's states.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ComponentAvailability {
    /// The derived status across the mesh.
    pub mesh: Option<State>,
    /// Region name to the state known there.
    pub regions: BTreeMap<String, State>,
}

/// Service to component to states.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AvailabilityView {
    services: BTreeMap<String, BTreeMap<String, ComponentAvailability>>,
}

impl AvailabilityView {
    /// The availability in a status view.
    pub fn from_view(view: &StatusView) -> Self {
        let mut this = Self::default();
        for service in &view.services {
            let components = this.services.entry(service.name.to_string()).or_default();
            for component in &service.components {
                let mut entry = ComponentAvailability {
                    mesh: Some(component.status),
                    regions: BTreeMap::new(),
                };
                for region in &component.regions {
                    let state = match &component.operator_override {
                        Some(word) => word.state,
                        None if region.freshness == Freshness::Fresh => region.observation.state,
                        None => continue,
                    };
                    entry.regions.insert(region.region.to_string(), state);
                }
                components.insert(component.name.to_string(), entry);
            }
        }
        this
    }

    /// Sets a component's mesh-wide state (tests and benchmarks).
    pub fn set_mesh(&mut self, service: &str, component: &str, state: State) {
        self.entry(service, component).mesh = Some(state);
    }

    /// Sets a component's state in one region (tests and benchmarks).
    pub fn set_region(&mut self, service: &str, component: &str, region: &str, state: State) {
        self.entry(service, component)
            .regions
            .insert(region.to_owned(), state);
    }

    /// The state of `component` of `service`: in `region`, or mesh-wide when `None`.
    /// `None` when unknown.
    pub fn state(&self, service: &str, component: &str, region: Option<&str>) -> Option<State> {
        let entry = self.services.get(service)?.get(component)?;
        match region {
            Some(region) => entry.regions.get(region).copied(),
            None => entry.mesh,
        }
    }

    /// Whether the component is known to be at `threshold` or worse (by severity).
    pub fn at_or_worse(
        &self,
        service: &str,
        component: &str,
        region: Option<&str>,
        threshold: State,
    ) -> bool {
        self.state(service, component, region)
            .is_some_and(|state| state.severity() >= threshold.severity())
    }

    fn entry(&mut self, service: &str, component: &str) -> &mut ComponentAvailability {
        self.services
            .entry(service.to_owned())
            .or_default()
            .entry(component.to_owned())
            .or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_components_and_regions_are_never_degraded() {
        let mut view = AvailabilityView::default();
        view.set_region("pay", "api", "eu-west", State::MajorOutage);
        assert!(view.at_or_worse("pay", "api", Some("eu-west"), State::PartialOutage));
        assert!(!view.at_or_worse("pay", "api", Some("us-east"), State::DegradedPerformance));
        assert!(!view.at_or_worse("pay", "api", None, State::DegradedPerformance));
        assert!(!view.at_or_worse("pay", "db", None, State::Operational));
        view.set_mesh("pay", "api", State::DegradedPerformance);
        assert!(view.at_or_worse("pay", "api", None, State::DegradedPerformance));
        assert!(!view.at_or_worse("pay", "api", None, State::MajorOutage));
    }
}
