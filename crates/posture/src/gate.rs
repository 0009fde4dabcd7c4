//! The CI gate: findings on the lines a change adds or modifies block it at or above a severity; a
//! change with AI-assisted commits gets the stricter profile (lower threshold, extra blocking rules,
//! human review required). The configuration is YAML; `tune` rewrites its rule lists from triage.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::PostureError;
use crate::finding::{Finding, Severity};
use crate::triage::Advice;

/// One profile of the gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Findings at or above this severity block.
    pub min_severity: Severity,
    /// A person must review the change before it merges.
    #[serde(default)]
    pub review_required: bool,
    /// Rules (`tool:rule` or `rule`) that block at any severity under this profile.
    #[serde(default)]
    pub blocking_rules: Vec<String>,
}

/// The gate's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// For changes without AI-assisted commits.
    pub default: Profile,
    /// For changes with at least one AI-assisted commit.
    pub ai: Profile,
    /// Rules that never block (demoted: too many false positives).
    #[serde(default)]
    pub non_blocking_rules: Vec<String>,
}

impl Default for GateConfig {
    fn default() -> GateConfig {
        GateConfig {
            default: Profile { min_severity: Severity::High, review_required: false, blocking_rules: Vec::new() },
            ai: Profile { min_severity: Severity::Medium, review_required: true, blocking_rules: Vec::new() },
            non_blocking_rules: Vec::new(),
        }
    }
}

impl GateConfig {
    /// Reads a gate configuration.
    pub fn parse(source_name: &str, text: &str) -> Result<GateConfig, PostureError> {
        serde_saphyr::from_str(text).map_err(|e| PostureError::yaml(source_name, &e))
    }

    /// The configuration as YAML.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).unwrap_or_else(|e| format!("# cannot serialise the gate configuration: {e}\n"))
    }
}

fn names(list: &[String], f: &Finding) -> bool {
    list.iter().any(|r| *r == f.rule || *r == format!("{}:{}", f.tool, f.rule))
}

/// The gate's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// `default` or `ai`.
    pub profile: String,
    /// The AI-assisted commits that chose the stricter profile.
    pub ai_commits: Vec<String>,
    /// Findings on changed lines.
    pub in_change: usize,
    /// Those that block.
    pub blocking: Vec<Finding>,
    /// A person must review the change.
    pub review_required: bool,
    /// No blocking finding.
    pub passed: bool,
}

/// Judges a change: `changed` maps paths to the (first, last) new-file line ranges it touched.
pub fn judge(
    config: &GateConfig,
    findings: &[Finding],
    changed: &HashMap<String, Vec<(usize, usize)>>,
    ai_commits: Vec<String>,
) -> Verdict {
    let (name, profile) = if ai_commits.is_empty() { ("default", &config.default) } else { ("ai", &config.ai) };
    let in_change: Vec<&Finding> = findings
        .iter()
        .filter(|f| f.suppression.as_ref().is_none_or(|s| s.status != "accepted"))
        .filter(|f| changed.get(&f.path).is_some_and(|ranges| ranges.iter().any(|&(a, b)| (a..=b).contains(&f.line))))
        .collect();
    let blocking: Vec<Finding> = in_change
        .iter()
        .filter(|f| !names(&config.non_blocking_rules, f))
        .filter(|f| f.severity >= profile.min_severity || names(&profile.blocking_rules, f))
        .map(|f| (*f).clone())
        .collect();
    Verdict {
        profile: name.to_owned(),
        ai_commits,
        in_change: in_change.len(),
        passed: blocking.is_empty(),
        blocking,
        review_required: profile.review_required,
    }
}

/// The configuration with the advice applied: promoted rules block under both profiles, demoted ones
/// never block.
pub fn tuned(config: &GateConfig, advice: &[Advice]) -> GateConfig {
    let mut out = config.clone();
    for a in advice {
        let lists: Vec<&mut Vec<String>> = if a.action == "promote" {
            vec![&mut out.default.blocking_rules, &mut out.ai.blocking_rules]
        } else {
            vec![&mut out.non_blocking_rules]
        };
        for list in lists {
            if !list.contains(&a.rule) {
                list.push(a.rule.clone());
            }
        }
        if a.action == "promote" {
            out.non_blocking_rules.retain(|r| r != &a.rule);
        } else {
            out.default.blocking_rules.retain(|r| r != &a.rule);
            out.ai.blocking_rules.retain(|r| r != &a.rule);
        }
    }
    out
}

/// A line diff (`-` removed, `+` added, ` ` kept) between two texts, by longest common subsequence.
pub fn line_diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push_str(&format!(" {}\n", a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // Removals before additions, as diff prints them.
            out.push_str(&format!("-{}\n", a[i]));
            i += 1;
        } else {
            out.push_str(&format!("+{}\n", b[j]));
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn finding(rule: &str, line: usize, severity: Severity) -> Finding {
        Finding { fingerprint: format!("{rule}{line}"), ..crate::finding::test_finding(rule, "app.py", line, severity) }
    }

    #[test]
    fn only_changed_lines_count_and_ai_changes_get_the_stricter_profile() {
        let findings = [
            finding("B602", 3, Severity::High),
            finding("B105", 10, Severity::Medium),
            finding("B101", 40, Severity::High),
        ];
        let changed = HashMap::from([("app.py".to_owned(), vec![(1, 12)])]);
        let config = GateConfig::default();
        let human = judge(&config, &findings, &changed, vec![]);
        assert_eq!((human.in_change, human.blocking.len(), human.passed), (2, 1, false));
        let ai = judge(&config, &findings, &changed, vec!["abc".into()]);
        assert_eq!((ai.profile.as_str(), ai.blocking.len(), ai.review_required), ("ai", 2, true));
        let quiet = GateConfig { non_blocking_rules: vec!["bandit:B602".into()], ..GateConfig::default() };
        assert!(judge(&quiet, &findings, &changed, vec![]).passed);
    }

    #[test]
    fn tuning_moves_rules_between_lists_and_shows_a_diff() {
        let advice = [
            Advice { rule: "bandit:B602".into(), action: "promote".into(), because: String::new() },
            Advice { rule: "semgrep:noisy".into(), action: "demote".into(), because: String::new() },
        ];
        let config = GateConfig::default();
        let new = tuned(&config, &advice);
        assert_eq!(new.default.blocking_rules, ["bandit:B602"]);
        assert_eq!(new.non_blocking_rules, ["semgrep:noisy"]);
        let diff = line_diff(&config.to_yaml(), &new.to_yaml());
        assert!(diff.lines().any(|l| l.starts_with('+') && l.contains("bandit:B602")), "{diff}");
        assert!(diff.lines().any(|l| l.starts_with('+') && l.contains("semgrep:noisy")), "{diff}");
        let removed = diff.lines().position(|l| l == "-non_blocking_rules: []").unwrap();
        let added = diff.lines().position(|l| l == "+non_blocking_rules:").unwrap();
        assert!(removed < added, "{diff}");
        assert_eq!(GateConfig::parse("g.yaml", &new.to_yaml()).unwrap(), new);
    }
}
