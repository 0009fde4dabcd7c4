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

/// Reads one SARIF log given as text into findings; paths are made relative to `root`.
pub fn read(source_name: &str, text: &str, root: &Path) -> Result<Vec<Finding>, PostureError> {
    read_with_rules(source_name, text, root).map(|(findings, _)| findings)
}

/// Reads one SARIF log given as text into findings and each run's tool with its rules.
pub fn read_with_rules(
    source_name: &str,
    text: &str,
    root: &Path,
) -> Result<(Vec<Finding>, Vec<ToolRules>), PostureError> {
    read_log(source_name, || Ok(text.as_bytes()), root)
}

/// Reads one SARIF file into findings and each run's tool with its rules, streaming: the file is read
/// twice (its tools and rules, then its results one at a time), so memory holds the findings, not the log.
pub fn read_file(path: &Path, root: &Path) -> Result<(Vec<Finding>, Vec<ToolRules>), PostureError> {
    let name = path.display().to_string();
    let open = || {
        std::fs::File::open(path)
            .map(std::io::BufReader::new)
            .map_err(|e| PostureError::invalid(&name, "file", &format!("a readable SARIF file ({e})")))
    };
    read_log(&name, open, root)
}

/// The tools of a log, its results skipped.
#[derive(Deserialize)]
struct LogHead {
    version: Option<String>,
    runs: Option<Vec<RunHead>>,
}

#[derive(Deserialize)]
struct RunHead {
    tool: Tool,
}

/// What converting a run's results needs: its tool, its rules, where paths are relative to.
struct Context<'a> {
    source_name: &'a str,
    root: &'a Path,
    cwe: Regex,
    runs: Vec<(String, Vec<Rule>)>,
    findings: Vec<Finding>,
    /// A result that could not be converted; it stops the reading.
    error: Option<PostureError>,
}

fn read_log<R: std::io::Read>(
    source_name: &str,
    open: impl Fn() -> Result<R, PostureError>,
    root: &Path,
) -> Result<(Vec<Finding>, Vec<ToolRules>), PostureError> {
    let head: LogHead = serde_json::from_reader(open()?).map_err(|e| PostureError::json(source_name, &e))?;
    match head.version.as_deref() {
        Some("2.1.0") => {}
        Some(other) => return Err(PostureError::invalid(source_name, "version", &format!("2.1.0, found {other}"))),
        None => return Err(PostureError::invalid(source_name, "version", "2.1.0 (a SARIF log)")),
    }
    let runs = head.runs.ok_or_else(|| PostureError::invalid(source_name, "runs", "an array of runs"))?;
    let mut tools = Vec::new();
    let mut parsed = Vec::new();
    for (r, run) in runs.into_iter().enumerate() {
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
        parsed.push((run.tool.driver.name.clone(), rules));
        tools.push(ToolRules { name: run.tool.driver.name, rules: run.tool.driver.rules });
    }
    let cwe = Regex::new(r"(?i)\bcwe-(\d+)").map_err(|e| PostureError::invalid(source_name, "cwe", &e.to_string()))?;
    let mut context = Context { source_name, root, cwe, runs: parsed, findings: Vec::new(), error: None };
    let mut deserializer = serde_json::Deserializer::from_reader(open()?);
    let outcome = serde::de::DeserializeSeed::deserialize(stream::LogSeed(&mut context), &mut deserializer);
    if let Some(error) = context.error.take() {
        return Err(error);
    }
    outcome.map_err(|e| PostureError::json(source_name, &e))?;
    Ok((context.findings, tools))
}

impl Context<'_> {
    /// Converts result `n` of run `r`.
    fn push(&mut self, r: usize, n: usize, result: SarifResult) -> Result<(), PostureError> {
        let source_name = self.source_name;
        let Some((tool, rules)) = self.runs.get(r) else {
            return Err(PostureError::invalid(source_name, &format!("runs[{r}]"), "a run with a tool"));
        };
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
            .filter_map(|tag| self.cwe.captures(tag).map(|c| format!("CWE-{}", &c[1])))
            .collect();
        cwes.sort();
        cwes.dedup();
        let physical = result.locations.first().and_then(|l| l.physical.as_ref());
        let path = physical
            .and_then(|p| p.artifact.as_ref()?.uri.as_deref())
            .map(|uri| normalise_path(uri, self.root))
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
        let finding = Finding {
            cwe: cwes,
            fingerprint: fingerprint.unwrap_or_default(),
            suppression,
            // gpuplane's own findings.sarif keeps when each finding was introduced.
            introduced: result.properties.as_ref().and_then(|p| p.get("introduced")).and_then(Value::as_i64),
            ..Finding::new(tool, &rule_id, level, severity, &path, line, message)
        };
        self.findings.push(finding);
        Ok(())
    }
}

/// Visitors that walk `runs[].results[]` and hand each result to the [`Context`] as it is parsed.
mod stream {
    use std::fmt;

    use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

    use super::{Context, SarifResult};

    pub(super) struct LogSeed<'c, 'a>(pub &'c mut Context<'a>);

    impl<'de> DeserializeSeed<'de> for LogSeed<'_, '_> {
        type Value = ();
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for LogSeed<'_, '_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a SARIF log")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<String>()? {
                if key == "runs" {
                    map.next_value_seed(Runs(&mut *self.0))?;
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(())
        }
    }

    struct Runs<'c, 'a>(&'c mut Context<'a>);

    impl<'de> DeserializeSeed<'de> for Runs<'_, '_> {
        type Value = ();
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }

    impl<'de> Visitor<'de> for Runs<'_, '_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array of runs")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let mut r = 0;
            while seq.next_element_seed(Run { context: &mut *self.0, r })?.is_some() {
                r += 1;
            }
            Ok(())
        }
    }

    struct Run<'c, 'a> {
        context: &'c mut Context<'a>,
        r: usize,
    }

    impl<'de> DeserializeSeed<'de> for Run<'_, '_> {
        type Value = ();
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for Run<'_, '_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a run")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<String>()? {
                if key == "results" {
                    map.next_value_seed(Results { context: &mut *self.context, r: self.r })?;
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(())
        }
    }

    struct Results<'c, 'a> {
        context: &'c mut Context<'a>,
        r: usize,
    }

    impl<'de> DeserializeSeed<'de> for Results<'_, '_> {
        type Value = ();
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }

    impl<'de> Visitor<'de> for Results<'_, '_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array of results")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let mut n = 0;
            while let Some(result) = seq.next_element::<SarifResult>()? {
                if let Err(e) = self.context.push(self.r, n, result) {
                    let message = e.to_string();
                    self.context.error = Some(e);
                    return Err(de::Error::custom(message));
                }
                n += 1;
            }
            Ok(())
        }
    }
}

/// Writes findings as SARIF 2.1.0: one run per tool (the tools given first, in order, then any other a
/// finding names), each with its rules — the given descriptions verbatim, plus a bare `id` for a rule a
/// finding uses that none describes — and its results pointing at them by id and index. A path relative
/// to the repository is written against `%SRCROOT%`; an absolute one as a `file://` URI.
pub fn write(findings: &[Finding], tools: &[ToolRules]) -> Value {
    let refs: Vec<&Finding> = findings.iter().collect();
    let mut bytes = Vec::new();
    // Writing to memory cannot fail, and what is written is JSON.
    if write_to(&mut bytes, &refs, tools).is_err() {
        return Value::Null;
    }
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

/// [`write`], streamed to `out` one result at a time (a result per line), so that a log of any size
/// needs no more memory than the findings themselves.
pub fn write_to<W: std::io::Write>(mut out: W, findings: &[&Finding], tools: &[ToolRules]) -> std::io::Result<()> {
    let runs = runs_of(findings, tools);
    out.write_all(br#"{"$schema": "https://json.schemastore.org/sarif-2.1.0.json", "version": "2.1.0", "runs": ["#)?;
    for (r, run) in runs.iter().enumerate() {
        if r > 0 {
            out.write_all(b",")?;
        }
        out.write_all(b"\n{\"tool\": {\"driver\": ")?;
        serde_json::to_writer(&mut out, &json!({"name": run.name, "rules": run.rules}))?;
        out.write_all(b"}, \"results\": [")?;
        let mut first = true;
        for f in findings.iter().filter(|f| f.tool == run.name) {
            out.write_all(if first { b"\n" } else { b",\n" })?;
            first = false;
            serde_json::to_writer(&mut out, &result(f, &run.rules))?;
        }
        out.write_all(b"]}")?;
    }
    out.write_all(b"\n]}\n")?;
    out.flush()
}

/// The runs to write: each tool with its rules, and a bare rule for every rule id a finding uses that its
/// tool does not describe.
fn runs_of(findings: &[&Finding], tools: &[ToolRules]) -> Vec<ToolRules> {
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
    runs
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn results_before_their_tool_still_find_their_rules_and_a_bad_result_is_named() {
        // JSON objects are unordered: a run may list its results before its tool.
        let text = r#"{"version": "2.1.0", "runs": [
            {"results": [{"ruleIndex": 1, "message": {"text": "m"},
                          "locations": [{"physicalLocation": {"artifactLocation": {"uri": "a.py"}, "region": {"startLine": 3}}}]}],
             "tool": {"driver": {"name": "T", "rules": [{"id": "A"},
                 {"id": "B", "defaultConfiguration": {"level": "error"}, "properties": {"tags": ["CWE-78"]}}]}}}]}"#;
        let (findings, tools) = read_with_rules("t.sarif", text, Path::new("/nonexistent")).unwrap();
        assert_eq!(findings.len(), 1);
        let f = &findings[0];
        assert_eq!((f.tool.as_str(), f.rule.as_str(), f.level, f.line), ("T", "B", Level::Error, 3));
        assert_eq!(f.cwe, ["CWE-78"]);
        assert_eq!(tools[0].rules.len(), 2);

        let bad = r#"{"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "T"}},
            "results": [{"ruleId": "A", "message": {"text": "ok"}}, {"message": {"text": "no rule"}}]}]}"#;
        let err = read("b.sarif", bad, Path::new(".")).unwrap_err().to_string();
        assert!(err.contains("b.sarif") && err.contains("runs[0].results[1]"), "{err}");
        let err = read(
            "c.sarif",
            r#"{"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "T"}}, "results": [1]}]}"#,
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("c.sarif") && err.contains("line 1"), "{err}");
    }

    #[test]
    fn the_streamed_log_equals_the_built_one_and_reads_back() {
        let f = Finding::new("T", "A", Level::Warning, Severity::Medium, "src/a.rs", 7, "m".to_owned());
        let findings = vec![f.clone(), Finding { rule: "B".into(), ..f.clone() }];
        let tools = [ToolRules { name: "T".into(), rules: vec![json!({"id": "A", "help": {"text": "why"}})] }];
        let log = write(&findings, &tools);
        assert_eq!(log["runs"].as_array().unwrap().len(), 1);
        let rules = log["runs"][0]["tool"]["driver"]["rules"].as_array().unwrap();
        assert_eq!(rules.len(), 2, "the described rule and a bare one for B");
        assert_eq!(log["runs"][0]["results"][1]["ruleIndex"], 1);
        let back = read("w.sarif", &log.to_string(), Path::new(".")).unwrap();
        assert_eq!(back.iter().map(|f| f.rule.as_str()).collect::<Vec<_>>(), ["A", "B"]);
    }
}
