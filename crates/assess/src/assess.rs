//! Evaluation: every check of the model against the evidence, each area's level (the highest level
//! whose checks all pass, cumulatively), weighted scores, and the plan — the next level's failing
//! checks per area as milestones. "Not applicable" and "not measurable" are kept apart from failing.

use std::path::Path;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::AssessError;
use crate::baseline::Trend;
use crate::dora::{self, Dora};
use crate::glob;
use crate::model::{DoraMetric, Evaluation, Model, Scope, level_name};
use crate::objects::{CompiledCondition, Condition, KubeObject, read_objects};
use crate::repo::Repository;
use crate::survey::Survey;

/// Version tag of the JSON written by `gpuplane assess` (documented in docs/assess.md).
pub const ASSESS_JSON_SCHEMA: &str = "gpuplane.assess/v1";

/// Evidence gathered for one assessment.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// Service and platform repositories.
    pub repos: Vec<Repository>,
    /// Names of the platform team's repositories; empty with one repository means that one.
    pub platform: Vec<String>,
    /// Objects from manifest folders (objects inside repositories are read by [`assess`]).
    pub manifests: Vec<KubeObject>,
    /// Attested answers.
    pub survey: Option<Survey>,
    /// Assessment date, Unix seconds.
    pub as_of: i64,
    /// Things skipped while reading, reported with the result.
    pub warnings: Vec<String>,
    /// A Helm binary to render the repositories' charts with; without one they are read tolerantly.
    pub helm: Option<std::path::PathBuf>,
}

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The requirement is met.
    Pass,
    /// The requirement is not met.
    Fail,
    /// Nothing the requirement is about exists here (no GPU workload for a GPU rule).
    NotApplicable,
    /// The evidence needed is missing (no history, no survey answer); blocks the level like a failure.
    NotMeasurable,
}

impl Status {
    /// Short label for tables.
    pub fn label(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::NotApplicable => "n/a",
            Status::NotMeasurable => "not measurable",
        }
    }
}

/// Where a check's evidence came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Read from repositories, manifests or git history.
    Automatic,
    /// A survey answer: a person's statement.
    Attested,
}

/// How many of the services or objects in scope pass, and how many must.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    /// Passing.
    pub passed: usize,
    /// In scope.
    pub total: usize,
    /// Needed to pass.
    pub required: usize,
}

/// One evaluated check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// Check id.
    pub id: String,
    /// Area id.
    pub area: String,
    /// Level it is required for.
    pub level: u8,
    /// Title.
    pub title: String,
    /// Milestone text.
    pub milestone: String,
    /// Weight in the area score.
    pub weight: f64,
    /// Outcome.
    pub status: Status,
    /// Evidence source.
    pub source: Source,
    /// Coverage, for checks over services or objects.
    pub coverage: Option<Coverage>,
    /// What passed, with file and line or object.
    pub evidence: Vec<String>,
    /// What did not pass (repositories or objects), for the plan.
    pub missing: Vec<String>,
    /// One sentence on the outcome.
    pub reason: String,
}

/// One area's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AreaResult {
    /// Area id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Level reached (1–5); `None` when no check of the area applies.
    pub level: Option<u8>,
    /// Weighted share of passing applicable checks, 0–100.
    pub score: Option<f64>,
    /// Weight in the overall score.
    pub weight: f64,
    /// Checks passing.
    pub passed: usize,
    /// Checks applicable.
    pub applicable: usize,
}

/// A milestone of the next-level plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Milestone {
    /// Area id.
    pub area: String,
    /// Level the area is at.
    pub from_level: u8,
    /// Level this milestone is needed for.
    pub to_level: u8,
    /// Check id.
    pub check: String,
    /// Milestone text.
    pub milestone: String,
    /// Where it stands now.
    pub now: String,
}

/// A repository as seen by the assessment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepositorySummary {
    /// Name.
    pub name: String,
    /// Commit within the active window.
    pub active: bool,
    /// One of the platform team's repositories.
    pub platform: bool,
    /// Tracked files.
    pub files: usize,
    /// Commits.
    pub commits: usize,
    /// DORA metrics over the active window.
    pub dora: Dora,
}

/// The whole result (the JSON document `gpuplane.assess/v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assessment {
    /// [`ASSESS_JSON_SCHEMA`].
    pub schema: String,
    /// Model version.
    pub model_version: String,
    /// Assessment date, `YYYY-MM-DD` (UTC).
    pub as_of: String,
    /// Default share of services that must pass.
    pub threshold: f64,
    /// Active window in days.
    pub active_days: u32,
    /// Repositories.
    pub repositories: Vec<RepositorySummary>,
    /// Kubernetes objects read (manifest folders and repositories).
    pub objects: usize,
    /// Survey file, when given.
    pub survey: Option<String>,
    /// Per area, in model order.
    pub areas: Vec<AreaResult>,
    /// Weighted mean of the area scores, 0–100.
    pub score: Option<f64>,
    /// Every check.
    pub checks: Vec<CheckResult>,
    /// Next-level milestones per area.
    pub plan: Vec<Milestone>,
    /// Files skipped while reading, with why.
    pub warnings: Vec<String>,
    /// Change since a previous assessment, when one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trend: Option<Trend>,
}

struct Outcome {
    status: Status,
    attested: bool,
    coverage: Option<Coverage>,
    evidence: Vec<String>,
    missing: Vec<String>,
    reason: String,
}

impl Outcome {
    fn new(status: Status, reason: impl Into<String>) -> Outcome {
        Outcome { status, attested: false, coverage: None, evidence: vec![], missing: vec![], reason: reason.into() }
    }
}

/// Needed passes out of `total` at share `share` (a small tolerance keeps 0.8 × 5 at 4).
fn required(total: usize, share: f64) -> usize {
    ((total as f64 * share) - 1e-9).ceil().max(0.0) as usize
}

fn judged(passed: usize, total: usize, share: f64, what: &str) -> (Status, Coverage, String) {
    let needed = required(total, share).max(1).min(total);
    let coverage = Coverage { passed, total, required: needed };
    let status = if passed >= needed { Status::Pass } else { Status::Fail };
    (status, coverage, format!("{passed} of {total} {what} pass; {needed} needed"))
}

struct Context<'a> {
    model: &'a Model,
    inputs: &'a Inputs,
    active: Vec<&'a Repository>,
    platform: Vec<&'a Repository>,
    objects: Vec<KubeObject>,
    dora: Vec<Dora>,
}

/// Reads every Kubernetes object of the YAML files under a folder (or one file). A file that does not
/// parse is an error naming it and the line; Helm templates (`{{`) are skipped with a warning.
pub fn read_manifest_dir(path: &Path, warnings: &mut Vec<String>) -> Result<Vec<KubeObject>, AssessError> {
    if !path.exists() {
        return Err(AssessError::Io { path: path.display().to_string(), message: "no such file or folder".into() });
    }
    let mut objects = Vec::new();
    let mut files: Vec<_> = walkdir::WalkDir::new(path)
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| AssessError::Io { path: path.display().to_string(), message: e.to_string() })?
        .into_iter()
        // A file named on its own is read whatever its name ends with; in a folder, YAML files.
        .filter(|e| e.file_type().is_file() && (e.depth() == 0 || is_yaml(&e.path().to_string_lossy())))
        .map(|e| e.into_path())
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| AssessError::io(&file, &e))?;
        let name = file.display().to_string();
        if text.contains("{{") {
            warnings.push(format!("{name}: skipped: a template ({{{{ … }}}}), not plain YAML"));
            continue;
        }
        objects.extend(read_objects(&name, &text)?);
    }
    Ok(objects)
}

fn is_yaml(path: &str) -> bool {
    path.ends_with(".yaml") || path.ends_with(".yml")
}

/// Test data describes no real cluster: folders with these names are not read for objects.
const TEST_FOLDERS: [&str; 5] = ["tests", "test", "testdata", "fixtures", "examples"];

fn is_test_data(file: &str) -> bool {
    file.split('/').rev().skip(1).any(|folder| TEST_FOLDERS.contains(&folder))
}

/// Objects in the repositories' tracked YAML files (outside test data, not kustomize patches); a template
/// or a file that does not parse becomes a warning.
fn repo_objects(repos: &[Repository], helm: Option<&Path>, warnings: &mut Vec<String>) -> Vec<KubeObject> {
    let mut objects = Vec::new();
    for repo in repos {
        let patches = kustomize_patches(repo);
        let charts: Vec<String> = crate::helm::chart_dirs(repo)
            .into_iter()
            .filter(|dir| !is_test_data(&format!("{dir}/Chart.yaml")))
            .collect();
        for dir in &charts {
            objects.extend(crate::helm::chart_objects(repo, dir, helm, warnings));
        }
        let plain =
            |f: &&String| is_yaml(f) && !is_test_data(f) && !crate::helm::in_chart(f, &charts) && !patches.contains(*f);
        for file in repo.files.iter().filter(plain) {
            let Some(text) = repo.read(file) else { continue };
            if !text.contains("apiVersion") || !text.contains("kind") {
                continue;
            }
            if text.contains("{{") {
                warnings.push(format!("{}:{file}: skipped: a template ({{{{ … }}}}), not plain YAML", repo.name));
                continue;
            }
            match read_objects(&format!("{}:{file}", repo.name), &text) {
                Ok(found) => objects.extend(found),
                Err(e) => warnings.push(format!("skipped: {e}")),
            }
        }
    }
    objects
}

/// The files a kustomization applies as patches: partial objects that change a workload defined elsewhere,
/// not workloads of their own.
fn kustomize_patches(repo: &Repository) -> std::collections::HashSet<String> {
    let mut patches = std::collections::HashSet::new();
    for file in repo.files.iter().filter(|f| {
        let name = f.rsplit('/').next().unwrap_or(f);
        matches!(name, "kustomization.yaml" | "kustomization.yml" | "Kustomization")
    }) {
        let Some(text) = repo.read(file) else { continue };
        let Ok(value) = serde_saphyr::from_str::<serde_json::Value>(&text) else { continue };
        let folder = file.rsplit_once('/').map_or("", |(d, _)| d);
        let mut add = |path: &str| {
            let joined = if folder.is_empty() { path.to_owned() } else { format!("{folder}/{path}") };
            patches.insert(gpuplane_core::path::lexical(&joined));
        };
        for key in ["patchesStrategicMerge", "patchesJson6902", "patches"] {
            for entry in value.get(key).and_then(serde_json::Value::as_array).into_iter().flatten() {
                match entry {
                    serde_json::Value::String(path) => add(path),
                    other => {
                        if let Some(path) = other.get("path").and_then(serde_json::Value::as_str) {
                            add(path);
                        }
                    }
                }
            }
        }
    }
    patches
}

/// Evaluates the model against the evidence.
pub fn assess(model: &Model, inputs: &Inputs) -> Result<Assessment, AssessError> {
    let window_start = inputs.as_of - i64::from(model.active_days) * 86_400;
    let active: Vec<&Repository> =
        inputs.repos.iter().filter(|r| r.last_commit_time().is_some_and(|t| t >= window_start)).collect();
    let platform: Vec<&Repository> = if inputs.platform.is_empty() && inputs.repos.len() == 1 {
        inputs.repos.iter().collect()
    } else {
        inputs.repos.iter().filter(|r| inputs.platform.contains(&r.name)).collect()
    };
    if let Some(unknown) = inputs.platform.iter().find(|p| !inputs.repos.iter().any(|r| &r.name == *p)) {
        let names: Vec<&str> = inputs.repos.iter().map(|r| r.name.as_str()).collect();
        return Err(AssessError::invalid(
            "--platform",
            unknown,
            &format!("the name of an assessed repository ({})", names.join(", ")),
        ));
    }
    let mut warnings = inputs.warnings.clone();
    if active.is_empty() && !inputs.repos.is_empty() {
        let last = inputs.repos.iter().filter_map(Repository::last_commit_time).max();
        warnings.push(format!(
            "no repository has a commit in the {} days before {} (the last is from {}): every repository check is not measurable; give --as-of to assess them as of then",
            model.active_days,
            format_date(inputs.as_of),
            last.map_or_else(|| "never".to_owned(), format_date)
        ));
    }
    // The same object (group, kind, namespace, name) in a manifests folder and a repository — or the
    // manifests folder inside an assessed repository — counts once, first where it was found.
    let mut seen = std::collections::HashSet::new();
    let objects: Vec<KubeObject> = inputs
        .manifests
        .iter()
        .cloned()
        .chain(repo_objects(&inputs.repos, inputs.helm.as_deref(), &mut warnings))
        .filter(|o| seen.insert(o.identity()))
        .collect();
    let deploy_tags = Regex::new(&model.dora.deploy_tags)
        .map_err(|_| AssessError::invalid("model", "dora.deploy_tags", "a valid regular expression"))?;
    let markers = model
        .dora
        .failure_markers
        .iter()
        .map(|m| Regex::new(m))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| AssessError::invalid("model", "dora.failure_markers", "valid regular expressions"))?;
    let dora: Vec<Dora> = inputs
        .repos
        .iter()
        .map(|r| dora::measure(r, &deploy_tags, &markers, inputs.as_of, model.active_days))
        .collect();
    let context = Context { model, inputs, active, platform, objects, dora };

    let mut checks = Vec::with_capacity(model.checks.len());
    for check in &model.checks {
        let outcome = context.evaluate(&check.evaluate).map_err(|(field, expected)| {
            AssessError::invalid("model", &format!("checks: {}: {field}", check.id), &expected)
        })?;
        checks.push(CheckResult {
            id: check.id.clone(),
            area: check.area.clone(),
            level: check.level,
            title: check.title.clone(),
            milestone: check.milestone.clone(),
            weight: check.weight,
            status: outcome.status,
            source: if outcome.attested { Source::Attested } else { Source::Automatic },
            coverage: outcome.coverage,
            evidence: outcome.evidence,
            missing: outcome.missing,
            reason: outcome.reason,
        });
    }

    // An area about some workloads only (GPU capacity: GPU workloads) does not apply to a platform whose
    // objects hold none of them.
    let scoped = model.areas.iter().filter(|a| !a.applies_to.is_empty() && !context.objects.is_empty());
    for area in scoped {
        let scope =
            area.applies_to.iter().map(crate::objects::Condition::compile).collect::<Result<Vec<_>, _>>().map_err(
                |expected| AssessError::invalid("model", &format!("areas: {}: applies_to", area.id), &expected),
            )?;
        let in_scope =
            context.objects.iter().filter_map(KubeObject::pod_spec).any(|spec| scope.iter().all(|c| c.test(spec)));
        if !in_scope {
            for check in checks.iter_mut().filter(|c| c.area == area.id) {
                check.status = Status::NotApplicable;
                check.reason = format!("no workload among the objects read is in the scope of {}", area.name);
                check.coverage = None;
                check.evidence.clear();
                check.missing.clear();
            }
        }
    }
    let areas: Vec<AreaResult> = model.areas.iter().map(|area| area_result(area, &checks)).collect();
    let weighted: Vec<(f64, f64)> = areas.iter().filter_map(|a| a.score.map(|s| (a.weight, s))).collect();
    let total_weight: f64 = weighted.iter().map(|(w, _)| w).sum();
    let score = (total_weight > 0.0).then(|| weighted.iter().map(|(w, s)| w * s).sum::<f64>() / total_weight);
    let plan = plan(&areas, &checks);
    let repositories = inputs
        .repos
        .iter()
        .zip(&context.dora)
        .map(|(repo, dora)| RepositorySummary {
            name: repo.name.clone(),
            active: context.active.iter().any(|a| a.name == repo.name),
            platform: context.platform.iter().any(|p| p.name == repo.name),
            files: repo.files.len(),
            commits: repo.commits.len(),
            dora: dora.clone(),
        })
        .collect();
    Ok(Assessment {
        schema: ASSESS_JSON_SCHEMA.to_owned(),
        model_version: model.version.clone(),
        as_of: format_date(inputs.as_of),
        threshold: model.threshold,
        active_days: model.active_days,
        repositories,
        objects: context.objects.len(),
        survey: inputs.survey.as_ref().map(|s| s.source.clone()),
        areas,
        score,
        checks,
        plan,
        warnings,
        trend: None,
    })
}

fn area_result(area: &crate::model::Area, checks: &[CheckResult]) -> AreaResult {
    let mine: Vec<&CheckResult> = checks.iter().filter(|c| c.area == area.id).collect();
    let applicable: Vec<&&CheckResult> = mine.iter().filter(|c| c.status != Status::NotApplicable).collect();
    let blocked = |c: &&CheckResult| matches!(c.status, Status::Fail | Status::NotMeasurable);
    let level = (!applicable.is_empty()).then(|| {
        let mut level = 1;
        for next in 2..=5 {
            if mine.iter().filter(|c| c.level == next).any(blocked) {
                break;
            }
            level = next;
        }
        level
    });
    let weight_of = |pass_only: bool| {
        // A fold from +0.0: an empty f64 sum is -0.0, which would print as "-0".
        applicable.iter().filter(|c| !pass_only || c.status == Status::Pass).fold(0.0, |sum, c| sum + c.weight)
    };
    let total = weight_of(false);
    AreaResult {
        id: area.id.clone(),
        name: area.name.clone(),
        level,
        score: (total > 0.0).then(|| 100.0 * weight_of(true) / total),
        weight: area.weight,
        passed: applicable.iter().filter(|c| c.status == Status::Pass).count(),
        applicable: applicable.len(),
    }
}

fn plan(areas: &[AreaResult], checks: &[CheckResult]) -> Vec<Milestone> {
    let mut plan = Vec::new();
    for area in areas {
        let Some(level) = area.level.filter(|&l| l < 5) else { continue };
        for check in checks.iter().filter(|c| c.area == area.id && c.level == level + 1) {
            if matches!(check.status, Status::Fail | Status::NotMeasurable) {
                let mut now = check.reason.clone();
                if !check.missing.is_empty() {
                    let shown: Vec<&str> = check.missing.iter().take(5).map(String::as_str).collect();
                    let more = check.missing.len().saturating_sub(shown.len());
                    now.push_str(&format!("; missing: {}", shown.join(", ")));
                    if more > 0 {
                        now.push_str(&format!(" and {more} more"));
                    }
                }
                plan.push(Milestone {
                    area: area.id.clone(),
                    from_level: level,
                    to_level: level + 1,
                    check: check.id.clone(),
                    milestone: check.milestone.clone(),
                    now,
                });
            }
        }
    }
    plan
}

type EvalError = (String, String);

impl Context<'_> {
    fn repos(&self, scope: Scope) -> Result<Vec<&Repository>, Outcome> {
        let repos = match scope {
            Scope::Services => self.active.clone(),
            Scope::Platform => self.platform.clone(),
        };
        if repos.is_empty() {
            let reason = match scope {
                Scope::Services => format!(
                    "no active repository (none with a commit in the {} days before the assessment date)",
                    self.model.active_days
                ),
                Scope::Platform => "no platform repository named (give --platform)".to_owned(),
            };
            return Err(Outcome::new(Status::NotMeasurable, reason));
        }
        Ok(repos)
    }

    fn evaluate(&self, evaluation: &Evaluation) -> Result<Outcome, EvalError> {
        Ok(match evaluation {
            Evaluation::RepoFile { paths, scope, coverage } => {
                let globs: Vec<Regex> = paths.iter().map(|p| glob::compile(p)).collect();
                self.per_repo(*scope, *coverage, |repo| {
                    repo.matching(&globs).next().map(|f| format!("{}:{f}", repo.name))
                })
            }
            Evaluation::RepoGrep { paths, pattern, scope, coverage } => {
                let globs: Vec<Regex> = paths.iter().map(|p| glob::compile(p)).collect();
                let pattern = Regex::new(pattern).map_err(|e| ("pattern".to_owned(), e.to_string()))?;
                self.per_repo(*scope, *coverage, |repo| {
                    repo.matching(&globs).find_map(|file| {
                        let text = repo.read(file)?;
                        let (n, _) = text.lines().enumerate().find(|(_, line)| pattern.is_match(line))?;
                        Some(format!("{}:{file}:{}", repo.name, n + 1))
                    })
                })
            }
            Evaluation::Objects { kinds, filter, require, min, coverage } => {
                self.objects(kinds, &compile(filter)?, &compile(require)?, *min, *coverage)
            }
            Evaluation::Workloads { filter, require, coverage } => {
                self.workloads(&compile(filter)?, &compile(require)?, coverage.unwrap_or(self.model.threshold))
            }
            Evaluation::Dora { metric, at_least, at_most, scope, coverage } => {
                self.dora(*metric, *at_least, *at_most, *scope, *coverage)
            }
            Evaluation::Namespaces { filter, kinds, have, except, coverage } => {
                let except = except
                    .as_deref()
                    .map(Regex::new)
                    .transpose()
                    .map_err(|_| ("except".to_owned(), "a valid regular expression".to_owned()))?;
                let share = coverage.unwrap_or(self.model.threshold);
                self.namespaces(&compile(filter)?, kinds, &compile(have)?, except.as_ref(), share)
            }
            Evaluation::Survey { question, at_least, at_most } => self.survey(question, *at_least, *at_most),
            Evaluation::AnyOf { of } => {
                let outcomes = of.iter().map(|e| self.evaluate(e)).collect::<Result<Vec<_>, _>>()?;
                any_of(outcomes)
            }
        })
    }

    /// Judges a per-repository check from what passed and what did not.
    fn repo_outcome(
        &self,
        scope: Scope,
        coverage: Option<f64>,
        total: usize,
        evidence: Vec<String>,
        missing: Vec<String>,
    ) -> Outcome {
        let what = match scope {
            Scope::Services => "active repositories",
            Scope::Platform => "platform repositories",
        };
        let (status, coverage, reason) = judged(evidence.len(), total, coverage.unwrap_or(self.model.threshold), what);
        Outcome { status, attested: false, coverage: Some(coverage), evidence, missing, reason }
    }

    fn per_repo(&self, scope: Scope, coverage: Option<f64>, passes: impl Fn(&Repository) -> Option<String>) -> Outcome {
        let repos = match self.repos(scope) {
            Ok(repos) => repos,
            Err(outcome) => return outcome,
        };
        let mut evidence = Vec::new();
        let mut missing = Vec::new();
        for repo in &repos {
            match passes(repo) {
                Some(found) => evidence.push(found),
                None => missing.push(repo.name.clone()),
            }
        }
        self.repo_outcome(scope, coverage, repos.len(), evidence, missing)
    }

    fn objects(
        &self,
        kinds: &[String],
        filter: &[CompiledCondition],
        require: &[CompiledCondition],
        min: usize,
        coverage: Option<f64>,
    ) -> Outcome {
        if self.objects.is_empty() {
            return Outcome::new(Status::NotMeasurable, "no Kubernetes objects read (give --manifests)");
        }
        let in_scope: Vec<&KubeObject> = self
            .objects
            .iter()
            .filter(|o| kinds.is_empty() || kinds.iter().any(|k| k == o.kind()))
            .filter(|o| filter.iter().all(|c| c.test(&o.value)))
            .collect();
        let what = if kinds.is_empty() { "objects".to_owned() } else { format!("{} objects", kinds.join("/")) };
        let (passing, failing): (Vec<&KubeObject>, Vec<&KubeObject>) =
            in_scope.iter().partition(|o| require.iter().all(|c| c.test(&o.value)));
        let evidence = passing.iter().map(|o| o.describe()).collect();
        let missing = failing.iter().map(|o| o.describe()).collect();
        match coverage {
            Some(share) => {
                if in_scope.is_empty() {
                    return Outcome::new(Status::NotApplicable, format!("no {what} to check"));
                }
                let (status, coverage, reason) = judged(passing.len(), in_scope.len(), share, &what);
                Outcome { status, attested: false, coverage: Some(coverage), evidence, missing, reason }
            }
            None => {
                let status = if passing.len() >= min { Status::Pass } else { Status::Fail };
                let reason = format!("{} matching {what} found; {min} needed", passing.len());
                Outcome { status, attested: false, coverage: None, evidence, missing: vec![], reason }
            }
        }
    }

    fn workloads(&self, filter: &[CompiledCondition], require: &[CompiledCondition], share: f64) -> Outcome {
        if self.objects.is_empty() {
            return Outcome::new(Status::NotMeasurable, "no Kubernetes objects read (give --manifests)");
        }
        let in_scope: Vec<(&KubeObject, &serde_json::Value)> = self
            .objects
            .iter()
            .filter_map(|o| o.pod_spec().map(|spec| (o, spec)))
            .filter(|(_, spec)| filter.iter().all(|c| c.test(spec)))
            .collect();
        if in_scope.is_empty() {
            return Outcome::new(Status::NotApplicable, "no workload to check");
        }
        let (passing, failing): (Vec<_>, Vec<_>) =
            in_scope.iter().partition(|(_, spec)| require.iter().all(|c| c.test(spec)));
        let (status, coverage, reason) = judged(passing.len(), in_scope.len(), share, "workloads");
        Outcome {
            status,
            attested: false,
            coverage: Some(coverage),
            evidence: passing.iter().map(|(o, _)| o.describe()).collect(),
            missing: failing.iter().map(|(o, _)| o.describe()).collect(),
            reason,
        }
    }

    fn dora(
        &self,
        metric: DoraMetric,
        at_least: Option<f64>,
        at_most: Option<f64>,
        scope: Scope,
        coverage: Option<f64>,
    ) -> Outcome {
        let repos = match self.repos(scope) {
            Ok(repos) => repos,
            Err(outcome) => return outcome,
        };
        let (name, unit) = match metric {
            DoraMetric::Deployments => ("deployments", ""),
            DoraMetric::DeploymentsPerWeek => ("deployments per week", ""),
            DoraMetric::LeadTimeHours => ("lead time", " h"),
            DoraMetric::ChangeFailureRate => ("change failure rate", ""),
            DoraMetric::RecoveryHours => ("recovery time", " h"),
        };
        let mut evidence = Vec::new();
        let mut missing = Vec::new();
        let mut measured = 0;
        for repo in &repos {
            let index = self.inputs.repos.iter().position(|r| std::ptr::eq(r, *repo)).unwrap_or_default();
            let dora = &self.dora[index];
            if dora.deployment_tags == 0 {
                missing.push(format!("{} (no deployment tag in its history: it may deploy on merge)", repo.name));
                continue;
            }
            let value = match metric {
                DoraMetric::Deployments => Some(dora.deployments as f64),
                DoraMetric::DeploymentsPerWeek => Some(dora.deployments_per_week),
                DoraMetric::LeadTimeHours => dora.lead_time_hours,
                DoraMetric::ChangeFailureRate => dora.change_failure_rate,
                DoraMetric::RecoveryHours => dora.recovery_hours,
            };
            let Some(value) = value else {
                missing.push(format!("{} (no deployments to measure)", repo.name));
                continue;
            };
            measured += 1;
            let ok = at_least.is_none_or(|b| value >= b) && at_most.is_none_or(|b| value <= b);
            let text = match metric {
                DoraMetric::Deployments => format!("{}: {} deployments", repo.name, dora.deployments),
                _ => format!("{}: {name} {value:.2}{unit} over {} deployments", repo.name, dora.deployments),
            };
            if ok { evidence.push(text) } else { missing.push(text) }
        }
        if measured == 0 {
            let reason = format!(
                "not measurable from git: no deployment tags matching `{}` to measure (tag deployments, or give the figures by survey)",
                self.model.dora.deploy_tags
            );
            return Outcome { missing, ..Outcome::new(Status::NotMeasurable, reason) };
        }
        self.repo_outcome(scope, coverage, repos.len(), evidence, missing)
    }

    fn namespaces(
        &self,
        filter: &[CompiledCondition],
        kinds: &[String],
        have: &[CompiledCondition],
        except: Option<&Regex>,
        share: f64,
    ) -> Outcome {
        if self.objects.is_empty() {
            return Outcome::new(Status::NotMeasurable, "no Kubernetes objects read (give --manifests)");
        }
        let namespace = |o: &KubeObject| o.namespace().unwrap_or("default").to_owned();
        let mut in_scope: Vec<String> = self
            .objects
            .iter()
            .filter(|o| o.pod_spec().is_some_and(|spec| filter.iter().all(|c| c.test(spec))))
            .map(namespace)
            .filter(|ns| !except.is_some_and(|e| e.is_match(ns)))
            .collect();
        in_scope.sort();
        in_scope.dedup();
        if in_scope.is_empty() {
            return Outcome::new(Status::NotApplicable, "no workload to check");
        }
        let holders: Vec<&KubeObject> = self
            .objects
            .iter()
            .filter(|o| kinds.iter().any(|k| k == o.kind()) && have.iter().all(|c| c.test(&o.value)))
            .collect();
        let mut evidence = Vec::new();
        let mut missing = Vec::new();
        for ns in &in_scope {
            match holders.iter().find(|o| &namespace(o) == ns) {
                Some(o) => evidence.push(o.describe()),
                None => missing.push(format!("namespace {ns}")),
            }
        }
        let (status, coverage, reason) = judged(evidence.len(), in_scope.len(), share, "namespaces in scope");
        Outcome { status, attested: false, coverage: Some(coverage), evidence, missing, reason }
    }

    fn survey(&self, question: &str, at_least: Option<f64>, at_most: Option<f64>) -> Outcome {
        let Some(survey) = &self.inputs.survey else {
            let mut outcome = Outcome::new(Status::NotMeasurable, "attested only: no survey given (--survey)");
            outcome.attested = true;
            return outcome;
        };
        let mut outcome = match survey.answers.get(question) {
            None => Outcome::new(Status::NotMeasurable, format!("{} has no answer to `{question}`", survey.source)),
            Some(&(value, line)) => {
                let ok = at_least.is_none_or(|b| value >= b) && at_most.is_none_or(|b| value <= b);
                let status = if ok { Status::Pass } else { Status::Fail };
                let bound = match (at_least, at_most) {
                    (Some(low), Some(high)) => format!("{low} to {high}"),
                    (Some(low), None) => format!("at least {low}"),
                    (None, Some(high)) => format!("at most {high}"),
                    (None, None) => "any".to_owned(),
                };
                let mut outcome =
                    Outcome::new(status, format!("attested answer {value} to `{question}`; {bound} needed"));
                outcome.evidence.push(format!("{}:{line} {question} = {value} (attested)", survey.source));
                outcome
            }
        };
        outcome.attested = true;
        outcome
    }
}

fn compile(conditions: &[Condition]) -> Result<Vec<CompiledCondition>, EvalError> {
    conditions.iter().map(|c| c.compile().map_err(|e| (c.path.clone(), e))).collect()
}

fn any_of(outcomes: Vec<Outcome>) -> Outcome {
    let rank = |s: Status| match s {
        Status::Pass => 0,
        Status::Fail => 1,
        Status::NotMeasurable => 2,
        Status::NotApplicable => 3,
    };
    let reasons: Vec<String> = outcomes.iter().map(|o| o.reason.clone()).collect();
    let mut best =
        outcomes.into_iter().min_by_key(|o| rank(o.status)).unwrap_or_else(|| Outcome::new(Status::NotApplicable, ""));
    if best.status != Status::Pass {
        best.reason = reasons.join("; or ");
    }
    best
}

/// `YYYY-MM-DD` (UTC) of a Unix time.
pub fn format_date(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Unix time of the end of a `YYYY-MM-DD` day (UTC), or `None` when the text is not such a date.
pub fn parse_date(text: &str) -> Option<i64> {
    let mut parts = text.split('-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: i64 = parts.next()?.parse().ok()?;
    let day: i64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let unix = days * 86_400 + 86_399;
    (format_date(unix) == text).then_some(unix)
}

/// The level name of an area result, such as "3 Defined", or "n/a".
pub fn level_label(level: Option<u8>) -> String {
    level.map_or_else(|| "n/a".to_owned(), |l| format!("{l} {}", level_name(l)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_and_reject_impossible_days() {
        assert_eq!(parse_date("2026-11-28").map(format_date).as_deref(), Some("2026-11-28"));
        assert_eq!(format_date(0), "1970-01-01");
        assert_eq!(parse_date("2024-02-29").map(format_date).as_deref(), Some("2024-02-29"));
        assert_eq!(parse_date("2025-02-29"), None);
        assert_eq!(parse_date("28/11/2026"), None);
    }

    #[test]
    fn coverage_needs_the_share_rounded_up() {
        assert_eq!(required(5, 0.8), 4);
        assert_eq!(required(4, 0.8), 4);
        assert_eq!(required(10, 0.8), 8);
        assert_eq!(required(3, 0.5), 2);
        let (status, coverage, _) = judged(3, 4, 0.8, "repositories");
        assert_eq!(status, Status::Fail);
        assert_eq!(coverage.required, 4);
    }
}
