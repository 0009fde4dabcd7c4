//! Kubernetes objects as evidence: every document of a YAML file that has `apiVersion` and `kind`
//! (List items expanded), remembered with its file and line, and the conditions checks put on them —
//! a field path with `*` wildcards and `[literal.keys]`, tested for presence, values, keys or fields.

use std::collections::BTreeMap;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::AssessError;

/// One object read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct KubeObject {
    /// The file, as given or relative to its repository (`repo:path`).
    pub source: String,
    /// 1-based line where the object's document starts (0: read from a cluster, no file).
    pub line: usize,
    /// The object.
    pub value: Value,
}

impl KubeObject {
    /// `kind`.
    pub fn kind(&self) -> &str {
        self.value.get("kind").and_then(Value::as_str).unwrap_or_default()
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        self.value.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
    }

    /// `metadata.namespace`, or the name of a Namespace object.
    pub fn namespace(&self) -> Option<&str> {
        if self.kind() == "Namespace" {
            return Some(self.name());
        }
        self.value.pointer("/metadata/namespace").and_then(Value::as_str)
    }

    /// What identifies the object in a cluster: API group, kind, namespace and name.
    pub fn identity(&self) -> (String, String, String, String) {
        let api_version = self.value.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
        let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
        let namespace = self.value.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default();
        (group.to_owned(), self.kind().to_owned(), namespace.to_owned(), self.name().to_owned())
    }

    /// `file:line Kind/namespace/name` for evidence (`source Kind/…` for objects read from a cluster).
    pub fn describe(&self) -> String {
        let place = if self.line == 0 { self.source.clone() } else { format!("{}:{}", self.source, self.line) };
        match self.value.pointer("/metadata/namespace").and_then(Value::as_str) {
            Some(ns) => format!("{place} {}/{ns}/{}", self.kind(), self.name()),
            None => format!("{place} {}/{}", self.kind(), self.name()),
        }
    }

    /// The pod spec of a workload, or `None` when the object is not one.
    pub fn pod_spec(&self) -> Option<&Value> {
        let pointer = match self.kind() {
            "Pod" => "/spec",
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" | "ReplicationController" => {
                "/spec/template/spec"
            }
            "CronJob" => "/spec/jobTemplate/spec/template/spec",
            _ => return None,
        };
        self.value.pointer(pointer)
    }
}

/// YAML nodes one document may hold: well above a List of tens of thousands of objects, still a bound.
const MAX_YAML_NODES: usize = 20_000_000;

/// Reads every Kubernetes object of a YAML file (or a JSON one: text starting with `{` or `[`);
/// documents that are not Kubernetes objects are skipped.
pub fn read_objects(source_name: &str, text: &str) -> Result<Vec<KubeObject>, AssessError> {
    let mut objects = Vec::new();
    if text.trim_start().starts_with(['{', '[']) {
        let value: Value = serde_json::from_str(text).map_err(|e| AssessError::Yaml {
            source_name: source_name.to_owned(),
            line: e.line(),
            column: e.column(),
            message: format!("not JSON: {}", json_message(&e)),
        })?;
        match value {
            Value::Array(items) => items.into_iter().for_each(|v| push_objects(source_name, 1, v, &mut objects)),
            value => push_objects(source_name, 1, value, &mut objects),
        }
        return Ok(objects);
    }
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = MAX_YAML_NODES;
    budget.max_events = 4 * MAX_YAML_NODES;
    for (start, document) in documents(text) {
        if document.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
            continue;
        }
        let mut options = serde_saphyr::Options::default();
        options.budget = Some(budget.clone());
        let value: Value = serde_saphyr::from_str_with_options(document, options)
            .map_err(|e| AssessError::yaml_at(source_name, &e, start - 1))?;
        // The object's line is its first line of content, after any comments heading the document.
        let skipped = document.lines().take_while(|l| l.trim().is_empty() || l.trim_start().starts_with('#')).count();
        push_objects(source_name, start + skipped, value, &mut objects);
    }
    Ok(objects)
}

/// serde_json's message without the " at line L column C" it ends with (the error names the place).
fn json_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

fn push_objects(source_name: &str, line: usize, value: Value, out: &mut Vec<KubeObject>) {
    let is_object =
        value.get("apiVersion").is_some_and(Value::is_string) && value.get("kind").is_some_and(Value::is_string);
    if !is_object {
        return;
    }
    if let Some(Value::Array(items)) = value.get("items")
        && value.get("kind").and_then(Value::as_str).is_some_and(|k| k.ends_with("List"))
    {
        for item in items {
            push_objects(source_name, line, item.clone(), out);
        }
        return;
    }
    out.push(KubeObject { source: source_name.to_owned(), line, value });
}

/// Splits YAML text at `---` lines: (1-based first line, document text).
fn documents(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start_byte = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end();
        if bare == "---" || bare.starts_with("--- ") || bare == "..." {
            out.push((start_line, &text[start_byte..offset]));
            start_byte = offset + line.len();
            start_line = index + 2;
        }
        offset += line.len();
    }
    out.push((start_line, &text[start_byte..]));
    out
}

/// A condition on the value at a path. With no test given it asks that the value exists (and is not
/// null); each test given must also hold. Through `*`, any branch may satisfy it, or every branch with
/// `all`. `not` negates the whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// Dotted path; `*` is every element or value; `[a.b/c]` is a key with dots in it.
    pub path: String,
    /// Every branch through `*` must satisfy the tests (default: at least one).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    /// Negate the result.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub not: bool,
    /// The scalar equals one of these (numbers and booleans compare as text).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub equals: Vec<String>,
    /// The scalar matches this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<String>,
    /// The map has a key matching this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The map has these fields with these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Key(String),
    Any,
}

fn parse_path(path: &str) -> Result<Vec<Segment>, String> {
    let mut segments = Vec::new();
    let mut current = String::new();
    let mut chars = path.chars();
    let push = |current: &mut String, segments: &mut Vec<Segment>| {
        if !current.is_empty() {
            let text = std::mem::take(current);
            segments.push(if text == "*" { Segment::Any } else { Segment::Key(text) });
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '.' => push(&mut current, &mut segments),
            '[' => {
                push(&mut current, &mut segments);
                let literal: String = chars.by_ref().take_while(|&c| c != ']').collect();
                if literal.is_empty() {
                    return Err("a non-empty key between [ and ]".to_owned());
                }
                segments.push(Segment::Key(literal));
            }
            c => current.push(c),
        }
    }
    push(&mut current, &mut segments);
    if segments.is_empty() {
        return Err("a field path such as spec.template.spec".to_owned());
    }
    Ok(segments)
}

impl Condition {
    /// Checks the path and the regular expressions; the error says what was expected.
    pub fn validate(&self) -> Result<(), String> {
        self.compile().map(|_| ())
    }

    /// Compiles the path and regular expressions once for many objects.
    pub fn compile(&self) -> Result<CompiledCondition, String> {
        let regex = |pattern: &Option<String>| {
            pattern.as_deref().map(Regex::new).transpose().map_err(|e| {
                format!("a valid regular expression ({})", e.to_string().lines().last().unwrap_or_default().trim())
            })
        };
        Ok(CompiledCondition {
            path: parse_path(&self.path)?,
            all: self.all,
            not: self.not,
            equals: self.equals.clone(),
            matches: regex(&self.matches)?,
            key: regex(&self.key)?,
            fields: self.fields.clone(),
        })
    }
}

/// A condition ready to test.
#[derive(Debug, Clone)]
pub struct CompiledCondition {
    path: Vec<Segment>,
    all: bool,
    not: bool,
    equals: Vec<String>,
    matches: Option<Regex>,
    key: Option<Regex>,
    fields: BTreeMap<String, String>,
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn resolve<'v>(value: &'v Value, path: &[Segment], out: &mut Vec<Option<&'v Value>>) {
    let Some((first, rest)) = path.split_first() else {
        out.push(Some(value));
        return;
    };
    match first {
        Segment::Key(key) => match value.get(key.as_str()) {
            Some(child) => resolve(child, rest, out),
            None => out.push(None),
        },
        Segment::Any => match value {
            Value::Array(items) => items.iter().for_each(|item| resolve(item, rest, out)),
            Value::Object(map) => map.values().for_each(|item| resolve(item, rest, out)),
            _ => out.push(None),
        },
    }
}

impl CompiledCondition {
    /// Whether `value` satisfies the condition.
    pub fn test(&self, value: &Value) -> bool {
        let mut branches = Vec::new();
        resolve(value, &self.path, &mut branches);
        let holds = |branch: &Option<&Value>| branch.is_some_and(|v| self.test_node(v));
        let result = if self.all { branches.iter().all(holds) } else { branches.iter().any(holds) };
        result != self.not
    }

    fn test_node(&self, value: &Value) -> bool {
        if value.is_null() {
            return false;
        }
        if !self.equals.is_empty() && !scalar(value).is_some_and(|s| self.equals.contains(&s)) {
            return false;
        }
        if let Some(re) = &self.matches
            && !scalar(value).is_some_and(|s| re.is_match(&s))
        {
            return false;
        }
        if let Some(re) = &self.key
            && !value.as_object().is_some_and(|map| map.keys().any(|k| re.is_match(k)))
        {
            return false;
        }
        self.fields.iter().all(|(field, expected)| value.get(field).and_then(scalar).as_ref() == Some(expected))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const DEPLOYMENT: &str = "\
# a comment before the first document
---
apiVersion: v1
kind: Namespace
metadata:
  name: team-a
  labels:
    pod-security.kubernetes.io/enforce: restricted
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: llm, namespace: team-a}
spec:
  template:
    spec:
      containers:
        - name: server
          readinessProbe: {httpGet: {path: /health, port: 8000}}
          env: [{name: NVIDIA_VISIBLE_DEVICES, value: all}]
          resources: {limits: {nvidia.com/gpu: 1}}
        - name: sidecar
---
not: a kubernetes object
";

    fn condition(yaml: &str) -> CompiledCondition {
        serde_saphyr::from_str::<Condition>(yaml).unwrap().compile().unwrap()
    }

    #[test]
    fn objects_keep_their_line_and_pod_specs_are_found() {
        let objects = read_objects("m.yaml", DEPLOYMENT).unwrap();
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[0].describe(), "m.yaml:3 Namespace/team-a");
        let commented =
            read_objects("c.yaml", "# header\n\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n").unwrap();
        assert_eq!(commented[0].line, 3);
        assert_eq!(objects[1].describe(), "m.yaml:10 Deployment/team-a/llm");
        assert!(objects[1].pod_spec().is_some());
        assert!(objects[0].pod_spec().is_none());
    }

    #[test]
    fn conditions_cover_labels_with_dots_wildcards_keys_and_fields() {
        let objects = read_objects("m.yaml", DEPLOYMENT).unwrap();
        let ns = &objects[0].value;
        let pod = objects[1].pod_spec().unwrap();
        assert!(
            condition("{path: 'metadata.labels[pod-security.kubernetes.io/enforce]', equals: [baseline, restricted]}")
                .test(ns)
        );
        assert!(
            !condition("{path: 'metadata.labels[pod-security.kubernetes.io/enforce]', equals: [privileged]}").test(ns)
        );
        assert!(condition("{path: containers.*.readinessProbe}").test(pod));
        assert!(!condition("{path: containers.*.readinessProbe, all: true}").test(pod));
        assert!(condition("{path: containers.*.resources.limits, key: 'nvidia\\.com/gpu'}").test(pod));
        let no_all_gpus =
            condition("{path: containers.*.env.*, fields: {name: NVIDIA_VISIBLE_DEVICES, value: all}, not: true}");
        assert!(!no_all_gpus.test(pod));
        assert!(condition("{path: containers.*.resources.limits.*, matches: '^1$'}").test(pod));
    }

    #[test]
    fn a_yaml_error_names_the_line_in_the_whole_file() {
        let err = read_objects("bad.yaml", "apiVersion: v1\nkind: A\n---\napiVersion: v1\nkind: [\n").unwrap_err();
        let AssessError::Yaml { line, .. } = err else { panic!("{err}") };
        assert!(line >= 4, "line {line}");
    }

    #[test]
    fn bad_paths_and_patterns_say_what_was_expected() {
        let c = Condition {
            path: "a[]".into(),
            all: false,
            not: false,
            equals: vec![],
            matches: None,
            key: None,
            fields: BTreeMap::new(),
        };
        assert_eq!(c.validate().unwrap_err(), "a non-empty key between [ and ]");
        let c = Condition { path: "a".into(), matches: Some("(".into()), ..c };
        assert!(c.validate().unwrap_err().starts_with("a valid regular expression"));
    }
}
