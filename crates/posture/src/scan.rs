//! One posture scan of a repository: attribute the range's commits, ingest the scanners' SARIF,
//! fingerprint and merge the findings, compare with a baseline, blame them to commits, and compute the
//! cohort rates, per-rule triage figures and engagement.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use gpuplane_assess::dora::median;
use serde::{Deserialize, Serialize};

use crate::PostureError;
use crate::attribution::{Attribution, Markers};
use crate::cohort::{CohortStats, Coverage, blame_findings, cohorts};
use crate::finding::{Finding, compare_baseline, fingerprint, merge_duplicates};
use crate::history::{self, Commit};
use crate::sarif;
use crate::triage::{Decision, RuleStats, Triage, rule_stats};

/// Version tag of the JSON written by `gpuplane posture scan`.
pub const POSTURE_JSON_SCHEMA: &str = "gpuplane.posture/v1";

/// What to scan.
#[derive(Debug)]
pub struct ScanInput {
    /// The repository (any folder inside its working tree).
    pub repo: PathBuf,
    /// Commits to attribute and rate, such as `HEAD` (all history) or `v1.0..HEAD`.
    pub range: String,
    /// SARIF files (read streaming).
    pub sarif: Vec<std::path::PathBuf>,
    /// Findings of a previous scan (its findings.sarif), for baseline states.
    pub baseline: Option<Vec<Finding>>,
    /// Triage decisions.
    pub triage: Triage,
    /// Attribution markers.
    pub markers: Markers,
}

/// A commit as reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitReport {
    /// Hash.
    pub id: String,
    /// First line of the message.
    pub subject: String,
    /// Lines added.
    pub added: u64,
    /// Attribution.
    pub attribution: Attribution,
}

/// How people act on findings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Engagement {
    /// Findings now and gone since the baseline.
    pub findings: usize,
    /// Gone since the baseline, or triaged fixed.
    pub fixed: usize,
    /// False positive or won't fix (triage or suppression).
    pub dismissed: usize,
    /// Dismissals with a justification.
    pub dismissed_with_justification: usize,
    /// Suppressions written in the source.
    pub suppressed_in_source: usize,
    /// Suppressions kept outside the source.
    pub suppressed_externally: usize,
    /// Median days from a finding's introduction to its fix (gone since the baseline, at the head's
    /// commit time; or triaged fixed with a date).
    pub median_days_to_fix: Option<f64>,
    /// Median days from a finding's introduction to its dismissal (triaged with a date).
    pub median_days_to_dismiss: Option<f64>,
}

/// The result (the JSON document `gpuplane.posture/v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scan {
    /// [`POSTURE_JSON_SCHEMA`].
    pub schema: String,
    /// Commit range.
    pub range: String,
    /// The range's commits, newest first.
    pub commits: Vec<CommitReport>,
    /// Current findings.
    pub findings: Vec<Finding>,
    /// Findings of the baseline that are gone.
    pub gone: Vec<Finding>,
    /// AI-assisted and other cohorts.
    pub cohorts: Vec<CohortStats>,
    /// Per rule and tool.
    pub rules: Vec<RuleStats>,
    /// Engagement.
    pub engagement: Engagement,
    /// The files each scanner reads (the rates per scanned KLOC count lines added to them).
    #[serde(default)]
    pub coverage: Coverage,
    /// The scanners and their rules, as their SARIF described them (for the SARIF this scan writes).
    #[serde(skip)]
    pub tools: Vec<sarif::ToolRules>,
}

/// Reads the findings of a previous scan's `findings.sarif`.
pub fn read_baseline(source_name: &str, text: &str, root: &Path) -> Result<Vec<Finding>, PostureError> {
    let findings = sarif::read(source_name, text, root)?;
    if let Some(n) = findings.iter().position(|f| f.fingerprint.is_empty()) {
        return Err(PostureError::invalid(
            source_name,
            &format!("runs[0].results[{n}].partialFingerprints"),
            &format!("a {} fingerprint (a findings.sarif written by gpuplane posture scan)", sarif::FINGERPRINT_KEY),
        ));
    }
    Ok(findings)
}

/// Runs the scan.
pub fn scan(input: &ScanInput) -> Result<Scan, PostureError> {
    let root = history::root(&input.repo)?;
    // The SARIF first: a malformed file is reported before the history is read.
    let mut findings = Vec::new();
    let mut tools = Vec::new();
    for path in &input.sarif {
        let (found, described) = sarif::read_file(path, &root)?;
        findings.extend(found);
        tools.extend(described);
    }
    let commits: Vec<Commit> = history::commits(&root, &input.range)?;
    let attributions: HashMap<String, Attribution> =
        commits.iter().map(|c| (c.id.clone(), input.markers.attribute(c))).collect();

    // Scanner-provided fingerprints are not trusted to be stable: compute ours for every finding.
    for f in &mut findings {
        f.fingerprint.clear();
    }
    fingerprint(&mut findings, &root);
    let mut findings = merge_duplicates(findings);
    let gone = match &input.baseline {
        Some(previous) => compare_baseline(&mut findings, previous),
        None => Vec::new(),
    };
    let head = input.range.rsplit("..").next().filter(|h| !h.is_empty()).unwrap_or("HEAD");
    blame_findings(&root, head, &mut findings, &attributions)?;

    let coverage = Coverage::of(tools.iter().map(|t| t.name.as_str()), &findings);
    let cohorts = cohorts(&commits, &attributions, &findings, &coverage);
    let rules = rule_stats(&findings, &gone, &input.triage);
    let mut engagement = Engagement {
        findings: findings.len() + gone.len(),
        fixed: 0,
        dismissed: 0,
        dismissed_with_justification: 0,
        suppressed_in_source: 0,
        suppressed_externally: 0,
        median_days_to_fix: None,
        median_days_to_dismiss: None,
    };
    let head_time = commits.first().map(|c| c.time);
    let days = |from: Option<i64>, to: Option<i64>| match (from, to) {
        (Some(from), Some(to)) if to >= from => Some((to - from) as f64 / 86_400.0),
        _ => None,
    };
    let (mut to_fix, mut to_dismiss) = (Vec::new(), Vec::new());
    for f in findings.iter().chain(&gone) {
        let decided = input.triage.decided(f);
        match input.triage.decision(f) {
            Some((Decision::Fixed, _)) => {
                engagement.fixed += 1;
                let fixed_at = if f.state == Some(crate::finding::BaselineState::Absent) {
                    decided.or(head_time)
                } else {
                    decided
                };
                to_fix.extend(days(f.introduced, fixed_at));
            }
            Some((Decision::FalsePositive | Decision::WontFix, justification)) => {
                engagement.dismissed += 1;
                engagement.dismissed_with_justification += usize::from(justification.is_some());
                to_dismiss.extend(days(f.introduced, decided));
            }
            _ => {}
        }
        match f.suppression.as_ref().map(|s| s.kind.as_str()) {
            Some("inSource") => engagement.suppressed_in_source += 1,
            Some(_) => engagement.suppressed_externally += 1,
            None => {}
        }
    }
    engagement.median_days_to_fix = median(to_fix);
    engagement.median_days_to_dismiss = median(to_dismiss);
    let commits = commits
        .iter()
        .map(|c| CommitReport {
            id: c.id.clone(),
            subject: c.message.lines().next().unwrap_or_default().to_owned(),
            added: c.added,
            attribution: attributions.get(&c.id).cloned().unwrap_or_else(|| input.markers.attribute(c)),
        })
        .collect();
    Ok(Scan {
        schema: POSTURE_JSON_SCHEMA.to_owned(),
        range: input.range.clone(),
        commits,
        findings,
        gone,
        cohorts,
        rules,
        engagement,
        coverage,
        tools,
    })
}
