//! SARIF 2.1.0 in and out. Reading keeps what posture needs from any scanner — tool, rule, level
//! (result, then the rule's default, then "warning"), security severity, CWE tags, location, message,
//! suppressions — and normalises paths (file URIs, `./`, a scanner's repeated folder prefix) to the
//! repository root, and each tool's rules as the scanner wrote them. Writing emits one run per tool with
//! those rules (so a code-scanning UI shows their help) and the findings with their fingerprints and
//! baseline states.

use std::path::Path;

use regex::Regex;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::PostureError;
use crate::finding::{Finding, Level, Severity, Suppression};

#[derive(Deserialize)]
struct Log {
    version: Option<String>,
    runs: Option<Vec<Run>>,
}

#[derive(Deserialize)]
struct Run {
    tool: Tool,
    #[serde(default)]
    results: Vec<SarifResult>,
}

#[derive(Deserialize)]
struct Tool {
    driver: Driver,
}

#[derive(Deserialize)]
struct Driver {
    name: String,
    #[serde(default)]
    rules: Vec<Value>,
}

/// A tool and its rules, each as the tool described it (`reportingDescriptor` objects).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ToolRules {
    /// `tool.driver.name`.
    pub name: String,
    /// Its rules, verbatim: id, descriptions, help, help URI, properties.
    pub rules: Vec<Value>,
}

impl ToolRules {
    /// A tool whose rules are given as (id, short description, help text).
    pub fn from_help(name: &str, rules: &[(String, String, String)]) -> ToolRules {
        let rules = rules
            .iter()
            .map(|(id, short, help)| {
                json!({"id": id, "shortDescription": {"text": short}, "fullDescription": {"text": short}, "help": {"text": help}})
            })
            .collect();
        ToolRules { name: name.to_owned(), rules }
    }
}

#[derive(Deserialize)]
struct Rule {
    id: String,
    #[serde(default, rename = "defaultConfiguration")]
    default_configuration: Option<Configuration>,
    #[serde(default)]
    properties: Option<Value>,
}

#[derive(Deserialize)]
struct Configuration {
    #[serde(default)]
    level: Option<String>,
}

#[derive(Deserialize)]
struct SarifResult {
    #[serde(default, rename = "ruleId")]
    rule_id: Option<String>,
    #[serde(default, rename = "ruleIndex")]
    rule_index: Option<usize>,
    #[serde(default)]
    level: Option<String>,
    #[serde(default)]
    message: Message,
    #[serde(default)]
    locations: Vec<Location>,
    #[serde(default)]
    suppressions: Vec<SarifSuppression>,
    #[serde(default, rename = "partialFingerprints")]
    partial_fingerprints: Option<Value>,
    #[serde(default)]
    properties: Option<Value>,
}

#[derive(Deserialize, Default)]
struct Message {
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct Location {
    #[serde(default, rename = "physicalLocation")]
    physical: Option<Physical>,
}

#[derive(Deserialize)]
struct Physical {
    #[serde(default, rename = "artifactLocation")]
    artifact: Option<Artifact>,
    #[serde(default)]
    region: Option<Region>,
}

#[derive(Deserialize)]
struct Artifact {
    #[serde(default)]
    uri: Option<String>,
}

#[derive(Deserialize)]
struct Region {
    #[serde(default, rename = "startLine")]
    start_line: Option<usize>,
}

#[derive(Deserialize)]
struct SarifSuppression {
    kind: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    justification: Option<String>,
}

/// The fingerprint key gpuplane writes into `partialFingerprints`.
pub const FINGERPRINT_KEY: &str = "gpuplane/v1";

fn parse_level(text: Option<&str>) -> Option<Level> {
    match text? {
        "error" => Some(Level::Error),
        "warning" => Some(Level::Warning),
        "note" => Some(Level::Note),
        "none" => Some(Level::None),
        _ => None,
    }
}

/// A URI as a path relative to `root`, `/`-separated.
fn normalise_path(uri: &str, root: &Path) -> String {
    let mut path = uri.strip_prefix("file://").unwrap_or(uri).replace("%20", " ");
    let root_text = root.display().to_string();
    if let Some(rest) = path.strip_prefix(&root_text) {
        path = rest.trim_start_matches('/').to_owned();
    }
    while let Some(rest) = path.strip_prefix("./") {
        path = rest.to_owned();
    }
    // Some scanners print the scanned folder twice (`k8s/k8s/x.yaml`): drop leading folders until the
    // path names a file, when the path as given names none.
    if !root.join(&path).exists() {
        let segments: Vec<&str> = path.split('/').collect();
        for skip in 1..segments.len() {
            let candidate = segments[skip..].join("/");
            if root.join(&candidate).is_file() {
                return candidate;
            }
        }
    }
    path
}

/// Reads one SARIF file into findings; paths are made relative to `root`.
pub fn read(source_name: &str, text: &str, root: &Path) -> Result<Vec<Finding>, PostureError> {
    read_with_rules(source_name, text, root).map(|(findings, _)| findings)
}

/// Reads one SARIF file into findings and each run's tool with its rules.
pub fn read_with_rules(
    source_name: &str,
    text: &str,
    root: &Path,
) -> Result<(Vec<Finding>, Vec<ToolRules>), PostureError> {
    let log: Log = serde_json::from_str(text).map_err(|e| PostureError::json(source_name, &e))?;
    match log.version.as_deref() {
        Some("2.1.0") => {}
        Some(other) => return Err(PostureError::invalid(source_name, "version", &format!("2.1.0, found {other}"))),
        None => return Err(PostureError::invalid(source_name, "version", "2.1.0 (a SARIF log)")),
    }
    let runs = log.runs.ok_or_else(|| PostureError::invalid(source_name, "runs", "an array of runs"))?;
    let cwe = Regex::new(r"(?i)\bcwe-(\d+)").map_err(|e| PostureError::invalid(source_name, "cwe", &e.to_string()))?;
    let mut findings = Vec::new();
    let mut tools = Vec::new();
    for (r, run) in runs.into_iter().enumerate() {
        let tool = run.tool.driver.name.clone();
        let rules = run
            .tool
            .driver
            .rules
            .iter()
            .enumerate()
            .map(|(i, v)| {
                serde_json::from_value::<Rule>(v.clone()).map_err(|e| {
                    PostureError::invalid(
                        source_name,
                        &format!("runs[{r}].tool.driver.rules[{i}]"),
                        &format!("a rule ({e})"),
                    )
                })
            })
            .collect::<Result<Vec<Rule>, _>>()?;
        for (n, result) in run.results.into_iter().enumerate() {
            let rule = match (&result.rule_id, result.rule_index) {
                (Some(id), _) => rules.iter().find(|rule| &rule.id == id),
                (None, Some(index)) => rules.get(index),
                (None, None) => None,
            };
            let rule_id = result.rule_id.clone().or_else(|| rule.map(|r| r.id.clone())).ok_or_else(|| {
                PostureError::invalid(source_name, &format!("runs[{r}].results[{n}]"), "a ruleId or ruleIndex")
            })?;
            let level = parse_level(result.level.as_deref())
                .or_else(|| parse_level(rule.and_then(|r| r.default_configuration.as_ref()?.level.as_deref())))
                .unwrap_or(Level::Warning);
            let properties = rule.and_then(|r| r.properties.as_ref());
            let security_severity = properties
                .and_then(|p| p.get("security-severity"))
                .and_then(|v| v.as_str().and_then(|s| s.parse::<f64>().ok()).or_else(|| v.as_f64()));
            let mut cwes: Vec<String> = properties
                .and_then(|p| p.get("tags"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter_map(|tag| cwe.captures(tag).map(|c| format!("CWE-{}", &c[1])))
                .collect();
            cwes.sort();
            cwes.dedup();
            let physical = result.locations.first().and_then(|l| l.physical.as_ref());
            let path = physical
                .and_then(|p| p.artifact.as_ref()?.uri.as_deref())
                .map(|uri| normalise_path(uri, root))
                .unwrap_or_default();
            let line = physical.and_then(|p| p.region.as_ref()?.start_line).unwrap_or(0);
            let suppression = result.suppressions.first().map(|s| Suppression {
                kind: s.kind.clone(),
                status: s.status.clone().unwrap_or_else(|| "accepted".to_owned()),
                justification: s.justification.clone().filter(|j| !j.trim().is_empty()),
            });
            let fingerprint = result
                .partial_fingerprints
                .as_ref()
                .and_then(|p| p.get(FINGERPRINT_KEY))
                .and_then(Value::as_str)
                .map(str::to_owned);
            let severity = security_severity.map_or_else(|| Severity::from_level(level), Severity::from_score);
            let message = result.message.text.unwrap_or_default();
            findings.push(Finding {
                cwe: cwes,
                fingerprint: fingerprint.unwrap_or_default(),
                suppression,
                // gpuplane's own findings.sarif keeps when each finding was introduced.
                introduced: result.properties.as_ref().and_then(|p| p.get("introduced")).and_then(Value::as_i64),
                ..Finding::new(&tool, &rule_id, level, severity, &path, line, message)
            });
        }
        tools.push(ToolRules { name: tool, rules: run.tool.driver.rules });
    }
    Ok((findings, tools))
}

/// Writes findings as SARIF 2.1.0: one run per tool (the tools given first, in order, then any other a
/// finding names), each with its rules — the given descriptions verbatim, plus a bare `id` for a rule a
/// finding uses that none describes — and its results pointing at them by id and index. A path relative
/// to the repository is written against `%SRCROOT%`; an absolute one as a `file://` URI.
pub fn write(findings: &[Finding], tools: &[ToolRules]) -> Value {
    let mut runs: Vec<ToolRules> = Vec::new();
    for t in tools {
        match runs.iter_mut().find(|r| r.name == t.name) {
            Some(run) => {
                for rule in &t.rules {
                    if !run.rules.iter().any(|r| r.get("id") == rule.get("id")) {
                        run.rules.push(rule.clone());
                    }
                }
            }
            None => runs.push(t.clone()),
        }
    }
    for f in findings {
        let index = match runs.iter().position(|r| r.name == f.tool) {
            Some(i) => i,
            None => {
                runs.push(ToolRules { name: f.tool.clone(), rules: Vec::new() });
                runs.len() - 1
            }
        };
        let run = &mut runs[index];
        if !run.rules.iter().any(|r| r.get("id").and_then(Value::as_str) == Some(f.rule.as_str())) {
            run.rules.push(json!({"id": f.rule}));
        }
    }
    let runs: Vec<Value> = runs
        .iter()
        .map(|run| {
            let results: Vec<Value> =
                findings.iter().filter(|f| f.tool == run.name).map(|f| result(f, &run.rules)).collect();
            json!({"tool": {"driver": {"name": run.name, "rules": run.rules}}, "results": results})
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": runs
    })
}

fn result(f: &Finding, rules: &[Value]) -> Value {
    let artifact = if f.path.starts_with('/') {
        json!({"uri": format!("file://{}", f.path)})
    } else {
        json!({"uri": f.path, "uriBaseId": "%SRCROOT%"})
    };
    let mut result = json!({
        "ruleId": f.rule,
        "level": f.level.as_str(),
        "message": {"text": f.message},
        "locations": [{"physicalLocation": {"artifactLocation": artifact, "region": {"startLine": f.line.max(1)}}}],
        "partialFingerprints": {FINGERPRINT_KEY: f.fingerprint},
        "properties": {"tool": f.tool, "severity": f.severity.as_str(), "cwe": f.cwe, "commit": f.commit, "ai": f.ai, "introduced": f.introduced},
    });
    if let Some(index) = rules.iter().position(|r| r.get("id").and_then(Value::as_str) == Some(f.rule.as_str())) {
        result["ruleIndex"] = json!(index);
    }
    if let Some(state) = f.state {
        result["baselineState"] = json!(state.as_str());
    }
    if let Some(s) = &f.suppression {
        let mut suppression = json!({"kind": s.kind, "status": s.status});
        if let Some(j) = &s.justification {
            suppression["justification"] = json!(j);
        }
        result["suppressions"] = json!([suppression]);
    }
    result
}
