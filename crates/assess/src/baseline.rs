//! Trend against a previous assessment: each area's level and score then and now, and every check
//! whose status changed (including checks added to or removed from the model).

use serde::{Deserialize, Serialize};

use crate::AssessError;
use crate::assess::{ASSESS_JSON_SCHEMA, Assessment, Status};

/// An area then and now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AreaTrend {
    /// Area id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Level then (`None`: not applicable or not in the previous model).
    pub before: Option<u8>,
    /// Level now.
    pub after: Option<u8>,
    /// Score then.
    pub score_before: Option<f64>,
    /// Score now.
    pub score_after: Option<f64>,
}

/// A check whose status changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckChange {
    /// Check id.
    pub id: String,
    /// Status then (`None`: the check is new).
    pub before: Option<Status>,
    /// Status now (`None`: the check was removed).
    pub after: Option<Status>,
}

/// The change since a previous assessment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trend {
    /// Date of the previous assessment.
    pub previous_as_of: String,
    /// Overall score then.
    pub previous_score: Option<f64>,
    /// Per area.
    pub areas: Vec<AreaTrend>,
    /// Checks that changed.
    pub changed: Vec<CheckChange>,
}

/// Reads a previous assessment's JSON.
pub fn read_baseline(source_name: &str, text: &str) -> Result<Assessment, AssessError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| AssessError::Yaml {
        source_name: source_name.to_owned(),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    let schema = value.get("schema").and_then(serde_json::Value::as_str).unwrap_or_default();
    if schema != ASSESS_JSON_SCHEMA {
        return Err(AssessError::invalid(
            source_name,
            "schema",
            &format!("{ASSESS_JSON_SCHEMA} (the JSON written by gpuplane assess), found {schema:?}"),
        ));
    }
    serde_json::from_value(value).map_err(|e| AssessError::invalid(source_name, "document", &e.to_string()))
}

/// Compares a previous assessment with the current one.
pub fn compare(previous: &Assessment, current: &Assessment) -> Trend {
    let areas = current
        .areas
        .iter()
        .map(|area| {
            let before = previous.areas.iter().find(|a| a.id == area.id);
            AreaTrend {
                id: area.id.clone(),
                name: area.name.clone(),
                before: before.and_then(|a| a.level),
                after: area.level,
                score_before: before.and_then(|a| a.score),
                score_after: area.score,
            }
        })
        .collect();
    let mut changed: Vec<CheckChange> = current
        .checks
        .iter()
        .filter_map(|check| {
            let before = previous.checks.iter().find(|c| c.id == check.id).map(|c| c.status);
            (before != Some(check.status)).then(|| CheckChange {
                id: check.id.clone(),
                before,
                after: Some(check.status),
            })
        })
        .collect();
    changed.extend(
        previous.checks.iter().filter(|c| !current.checks.iter().any(|now| now.id == c.id)).map(|c| CheckChange {
            id: c.id.clone(),
            before: Some(c.status),
            after: None,
        }),
    );
    Trend { previous_as_of: previous.as_of.clone(), previous_score: previous.score, areas, changed }
}
