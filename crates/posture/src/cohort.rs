//! Cohort rates: each finding's line is blamed to the commit that last changed it; findings whose
//! commit lies in the assessed range were introduced there, by an AI-assisted commit or not. Per
//! cohort: commits, changed lines, findings introduced per changed KLOC and per 100 commits, by severity —
//! per KLOC of every changed file, and of the files the scanners read ([`Coverage`]).

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
    /// Lines added to files the scanners read.
    #[serde(default)]
    pub scanned_added_lines: u64,
    /// Findings per 1,000 lines added to files the scanners read.
    #[serde(default)]
    pub per_scanned_kloc: Option<f64>,
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

/// Which files the scanners read: for a known scanner, its file types; for another, the file types of the
/// files its findings name (a scanner of one language finds nothing in another).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Coverage {
    /// Per tool: file name endings (`.py`) and folder prefixes (`.github/workflows/`) it reads.
    pub tools: BTreeMap<String, Vec<String>>,
}

/// What the scanners gpuplane is tested with read, by their SARIF driver names (lower case).
const KNOWN: [(&str, &[&str]); 6] = [
    ("bandit", &[".py"]),
    ("clippy", &[".rs"]),
    ("zizmor", &[".github/workflows/", "action.yml", "action.yaml"]),
    ("checkov", &[".tf", ".yaml", ".yml", ".json", ".hcl", "Dockerfile"]),
    ("gpuplane-lint", &[".yaml", ".yml", ".json"]),
    ("hadolint", &["Dockerfile"]),
];

impl Coverage {
    /// The coverage of the tools named by `tools` (SARIF runs) and by `findings`.
    pub fn of<'t>(tools: impl IntoIterator<Item = &'t str>, findings: &'t [Finding]) -> Coverage {
        let mut coverage = Coverage::default();
        let names: Vec<&str> = tools.into_iter().chain(findings.iter().map(|f| f.tool.as_str())).collect();
        for name in names {
            if coverage.tools.contains_key(name) {
                continue;
            }
            let lower = name.to_ascii_lowercase();
            let patterns: Vec<String> = match KNOWN.iter().find(|(known, _)| lower.starts_with(known)) {
                Some((_, patterns)) => patterns.iter().map(|p| (*p).to_owned()).collect(),
                None => {
                    let mut endings: Vec<String> = findings
                        .iter()
                        .filter(|f| f.tool == name)
                        .filter_map(|f| {
                            let file = f.path.rsplit('/').next()?;
                            file.rfind('.').map(|dot| file[dot..].to_owned())
                        })
                        .collect();
                    endings.sort();
                    endings.dedup();
                    endings
                }
            };
            coverage.tools.insert(name.to_owned(), patterns);
        }
        coverage
    }

    /// Whether any scanner reads `path`.
    pub fn reads(&self, path: &str) -> bool {
        let path = renamed_to(path);
        let file = path.rsplit('/').next().unwrap_or(&path);
        self.tools.values().flatten().any(|p| {
            if p.ends_with('/') {
                path.starts_with(p.as_str())
            } else if p.starts_with('.') {
                file.ends_with(p.as_str())
            } else {
                file == p
            }
        })
    }
}

/// The path a `git log --numstat` rename entry ends at (`src/{a => b}.rs` is `src/b.rs`, `a => b` is `b`).
fn renamed_to(path: &str) -> String {
    match (path.find('{'), path.find(" => "), path.find('}')) {
        (Some(open), Some(arrow), Some(close)) if open < arrow && arrow < close => {
            format!("{}{}{}", &path[..open], &path[arrow + 4..close], &path[close + 1..]).replace("//", "/")
        }
        (_, Some(arrow), _) => path[arrow + 4..].to_owned(),
        _ => path.to_owned(),
    }
}

/// The two cohorts' figures over the range's commits.
pub fn cohorts(
    commits: &[Commit],
    attributions: &HashMap<String, Attribution>,
    findings: &[Finding],
    coverage: &Coverage,
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
            let scanned_added_lines: u64 = members
                .iter()
                .flat_map(|c| &c.added_by_file)
                .filter(|(path, _)| coverage.reads(path))
                .map(|(_, added)| added)
                .sum();
            CohortStats {
                cohort: if ai { "ai-assisted" } else { "other" }.to_owned(),
                commits: members.len(),
                added_lines,
                findings: introduced.len(),
                by_severity,
                per_kloc: (added_lines > 0).then(|| introduced.len() as f64 * 1000.0 / added_lines as f64),
                scanned_added_lines,
                per_scanned_kloc: (scanned_added_lines > 0)
                    .then(|| introduced.len() as f64 * 1000.0 / scanned_added_lines as f64),
                per_100_commits: (!members.is_empty()).then(|| introduced.len() as f64 * 100.0 / members.len() as f64),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::Level;

    #[test]
    fn a_known_scanner_reads_its_file_types_and_another_the_types_it_found_something_in() {
        let finding =
            |tool: &str, path: &str| Finding::new(tool, "R", Level::Warning, Severity::Medium, path, 1, String::new());
        let coverage = Coverage::of(["Bandit", "Semgrep OSS"], &[finding("Semgrep OSS", "web/app.ts")]);
        assert!(coverage.reads("app/run.py") && coverage.reads("web/other.ts"));
        assert!(!coverage.reads("README.md") && !coverage.reads("main.go"));
        assert!(coverage.reads("app/{old => new}.py") && coverage.reads("old.txt => new.py"));
        assert_eq!(renamed_to("src/{a => b}/x.rs"), "src/b/x.rs");
        let zizmor = Coverage::of(["zizmor"], &[]);
        assert!(zizmor.reads(".github/workflows/ci.yml") && !zizmor.reads("k8s/app.yml"));
    }
}
