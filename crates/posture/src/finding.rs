//! Findings: one shape for every scanner. Stable fingerprints (rule + path + the flagged line's
//! content with whitespace collapsed, numbered among equal lines) survive a line moving; duplicates
//! across tools (same place, a shared CWE) merge; baseline states compare with a previous scan.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// SARIF result level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// `error`.
    Error,
    /// `warning`.
    Warning,
    /// `note`.
    Note,
    /// `none`.
    None,
}

impl Level {
    /// The SARIF spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warning => "warning",
            Level::Note => "note",
            Level::None => "none",
        }
    }
}

/// Severity, as GitHub code scanning bands `security-severity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Below 4.0, or level note/none.
    Low,
    /// 4.0–6.9, or level warning.
    Medium,
    /// 7.0–8.9, or level error.
    High,
    /// 9.0 and above.
    Critical,
}

impl Severity {
    /// From a `security-severity` score.
    pub fn from_score(score: f64) -> Severity {
        if score >= 9.0 {
            Severity::Critical
        } else if score >= 7.0 {
            Severity::High
        } else if score >= 4.0 {
            Severity::Medium
        } else {
            Severity::Low
        }
    }

    /// From a SARIF level, when the rule gives no score.
    pub fn from_level(level: Level) -> Severity {
        match level {
            Level::Error => Severity::High,
            Level::Warning => Severity::Medium,
            Level::Note | Level::None => Severity::Low,
        }
    }

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// Parses a lower-case name.
    pub fn parse(text: &str) -> Option<Severity> {
        [Severity::Low, Severity::Medium, Severity::High, Severity::Critical].into_iter().find(|s| s.as_str() == text)
    }
}

/// Baseline state against a previous scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BaselineState {
    /// Not in the previous scan.
    New,
    /// In both.
    Unchanged,
    /// In the previous scan only: fixed or gone.
    Absent,
}

impl BaselineState {
    /// The SARIF spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BaselineState::New => "new",
            BaselineState::Unchanged => "unchanged",
            BaselineState::Absent => "absent",
        }
    }
}

/// A SARIF suppression (a dismissal in the scanner or in the source).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suppression {
    /// `inSource` or `external`.
    pub kind: String,
    /// `accepted`, `underReview` or `rejected`.
    pub status: String,
    /// Why, when given.
    pub justification: Option<String>,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Scanner (SARIF driver name).
    pub tool: String,
    /// Rule id.
    pub rule: String,
    /// SARIF level.
    pub level: Level,
    /// Severity.
    pub severity: Severity,
    /// Path relative to the repository root.
    pub path: String,
    /// 1-based line (0: no location).
    pub line: usize,
    /// Message.
    pub message: String,
    /// CWE ids from the rule's tags, such as `CWE-78`.
    pub cwe: Vec<String>,
    /// Stable fingerprint.
    pub fingerprint: String,
    /// Suppression, when the scanner reported one.
    pub suppression: Option<Suppression>,
    /// Other tools' rules that reported the same weakness at the same place (`tool:rule`).
    pub also_reported_by: Vec<String>,
    /// State against the baseline, when one was given.
    pub state: Option<BaselineState>,
    /// The commit that last changed the line, when blamed.
    pub commit: Option<String>,
    /// Whether that commit is AI-assisted.
    pub ai: Option<bool>,
    /// When that commit was made (Unix seconds): when the finding was introduced.
    pub introduced: Option<i64>,
}

/// FNV-1a, 64 bits: a small, stable, dependency-free hash for fingerprints.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain(std::iter::once(0)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// The flagged line with whitespace collapsed, or `None` when the file or line is not there.
fn line_content(
    root: &Path,
    path: &str,
    line: usize,
    cache: &mut HashMap<String, Option<Vec<String>>>,
) -> Option<String> {
    let lines = cache.entry(path.to_owned()).or_insert_with(|| {
        std::fs::read_to_string(root.join(path)).ok().map(|t| t.lines().map(str::to_owned).collect())
    });
    let text = lines.as_ref()?.get(line.checked_sub(1)?)?;
    Some(text.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Gives every finding without one a fingerprint: hash of tool, rule, path and the line's content (the
/// message when the line cannot be read), then `:n` numbering equal hashes in line order.
pub fn fingerprint(findings: &mut [Finding], root: &Path) {
    let mut cache = HashMap::new();
    let mut order: Vec<usize> = (0..findings.len()).filter(|&i| findings[i].fingerprint.is_empty()).collect();
    order.sort_by(|&a, &b| (&findings[a].path, findings[a].line).cmp(&(&findings[b].path, findings[b].line)));
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for i in order {
        let f = &findings[i];
        let content = line_content(root, &f.path, f.line, &mut cache).unwrap_or_else(|| f.message.clone());
        let hash = fnv1a(&[&f.tool, &f.rule, &f.path, &content]);
        let n = seen.entry(hash).or_default();
        findings[i].fingerprint = format!("{hash:016x}:{n}");
        *n += 1;
    }
}

/// Merges findings of different tools at the same path and line that share a CWE into the most
/// severe one, which lists the others in `also_reported_by`.
pub fn merge_duplicates(findings: Vec<Finding>) -> Vec<Finding> {
    let mut kept: Vec<Finding> = Vec::with_capacity(findings.len());
    let mut by_place: BTreeMap<(String, usize), Vec<usize>> = BTreeMap::new();
    let mut sorted = findings;
    sorted.sort_by_key(|f| std::cmp::Reverse(f.severity));
    for finding in sorted {
        let place = (finding.path.clone(), finding.line);
        let twin = by_place.get(&place).and_then(|indices| {
            indices
                .iter()
                .copied()
                .find(|&k| kept[k].tool != finding.tool && kept[k].cwe.iter().any(|c| finding.cwe.contains(c)))
        });
        match twin {
            Some(k) => kept[k].also_reported_by.push(format!("{}:{}", finding.tool, finding.rule)),
            None => {
                by_place.entry(place).or_default().push(kept.len());
                kept.push(finding);
            }
        }
    }
    kept.sort_by(|a, b| (&a.path, a.line, &a.rule).cmp(&(&b.path, b.line, &b.rule)));
    kept
}

/// Sets each finding's baseline state against the previous scan's findings, and returns the previous
/// findings that are gone (state absent).
pub fn compare_baseline(findings: &mut [Finding], previous: &[Finding]) -> Vec<Finding> {
    let before: std::collections::HashSet<&str> = previous.iter().map(|f| f.fingerprint.as_str()).collect();
    let now: std::collections::HashSet<String> = findings.iter().map(|f| f.fingerprint.clone()).collect();
    for f in findings.iter_mut() {
        f.state =
            Some(if before.contains(f.fingerprint.as_str()) { BaselineState::Unchanged } else { BaselineState::New });
    }
    previous
        .iter()
        .filter(|f| !now.contains(&f.fingerprint))
        .map(|f| Finding { state: Some(BaselineState::Absent), ..f.clone() })
        .collect()
}

impl Finding {
    /// A finding as a scanner reports it: no CWE, fingerprint, suppression, baseline state or blame yet.
    pub fn new(
        tool: &str,
        rule: &str,
        level: Level,
        severity: Severity,
        path: &str,
        line: usize,
        message: String,
    ) -> Finding {
        Finding {
            tool: tool.to_owned(),
            rule: rule.to_owned(),
            level,
            severity,
            path: path.to_owned(),
            line,
            message,
            cwe: Vec::new(),
            fingerprint: String::new(),
            suppression: None,
            also_reported_by: Vec::new(),
            state: None,
            commit: None,
            ai: None,
            introduced: None,
        }
    }
}

/// A finding with the given rule and place and nothing else, for tests.
#[cfg(test)]
pub(crate) fn test_finding(rule: &str, path: &str, line: usize, severity: Severity) -> Finding {
    Finding::new("bandit", rule, Level::Warning, severity, path, line, "m".into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn finding(tool: &str, rule: &str, path: &str, line: usize, cwe: &[&str], severity: Severity) -> Finding {
        Finding {
            tool: tool.into(),
            cwe: cwe.iter().map(|c| c.to_string()).collect(),
            ..test_finding(rule, path, line, severity)
        }
    }

    #[test]
    fn a_fingerprint_survives_the_line_moving_and_equal_lines_are_numbered() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.py"), "import os\nos.system(x)\nos.system(x)\n").unwrap();
        let mut before = vec![
            finding("bandit", "B605", "a.py", 2, &[], Severity::High),
            finding("bandit", "B605", "a.py", 3, &[], Severity::High),
        ];
        fingerprint(&mut before, dir.path());
        assert_ne!(before[0].fingerprint, before[1].fingerprint);
        assert!(before[0].fingerprint.ends_with(":0") && before[1].fingerprint.ends_with(":1"));

        std::fs::write(dir.path().join("a.py"), "import os\n\n\n  os.system(x)\nos.system(x)\n").unwrap();
        let mut after = vec![
            finding("bandit", "B605", "a.py", 4, &[], Severity::High),
            finding("bandit", "B605", "a.py", 5, &[], Severity::High),
        ];
        fingerprint(&mut after, dir.path());
        assert_eq!(after[0].fingerprint, before[0].fingerprint);
        assert_eq!(after[1].fingerprint, before[1].fingerprint);
        let gone = compare_baseline(&mut after, &before);
        assert!(gone.is_empty());
        assert!(after.iter().all(|f| f.state == Some(BaselineState::Unchanged)));
    }

    #[test]
    fn tools_reporting_one_weakness_at_one_place_merge_into_the_most_severe() {
        let merged = merge_duplicates(vec![
            finding("semgrep", "python.os-system", "a.py", 2, &["CWE-78"], Severity::Medium),
            finding("bandit", "B605", "a.py", 2, &["CWE-78"], Severity::High),
            finding("bandit", "B101", "a.py", 2, &["CWE-703"], Severity::Low),
        ]);
        assert_eq!(merged.len(), 2);
        let b605 = merged.iter().find(|f| f.rule == "B605").unwrap();
        assert_eq!(b605.also_reported_by, ["semgrep:python.os-system"]);
    }

    #[test]
    fn severity_bands_follow_code_scanning() {
        assert_eq!(Severity::from_score(9.8), Severity::Critical);
        assert_eq!(Severity::from_score(7.0), Severity::High);
        assert_eq!(Severity::from_score(3.9), Severity::Low);
        assert_eq!(Severity::from_level(Level::Error), Severity::High);
    }
}
