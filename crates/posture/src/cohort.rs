//! Cohort rates: each finding's line is blamed to the commit that last changed it; findings whose
//! commit lies in the assessed range were introduced there, by an AI-assisted commit or not. Per
//! cohort: commits, changed lines, findings introduced per changed KLOC and per 100 commits, by severity.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::PostureError;
use crate::attribution::Attribution;
use crate::finding::{Finding, Severity};
use crate::history::{BlameLine, Commit, blame};

/// The figures of one cohort.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CohortStats {
    /// `ai-assisted` or `other`.
    pub cohort: String,
    /// Commits in the range.
    pub commits: usize,
    /// Lines added by them.
    pub added_lines: u64,
    /// Findings whose line they last changed.
    pub findings: usize,
    /// Those findings by severity.
    pub by_severity: BTreeMap<Severity, usize>,
    /// Findings per 1,000 added lines.
    pub per_kloc: Option<f64>,
    /// Findings per 100 commits.
    pub per_100_commits: Option<f64>,
}

/// Sets `commit` on every finding from `git blame` at `rev` (one blame per file) and `ai` from the
/// attributions of the range's commits. Files git does not track keep no commit.
pub fn blame_findings(
    repo: &Path,
    rev: &str,
    findings: &mut [Finding],
    attributions: &HashMap<String, Attribution>,
) -> Result<(), PostureError> {
    let tracked: std::collections::HashSet<String> =
        crate::history::git(repo, &["ls-files", "-z"])?.split('\0').map(str::to_owned).collect();
    let mut blames: HashMap<String, Vec<BlameLine>> = HashMap::new();
    for f in findings.iter_mut() {
        if f.line == 0 || !tracked.contains(&f.path) {
            continue;
        }
        if !blames.contains_key(&f.path) {
            blames.insert(f.path.clone(), blame(repo, rev, &f.path)?);
        }
        let blamed = blames.get(&f.path).and_then(|lines| lines.get(f.line - 1)).filter(|b| !b.commit.is_empty());
        f.commit = blamed.map(|b| b.commit.clone());
        f.introduced = blamed.map(|b| b.time);
        f.ai = blamed.and_then(|b| attributions.get(&b.commit)).map(|a| a.ai);
    }
    Ok(())
}

/// The two cohorts' figures over the range's commits.
pub fn cohorts(
    commits: &[Commit],
    attributions: &HashMap<String, Attribution>,
    findings: &[Finding],
) -> Vec<CohortStats> {
    [true, false]
        .into_iter()
        .map(|ai| {
            let members: Vec<&Commit> =
                commits.iter().filter(|c| attributions.get(&c.id).is_some_and(|a| a.ai) == ai).collect();
            let ids: std::collections::HashSet<&str> = members.iter().map(|c| c.id.as_str()).collect();
            let introduced: Vec<&Finding> =
                findings.iter().filter(|f| f.commit.as_deref().is_some_and(|c| ids.contains(c))).collect();
            let mut by_severity = BTreeMap::new();
            for f in &introduced {
                *by_severity.entry(f.severity).or_insert(0) += 1;
            }
            let added_lines: u64 = members.iter().map(|c| c.added).sum();
            CohortStats {
                cohort: if ai { "ai-assisted" } else { "other" }.to_owned(),
                commits: members.len(),
                added_lines,
                findings: introduced.len(),
                by_severity,
                per_kloc: (added_lines > 0).then(|| introduced.len() as f64 * 1000.0 / added_lines as f64),
                per_100_commits: (!members.is_empty()).then(|| introduced.len() as f64 * 100.0 / members.len() as f64),
            }
        })
        .collect()
}
