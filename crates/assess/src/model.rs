//! The maturity model as data: levels, capability areas, survey questions and checks, read from a
//! versioned YAML file. The built-in model ships inside the binary; a user file either replaces it or
//! `extends: builtin`, adding or replacing checks, removing some and re-weighting checks and areas.

use std::collections::{BTreeMap, HashSet};

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::AssessError;
use crate::objects::Condition;

/// The built-in model (`data/assess/model.yaml`).
pub const BUILTIN_MODEL: &str = include_str!("../../../data/assess/model.yaml");

/// Levels a check can require; level 1 (Ad hoc) needs nothing.
pub const LEVELS: [(u8, &str); 5] =
    [(1, "Ad hoc"), (2, "Repeatable"), (3, "Defined"), (4, "Managed"), (5, "Optimizing")];

/// The name of a level, such as "Defined" for 3.
pub fn level_name(level: u8) -> &'static str {
    LEVELS.iter().find(|(n, _)| *n == level).map_or("?", |(_, name)| name)
}

/// A whole model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// Version of the model text, reported with every assessment.
    pub version: String,
    /// Share of services in scope that must pass a per-service check for it to pass (default 0.8).
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// A service (repository) is active when it has a commit within this many days of the assessment date.
    #[serde(default = "default_active_days")]
    pub active_days: u32,
    /// How deployments and failed changes are read from git history.
    #[serde(default)]
    pub dora: DoraSettings,
    /// Capability areas, in report order.
    pub areas: Vec<Area>,
    /// Questions answered in the survey file (attested evidence).
    #[serde(default)]
    pub questions: Vec<Question>,
    /// Checks.
    pub checks: Vec<Check>,
}

fn default_threshold() -> f64 {
    0.8
}

fn default_active_days() -> u32 {
    90
}

/// How DORA metrics are read from git history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DoraSettings {
    /// Tags whose name matches this pattern are deployments.
    #[serde(default = "default_deploy_tags")]
    pub deploy_tags: String,
    /// A deployment failed when a commit of the next deployment matches one of these (subject or body).
    #[serde(default = "default_failure_markers")]
    pub failure_markers: Vec<String>,
}

fn default_deploy_tags() -> String {
    r"^(v|release-|deploy-)?\d+(\.\d+)*".to_owned()
}

fn default_failure_markers() -> Vec<String> {
    vec![r#"^Revert ""#.to_owned(), r"(?i)\bhot-?fix\b".to_owned()]
}

impl Default for DoraSettings {
    fn default() -> DoraSettings {
        DoraSettings { deploy_tags: default_deploy_tags(), failure_markers: default_failure_markers() }
    }
}

/// A capability area.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Area {
    /// Identifier used by checks, such as `delivery`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Weight in the overall score.
    #[serde(default = "one")]
    pub weight: f64,
    /// Conditions on a workload's pod spec that put a platform in the area's scope: when objects were
    /// read and no workload meets them (no GPU workload for GPU capacity), every check of the area is
    /// not applicable. Empty: always in scope.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applies_to: Vec<crate::objects::Condition>,
}

fn one() -> f64 {
    1.0
}

/// A survey question with its scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Question {
    /// Identifier used in the survey file and by checks.
    pub id: String,
    /// The question as asked.
    pub text: String,
    /// Lowest answer allowed (booleans answer 0 or 1).
    #[serde(default)]
    pub min: f64,
    /// Highest answer allowed.
    #[serde(default = "one")]
    pub max: f64,
}

/// One check: a requirement of one level in one area.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// Stable identifier, such as `delivery.gitops`.
    pub id: String,
    /// Area identifier.
    pub area: String,
    /// Level this check is required for (2–5).
    pub level: u8,
    /// What is checked, in a few words.
    pub title: String,
    /// What reaching it means, as a measurable milestone.
    pub milestone: String,
    /// Weight in the area's score.
    #[serde(default = "one")]
    pub weight: f64,
    /// How it is evaluated.
    pub evaluate: Evaluation,
}

/// Which repositories a per-repository evaluation looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Every active service repository.
    #[default]
    Services,
    /// The platform team's own repositories.
    Platform,
}

/// A DORA metric computed per repository from tags and commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DoraMetric {
    /// Deployments in the active window.
    Deployments,
    /// Deployments per week in the active window.
    DeploymentsPerWeek,
    /// Median hours from a commit to the deployment that shipped it.
    LeadTimeHours,
    /// Share of deployments followed by a revert or hotfix.
    ChangeFailureRate,
    /// Median hours from a failed deployment to the next deployment.
    RecoveryHours,
}

/// How a check is evaluated. A closed set of evaluators, parameterised by the model file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Evaluation {
    /// A repository passes when one of its tracked files matches one of the globs.
    RepoFile {
        /// Globs over paths relative to the repository root (`*`, `?`, `**`).
        paths: Vec<String>,
        /// Which repositories.
        #[serde(default)]
        scope: Scope,
        /// Share of repositories that must pass [default: the model threshold].
        #[serde(default)]
        coverage: Option<f64>,
    },
    /// A repository passes when a line of one of the matching files matches the pattern.
    RepoGrep {
        /// Globs over paths relative to the repository root.
        paths: Vec<String>,
        /// Regular expression searched line by line.
        pattern: String,
        /// Which repositories.
        #[serde(default)]
        scope: Scope,
        /// Share of repositories that must pass [default: the model threshold].
        #[serde(default)]
        coverage: Option<f64>,
    },
    /// Kubernetes objects (from the manifests folders and the repositories) of the given kinds.
    /// With `coverage`, that share of the objects matching `where` must satisfy `require`
    /// (no such object: not applicable); without it, at least `min` objects must satisfy both.
    Objects {
        /// Object kinds; empty means any kind.
        #[serde(default)]
        kinds: Vec<String>,
        /// Which objects the check is about.
        #[serde(default, rename = "where")]
        filter: Vec<Condition>,
        /// What each of them must satisfy.
        #[serde(default)]
        require: Vec<Condition>,
        /// Objects needed when `coverage` is not given.
        #[serde(default = "one_usize")]
        min: usize,
        /// Share of the objects that must satisfy `require`.
        #[serde(default)]
        coverage: Option<f64>,
    },
    /// Workloads (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob); conditions are on
    /// the pod spec. Not applicable when no workload matches `where`.
    Workloads {
        /// Which workloads the check is about.
        #[serde(default, rename = "where")]
        filter: Vec<Condition>,
        /// What each pod spec must satisfy.
        require: Vec<Condition>,
        /// Share of the workloads that must satisfy `require` [default: the model threshold].
        #[serde(default)]
        coverage: Option<f64>,
    },
    /// A DORA metric per repository, against a bound.
    Dora {
        /// The metric.
        metric: DoraMetric,
        /// Lower bound, inclusive.
        #[serde(default)]
        at_least: Option<f64>,
        /// Upper bound, inclusive.
        #[serde(default)]
        at_most: Option<f64>,
        /// Which repositories.
        #[serde(default)]
        scope: Scope,
        /// Share of repositories that must pass [default: the model threshold].
        #[serde(default)]
        coverage: Option<f64>,
    },
    /// Namespaces running workloads that match `where` must hold an object matching `have`, such as a
    /// ResourceQuota on GPUs in every namespace with GPU pods. Not applicable when no workload matches.
    Namespaces {
        /// Which workloads (conditions on the pod spec) put a namespace in scope.
        #[serde(rename = "where")]
        filter: Vec<Condition>,
        /// Kinds of the object each such namespace must hold.
        kinds: Vec<String>,
        /// What that object must satisfy.
        #[serde(default)]
        have: Vec<Condition>,
        /// Namespaces left out, by a regular expression on their names (such as the cluster's own `kube-*`).
        #[serde(default)]
        except: Option<String>,
        /// Share of the namespaces that must [default: the model threshold].
        #[serde(default)]
        coverage: Option<f64>,
    },
    /// An attested survey answer within bounds.
    Survey {
        /// Question identifier.
        question: String,
        /// Lowest passing answer.
        #[serde(default)]
        at_least: Option<f64>,
        /// Highest passing answer.
        #[serde(default)]
        at_most: Option<f64>,
    },
    /// Passes when any of the evaluations passes.
    AnyOf {
        /// The alternatives.
        of: Vec<Evaluation>,
    },
}

fn one_usize() -> usize {
    1
}

impl Evaluation {
    /// Whether the evidence is a person's statement rather than something read from files.
    pub fn attested(&self) -> bool {
        match self {
            Evaluation::Survey { .. } => true,
            Evaluation::AnyOf { of } => of.iter().all(Evaluation::attested),
            _ => false,
        }
    }
}

/// A user model that builds on the built-in one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Extension {
    extends: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    threshold: Option<f64>,
    #[serde(default)]
    active_days: Option<u32>,
    #[serde(default)]
    dora: Option<DoraSettings>,
    #[serde(default)]
    areas: Vec<Area>,
    #[serde(default)]
    questions: Vec<Question>,
    #[serde(default)]
    checks: Vec<Check>,
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    weights: Weights,
}

/// Weight overrides by check and area identifier.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Weights {
    #[serde(default)]
    checks: BTreeMap<String, f64>,
    #[serde(default)]
    areas: BTreeMap<String, f64>,
}

impl Model {
    /// The built-in model.
    pub fn builtin() -> Result<Model, AssessError> {
        Model::parse("builtin model (data/assess/model.yaml)", BUILTIN_MODEL)
    }

    /// Reads a model file: a whole model, or one that `extends: builtin`.
    pub fn load(source_name: &str, text: &str) -> Result<Model, AssessError> {
        if extends_builtin(text) {
            let extension: Extension = serde_saphyr::from_str(text).map_err(|e| AssessError::yaml(source_name, &e))?;
            if extension.extends != "builtin" {
                return Err(AssessError::invalid(source_name, "extends", "`builtin` (the only model to extend)"));
            }
            let mut model = Model::builtin()?;
            model.apply(source_name, extension)?;
            model.validate(source_name)?;
            Ok(model)
        } else {
            Model::parse(source_name, text)
        }
    }

    fn parse(source_name: &str, text: &str) -> Result<Model, AssessError> {
        let model: Model = serde_saphyr::from_str(text).map_err(|e| AssessError::yaml(source_name, &e))?;
        model.validate(source_name)?;
        Ok(model)
    }

    fn apply(&mut self, source_name: &str, extension: Extension) -> Result<(), AssessError> {
        if let Some(version) = extension.version {
            self.version = format!("{} + {version}", self.version);
        }
        if let Some(threshold) = extension.threshold {
            self.threshold = threshold;
        }
        if let Some(days) = extension.active_days {
            self.active_days = days;
        }
        if let Some(dora) = extension.dora {
            self.dora = dora;
        }
        for area in extension.areas {
            match self.areas.iter_mut().find(|a| a.id == area.id) {
                Some(existing) => *existing = area,
                None => self.areas.push(area),
            }
        }
        for question in extension.questions {
            match self.questions.iter_mut().find(|q| q.id == question.id) {
                Some(existing) => *existing = question,
                None => self.questions.push(question),
            }
        }
        for id in &extension.remove {
            let before = self.checks.len();
            self.checks.retain(|c| &c.id != id);
            if self.checks.len() == before {
                return Err(AssessError::invalid(source_name, &format!("remove: {id}"), "the id of a built-in check"));
            }
        }
        for check in extension.checks {
            match self.checks.iter_mut().find(|c| c.id == check.id) {
                Some(existing) => *existing = check,
                None => self.checks.push(check),
            }
        }
        for (id, weight) in extension.weights.checks {
            let check = self.checks.iter_mut().find(|c| c.id == id).ok_or_else(|| {
                AssessError::invalid(source_name, &format!("weights.checks.{id}"), "the id of a check of the model")
            })?;
            check.weight = weight;
        }
        for (id, weight) in extension.weights.areas {
            let area = self.areas.iter_mut().find(|a| a.id == id).ok_or_else(|| {
                AssessError::invalid(source_name, &format!("weights.areas.{id}"), "the id of an area of the model")
            })?;
            area.weight = weight;
        }
        Ok(())
    }

    /// Checks references, ranges and patterns, naming the first offending field.
    fn validate(&self, source_name: &str) -> Result<(), AssessError> {
        let bad = |field: String, expected: &str| AssessError::invalid(source_name, &field, expected);
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err(bad("threshold".into(), "a share between 0 and 1"));
        }
        Regex::new(&self.dora.deploy_tags).map_err(|e| bad("dora.deploy_tags".into(), &regex_expected(&e)))?;
        for marker in &self.dora.failure_markers {
            Regex::new(marker).map_err(|e| bad("dora.failure_markers".into(), &regex_expected(&e)))?;
        }
        let mut ids = HashSet::new();
        for area in &self.areas {
            if !ids.insert(area.id.as_str()) {
                return Err(bad(format!("areas: {}", area.id), "area ids to be unique"));
            }
            if area.weight < 0.0 {
                return Err(bad(format!("areas: {}: weight", area.id), "a weight of at least 0"));
            }
            for (n, condition) in area.applies_to.iter().enumerate() {
                condition
                    .compile()
                    .map_err(|expected| bad(format!("areas: {}: applies_to[{n}]", area.id), &expected))?;
            }
        }
        let mut questions = HashSet::new();
        for q in &self.questions {
            if !questions.insert(q.id.as_str()) {
                return Err(bad(format!("questions: {}", q.id), "question ids to be unique"));
            }
            if q.min > q.max {
                return Err(bad(format!("questions: {}", q.id), "min no larger than max"));
            }
        }
        let mut checks = HashSet::new();
        for check in &self.checks {
            let at = |field: &str| format!("checks: {}: {field}", check.id);
            if !checks.insert(check.id.as_str()) {
                return Err(bad(at("id"), "check ids to be unique"));
            }
            if !ids.contains(check.area.as_str()) {
                return Err(bad(at("area"), "the id of an area listed under `areas`"));
            }
            if !(2..=5).contains(&check.level) {
                return Err(bad(at("level"), "a level from 2 (Repeatable) to 5 (Optimizing)"));
            }
            if check.weight < 0.0 {
                return Err(bad(at("weight"), "a weight of at least 0"));
            }
            validate_evaluation(&check.evaluate, &questions).map_err(|(field, expected)| bad(at(&field), &expected))?;
        }
        Ok(())
    }

    /// The area with this id.
    pub fn area(&self, id: &str) -> Option<&Area> {
        self.areas.iter().find(|a| a.id == id)
    }
}

fn extends_builtin(text: &str) -> bool {
    text.lines().any(|line| line.trim_start().starts_with("extends:") && !line.starts_with(' '))
}

fn regex_expected(e: &regex::Error) -> String {
    format!("a valid regular expression ({})", e.to_string().lines().last().unwrap_or_default().trim())
}

fn validate_evaluation(evaluation: &Evaluation, questions: &HashSet<&str>) -> Result<(), (String, String)> {
    let share = |coverage: &Option<f64>| match coverage {
        Some(c) if !(0.0..=1.0).contains(c) => Err(("coverage".to_owned(), "a share between 0 and 1".to_owned())),
        _ => Ok(()),
    };
    let conditions = |field: &str, list: &[Condition]| {
        list.iter().try_for_each(|c| c.validate().map_err(|expected| (format!("{field}: {}", c.path), expected)))
    };
    match evaluation {
        Evaluation::RepoFile { paths, coverage, .. } => {
            share(coverage)?;
            if paths.is_empty() {
                return Err(("paths".into(), "at least one glob".into()));
            }
        }
        Evaluation::RepoGrep { paths, pattern, coverage, .. } => {
            share(coverage)?;
            if paths.is_empty() {
                return Err(("paths".into(), "at least one glob".into()));
            }
            Regex::new(pattern).map_err(|e| ("pattern".to_owned(), regex_expected(&e)))?;
        }
        Evaluation::Objects { filter, require, coverage, .. } => {
            share(coverage)?;
            conditions("where", filter)?;
            conditions("require", require)?;
        }
        Evaluation::Workloads { filter, require, coverage } => {
            share(coverage)?;
            conditions("where", filter)?;
            conditions("require", require)?;
        }
        Evaluation::Dora { at_least, at_most, coverage, .. } => {
            share(coverage)?;
            if at_least.is_none() && at_most.is_none() {
                return Err(("at_least".into(), "at_least or at_most".into()));
            }
        }
        Evaluation::Namespaces { filter, have, coverage, kinds, except } => {
            share(coverage)?;
            if let Some(pattern) = except {
                Regex::new(pattern).map_err(|e| ("except".to_owned(), regex_expected(&e)))?;
            }
            conditions("where", filter)?;
            conditions("have", have)?;
            if kinds.is_empty() {
                return Err(("kinds".into(), "at least one object kind".into()));
            }
        }
        Evaluation::Survey { question, at_least, at_most } => {
            if at_least.is_none() && at_most.is_none() {
                return Err(("at_least".into(), "at_least or at_most".into()));
            }
            if !questions.contains(question.as_str()) {
                return Err(("question".into(), "the id of a question listed under `questions`".into()));
            }
        }
        Evaluation::AnyOf { of } => {
            if of.is_empty() {
                return Err(("of".into(), "at least one evaluation".into()));
            }
            for e in of {
                validate_evaluation(e, questions)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_builtin_model_is_valid_and_covers_every_area_at_every_level() {
        let model = Model::builtin().unwrap();
        assert_eq!(model.areas.len(), 8);
        for area in &model.areas {
            for level in 2..=5 {
                assert!(
                    model.checks.iter().any(|c| c.area == area.id && c.level == level),
                    "{} has no check at level {level}",
                    area.id
                );
            }
        }
    }

    #[test]
    fn an_extension_adds_replaces_removes_and_reweights() {
        let builtin = Model::builtin().unwrap();
        let first = builtin.checks[0].id.clone();
        let second = builtin.checks[1].id.clone();
        let text = format!(
            "extends: builtin\nversion: acme-1\nthreshold: 0.6\nremove: [{first}]\nweights:\n  checks:\n    {second}: 5\n  areas:\n    gpu: 3\nchecks:\n  - id: acme.readme\n    area: delivery\n    level: 2\n    title: README\n    milestone: every repository has a README\n    evaluate: {{kind: repo_file, paths: [README.md]}}\n"
        );
        let model = Model::load("acme.yaml", &text).unwrap();
        assert_eq!(model.threshold, 0.6);
        assert!(model.version.ends_with("+ acme-1"));
        assert!(model.checks.iter().all(|c| c.id != first));
        assert_eq!(model.checks.iter().find(|c| c.id == second).unwrap().weight, 5.0);
        assert_eq!(model.area("gpu").unwrap().weight, 3.0);
        assert!(model.checks.iter().any(|c| c.id == "acme.readme"));
    }

    #[test]
    fn the_shipped_examples_are_valid() {
        let text = include_str!("../../../data/assess/extend.example.yaml");
        let model = Model::load("extend.example.yaml", text).unwrap();
        assert_eq!(model.threshold, 0.7);
        assert_eq!(model.area("gpu").unwrap().weight, 2.0);
        let survey = include_str!("../../../data/assess/survey.example.yaml");
        let survey = crate::survey::Survey::parse("survey.example.yaml", survey, &model).unwrap();
        assert_eq!(survey.answers["product_manager"].0, 0.0);
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let err = Model::load("acme.yaml", "extends: builtin\nweights:\n  checks:\n    nope: 2\n").unwrap_err();
        assert_eq!(err.to_string(), "acme.yaml: weights.checks.nope: expected the id of a check of the model");
        let text = "version: x\nareas: [{id: a, name: A}]\nchecks:\n  - {id: c, area: a, level: 7, title: t, milestone: m, evaluate: {kind: repo_file, paths: [x]}}\n";
        let err = Model::load("m.yaml", text).unwrap_err();
        assert_eq!(err.to_string(), "m.yaml: checks: c: level: expected a level from 2 (Repeatable) to 5 (Optimizing)");
        let err = Model::load("m.yaml", "version: x\nareas: [\n").unwrap_err();
        assert!(err.to_string().starts_with("m.yaml: line "), "{err}");
        let text = "version: x\nareas: [{id: a, name: A}]\nchecks:\n  - {id: c, area: a, level: 2, title: t, milestone: m, evaluate: {kind: repo_grep, paths: [x], pattern: '('}}\n";
        let err = Model::load("m.yaml", text).unwrap_err();
        assert!(
            err.to_string().starts_with("m.yaml: checks: c: pattern: expected a valid regular expression"),
            "{err}"
        );
    }
}
