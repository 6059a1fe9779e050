//! The firing set on disk: `alertmanager.json` in the node's data directory, replaced
//! atomically (temporary file, fsync, rename, fsync of the directory, as snapshots are), so
//! a crash leaves the old set or the new one whole.
//!
//! The set is the node's own, not mesh data: Alertmanager delivers a notification to one
//! URL, and the node that received it is the one that must remember which alerts fire. A
//! file that does not parse, or that holds more than the set's bounds, is corruption: the
//! node refuses to start (as it does for a corrupt snapshot) rather than forget alerts that
//! fire.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::firing::{FiringSet, TargetAlerts, FIRING_ALERTS_MAX, RESOLVED_KEPT_MAX};
use super::payload::Target;
use crate::storage::{self, StorageError};

/// The file's name in the data directory.
pub const FILE_NAME: &str = "alertmanager.json";
/// Largest file read on start, in bytes: far above what the set's bounds allow.
const FILE_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// The format this code writes.
const VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    targets: Vec<TargetFile>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetFile {
    target: Target,
    alerts: TargetAlerts,
}

/// Where the set of the node with data directory `data_dir` lives.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Reads the set (empty when there is no file). Blocking.
pub fn load(path: &Path) -> Result<FiringSet, StorageError> {
    let Some(bytes) = storage::read_bounded(path, FILE_BYTES_MAX)? else {
        return Ok(FiringSet::default());
    };
    let corrupt = |reason: String| StorageError::Corrupt {
        path: path.display().to_string(),
        reason,
    };
    let file: File = serde_json::from_slice(&bytes)
        .map_err(|e| corrupt(format!("not a valid Alertmanager firing set: {e}")))?;
    if file.version != VERSION {
        return Err(corrupt(format!(
            "format version {} is not {VERSION}, the one this build reads",
            file.version
        )));
    }
    let mut set = FiringSet::default();
    for entry in file.targets {
        set.targets.insert(entry.target, entry.alerts);
    }
    if set.firing_count() > FIRING_ALERTS_MAX || set.resolved_count() > RESOLVED_KEPT_MAX {
        return Err(corrupt(format!(
            "{} firing and {} resolved alerts, over the bounds of {FIRING_ALERTS_MAX} and \
             {RESOLVED_KEPT_MAX}",
            set.firing_count(),
            set.resolved_count()
        )));
    }
    Ok(set)
}

/// Replaces the file with `set`. Blocking.
pub fn save(path: &Path, set: &FiringSet) -> Result<(), StorageError> {
    let file = File {
        version: VERSION,
        targets: set
            .targets
            .iter()
            .map(|(target, alerts)| TargetFile {
                target: target.clone(),
                alerts: alerts.clone(),
            })
            .collect(),
    };
    let bytes = serde_json::to_vec(&file).map_err(|e| StorageError::Io {
        path: path.display().to_string(),
        op: "encode",
        reason: e.to_string(),
    })?;
    storage::write_atomically(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::alertmanager::firing::Firing;
    use statusmesh_crdt::{Name, State};

    fn target() -> Target {
        Target {
            service: Name::parse("service", "api").expect("name"),
            component: Name::parse("component", "db").expect("name"),
            region: Name::parse("region", "eu-west").expect("name"),
        }
    }

    #[test]
    fn a_saved_set_loads_back_equal_and_a_missing_file_is_an_empty_set() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = path(dir.path());
        assert_eq!(load(&path).expect("no file"), FiringSet::default());
        let mut set = FiringSet::default();
        let mut alerts = TargetAlerts {
            reporter: "alertmanager.statusmesh".to_owned(),
            ..TargetAlerts::default()
        };
        alerts.firing.insert(
            "abc".to_owned(),
            Firing {
                state: State::MajorOutage,
                name: "DbDown".to_owned(),
                starts_at_ms: Some(-5),
                seen_at_ms: 7,
                group: u64::MAX,
                incident: true,
            },
        );
        set.targets.insert(target(), alerts);
        save(&path, &set).expect("save");
        assert_eq!(load(&path).expect("load"), set);
    }

    #[test]
    fn a_damaged_file_is_corruption_that_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = path(dir.path());
        std::fs::write(&path, b"{\"version\": 1, \"targets\": [{\"target\": 3}]}").expect("write");
        let error = load(&path).expect_err("corrupt");
        assert!(matches!(error, StorageError::Corrupt { .. }), "{error}");
        assert!(error.to_string().contains(FILE_NAME), "{error}");
        let bad_name = r#"{"version": 1, "targets": [{"target": {"service": "API",
            "component": "db", "region": "eu-west"}, "alerts": {"firing": {}, "resolved": {},
            "reporter": "x", "incident": null}}]}"#;
        std::fs::write(&path, bad_name).expect("write");
        assert!(load(&path).is_err());
    }
}
