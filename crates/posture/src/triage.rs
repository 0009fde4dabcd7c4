//! Triage: what people decided about findings — from a triage YAML (by fingerprint, or by rule, path
//! and line) and from SARIF suppressions — and what follows per rule: precision, false-positive and
//! effective false-positive rates, and the tuning advice (promote a precise rule to blocking, demote a
//! noisy one).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::PostureError;
use crate::finding::{BaselineState, Finding};

/// A decision about a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// A real problem, to be fixed.
    Confirmed,
    /// A real problem, fixed.
    Fixed,
    /// Not a problem: the rule was wrong here.
    FalsePositive,
    /// A real but accepted risk, or "not useful" (counts toward the effective false-positive rate).
    WontFix,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TriageFile {
    triage: Vec<serde_saphyr::Spanned<Entry>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    #[serde(default)]
    fingerprint: Option<String>,
    #[serde(default)]
    rule: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    line: Option<usize>,
    decision: Decision,
    #[serde(default)]
    justification: Option<String>,
    /// When the decision was taken (`YYYY-MM-DD`), for time to fix or dismiss.
    #[serde(default)]
    date: Option<String>,
    #[serde(skip)]
    decided: Option<i64>,
}

/// The triage decisions of a file, matched to findings.
#[derive(Debug, Clone, Default)]
pub struct Triage {
    entries: Vec<Entry>,
}

impl Triage {
    /// Reads a triage file; each entry names a fingerprint, or a rule with a path (and a line).
    pub fn parse(source_name: &str, text: &str) -> Result<Triage, PostureError> {
        let file: TriageFile = serde_saphyr::from_str(text).map_err(|e| PostureError::yaml(source_name, &e))?;
        let mut entries = Vec::new();
        for spanned in file.triage {
            let line = spanned.referenced.line() as usize;
            let mut e = spanned.value;
            if e.fingerprint.is_none() && (e.rule.is_none() || e.path.is_none()) {
                return Err(PostureError::invalid(
                    source_name,
                    &format!("line {line}: triage entry"),
                    "a fingerprint, or a rule and a path",
                ));
            }
            e.justification = e.justification.filter(|j| !j.trim().is_empty());
            if let Some(date) = &e.date {
                e.decided = Some(gpuplane_assess::assess::parse_date(date).ok_or_else(|| {
                    PostureError::invalid(source_name, &format!("line {line}: date"), "a date such as 2026-11-28")
                })?);
            }
            entries.push(e);
        }
        Ok(Triage { entries })
    }

    /// When the triage file says the decision about a finding was taken (end of that day, Unix seconds).
    pub fn decided(&self, f: &Finding) -> Option<i64> {
        self.entry(f).and_then(|e| e.decided)
    }

    fn entry(&self, f: &Finding) -> Option<&Entry> {
        self.entries.iter().find(|e| match &e.fingerprint {
            Some(fp) => fp == &f.fingerprint,
            None => {
                e.rule.as_deref() == Some(f.rule.as_str())
                    && e.path.as_deref() == Some(f.path.as_str())
                    && e.line.is_none_or(|l| l == f.line)
            }
        })
    }

    /// The decision about a finding and its justification: the triage file first, then the SARIF
    /// suppression (an accepted suppression is a dismissal: won't fix), then fixed when the baseline
    /// says the finding is gone.
    pub fn decision(&self, f: &Finding) -> Option<(Decision, Option<String>)> {
        if let Some(e) = self.entry(f) {
            return Some((e.decision, e.justification.clone()));
        }
        if let Some(s) = f.suppression.as_ref().filter(|s| s.status == "accepted") {
            return Some((Decision::WontFix, s.justification.clone()));
        }
        (f.state == Some(BaselineState::Absent)).then_some((Decision::Fixed, None))
    }
}

/// Triage figures of one rule of one tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleStats {
    /// Tool.
    pub tool: String,
    /// Rule id.
    pub rule: String,
    /// Findings (current and gone).
    pub findings: usize,
    /// Findings with a decision.
    pub triaged: usize,
    /// Confirmed or fixed.
    pub true_positives: usize,
    /// Decided false positive.
    pub false_positives: usize,
    /// Won't fix or suppressed.
    pub wont_fix: usize,
    /// Dismissals (false positive or won't fix) with a justification.
    pub justified_dismissals: usize,
    /// True positives ÷ triaged.
    pub precision: Option<f64>,
    /// False positives ÷ triaged.
    pub false_positive_rate: Option<f64>,
    /// (False positives + won't fix) ÷ triaged: Tricorder's effective false-positive rate.
    pub effective_false_positive_rate: Option<f64>,
    /// Share of findings fixed.
    pub fixed_share: f64,
}

/// Per rule figures over the current findings and those gone since the baseline.
pub fn rule_stats(findings: &[Finding], gone: &[Finding], triage: &Triage) -> Vec<RuleStats> {
    let mut by_rule: BTreeMap<(String, String), RuleStats> = BTreeMap::new();
    for f in findings.iter().chain(gone) {
        let stats = by_rule.entry((f.tool.clone(), f.rule.clone())).or_insert_with(|| RuleStats {
            tool: f.tool.clone(),
            rule: f.rule.clone(),
            findings: 0,
            triaged: 0,
            true_positives: 0,
            false_positives: 0,
            wont_fix: 0,
            justified_dismissals: 0,
            precision: None,
            false_positive_rate: None,
            effective_false_positive_rate: None,
            fixed_share: 0.0,
        });
        stats.findings += 1;
        let Some((decision, justification)) = triage.decision(f) else { continue };
        stats.triaged += 1;
        match decision {
            Decision::Confirmed => stats.true_positives += 1,
            Decision::Fixed => {
                stats.true_positives += 1;
                stats.fixed_share += 1.0;
            }
            Decision::FalsePositive => stats.false_positives += 1,
            Decision::WontFix => stats.wont_fix += 1,
        }
        if matches!(decision, Decision::FalsePositive | Decision::WontFix) && justification.is_some() {
            stats.justified_dismissals += 1;
        }
    }
    by_rule
        .into_values()
        .map(|mut s| {
            let share = |n: usize| (s.triaged > 0).then(|| n as f64 / s.triaged as f64);
            s.precision = share(s.true_positives);
            s.false_positive_rate = share(s.false_positives);
            s.effective_false_positive_rate = share(s.false_positives + s.wont_fix);
            s.fixed_share /= s.findings as f64;
            s
        })
        .collect()
}

/// Tuning advice for one rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Advice {
    /// `tool:rule`.
    pub rule: String,
    /// `promote` (to blocking) or `demote` (to non-blocking).
    pub action: String,
    /// The figures behind it.
    pub because: String,
}

/// Promote when precision ≥ `min_precision` over ≥ `min_triaged` decisions; demote when the effective
/// false-positive rate exceeds `max_effective_fp` (with at least `min_triaged` decisions too).
pub fn tune(stats: &[RuleStats], min_triaged: usize, min_precision: f64, max_effective_fp: f64) -> Vec<Advice> {
    let mut advice = Vec::new();
    for s in stats.iter().filter(|s| s.triaged >= min_triaged) {
        let (Some(precision), Some(effective)) = (s.precision, s.effective_false_positive_rate) else { continue };
        let rule = format!("{}:{}", s.tool, s.rule);
        if effective > max_effective_fp {
            let because =
                format!("effective false-positive rate {:.0} % over {} triaged", effective * 100.0, s.triaged);
            advice.push(Advice { rule, action: "demote".into(), because });
        } else if precision >= min_precision {
            let because = format!("precision {:.0} % over {} triaged", precision * 100.0, s.triaged);
            advice.push(Advice { rule, action: "promote".into(), because });
        }
    }
    advice
}
